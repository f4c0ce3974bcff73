//! The cloud node lifecycle controller (`cloud-node-lifecycle`): Nodes follow their
//! machines.
//!
//! For every node whose Ready condition is not `True` (an agent that stopped posting
//! status has it `Unknown`), the controller asks the cloud about the machine, then and
//! every `node_monitor_period` (5 s) while the node stays so:
//! - a machine that no longer exists: the Node object is deleted, with a `DeletingNode`
//!   event ("Deleting node N because it does not exist in the cloud provider");
//! - a machine that exists but is shut down: the node is tainted
//!   [`TAINT_SHUTDOWN`] (`NoSchedule`).
//!
//! A node that is Ready again loses the shutdown taint. A provider error is a Warning
//! event `FailedToCheckInstance` on the node (Kubernetes only logs it) and a retry with
//! the per-key back-off; other nodes are served meanwhile.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keelson_core::client::{Api, Client, DeleteOptions};
use keelson_core::k8s_openapi::api::core::v1::{Node, Taint};

use super::provider::CloudProvider;
use super::{has_taint, CloudConfig, Error};
use crate::controller::{Action, Context, Controller, Reconciler};
use crate::events::{object_reference, EventType, Recorder};
use crate::informer::InformerFactory;
use crate::watcher;

/// The taint of a node whose machine is shut down.
pub const TAINT_SHUTDOWN: &str = "node.cloudprovider.kubernetes.io/shutdown";

/// The cloud node lifecycle reconciler (see the [module docs](self)).
pub struct CloudNodeLifecycleController {
    client: Client,
    cloud: Arc<dyn CloudProvider>,
    recorder: Recorder,
    monitor_period: Duration,
}

impl std::fmt::Debug for CloudNodeLifecycleController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudNodeLifecycleController")
            .field("cloud", &self.cloud.name())
            .field("monitor_period", &self.monitor_period)
            .finish_non_exhaustive()
    }
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl CloudNodeLifecycleController {
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
        .name("cloud-node-lifecycle");
        let reconciler = Arc::new(CloudNodeLifecycleController {
            client: client.clone(),
            cloud,
            recorder: Recorder::new(client.clone(), "cloud-node-lifecycle-controller", "keelson"),
            monitor_period: config.node_monitor_period,
        });
        (controller, reconciler)
    }

    /// Writes `node` with `taints` (guarded by its `resourceVersion`).
    async fn set_taints(&self, node: &Node, taints: Vec<Taint>) -> Result<(), Error> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let mut updated = node.clone();
        updated.spec.get_or_insert_with(Default::default).taints =
            (!taints.is_empty()).then_some(taints);
        match Api::<Node>::all(self.client.clone())
            .replace(name, &updated)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::Api {
                action: format!("updating the taints of node {name}"),
                source,
            }),
        }
    }

    async fn cloud_failed(&self, node: &Node, e: Error) -> Error {
        self.recorder
            .emit(
                &object_reference(node),
                EventType::Warning,
                "FailedToCheckInstance",
                &e.to_string(),
            )
            .await;
        e
    }
}

#[async_trait]
impl Reconciler<Node> for CloudNodeLifecycleController {
    type Error = Error;

    async fn reconcile(&self, node: Arc<Node>, ctx: &Context) -> Result<Action, Error> {
        let Some(instances) = self.cloud.instances() else {
            return Ok(Action::await_change());
        };
        let name = ctx.key.name.to_string();
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if ready(&node) {
            if has_taint(&node, TAINT_SHUTDOWN) {
                tracing::info!(node = %name, "node is Ready: removing the shutdown taint");
                let kept = taints
                    .into_iter()
                    .filter(|t| t.key != TAINT_SHUTDOWN)
                    .collect();
                self.set_taints(&node, kept).await?;
            }
            return Ok(Action::await_change());
        }
        if node.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let exists = match instances.instance_exists(&node).await {
            Ok(exists) => exists,
            Err(source) => {
                let e = Error::Cloud {
                    action: format!("failed to check if node {name} exists"),
                    source,
                };
                return Err(self.cloud_failed(&node, e).await);
            }
        };
        if !exists {
            tracing::info!(node = %name, "deleting node: its machine no longer exists in the cloud");
            self.recorder
                .emit(
                    &object_reference(node.as_ref()),
                    EventType::Normal,
                    "DeletingNode",
                    &format!(
                        "Deleting node {name} because it does not exist in the cloud provider"
                    ),
                )
                .await;
            let opts = DeleteOptions {
                uid: node.metadata.uid.clone(),
                ..DeleteOptions::default()
            };
            return match Api::<Node>::all(self.client.clone())
                .delete(&name, &opts)
                .await
            {
                Ok(_) => Ok(Action::await_change()),
                Err(e) if e.is_not_found() || e.is_conflict() => Ok(Action::await_change()),
                Err(source) => Err(Error::Api {
                    action: format!("deleting node {name}"),
                    source,
                }),
            };
        }
        let shutdown = match instances.instance_shutdown(&node).await {
            Ok(shutdown) => shutdown,
            Err(source) => {
                let e = Error::Cloud {
                    action: format!("failed to check if node {name} is shut down"),
                    source,
                };
                return Err(self.cloud_failed(&node, e).await);
            }
        };
        if shutdown && !has_taint(&node, TAINT_SHUTDOWN) {
            tracing::info!(node = %name, "node's machine is shut down: tainting it");
            let mut taints = taints;
            taints.push(Taint {
                key: TAINT_SHUTDOWN.into(),
                effect: "NoSchedule".into(),
                time_added: None,
                value: None,
            });
            self.set_taints(&node, taints).await?;
        }
        Ok(Action::requeue(self.monitor_period))
    }
}
