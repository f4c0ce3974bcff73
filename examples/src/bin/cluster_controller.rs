//! Testing a custom controller against a whole in-process cluster.
//!
//! The controller is tiny: for every Deployment it counts the ready pods carrying its
//! `app` label and writes the count in the annotation `example.com/ready-pods`. The test
//! harness is `keelson::Cluster`: an API server on an in-memory store, the scheduler,
//! the built-in controllers (Deployment, ReplicaSet, ...) and three simulated nodes, in
//! one call. The runtime starts with paused time, so the nodes' heartbeats, the
//! controllers' periods and the simulated containers all run on tokio's clock, which
//! jumps ahead whenever everything is waiting: the run is quick and the same every time.
//!
//! `cargo run -p keelson-examples --bin cluster_controller`

use std::sync::Arc;
use std::time::Duration;

use keelson::controllers::{watcher, Action, Context, Controller, ObjectRef, Reconciler};
use keelson::core::client::{Api, Client, ListParams, Patch};
use keelson::core::k8s_openapi::api::apps::v1::Deployment;
use keelson::core::k8s_openapi::api::core::v1::{Node, Pod};
use keelson::Cluster;
use serde_json::json;

const ANNOTATION: &str = "example.com/ready-pods";

/// Writes each Deployment's ready pod count in an annotation.
struct ReadyCounter {
    client: Client,
}

#[async_trait::async_trait]
impl Reconciler<Deployment> for ReadyCounter {
    type Error = keelson::core::Error;

    async fn reconcile(&self, d: Arc<Deployment>, ctx: &Context) -> Result<Action, Self::Error> {
        let ns = ctx.key.ns().unwrap_or("default");
        let name = ctx.key.name.as_ref();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let ready = pods
            .list(&ListParams::default().labels(&format!("app={name}"))?)
            .await?
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count()
            .to_string();
        let current = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION));
        if current != Some(&ready) {
            Api::<Deployment>::namespaced(self.client.clone(), ns)
                .patch(
                    name,
                    &Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION: ready}}})),
                )
                .await?;
        }
        Ok(Action::await_change())
    }
}

/// Waits (on tokio's clock) until the Deployment's annotation says `want`.
async fn wait_for_count(
    deployments: &Api<Deployment>,
    name: &str,
    want: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline {
        let d = deployments.get(name).await?;
        if d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
            == Some(&want.to_owned())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{name} never had {want} ready pods").into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let wall = std::time::Instant::now();
    let started = tokio::time::Instant::now();
    let cluster = Cluster::builder().sim_nodes(3).build().await?;
    let client = cluster.client();
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    println!("cluster up with {} nodes", nodes.items.len());

    // The controller under test, on the cluster's client.
    let controller = Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
        |pod: &Pod| {
            let app = pod.metadata.labels.as_ref().and_then(|l| l.get("app"));
            app.map(|app| ObjectRef::new(pod.metadata.namespace.as_deref(), app))
                .into_iter()
                .collect()
        },
    )
    .graceful_shutdown_on(cluster.stop_signal());
    let counting = tokio::spawn(controller.run(Arc::new(ReadyCounter {
        client: client.clone(),
    })));

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let web: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web:1"}]},
            },
        },
    }))?;
    deployments.create(&web).await?;
    wait_for_count(&deployments, "web", "3").await?;
    println!("web: 3 ready pods counted");
    deployments
        .patch("web", &Patch::Merge(json!({"spec": {"replicas": 5}})))
        .await?;
    wait_for_count(&deployments, "web", "5").await?;
    println!("web: scaled, 5 ready pods counted");
    deployments
        .patch("web", &Patch::Merge(json!({"spec": {"replicas": 0}})))
        .await?;
    wait_for_count(&deployments, "web", "0").await?;
    println!("web: scaled to zero, 0 ready pods counted");

    let cluster_time = started.elapsed();
    cluster.shutdown().await;
    counting.await?;
    println!(
        "done: {:.1} s of cluster time in {:.1} s",
        cluster_time.as_secs_f64(),
        wall.elapsed().as_secs_f64()
    );
    Ok(())
}
