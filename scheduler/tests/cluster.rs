//! The scheduler against an in-process API server: what users see.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_core::client::{Api, Client, ListParams};
use keelson_core::k8s_openapi::api::core::v1::{
    Event, Namespace, Node, Pod, PodSchedulingGate, TopologySpreadConstraint,
};
use keelson_scheduler::testing::{node, pod, selector};
use keelson_scheduler::{
    default_profile, CycleState, NodeInfo, Permit, PermitResult, Plugin, PodInfo, Scheduler,
    SchedulerConfig, Score, Status,
};
use keelson_store::MemStore;
use tokio::sync::oneshot;

fn server() -> Arc<ApiServer> {
    ApiServer::new(
        Registry::new(Arc::new(MemStore::ephemeral())),
        resources::builtin(),
    )
}

async fn namespace(client: &Client, name: &str) {
    let mut n = Namespace::default();
    n.metadata.name = Some(name.into());
    Api::<Namespace>::all(client.clone())
        .create(&n)
        .await
        .expect("namespace");
}

async fn add_nodes(client: &Client, nodes: Vec<Node>) {
    let api: Api<Node> = Api::all(client.clone());
    for n in nodes {
        api.create(&n).await.expect("node");
    }
}

async fn create(client: &Client, p: Pod) {
    let mut p = p;
    p.metadata.uid = None;
    if let Some(s) = p.spec.as_mut() {
        s.termination_grace_period_seconds = Some(0);
    }
    let ns = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&p)
        .await
        .expect("pod");
}

/// Runs a scheduler until the returned sender is dropped or fired.
fn start(scheduler: Scheduler) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(scheduler.run(async move {
        let _ = rx.await;
    }));
    tx
}

/// Polls `f` until it returns `Some`, for at most 20 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn node_of(client: &Client, ns: &str, name: &str) -> Option<String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .ok()
        .and_then(|p| p.spec.and_then(|s| s.node_name))
}

async fn bound(client: &Client, ns: &str, name: &str) -> String {
    eventually(&format!("{ns}/{name} to be bound"), || {
        node_of(client, ns, name)
    })
    .await
}

async fn all_nodes(client: &Client) -> BTreeMap<String, Node> {
    Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("nodes")
        .items
        .into_iter()
        .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
        .collect()
}

