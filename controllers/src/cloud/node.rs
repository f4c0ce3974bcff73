//! The cloud node controller (`cloud-node`): initialises the nodes a cloud runs.
//!
//! A node agent that leaves the cloud's part to a cloud controller (kubelet's
//! `--cloud-provider=external`) registers its Node with the taint
//! [`TAINT_UNINITIALIZED`] (`NoSchedule`), so nothing is scheduled there before the
//! cloud has spoken. For each such node the controller asks the provider for the
//! machine's [`InstanceMetadata`] and, in one update of the Node (guarded by its
//! `resourceVersion`):
//! - sets `spec.providerID` (when the node has none; a provider that gives none for a
//!   node without one is an error: the node stays tainted);
//! - labels the node `node.kubernetes.io/instance-type`, `topology.kubernetes.io/zone`
//!   and `topology.kubernetes.io/region` (and their beta twins,
//!   `beta.kubernetes.io/instance-type`, `failure-domain.beta.kubernetes.io/zone` and
//!   `failure-domain.beta.kubernetes.io/region`), plus the provider's additional labels
//!   that are neither in a `kubernetes.io` / `k8s.io` namespace nor already set;
//! - removes the taint.
//!
//! It then writes the machine's addresses to `status.addresses` (keeping the agent's
//! `Hostname` address when the cloud gives none) and records a `Synced` event ("Node
//! synced successfully"), as Kubernetes does. A provider error is a Warning event
//! `FailedToInitializeNode` on the node (Kubernetes only logs it) and a retry with the
//! per-key back-off; other nodes are served meanwhile.
//!
//! Every `node_status_update_frequency` (5 min) the addresses of the initialised nodes
//! are brought up to date ([`CloudNodeController::update_node_addresses`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keelson_core::client::{Api, Client, Patch};
use keelson_core::k8s_openapi::api::core::v1::{Node, NodeAddress};
use serde_json::json;

use super::provider::{CloudProvider, InstanceMetadata};
use super::{has_taint, CloudConfig, Error};
use crate::controller::{Action, Context, Controller, Reconciler};
use crate::events::{object_reference, EventType, Recorder};
use crate::informer::InformerFactory;
use crate::reflector::Reader;
use crate::watcher;

/// The taint of a node the cloud has not initialised yet.
pub const TAINT_UNINITIALIZED: &str = "node.cloudprovider.kubernetes.io/uninitialized";
/// The label of a node's machine type.
pub const LABEL_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
/// The deprecated twin of [`LABEL_INSTANCE_TYPE`].
pub const LABEL_INSTANCE_TYPE_BETA: &str = "beta.kubernetes.io/instance-type";
/// The label of a node's zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The deprecated twin of [`LABEL_ZONE`].
pub const LABEL_ZONE_BETA: &str = "failure-domain.beta.kubernetes.io/zone";
/// The label of a node's region.
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
/// The deprecated twin of [`LABEL_REGION`].
pub const LABEL_REGION_BETA: &str = "failure-domain.beta.kubernetes.io/region";

/// The cloud node reconciler (see the [module docs](self)).
pub struct CloudNodeController {
    client: Client,
    cloud: Arc<dyn CloudProvider>,
    nodes: Reader<Node>,
    recorder: Recorder,
    update_frequency: Duration,
}

impl std::fmt::Debug for CloudNodeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudNodeController")
            .field("cloud", &self.cloud.name())
            .finish_non_exhaustive()
    }
}

impl CloudNodeController {
    /// Builds the controller on `factory`'s node informer.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
        cloud: Arc<dyn CloudProvider>,
        config: &CloudConfig,
    ) -> (Controller<Node>, Arc<Self>) {
        let controller = Controller::with_factory(
            factory,
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
        )
        .name("cloud-node");
        let reconciler = Arc::new(CloudNodeController {
            client: client.clone(),
            cloud,
            nodes: controller.store(),
            recorder: Recorder::new(client.clone(), "cloud-node-controller", "keelson"),
            update_frequency: config.node_status_update_frequency,
        });
        (controller, reconciler)
    }

    /// Updates the addresses of every initialised node from the cloud, now and then
    /// every `node_status_update_frequency`, until `shutdown` completes.
    pub async fn run_address_updates(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.update_frequency);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::select! {
            _ = &mut shutdown => return,
            r = self.nodes.wait_until_ready() => if r.is_err() { return },
        }
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => self.update_node_addresses().await,
            }
        }
    }

    /// One pass of the address updates: for every node without the taint, the cloud's
    /// addresses (errors are logged; the next pass retries).
    pub async fn update_node_addresses(&self) {
        let Some(instances) = self.cloud.instances() else {
            return;
        };
        for node in self.nodes.list() {
            if has_taint(&node, TAINT_UNINITIALIZED) || node.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = node.metadata.name.as_deref().unwrap_or_default();
            match instances.instance_metadata(&node).await {
                Ok(meta) => {
                    if let Err(e) = self.update_addresses(&node, &meta).await {
                        tracing::warn!(node = %name, error = %e, "failed to update the node's addresses");
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "failed to get the node's addresses from the cloud");
                }
            }
        }
    }

    /// Writes the cloud's addresses to the node's status when they differ.
    async fn update_addresses(&self, node: &Node, meta: &InstanceMetadata) -> Result<(), Error> {
        let Some(addresses) = cloud_addresses(node, meta) else {
            return Ok(());
        };
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let patch = json!({"status": {"addresses": addresses}});
        match Api::<Node>::all(self.client.clone())
            .patch_status(name, &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::Api {
                action: format!("updating the addresses of node {name}"),
                source,
            }),
        }
    }

    async fn warn(&self, node: &Node, error: &Error) {
        self.recorder
            .emit(
                &object_reference(node),
                EventType::Warning,
                "FailedToInitializeNode",
                &error.to_string(),
            )
            .await;
    }
}

