//! [`Resource`] for the built-in kinds of `k8s-openapi`, with the short names and
//! categories Kubernetes gives them.

use std::borrow::Cow;

use k8s_openapi::api;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apiregistration;

use crate::fields;
use crate::resource::{Resource, ResourceType, Scope};

/// Maps `k8s-openapi`'s scope marker types to [`Scope`].
trait KnownScope {
    const SCOPE: Scope;
}

impl KnownScope for k8s_openapi::NamespaceResourceScope {
    const SCOPE: Scope = Scope::Namespaced;
}

impl KnownScope for k8s_openapi::ClusterResourceScope {
    const SCOPE: Scope = Scope::Cluster;
}

/// Implements `Resource` for each listed type from its `k8s_openapi::Resource` and
/// `k8s_openapi::Metadata` implementations, and lists them in `builtin_resource_types`.
macro_rules! builtin_resources {
    ($($ty:ty { short: [$($short:literal),*], categories: [$($category:literal),*] }),* $(,)?) => {
        $(
            impl Resource for $ty {
                const GROUP: &'static str = <$ty as k8s_openapi::Resource>::GROUP;
                const VERSION: &'static str = <$ty as k8s_openapi::Resource>::VERSION;
                const KIND: &'static str = <$ty as k8s_openapi::Resource>::KIND;
                const PLURAL: &'static str = <$ty as k8s_openapi::Resource>::URL_PATH_SEGMENT;
                const SCOPE: Scope = <<$ty as k8s_openapi::Resource>::Scope as KnownScope>::SCOPE;

                fn api_version() -> Cow<'static, str> {
                    Cow::Borrowed(<$ty as k8s_openapi::Resource>::API_VERSION)
                }

                fn short_names() -> &'static [&'static str] {
                    &[$($short),*]
                }

                fn categories() -> &'static [&'static str] {
                    &[$($category),*]
                }

                fn selectable_fields() -> &'static [&'static str] {
                    fields::builtin_fields(Self::GROUP, Self::KIND)
                }

                fn meta(&self) -> &ObjectMeta {
                    k8s_openapi::Metadata::metadata(self)
                }

                fn meta_mut(&mut self) -> &mut ObjectMeta {
                    k8s_openapi::Metadata::metadata_mut(self)
                }
            }
        )*

        /// The descriptors of every built-in kind Keelson knows, one per kind at its
        /// preferred version, in a stable order (core group first).
        ///
        /// ```
        /// let types = keelson_core::builtin_resource_types();
        /// let pods = types.iter().find(|t| t.group == "" && t.plural == "pods").unwrap();
        /// assert_eq!(pods.short_names, ["po"]);
        /// assert_eq!(pods.categories, ["all"]);
        /// ```
        pub fn builtin_resource_types() -> Vec<ResourceType> {
            vec![$(<$ty as Resource>::resource_type()),*]
        }
    };
}

