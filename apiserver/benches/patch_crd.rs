//! Issue 4's figures, in-process on a durable MemStore under `/var/tmp`:
//!
//! - strategic merge patches of 3-container Deployments through the in-process client
//!   (`Api<Deployment>::patch` with `Patch::Strategic`): each reads the object, merges the
//!   containers by name, validates and writes it durably. `--tasks` tasks (default 64),
//!   each patching its own Deployment;
//! - how long a new CRD takes to be served: created through the client, then polled until
//!   the first object of its kind is created (discovery and OpenAPI are rebuilt on the
//!   way), for `--crds` CRDs (default 20) one after another.
//!
//! ```sh
//! cargo bench -p keelson-apiserver --bench patch_crd            # 3 rounds of 5 s
//! cargo bench -p keelson-apiserver --bench patch_crd -- --quick
//! ```

mod common;

use common::arg;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_core::client::{Api, Patch};
use keelson_core::k8s_openapi::api::apps::v1::Deployment;
use keelson_core::k8s_openapi::api::core::v1::Namespace;
use keelson_core::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keelson_core::{DynamicObject, ResourceType, Scope};
use keelson_store::MemStore;
use serde_json::json;

/// The allocator `keelson up` runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]},
                {"name": "log", "image": "fluentd:1", "env": [{"name": "LEVEL", "value": "info"}]},
                {"name": "proxy", "image": "envoy:1", "ports": [{"containerPort": 9901}]}
            ]}}}
    }))
    .expect("a deployment")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let tasks: usize = arg("--tasks").and_then(|t| t.parse().ok()).unwrap_or(64);
    let crds: usize = arg("--crds").and_then(|t| t.parse().ok()).unwrap_or(20);
    let (rounds, secs) = if quick { (1, 2) } else { (3, 5) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::Builder::new()
            .prefix("keelson-patch-crd-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let store = MemStore::open(dir.path()).expect("open the store");
        let server = ApiServer::new(Registry::new(Arc::new(store)), resources::builtin());
        let client = server.client();
        let mut ns = Namespace::default();
        ns.metadata.name = Some("bench".into());
        Api::<Namespace>::all(client.clone())
            .create(&ns)
            .await
            .expect("namespace");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "bench");
        for t in 0..tasks {
            deployments
                .create(&deployment(&format!("d{t}")))
                .await
                .expect("create");
        }
        println!("strategic merge patches of 3-container Deployments: {tasks} tasks, {rounds} round(s) of {secs} s");
        let mut counter = 0u64;
        for round in 1..=rounds {
            let stop = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            let mut handles = Vec::new();
            for t in 0..tasks {
                let (api, stop) = (deployments.clone(), stop.clone());
                let base = counter;
                handles.push(tokio::spawn(async move {
                    let name = format!("d{t}");
                    let mut latencies = Vec::new();
                    let mut i = base;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let patch = Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                            {"name": "web", "image": format!("nginx:1.{i}")},
                            {"name": "log", "env": [{"name": "LEVEL", "value": format!("v{i}")}]}
                        ]}}}}));
                        let t0 = Instant::now();
                        api.patch(&name, &patch).await.expect("patch");
                        latencies.push(t0.elapsed());
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
            counter += all.len() as u64;
            let elapsed = started.elapsed();
            all.sort();
            println!(
                "round {round}: {:.0} patches/s ({} in {:.2?}); p50 {:.2?}, p99 {:.2?}",
                all.len() as f64 / elapsed.as_secs_f64(),
                all.len(),
                elapsed,
                percentile(&all, 0.5),
                percentile(&all, 0.99),
            );
        }

        let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut times = Vec::new();
        for i in 0..crds {
            let plural = format!("gadgets{i}");
            let crd: CustomResourceDefinition = serde_json::from_value(json!({
                "metadata": {"name": format!("{plural}.example.com")},
                "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": plural, "kind": format!("Gadget{i}")},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                        "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                            "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}
            }))
            .expect("a CRD");
            let rt = ResourceType::new("example.com", "v1", format!("Gadget{i}"), plural.clone(), Scope::Namespaced);
            let objects = Api::dynamic(client.clone(), &rt, Some("bench"));
            let object = DynamicObject::new(&rt, "first").with_data(json!({"spec": {"size": 1}}));
            let started = Instant::now();
            crd_api.create(&crd).await.expect("create the CRD");
            loop {
                if objects.create(&object).await.is_ok() {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "not served in 10 s");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "new CRD served (created to first object created), {crds} CRDs: p50 {:.2?}, max {:.2?}",
            percentile(&times, 0.5),
            times[times.len() - 1]
        );
    });
}
