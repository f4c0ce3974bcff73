//! The pod garbage collector against an in-process API server, under paused time.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually, shutdown};
use keelson_controllers::builtin::podgc::{PodGarbageCollector, PodGcConfig};
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, Patch};
use keelson_core::k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

fn pod(name: &str, node: Option<&str>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x:1"}]},
    }))
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn pods_of_a_missing_node_go_after_the_quarantine_and_finished_pods_over_the_threshold_oldest_first(
) {
    let (_server, client) = cluster(&["ns"]).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let mut here = Node::default();
    here.metadata.name = Some("here".into());
    Api::<Node>::all(client.clone())
        .create(&here)
        .await
        .unwrap();
    pods.create(&pod("on-gone", Some("gone"))).await.unwrap();
    pods.create(&pod("on-here", Some("here"))).await.unwrap();
    for i in 0..3 {
        pods.create(&pod(&format!("done-{i}"), Some("here")))
            .await
            .unwrap();
        pods.patch_status(
            &format!("done-{i}"),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (stop, signal) = shutdown();
    let factory = InformerFactory::new();
    let gc = PodGarbageCollector::new(
        &client,
        &factory,
        PodGcConfig {
            terminated_pod_threshold: 2,
            period: Duration::from_secs(1),
            quarantine: Duration::from_secs(40),
        },
    );
    let started = tokio::time::Instant::now();
    let run = tokio::spawn(gc.run(signal()));
    eventually(
        "the oldest finished pod is deleted",
        Duration::from_secs(10),
        || {
            let pods = pods.clone();
            async move {
                pods.get_opt("done-0")
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    assert!(pods.get_opt("done-1").await.unwrap().is_some());
    assert!(pods.get_opt("done-2").await.unwrap().is_some());
    // Quarantined: still there well into the 40 s.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(pods.get_opt("on-gone").await.unwrap().is_some());
    eventually(
        "the orphaned pod is deleted",
        Duration::from_secs(30),
        || {
            let pods = pods.clone();
            async move {
                pods.get_opt("on-gone")
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    assert!(started.elapsed() >= Duration::from_secs(40));
    assert!(pods.get_opt("on-here").await.unwrap().is_some());
    let _ = stop.send(true);
    run.await.unwrap();
}
