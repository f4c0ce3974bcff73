//! The [`CloudProvider`] trait and its capabilities: [`Instances`], [`Routes`],
//! [`LoadBalancers`].

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use keelson_core::k8s_openapi::api::core::v1::{LoadBalancerStatus, Node, NodeAddress, Service};

/// A cloud: the machines nodes run on, routes to their pod ranges, and load balancers.
///
/// Each capability is optional, as in Kubernetes' cloud provider interface: a provider
/// without routes returns `None` from [`routes`](CloudProvider::routes) (the default),
/// and the controllers that need it do not run. Implementations are shared by every
/// cloud controller and called concurrently.
pub trait CloudProvider: Send + Sync + 'static {
    /// The provider's name (`local`, `aws`), for logs and events.
    fn name(&self) -> &str;

    /// The provider's instances (machines), if it knows them.
    fn instances(&self) -> Option<&dyn Instances> {
        None
    }

    /// The provider's routes, if it programs any.
    fn routes(&self) -> Option<&dyn Routes> {
        None
    }

    /// The provider's load balancers, if it has any.
    fn load_balancers(&self) -> Option<&dyn LoadBalancers> {
        None
    }
}

/// What the cloud says about a node's machine ([`Instances::instance_metadata`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceMetadata {
    /// The machine's id in the cloud's URI form (`aws:///us-east-1a/i-0abc`), for
    /// `spec.providerID`.
    pub provider_id: String,
    /// The machine type (`m5.large`), for the `node.kubernetes.io/instance-type` label;
    /// empty: no label.
    pub instance_type: String,
    /// The machine's addresses, for `status.addresses`; empty: left as the node agent
    /// reports them.
    pub node_addresses: Vec<NodeAddress>,
    /// The zone (`topology.kubernetes.io/zone`); empty: no label.
    pub zone: String,
    /// The region (`topology.kubernetes.io/region`); empty: no label.
    pub region: String,
    /// More labels the cloud puts on the node.
    pub additional_labels: BTreeMap<String, String>,
}

/// The machines nodes run on (Kubernetes' `InstancesV2`). Every call gets the Node as
/// the cluster knows it; a provider finds the machine by `spec.providerID` or by name.
#[async_trait]
pub trait Instances: Send + Sync {
    /// Whether the node's machine exists. A node whose machine is gone (and that is not
    /// Ready) is deleted by the cloud node lifecycle controller.
    ///
    /// # Errors
    /// When the cloud cannot tell (the node is then left alone).
    async fn instance_exists(&self, node: &Node) -> Result<bool, CloudError>;

    /// Whether the node's machine exists but is shut down. A shut-down machine's node is
    /// tainted `node.cloudprovider.kubernetes.io/shutdown`.
    ///
    /// # Errors
    /// When the cloud cannot tell.
    async fn instance_shutdown(&self, node: &Node) -> Result<bool, CloudError>;

    /// The machine's provider id, type, addresses, zone and region.
    ///
    /// # Errors
    /// [`CloudError::InstanceNotFound`] when there is no such machine; others when the
    /// cloud cannot tell.
    async fn instance_metadata(&self, node: &Node) -> Result<InstanceMetadata, CloudError>;
}

/// A route in the cloud's network: traffic for `destination_cidr` goes to `target_node`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The cloud's name for the route (set by the provider; ignored by
    /// [`Routes::create_route`]).
    pub name: String,
    /// The node the traffic goes to.
    pub target_node: String,
    /// The pod range (`10.244.1.0/24`).
    pub destination_cidr: String,
    /// Whether the route leads nowhere (its node is gone): such routes are deleted.
    pub blackhole: bool,
}

/// The cloud's routes to the nodes' pod ranges (Kubernetes' `Routes`).
#[async_trait]
pub trait Routes: Send + Sync {
    /// The routes that belong to `cluster_name`.
    ///
    /// # Errors
    /// When the routes cannot be listed.
    async fn list_routes(&self, cluster_name: &str) -> Result<Vec<Route>, CloudError>;

