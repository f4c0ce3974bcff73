//! The cloud controllers (cloud node, cloud node lifecycle, route, service) against a
//! fake cloud provider, under paused time.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{cluster, eventually, shutdown};
use keelson_controllers::cloud::{
    CloudError, CloudProvider, InstanceMetadata, Instances, LoadBalancers, Route, Routes,
    LOAD_BALANCER_CLEANUP_FINALIZER, TAINT_SHUTDOWN, TAINT_UNINITIALIZED,
};
use keelson_controllers::{ControllerManager, ControllerManagerConfig};
use keelson_core::client::{Api, Client, DeleteOptions, ListParams, Patch};
use keelson_core::k8s_openapi::api::core::v1::{
    Event, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, Service,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// A machine of the fake cloud.
#[derive(Clone, Default)]
struct Machine {
    gone: bool,
    shut_down: bool,
}

#[derive(Default)]
struct State {
    machines: HashMap<String, Machine>,
    /// Failures to inject, by operation (`metadata`, `exists`, `create_route`, `ensure`,
    /// `update`), each counting down.
    failures: HashMap<&'static str, u32>,
    routes: BTreeMap<String, Route>,
    /// Load balancers by `namespace/name`: the nodes they were last given.
    lbs: BTreeMap<String, Vec<String>>,
    updates: u32,
}

/// A cloud whose machines are the nodes named in it, with routes and load balancers
/// kept in memory and failures on demand.
#[derive(Default)]
struct FakeCloud {
    state: Mutex<State>,
    no_routes: bool,
}

impl FakeCloud {
    fn with(f: impl FnOnce(&mut State)) -> Arc<FakeCloud> {
        let cloud = FakeCloud::default();
        f(&mut cloud.state.lock().unwrap());
        Arc::new(cloud)
    }

    fn fail(&self, op: &'static str, times: u32) {
        self.state.lock().unwrap().failures.insert(op, times);
    }

    fn check(&self, op: &'static str) -> Result<(), CloudError> {
        let mut s = self.state.lock().unwrap();
        match s.failures.get_mut(op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(CloudError::Unavailable(format!(
                    "the fake cloud refuses {op}"
                )))
            }
            _ => Ok(()),
        }
    }

    fn machine(&self, node: &Node) -> Option<Machine> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        self.state.lock().unwrap().machines.get(name).cloned()
    }

    fn lbs(&self) -> BTreeMap<String, Vec<String>> {
        self.state.lock().unwrap().lbs.clone()
    }
}

fn key(s: &Service) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default()
    )
}

fn names(nodes: &[Arc<Node>]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n.metadata.name.clone().unwrap_or_default())
        .collect()
}

#[async_trait]
impl Instances for FakeCloud {
    async fn instance_exists(&self, node: &Node) -> Result<bool, CloudError> {
        self.check("exists")?;
        Ok(self.machine(node).is_some_and(|m| !m.gone))
    }

    async fn instance_shutdown(&self, node: &Node) -> Result<bool, CloudError> {
        Ok(self.machine(node).is_some_and(|m| m.shut_down))
    }

    async fn instance_metadata(&self, node: &Node) -> Result<InstanceMetadata, CloudError> {
        self.check("metadata")?;
        let name = node.metadata.name.clone().unwrap_or_default();
        if self.machine(node).is_none_or(|m| m.gone) {
            return Err(CloudError::InstanceNotFound);
        }
        Ok(InstanceMetadata {
            provider_id: format!("fake://{name}"),
            instance_type: "fake.large".into(),
            node_addresses: vec![NodeAddress {
                type_: "InternalIP".into(),
                address: "10.9.9.9".into(),
            }],
            zone: "zone-a".into(),
            region: "region-1".into(),
            additional_labels: BTreeMap::new(),
        })
    }
}

#[async_trait]
impl Routes for FakeCloud {
    async fn list_routes(&self, cluster_name: &str) -> Result<Vec<Route>, CloudError> {
        assert_eq!(cluster_name, "kubernetes");
        Ok(self
            .state
            .lock()
            .unwrap()
            .routes
            .values()
            .cloned()
            .collect())
    }