fn label(n: &Node, key: &str) -> String {
    n.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_workload_is_scheduled_correctly_and_the_rest_explained() {
    let server = server();
    let client = server.client();
    namespace(&client, "default").await;
    add_nodes(
        &client,
        vec![
            node("a1")
                .cpu("4")
                .memory("8Gi")
                .label("zone", "a")
                .label("disk", "ssd")
                .obj(),
            node("a2").cpu("4").memory("8Gi").label("zone", "a").obj(),
            node("b1").cpu("4").memory("8Gi").label("zone", "b").obj(),
            node("b2")
                .cpu("4")
                .memory("8Gi")
                .label("zone", "b")
                .taint("dedicated", "gpu", "NoSchedule")
                .obj(),
            node("c1")
                .cpu("1")
                .memory("1Gi")
                .label("zone", "c")
                .unschedulable()
                .obj(),
        ],
    )
    .await;
    let stop = start(
        Scheduler::builder(client.clone())
            .build()
            .expect("scheduler"),
    );

    // Plain pods fit anywhere schedulable and untainted.
    for i in 0..6 {
        create(
            &client,
            pod(&format!("plain-{i}")).cpu("500m").memory("256Mi").obj(),
        )
        .await;
    }
    // A node selector.
    create(
        &client,
        pod("ssd").cpu("100m").node_selector("disk", "ssd").obj(),
    )
    .await;
    // Anti-affinity across zones: three pods, three schedulable zones? Only a and b are
    // schedulable for them (c1 is cordoned), so the third stays pending.
    for i in 0..3 {
        create(
            &client,
            pod(&format!("spread-{i}"))
                .label("app", "ha")
                .anti_affinity(&[("app", "ha")], "zone")
                .obj(),
        )
        .await;
    }
    // Topology spread over zones a and b (maxSkew 1).
    for i in 0..4 {
        create(
            &client,
            pod(&format!("web-{i}"))
                .label("app", "web")
                .spread(TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: "zone".into(),
                    when_unsatisfiable: "DoNotSchedule".into(),
                    label_selector: Some(selector(&[("app", "web")])),
                    ..TopologySpreadConstraint::default()
                })
                .obj(),
        )
        .await;
    }
    // Too big for any node.
    create(&client, pod("huge").cpu("16").obj()).await;

    let nodes = all_nodes(&client).await;
    for i in 0..6 {
        let n = bound(&client, "default", &format!("plain-{i}")).await;
        assert!(n == "a1" || n == "a2" || n == "b1", "plain-{i} on {n}");
    }
    assert_eq!(bound(&client, "default", "ssd").await, "a1");
    let mut zones = Vec::new();
    for i in 0..2 {
        let n = eventually("an ha pod", || async {
            for j in 0..3 {
                if let Some(n) = node_of(&client, "default", &format!("spread-{j}")).await {
                    if !zones.iter().any(|(name, _)| *name == j) {
                        return Some((j, n));
                    }
                }
            }
            None
        })
        .await;
        let _ = i;
        zones.push(n);
    }
    let z: Vec<String> = zones
        .iter()
        .map(|(_, n)| label(&nodes[n], "zone"))
        .collect();
    assert_ne!(z[0], z[1], "anti-affinity by zone: {zones:?}");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let condition = eventually("huge's PodScheduled condition", || async {
        let p = pods.get("huge").await.ok()?;
        p.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    })
    .await;
    assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));
    let message = condition.message.unwrap_or_default();
    assert!(
        message.starts_with("0/5 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable, 3 Insufficient cpu."),
        "{message}"
    );
    // 16 cores is more than any node has: evicting pods cannot help anywhere.
    assert!(
        message.ends_with(
            "preemption: 0/5 nodes are available: 5 Preemption is not helpful for scheduling."
        ),
        "{message}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event = eventually("a FailedScheduling event", || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some("huge")
                    && e.reason.as_deref() == Some("FailedScheduling")
            })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.message.as_deref(), Some(message.as_str()));
    // Spread over zones: the cordoned node's zone c still counts as a domain (the
    // default nodeTaintsPolicy is Ignore and cordoning sets no taint here), with no
    // pod, so zones a and b take one web pod each and the other two wait.
    let web_zones = eventually("two web pods bound and two explained", || async {
        let mut zones = Vec::new();
        let mut waiting = 0;
        for i in 0..4 {
            let p = pods.get(&format!("web-{i}")).await.ok()?;
            match p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                Some(n) => zones.push(label(&nodes[&n], "zone")),
                None => {
                    let c = p
                        .status?
                        .conditions?
                        .into_iter()
                        .find(|c| c.type_ == "PodScheduled")?;
                    if c.message?
                        .contains("didn't match pod topology spread constraints")
                    {
                        waiting += 1;
                    }
                }
            }
        }
        (zones.len() == 2 && waiting == 2).then_some(zones)
    })
    .await;
    assert_ne!(web_zones[0], web_zones[1]);
    // The third ha pod cannot go anywhere either.
    let third = eventually("the third ha pod's condition", || async {
        for j in 0..3 {
            let p = pods.get(&format!("spread-{j}")).await.ok()?;
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
                let c = p
                    .status?
                    .conditions?
                    .into_iter()
                    .find(|c| c.type_ == "PodScheduled")?;
                return c.message;
            }
        }
        None
    })
    .await;
    assert!(
        third.contains("node(s) didn't match pod anti-affinity rules"),
        "{third}"
    );
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_pod_is_scheduled_when_a_node_that_fits_arrives() {
    let server = server();
    let client = server.client();
    namespace(&client, "default").await;
    add_nodes(&client, vec![node("small").cpu("1").obj()]).await;
    let scheduler = Scheduler::builder(client.clone())
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .expect("scheduler");
    let handle = scheduler.clone();
    let stop = start(scheduler);
    create(&client, pod("big").cpu("2").obj()).await;
    eventually("the pod to be parked", || async {
        (handle.queue_lengths().unschedulable == 1).then_some(())
    })
    .await;
    // Parked: no retries while nothing changes.
    let attempts = handle.metrics().unschedulable;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handle.metrics().unschedulable, attempts, "no spinning");
    add_nodes(&client, vec![node("large").cpu("4").obj()]).await;
    assert_eq!(bound(&client, "default", "big").await, "large");
    assert!(handle
        .render_metrics()
        .contains("scheduler_schedule_attempts_total{result=\"scheduled\"} 1"));
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_pod_is_not_attempted_until_its_gate_is_removed_then_it_is_bound() {
    let server = server();
    let client = server.client();
    namespace(&client, "default").await;
    add_nodes(&client, vec![node("n").cpu("2").obj()]).await;
    let handle = Scheduler::builder(client.clone())
        .build()
        .expect("scheduler");
    let stop = start(handle.clone());
    let mut gated = pod("gated").obj();
    if let Some(s) = gated.spec.as_mut() {
        s.scheduling_gates = Some(vec![PodSchedulingGate {
            name: "example.com/wait".into(),
        }]);
    }
    create(&client, gated).await;
    // Created after the gated pod, so once it is bound the scheduler has seen both.
    create(&client, pod("free").obj()).await;
    assert_eq!(bound(&client, "default", "free").await, "n");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let scheduled = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled").cloned())
    };
    let p = pods.get("gated").await.expect("gated pod");
    assert!(p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none());
    let condition = scheduled(&p).expect("a PodScheduled condition");
    assert_eq!(condition.status, "False");
    assert_eq!(condition.reason.as_deref(), Some("SchedulingGated"));
    assert_eq!(
        condition.message.as_deref(),
        Some("Scheduling is blocked due to non-empty scheduling gates")
    );
    // Never attempted: one attempt in all (the free pod's), nothing in the queue, and
    // no FailedScheduling event.
    let m = handle.metrics();
    assert_eq!((m.scheduled, m.unschedulable, m.errors), (1, 0, 0));
    let q = handle.queue_lengths();
    assert_eq!(q.active + q.backoff + q.unschedulable, 0, "{q:?}");
    let failed = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .count();
    assert_eq!(failed, 0);

    // Removing the gate is an update; then the pod is queued and bound.
    let mut p = p;
    if let Some(s) = p.spec.as_mut() {
        s.scheduling_gates = None;
    }
    pods.replace("gated", &p).await.expect("remove the gate");
    assert_eq!(bound(&client, "default", "gated").await, "n");
    let p = pods.get("gated").await.expect("gated pod");
    assert_eq!(scheduled(&p).map(|c| c.status).as_deref(), Some("True"));
    let m = handle.metrics();
    assert_eq!((m.scheduled, m.unschedulable, m.errors), (2, 0, 0));
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_evicts_a_lower_priority_pod_and_nominates_the_node() {
    let server = server();
    let client = server.client();
    namespace(&client, "default").await;
    add_nodes(&client, vec![node("only").cpu("2").obj()]).await;
    let stop = start(
        Scheduler::builder(client.clone())
            .backoff(Duration::from_millis(10), Duration::from_millis(50))
            .build()
            .expect("scheduler"),
    );
    create(&client, pod("low").cpu("2").priority(1).obj()).await;
    assert_eq!(bound(&client, "default", "low").await, "only");
    create(&client, pod("high").cpu("2").priority(100).obj()).await;
    assert_eq!(bound(&client, "default", "high").await, "only");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    assert!(
        pods.get_opt("low").await.expect("get").is_none(),
        "the victim is gone"
    );
    let high = pods.get("high").await.expect("high");
    assert_eq!(
        high.status.and_then(|s| s.nominated_node_name).as_deref(),
        Some("only")
    );
    let _ = stop.send(());
}

