//! The StatefulSet controller against an in-process API server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    cluster, eventually, mark_all_ready, mark_phase, mark_ready, name_of, pods, template,
};
use keelson_controllers::builtin::statefulset::StatefulSetController;
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, Client, ListParams, Patch};
use keelson_core::k8s_openapi::api::apps::v1::{
    ControllerRevision, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use keelson_core::k8s_openapi::api::core::v1::Pod;
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn stateful_set(name: &str, replicas: i32, policy: &str) -> StatefulSet {
    let mut s = StatefulSet::default();
    s.metadata.name = Some(name.into());
    s.spec = Some(StatefulSetSpec {
        replicas: Some(replicas),
        service_name: Some(name.into()),
        pod_management_policy: Some(policy.into()),
        selector: LabelSelector {
            match_labels: Some([("app".to_owned(), name.to_owned())].into()),
            ..LabelSelector::default()
        },
        template: template(&[("app", name)], "nginx:1.27"),
        ..StatefulSetSpec::default()
    });
    s
}

fn start(client: &Client) -> tokio::task::JoinHandle<()> {
    let factory = InformerFactory::new();
    let (controller, reconciler) = StatefulSetController::controller(client, &factory);
    tokio::spawn(controller.concurrency(2).run(reconciler))
}

async fn status(api: &Api<StatefulSet>, name: &str) -> StatefulSetStatus {
    api.get(name).await.unwrap().status.unwrap_or_default()
}

fn names(pods: &[Pod]) -> Vec<String> {
    let mut n: Vec<String> = pods.iter().map(name_of).collect();
    n.sort();
    n
}

fn label<'a>(p: &'a Pod, key: &str) -> &'a str {
    p.metadata.labels.as_ref().unwrap()[key].as_str()
}

