//! The Deployment controller (with the ReplicaSet controller) against an in-process API
//! server; the tests play the node agents by marking pods Running and Ready.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually, mark_all_ready, pods, template};
use keelson_controllers::builtin::deployment::{DeploymentController, POD_TEMPLATE_HASH, REVISION};
use keelson_controllers::builtin::replicaset::ReplicaSetController;
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, Client, ListParams, Patch};
use keelson_core::k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment,
};
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use keelson_core::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn deployment(name: &str, replicas: i32, strategy: DeploymentStrategy) -> Deployment {
    let mut d = Deployment::default();
    d.metadata.name = Some(name.into());
    d.spec = Some(DeploymentSpec {
        replicas: Some(replicas),
        selector: LabelSelector {
            match_labels: Some([("app".to_owned(), name.to_owned())].into()),
            ..LabelSelector::default()
        },
        template: template(&[("app", name)], "nginx:1.26"),
        strategy: Some(strategy),
        ..DeploymentSpec::default()
    });
    d
}

fn rolling(surge: i32, unavailable: i32) -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(surge)),
            max_unavailable: Some(IntOrString::Int(unavailable)),
        }),
    }
}

fn start(client: &Client) {
    let factory = InformerFactory::new();
    let (rs, rs_rec) = ReplicaSetController::controller(client, &factory);
    let (d, d_rec) = DeploymentController::controller(client, &factory);
    tokio::spawn(rs.concurrency(4).run(rs_rec));
    tokio::spawn(d.concurrency(2).run(d_rec));
}

async fn sets(client: &Client, selector: &str) -> Vec<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "ns");
    api.list(&ListParams::default().labels(selector).unwrap())
        .await
        .unwrap()
        .items
}

fn condition(d: &Deployment, t: &str) -> Option<(String, String)> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

fn revision(meta: &keelson_core::ObjectMeta) -> Option<String> {
    meta.annotations.as_ref()?.get(REVISION).cloned()
}