builtin_resources! {
    // core/v1
    api::core::v1::Pod { short: ["po"], categories: ["all"] },
    api::core::v1::Service { short: ["svc"], categories: ["all"] },
    api::core::v1::Endpoints { short: ["ep"], categories: [] },
    api::core::v1::Namespace { short: ["ns"], categories: [] },
    api::core::v1::Node { short: ["no"], categories: [] },
    api::core::v1::ConfigMap { short: ["cm"], categories: [] },
    api::core::v1::Secret { short: [], categories: [] },
    api::core::v1::ServiceAccount { short: ["sa"], categories: [] },
    api::core::v1::Event { short: ["ev"], categories: [] },
    api::core::v1::PersistentVolume { short: ["pv"], categories: [] },
    api::core::v1::PersistentVolumeClaim { short: ["pvc"], categories: [] },
    api::core::v1::LimitRange { short: ["limits"], categories: [] },
    api::core::v1::ResourceQuota { short: ["quota"], categories: [] },
    api::core::v1::ReplicationController { short: ["rc"], categories: ["all"] },
    api::core::v1::PodTemplate { short: [], categories: [] },
    // apps/v1
    api::apps::v1::Deployment { short: ["deploy"], categories: ["all"] },
    api::apps::v1::ReplicaSet { short: ["rs"], categories: ["all"] },
    api::apps::v1::StatefulSet { short: ["sts"], categories: ["all"] },
    api::apps::v1::DaemonSet { short: ["ds"], categories: ["all"] },
    api::apps::v1::ControllerRevision { short: [], categories: [] },
    // batch/v1
    api::batch::v1::Job { short: [], categories: ["all"] },
    api::batch::v1::CronJob { short: ["cj"], categories: ["all"] },
    // autoscaling/v2
    api::autoscaling::v2::HorizontalPodAutoscaler { short: ["hpa"], categories: ["all"] },
    // coordination.k8s.io/v1
    api::coordination::v1::Lease { short: [], categories: [] },
    // discovery.k8s.io/v1
    api::discovery::v1::EndpointSlice { short: [], categories: [] },
    // events.k8s.io/v1
    api::events::v1::Event { short: ["ev"], categories: [] },
    // policy/v1
    api::policy::v1::PodDisruptionBudget { short: ["pdb"], categories: [] },
    // rbac.authorization.k8s.io/v1
    api::rbac::v1::Role { short: [], categories: [] },
    api::rbac::v1::RoleBinding { short: [], categories: [] },
    api::rbac::v1::ClusterRole { short: [], categories: [] },
    api::rbac::v1::ClusterRoleBinding { short: [], categories: [] },
    // scheduling.k8s.io/v1
    api::scheduling::v1::PriorityClass { short: ["pc"], categories: [] },
    // networking.k8s.io/v1
    api::networking::v1::Ingress { short: ["ing"], categories: [] },
    api::networking::v1::IngressClass { short: [], categories: [] },
    api::networking::v1::NetworkPolicy { short: ["netpol"], categories: [] },
    // storage.k8s.io/v1
    api::storage::v1::StorageClass { short: ["sc"], categories: [] },
    api::storage::v1::CSIDriver { short: [], categories: [] },
    api::storage::v1::CSINode { short: [], categories: [] },
    api::storage::v1::VolumeAttachment { short: [], categories: [] },
    // node.k8s.io/v1
    api::node::v1::RuntimeClass { short: [], categories: [] },
    // certificates.k8s.io/v1
    api::certificates::v1::CertificateSigningRequest { short: ["csr"], categories: [] },
    // admissionregistration.k8s.io/v1
    api::admissionregistration::v1::MutatingWebhookConfiguration { short: [], categories: ["api-extensions"] },
    api::admissionregistration::v1::ValidatingWebhookConfiguration { short: [], categories: ["api-extensions"] },
    api::admissionregistration::v1::ValidatingAdmissionPolicy { short: [], categories: ["api-extensions"] },
    api::admissionregistration::v1::ValidatingAdmissionPolicyBinding { short: [], categories: ["api-extensions"] },
    // apiextensions.k8s.io/v1
    apiextensions::CustomResourceDefinition { short: ["crd", "crds"], categories: ["api-extensions"] },
    // apiregistration.k8s.io/v1
    apiregistration::APIService { short: [], categories: ["api-extensions"] },
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use std::collections::HashSet;

    #[test]
    fn pod_is_a_namespaced_core_v1_resource() {
        assert_eq!(Pod::GROUP, "");
        assert_eq!(Pod::VERSION, "v1");
        assert_eq!(Pod::KIND, "Pod");
        assert_eq!(Pod::PLURAL, "pods");
        assert_eq!(Pod::SCOPE, Scope::Namespaced);
        assert_eq!(Pod::api_version(), "v1");
        let rt = Pod::resource_type();
        assert_eq!(rt.singular, "pod");
        assert_eq!(rt.short_names, ["po"]);
        assert_eq!(rt.categories, ["all"]);
        assert!(rt.selectable_fields.iter().any(|f| f == "spec.nodeName"));
    }

    #[test]
    fn deployment_is_in_the_apps_group() {
        assert_eq!(Deployment::GROUP, "apps");
        assert_eq!(Deployment::api_version(), "apps/v1");
        assert_eq!(Deployment::PLURAL, "deployments");
        assert_eq!(Deployment::resource_type().short_names, ["deploy"]);
    }

    #[test]
    fn node_is_cluster_scoped() {
        assert_eq!(Node::SCOPE, Scope::Cluster);
        assert_eq!(Node::resource_type().short_names, ["no"]);
    }

    #[test]
    fn scopes_come_from_k8s_openapi() {
        let types = builtin_resource_types();
        let scope = |group: &str, plural: &str| {
            types
                .iter()
                .find(|t| t.group == group && t.plural == plural)
                .map(|t| t.scope)
        };
        assert_eq!(scope("", "namespaces"), Some(Scope::Cluster));
        assert_eq!(scope("", "persistentvolumes"), Some(Scope::Cluster));
        assert_eq!(scope("", "persistentvolumeclaims"), Some(Scope::Namespaced));
        assert_eq!(
            scope("rbac.authorization.k8s.io", "clusterroles"),
            Some(Scope::Cluster)
        );
        assert_eq!(
            scope("rbac.authorization.k8s.io", "roles"),
            Some(Scope::Namespaced)
        );
        assert_eq!(
            scope("apiextensions.k8s.io", "customresourcedefinitions"),
            Some(Scope::Cluster)
        );
        assert_eq!(scope("events.k8s.io", "events"), Some(Scope::Namespaced));
    }

    #[test]
    fn builtin_kinds_are_unique_and_short_names_do_not_clash_across_groups() {
        let types = builtin_resource_types();
        let mut resources = HashSet::new();
        for t in &types {
            assert!(resources.insert((t.group.clone(), t.plural.clone())), "{t}");
        }
        let mut short = HashSet::new();
        for t in &types {
            for s in &t.short_names {
                // `ev` names both core and events.k8s.io Events, as in Kubernetes.
                if s != "ev" {
                    assert!(short.insert(s.clone()), "short name {s} used twice");
                }
            }
        }
    }

    #[test]
    fn kubectl_get_all_lists_the_workload_kinds() {
        let mut all: Vec<String> = builtin_resource_types()
            .into_iter()
            .filter(|t| t.categories.iter().any(|c| c == "all"))
            .map(|t| t.plural.into_owned())
            .collect();
        all.sort();
        assert_eq!(
            all,
            [
                "cronjobs",
                "daemonsets",
                "deployments",
                "horizontalpodautoscalers",
                "jobs",
                "pods",
                "replicasets",
                "replicationcontrollers",
                "services",
                "statefulsets"
            ]
        );
    }

    #[test]
    fn pod_schema_describes_its_fields() {
        let schema = Pod::schema();
        assert_eq!(schema["type"], "object");
        assert!(schema["properties"]["spec"].is_object());
        assert!(schema["properties"]["metadata"].is_object());
        assert!(!schema["$defs"]
            .as_object()
            .map(|d| d.is_empty())
            .unwrap_or(true));
    }

    #[test]
    fn meta_reaches_the_object_metadata() {
        let mut pod = Pod::default();
        pod.meta_mut().name = Some("web".into());
        assert_eq!(pod.meta().name.as_deref(), Some("web"));
        assert_eq!(pod.metadata.name.as_deref(), Some("web"));
    }
}
