//! The ReplicaSet controller against an in-process API server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually, mark_ready, pods, template};
use keelson_controllers::builtin::replicaset::ReplicaSetController;
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, Client, Patch};
use keelson_core::k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use keelson_core::k8s_openapi::api::core::v1::Pod;
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn replica_set(name: &str, replicas: i32, min_ready: i32) -> ReplicaSet {
    let mut rs = ReplicaSet::default();
    rs.metadata.name = Some(name.into());
    rs.spec = Some(ReplicaSetSpec {
        replicas: Some(replicas),
        min_ready_seconds: Some(min_ready),
        selector: LabelSelector {
            match_labels: Some([("app".to_owned(), name.to_owned())].into()),
            ..LabelSelector::default()
        },
        template: Some(template(&[("app", name), ("tier", "web")], "nginx:1.27")),
    });
    rs
}

fn start(client: &Client) -> tokio::task::JoinHandle<()> {
    let factory = InformerFactory::new();
    let (controller, reconciler) = ReplicaSetController::controller(client, &factory);
    tokio::spawn(controller.concurrency(2).run(reconciler))
}

async fn rs_status(
    api: &Api<ReplicaSet>,
    name: &str,
) -> keelson_core::k8s_openapi::api::apps::v1::ReplicaSetStatus {
    api.get(name).await.unwrap().status.unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_replica_set_gets_its_pods_named_labelled_and_owned_then_scales_down() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "ns");
    let rs = api.create(&replica_set("web", 3, 0)).await.unwrap();
    let uid = rs.metadata.uid.clone().unwrap();

    let created = eventually("3 pods", WAIT, || async {
        let p = pods(&client, "ns", "app=web").await;
        (p.len() == 3).then_some(p)
    })
    .await;
    for p in &created {
        let name = p.metadata.name.as_deref().unwrap();
        let suffix = name.strip_prefix("web-").unwrap();
        assert_eq!(suffix.len(), 5, "{name}");
        assert_eq!(p.metadata.labels.as_ref().unwrap()["tier"], "web");
        let r = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                r.kind.as_str(),
                r.uid.as_str(),
                r.controller,
                r.block_owner_deletion
            ),
            ("ReplicaSet", uid.as_str(), Some(true), Some(true))
        );
    }
    // No extra pods while the cache catches up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pods(&client, "ns", "app=web").await.len(), 3);

    // Two become ready; scaling to 2 deletes the one that is not.
    let names: Vec<String> = created
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    mark_ready(&client, "ns", &names[0]).await;
    mark_ready(&client, "ns", &names[1]).await;
    let st = eventually("2 ready", WAIT, || async {
        let s = rs_status(&api, "web").await;
        (s.ready_replicas == Some(2)).then_some(s)
    })
    .await;
    assert_eq!(st.replicas, 3);
    assert_eq!(st.fully_labeled_replicas, Some(3));
    assert_eq!(st.available_replicas, Some(2));
    assert_eq!(st.observed_generation, Some(1));

    api.patch("web", &Patch::Merge(json!({"spec": {"replicas": 2}})))
        .await
        .unwrap();
    let left = eventually("2 pods", WAIT, || async {
        let p = pods(&client, "ns", "app=web").await;
        (p.len() == 2).then_some(p)
    })
    .await;
    let mut left: Vec<String> = left
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    left.sort();
    let mut ready = names[..2].to_vec();
    ready.sort();
    assert_eq!(left, ready, "the pod that was not ready goes first");
    let st = eventually("status of 2", WAIT, || async {
        let s = rs_status(&api, "web").await;
        (s.replicas == 2 && s.observed_generation == Some(2)).then_some(s)
    })
    .await;
    assert_eq!(st.ready_replicas, Some(2));
}

#[tokio::test(start_paused = true)]
async fn orphans_matching_the_selector_are_adopted_and_pods_that_stop_matching_are_released() {
    let (_server, client) = cluster(&["ns"]).await;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let mut orphan = Pod::default();
    orphan.metadata.name = Some("orphan".into());
    orphan.metadata.labels = Some([("app".to_owned(), "db".to_owned())].into());
    orphan.spec = template(&[], "x").spec;
    pods_api.create(&orphan).await.unwrap();

    let _ctl = start(&client);
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "ns");
    api.create(&replica_set("db", 2, 0)).await.unwrap();
    eventually("orphan adopted, one pod created", WAIT, || async {
        let p = pods(&client, "ns", "app=db").await;
        let adopted = p.iter().any(|p| {
            p.metadata.name.as_deref() == Some("orphan")
                && p.metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|r| r[0].name == "db")
        });
        (adopted && p.len() == 2).then_some(())
    })
    .await;

    // Relabel the adopted pod: released, and replaced.
    pods_api
        .patch(
            "orphan",
            &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
        )
        .await
        .unwrap();
    eventually("released and replaced", WAIT, || async {
        let o = pods_api.get("orphan").await.unwrap();
        let released = o
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty());
        (released && pods(&client, "ns", "app=db").await.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn available_replicas_wait_for_min_ready_seconds() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "ns");
    api.create(&replica_set("slow", 1, 30)).await.unwrap();
    let p = eventually("1 pod", WAIT, || async {
        let p = pods(&client, "ns", "app=slow").await;
        (p.len() == 1).then(|| p[0].metadata.name.clone().unwrap())
    })
    .await;
    mark_ready(&client, "ns", &p).await;
    let st = eventually("ready", WAIT, || async {
        let s = rs_status(&api, "slow").await;
        (s.ready_replicas == Some(1)).then_some(s)
    })
    .await;
    assert_eq!(st.available_replicas, Some(0), "not available before 30 s");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(rs_status(&api, "slow").await.available_replicas, Some(0));
    eventually("available after 30 s", Duration::from_secs(15), || async {
        (rs_status(&api, "slow").await.available_replicas == Some(1)).then_some(())
    })
    .await;
}