/// Waits for the rollout to complete while marking pods ready, like `kubectl rollout
/// status`: observed generation, all replicas updated and available.
async fn wait_complete(client: &Client, name: &str) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(client.clone(), "ns");
    eventually("rollout complete", WAIT, || async {
        mark_all_ready(client, "ns", &format!("app={name}")).await;
        let d = api.get(name).await.unwrap();
        let s = d.status.clone().unwrap_or_default();
        let r = d.spec.as_ref().unwrap().replicas;
        let done = s.observed_generation >= d.metadata.generation
            && s.updated_replicas == r
            && s.replicas == r
            && s.available_replicas == r
            && condition(&d, "Progressing").is_some_and(|c| c.1 == "NewReplicaSetAvailable");
        done.then_some(d)
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_deployment_creates_a_hashed_replica_set_and_reports_its_rollout_complete() {
    let (_server, client) = cluster(&["ns"]).await;
    start(&client);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "ns");
    api.create(&deployment("web", 3, rolling(1, 1)))
        .await
        .unwrap();
    let d = wait_complete(&client, "web").await;

    let rs = sets(&client, "app=web").await;
    assert_eq!(rs.len(), 1);
    let rs = &rs[0];
    let hash = rs.metadata.labels.as_ref().unwrap()[POD_TEMPLATE_HASH].clone();
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert_eq!(
        rs.spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()[POD_TEMPLATE_HASH],
        hash
    );
    assert_eq!(
        rs.metadata.owner_references.as_ref().unwrap()[0].name,
        "web"
    );
    assert_eq!(revision(&rs.metadata).as_deref(), Some("1"));
    assert_eq!(revision(&d.metadata).as_deref(), Some("1"));
    for p in pods(&client, "ns", "app=web").await {
        assert_eq!(p.metadata.labels.as_ref().unwrap()[POD_TEMPLATE_HASH], hash);
    }
    let s = d.status.as_ref().unwrap();
    assert_eq!(
        (s.ready_replicas, s.unavailable_replicas),
        (Some(3), Some(0))
    );
    assert_eq!(
        condition(&d, "Available"),
        Some(("True".into(), "MinimumReplicasAvailable".into()))
    );
    assert_eq!(
        condition(&d, "Progressing"),
        Some(("True".into(), "NewReplicaSetAvailable".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn a_rolling_update_keeps_within_max_surge_and_max_unavailable_at_every_step() {
    let (_server, client) = cluster(&["ns"]).await;
    start(&client);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "ns");
    api.create(&deployment("web", 4, rolling(1, 1)))
        .await
        .unwrap();
    wait_complete(&client, "web").await;

    api.patch("web", &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}})))
        .await
        .unwrap();
    let steps = std::sync::atomic::AtomicUsize::new(0);
    let saw_both = std::sync::atomic::AtomicBool::new(false);
    eventually("rolled out to 1.27", WAIT, || {
        let client = client.clone();
        let api = api.clone();
        let step = steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let saw = &saw_both;
        async move {
            let all = pods(&client, "ns", "app=web").await;
            let live: Vec<_> = all
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let ready = live
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count();
            assert!(
                live.len() <= 5,
                "step {step}: {} pods exceed replicas + maxSurge",
                live.len()
            );
            assert!(
                ready >= 3,
                "step {step}: {ready} ready pods, fewer than replicas - maxUnavailable"
            );
            let images: std::collections::BTreeSet<_> = live
                .iter()
                .map(|p| {
                    p.spec.as_ref().unwrap().containers[0]
                        .image
                        .clone()
                        .unwrap()
                })
                .collect();
            if images.len() == 2 {
                saw.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            // Every other step, the "kubelet" starts what was created.
            if step.is_multiple_of(2) {
                mark_all_ready(&client, "ns", "app=web").await;
            }
            let d = api.get("web").await.unwrap();
            let s = d.status.clone().unwrap_or_default();
            let done = s.observed_generation >= d.metadata.generation
                && s.updated_replicas == Some(4)
                && s.replicas == Some(4)
                && s.available_replicas == Some(4)
                && images.len() == 1
                && images.contains("nginx:1.27");
            done.then_some(())
        }
    })
    .await;
    assert!(
        saw_both.into_inner(),
        "old and new pods overlapped during the rolling update"
    );
    let d = wait_complete(&client, "web").await;
    assert_eq!(revision(&d.metadata).as_deref(), Some("2"));
    let rs = sets(&client, "app=web").await;
    assert_eq!(rs.len(), 2);
    let old = rs
        .iter()
        .find(|r| revision(&r.metadata).as_deref() == Some("1"))
        .unwrap();
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));
}

#[tokio::test(start_paused = true)]
async fn rollout_undo_brings_back_the_previous_replica_set_with_a_new_revision() {
    let (_server, client) = cluster(&["ns"]).await;
    start(&client);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "ns");
    api.create(&deployment("web", 2, rolling(1, 0)))
        .await
        .unwrap();
    wait_complete(&client, "web").await;
    let first = sets(&client, "app=web").await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    api.patch("web", &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}})))
        .await
        .unwrap();
    wait_complete(&client, "web").await;
    // What `kubectl rollout undo` does: put the previous ReplicaSet's template back.
    api.patch("web", &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.26"}]}}}})))
        .await
        .unwrap();
    let d = wait_complete(&client, "web").await;
    assert_eq!(revision(&d.metadata).as_deref(), Some("3"));
    let rs = sets(&client, "app=web").await;
    assert_eq!(rs.len(), 2, "the old ReplicaSet is reused, not recreated");
    let back = rs
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(first.as_str()))
        .unwrap();
    assert_eq!(revision(&back.metadata).as_deref(), Some("3"));
    assert_eq!(
        back.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision-history"],
        "1"
    );
    assert_eq!(back.spec.as_ref().unwrap().replicas, Some(2));
}

