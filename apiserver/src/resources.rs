//! The resources a server serves: each kind's type description, verbs, subresources and
//! schema. Discovery, OpenAPI and the REST routes are all built from this one list.

use std::sync::{Arc, OnceLock};

use keelson_core::{GroupVersionKind, Resource, ResourceType};

use crate::strategic::PatchSchema;
use crate::validation::Schema;

/// The verbs every ordinary resource supports, in the order discovery lists them.
pub const STANDARD_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// A subresource of a served resource (`status`, `scale`, `binding`, `eviction`, `log`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct Subresource {
    /// Its name, e.g. `status`.
    pub name: String,
    /// The kind it takes and returns, e.g. `autoscaling/v1 Scale`.
    pub kind: GroupVersionKind,
    /// Its verbs, e.g. `get`, `patch`, `update`.
    pub verbs: Vec<String>,
}

/// One resource a server serves.
#[derive(Clone, Debug)]
pub struct ServedResource {
    /// What the kind is: group, version, kind, plural, scope, short names, categories.
    pub rt: ResourceType,
    /// The verbs it supports.
    pub verbs: Vec<String>,
    /// Its subresources.
    pub subresources: Vec<Subresource>,
    /// The kind's JSON schema (draft 2020-12, with `$defs`), as [`Resource::schema`] gives
    /// it; shared, so serving one more kind copies no schema.
    pub schema: Arc<serde_json::Value>,
    /// Where the `scale` subresource reads and writes, when the kind has one.
    pub scale: Option<ScalePaths>,
    /// Another resource whose storage this one shares, converting objects on the way in
    /// and out (events.k8s.io/v1 Events are core/v1 Events underneath, as in Kubernetes).
    pub view: Option<Arc<StorageView>>,
    /// Whether objects are checked against the schema's value constraints (types, enums,
    /// ranges, patterns) and defaulted from its `default`s, as custom resources are.
    /// Built-in kinds have their own rules instead.
    pub validate_values: bool,
    /// The schema compiled for validation, on first use.
    compiled: Arc<OnceLock<Schema>>,
    /// The schema compiled for strategic merge (built-in kinds), on first use.
    patch: Arc<OnceLock<Option<PatchSchema>>>,
}

impl ServedResource {
    /// A resource of a Rust kind, served with the standard verbs and no subresources.
    /// A kind that is not built in gets its values checked against its schema and
    /// defaulted from it, as a CRD's objects are.
    pub fn of<K: Resource>() -> ServedResource {
        let mut res = ServedResource::new(K::resource_type(), K::schema());
        res.validate_values = !crate::openapi::definition_name(&res).starts_with("io.k8s.");
        res
    }

    /// A resource described at run time (a CRD's kind), with the standard verbs and no
    /// subresources.
    pub fn new(rt: ResourceType, schema: serde_json::Value) -> ServedResource {
        ServedResource {
            rt,
            verbs: STANDARD_VERBS.iter().map(|v| (*v).to_owned()).collect(),
            subresources: Vec::new(),
            schema: Arc::new(schema),
            scale: None,
            view: None,
            validate_values: false,
            compiled: Arc::default(),
            patch: Arc::default(),
        }
    }

    /// The schema compiled for strategic merge patches, or `None` for kinds that are not
    /// built in (Kubernetes refuses strategic merge for custom resources).
    pub fn patch_schema(&self) -> Option<&PatchSchema> {
        self.patch
            .get_or_init(|| {
                crate::openapi::definition_name(self)
                    .starts_with("io.k8s.")
                    .then(|| PatchSchema::compile(self))
            })
            .as_ref()
    }

    /// The schema compiled for checking objects (unknown and required fields), compiled
    /// from [`ServedResource::schema`] on first use and shared by every clone.
    pub fn validator(&self) -> &Schema {
        self.compiled.get_or_init(|| Schema::compile(&self.schema))
    }

    /// Adds a subresource.
    pub fn with_subresource(mut self, name: &str, kind: GroupVersionKind, verbs: &[&str]) -> Self {
        self.subresources.push(Subresource {
            name: name.to_owned(),
            kind,
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        });
        self
    }

