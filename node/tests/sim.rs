//! Simulated nodes: a SimFleet on an in-process API server.

mod common;

use std::time::Duration;

use common::*;
use keelson_core::client::{Api, DeleteOptions, ListParams};
use keelson_core::k8s_openapi::api::coordination::v1::Lease;
use keelson_core::k8s_openapi::api::core::v1::{Node as K8sNode, Pod};
use keelson_node::{AgentConfig, NodeResources, SimFleet};
use serde_json::json;

fn config() -> AgentConfig {
    AgentConfig {
        sync_period: Duration::from_millis(100),
        lease_interval: Duration::from_millis(500),
        backoff_base: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        resources: NodeResources::fixed("8", "32Gi", 110),
        ..AgentConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_registers_its_nodes_heartbeats_and_runs_pods_through_their_stages() {
    let c = cluster().await;
    let fleet = std::sync::Arc::new(
        SimFleet::builder(c.client.clone())
            .nodes(50)
            .config(config())
            .build(),
    );
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let f = fleet.clone();
    let task = tokio::spawn(async move {
        f.run(async {
            let _ = rx.await;
        })
        .await
        .expect("fleet");
    });
    let nodes: Api<K8sNode> = Api::all(c.client.clone());
    eventually(20, "50 nodes", || async {
        let l = nodes.list(&ListParams::default()).await.ok()?;
        (l.items.len() == 50).then_some(())
    })
    .await;
    let n = nodes.get("sim-7").await.expect("node");
    assert_eq!(
        n.metadata
            .labels
            .unwrap_or_default()
            .get("keelson.dev/simulated")
            .map(String::as_str),
        Some("true")
    );
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    eventually(20, "50 leases", || async {
        let l = leases.list(&ListParams::default()).await.ok()?;
        (l.items.len() == 50).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let mut p = pod(
        "forever",
        "sim-3",
        json!({"containers": [{"name": "main", "image": "nginx"}]}),
    );
    pods.create(&p).await.expect("create");
    p = pod(
        "job",
        "sim-4",
        json!({"restartPolicy": "Never", "containers": [{"name": "main", "image": "batch"}]}),
    );
    p.metadata.annotations = Some(
        [(
            "sim.keelson.dev/main".to_owned(),
            "start=100ms,run=300ms,exit=0".to_owned(),
        )]
        .into(),
    );
    pods.create(&p).await.expect("create");
    p = pod(
        "crashy",
        "sim-5",
        json!({"containers": [{"name": "main", "image": "app"}]}),
    );
    p.metadata.annotations = Some(
        [(
            "sim.keelson.dev/all".to_owned(),
            "run=50ms,exit=2".to_owned(),
        )]
        .into(),
    );
    pods.create(&p).await.expect("create");
    p = pod(
        "elsewhere",
        "real-node",
        json!({"containers": [{"name": "main", "image": "app"}]}),
    );
    pods.create(&p).await.expect("create");
    let running = eventually(20, "the long-running pod", || async {
        let p = get_pod(&c.client, "forever").await?;
        (phase(&p) == "Running" && condition(&p, "Ready").as_deref() == Some("True")).then_some(p)
    })
    .await;
    let ip = running.status.and_then(|s| s.pod_ip).unwrap_or_default();
    assert!(ip.starts_with("10.0.3."), "{ip}");
    eventually(20, "the job to succeed", || async {
        let p = get_pod(&c.client, "job").await?;
        (phase(&p) == "Succeeded").then_some(())
    })
    .await;
    eventually(20, "a simulated crash loop", || async {
        let p = get_pod(&c.client, "crashy").await?;
        let cs = container_status(&p, "main")?;
        (cs.restart_count >= 2 && cs.last_state.clone()?.terminated?.exit_code == 2).then_some(())
    })
    .await;
    let other = get_pod(&c.client, "elsewhere").await.expect("pod");
    assert!(
        other.status.and_then(|s| s.pod_ip).is_none(),
        "pods of other nodes are left alone"
    );
    pods.delete("forever", &DeleteOptions::default())
        .await
        .expect("delete");
    eventually(20, "the deleted pod to go", || async {
        get_pod(&c.client, "forever").await.is_none().then_some(())
    })
    .await;
    eventually(10, "a second round of heartbeats", || async {
        let s = fleet.stats();
        (s.renewals >= 100).then_some(())
    })
    .await;
    let s = fleet.stats();
    assert_eq!(s.failures, 0);
    assert!(
        s.max_renew_gap < Duration::from_millis(1500),
        "heartbeats keep up: {s:?}"
    );
    let _ = stop.send(());
    task.await.expect("fleet task");
}
