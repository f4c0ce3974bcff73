//! SimFleet scale: N simulated nodes in one process with the in-process API server —
//! memory, registration time, and whether Lease heartbeats keep up.
//!
//! ```sh
//! cargo bench -p keelson-node --bench sim_nodes                              # 5,000 nodes, then 30 s
//! cargo bench -p keelson-node --bench sim_nodes -- --nodes 1000 --seconds 20 --pods 2000
//! cargo bench -p keelson-node --bench sim_nodes -- --pods 5000 --pods-elsewhere    # API server's share
//! ```
//!
//! Reported: the process's resident memory (VmRSS, which includes the API server and its
//! store) before the fleet, after registration and after the run; registrations per
//! second; lease renewals per second against the needed rate (N / 10 s); the longest gap
//! between two renewals of one node (keeping up means about 10 s); and, with `--pods`,
//! how long the pods took to all be Running.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_core::client::{Api, ListParams};
use keelson_core::k8s_openapi::api::core::v1::{Namespace, Pod};
use keelson_node::SimFleet;
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

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    let nodes: usize = arg("--nodes").and_then(|v| v.parse().ok()).unwrap_or(5000);
    let seconds: u64 = arg("--seconds").and_then(|v| v.parse().ok()).unwrap_or(30);
    let pods: usize = arg("--pods").and_then(|v| v.parse().ok()).unwrap_or(0);
    // `--pods-elsewhere`: bind the pods to nodes outside the fleet, so that they stay
    // Pending — the API server's share of their memory, without the agents'.
    let prefix = if std::env::args().any(|a| a == "--pods-elsewhere") {
        "elsewhere-"
    } else {
        "sim-"
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let server = ApiServer::new(Registry::new(Arc::new(MemStore::ephemeral())), resources::builtin());
        let client = server.client();
        let mut ns = Namespace::default();
        ns.metadata.name = Some("bench".into());
        Api::<Namespace>::all(client.clone()).create(&ns).await.expect("namespace");
        let base = rss_mib();
        println!("SimFleet: {nodes} simulated nodes, {seconds} s of heartbeats (lease every 10 s), {pods} pods");
        let fleet = Arc::new(SimFleet::builder(client.clone()).nodes(nodes).build());
        let t = Instant::now();
        fleet.register().await.expect("register");
        let reg = t.elapsed();
        let after_reg = rss_mib();
        println!(
            "  registered in {:.1} s ({:.0} nodes/s); RSS {base:.0} MiB before, {after_reg:.0} MiB after",
            reg.as_secs_f64(),
            nodes as f64 / reg.as_secs_f64()
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let f = fleet.clone();
        let task = tokio::spawn(async move {
            f.run(async {
                let _ = stopped.await;
            })
            .await
        });
        let podapi: Api<Pod> = Api::namespaced(client.clone(), "bench");
        let t = Instant::now();
        if pods > 0 {
            for i in 0..pods {
                let p: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("p{i}")},
                    "spec": {"nodeName": format!("{prefix}{}", i % nodes), "containers": [{"name": "c", "image": "app"}]},
                }))
                .expect("pod");
                podapi.create(&p).await.expect("create pod");
            }
            loop {
                let l = match podapi.list(&ListParams::default()).await {
                    Ok(l) => l,
                    Err(e) => {
                        // The server may ask to retry while its cache catches up.
                        eprintln!("  list: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let running = l.items.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count();
                if running == pods || prefix != "sim-" || t.elapsed() > Duration::from_secs(120) {
                    println!("  {running}/{pods} pods Running after {:.1} s", t.elapsed().as_secs_f64());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let before = fleet.stats().renewals;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let s = fleet.stats();
        let rate = (s.renewals - before) as f64 / t0.elapsed().as_secs_f64().max(0.001);
        println!(
            "  renewals {:.0}/s (needed {:.0}/s), failures {}, longest gap between two renewals of a node {:.2} s",
            rate,
            nodes as f64 / 10.0,
            s.failures,
            s.max_renew_gap.as_secs_f64()
        );
        let end = rss_mib();
        println!(
            "  RSS at the end {end:.0} MiB ({:.0} MiB over the API server alone; {:.1} KiB per node); goal <= 200 MiB",
            end - base,
            (end - base) * 1024.0 / nodes as f64
        );
        let _ = stop.send(());
        let _ = task.await;
    });
}