    /// Adds a `status` subresource (get, patch, update) of the resource's own kind.
    pub fn with_status(self) -> Self {
        let kind = self.rt.gvk();
        self.with_subresource("status", kind, &["get", "patch", "update"])
    }

    /// Adds a `scale` subresource (get, patch, update of an `autoscaling/v1` `Scale`)
    /// reading and writing the object where `paths` say.
    pub fn with_scale(mut self, paths: ScalePaths) -> Self {
        self.scale = Some(paths);
        self.with_subresource(
            "scale",
            GroupVersionKind::new("autoscaling", "v1", "Scale"),
            &["get", "patch", "update"],
        )
    }
}

/// How a resource stored as another one converts to and from it.
#[derive(Debug)]
pub struct StorageView {
    /// The resource objects are stored as.
    pub storage: ServedResource,
    /// This resource's object as the storage's.
    pub to_storage: fn(serde_json::Value) -> serde_json::Value,
    /// The storage's object as this resource's.
    pub from_storage: fn(serde_json::Value) -> serde_json::Value,
}

/// Renames top-level fields of an object (`from` → `to`) and sets its type.
fn rename(
    mut v: serde_json::Value,
    api_version: &str,
    kind: &str,
    pairs: &[(&str, &str)],
) -> serde_json::Value {
    if let Some(m) = v.as_object_mut() {
        for (from, to) in pairs {
            if let Some(x) = m.remove(*from) {
                m.insert((*to).to_owned(), x);
            }
        }
        m.insert(
            "apiVersion".into(),
            serde_json::Value::String(api_version.into()),
        );
        m.insert("kind".into(), serde_json::Value::String(kind.into()));
    }
    v
}

/// The fields events.k8s.io/v1 names differently from core/v1.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

fn event_to_core(v: serde_json::Value) -> serde_json::Value {
    rename(v, "v1", "Event", EVENT_FIELDS)
}

fn event_from_core(v: serde_json::Value) -> serde_json::Value {
    let back: Vec<(&str, &str)> = EVENT_FIELDS.iter().map(|(a, b)| (*b, *a)).collect();
    rename(v, "events.k8s.io/v1", "Event", &back)
}

/// Where a kind keeps what its `scale` subresource shows, as JSON pointers (a CRD's
/// `specReplicasPath`, `statusReplicasPath` and `labelSelectorPath`, written `/spec/replicas`
/// rather than `.spec.replicas`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    /// The desired replicas (`/spec/replicas`).
    pub spec_replicas: String,
    /// The observed replicas (`/status/replicas`).
    pub status_replicas: String,
    /// Where the label selector of the pods is, as a string (a CRD's
    /// `labelSelectorPath`), or `None` to format it from `spec.selector` (built-in
    /// workloads).
    pub label_selector: Option<String>,
}

impl ScalePaths {
    /// The paths of the built-in workloads: `spec.replicas`, `status.replicas`, and the
    /// selector formatted from `spec.selector`.
    pub fn workload() -> ScalePaths {
        ScalePaths {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            label_selector: None,
        }
    }
}