    async fn create_route(&self, _: &str, hint: &str, route: &Route) -> Result<(), CloudError> {
        self.check("create_route")?;
        let name = format!("r-{hint}-{}", route.destination_cidr);
        let route = Route {
            name: name.clone(),
            ..route.clone()
        };
        self.state.lock().unwrap().routes.insert(name, route);
        Ok(())
    }

    async fn delete_route(&self, _: &str, route: &Route) -> Result<(), CloudError> {
        self.state.lock().unwrap().routes.remove(&route.name);
        Ok(())
    }
}

#[async_trait]
impl LoadBalancers for FakeCloud {
    async fn get_load_balancer(
        &self,
        _: &str,
        service: &Service,
    ) -> Result<Option<LoadBalancerStatus>, CloudError> {
        let exists = self.state.lock().unwrap().lbs.contains_key(&key(service));
        Ok(exists.then(|| status("192.0.2.10")))
    }

    async fn ensure_load_balancer(
        &self,
        _: &str,
        service: &Service,
        nodes: &[Arc<Node>],
    ) -> Result<LoadBalancerStatus, CloudError> {
        self.check("ensure")?;
        self.state
            .lock()
            .unwrap()
            .lbs
            .insert(key(service), names(nodes));
        Ok(status("192.0.2.10"))
    }

    async fn update_load_balancer(
        &self,
        _: &str,
        service: &Service,
        nodes: &[Arc<Node>],
    ) -> Result<(), CloudError> {
        self.check("update")?;
        let mut s = self.state.lock().unwrap();
        s.updates += 1;
        s.lbs.insert(key(service), names(nodes));
        Ok(())
    }

    async fn ensure_load_balancer_deleted(
        &self,
        _: &str,
        service: &Service,
    ) -> Result<(), CloudError> {
        self.state.lock().unwrap().lbs.remove(&key(service));
        Ok(())
    }
}

impl CloudProvider for FakeCloud {
    fn name(&self) -> &str {
        "fake"
    }
    fn instances(&self) -> Option<&dyn Instances> {
        Some(self)
    }
    fn routes(&self) -> Option<&dyn Routes> {
        (!self.no_routes).then_some(self as &dyn Routes)
    }
    fn load_balancers(&self) -> Option<&dyn LoadBalancers> {
        Some(self)
    }
}

fn status(ip: &str) -> LoadBalancerStatus {
    LoadBalancerStatus {
        ingress: Some(vec![LoadBalancerIngress {
            ip: Some(ip.into()),
            ..LoadBalancerIngress::default()
        }]),
    }
}

/// Runs the manager with only `controllers`, on `cloud`.
fn run(
    client: &Client,
    cloud: Arc<FakeCloud>,
    controllers: &[&str],
    config: impl FnOnce(&mut ControllerManagerConfig),
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let mut cfg = ControllerManagerConfig::default()
        .controllers(controllers)
        .unwrap();
    config(&mut cfg);
    let (stop, signal) = shutdown();
    let manager = ControllerManager::with_config(client.clone(), cfg).cloud_provider(cloud);
    (stop, tokio::spawn(manager.run(signal())))
}

async fn stop(
    run: (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ),
) {
    run.0.send(true).unwrap();
    tokio::time::timeout(WAIT, run.1).await.unwrap().unwrap();
}

/// Creates a node with `taints`, pod range `cidr`, Ready `ready` and the agent's
/// addresses.
async fn node(
    client: &Client,
    name: &str,
    ready: Option<&str>,
    cidr: Option<&str>,
    taints: serde_json::Value,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut spec = json!({"taints": taints});
    if let Some(c) = cidr {
        spec["podCIDR"] = json!(c);
        spec["podCIDRs"] = json!([c]);
    }
    let n: Node =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    nodes.create(&n).await.unwrap();
    let mut status = json!({"addresses": [
        {"type": "InternalIP", "address": "127.0.0.1"},
        {"type": "Hostname", "address": name},
    ]});
    if let Some(r) = ready {
        status["conditions"] = json!([{"type": "Ready", "status": r, "reason": "Test"}]);
    }
    nodes
        .patch_status(name, &Patch::Merge(json!({"status": status})))
        .await
        .unwrap();
}

