//! The root CA publisher (kube-controller-manager's `root-ca-cert-publisher`): every
//! namespace has a ConfigMap `kube-root-ca.crt` whose `ca.crt` is the cluster's CA, so
//! that a pod can check the API server's certificate (the token volume the
//! ServiceAccount admission plugin adds projects it at `ca.crt`).
//!
//! It reconciles namespaces, and a namespace again when its `kube-root-ca.crt` changes
//! or goes: a missing ConfigMap is created, one whose `ca.crt` or description annotation
//! differs is put back. Namespaces being deleted are left alone. The CA is the
//! controller manager's configuration ([`ControllerManagerConfig::root_ca`]); without
//! one (an API server without TLS), `ca.crt` is empty, as Kubernetes publishes the
//! CA data of its client configuration, whatever it is — so that pods, whose token
//! volume needs the ConfigMap, still start.
//!
//! [`ControllerManagerConfig::root_ca`]: crate::ControllerManagerConfig::root_ca

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use keelson_core::client::{Api, Client};
use keelson_core::k8s_openapi::api::core::v1::{ConfigMap, Namespace};

use crate::controller::{Action, Context, Controller, Reconciler};
use crate::informer::InformerFactory;
use crate::object::ObjectRef;
use crate::reflector::Reader;
use crate::watcher;

/// The ConfigMap's name.
pub const CONFIG_MAP: &str = "kube-root-ca.crt";

/// The key of the CA in it.
pub const CA_KEY: &str = "ca.crt";

/// The annotation that says what the ConfigMap is for.
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";

/// Its value, as Kubernetes writes it.
pub const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// The publisher's reconciler.
pub struct RootCaCertPublisher {
    client: Client,
    config_maps: Reader<ConfigMap>,
    root_ca: Arc<str>,
}

impl std::fmt::Debug for RootCaCertPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCaCertPublisher")
            .finish_non_exhaustive()
    }
}

fn is_terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

impl RootCaCertPublisher {
    /// Builds the controller on `factory`'s informers, publishing `root_ca` (PEM; empty
    /// when the cluster has no CA).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
        root_ca: &str,
    ) -> (Controller<Namespace>, Arc<Self>) {
        let cm_api = Api::<ConfigMap>::all(client.clone());
        // Only the published ConfigMaps, not every ConfigMap of the cluster.
        let only_ours = || {
            watcher::Config::default()
                .fields(&format!("metadata.name={CONFIG_MAP}"))
                .unwrap_or_default()
        };
        let config_maps = factory.informer(cm_api.clone(), only_ours()).reader();
        let controller = Controller::with_factory(
            factory,
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        )
        .name("root-ca-cert-publisher")
        .watches(cm_api, only_ours(), |cm: &ConfigMap| {
            match (&cm.metadata.namespace, cm.metadata.name.as_deref()) {
                (Some(ns), Some(CONFIG_MAP)) => vec![ObjectRef::new(None, ns)],
                _ => Vec::new(),
            }
        });
        (
            controller,
            Arc::new(RootCaCertPublisher {
                client: client.clone(),
                config_maps,
                root_ca: Arc::from(root_ca),
            }),
        )
    }

    fn data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(CA_KEY.to_owned(), self.root_ca.to_string())])
    }
}

/// Whether a published ConfigMap says what it should: exactly the CA, and the
/// description annotation.
fn is_current(cm: &ConfigMap, data: &BTreeMap<String, String>) -> bool {
    cm.data.as_ref().unwrap_or(&BTreeMap::new()) == data
        && cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
            .is_some_and(|d| !d.is_empty())
}

#[async_trait]
impl Reconciler<Namespace> for RootCaCertPublisher {
    type Error = keelson_core::Error;

    async fn reconcile(&self, ns: Arc<Namespace>, ctx: &Context) -> Result<Action, Self::Error> {
        if is_terminating(&ns) {
            return Ok(Action::await_change());
        }
        let namespace = ctx.key.name.to_string();
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
        let data = self.data();
        let Some(current) = self
            .config_maps
            .get(&ObjectRef::new(Some(&namespace), CONFIG_MAP))
        else {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(CONFIG_MAP.to_owned());
            cm.metadata.annotations = Some(BTreeMap::from([(
                DESCRIPTION_ANNOTATION.to_owned(),
                DESCRIPTION.to_owned(),
            )]));
            cm.data = Some(data);
            return match api.create(&cm).await {
                Ok(_) => {
                    tracing::debug!(%namespace, "published the root CA");
                    Ok(Action::await_change())
                }
                // The cache had not seen it yet: its event brings the namespace back.
                Err(e) if e.is_already_exists() => Ok(Action::await_change()),
                // The namespace is gone or terminating: nothing to publish.
                Err(e) if e.is_not_found() || e.code() == 403 => Ok(Action::await_change()),
                Err(e) => Err(e),
            };
        };
        if is_current(&current, &data) {
            return Ok(Action::await_change());
        }
        let mut cm = (*current).clone();
        cm.data = Some(data);
        cm.binary_data = None;
        cm.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(DESCRIPTION_ANNOTATION.to_owned(), DESCRIPTION.to_owned());
        cm.metadata.managed_fields = None;
        match api.replace(CONFIG_MAP, &cm).await {
            Ok(_) => {
                tracing::debug!(%namespace, "restored the published root CA");
                Ok(Action::await_change())
            }
            // A newer version is on its way to the cache; its event comes back here.
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(Action::await_change()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(ca: &str, description: Option<&str>) -> ConfigMap {
        let mut cm = ConfigMap {
            data: Some(BTreeMap::from([(CA_KEY.to_owned(), ca.to_owned())])),
            ..ConfigMap::default()
        };
        cm.metadata.annotations = description
            .map(|d| BTreeMap::from([(DESCRIPTION_ANNOTATION.to_owned(), d.to_owned())]));
        cm
    }

    #[test]
    fn a_config_map_is_current_only_with_exactly_the_ca_and_a_description() {
        let data = BTreeMap::from([(CA_KEY.to_owned(), "PEM".to_owned())]);
        assert!(is_current(&published("PEM", Some(DESCRIPTION)), &data));
        assert!(!is_current(&published("other", Some(DESCRIPTION)), &data));
        assert!(!is_current(&published("PEM", None), &data));
        assert!(!is_current(&published("PEM", Some("")), &data));
        let mut extra = published("PEM", Some(DESCRIPTION));
        extra
            .data
            .get_or_insert_with(BTreeMap::new)
            .insert("more".into(), "x".into());
        assert!(!is_current(&extra, &data));
    }
}