/// The built-in kinds Keelson serves, with their subresources: `status`; `scale` of
/// Deployments, ReplicaSets, StatefulSets and ReplicationControllers; `binding`,
/// `eviction` and `log` of Pods.
pub fn builtin() -> Vec<ServedResource> {
    use k8s_openapi::api;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apiregistration;

    macro_rules! served {
        ($($ty:ty $(: $status:ident)?),* $(,)?) => {
            vec![$(served!(@one $ty $(, $status)?)),*]
        };
        (@one $ty:ty) => { ServedResource::of::<$ty>() };
        (@one $ty:ty, status) => { ServedResource::of::<$ty>().with_status() };
    }

    let mut served = served![
        api::core::v1::Pod: status,
        api::core::v1::Service: status,
        api::core::v1::Endpoints,
        api::core::v1::Namespace: status,
        api::core::v1::Node: status,
        api::core::v1::ConfigMap,
        api::core::v1::Secret,
        api::core::v1::ServiceAccount,
        api::core::v1::Event,
        api::core::v1::PersistentVolume: status,
        api::core::v1::PersistentVolumeClaim: status,
        api::core::v1::LimitRange,
        api::core::v1::ResourceQuota: status,
        api::core::v1::ReplicationController: status,
        api::core::v1::PodTemplate,
        api::apps::v1::Deployment: status,
        api::apps::v1::ReplicaSet: status,
        api::apps::v1::StatefulSet: status,
        api::apps::v1::DaemonSet: status,
        api::apps::v1::ControllerRevision,
        api::batch::v1::Job: status,
        api::batch::v1::CronJob: status,
        api::autoscaling::v2::HorizontalPodAutoscaler: status,
        api::coordination::v1::Lease,
        api::discovery::v1::EndpointSlice,
        api::events::v1::Event,
        api::policy::v1::PodDisruptionBudget: status,
        api::rbac::v1::Role,
        api::rbac::v1::RoleBinding,
        api::rbac::v1::ClusterRole,
        api::rbac::v1::ClusterRoleBinding,
        api::scheduling::v1::PriorityClass,
        api::networking::v1::Ingress: status,
        api::networking::v1::IngressClass,
        api::networking::v1::NetworkPolicy,
        api::storage::v1::StorageClass,
        api::storage::v1::CSIDriver,
        api::storage::v1::CSINode,
        api::storage::v1::VolumeAttachment: status,
        api::node::v1::RuntimeClass,
        api::certificates::v1::CertificateSigningRequest: status,
        api::admissionregistration::v1::MutatingWebhookConfiguration,
        api::admissionregistration::v1::ValidatingWebhookConfiguration,
        apiextensions::CustomResourceDefinition: status,
        apiregistration::APIService: status,
    ];
    for res in &mut served {
        let scalable = matches!(
            (res.rt.group.as_ref(), res.rt.kind.as_ref()),
            ("apps", "Deployment" | "ReplicaSet" | "StatefulSet") | ("", "ReplicationController")
        );
        if scalable {
            *res = res.clone().with_scale(ScalePaths::workload());
        }
        if res.rt.group == "events.k8s.io" && res.rt.kind == "Event" {
            res.view = Some(Arc::new(StorageView {
                storage: ServedResource::of::<k8s_openapi::api::core::v1::Event>(),
                to_storage: event_to_core,
                from_storage: event_from_core,
            }));
        }
        if res.rt.group.is_empty() && res.rt.kind == "ServiceAccount" {
            *res = res.clone().with_subresource(
                "token",
                GroupVersionKind::new("authentication.k8s.io", "v1", "TokenRequest"),
                &["create"],
            );
        }
        if res.rt.group.is_empty() && res.rt.kind == "Namespace" {
            *res = res.clone().with_subresource(
                "finalize",
                GroupVersionKind::new("", "v1", "Namespace"),
                &["update"],
            );
        }
        if res.rt.group.is_empty() && res.rt.kind == "Pod" {
            *res = res
                .clone()
                .with_subresource(
                    "binding",
                    GroupVersionKind::new("", "v1", "Binding"),
                    &["create"],
                )
                .with_subresource(
                    "eviction",
                    GroupVersionKind::new("policy", "v1", "Eviction"),
                    &["create"],
                )
                .with_subresource("log", GroupVersionKind::new("", "v1", "Pod"), &["get"])
                .with_subresource(
                    "attach",
                    GroupVersionKind::new("", "v1", "PodAttachOptions"),
                    &["create", "get"],
                )
                .with_subresource(
                    "exec",
                    GroupVersionKind::new("", "v1", "PodExecOptions"),
                    &["create", "get"],
                )
                .with_subresource(
                    "portforward",
                    GroupVersionKind::new("", "v1", "PodPortForwardOptions"),
                    &["create", "get"],
                );
        }
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_kinds_are_served_once_each_with_a_schema() {
        let served = builtin();
        let mut seen = std::collections::BTreeSet::new();
        for s in &served {
            assert!(
                seen.insert((
                    s.rt.group.to_string(),
                    s.rt.version.to_string(),
                    s.rt.plural.to_string()
                )),
                "{:?}",
                s.rt
            );
            assert!(s.schema.is_object(), "{}", s.rt.kind);
        }
        let pods = served.iter().find(|s| s.rt.plural == "pods").expect("pods");
        assert_eq!(pods.subresources[0].name, "status");
    }
}
