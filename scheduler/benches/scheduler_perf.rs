//! kube-scheduler's `scheduler_perf` workloads, end to end: an in-process API server on a
//! durable MemStore (under `/var/tmp`), Keelson's scheduler with the default profile
//! talking to it through the in-process client, and pods created through the API until
//! every measured pod is bound.
//!
//! ```sh
//! cargo bench -p keelson-scheduler --bench scheduler_perf                       # every workload
//! cargo bench -p keelson-scheduler --bench scheduler_perf -- --workload SchedulingBasic
//! cargo bench -p keelson-scheduler --bench scheduler_perf -- --quick            # a tenth of the pods
//! cargo bench -p keelson-scheduler --bench scheduler_perf -- --parallelism 1    # filter on one thread
//! cargo bench -p keelson-scheduler --bench scheduler_perf -- --no-events        # no Scheduled events
//! ```
//!
//! Per workload, as scheduler_perf's workload templates (Kubernetes 1.33,
//! test/integration/scheduler_perf/{misc,affinity,topology_spreading}/performance-config.yaml):
//! nodes are created, then the init pods (in namespace `sched-0`, scheduled before
//! measuring), then the measured pods (in `sched-1`) are created by 64 tasks as fast as
//! the API takes them while the scheduler binds them, with the workload's churn (pods,
//! nodes and Services created and deleted) beside them. Reported, as scheduler_perf
//! does: the average throughput (measured pods / time from the first create to the last
//! bind) and percentiles of the per-second throughput samples; and the scheduling
//! latency of each pod, from its create call to its binding seen on a watch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_core::client::{Api, Client, DeleteOptions, WatchEventType, WatchParams};
use keelson_core::k8s_openapi::api::core::v1::{
    Affinity, Namespace, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, Pod, PodAffinity, PodAffinityTerm, PodAntiAffinity, Service, ServicePort,
    ServiceSpec, TopologySpreadConstraint, WeightedPodAffinityTerm,
};
use keelson_core::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keelson_core::Resource;
use keelson_scheduler::testing::{node, pod, selector};
use keelson_scheduler::Scheduler;
use keelson_store::MemStore;
use parking_lot::Mutex;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A pod template of scheduler_perf (`templates/*.yaml`); all request 100m CPU and 500Mi
/// unless said otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Template {
    /// pod-default.yaml.
    Default,
    /// pod-with-node-affinity.yaml: requires a node label the half of the nodes carry.
    NodeAffinity,
    /// pod-with-topology-spreading.yaml: `maxSkew: 5` over zones, DoNotSchedule.
    TopologySpreading,
    /// pod-with-preferred-topology-spreading.yaml: the same, ScheduleAnyway.
    PreferredTopologySpreading,
    /// pod-with-pod-affinity.yaml: `color: blue`, required affinity to blue pods in the
    /// same zone.
    PodAffinity,
    /// pod-with-pod-anti-affinity.yaml: `color: green`, required anti-affinity to green
    /// pods on the same node.
    PodAntiAffinity,
    /// pod-with-preferred-pod-affinity.yaml: `color: red`, preferred (weight 1) affinity to
    /// red pods on the same node.
    PreferredPodAffinity,
    /// pod-with-preferred-pod-anti-affinity.yaml: `color: yellow`, preferred (weight 1)
    /// anti-affinity to yellow pods on the same node.
    PreferredPodAntiAffinity,
    /// pod-low-priority.yaml: 900m CPU at priority 1 (four fill a node).
    LowPriority,
    /// pod-high-priority.yaml: 3 CPU at priority 10 (must evict three low ones).
    HighPriority,
    /// pod-high-priority-large-cpu.yaml: 9 CPU at priority 10, more than any node has.
    HighPriorityLargeCpu,
    /// daemonset-pod.yaml: no requests; node affinity on `metadata.name` to one node.
    Daemonset,
}

/// What runs beside the measured pods (scheduler_perf's `churn` op).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Churn {
    None,
    /// `mode: create`: a pod-high-priority-large-cpu pod every 200 ms, never deleted.
    UnschedulablePods,
    /// `mode: recreate`, every second: delete the node, the 9-CPU pod and the Service made
    /// a second before and create new ones (a node with room for no pods).
    Recreate,
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    nodes: usize,
    /// How the nodes are labelled: `zone` = one zone label for all, `zones` = three
    /// zones round robin, `groups` = two affinity groups, `daemonset` = one named node
    /// with room for 90,000 pods first.
    node_kind: &'static str,
    init: &'static [(Template, usize)],
    measured: Template,
    measured_pods: usize,
    churn: Churn,
    /// kube-scheduler's CI threshold (pods/s), Kubernetes 1.33 performance-config.yaml.
    threshold: f64,
}

