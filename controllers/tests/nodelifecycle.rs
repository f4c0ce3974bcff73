//! The node lifecycle controller against an in-process API server, under paused time:
//! taints follow the Ready condition, and NoExecute taints evict pods after their
//! tolerationSeconds.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually, shutdown};
use keelson_controllers::builtin::nodelifecycle::{
    NodeLifecycleConfig, NodeLifecycleController, TAINT_NOT_READY,
};
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, Patch};
use keelson_core::k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

fn pod(name: &str, tolerations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": "n1",
            "tolerations": tolerations,
            "containers": [{"name": "c", "image": "x:1"}],
        },
    }))
    .unwrap()
}

fn not_ready_taints(n: &Node) -> Vec<String> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| {
            t.iter()
                .filter(|t| t.key == TAINT_NOT_READY)
                .map(|t| t.effect.clone())
                .collect()
        })
        .unwrap_or_default()
}

async fn set_ready(nodes: &Api<Node>, status: &str) {
    nodes
        .patch_status(
            "n1",
            &Patch::Merge(json!({"status": {"conditions": [
                {"type": "Ready", "status": status, "reason": "Test", "lastHeartbeatTime": keelson_controllers::clock::now_time()},
            ]}})),
        )
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_not_ready_node_is_tainted_and_evicts_pods_by_their_toleration_seconds() {
    let (_server, client) = cluster(&["ns"]).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let mut n1 = Node::default();
    n1.metadata.name = Some("n1".into());
    nodes.create(&n1).await.unwrap();
    set_ready(&nodes, "True").await;
    let not_ready = |secs: Option<i64>| json!([{"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": secs}]);
    pods.create(&pod("short", not_ready(Some(10))))
        .await
        .unwrap();
    pods.create(&pod("forever", not_ready(None))).await.unwrap();
    pods.create(&pod("defaulted", json!([]))).await.unwrap();

    let (stop, signal) = shutdown();
    let factory = InformerFactory::new();
    // No Lease and no heartbeats here: a long grace period keeps the node from going
    // Unknown, so only the Ready condition the test posts counts.
    let (controller, reconciler) = NodeLifecycleController::controller(
        &client,
        &factory,
        NodeLifecycleConfig {
            grace_period: Duration::from_secs(3600),
            startup_grace_period: Duration::from_secs(3600),
            ..NodeLifecycleConfig::default()
        },
    );
    let run = tokio::spawn(controller.graceful_shutdown_on(signal()).run(reconciler));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(not_ready_taints(&nodes.get("n1").await.unwrap()).is_empty());

    set_ready(&nodes, "False").await;
    let tainted_at = tokio::time::Instant::now();
    eventually("not-ready taints", Duration::from_secs(10), || {
        let nodes = nodes.clone();
        async move {
            let t = not_ready_taints(&nodes.get("n1").await.unwrap());
            (t.contains(&"NoSchedule".to_owned()) && t.contains(&"NoExecute".to_owned()))
                .then_some(())
        }
    })
    .await;
    let deleting = |name: &'static str| {
        let pods = pods.clone();
        async move {
            pods.get(name)
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
                .is_some()
        }
    };
    assert!(!deleting("short").await);
    eventually(
        "the pod tolerating 10 s is evicted",
        Duration::from_secs(20),
        || async { deleting("short").await.then_some(()) },
    )
    .await;
    let after = tainted_at.elapsed();
    assert!(
        after >= Duration::from_secs(10) && after <= Duration::from_secs(12),
        "evicted after {after:?}"
    );
    let evicted = pods.get("short").await.unwrap();
    let conditions = evicted.status.unwrap().conditions.unwrap_or_default();
    assert!(
        conditions.iter().any(|c| c.type_ == "DisruptionTarget"
            && c.reason.as_deref() == Some("DeletionByTaintManager")),
        "{conditions:?}"
    );
    let events =
        Api::<keelson_core::k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), "ns")
            .list(&Default::default())
            .await
            .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("TaintManagerEviction")
                && e.involved_object.name.as_deref() == Some("short")),
        "no eviction event"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!deleting("forever").await, "tolerates forever");
    assert!(!deleting("defaulted").await, "tolerates for 300 s");

    // Ready again: the taints go, and with them the pending evictions.
    set_ready(&nodes, "True").await;
    eventually("taints removed", Duration::from_secs(10), || {
        let nodes = nodes.clone();
        async move {
            not_ready_taints(&nodes.get("n1").await.unwrap())
                .is_empty()
                .then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(400)).await;
    assert!(
        !deleting("defaulted").await,
        "evicted from an untainted node"
    );
    let _ = stop.send(true);
    run.await.unwrap();
}
