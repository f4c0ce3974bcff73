//! The DaemonSet controller against an in-process API server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually, mark_all_ready, mark_phase, name_of, pods, template};
use keelson_controllers::builtin::daemonset::{target_node, DaemonSetController};
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, Client, Patch};
use keelson_core::k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetStatus};
use keelson_core::k8s_openapi::api::core::v1::{Node, Pod};
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn daemon_set(name: &str, strategy: serde_json::Value) -> DaemonSet {
    let mut d = DaemonSet::default();
    d.metadata.name = Some(name.into());
    d.spec = Some(DaemonSetSpec {
        selector: LabelSelector {
            match_labels: Some([("app".to_owned(), name.to_owned())].into()),
            ..LabelSelector::default()
        },
        template: template(&[("app", name)], "agent:1"),
        update_strategy: Some(serde_json::from_value(strategy).unwrap()),
        ..DaemonSetSpec::default()
    });
    d
}

async fn add_node(client: &Client, name: &str, taints: serde_json::Value) {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints},
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&node)
        .await
        .unwrap();
}

fn start(client: &Client) -> tokio::task::JoinHandle<()> {
    let factory = InformerFactory::new();
    let (controller, reconciler) = DaemonSetController::controller(client, &factory);
    tokio::spawn(controller.concurrency(2).run(reconciler))
}

async fn status(api: &Api<DaemonSet>, name: &str) -> DaemonSetStatus {
    api.get(name).await.unwrap().status.unwrap_or_default()
}

fn nodes_of(pods: &[Pod]) -> Vec<String> {
    let mut n: Vec<String> = pods.iter().filter_map(target_node).collect();
    n.sort();
    n
}