#[tokio::test(start_paused = true)]
async fn ordered_ready_creates_one_pod_at_a_time_and_scales_down_from_the_highest_ordinal() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "ns");
    api.create(&stateful_set("web", 3, "OrderedReady"))
        .await
        .unwrap();

    let first = eventually("web-0", WAIT, || async {
        let p = pods(&client, "ns", "app=web").await;
        (p.len() == 1).then(|| p[0].clone())
    })
    .await;
    assert_eq!(name_of(&first), "web-0");
    assert_eq!(label(&first, "statefulset.kubernetes.io/pod-name"), "web-0");
    assert_eq!(label(&first, "apps.kubernetes.io/pod-index"), "0");
    let spec = first.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-0"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));
    let revision = label(&first, "controller-revision-hash").to_owned();
    let revs: Api<ControllerRevision> = Api::namespaced(client.clone(), "ns");
    let rev = revs.get(&revision).await.unwrap();
    assert_eq!(rev.revision, 1);
    assert_eq!(
        rev.metadata.owner_references.as_ref().unwrap()[0].kind,
        "StatefulSet"
    );

    // Nothing more while web-0 is not ready.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(names(&pods(&client, "ns", "app=web").await), ["web-0"]);

    for (ready, next) in [("web-0", "web-1"), ("web-1", "web-2")] {
        mark_ready(&client, "ns", ready).await;
        eventually(next, WAIT, || async {
            let p = pods(&client, "ns", "app=web").await;
            p.iter().any(|p| name_of(p) == next).then_some(())
        })
        .await;
        assert_eq!(
            pods(&client, "ns", "app=web").await.len(),
            next[4..].parse::<usize>().unwrap() + 1
        );
    }
    mark_ready(&client, "ns", "web-2").await;
    let st = eventually("3 ready", WAIT, || async {
        let s = status(&api, "web").await;
        (s.ready_replicas == Some(3)).then_some(s)
    })
    .await;
    assert_eq!(st.replicas, 3);
    assert_eq!(st.available_replicas, Some(3));
    assert_eq!(st.current_replicas, Some(3));
    assert_eq!(st.updated_replicas, Some(3));
    assert_eq!(st.current_revision.as_deref(), Some(revision.as_str()));
    assert_eq!(st.update_revision.as_deref(), Some(revision.as_str()));
    assert_eq!(st.observed_generation, Some(1));

    api.patch("web", &Patch::Merge(json!({"spec": {"replicas": 1}})))
        .await
        .unwrap();
    let mut seen: Vec<Vec<String>> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = names(&pods(&client, "ns", "app=web").await);
        if seen.last() != Some(&n) {
            seen.push(n.clone());
        }
        if n == ["web-0"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not scaled down: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen.iter().all(|n| n != &["web-0", "web-2"]),
        "web-2 goes before web-1: {seen:?}"
    );
    let st = eventually("status of 1", WAIT, || async {
        let s = status(&api, "web").await;
        (s.replicas == 1 && s.observed_generation == Some(2)).then_some(s)
    })
    .await;
    assert_eq!(st.ready_replicas, Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_rolling_update_replaces_pods_from_the_highest_ordinal_down_to_the_partition() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "ns");
    let mut set = stateful_set("db", 3, "Parallel");
    set.spec.as_mut().unwrap().update_strategy = Some(
        serde_json::from_value(json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}))
            .unwrap(),
    );
    api.create(&set).await.unwrap();
    // Parallel: all three at once, none ready.
    eventually("3 pods", WAIT, || async {
        (pods(&client, "ns", "app=db").await.len() == 3).then_some(())
    })
    .await;
    mark_all_ready(&client, "ns", "app=db").await;
    let old = eventually("ready", WAIT, || async {
        let s = status(&api, "db").await;
        (s.ready_replicas == Some(3)).then_some(s.update_revision.unwrap())
    })
    .await;

    api.patch(
        "db",
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.28"}]}}}})),
    )
    .await
    .unwrap();
    // db-2, then db-1, get the new revision; db-0 (below the partition) keeps the old.
    let new = eventually("db-2 and db-1 updated", WAIT, || async {
        mark_all_ready(&client, "ns", "app=db").await;
        let s = status(&api, "db").await;
        let new = s.update_revision.clone().filter(|r| *r != old)?;
        let p = pods(&client, "ns", "app=db").await;
        let rev = |n: &str| {
            p.iter()
                .find(|p| name_of(p) == n)
                .map(|p| label(p, "controller-revision-hash").to_owned())
        };
        (rev("db-2").as_ref() == Some(&new)
            && rev("db-1").as_ref() == Some(&new)
            && s.ready_replicas == Some(3)
            && s.updated_replicas == Some(2))
        .then_some(new)
    })
    .await;
    let p = pods(&client, "ns", "app=db").await;
    let db0 = p.iter().find(|p| name_of(p) == "db-0").unwrap();
    assert_eq!(label(db0, "controller-revision-hash"), old);
    let st = status(&api, "db").await;
    assert_eq!(st.current_revision.as_deref(), Some(old.as_str()));
    assert_eq!(st.current_replicas, Some(1));

    // Partition 0: db-0 too, and the update revision becomes the current one.
    api.patch(
        "db",
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .unwrap();
    eventually("rollout complete", WAIT, || async {
        mark_all_ready(&client, "ns", "app=db").await;
        let s = status(&api, "db").await;
        (s.current_revision.as_ref() == Some(&new)
            && s.updated_replicas == Some(3)
            && s.current_replicas == Some(3))
        .then_some(())
    })
    .await;
    let revs: Api<ControllerRevision> = Api::namespaced(client.clone(), "ns");
    let list = revs.list(&ListParams::default()).await.unwrap();
    let mut numbers: Vec<i64> = list.items.iter().map(|r| r.revision).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_pod_is_replaced_under_the_same_name() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "ns");
    api.create(&stateful_set("kv", 2, "OrderedReady"))
        .await
        .unwrap();
    eventually("2 ready pods", WAIT, || async {
        mark_all_ready(&client, "ns", "app=kv").await;
        (status(&api, "kv").await.ready_replicas == Some(2)).then_some(())
    })
    .await;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let before = pods_api.get("kv-0").await.unwrap().metadata.uid;
    mark_phase(&client, "ns", "kv-0", "Failed").await;
    eventually("kv-0 made again", WAIT, || async {
        let p = pods_api.get_opt("kv-0").await.unwrap()?;
        (p.metadata.uid != before).then_some(())
    })
    .await;
    let st = eventually("kv-0 not ready yet", WAIT, || async {
        let s = status(&api, "kv").await;
        (s.ready_replicas == Some(1) && s.replicas == 2).then_some(s)
    })
    .await;
    assert_eq!(st.available_replicas, Some(1));
}

#[tokio::test(start_paused = true)]
async fn ordered_ready_waits_min_ready_seconds_before_the_next_pod() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "ns");
    let mut set = stateful_set("mq", 2, "OrderedReady");
    set.spec.as_mut().unwrap().min_ready_seconds = Some(20);
    api.create(&set).await.unwrap();
    eventually("mq-0", WAIT, || async {
        (pods(&client, "ns", "app=mq").await.len() == 1).then_some(())
    })
    .await;
    mark_ready(&client, "ns", "mq-0").await;
    let ready_at = tokio::time::Instant::now();
    eventually("mq-1", WAIT, || async {
        (pods(&client, "ns", "app=mq").await.len() == 2).then_some(())
    })
    .await;
    assert!(
        ready_at.elapsed() >= Duration::from_secs(19),
        "{:?}",
        ready_at.elapsed()
    );
}
