//! Informer cache memory: N pods (default 10,000) as a Deployment's ReplicaSet makes
//! them and a node agent reports them (labels, ownerReference, one container with ports,
//! resources and env, bound to a node, status Running with conditions and a container
//! status), then one typed `Informer<Pod>` lists and caches them.
//!
//! ```sh
//! cargo bench -p keelson-controllers --bench informer                    # 10,000 pods
//! cargo bench -p keelson-controllers --bench informer -- --pods 150000
//! cargo bench -p keelson-controllers --bench informer -- --decode-only  # also: one typed Pod, the reflector alone
//! ```
//!
//! The server runs in this process and serves plain HTTP on loopback; the informer runs
//! in a child process (this program again, with `--child URL`) that holds nothing else.
//! Reported for that process, 2 s after the cache is ready: the live heap it added
//! (bytes allocated and not freed, counted by a wrapper around mimalloc: the cache
//! itself) and its RSS growth (which adds the allocator's fragmentation from the
//! transient decoding of 10,000 watch events), in total and per pod; the pods' JSON size.
//! This bench runs on the system allocator (see `ALLOC`), the others on mimalloc.
//! Both storages of the cache are measured: decoded typed objects, and compact (JSON
//! bytes, decoded on read).

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{arg, machine, rss_bytes};
use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_controllers::{watcher, Informer};
use keelson_core::client::{Api, ListParams, Patch};
use keelson_core::k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, Namespace, Pod, PodSpec, ResourceRequirements,
};
use keelson_core::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keelson_store::MemStore;
use serde_json::json;

/// The system allocator, counting live bytes (a counting wrapper around mimalloc needs a
/// nightly compiler; live bytes do not depend on the allocator, RSS does).
#[global_allocator]
static ALLOC: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed (requested sizes, before the allocator's rounding).
/// `stats_alloc` already adds a reallocation's growth to `bytes_allocated` (and its shrink
/// to `bytes_deallocated`); its `bytes_reallocated` is the same change again, so it is
/// not added here.
fn live_heap() -> f64 {
    let s = ALLOC.stats();
    #[allow(clippy::cast_precision_loss)]
    let live = s.bytes_allocated as f64 - s.bytes_deallocated as f64;
    live
}

fn pod(i: usize) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(format!("web-7d4b9c8f6-{i:05}"));
    p.metadata.labels = Some(
        [
            ("app".to_owned(), "web".to_owned()),
            ("pod-template-hash".to_owned(), "7d4b9c8f6".to_owned()),
        ]
        .into(),
    );
    p.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: "web-7d4b9c8f6".into(),
        uid: "0b7e6a3c-1d2f-4e5a-9b8c-7d6e5f4a3b2c".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    p.spec = Some(PodSpec {
        node_name: Some(format!("node-{}", i % 100)),
        containers: vec![Container {
            name: "web".into(),
            image: Some("registry.example/web:1.27.3".into()),
            ports: Some(vec![ContainerPort {
                container_port: 8080,
                name: Some("http".into()),
                ..ContainerPort::default()
            }]),
            env: Some(vec![EnvVar {
                name: "MODE".into(),
                value: Some("production".into()),
                ..EnvVar::default()
            }]),
            resources: Some(ResourceRequirements {
                requests: Some(
                    [
                        ("cpu".to_owned(), Quantity("100m".into())),
                        ("memory".to_owned(), Quantity("128Mi".into())),
                    ]
                    .into(),
                ),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        }],
        ..PodSpec::default()
    });
    p
}

fn child(url: &str, n: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let client =
            keelson_core::client::Client::from_config(keelson_core::client::Config::new(url))
                .expect("client");
        // Warm the client up (connection, TLS-free HTTP) before measuring.
        Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await
            .expect("list namespaces");
        if std::env::args().any(|a| a == "--decode-only") {
            let one = Api::<Pod>::all(client.clone())
                .list(&ListParams::default().limit(1))
                .await
                .expect("list")
                .items;
            let text = serde_json::to_string(&one[0]).expect("json");
            let before = rss_bytes();
            let pods: Vec<Arc<Pod>> = (0..n)
                .map(|_| Arc::new(serde_json::from_str(&text).expect("decode")))
                .collect();
            let after = rss_bytes();
            #[allow(clippy::cast_precision_loss)]
            let per = (after - before) as f64 / n as f64;
            eprintln!(
                "decode only: {per:.0} bytes per typed pod ({} JSON bytes)",
                text.len()
            );
            drop(pods);
            for storage in [
                keelson_controllers::reflector::Storage::Decoded,
                keelson_controllers::reflector::Storage::Compact,
            ] {
                let h0 = live_heap();
                let mut w = keelson_controllers::Writer::<Pod>::with_storage(storage);
                w.apply_silently(watcher::Event::Init);
                for i in 0..n {
                    let mut p: Pod = serde_json::from_str(&text).expect("decode");
                    p.metadata.name = Some(format!("p-{i}"));
                    w.apply_silently(watcher::Event::InitApply(p));
                }
                w.apply_silently(watcher::Event::InitDone);
                #[allow(clippy::cast_precision_loss)]
                let per = (live_heap() - h0) / n as f64;
                eprintln!("reflector alone, {storage:?}: {per:.0} live bytes per pod");
            }
        }
        let before = rss_bytes();
        let heap_before = live_heap();
        let t = Instant::now();
        let mut config = watcher::Config::default();
        if std::env::args().any(|a| a == "compact") {
            config = config.compact();
        }
        let informer = Informer::new(Api::<Pod>::all(client.clone()), config);
        let reader = informer.reader();
        reader.wait_until_ready().await.expect("ready");
        let took = t.elapsed().as_secs_f64();
        let ready = rss_bytes();
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let settled = rss_bytes();
        let heap = live_heap() - heap_before;
        assert_eq!(reader.len(), n);
        println!("{before} {ready} {settled} {took} {heap}");
        drop(informer);
    });
}

