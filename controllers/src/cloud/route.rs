//! The route controller (`route`): a cloud route to every node's pod range.
//!
//! One pass over the whole cluster, as Kubernetes' route controller does it:
//! - lists the cloud's routes for the cluster (`cluster_name`);
//! - for every node with pod ranges (`spec.podCIDRs`, or `spec.podCIDR`), creates the
//!   missing route to each range (named after the node's uid); a failure is a Warning
//!   event `FailedToCreateRoute` on the node ("Could not create route ...");
//! - deletes the routes the controller is responsible for (those inside the
//!   `cluster_cidrs`, or all when none are configured) that lead nowhere (blackholes) or
//!   to a range no node has any more;
//! - sets each node's `NetworkUnavailable` condition: `False`, reason `RouteCreated`
//!   ("RouteController created a route"), when every range of the node has its route;
//!   otherwise `True`, reason `NoRouteCreated` ("RouteController failed to create a
//!   route"), which also covers nodes without a pod range. The condition is merged into
//!   the node's status by a strategic merge patch, so the agent's conditions stay.
//!
//! A pass runs when a node appears, goes, changes pod ranges or loses the condition,
//! and every `route_reconciliation_period` (10 s); a pass that fails (the cloud could
//! not list, create or delete) runs again after the work queue's per-key back-off.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use keelson_core::client::{Api, Client, Patch};
use keelson_core::k8s_openapi::api::core::v1::{Node, NodeCondition};
use serde_json::json;

use super::provider::{CloudProvider, Route};
use super::{CloudConfig, Error};
use crate::clock;
use crate::events::{object_reference, EventType, Recorder};
use crate::informer::{Informer, InformerFactory};
use crate::object::ObjectRef;
use crate::reflector::{Change, Reader};
use crate::watcher;
use crate::workqueue::WorkQueue;

/// The node condition the route controller sets.
pub const CONDITION_NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";

/// A range that is not a CIDR.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCidr(String);

/// An IP range (`10.244.0.0/16`, `fd00::/64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address/prefix`.
    ///
    /// # Errors
    /// [`InvalidCidr`], saying what is wrong with `s`.
    pub fn parse(s: &str) -> Result<Cidr, InvalidCidr> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| InvalidCidr(format!("invalid CIDR {s:?}: no /prefix")))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|e| InvalidCidr(format!("invalid CIDR {s:?}: {e}")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| {
            InvalidCidr(format!("invalid CIDR {s:?}: the prefix must be 0 to {max}"))
        })?;
        Ok(Cidr { addr, prefix })
    }

    fn bits(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// Whether every address of `other` is in this range.
    pub fn contains(&self, other: &Cidr) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() || other.prefix < self.prefix {
            return false;
        }
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        let shift = width - u32::from(self.prefix);
        let (a, b) = (Self::bits(self.addr), Self::bits(other.addr));
        shift >= 128 || (a >> shift) == (b >> shift)
    }
}

/// A node's pod ranges: `spec.podCIDRs`, or `spec.podCIDR` when that is empty.
fn pod_cidrs(node: &Node) -> Vec<String> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    match spec.pod_cidrs.as_deref() {
        Some(list) if !list.is_empty() => list.to_vec(),
        _ => spec
            .pod_cidr
            .clone()
            .filter(|c| !c.is_empty())
            .into_iter()
            .collect(),
    }
}

fn network_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == CONDITION_NETWORK_UNAVAILABLE)
}

/// Whether a node change can change what a pass does.
fn relevant(change: &Change<Node>) -> bool {
    match change {
        Change::Applied { old: None, .. } | Change::Deleted(_) => true,
        Change::Applied {
            old: Some(old),
            new,
        } => {
            pod_cidrs(old) != pod_cidrs(new)
                || network_condition(old).map(|c| (&c.status, &c.reason))
                    != network_condition(new).map(|c| (&c.status, &c.reason))
        }
    }
}