/// kube-scheduler's scheduler_perf workloads (5000-node sizes of its `performance`
/// label; test/integration/scheduler_perf/{misc,affinity,topology_spreading}).
const WORKLOADS: &[Workload] = &[
    Workload {
        name: "SchedulingBasic",
        nodes: 5000,
        node_kind: "",
        init: &[(Template::Default, 1000)],
        measured: Template::Default,
        measured_pods: 10000,
        churn: Churn::None,
        threshold: 270.0,
    },
    Workload {
        name: "NodeAffinity",
        nodes: 5000,
        node_kind: "groups",
        init: &[(Template::Default, 5000)],
        measured: Template::NodeAffinity,
        measured_pods: 10000,
        churn: Churn::None,
        threshold: 220.0,
    },
    Workload {
        name: "TopologySpreading",
        nodes: 5000,
        node_kind: "zones",
        init: &[(Template::Default, 5000)],
        measured: Template::TopologySpreading,
        measured_pods: 5000,
        churn: Churn::None,
        threshold: 85.0,
    },
    Workload {
        name: "PreferredTopologySpreading",
        nodes: 5000,
        node_kind: "zones",
        init: &[(Template::Default, 5000)],
        measured: Template::PreferredTopologySpreading,
        measured_pods: 5000,
        churn: Churn::None,
        threshold: 125.0,
    },
    Workload {
        name: "PodAntiAffinity",
        nodes: 5000,
        node_kind: "",
        init: &[(Template::PodAntiAffinity, 1000)],
        measured: Template::PodAntiAffinity,
        measured_pods: 2000,
        churn: Churn::None,
        threshold: 60.0,
    },
    Workload {
        name: "PodAffinity",
        nodes: 5000,
        node_kind: "zone",
        init: &[(Template::PodAffinity, 5000)],
        measured: Template::PodAffinity,
        measured_pods: 5000,
        churn: Churn::None,
        threshold: 35.0,
    },
    Workload {
        name: "PreferredPodAffinity",
        nodes: 5000,
        node_kind: "",
        init: &[(Template::PreferredPodAffinity, 5000)],
        measured: Template::PreferredPodAffinity,
        measured_pods: 5000,
        churn: Churn::None,
        threshold: 90.0,
    },
    Workload {
        name: "PreferredPodAntiAffinity",
        nodes: 5000,
        node_kind: "",
        init: &[(Template::PreferredPodAntiAffinity, 5000)],
        measured: Template::PreferredPodAntiAffinity,
        measured_pods: 5000,
        churn: Churn::None,
        threshold: 90.0,
    },
    Workload {
        name: "MixedSchedulingBasePod",
        nodes: 5000,
        node_kind: "zone",
        init: &[
            (Template::Default, 2000),
            (Template::PodAffinity, 2000),
            (Template::PodAntiAffinity, 2000),
            (Template::PreferredPodAffinity, 2000),
            (Template::PreferredPodAntiAffinity, 2000),
        ],
        measured: Template::Default,
        measured_pods: 5000,
        churn: Churn::None,
        threshold: 140.0,
    },
    Workload {
        name: "PreemptionBasic",
        nodes: 500,
        node_kind: "",
        init: &[(Template::LowPriority, 2000)],
        measured: Template::HighPriority,
        measured_pods: 500,
        churn: Churn::None,
        threshold: 18.0,
    },
    Workload {
        name: "Unschedulable",
        nodes: 5000,
        node_kind: "",
        init: &[(Template::Default, 100)],
        measured: Template::Default,
        measured_pods: 10000,
        churn: Churn::UnschedulablePods,
        threshold: 140.0,
    },
    Workload {
        name: "SchedulingWithMixedChurn",
        nodes: 5000,
        node_kind: "",
        init: &[],
        measured: Template::Default,
        measured_pods: 10000,
        churn: Churn::Recreate,
        threshold: 265.0,
    },
    Workload {
        name: "SchedulingDaemonset",
        nodes: 15001,
        node_kind: "daemonset",
        init: &[],
        measured: Template::Daemonset,
        measured_pods: 30000,
        churn: Churn::None,
        threshold: 390.0,
    },
];