fn main() {
    let n: usize = arg("--pods").and_then(|p| p.parse().ok()).unwrap_or(10_000);
    if let Some(url) = arg("--child") {
        return child(&url, n);
    }
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
        let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
        let start = Instant::now();
        let mut json_bytes = 0usize;
        let chunk = 64;
        for base in (0..n).step_by(chunk) {
            let batch = (base..(base + chunk).min(n)).map(|i| {
                let pods = pods.clone();
                async move {
                    let created = pods.create(&pod(i)).await.expect("create");
                    let name = created.metadata.name.unwrap_or_default();
                    let status = json!({"status": {
                        "phase": "Running",
                        "podIP": format!("10.1.{}.{}", i / 250 % 250, i % 250),
                        "hostIP": format!("192.168.0.{}", i % 100),
                        "startTime": "2026-01-01T00:00:00Z",
                        "conditions": [
                            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": "2026-01-01T00:00:01Z"},
                            {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-01-01T00:00:01Z"},
                            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:02Z"},
                            {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-01-01T00:00:02Z"},
                            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                        ],
                        "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "started": true,
                            "image": "registry.example/web:1.27.3", "imageID": "registry.example/web@sha256:4f3c2b1a",
                            "containerID": format!("keelson://{i:016x}"),
                            "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}],
                    }});
                    let p = pods.patch_status(&name, &Patch::Merge(status)).await.expect("status");
                    serde_json::to_vec(&p).map_or(0, |v| v.len())
                }
            });
            json_bytes += futures::future::join_all(batch).await.into_iter().sum::<usize>();
        }
        // Warm the server's cache of pods so that it is not counted below.
        let listed = pods.list(&ListParams::default()).await.expect("list");
        assert_eq!(listed.items.len(), n);
        drop(listed);
        println!("informer cache: {n} pods created and reported Running in {:.1} s", start.elapsed().as_secs_f64());
        println!("machine: {}", machine());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, keelson_apiserver::router(server)).await;
        });
        let exe = std::env::current_exe().expect("exe");
        println!(
            "{:>8} {:>9} {:>14} {:>15} {:>12} {:>15} {:>15} {:>12}",
            "pods", "storage", "heap (MiB)", "heap bytes/pod", "RSS (MiB)", "RSS bytes/pod", "JSON bytes/pod", "list+decode"
        );
        for storage in ["decoded", "compact"] {
            let out = tokio::process::Command::new(&exe)
                .args(["--child", &url, "--pods", &n.to_string(), "--storage", storage])
                .args(std::env::args().filter(|a| a == "--decode-only"))
                .output()
                .await
                .expect("run the informer process");
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout);
            let f: Vec<f64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            let [before, _ready, settled, took, heap] = f[..] else {
                panic!("the informer process failed: {text}");
            };
            #[allow(clippy::cast_precision_loss)]
            let n_f = n as f64;
            let mib_f = 1024.0 * 1024.0;
            println!(
                "{n:>8} {storage:>9} {:>14.1} {:>15.0} {:>12.1} {:>15.0} {:>15} {:>10.2} s",
                heap / mib_f,
                heap / n_f,
                (settled - before) / mib_f,
                (settled - before) / n_f,
                json_bytes / n.max(1),
                took
            );
        }
        println!("(RSS growth of a process that holds only the informer; goal: ≤ 40 MiB for 10,000 pods; client-go: about 400 MiB)");
    });
}
