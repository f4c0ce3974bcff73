//! Creates through the in-process client: `Api<Pod>::create` calling the registry directly
//! (no sockets, no HTTP), on a durable MemStore under `/var/tmp` — every create is on disk
//! (fdatasync, group commit) before it returns.
//!
//! ```sh
//! cargo bench -p keelson-apiserver --bench inprocess              # 3 rounds of 5 s
//! cargo bench -p keelson-apiserver --bench inprocess -- --quick   # 1 round of 2 s
//! cargo bench -p keelson-apiserver --bench inprocess -- --tasks 64
//! cargo bench -p keelson-apiserver --bench inprocess -- --dir /dev/shm   # no disk wait
//! ```
//!
//! `--tasks` concurrent tasks (default 256) each create typed pods with `generateName`
//! in a loop on a 2-worker tokio runtime; the pods' watch cache runs beside them, as in a
//! live server. Reported: creates/s and the latency of one create (p50, p99), per round.

mod common;

use common::arg;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_core::client::{Api, ListParams};
use keelson_core::k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec};
use keelson_store::MemStore;

/// The allocator `keelson up` runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn pod() -> Pod {
    let mut p = Pod::default();
    p.metadata.generate_name = Some("bench-".into());
    p.metadata.labels = Some([("app".to_owned(), "bench".to_owned())].into());
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: "c".into(),
            image: Some("registry.example/app:1.0".into()),
            ports: Some(vec![ContainerPort {
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        }],
        ..PodSpec::default()
    });
    p
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let tasks: usize = arg("--tasks").and_then(|t| t.parse().ok()).unwrap_or(256);
    let (rounds, secs) = if quick { (1, 2) } else { (3, 5) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::Builder::new()
            .prefix("keelson-inprocess-")
            .tempdir_in(arg("--dir").unwrap_or_else(|| "/var/tmp".into()))
            .expect("tempdir");
        let store = MemStore::open(dir.path()).expect("open the store");
        let server = ApiServer::new(Registry::new(Arc::new(store)), resources::builtin());
        let client = server.client();
        let mut ns = Namespace::default();
        ns.metadata.name = Some("bench".into());
        Api::<Namespace>::all(client.clone())
            .create(&ns)
            .await
            .expect("create the namespace");
        let pods: Api<Pod> = Api::namespaced(client, "bench");
        // Start the pods' watch cache, as a live server has it.
        pods.list(&ListParams::default()).await.expect("list");
        println!(
            "in-process creates: {tasks} tasks, {rounds} round(s) of {secs} s, durable MemStore"
        );
        for round in 1..=rounds {
            let stop = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            let mut handles = Vec::new();
            for _ in 0..tasks {
                let (pods, stop) = (pods.clone(), stop.clone());
                handles.push(tokio::spawn(async move {
                    let template = pod();
                    let mut latencies = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        pods.create(&template).await.expect("create");
                        latencies.push(t.elapsed());
                    }
                    latencies
                }));
            }
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.store(true, Ordering::Relaxed);
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.await.expect("task"));
            }
            let elapsed = started.elapsed();
            all.sort();
            let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
            println!(
                "round {round}: {:.0} creates/s ({} in {:.2?}); p50 {:.2?}, p99 {:.2?}",
                all.len() as f64 / elapsed.as_secs_f64(),
                all.len(),
                elapsed,
                pct(0.50),
                pct(0.99),
            );
        }
    });
}