const ZONES: [&str; 3] = ["moon-1", "moon-2", "moon-3"];
const ZONE_KEY: &str = "topology.kubernetes.io/zone";
const HOSTNAME_KEY: &str = "kubernetes.io/hostname";
/// The node every daemonset pod requires.
const DAEMONSET_NODE: &str = "scheduler-perf-node";
/// Init pods go to the first, measured pods to the second; affinity terms name both.
const NAMESPACES: [&str; 2] = ["sched-0", "sched-1"];

fn make_node(w: &Workload, i: usize) -> Node {
    if w.node_kind == "daemonset" && i == 0 {
        return node(DAEMONSET_NODE)
            .cpu("4")
            .memory("32Gi")
            .pods("90000")
            .obj();
    }
    let b = node(&format!("node-{i}"))
        .cpu("4")
        .memory("32Gi")
        .pods("110");
    match w.node_kind {
        "groups" => b.label(
            "affinity-group",
            if i.is_multiple_of(2) {
                "group-0"
            } else {
                "group-1"
            },
        ),
        "zones" => b.label(ZONE_KEY, ZONES[i % ZONES.len()]),
        "zone" => b.label(ZONE_KEY, "zone1"),
        _ => b,
    }
    .obj()
}

/// An affinity term for pods labelled `color` in both namespaces.
fn color_term(color: &str, topology_key: &str) -> PodAffinityTerm {
    PodAffinityTerm {
        label_selector: Some(selector(&[("color", color)])),
        topology_key: topology_key.into(),
        namespaces: Some(vec![NAMESPACES[1].into(), NAMESPACES[0].into()]),
        ..PodAffinityTerm::default()
    }
}

fn make_pod(t: Template, name: &str, namespace: &str) -> Pod {
    let base = || pod(name).cpu("100m").memory("500Mi");
    let spread = |when: &str| TopologySpreadConstraint {
        max_skew: 5,
        topology_key: ZONE_KEY.into(),
        when_unsatisfiable: when.into(),
        label_selector: Some(selector(&[("color", "blue")])),
        ..TopologySpreadConstraint::default()
    };
    let mut p = match t {
        Template::Default => base().obj(),
        Template::NodeAffinity => base()
            .affinity(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "affinity-group".into(),
                                operator: "In".into(),
                                values: Some(vec!["group-0".into()]),
                            }]),
                            match_fields: None,
                        }],
                    }),
                    ..NodeAffinity::default()
                }),
                ..Affinity::default()
            })
            .obj(),
        Template::TopologySpreading => base()
            .label("color", "blue")
            .spread(spread("DoNotSchedule"))
            .obj(),
        Template::PreferredTopologySpreading => base()
            .label("color", "blue")
            .spread(spread("ScheduleAnyway"))
            .obj(),
        Template::PodAffinity => base()
            .label("color", "blue")
            .affinity(Affinity {
                pod_affinity: Some(PodAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![color_term(
                        "blue", ZONE_KEY,
                    )]),
                    ..PodAffinity::default()
                }),
                ..Affinity::default()
            })
            .obj(),
        Template::PodAntiAffinity => base()
            .label("color", "green")
            .affinity(Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![color_term(
                        "green",
                        HOSTNAME_KEY,
                    )]),
                    ..PodAntiAffinity::default()
                }),
                ..Affinity::default()
            })
            .obj(),
        Template::PreferredPodAffinity => base()
            .label("color", "red")
            .affinity(Affinity {
                pod_affinity: Some(PodAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        WeightedPodAffinityTerm {
                            pod_affinity_term: color_term("red", HOSTNAME_KEY),
                            weight: 1,
                        },
                    ]),
                    ..PodAffinity::default()
                }),
                ..Affinity::default()
            })
            .obj(),
        Template::PreferredPodAntiAffinity => base()
            .label("color", "yellow")
            .affinity(Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        WeightedPodAffinityTerm {
                            pod_affinity_term: color_term("yellow", HOSTNAME_KEY),
                            weight: 1,
                        },
                    ]),
                    ..PodAntiAffinity::default()
                }),
                ..Affinity::default()
            })
            .obj(),
        Template::LowPriority => pod(name).cpu("900m").memory("500Mi").priority(1).obj(),
        Template::HighPriority => pod(name).cpu("3").memory("500Mi").priority(10).obj(),
        Template::HighPriorityLargeCpu => pod(name).cpu("9").memory("500Mi").priority(10).obj(),
        Template::Daemonset => pod(name)
            .affinity(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: None,
                            match_fields: Some(vec![NodeSelectorRequirement {
                                key: "metadata.name".into(),
                                operator: "In".into(),
                                values: Some(vec![DAEMONSET_NODE.into()]),
                            }]),
                        }],
                    }),
                    ..NodeAffinity::default()
                }),
                ..Affinity::default()
            })
            .obj(),
    };
    p.metadata.uid = None;
    p.metadata.namespace = Some(namespace.into());
    if let Some(s) = p.spec.as_mut() {
        s.termination_grace_period_seconds = Some(0);
    }
    p
}