async fn set_ready(client: &Client, name: &str, ready: &str) {
    Api::<Node>::all(client.clone())
        .patch_status(
            name,
            &Patch::Strategic(json!({"status": {"conditions": [{"type": "Ready", "status": ready, "reason": "Test"}]}})),
        )
        .await
        .unwrap();
}

fn uninitialized() -> serde_json::Value {
    json!([{"key": TAINT_UNINITIALIZED, "value": "true", "effect": "NoSchedule"}])
}

fn taint_keys(n: &Node) -> Vec<String> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| t.iter().map(|t| t.key.clone()).collect())
        .unwrap_or_default()
}

/// The events about `name` in `ns`: (type, reason, message).
async fn events(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

async fn has_event(client: &Client, ns: &str, name: &str, reason: &str) -> bool {
    events(client, ns, name).await.iter().any(|e| e.1 == reason)
}

#[tokio::test(start_paused = true)]
async fn the_cloud_node_controller_initialises_tainted_nodes_and_retries_provider_failures() {
    let (_server, client) = cluster(&["default"]).await;
    let cloud = FakeCloud::with(|s| {
        for n in ["n1", "n2"] {
            s.machines.insert(n.into(), Machine::default());
        }
    });
    // The first two metadata calls fail: whichever node asks first waits its back-off,
    // and the other is served meanwhile.
    cloud.fail("metadata", 2);
    let extra = json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]);
    let mut taints = uninitialized();
    taints
        .as_array_mut()
        .unwrap()
        .extend(extra.as_array().unwrap().clone());
    node(&client, "n1", Some("True"), None, taints).await;
    node(&client, "n2", Some("True"), None, uninitialized()).await;
    // A node the cloud does not know (and without the taint) is left alone.
    node(&client, "plain", Some("True"), None, json!([])).await;
    let running = run(&client, cloud.clone(), &["cloud-node"], |_| {});

    let nodes: Api<Node> = Api::all(client.clone());
    for name in ["n1", "n2"] {
        let n = eventually("the node is initialised", WAIT, || async {
            let n = nodes.get(name).await.unwrap();
            (!taint_keys(&n).contains(&TAINT_UNINITIALIZED.to_owned())).then_some(n)
        })
        .await;
        let spec = n.spec.clone().unwrap();
        assert_eq!(
            spec.provider_id.as_deref(),
            Some(format!("fake://{name}").as_str())
        );
        let labels = n.metadata.labels.clone().unwrap();
        assert_eq!(labels["node.kubernetes.io/instance-type"], "fake.large");
        assert_eq!(labels["beta.kubernetes.io/instance-type"], "fake.large");
        assert_eq!(labels["topology.kubernetes.io/zone"], "zone-a");
        assert_eq!(labels["topology.kubernetes.io/region"], "region-1");
        let addresses = eventually("the cloud's addresses", WAIT, || async {
            let n = nodes.get(name).await.unwrap();
            let a = n.status.unwrap().addresses.unwrap();
            a.iter().any(|a| a.address == "10.9.9.9").then_some(a)
        })
        .await;
        // The agent's Hostname address stays beside the cloud's.
        assert!(addresses
            .iter()
            .any(|a| a.type_ == "Hostname" && a.address == name));
        assert!(has_event(&client, "default", name, "Synced").await);
    }
    // Only the cloud's taint went.
    assert_eq!(taint_keys(&nodes.get("n1").await.unwrap()), ["dedicated"]);
    let failures: Vec<_> = events(&client, "default", "n1")
        .await
        .into_iter()
        .chain(events(&client, "default", "n2").await)
        .filter(|e| e.1 == "FailedToInitializeNode")
        .collect();
    assert!(!failures.is_empty(), "a provider failure is an event");
    assert_eq!(failures[0].0, "Warning");
    assert!(
        failures[0]
            .2
            .contains("failed to get instance metadata for node")
            && failures[0].2.contains("the fake cloud refuses metadata"),
        "{failures:?}"
    );
    let plain = nodes.get("plain").await.unwrap();
    assert!(plain.spec.unwrap().provider_id.is_none());
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn a_node_the_cloud_does_not_know_stays_uninitialised() {
    let (_server, client) = cluster(&["default"]).await;
    let cloud = FakeCloud::with(|_| {});
    node(&client, "stranger", Some("True"), None, uninitialized()).await;
    let running = run(&client, cloud, &["cloud-node"], |_| {});
    eventually("a warning", WAIT, || async {
        let e = events(&client, "default", "stranger").await;
        e.iter()
            .find(|e| e.1 == "FailedToInitializeNode")
            .filter(|e| e.2.contains("instance not found"))
            .map(|_| ())
    })
    .await;
    let n = Api::<Node>::all(client.clone())
        .get("stranger")
        .await
        .unwrap();
    assert_eq!(taint_keys(&n), [TAINT_UNINITIALIZED]);
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn the_lifecycle_controller_deletes_nodes_whose_machine_is_gone_and_taints_shut_down_ones() {
    let (_server, client) = cluster(&["default"]).await;
    let cloud = FakeCloud::with(|s| {
        s.machines.insert(
            "gone".into(),
            Machine {
                gone: true,
                shut_down: false,
            },
        );
        s.machines.insert(
            "off".into(),
            Machine {
                gone: false,
                shut_down: true,
            },
        );
        s.machines.insert("later".into(), Machine::default());
        // Ready nodes are never asked about, even when their machine is gone.
        s.machines.insert(
            "ready".into(),
            Machine {
                gone: true,
                shut_down: false,
            },
        );
    });
    node(&client, "gone", Some("Unknown"), None, json!([])).await;
    node(&client, "off", Some("Unknown"), None, json!([])).await;
    node(&client, "later", Some("False"), None, json!([])).await;
    node(&client, "ready", Some("True"), None, json!([])).await;
    // The first existence check fails: an event, and a retry.
    cloud.fail("exists", 1);
    let running = run(&client, cloud.clone(), &["cloud-node-lifecycle"], |_| {});
    let nodes: Api<Node> = Api::all(client.clone());

    eventually("the node without a machine is deleted", WAIT, || async {
        nodes.get_opt("gone").await.unwrap().is_none().then_some(())
    })
    .await;
    let deleting = events(&client, "default", "gone").await;
    assert!(
        deleting.iter().any(|e| e.1 == "DeletingNode"
            && e.2 == "Deleting node gone because it does not exist in the cloud provider"),
        "{deleting:?}"
    );
    eventually("the shut-down node is tainted", WAIT, || async {
        let n = nodes.get("off").await.unwrap();
        let t = n.spec.unwrap().taints.unwrap_or_default();
        t.iter()
            .any(|t| t.key == TAINT_SHUTDOWN && t.effect == "NoSchedule")
            .then_some(())
    })
    .await;
    let all: Vec<_> = ["gone", "off", "later"]
        .iter()
        .map(|n| async { events(&client, "default", n).await })
        .collect();
    let mut warned = false;
    for e in futures::future::join_all(all).await.into_iter().flatten() {
        warned |= e.0 == "Warning" && e.1 == "FailedToCheckInstance";
    }
    assert!(warned, "the provider failure is an event");

    // The machine of a NotReady node disappears later: the periodic check notices.
    cloud
        .state
        .lock()
        .unwrap()
        .machines
        .get_mut("later")
        .unwrap()
        .gone = true;
    eventually(
        "the node whose machine went is deleted",
        Duration::from_secs(30),
        || async {
            nodes
                .get_opt("later")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    // Ready again: the shutdown taint goes.
    set_ready(&client, "off", "True").await;
    eventually("the shutdown taint is removed", WAIT, || async {
        taint_keys(&nodes.get("off").await.unwrap())
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(nodes.get_opt("ready").await.unwrap().is_some());
    stop(running).await;
}

fn network_condition(n: &Node) -> Option<(String, String)> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "NetworkUnavailable")
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

#[tokio::test(start_paused = true)]
async fn the_route_controller_routes_every_pod_range_and_removes_stale_routes() {
    let (_server, client) = cluster(&["default"]).await;
    let stale = |name: &str, node: &str, cidr: &str| Route {
        name: name.into(),
        target_node: node.into(),
        destination_cidr: cidr.into(),
        blackhole: false,
    };
    let cloud = FakeCloud::with(|s| {
        // A route to a node that is gone, and one to a range outside the cluster's.
        s.routes
            .insert("old".into(), stale("old", "departed", "10.244.9.0/24"));
        s.routes.insert(
            "foreign".into(),
            stale("foreign", "departed", "192.168.0.0/24"),
        );
    });
    cloud.fail("create_route", 1);
    node(&client, "a", Some("True"), Some("10.244.1.0/24"), json!([])).await;
    node(&client, "b", Some("True"), Some("10.244.2.0/24"), json!([])).await;
    node(&client, "bare", Some("True"), None, json!([])).await;
    let running = run(&client, cloud.clone(), &["route"], |c| {
        c.cloud.cluster_cidrs = vec!["10.244.0.0/16".into()];
    });
    let nodes: Api<Node> = Api::all(client.clone());

    // One creation failed at first: a Warning, NetworkUnavailable=True, then a retry.
    eventually("a creation failure is reported", WAIT, || async {
        let mut all = events(&client, "default", "a").await;
        all.extend(events(&client, "default", "b").await);
        all.into_iter()
            .find(|e| e.0 == "Warning" && e.1 == "FailedToCreateRoute")
            .filter(|e| {
                e.2.starts_with("Could not create route ")
                    && e.2.contains("the fake cloud refuses create_route")
            })
    })
    .await;
    for name in ["a", "b"] {
        eventually("the node's route is created", WAIT, || async {
            let n = nodes.get(name).await.unwrap();
            (network_condition(&n) == Some(("False".into(), "RouteCreated".into()))).then_some(())
        })
        .await;
        // The condition was merged in: the agent's Ready condition is still there.
        let n = nodes.get(name).await.unwrap();
        assert!(n
            .status
            .unwrap()
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"));
    }
    let bare = eventually("a node without a range has no route", WAIT, || async {
        network_condition(&nodes.get("bare").await.unwrap())
    })
    .await;
    assert_eq!(bare, ("True".into(), "NoRouteCreated".into()));
    let routes = || {
        let mut r: Vec<(String, String)> = cloud
            .state
            .lock()
            .unwrap()
            .routes
            .values()
            .map(|r| (r.target_node.clone(), r.destination_cidr.clone()))
            .collect();
        r.sort();
        r
    };
    eventually("the stale route is deleted", WAIT, || async {
        (routes()
            == [
                ("a".into(), "10.244.1.0/24".into()),
                ("b".into(), "10.244.2.0/24".into()),
                ("departed".into(), "192.168.0.0/24".into()),
            ])
        .then_some(())
    })
    .await;

    // A node that goes takes its route along.
    nodes.delete("b", &DeleteOptions::default()).await.unwrap();
    eventually("the deleted node's route is removed", WAIT, || async {
        (!routes().iter().any(|r| r.0 == "b")).then_some(())
    })
    .await;
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn a_provider_without_routes_runs_no_route_controller() {
    let (_server, client) = cluster(&["default"]).await;
    let cloud = Arc::new(FakeCloud {
        no_routes: true,
        ..FakeCloud::default()
    });
    node(&client, "a", Some("True"), Some("10.244.1.0/24"), json!([])).await;
    let running = run(&client, cloud, &["*"], |_| {});
    tokio::time::sleep(Duration::from_secs(30)).await;
    let n = Api::<Node>::all(client.clone()).get("a").await.unwrap();
    assert_eq!(network_condition(&n), None);
    stop(running).await;
}

fn lb_service(name: &str, class: Option<&str>) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": class,
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    }))
    .unwrap()
}

fn ingress_ips(s: &Service) -> Vec<String> {
    s.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

fn finalizers(s: &Service) -> Vec<String> {
    s.metadata.finalizers.clone().unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn the_service_controller_runs_a_load_balancer_through_its_life() {
    let (_server, client) = cluster(&["default", "ns"]).await;
    let cloud = FakeCloud::with(|_| {});
    node(&client, "a", Some("True"), None, json!([])).await;
    node(&client, "b", Some("True"), None, json!([])).await;
    node(&client, "sick", Some("False"), None, json!([])).await;
    // Two failures first: a Warning each, then a working load balancer.
    cloud.fail("ensure", 2);
    let running = run(&client, cloud.clone(), &["service"], |_| {});
    let services: Api<Service> = Api::namespaced(client.clone(), "ns");
    services.create(&lb_service("web", None)).await.unwrap();
    // Another controller's class: left alone.
    services
        .create(&lb_service("theirs", Some("example.com/other")))
        .await
        .unwrap();

    let web = eventually("the load balancer's address", WAIT, || async {
        let s = services.get("web").await.unwrap();
        (!ingress_ips(&s).is_empty()).then_some(s)
    })
    .await;
    assert_eq!(ingress_ips(&web), ["192.0.2.10"]);
    assert_eq!(finalizers(&web), [LOAD_BALANCER_CLEANUP_FINALIZER]);
    assert_eq!(cloud.lbs()["ns/web"], ["a", "b"], "only Ready nodes");
    let seen = events(&client, "ns", "web").await;
    let reasons: Vec<&str> = seen.iter().map(|e| e.1.as_str()).collect();
    for reason in [
        "EnsuringLoadBalancer",
        "SyncLoadBalancerFailed",
        "EnsuredLoadBalancer",
    ] {
        assert!(reasons.contains(&reason), "{reason}: {seen:?}");
    }
    let failed = seen
        .iter()
        .find(|e| e.1 == "SyncLoadBalancerFailed")
        .unwrap();
    assert_eq!(failed.0, "Warning");
    assert_eq!(
        failed.2,
        "Error syncing load balancer: failed to ensure load balancer: the fake cloud refuses ensure"
    );
    let theirs = services.get("theirs").await.unwrap();
    assert!(finalizers(&theirs).is_empty() && ingress_ips(&theirs).is_empty());
    assert!(!cloud.lbs().contains_key("ns/theirs"));

    // A node becomes Ready: the load balancer gets it, without a new ensure.
    set_ready(&client, "sick", "True").await;
    eventually("the new node is added", WAIT, || async {
        (cloud.lbs()["ns/web"] == ["a", "b", "sick"]).then_some(())
    })
    .await;
    assert_eq!(cloud.state.lock().unwrap().updates, 1);
    eventually("UpdatedLoadBalancer", WAIT, || async {
        has_event(&client, "ns", "web", "UpdatedLoadBalancer")
            .await
            .then_some(())
    })
    .await;

    // No longer a load balancer: deleted, finalizer and address gone.
    services
        .patch(
            "web",
            &Patch::Merge(json!({"spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": null}]}})),
        )
        .await
        .unwrap();
    eventually("the load balancer is deleted", WAIT, || async {
        let s = services.get("web").await.unwrap();
        (finalizers(&s).is_empty()
            && ingress_ips(&s).is_empty()
            && !cloud.lbs().contains_key("ns/web"))
        .then_some(())
    })
    .await;
    for reason in ["DeletingLoadBalancer", "DeletedLoadBalancer"] {
        assert!(has_event(&client, "ns", "web", reason).await, "{reason}");
    }
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn deleting_a_load_balancer_service_waits_for_the_load_balancer_to_go() {
    let (_server, client) = cluster(&["default", "ns"]).await;
    let cloud = FakeCloud::with(|_| {});
    node(&client, "a", Some("True"), None, json!([])).await;
    let running = run(&client, cloud.clone(), &["service"], |_| {});
    let services: Api<Service> = Api::namespaced(client.clone(), "ns");
    services.create(&lb_service("web", None)).await.unwrap();
    eventually("the load balancer exists", WAIT, || async {
        cloud.lbs().contains_key("ns/web").then_some(())
    })
    .await;
    eventually("the finalizer is on", WAIT, || async {
        (finalizers(&services.get("web").await.unwrap()) == [LOAD_BALANCER_CLEANUP_FINALIZER])
            .then_some(())
    })
    .await;
    services
        .delete("web", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("the Service is gone", WAIT, || async {
        services
            .get_opt("web")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(cloud.lbs().is_empty(), "the load balancer went first");
    assert!(has_event(&client, "ns", "web", "DeletedLoadBalancer").await);
    stop(running).await;
}
