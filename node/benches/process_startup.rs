//! ProcessRuntime pod start-up: pods created at a steady rate on one node, each timed
//! from just before its create call to the watch event that shows it `Running`.
//!
//! ```sh
//! cargo bench -p keelson-node --bench process_startup                        # 50 pods/s for 10 s
//! cargo bench -p keelson-node --bench process_startup -- --rate 100 --seconds 5
//! ```
//!
//! In-process API server (ephemeral MemStore), one agent with the ProcessRuntime and the
//! loopback network under `/var/tmp`, each pod one `sleep 600` process; a 2-worker tokio
//! runtime. Reported: p50, p99 and max start-up latency, and pods that never started.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_core::client::{Api, Event, WatchParams};
use keelson_core::k8s_openapi::api::core::v1::{Namespace, Pod};
use keelson_node::{Agent, AgentConfig, LoopbackNetwork, ProcessRuntime, Runtime};
use keelson_store::MemStore;

/// The allocator `keelson up` runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"nodeName": "bench-node", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "sleep", "command": ["sleep", "600"]}]},
    }))
    .expect("pod")
}

fn main() {
    let rate: u64 = arg("--rate").and_then(|v| v.parse().ok()).unwrap_or(50);
    let seconds: u64 = arg("--seconds").and_then(|v| v.parse().ok()).unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::Builder::new().prefix("keelson-node-bench-").tempdir_in("/var/tmp").expect("tempdir");
        let server = ApiServer::new(Registry::new(Arc::new(MemStore::ephemeral())), resources::builtin());
        let client = server.client();
        let mut ns = Namespace::default();
        ns.metadata.name = Some("bench".into());
        Api::<Namespace>::all(client.clone()).create(&ns).await.expect("namespace");
        let rt = Arc::new(ProcessRuntime::open(dir.path().join("runtime")).expect("runtime"));
        let net = Arc::new(LoopbackNetwork::open(dir.path().join("network"), 42).expect("network"));
        let agent = Arc::new(
            Agent::builder(client.clone(), "bench-node")
                .runtime(rt.clone() as Arc<dyn Runtime>)
                .network(net)
                .state_dir(dir.path())
                .config(AgentConfig::default())
                .build()
                .expect("agent"),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let a = agent.clone();
        let agent_task = tokio::spawn(async move {
            a.run(async {
                let _ = stopped.await;
            })
            .await
        });
        let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
        let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
        let total = rate * seconds;
        let mut watch = pods.watch(&WatchParams::default()).await.expect("watch");
        let c = created.clone();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
        tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            while let Some(Ok(e)) = watch.next().await {
                if let Event::Modified(p) = e {
                    let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    let name = p.metadata.name.clone().unwrap_or_default();
                    if running && seen.insert(name.clone()) {
                        if let Some(t) = c.lock().unwrap_or_else(|e| e.into_inner()).get(&name) {
                            let _ = done_tx.send(t.elapsed());
                        }
                    }
                }
            }
        });
        println!("ProcessRuntime pod start-up: {total} pods at {rate} pods/s on one node (created -> Running)");
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
        for i in 0..total {
            tick.tick().await;
            let name = format!("p{i}");
            created.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), Instant::now());
            let pods = pods.clone();
            tokio::spawn(async move {
                if let Err(e) = pods.create(&pod(&name)).await {
                    eprintln!("create {name}: {e}");
                }
            });
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut got = 0;
        while got < total {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(d)) => {
                    hist.record(d.as_micros() as u64).expect("record");
                    got += 1;
                }
                _ => break,
            }
        }
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "  running: {got}/{total} in {:.1} s; start-up p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; goal p99 <= 500 ms",
            started.elapsed().as_secs_f64(),
            ms(0.5),
            ms(0.99),
            hist.max() as f64 / 1000.0
        );
        rt.kill_all();
        let _ = stop.send(());
        let _ = agent_task.await;
        // Let the reapers record every exit before the directory goes.
        let until = Instant::now() + Duration::from_secs(10);
        while !rt.running_pids().is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(dir);
    });
}
