//! A custom scheduler beside the default one: a user Score plugin that prefers nodes by
//! their `example.com/tier` label, in its own profile that pods select with
//! `spec.schedulerName: tiered-scheduler`. Everything runs in this process: an API
//! server on an in-memory store, three nodes, and the scheduler with two profiles.
//!
//! `cargo run -p keelson-examples --bin custom_scheduler`

use std::sync::Arc;
use std::time::Duration;

use keelson::apiserver::{resources, ApiServer, Registry};
use keelson::core::client::{Api, Client};
use keelson::core::k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use keelson::store::MemStore;
use keelson_scheduler::testing::{node, pod};
use keelson_scheduler::{
    default_profile, CycleState, NodeInfo, Plugin, PodInfo, Scheduler, Score, Status,
};

/// Scores nodes by their `example.com/tier` label: gold 100, silver 50, others 0.
struct TierScore;

impl Plugin for TierScore {
    fn name(&self) -> &str {
        "TierScore"
    }
    fn as_score(self: Arc<Self>) -> Option<Arc<dyn Score>> {
        Some(self)
    }
}

impl Score for TierScore {
    fn score(&self, _: &CycleState, _: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        Ok(
            match node.labels().get("example.com/tier").map(String::as_str) {
                Some("gold") => 100,
                Some("silver") => 50,
                _ => 0,
            },
        )
    }
}

async fn wait_bound(pods: &Api<Pod>, name: &str) -> Result<String, Box<dyn std::error::Error>> {
    for _ in 0..500 {
        if let Some(n) = pods.get(name).await?.spec.and_then(|s| s.node_name) {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("pod {name} was not bound").into())
}

async fn wait_explained(pods: &Api<Pod>, name: &str) -> Result<String, Box<dyn std::error::Error>> {
    for _ in 0..500 {
        let p = pods.get(name).await?;
        let condition = p.status.and_then(|s| s.conditions).and_then(|c| {
            c.into_iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        });
        if let Some(message) = condition.and_then(|c| c.message) {
            return Ok(message);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("pod {name} got no PodScheduled condition").into())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = ApiServer::new(
        Registry::new(Arc::new(MemStore::ephemeral())),
        resources::builtin(),
    );
    let client: Client = server.client();
    let mut ns = Namespace::default();
    ns.metadata.name = Some("default".into());
    Api::<Namespace>::all(client.clone()).create(&ns).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    for (name, tier) in [
        ("node-bronze", "bronze"),
        ("node-gold", "gold"),
        ("node-silver", "silver"),
    ] {
        nodes
            .create(
                &node(name)
                    .cpu("4")
                    .memory("8Gi")
                    .label("example.com/tier", tier)
                    .obj(),
            )
            .await?;
    }

    // Two profiles in one scheduler: the default one, and ours with TierScore weighing
    // 10 times the others.
    let scheduler = Scheduler::builder(client.clone())
        .profile(|h| default_profile(h, "default-scheduler"))
        .profile(|h| {
            default_profile(h, "tiered-scheduler")
                .plugin(Arc::new(TierScore))
                .weight("TierScore", 10)
        })
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(scheduler.run(async move {
        let _ = stopped.await;
    }));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut p = pod("tiered-1")
        .cpu("500m")
        .scheduler_name("tiered-scheduler")
        .obj();
    p.metadata.uid = None;
    pods.create(&p).await?;
    let mut p = pod("tiered-2")
        .cpu("500m")
        .scheduler_name("tiered-scheduler")
        .obj();
    p.metadata.uid = None;
    pods.create(&p).await?;
    let mut greedy = pod("greedy")
        .cpu("64")
        .scheduler_name("tiered-scheduler")
        .obj();
    greedy.metadata.uid = None;
    pods.create(&greedy).await?;

    for name in ["tiered-1", "tiered-2"] {
        let node = wait_bound(&pods, name).await?;
        println!("pod {name} (tiered-scheduler) -> {node}");
    }
    let message = wait_explained(&pods, "greedy").await?;
    println!("pod greedy is pending: {message}");

    let _ = stop.send(());
    running.await??;
    Ok(())
}
