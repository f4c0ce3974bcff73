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
//! Per workload: nodes are created, then the init pods (scheduled before measuring),
//! then the measured pods are created by 64 tasks as fast as the API takes them while
//! the scheduler binds them. Reported, as scheduler_perf does: the average throughput
//! (measured pods / time from the first create to the last bind) and percentiles of the
//! per-second throughput samples; and the scheduling latency of each pod, from its
//! create call to its binding seen on a watch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_core::client::{Api, Client, WatchEventType, WatchParams};
use keelson_core::k8s_openapi::api::core::v1::{
    Affinity, Namespace, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, Pod, TopologySpreadConstraint,
};
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

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    nodes: usize,
    init_pods: usize,
    measured_pods: usize,
    /// kube-scheduler's CI threshold (pods/s).
    threshold: f64,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "SchedulingBasic",
        nodes: 5000,
        init_pods: 1000,
        measured_pods: 10000,
        threshold: 270.0,
    },
    Workload {
        name: "NodeAffinity",
        nodes: 5000,
        init_pods: 1000,
        measured_pods: 10000,
        threshold: 220.0,
    },
    Workload {
        name: "TopologySpreading",
        nodes: 5000,
        init_pods: 1000,
        measured_pods: 5000,
        threshold: 85.0,
    },
    Workload {
        name: "PodAntiAffinity",
        nodes: 5000,
        init_pods: 1000,
        measured_pods: 2000,
        threshold: 60.0,
    },
    Workload {
        name: "PreemptionBasic",
        nodes: 500,
        init_pods: 2000,
        measured_pods: 500,
        threshold: 18.0,
    },
];

const ZONES: [&str; 3] = ["zone1", "zone2", "zone3"];

fn make_node(w: &Workload, i: usize) -> Node {
    let mut b = node(&format!("node-{i}"))
        .cpu("4")
        .memory("32Gi")
        .pods("110");
    match w.name {
        "NodeAffinity" => {
            b = b.label(
                "affinity-group",
                if i.is_multiple_of(2) {
                    "group-0"
                } else {
                    "group-1"
                },
            )
        }
        "TopologySpreading" => b = b.label("topology.kubernetes.io/zone", ZONES[i % ZONES.len()]),
        _ => {}
    }
    b.obj()
}

/// scheduler_perf's pod templates (pod-default: 100m CPU, 500Mi).
fn make_pod(w: &Workload, name: &str, init: bool) -> Pod {
    let base = || pod(name).cpu("100m").memory("500Mi");
    let mut p = match w.name {
        "NodeAffinity" if !init => base()
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
        "TopologySpreading" if !init => base()
            .label("color", "blue")
            .spread(TopologySpreadConstraint {
                max_skew: 5,
                topology_key: "topology.kubernetes.io/zone".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                label_selector: Some(selector(&[("color", "blue")])),
                ..TopologySpreadConstraint::default()
            })
            .obj(),
        "PodAntiAffinity" => pod(name)
            .cpu("100m")
            .memory("500Mi")
            .label("color", "green")
            .anti_affinity(&[("color", "green")], "kubernetes.io/hostname")
            .obj(),
        // 4 low-priority pods of 900m fill a 4-core node; a high-priority pod of 3
        // cores must evict three of them.
        "PreemptionBasic" if init => pod(name).cpu("900m").memory("500Mi").priority(1).obj(),
        "PreemptionBasic" => pod(name).cpu("3").memory("500Mi").priority(10).obj(),
        _ => base().obj(),
    };
    p.metadata.uid = None;
    p.metadata.namespace = Some("bench".into());
    if let Some(s) = p.spec.as_mut() {
        s.termination_grace_period_seconds = Some(0);
    }
    p
}

struct Tracker {
    created: Mutex<HashMap<String, Instant>>,
    latency: Mutex<Histogram<u64>>,
    bound: AtomicUsize,
    last_bound: Mutex<Option<Instant>>,
}

async fn create_all(client: &Client, pods: Vec<Pod>, tracker: Option<Arc<Tracker>>, tasks: usize) {
    let queue = Arc::new(Mutex::new(pods));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let queue = queue.clone();
        let api: Api<Pod> = Api::namespaced(client.clone(), "bench");
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
    let init = w.init_pods / scale;
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
    let mut ns = Namespace::default();
    ns.metadata.name = Some("bench".into());
    Api::<Namespace>::all(client.clone()).create(&ns).await?;
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
    let init_pods: Vec<Pod> = (0..init)
        .map(|i| make_pod(&w, &format!("init-{i}"), true))
        .collect();
    create_all(&client, init_pods, None, 64).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while init_bound.load(Ordering::Relaxed) < init {
        if Instant::now() > deadline {
            return Err(format!("{}: init pods not all bound", w.name).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Measured pods.
    let before = handle.metrics();
    let (cpu0, machine0) = cpu_seconds();
    let start = Instant::now();
    let pods: Vec<Pod> = (0..measured)
        .rev()
        .map(|i| make_pod(&w, &format!("pod-{i}"), false))
        .collect();
    let creator = {
        let client = client.clone();
        let tracker = tracker.clone();
        tokio::spawn(async move { create_all(&client, pods, Some(tracker), 64).await })
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