fn image(p: &Pod) -> &str {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .as_deref()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_daemon_set_runs_one_pod_per_eligible_node_pinned_by_node_affinity() {
    let (_server, client) = cluster(&["ns"]).await;
    add_node(&client, "a", json!([])).await;
    add_node(&client, "b", json!([])).await;
    // Untolerated NoSchedule: no pod. Not-ready (tolerated by default): a pod.
    add_node(
        &client,
        "c",
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
    add_node(
        &client,
        "d",
        json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
    )
    .await;
    let _ctl = start(&client);
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), "ns");
    api.create(&daemon_set("agent", json!({"type": "RollingUpdate"})))
        .await
        .unwrap();

    let created = eventually("pods on a, b, d", WAIT, || async {
        let p = pods(&client, "ns", "app=agent").await;
        (nodes_of(&p) == ["a", "b", "d"]).then_some(p)
    })
    .await;
    let pod = &created[0];
    assert!(name_of(pod).starts_with("agent-"));
    let spec = pod.spec.as_ref().unwrap();
    let terms = &spec
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms;
    let field = &terms[0].match_fields.as_ref().unwrap()[0];
    assert_eq!(field.key, "metadata.name");
    let keys: Vec<(String, String)> = spec
        .tolerations
        .as_ref()
        .unwrap()
        .iter()
        .map(|t| (t.key.clone().unwrap(), t.effect.clone().unwrap()))
        .collect();
    for (k, e) in [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ] {
        assert!(keys.contains(&(k.into(), e.into())), "{k} {e} in {keys:?}");
    }
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert!(labels.contains_key("controller-revision-hash"));
    assert_eq!(labels["pod-template-generation"], "1");

    mark_all_ready(&client, "ns", "app=agent").await;
    let st = eventually("3 available", WAIT, || async {
        let s = status(&api, "agent").await;
        (s.number_available == Some(3)).then_some(s)
    })
    .await;
    assert_eq!(st.desired_number_scheduled, 3);
    assert_eq!(st.current_number_scheduled, 3);
    assert_eq!(st.number_ready, 3);
    assert_eq!(st.updated_number_scheduled, Some(3));
    assert_eq!(st.number_misscheduled, 0);
    assert_eq!(st.number_unavailable, Some(0));
    assert_eq!(st.observed_generation, Some(1));

    // A new node gets a pod; an untolerated NoExecute taint removes one.
    add_node(&client, "e", json!([])).await;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "a",
            &Patch::Merge(json!({"spec": {"taints": [{"key": "evict", "effect": "NoExecute"}]}})),
        )
        .await
        .unwrap();
    eventually("pods on b, d, e", WAIT, || async {
        let p = pods(&client, "ns", "app=agent").await;
        (nodes_of(&p) == ["b", "d", "e"]).then_some(())
    })
    .await;
    eventually("desired 3", WAIT, || async {
        (status(&api, "agent").await.desired_number_scheduled == 3).then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_rolling_update_replaces_at_most_max_unavailable_pods_at_a_time() {
    let (_server, client) = cluster(&["ns"]).await;
    for n in ["a", "b", "c"] {
        add_node(&client, n, json!([])).await;
    }
    let _ctl = start(&client);
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), "ns");
    api.create(&daemon_set(
        "log",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
    ))
    .await
    .unwrap();
    eventually("3 available", WAIT, || async {
        mark_all_ready(&client, "ns", "app=log").await;
        (status(&api, "log").await.number_available == Some(3)).then_some(())
    })
    .await;

    api.patch(
        "log",
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "agent:2"}]}}}})),
    )
    .await
    .unwrap();
    // Without marking anything ready, the update stops after one pod.
    eventually("one pod replaced", WAIT, || async {
        let p = pods(&client, "ns", "app=log").await;
        let new = p.iter().filter(|p| image(p) == "agent:2").count();
        (new == 1 && p.len() == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let p = pods(&client, "ns", "app=log").await;
    assert_eq!(p.iter().filter(|p| image(p) == "agent:1").count(), 2);

    eventually("all updated", WAIT, || async {
        mark_all_ready(&client, "ns", "app=log").await;
        let s = status(&api, "log").await;
        (s.updated_number_scheduled == Some(3)
            && s.number_available == Some(3)
            && s.observed_generation == Some(2))
        .then_some(())
    })
    .await;
    let p = pods(&client, "ns", "app=log").await;
    assert!(p.iter().all(|p| image(p) == "agent:2"));
    assert_eq!(nodes_of(&p), ["a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn with_max_surge_the_new_pod_starts_beside_the_old_one() {
    let (_server, client) = cluster(&["ns"]).await;
    add_node(&client, "a", json!([])).await;
    let _ctl = start(&client);
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), "ns");
    api.create(&daemon_set(
        "net",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
    ))
    .await
    .unwrap();
    eventually("available", WAIT, || async {
        mark_all_ready(&client, "ns", "app=net").await;
        (status(&api, "net").await.number_available == Some(1)).then_some(())
    })
    .await;
    api.patch(
        "net",
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "agent:2"}]}}}})),
    )
    .await
    .unwrap();
    eventually("old and new side by side", WAIT, || async {
        let p = pods(&client, "ns", "app=net").await;
        (p.len() == 2 && nodes_of(&p) == ["a", "a"]).then_some(())
    })
    .await;
    eventually("old one gone once the new is ready", WAIT, || async {
        mark_all_ready(&client, "ns", "app=net").await;
        let p = pods(&client, "ns", "app=net").await;
        (p.len() == 1 && image(&p[0]) == "agent:2").then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_daemon_pod_is_deleted_and_made_again() {
    let (_server, client) = cluster(&["ns"]).await;
    add_node(&client, "a", json!([])).await;
    let _ctl = start(&client);
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), "ns");
    api.create(&daemon_set("fail", json!({"type": "OnDelete"})))
        .await
        .unwrap();
    let first = eventually("a pod", WAIT, || async {
        let p = pods(&client, "ns", "app=fail").await;
        (p.len() == 1).then(|| name_of(&p[0]))
    })
    .await;
    mark_phase(&client, "ns", &first, "Failed").await;
    eventually("replaced", WAIT, || async {
        let p = pods(&client, "ns", "app=fail").await;
        (p.len() == 1 && name_of(&p[0]) != first).then_some(())
    })
    .await;
    // OnDelete: a template change replaces nothing.
    api.patch(
        "fail",
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "agent:2"}]}}}})),
    )
    .await
    .unwrap();
    eventually("generation observed", WAIT, || async {
        let s = status(&api, "fail").await;
        (s.observed_generation == Some(2)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let p = pods(&client, "ns", "app=fail").await;
    assert_eq!(image(&p[0]), "agent:1");
    assert_eq!(status(&api, "fail").await.updated_number_scheduled, Some(0));
}