/// The addresses to write for `node`, or `None` when the cloud gives none or they are
/// already the node's. The agent's `Hostname` address stays when the cloud has none.
fn cloud_addresses(node: &Node, meta: &InstanceMetadata) -> Option<Vec<NodeAddress>> {
    if meta.node_addresses.is_empty() {
        return None;
    }
    let current = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default();
    let mut wanted = meta.node_addresses.clone();
    if !wanted.iter().any(|a| a.type_ == "Hostname") {
        wanted.extend(current.iter().filter(|a| a.type_ == "Hostname").cloned());
    }
    let by_type = |list: &[NodeAddress]| -> BTreeMap<String, String> {
        list.iter()
            .map(|a| (a.type_.clone(), a.address.clone()))
            .collect()
    };
    let changed = current.len() != wanted.len() || by_type(&current) != by_type(&wanted);
    changed.then_some(wanted)
}

/// Whether a label key is in a Kubernetes namespace (`kubernetes.io/`, `k8s.io/`, and
/// their subdomains), which the cloud's additional labels may not use.
fn kubernetes_label(key: &str) -> bool {
    key.contains("kubernetes.io/") || key.contains("k8s.io/")
}

/// The node as the cloud initialises it: provider id, labels, and no
/// [`TAINT_UNINITIALIZED`].
fn initialised(node: &Node, meta: &InstanceMetadata) -> Node {
    let mut node = node.clone();
    let spec = node.spec.get_or_insert_with(Default::default);
    if spec.provider_id.as_deref().unwrap_or_default().is_empty() && !meta.provider_id.is_empty() {
        spec.provider_id = Some(meta.provider_id.clone());
    }
    if let Some(taints) = spec.taints.as_mut() {
        taints.retain(|t| t.key != TAINT_UNINITIALIZED);
    }
    if spec.taints.as_ref().is_some_and(Vec::is_empty) {
        spec.taints = None;
    }
    let labels = node.metadata.labels.get_or_insert_with(BTreeMap::new);
    for (value, keys) in [
        (
            &meta.instance_type,
            [LABEL_INSTANCE_TYPE, LABEL_INSTANCE_TYPE_BETA],
        ),
        (&meta.zone, [LABEL_ZONE, LABEL_ZONE_BETA]),
        (&meta.region, [LABEL_REGION, LABEL_REGION_BETA]),
    ] {
        if !value.is_empty() {
            for key in keys {
                labels.insert(key.to_owned(), value.clone());
            }
        }
    }
    for (k, v) in &meta.additional_labels {
        if kubernetes_label(k) {
            tracing::warn!(label = %k, "discarding a cloud label in a Kubernetes namespace");
        } else if !labels.contains_key(k) {
            labels.insert(k.clone(), v.clone());
        }
    }
    node
}

#[async_trait]
impl Reconciler<Node> for CloudNodeController {
    type Error = Error;

