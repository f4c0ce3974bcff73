//! Informer cache memory: N pods (default 10,000) as a Deployment's ReplicaSet makes
//! them and a node agent reports them (labels, ownerReference, one container with ports,
//! resources and env, bound to a node, status Running with conditions and a container
//! status), then one typed `Informer<Pod>` lists and caches them.
//!
//! ```sh
//! cargo bench -p keelson-controllers --bench informer                    # 10,000 pods
//! cargo bench -p keelson-controllers --bench informer -- --pods 150000
//! ```
//!
//! Reported: the process's RSS growth from just before the informer starts to when its
//! cache is ready (what the cache costs, plus the allocator's retention of the list's
//! transient buffers), per object; and the pods' JSON size for comparison.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{arg, machine, mib, rss_bytes};
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

/// The allocator `keelson up` runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn pod(i: usize) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(format!("web-7d4b9c8f6-{i:05}"));
    p.metadata.labels = Some(
        [("app".to_owned(), "web".to_owned()), ("pod-template-hash".to_owned(), "7d4b9c8f6".to_owned())].into(),
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
            ports: Some(vec![ContainerPort { container_port: 8080, name: Some("http".into()), ..ContainerPort::default() }]),
            env: Some(vec![EnvVar { name: "MODE".into(), value: Some("production".into()), ..EnvVar::default() }]),
            resources: Some(ResourceRequirements {
                requests: Some([("cpu".to_owned(), Quantity("100m".into())), ("memory".to_owned(), Quantity("128Mi".into()))].into()),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        }],
        ..PodSpec::default()
    });
    p
}

fn main() {
    let n: usize = arg("--pods").and_then(|p| p.parse().ok()).unwrap_or(10_000);
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
        let before = rss_bytes();
        let t = Instant::now();
        let informer = Informer::new(Api::<Pod>::all(client.clone()), watcher::Config::default());
        let reader = informer.reader();
        reader.wait_until_ready().await.expect("ready");
        let took = t.elapsed().as_secs_f64();
        let after = rss_bytes();
        assert_eq!(reader.len(), n);
        let delta = after.saturating_sub(before);
        #[allow(clippy::cast_precision_loss)]
        let per = delta as f64 / n as f64;
        println!("{:>8} {:>14} {:>16} {:>16} {:>12}", "pods", "cache (MiB)", "bytes/object", "JSON bytes/pod", "list+decode");
        println!(
            "{n:>8} {:>14.1} {per:>16.0} {:>16} {:>10.2} s",
            mib(delta),
            json_bytes / n.max(1),
            took
        );
        println!("(process RSS: {:.1} MiB before the informer, {:.1} MiB with it; goal: ≤ 40 MiB for 10,000 pods)", mib(before), mib(after));
        drop(informer);
    });
}
