//! 1,000 Deployments × 10 replicas on 100 simulated nodes: the built-in controllers
//! (ControllerManager: Deployment, ReplicaSet, garbage collector, Namespace,
//! ServiceAccount) against an in-process API server; the bench itself stands in for the
//! scheduler (binding each pod to one of 100 nodes) and the node agents (reporting each
//! bound pod Running and Ready).
//!
//! ```sh
//! cargo bench -p keelson-controllers --bench deployments
//! cargo bench -p keelson-controllers --bench deployments -- --deployments 100 --replicas 10
//! cargo bench -p keelson-controllers --bench deployments -- --durable   # MemStore on disk
//! cargo bench -p keelson-controllers --bench deployments -- --all-controllers  # every built-in one
//! ```
//!
//! Reported, from the last Deployment's create: when every pod exists, when every pod is
//! Running, and when every Deployment reports all its replicas available.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{arg, flag, machine};
use futures::StreamExt;
use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_controllers::{watcher, Change, ControllerManager, ControllerManagerConfig, Informer};
use keelson_core::client::{Api, Patch};
use keelson_core::k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use keelson_core::k8s_openapi::api::core::v1::{
    Binding, Container, Namespace, ObjectReference, Pod, PodSpec, PodTemplateSpec,
};
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use keelson_store::MemStore;
use parking_lot::Mutex;
use serde_json::json;

/// The allocator `keelson up` runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn deployment(i: usize, replicas: i32) -> Deployment {
    let name = format!("app-{i:04}");
    let labels: std::collections::BTreeMap<String, String> =
        [("app".to_owned(), name.clone())].into();
    let mut d = Deployment::default();
    d.metadata.name = Some(name);
    d.spec = Some(DeploymentSpec {
        replicas: Some(replicas),
        selector: LabelSelector {
            match_labels: Some(labels.clone()),
            ..LabelSelector::default()
        },
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("registry.example/app:1.0".into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        },
        ..DeploymentSpec::default()
    });
    d
}

