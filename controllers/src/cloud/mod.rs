//! The cloud controllers (Kubernetes' cloud-controller-manager) and the
//! [`CloudProvider`] trait they drive.
//!
//! A cloud provider knows what the cluster runs on: its machines ([`Instances`]),
//! the routes between the nodes' pod ranges ([`Routes`]) and its load balancers
//! ([`LoadBalancers`]). Each capability is optional. Four controllers keep the cluster
//! and the cloud in step, under cloud-controller-manager's names (which
//! [`ControllerManagerConfig::controllers`](crate::ControllerManagerConfig::controllers)
//! accepts, as well as Kubernetes' long names such as `service-lb-controller`):
//!
//! | name | controller | needs |
//! |---|---|---|
//! | `cloud-node` | [`node`]: initialises nodes tainted `node.cloudprovider.kubernetes.io/uninitialized` (provider id, addresses, instance type, zone and region labels) | instances |
//! | `cloud-node-lifecycle` | [`node_lifecycle`]: deletes Nodes whose machine is gone, taints shut-down ones `node.cloudprovider.kubernetes.io/shutdown` | instances |
//! | `route` | [`route`]: a route per node pod range, stale ones removed, the `NetworkUnavailable` condition | routes |
//! | `service` | [`service`]: a load balancer per `type: LoadBalancer` Service, its address in `status.loadBalancer` | load balancers |
//!
//! [`ControllerManager::cloud_provider`](crate::ControllerManager::cloud_provider)
//! gives the manager a provider; without one (or without the capability a controller
//! needs) the cloud controllers do not run, as in a kube-controller-manager without a
//! cloud. Their settings are in [`CloudConfig`].
//!
//! A provider is written against the traits alone:
//!
//! ```
//! use std::sync::Arc;
//! use keelson_controllers::cloud::{CloudError, CloudProvider, InstanceMetadata, Instances};
//! use keelson_controllers::core::k8s_openapi::api::core::v1::Node;
//!
//! /// Every node is a machine of its own name, in one zone.
//! struct OneZone;
//!
//! #[async_trait::async_trait]
//! impl Instances for OneZone {
//!     async fn instance_exists(&self, _: &Node) -> Result<bool, CloudError> { Ok(true) }
//!     async fn instance_shutdown(&self, _: &Node) -> Result<bool, CloudError> { Ok(false) }
//!     async fn instance_metadata(&self, node: &Node) -> Result<InstanceMetadata, CloudError> {
//!         Ok(InstanceMetadata {
//!             provider_id: format!("onezone://{}", node.metadata.name.as_deref().unwrap_or_default()),
//!             zone: "z1".into(),
//!             ..InstanceMetadata::default()
//!         })
//!     }
//! }
//!
//! impl CloudProvider for OneZone {
//!     fn name(&self) -> &str { "onezone" }
//!     fn instances(&self) -> Option<&dyn Instances> { Some(self) }
//! }
//!
//! let provider: Arc<dyn CloudProvider> = Arc::new(OneZone);
//! assert!(provider.routes().is_none());
//! ```
//!
//! The all-in-one cluster's provider is `keelson::LocalCloud` (its instances are the
//! cluster's nodes, its load balancers are served by `keelson_proxy`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keelson_core::client::Client;
use keelson_core::k8s_openapi::api::core::v1::Node;
use tokio::task::JoinHandle;

use crate::informer::InformerFactory;
use crate::metrics::Metrics;

pub mod node;
pub mod node_lifecycle;
mod provider;
pub mod route;
pub mod service;

pub use node::{CloudNodeController, TAINT_UNINITIALIZED};
pub use node_lifecycle::{CloudNodeLifecycleController, TAINT_SHUTDOWN};
pub use provider::{
    default_load_balancer_name, CloudError, CloudProvider, InstanceMetadata, Instances,
    LoadBalancers, Route, Routes,
};
pub use route::RouteController;
pub use service::{ServiceController, LOAD_BALANCER_CLEANUP_FINALIZER};

/// The cloud controllers, by cloud-controller-manager's names.
pub const CLOUD_CONTROLLERS: [&str; 4] = ["cloud-node", "cloud-node-lifecycle", "route", "service"];