    /// Creates `route` for `cluster_name`; `name_hint` (the node's uid) may name it.
    /// Creating a route that exists succeeds.
    ///
    /// # Errors
    /// When the route cannot be created.
    async fn create_route(
        &self,
        cluster_name: &str,
        name_hint: &str,
        route: &Route,
    ) -> Result<(), CloudError>;

    /// Deletes `route` (as listed). Deleting a route that is gone succeeds.
    ///
    /// # Errors
    /// When the route cannot be deleted.
    async fn delete_route(&self, cluster_name: &str, route: &Route) -> Result<(), CloudError>;
}

/// The cloud's load balancers for `type: LoadBalancer` Services (Kubernetes'
/// `LoadBalancer`). One load balancer per Service; all calls are idempotent.
#[async_trait]
pub trait LoadBalancers: Send + Sync {
    /// The Service's load balancer, if it exists: its status.
    ///
    /// # Errors
    /// When the cloud cannot tell.
    async fn get_load_balancer(
        &self,
        cluster_name: &str,
        service: &Service,
    ) -> Result<Option<LoadBalancerStatus>, CloudError>;

    /// The cloud's name for the Service's load balancer: by default `a` and the
    /// Service's uid without dashes, at most 32 characters, as Kubernetes names them.
    fn load_balancer_name(&self, cluster_name: &str, service: &Service) -> String {
        let _ = cluster_name;
        default_load_balancer_name(service)
    }

    /// Creates the Service's load balancer, or updates it to the Service's current
    /// spec, sending traffic through `nodes`; returns its status (the ingress points
    /// written to `status.loadBalancer`).
    ///
    /// # Errors
    /// When the load balancer cannot be made as the Service asks (an unsupported
    /// protocol, an address that is taken) or the cloud fails.
    async fn ensure_load_balancer(
        &self,
        cluster_name: &str,
        service: &Service,
        nodes: &[Arc<Node>],
    ) -> Result<LoadBalancerStatus, CloudError>;

    /// Sends the load balancer's traffic through `nodes` now (the set of nodes changed;
    /// the Service did not).
    ///
    /// # Errors
    /// When the cloud fails.
    async fn update_load_balancer(
        &self,
        cluster_name: &str,
        service: &Service,
        nodes: &[Arc<Node>],
    ) -> Result<(), CloudError>;

    /// Deletes the Service's load balancer; succeeds when there is none.
    ///
    /// # Errors
    /// When the cloud fails.
    async fn ensure_load_balancer_deleted(
        &self,
        cluster_name: &str,
        service: &Service,
    ) -> Result<(), CloudError>;
}

/// Kubernetes' default load balancer name: `a` + the Service's uid without dashes, cut
/// to 32 characters.
pub fn default_load_balancer_name(service: &Service) -> String {
    let uid = service.metadata.uid.as_deref().unwrap_or_default();
    let mut name: String = std::iter::once('a')
        .chain(uid.chars().filter(|c| *c != '-'))
        .collect();
    name.truncate(32);
    name
}

/// A cloud provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The node's machine does not exist.
    #[error("instance not found")]
    InstanceNotFound,
    /// Another controller implements this (the service controller then leaves the
    /// Service alone).
    #[error("implemented by another controller")]
    ImplementedElsewhere,
    /// The request cannot be met as asked (retrying will not help until the object
    /// changes): an unsupported protocol, an address outside the provider's range.
    #[error("{0}")]
    Invalid(String),
    /// The cloud cannot answer now (retrying may help).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_balancer_names_are_kubernetes_default_names() {
        let mut s = Service::default();
        s.metadata.uid = Some("6a1b2c3d-4e5f-6789-abcd-ef0123456789".into());
        let name = default_load_balancer_name(&s);
        assert_eq!(name, "a6a1b2c3d4e5f6789abcdef012345678");
        assert_eq!(name.len(), 32);
    }
}