#[tokio::test(start_paused = true)]
async fn recreate_removes_every_old_pod_before_starting_new_ones() {
    let (_server, client) = cluster(&["ns"]).await;
    start(&client);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "ns");
    let recreate = DeploymentStrategy {
        type_: Some("Recreate".into()),
        rolling_update: None,
    };
    api.create(&deployment("db", 2, recreate)).await.unwrap();
    wait_complete(&client, "db").await;
    api.patch("db", &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}})))
        .await
        .unwrap();
    eventually("recreated", WAIT, || async {
        let all = pods(&client, "ns", "app=db").await;
        let images: std::collections::BTreeSet<_> = all
            .iter()
            .map(|p| {
                p.spec.as_ref().unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap()
            })
            .collect();
        assert!(images.len() <= 1, "old and new pods at once: {images:?}");
        mark_all_ready(&client, "ns", "app=db").await;
        let d = api.get("db").await.unwrap();
        let s = d.status.clone().unwrap_or_default();
        (images.contains("nginx:1.27")
            && s.available_replicas == Some(2)
            && s.updated_replicas == Some(2))
        .then_some(())
    })
    .await;
    wait_complete(&client, "db").await;
}

#[tokio::test(start_paused = true)]
async fn a_paused_deployment_scales_but_does_not_roll_out_until_resumed() {
    let (_server, client) = cluster(&["ns"]).await;
    start(&client);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "ns");
    api.create(&deployment("web", 2, rolling(1, 1)))
        .await
        .unwrap();
    wait_complete(&client, "web").await;
    api.patch("web", &Patch::Merge(json!({"spec": {"paused": true}})))
        .await
        .unwrap();
    eventually("paused condition", WAIT, || async {
        let d = api.get("web").await.unwrap();
        (condition(&d, "Progressing") == Some(("Unknown".into(), "DeploymentPaused".into())))
            .then_some(())
    })
    .await;
    api.patch("web", &Patch::Strategic(json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}})))
        .await
        .unwrap();
    eventually("scaled while paused", WAIT, || async {
        mark_all_ready(&client, "ns", "app=web").await;
        let rs = sets(&client, "app=web").await;
        (rs.len() == 1 && rs[0].spec.as_ref().unwrap().replicas == Some(3)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sets(&client, "app=web").await.len(),
        1,
        "no rollout while paused"
    );
    api.patch("web", &Patch::Merge(json!({"spec": {"paused": false}})))
        .await
        .unwrap();
    let d = wait_complete(&client, "web").await;
    assert_eq!(revision(&d.metadata).as_deref(), Some("2"));
}

#[tokio::test(start_paused = true)]
async fn a_rollout_that_makes_no_progress_exceeds_its_deadline() {
    let (_server, client) = cluster(&["ns"]).await;
    start(&client);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "ns");
    let mut d = deployment("stuck", 2, rolling(1, 0));
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(30);
    api.create(&d).await.unwrap();
    // Nobody marks the pods ready.
    eventually("progressing", WAIT, || async {
        let d = api.get("stuck").await.unwrap();
        condition(&d, "Progressing")
            .filter(|c| c.0 == "True")
            .map(|_| ())
    })
    .await;
    let d = eventually("deadline exceeded", Duration::from_secs(120), || async {
        let d = api.get("stuck").await.unwrap();
        (condition(&d, "Progressing") == Some(("False".into(), "ProgressDeadlineExceeded".into())))
            .then_some(d)
    })
    .await;
    assert_eq!(
        condition(&d, "Available"),
        Some(("False".into(), "MinimumReplicasUnavailable".into()))
    );
    assert_eq!(d.status.as_ref().unwrap().unavailable_replicas, Some(2));
}

#[tokio::test(start_paused = true)]
async fn old_replica_sets_beyond_the_revision_history_limit_are_deleted() {
    let (_server, client) = cluster(&["ns"]).await;
    start(&client);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "ns");
    let mut d = deployment("web", 1, rolling(1, 0));
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    api.create(&d).await.unwrap();
    wait_complete(&client, "web").await;
    for image in ["nginx:1.27", "nginx:1.28", "nginx:1.29"] {
        api.patch("web", &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}})))
            .await
            .unwrap();
        wait_complete(&client, "web").await;
    }
    eventually("history trimmed to 1", WAIT, || async {
        let rs = sets(&client, "app=web").await;
        let mut revs: Vec<String> = rs.iter().filter_map(|r| revision(&r.metadata)).collect();
        revs.sort();
        (revs == ["3", "4"]).then_some(())
    })
    .await;
}