/// The route controller (see the [module docs](self)).
pub struct RouteController {
    client: Client,
    cloud: Arc<dyn CloudProvider>,
    informer: Informer<Node>,
    nodes: Reader<Node>,
    recorder: Recorder,
    config: CloudConfig,
    responsible_for: Vec<Cidr>,
}

impl std::fmt::Debug for RouteController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteController")
            .field("cloud", &self.cloud.name())
            .field("cluster_cidrs", &self.config.cluster_cidrs)
            .finish_non_exhaustive()
    }
}

impl RouteController {
    /// Builds the controller on `factory`'s node informer.
    ///
    /// # Errors
    /// [`InvalidCidr`] for a `cluster_cidrs` entry that is not a CIDR.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(
        client: &Client,
        factory: &InformerFactory,
        cloud: Arc<dyn CloudProvider>,
        config: &CloudConfig,
    ) -> Result<RouteController, InvalidCidr> {
        let responsible_for = config
            .cluster_cidrs
            .iter()
            .map(|c| Cidr::parse(c))
            .collect::<Result<Vec<_>, _>>()?;
        let informer =
            factory.informer(Api::<Node>::all(client.clone()), watcher::Config::default());
        Ok(RouteController {
            client: client.clone(),
            cloud,
            nodes: informer.reader(),
            informer,
            recorder: Recorder::new(client.clone(), "route_controller", "keelson"),
            config: config.clone(),
            responsible_for,
        })
    }

    /// Runs passes (see the [module docs](self)) until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => return,
            r = self.nodes.wait_until_ready() => if r.is_err() { return },
        }
        tracing::info!(controller = "route", "caches ready; starting");
        let queue: WorkQueue<ObjectRef> = WorkQueue::new();
        let key = ObjectRef::new(None, "routes");
        let trigger = {
            let (queue, key) = (queue.clone(), key.clone());
            let mut changes = self.informer.subscribe();
            tokio::spawn(async move {
                while let Some(change) = changes.next().await {
                    if relevant(&change) {
                        queue.add(key.clone());
                    }
                }
            })
        };
        queue.add(key);
        loop {
            let next = tokio::select! {
                _ = &mut shutdown => break,
                k = queue.get() => k,
            };
            let Some(k) = next else { break };
            match self.reconcile().await {
                Ok(()) => {
                    queue.forget(&k);
                    queue.add_after(k.clone(), self.config.route_reconciliation_period);
                }
                Err(e) => {
                    tracing::warn!(controller = "route", error = %e, "route reconciliation failed; retrying");
                    queue.add_rate_limited(k.clone());
                }
            }
            queue.done(&k);
        }
        queue.shut_down();
        trigger.abort();
        tracing::info!(controller = "route", "shutting down");
    }

    fn responsible(&self, route: &Route) -> bool {
        if self.responsible_for.is_empty() {
            return true;
        }
        Cidr::parse(&route.destination_cidr)
            .is_ok_and(|c| self.responsible_for.iter().any(|r| r.contains(&c)))
    }

    /// One pass: routes created and deleted, node conditions set.
    ///
    /// # Errors
    /// The first failure of the cloud or the API server; the rest of the pass was done.
    pub async fn reconcile(&self) -> Result<(), Error> {
        let Some(routes_api) = self.cloud.routes() else {
            return Ok(());
        };
        let cluster = self.config.cluster_name.as_str();
        let routes = routes_api
            .list_routes(cluster)
            .await
            .map_err(|source| Error::Cloud {
                action: "failed to list routes".into(),
                source,
            })?;
        let mut existing: HashMap<&str, Vec<&str>> = HashMap::new();
        for r in &routes {
            if !r.target_node.is_empty() {
                existing
                    .entry(r.target_node.as_str())
                    .or_default()
                    .push(r.destination_cidr.as_str());
            }
        }
        let nodes = self.nodes.list();
        let mut failure: Option<Error> = None;
        // Per node, its ranges and whether each has its route.
        let mut created: HashMap<String, BTreeMap<String, bool>> = HashMap::new();
        for node in &nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let cidrs = pod_cidrs(node);
            if cidrs.is_empty() {
                continue;
            }
            let mut status = BTreeMap::new();
            for cidr in cidrs {
                let has = existing
                    .get(name.as_str())
                    .is_some_and(|l| l.contains(&cidr.as_str()));
                if has {
                    status.insert(cidr, true);
                    continue;
                }
                let route = Route {
                    name: String::new(),
                    target_node: name.clone(),
                    destination_cidr: cidr.clone(),
                    blackhole: false,
                };
                let hint = node.metadata.uid.clone().unwrap_or_default();
                let start = tokio::time::Instant::now();
                match routes_api.create_route(cluster, &hint, &route).await {
                    Ok(()) => {
                        tracing::info!(node = %name, cidr = %cidr, "created route");
                        status.insert(cidr, true);
                    }
                    Err(source) => {
                        let message = format!(
                            "Could not create route {hint} {cidr} for node {name} after {:?}: {source}",
                            start.elapsed()
                        );
                        self.recorder
                            .emit(
                                &object_reference(node.as_ref()),
                                EventType::Warning,
                                "FailedToCreateRoute",
                                &message,
                            )
                            .await;
                        failure.get_or_insert(Error::Cloud {
                            action: format!("failed to create a route to {cidr} for node {name}"),
                            source,
                        });
                        status.insert(cidr, false);
                    }
                }
            }
            created.insert(name, status);
        }
        for route in &routes {
            if !self.responsible(route) {
                continue;
            }
            let wanted = created
                .get(&route.target_node)
                .is_some_and(|s| s.contains_key(&route.destination_cidr));
            if route.blackhole || !wanted {
                match routes_api.delete_route(cluster, route).await {
                    Ok(()) => {
                        tracing::info!(route = %route.name, cidr = %route.destination_cidr, "deleted route")
                    }
                    Err(source) => {
                        tracing::warn!(route = %route.name, error = %source, "could not delete route");
                        failure.get_or_insert(Error::Cloud {
                            action: format!(
                                "failed to delete route {} to {}",
                                route.name, route.destination_cidr
                            ),
                            source,
                        });
                    }
                }
            }
        }
        for node in &nodes {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            let all_created = created
                .get(name)
                .is_some_and(|s| !s.is_empty() && s.values().all(|c| *c));
            if let Err(e) = self.set_condition(node, all_created).await {
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Sets the node's `NetworkUnavailable` condition (nothing when it is already so).
    async fn set_condition(&self, node: &Node, routes_created: bool) -> Result<(), Error> {
        let (status, reason, message) = if routes_created {
            ("False", "RouteCreated", "RouteController created a route")
        } else {
            (
                "True",
                "NoRouteCreated",
                "RouteController failed to create a route",
            )
        };
        if network_condition(node)
            .is_some_and(|c| c.status == status && c.reason.as_deref() == Some(reason))
        {
            return Ok(());
        }
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let now = clock::now_time();
        let patch = json!({"status": {"conditions": [{
            "type": CONDITION_NETWORK_UNAVAILABLE,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        match Api::<Node>::all(self.client.clone())
            .patch_status(name, &Patch::Strategic(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::Api {
                action: format!(
                    "setting the {CONDITION_NETWORK_UNAVAILABLE} condition of node {name}"
                ),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_contain_their_subranges_only() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        assert!(c("10.0.0.0/8").contains(&c("10.244.1.0/24")));
        assert!(c("10.244.1.0/24").contains(&c("10.244.1.0/24")));
        assert!(!c("10.244.1.0/24").contains(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/8").contains(&c("11.0.0.0/24")));
        assert!(c("0.0.0.0/0").contains(&c("192.168.0.0/16")));
        assert!(c("fd00::/8").contains(&c("fd00:1::/64")));
        assert!(!c("fd00::/8").contains(&c("10.0.0.0/8")));
        assert!(c("::/0").contains(&c("fd00:1::/64")));
        for bad in ["10.0.0.0", "10.0.0.0/33", "nope/8", "fd00::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