    async fn reconcile(&self, node: Arc<Node>, ctx: &Context) -> Result<Action, Error> {
        if !has_taint(&node, TAINT_UNINITIALIZED) || node.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let Some(instances) = self.cloud.instances() else {
            return Ok(Action::await_change());
        };
        let name = ctx.key.name.to_string();
        tracing::info!(node = %name, cloud = self.cloud.name(), "initialising node");
        let meta = match instances.instance_metadata(&node).await {
            Ok(meta) => meta,
            Err(source) => {
                let e = Error::Cloud {
                    action: format!("failed to get instance metadata for node {name}"),
                    source,
                };
                self.warn(&node, &e).await;
                return Err(e);
            }
        };
        let has_id = !node
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .unwrap_or_default()
            .is_empty();
        if meta.provider_id.is_empty() && !has_id {
            let e = Error::Invalid(format!(
                "cloud provider does not set node provider ID for node {name}"
            ));
            self.warn(&node, &e).await;
            return Err(e);
        }
        let updated = Api::<Node>::all(self.client.clone())
            .replace(&name, &initialised(&node, &meta))
            .await
            .map_err(|source| Error::Api {
                action: format!("initialising node {name}"),
                source,
            })?;
        self.update_addresses(&updated, &meta).await?;
        tracing::info!(node = %name, "node initialised by the cloud provider");
        self.recorder
            .emit(
                &object_reference(node.as_ref()),
                EventType::Normal,
                "Synced",
                "Node synced successfully",
            )
            .await;
        Ok(Action::await_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_core::k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, Taint};

    fn addr(t: &str, a: &str) -> NodeAddress {
        NodeAddress {
            type_: t.into(),
            address: a.into(),
        }
    }

    fn tainted() -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.labels = Some([("mine".to_owned(), "kept".to_owned())].into());
        n.spec = Some(NodeSpec {
            taints: Some(vec![
                Taint {
                    key: TAINT_UNINITIALIZED.into(),
                    value: Some("true".into()),
                    effect: "NoSchedule".into(),
                    time_added: None,
                },
                Taint {
                    key: "other".into(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                },
            ]),
            ..NodeSpec::default()
        });
        n.status = Some(NodeStatus {
            addresses: Some(vec![addr("InternalIP", "10.0.0.1"), addr("Hostname", "n1")]),
            ..NodeStatus::default()
        });
        n
    }

    #[test]
    fn initialising_sets_the_provider_id_and_labels_and_removes_only_the_cloud_taint() {
        let meta = InstanceMetadata {
            provider_id: "test://n1".into(),
            instance_type: "big".into(),
            zone: "z1".into(),
            region: "r1".into(),
            additional_labels: [
                ("cloud.example/rack".to_owned(), "7".to_owned()),
                ("node.kubernetes.io/sneaky".to_owned(), "x".to_owned()),
                ("mine".to_owned(), "overwritten".to_owned()),
            ]
            .into(),
            ..InstanceMetadata::default()
        };
        let n = initialised(&tainted(), &meta);
        let spec = n.spec.unwrap();
        assert_eq!(spec.provider_id.as_deref(), Some("test://n1"));
        let taints: Vec<_> = spec.taints.unwrap().into_iter().map(|t| t.key).collect();
        assert_eq!(taints, ["other"]);
        let labels = n.metadata.labels.unwrap();
        for (k, v) in [
            (LABEL_INSTANCE_TYPE, "big"),
            (LABEL_INSTANCE_TYPE_BETA, "big"),
            (LABEL_ZONE, "z1"),
            (LABEL_ZONE_BETA, "z1"),
            (LABEL_REGION, "r1"),
            (LABEL_REGION_BETA, "r1"),
            ("cloud.example/rack", "7"),
            ("mine", "kept"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert!(!labels.contains_key("node.kubernetes.io/sneaky"));
    }

    #[test]
    fn an_existing_provider_id_is_kept() {
        let mut node = tainted();
        node.spec.as_mut().unwrap().provider_id = Some("kubelet://given".into());
        let meta = InstanceMetadata {
            provider_id: "test://n1".into(),
            ..InstanceMetadata::default()
        };
        let n = initialised(&node, &meta);
        assert_eq!(
            n.spec.unwrap().provider_id.as_deref(),
            Some("kubelet://given")
        );
    }

    #[test]
    fn cloud_addresses_keep_the_agents_hostname_and_skip_what_is_already_there() {
        let node = tainted();
        let meta = InstanceMetadata {
            node_addresses: vec![
                addr("InternalIP", "10.0.0.9"),
                addr("ExternalIP", "1.2.3.4"),
            ],
            ..InstanceMetadata::default()
        };
        let wanted = cloud_addresses(&node, &meta).unwrap();
        assert_eq!(
            wanted,
            [
                addr("InternalIP", "10.0.0.9"),
                addr("ExternalIP", "1.2.3.4"),
                addr("Hostname", "n1")
            ]
        );
        let same = InstanceMetadata {
            node_addresses: vec![addr("Hostname", "n1"), addr("InternalIP", "10.0.0.1")],
            ..InstanceMetadata::default()
        };
        assert_eq!(cloud_addresses(&node, &same), None);
        assert_eq!(cloud_addresses(&node, &InstanceMetadata::default()), None);
    }
}