fn main() {
    let n: usize = arg("--deployments")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1000);
    let replicas: i32 = arg("--replicas").and_then(|p| p.parse().ok()).unwrap_or(10);
    let total = n * usize::try_from(replicas).unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::Builder::new().prefix("keelson-ctrl-bench-").tempdir_in("/var/tmp").expect("tempdir");
        let store = if flag("--durable") { MemStore::open(dir.path()).expect("store") } else { MemStore::ephemeral() };
        let server = ApiServer::new(Registry::new(Arc::new(store)), resources::builtin());
        let client = server.client();
        let mut ns = Namespace::default();
        ns.metadata.name = Some("bench".into());
        Api::<Namespace>::all(client.clone()).create(&ns).await.expect("namespace");

        // The scheduler and node agents' stand-in: bind each new pod, report it Running.
        let pods_informer = Informer::new(Api::<Pod>::all(client.clone()), watcher::Config::default());
        let mut sub = pods_informer.subscribe();
        let created = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let started: Arc<Mutex<HashSet<String>>> = Arc::default();
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        {
            let (client, created, running, started) = (client.clone(), created.clone(), running.clone(), started.clone());
            tokio::spawn(async move {
                let mut node = 0usize;
                while let Some(change) = sub.next().await {
                    let Change::Applied { old: None, new } = change else { continue };
                    let name = new.metadata.name.clone().unwrap_or_default();
                    if !started.lock().insert(name.clone()) {
                        continue;
                    }
                    created.fetch_add(1, Ordering::Relaxed);
                    node = (node + 1) % 100;
                    let permit = sem.clone().acquire_owned().await.expect("semaphore");
                    let (client, running) = (client.clone(), running.clone());
                    tokio::spawn(async move {
                        let api: Api<Pod> = Api::namespaced(client, "bench");
                        let binding = Binding {
                            metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
                            target: ObjectReference { kind: Some("Node".into()), name: Some(format!("node-{node}")), ..ObjectReference::default() },
                        };
                        let bound: Result<serde_json::Value, _> = api.create_subresource("binding", &name, &binding).await;
                        if bound.is_ok() {
                            let status = json!({"status": {"phase": "Running", "conditions": [
                                {"type": "Ready", "status": "True", "lastTransitionTime": keelson_controllers::clock::now_time()}]}});
                            if api.patch_status(&name, &Patch::Merge(status)).await.is_ok() {
                                running.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        drop(permit);
                    });
                }
            });
        }
        pods_informer.reader().wait_until_ready().await.expect("pods cache");

        // The controllers a Deployment needs (as the module docs list them); `--all-controllers`
        // runs every built-in one, as `keelson up` does.
        let config = if flag("--all-controllers") {
            ControllerManagerConfig::default()
        } else {
            ControllerManagerConfig::default()
                .controllers(&["deployment", "replicaset", "garbagecollector", "namespace", "serviceaccount"])
                .expect("controller names")
        };
        let manager = ControllerManager::with_config(client.clone(), config);
        let metrics = manager.metrics();
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let mgr = tokio::spawn(manager.run(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        // Let the controllers' caches fill before the clock starts.
        tokio::time::sleep(Duration::from_millis(500)).await;

        println!("deployments: {n} × {replicas} replicas, 100 simulated nodes, {} store", if flag("--durable") { "durable" } else { "in-memory" });
        println!("machine: {}", machine());
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "bench");
        let t0 = Instant::now();
        let creates = futures::stream::iter(0..n)
            .map(|i| {
                let api = deployments.clone();
                async move { api.create(&deployment(i, replicas)).await.expect("create deployment") }
            })
            .buffer_unordered(32)
            .count();
        creates.await;
        let applied = t0.elapsed();
        let last_apply = Instant::now();
        let d_informer = Informer::new(deployments.clone(), watcher::Config::default());
        let d_reader = d_informer.reader();
        let (mut all_created, mut all_running, mut all_available) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(300);
        while all_available.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if all_created.is_none() && created.load(Ordering::Relaxed) >= total {
                all_created = Some(last_apply.elapsed());
            }
            if all_running.is_none() && running.load(Ordering::Relaxed) >= total {
                all_running = Some(last_apply.elapsed());
            }
            let ready = d_reader
                .list()
                .iter()
                .filter(|d| d.status.as_ref().and_then(|s| s.available_replicas) == Some(replicas)
                    && d.status.as_ref().and_then(|s| s.updated_replicas) == Some(replicas))
                .count();
            if ready == n {
                all_available = Some(last_apply.elapsed());
            }
            if flag("--progress") && last_apply.elapsed().as_millis() % 1000 < 50 {
                let rs = metrics.render();
                let depth: Vec<&str> = rs.lines().filter(|l| l.starts_with("workqueue_depth") || l.starts_with("workqueue_retries")).collect();
                eprintln!("{:>5.1} s: created {} running {} available {ready} {depth:?}",
                    last_apply.elapsed().as_secs_f64(), created.load(Ordering::Relaxed), running.load(Ordering::Relaxed));
            }
        }
        let s = |d: Option<Duration>| d.map_or("not reached".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
        println!("{:>22} {:>14}", "milestone", "after last apply");
        println!("{:>22} {:>14}", format!("{n} applies took"), format!("{:.2} s", applied.as_secs_f64()));
        println!("{:>22} {:>14}", format!("{total} pods created"), s(all_created));
        println!("{:>22} {:>14}", format!("{total} pods Running"), s(all_running));
        println!("{:>22} {:>14}", "all Available", s(all_available));
        println!("(goal: all ReplicaSets and pods created and Running within 20 s of the last apply; pods seen {}, running {})",
            created.load(Ordering::Relaxed), running.load(Ordering::Relaxed));
        if flag("--metrics") {
            println!("{}", metrics.render());
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), mgr).await;
    });
}