/// Scores nodes by their `tier` label: `fast` 100, anything else 0.
struct FastTier;
impl Plugin for FastTier {
    fn name(&self) -> &str {
        "FastTier"
    }
    fn as_score(self: Arc<Self>) -> Option<Arc<dyn Score>> {
        Some(self)
    }
}
impl Score for FastTier {
    fn score(&self, _: &CycleState, _: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        Ok(
            if node.labels().get("tier").map(String::as_str) == Some("fast") {
                100
            } else {
                0
            },
        )
    }
}

/// Holds pods until two of the same group are waiting (a tiny gang scheduler).
#[derive(Default)]
struct Gang {
    seen: AtomicUsize,
}
impl Plugin for Gang {
    fn name(&self) -> &str {
        "Gang"
    }
    fn as_permit(self: Arc<Self>) -> Option<Arc<dyn Permit>> {
        Some(self)
    }
}
impl Permit for Gang {
    fn permit(&self, _: &CycleState, pod: &PodInfo, _: &str) -> Result<PermitResult, Status> {
        if !pod.labels.contains_key("gang") {
            return Ok(PermitResult::Allow);
        }
        if self.seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Ok(PermitResult::Wait(Duration::from_secs(30)))
        } else {
            Ok(PermitResult::Allow)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_chosen_by_scheduler_name_and_permit_can_hold_pods() {
    let server = server();
    let client = server.client();
    namespace(&client, "default").await;
    add_nodes(
        &client,
        vec![
            node("slow-1").cpu("8").obj(),
            node("slow-2").cpu("8").obj(),
            node("fast-1").cpu("8").label("tier", "fast").obj(),
        ],
    )
    .await;
    let gang = Arc::new(Gang::default());
    let g = gang.clone();
    let scheduler = Scheduler::builder(client.clone())
        .profile(|h| default_profile(h, "default-scheduler"))
        .profile(move |h| {
            default_profile(h, "fast-scheduler")
                .plugin(Arc::new(FastTier))
                .weight("FastTier", 50)
                .plugin(g)
        })
        .build()
        .expect("scheduler");
    let handle = scheduler.clone();
    let stop = start(scheduler);
    for i in 0..3 {
        create(
            &client,
            pod(&format!("f{i}")).scheduler_name("fast-scheduler").obj(),
        )
        .await;
    }
    for i in 0..3 {
        assert_eq!(bound(&client, "default", &format!("f{i}")).await, "fast-1");
    }
    create(
        &client,
        pod("nobody").scheduler_name("other-scheduler").obj(),
    )
    .await;
    // The gang: the first member waits until a second arrives.
    create(
        &client,
        pod("g1")
            .label("gang", "x")
            .scheduler_name("fast-scheduler")
            .obj(),
    )
    .await;
    eventually("g1 to wait", || async {
        (!handle.waiting_pods().all().is_empty()).then_some(())
    })
    .await;
    assert!(node_of(&client, "default", "g1").await.is_none());
    let waiting = handle.waiting_pods().all();
    assert_eq!(waiting[0].pending_plugins(), ["Gang"]);
    waiting[0].allow("Gang");
    bound(&client, "default", "g1").await;
    assert!(
        node_of(&client, "default", "nobody").await.is_none(),
        "no profile serves it"
    );
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_file_builds_the_profiles() {
    let server = server();
    let client = server.client();
    namespace(&client, "default").await;
    add_nodes(
        &client,
        vec![node("a").cpu("4").obj(), node("b").cpu("4").obj()],
    )
    .await;
    let config = SchedulerConfig::from_yaml(
        r"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: packer
  plugins:
    score:
      disabled: [{name: '*'}]
      enabled: [{name: NodeResourcesFit, weight: 1}]
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
",
    )
    .expect("config");
    let stop = start(
        Scheduler::builder(client.clone())
            .config(config)
            .build()
            .expect("scheduler"),
    );
    create(&client, pod("p0").cpu("1").scheduler_name("packer").obj()).await;
    let first = bound(&client, "default", "p0").await;
    for i in 1..4 {
        create(
            &client,
            pod(&format!("p{i}"))
                .cpu("1")
                .scheduler_name("packer")
                .obj(),
        )
        .await;
        assert_eq!(
            bound(&client, "default", &format!("p{i}")).await,
            first,
            "bin packing"
        );
    }
    let _ = stop.send(());
}