/// The cloud controllers' settings (Kubernetes' flags and defaults).
#[derive(Clone, Debug)]
pub struct CloudConfig {
    /// The cluster's name, given to the provider (`--cluster-name`, `kubernetes`).
    pub cluster_name: String,
    /// The pod ranges whose routes the route controller manages (`--cluster-cidr`);
    /// routes outside them are left alone. Empty: every route the provider lists for
    /// the cluster.
    pub cluster_cidrs: Vec<String>,
    /// How often the cloud node lifecycle controller looks again at a node that is not
    /// Ready (`--node-monitor-period`, 5 s).
    pub node_monitor_period: Duration,
    /// How often the route controller reconciles when nothing changes
    /// (`--route-reconciliation-period`, 10 s).
    pub route_reconciliation_period: Duration,
    /// How often initialised nodes get their addresses from the cloud
    /// (`--node-status-update-frequency`, 5 min).
    pub node_status_update_frequency: Duration,
    /// Concurrent reconciles of the cloud node controller (`--concurrent-node-syncs`, 1).
    pub node_workers: usize,
    /// Concurrent reconciles of the service controller (`--concurrent-service-syncs`, 1).
    pub service_workers: usize,
    /// A `spec.loadBalancerClass` the service controller serves besides Services with
    /// no class (Kubernetes' controller serves only those: `None`).
    pub load_balancer_class: Option<String>,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            cluster_name: "kubernetes".into(),
            cluster_cidrs: Vec::new(),
            node_monitor_period: Duration::from_secs(5),
            route_reconciliation_period: Duration::from_secs(10),
            node_status_update_frequency: Duration::from_secs(300),
            node_workers: 1,
            service_workers: 1,
            load_balancer_class: None,
        }
    }
}

/// A reconcile of a cloud controller failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("{action} failed: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: keelson_core::Error,
    },
    /// A call to the cloud provider failed.
    #[error("{action}: {source}")]
    Cloud {
        /// What was being done (Kubernetes' wording: "failed to ensure load balancer").
        action: String,
        /// The cause.
        #[source]
        source: CloudError,
    },
    /// The configuration or the provider's answer is unusable.
    #[error("{0}")]
    Invalid(String),
}

/// Whether `node` has a taint with `key`.
pub fn has_taint(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .is_some_and(|t| t.iter().any(|t| t.key == key))
}

/// Starts the cloud controllers among `enabled` that `cloud` has the capabilities for,
/// each stopping when a `signal()` completes.
pub(crate) fn start<S, F>(
    client: &Client,
    factory: &InformerFactory,
    cloud: &Arc<dyn CloudProvider>,
    config: &CloudConfig,
    enabled: impl Fn(&str) -> bool,
    metrics: &Metrics,
    signal: S,
) -> Vec<JoinHandle<()>>
where
    S: Fn() -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut tasks = Vec::new();
    let skip = |name: &str, needs: &str| {
        tracing::info!(
            controller = name,
            cloud = cloud.name(),
            "not starting: the cloud provider has no {needs}"
        );
    };
    if enabled("cloud-node") {
        if cloud.instances().is_some() {
            let (c, r) = CloudNodeController::controller(client, factory, cloud.clone(), config);
            tasks.push(tokio::spawn(r.clone().run_address_updates(signal())));
            let c = c
                .concurrency(config.node_workers)
                .metrics(metrics)
                .graceful_shutdown_on(signal());
            tasks.push(tokio::spawn(c.run(r)));
        } else {
            skip("cloud-node", "instances");
        }
    }
    if enabled("cloud-node-lifecycle") {
        if cloud.instances().is_some() {
            let (c, r) =
                CloudNodeLifecycleController::controller(client, factory, cloud.clone(), config);
            let c = c.metrics(metrics).graceful_shutdown_on(signal());
            tasks.push(tokio::spawn(c.run(r)));
        } else {
            skip("cloud-node-lifecycle", "instances");
        }
    }
    if enabled("route") {
        if cloud.routes().is_some() {
            match RouteController::new(client, factory, cloud.clone(), config) {
                Ok(r) => tasks.push(tokio::spawn(r.run(signal()))),
                Err(e) => tracing::error!(controller = "route", error = %e, "not starting"),
            }
        } else {
            skip("route", "routes");
        }
    }
    if enabled("service") {
        if cloud.load_balancers().is_some() {
            let (c, r) = ServiceController::controller(client, factory, cloud.clone(), config);
            let c = c
                .concurrency(config.service_workers)
                .metrics(metrics)
                .graceful_shutdown_on(signal());
            tasks.push(tokio::spawn(c.run(r)));
        } else {
            skip("service", "load balancers");
        }
    }
    tasks
}