/// Runs the workload's churn until `stop` fires.
async fn churn(client: Client, kind: Churn, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACES[1]);
    let nodes: Api<Node> = Api::all(client.clone());
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACES[1]);
    let every = match kind {
        Churn::None => return,
        Churn::UnschedulablePods => Duration::from_millis(200),
        Churn::Recreate => Duration::from_secs(1),
    };
    let mut tick = tokio::time::interval(every);
    for i in 0usize.. {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let name = format!("churn-{i}");
        if kind == Churn::Recreate && i > 0 {
            let old = format!("churn-{}", i - 1);
            let dp = DeleteOptions {
                grace_period_seconds: Some(0),
                ..DeleteOptions::default()
            };
            let _ = nodes.delete(&old, &dp).await;
            let _ = pods.delete(&old, &dp).await;
            let _ = services.delete(&old, &dp).await;
        }
        if let Err(e) = pods
            .create(&make_pod(
                Template::HighPriorityLargeCpu,
                &name,
                NAMESPACES[1],
            ))
            .await
        {
            eprintln!("churn pod {name}: {e}");
        }
        if kind == Churn::Recreate {
            let mut n = node(&name).pods("0").obj();
            n.metadata.uid = None;
            if let Err(e) = nodes.create(&n).await {
                eprintln!("churn node {name}: {e}");
            }
            let mut s = Service::default();
            s.metadata.name = Some(name.clone());
            s.spec = Some(ServiceSpec {
                selector: Some([("app".to_owned(), "foo".to_owned())].into()),
                ports: Some(vec![ServicePort {
                    protocol: Some("TCP".into()),
                    port: 8080,
                    target_port: Some(IntOrString::Int(8080)),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            });
            if let Err(e) = services.create(&s).await {
                eprintln!("churn service {name}: {e}");
            }
        }
    }
}

struct Tracker {
    created: Mutex<HashMap<String, Instant>>,
    latency: Mutex<Histogram<u64>>,
    bound: AtomicUsize,
    last_bound: Mutex<Option<Instant>>,
}

async fn create_all(
    client: &Client,
    namespace: &str,
    pods: Vec<Pod>,
    tracker: Option<Arc<Tracker>>,
    tasks: usize,
) {
    let queue = Arc::new(Mutex::new(pods));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let queue = queue.clone();
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let tracker = tracker.clone();
        handles.push(tokio::spawn(async move {
            loop {
                let Some(p) = queue.lock().pop() else { break };
                let name = p.metadata.name.clone().unwrap_or_default();
                if let Some(t) = &tracker {
                    t.created.lock().insert(name.clone(), Instant::now());
                }
                if let Err(e) = api.create(&p).await {
                    eprintln!("create {name}: {e}");
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
}

fn cpu_seconds() -> (f64, f64) {
    let ours = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let close = s.rfind(')')?;
            let f: Vec<&str> = s[close + 1..].split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0);
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("cpu "))?.to_owned();
            Some(
                line.split_whitespace()
                    .skip(1)
                    .enumerate()
                    .filter(|(i, _)| *i != 3 && *i != 4)
                    .filter_map(|(_, v)| v.parse::<f64>().ok())
                    .sum::<f64>()
                    / 100.0,
            )
        })
        .unwrap_or(0.0);
    (ours, machine)
}

async fn run(
    w: Workload,
    scale: usize,
    events: bool,
    parallelism: Option<usize>,
) -> Result<(), Box<dyn std::error::Error>> {
    let measured = (w.measured_pods / scale).max(1);
    let init: usize = w.init.iter().map(|(_, n)| n / scale).sum();
    // Preemption needs full nodes: scale them with the pods.
    let w = if w.name == "PreemptionBasic" {
        Workload {
            nodes: w.nodes / scale,
            ..w
        }
    } else {
        w
    };
    let dir = tempfile::Builder::new()
        .prefix("keelson-sched-perf-")
        .tempdir_in("/var/tmp")?;
    let server = ApiServer::new(
        Registry::new(Arc::new(MemStore::open(dir.path())?)),
        resources::builtin(),
    );
    let client = server.client();
    for name in NAMESPACES {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.into());
        Api::<Namespace>::all(client.clone()).create(&ns).await?;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    {
        let mut handles = Vec::new();
        for t in 0..16 {
            let nodes = nodes.clone();
            handles.push(tokio::spawn(async move {
                let mut i = t;
                while i < w.nodes {
                    if let Err(e) = nodes.create(&make_node(&w, i)).await {
                        eprintln!("node {i}: {e}");
                    }
                    i += 16;
                }
            }));
        }
        for h in handles {
            h.await?;
        }
    }
    let mut builder = Scheduler::builder(client.clone()).scheduled_events(events);
    if let Some(p) = parallelism {
        builder = builder.parallelism(p);
    }
    let scheduler = builder.build()?;
    let handle = scheduler.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(scheduler.run(async move {
        let _ = stopped.await;
    }));

    let tracker = Arc::new(Tracker {
        created: Mutex::new(HashMap::new()),
        latency: Mutex::new(Histogram::new_with_bounds(1_000, 600_000_000_000, 3)?),
        bound: AtomicUsize::new(0),
        last_bound: Mutex::new(None),
    });
    // Watch the pods as JSON (no decoding) for bindings; list again when the watch
    // cannot go on.
    let init_bound = Arc::new(AtomicUsize::new(0));
    {
        let client = client.clone();
        let tracker = tracker.clone();
        let init_bound = init_bound.clone();
        tokio::spawn(async move {
            let rt = Pod::resource_type();
            let mut seen = std::collections::HashSet::new();
            let mut note = |obj: &serde_json::Value| {
                let Some(name) = obj.pointer("/metadata/name").and_then(|v| v.as_str()) else {
                    return;
                };
                if obj
                    .pointer("/spec/nodeName")
                    .and_then(|v| v.as_str())
                    .is_none_or(str::is_empty)
                {
                    return;
                }
                if !seen.insert(name.to_owned()) {
                    return;
                }
                if name.starts_with("init-") {
                    init_bound.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if !name.starts_with("pod-") {
                    return;
                }
                let now = Instant::now();
                if let Some(t0) = tracker.created.lock().get(name) {
                    let ns = u64::try_from(now.duration_since(*t0).as_nanos()).unwrap_or(u64::MAX);
                    tracker.latency.lock().saturating_record(ns);
                }
                tracker.bound.fetch_add(1, Ordering::Relaxed);
                *tracker.last_bound.lock() = Some(now);
            };
            loop {
                let Ok(list) = client
                    .transport()
                    .list(&rt, &keelson_core::client::ListParams::default())
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                for item in &list.items {
                    note(item);
                }
                let params = WatchParams {
                    resource_version: Some(list.resource_version.clone()),
                    ..WatchParams::default()
                };
                let Ok(mut stream) = client.transport().watch(&rt, &params).await else {
                    continue;
                };
                while let Some(Ok(ev)) = stream.next().await {
                    if ev.kind == WatchEventType::Modified || ev.kind == WatchEventType::Added {
                        note(&ev.object);
                    }
                }
            }
        });
    }
    // Init pods, scheduled before measuring.
    let mut init_pods: Vec<Pod> = Vec::with_capacity(init);
    for (t, n) in w.init {
        for _ in 0..n / scale {
            let name = format!("init-{}", init_pods.len());
            init_pods.push(make_pod(*t, &name, NAMESPACES[0]));
        }
    }
    // Created in order, as scheduler_perf's successive createPods ops.
    init_pods.reverse();
    create_all(&client, NAMESPACES[0], init_pods, None, 64).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while init_bound.load(Ordering::Relaxed) < init {
        if Instant::now() > deadline {
            return Err(format!("{}: init pods not all bound", w.name).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Measured pods, with the churn beside them.
    let (stop_churn, churn_stopped) = tokio::sync::oneshot::channel::<()>();
    let churning = tokio::spawn(churn(client.clone(), w.churn, churn_stopped));
    let before = handle.metrics();
    let (cpu0, machine0) = cpu_seconds();
    let start = Instant::now();
    let pods: Vec<Pod> = (0..measured)
        .rev()
        .map(|i| make_pod(w.measured, &format!("pod-{i}"), NAMESPACES[1]))
        .collect();
    let creator = {
        let client = client.clone();
        let tracker = tracker.clone();
        tokio::spawn(async move {
            create_all(&client, NAMESPACES[1], pods, Some(tracker), 64).await;
        })
    };
    let mut samples: Vec<f64> = Vec::new();
    let mut last = 0usize;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = tracker.bound.load(Ordering::Relaxed);
                #[allow(clippy::cast_precision_loss)]
                samples.push((now - last) as f64);
                last = now;
            }
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        if tracker.bound.load(Ordering::Relaxed) >= measured {
            break;
        }
        let stalled =
            samples.len() >= 15 && samples[samples.len() - 15..].iter().all(|s| *s == 0.0);
        if Instant::now() > deadline || stalled {
            return Err(format!(
                "{}: only {} of {measured} pods bound; queue {:?}; {:?}",
                w.name,
                tracker.bound.load(Ordering::Relaxed),
                handle.queue_lengths(),
                handle.metrics()
            )
            .into());
        }
    }
    creator.await?;
    let end = tracker.last_bound.lock().unwrap_or_else(Instant::now);
    let elapsed = end.duration_since(start);
    let (cpu1, machine1) = cpu_seconds();
    let after = handle.metrics();
    let _ = stop_churn.send(());
    let _ = churning.await;
    let _ = stop.send(());
    let _ = running.await?;
    #[allow(clippy::cast_precision_loss)]
    let avg = measured as f64 / elapsed.as_secs_f64();
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if samples.is_empty() {
            return avg;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((samples.len() - 1) as f64 * (1.0 - p)).round() as usize;
        samples[i]
    };
    let lat = tracker.latency.lock();
    #[allow(clippy::cast_precision_loss)]
    let ms = |v: u64| v as f64 / 1e6;
    println!(
        "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1}× | {:.1} / {:.1} |",
        w.name,
        w.nodes,
        init,
        measured,
        avg,
        pct(0.5),
        pct(0.99),
        ms(lat.value_at_quantile(0.5)),
        ms(lat.value_at_quantile(0.99)),
        ms(lat.max()),
        avg / w.threshold,
        cpu1 - cpu0,
        (machine1 - machine0) - (cpu1 - cpu0),
    );
    eprintln!(
        "  {}: attempts scheduled {} unschedulable {} errors {}, bindings {} (failed {}), preemptions {}",
        w.name,
        after.scheduled - before.scheduled,
        after.unschedulable - before.unschedulable,
        after.errors - before.errors,
        after.bindings - before.bindings,
        after.binding_failures - before.binding_failures,
        after.preemption_attempts - before.preemption_attempts,
    );
    Ok(())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let events = !std::env::args().any(|a| a == "--no-events");
    let only = arg("--workload");
    let parallelism = arg("--parallelism").and_then(|p| p.parse().ok());
    let scale = if quick { 10 } else { 1 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!("scheduler_perf: in-process API server on a durable MemStore, default profile, {cores} cores, 2 tokio workers{}", if events { "" } else { ", no Scheduled events" });
    println!();
    println!("| workload | nodes | init pods | measured pods | avg pods/s | p50 pods/s | p99 pods/s | latency p50 ms | p99 ms | max ms | vs kube-scheduler threshold | CPU-s ours / rest of machine |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for w in WORKLOADS {
        if only.as_deref().is_some_and(|o| o != w.name) {
            continue;
        }
        if let Err(e) = runtime.block_on(run(*w, scale, events, parallelism)) {
            println!("| {} | failed: {e} |", w.name);
        }
    }
}
