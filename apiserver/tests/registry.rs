//! The registry's object semantics, over an in-memory store.

use std::sync::Arc;

use futures::StreamExt;
use keelson_apiserver::registry::{DeleteOptions, ListParams, Selection, WatchEventType};
use keelson_apiserver::{Registry, ServedResource};
use keelson_core::k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use keelson_core::LabelSelector;
use keelson_store::MemStore;
use serde_json::{json, Value};

struct Fixture {
    registry: Registry,
    namespaces: ServedResource,
    configmaps: ServedResource,
    pods: ServedResource,
}

async fn fixture() -> Fixture {
    let registry = Registry::new(Arc::new(MemStore::ephemeral()));
    let f = Fixture {
        registry,
        namespaces: ServedResource::of::<Namespace>().with_status(),
        configmaps: ServedResource::of::<ConfigMap>(),
        pods: ServedResource::of::<Pod>().with_status(),
    };
    f.registry
        .create(
            &f.namespaces,
            None,
            json!({"metadata": {"name": "default"}}),
        )
        .await
        .expect("create the default namespace");
    f
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

fn rv(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .parse()
        .expect("number")
}

#[tokio::test]
async fn create_fills_in_server_owned_metadata() {
    let f = fixture().await;
    let obj = f
        .registry
        .create(&f.configmaps, Some("default"), cm("a", json!({})))
        .await
        .expect("create");
    let meta = &obj["metadata"];
    assert_eq!(meta["namespace"], "default");
    assert_eq!(meta["generation"], 1);
    assert_eq!(meta["uid"].as_str().map(str::len), Some(36));
    assert!(
        meta["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{meta}"
    );
    assert!(rv(&obj) > 0);
    let got = f
        .registry
        .get(&f.configmaps, Some("default"), "a")
        .await
        .expect("get");
    assert_eq!(got, *obj);
}

#[tokio::test]
async fn a_taken_name_is_already_exists_and_a_bad_name_is_invalid() {
    let f = fixture().await;
    f.registry
        .create(&f.configmaps, Some("default"), cm("a", json!({})))
        .await
        .expect("create");
    let err = f
        .registry
        .create(&f.configmaps, Some("default"), cm("a", json!({})))
        .await
        .expect_err("twice");
    assert_eq!(
        (err.code(), err.to_string()),
        (409, r#"configmaps "a" already exists"#.to_owned())
    );
    let err = f
        .registry
        .create(&f.configmaps, Some("default"), cm("Bad_Name", json!({})))
        .await
        .expect_err("bad");
    assert_eq!(err.code(), 422);
    assert!(
        err.to_string().starts_with(
            r#"ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name""#
        ),
        "{err}"
    );
}

#[tokio::test]
async fn generate_name_gets_a_random_suffix() {
    let f = fixture().await;
    let body = json!({"metadata": {"generateName": "web-"}});
    let a = f
        .registry
        .create(&f.configmaps, Some("default"), body.clone())
        .await
        .expect("a");
    let b = f
        .registry
        .create(&f.configmaps, Some("default"), body)
        .await
        .expect("b");
    let (a, b) = (
        a["metadata"]["name"].as_str().expect("name"),
        b["metadata"]["name"].as_str().expect("name"),
    );
    assert!(a.starts_with("web-") && a.len() == 9, "{a}");
    assert_ne!(a, b);
}

#[tokio::test]
async fn writes_need_an_existing_live_namespace() {
    let f = fixture().await;
    let err = f
        .registry
        .create(&f.configmaps, Some("nope"), cm("a", json!({})))
        .await
        .expect_err("no namespace");
    assert_eq!(
        (err.code(), err.to_string()),
        (404, r#"namespaces "nope" not found"#.to_owned())
    );
    let ns = json!({"metadata": {"name": "going", "finalizers": ["example.com/hold"]}});
    f.registry
        .create(&f.namespaces, None, ns)
        .await
        .expect("namespace");
    f.registry
        .delete(&f.namespaces, None, "going", &DeleteOptions::default())
        .await
        .expect("start deleting");
    let err = f
        .registry
        .create(&f.configmaps, Some("going"), cm("a", json!({})))
        .await
        .expect_err("terminating");
    assert_eq!(err.code(), 403);
    assert!(
        err.to_string().contains("because it is being terminated"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stale_update_is_a_conflict_and_generation_follows_the_spec() {
    let f = fixture().await;
    let v1 = f
        .registry
        .create(&f.configmaps, Some("default"), cm("a", json!({})))
        .await
        .expect("create");
    let mut change = (*v1).clone();
    change["data"]["k"] = json!("w");
    let v2 = f
        .registry
        .update(&f.configmaps, Some("default"), "a", change.clone(), false)
        .await
        .expect("update");
    assert_eq!(v2["metadata"]["generation"], 2);
    assert!(rv(&v2) > rv(&v1));
    let err = f
        .registry
        .update(&f.configmaps, Some("default"), "a", change, false)
        .await
        .expect_err("stale");
    assert_eq!(err.code(), 409);
    assert!(
        err.to_string().contains("the object has been modified"),
        "{err}"
    );
    // A metadata-only change keeps the generation.
    let mut relabel = (*v2).clone();
    relabel["metadata"]["labels"] = json!({"x": "y"});
    let v3 = f
        .registry
        .update(&f.configmaps, Some("default"), "a", relabel, false)
        .await
        .expect("relabel");
    assert_eq!(v3["metadata"]["generation"], 2);
    assert_eq!(v3["metadata"]["uid"], v1["metadata"]["uid"]);
}

#[tokio::test]
async fn an_update_that_changes_nothing_writes_nothing() {
    let f = fixture().await;
    let v1 = f
        .registry
        .create(
            &f.configmaps,
            Some("default"),
            cm("same", json!({"a": "b"})),
        )
        .await
        .expect("create");
    let since = rv(&v1).to_string();
    let mut events = Box::pin(
        f.registry
            .watch(&f.configmaps, Selection::default(), Some(&since), false)
            .await
            .expect("watch"),
    );
    let again = f
        .registry
        .update(&f.configmaps, Some("default"), "same", (*v1).clone(), false)
        .await
        .expect("no-op update");
    assert_eq!(rv(&again), rv(&v1), "no new version for no change");
    assert_eq!(again["data"], v1["data"]);
    // Without a resourceVersion in the body, too.
    let mut unversioned = (*v1).clone();
    unversioned["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("resourceVersion");
    let again = f
        .registry
        .update(&f.configmaps, Some("default"), "same", unversioned, false)
        .await
        .expect("no-op update");
    assert_eq!(rv(&again), rv(&v1));
    // A real change is written, and is the first event the watch sees.
    let mut change = (*v1).clone();
    change["data"]["k"] = json!("changed");
    let v2 = f
        .registry
        .update(&f.configmaps, Some("default"), "same", change, false)
        .await
        .expect("update");
    assert!(rv(&v2) > rv(&v1));
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
        .await
        .expect("an event")
        .expect("the stream goes on");
    assert_eq!(
        rv(&first.object),
        rv(&v2),
        "the no-op updates sent no event"
    );
}

#[tokio::test]
async fn status_and_spec_are_kept_apart() {
    let f = fixture().await;
    let pod =
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
    let v1 = f
        .registry
        .create(&f.pods, Some("default"), pod)
        .await
        .expect("create");
    let mut with_status = (*v1).clone();
    with_status["status"] = json!({"phase": "Running"});
    let v2 = f
        .registry
        .update(&f.pods, Some("default"), "p", with_status.clone(), false)
        .await
        .expect("update");
    assert_eq!(
        v1["status"],
        json!({"phase": "Pending", "qosClass": "BestEffort"}),
        "a new pod is Pending"
    );
    assert_eq!(
        v2["status"], v1["status"],
        "the main resource ignores status: {v2}"
    );
    with_status["metadata"]["resourceVersion"] = v2["metadata"]["resourceVersion"].clone();
    with_status["spec"]["containers"][0]["image"] = json!("changed");
    let v3 = f
        .registry
        .update(&f.pods, Some("default"), "p", with_status, true)
        .await
        .expect("status");
    assert_eq!(v3["status"]["phase"], "Running");
    assert_eq!(
        v3["spec"]["containers"][0]["image"], "x",
        "/status changes only status"
    );
}

#[tokio::test]
async fn finalizers_hold_a_deletion_until_they_are_removed() {
    let f = fixture().await;
    let mut body = cm("held", json!({}));
    body["metadata"]["finalizers"] = json!(["example.com/x"]);
    f.registry
        .create(&f.configmaps, Some("default"), body)
        .await
        .expect("create");
    let marked = f
        .registry
        .delete(
            &f.configmaps,
            Some("default"),
            "held",
            &DeleteOptions::default(),
        )
        .await
        .expect("delete");
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let mut release = f
        .registry
        .get(&f.configmaps, Some("default"), "held")
        .await
        .expect("still there");
    release["metadata"]["finalizers"] = json!([]);
    f.registry
        .update(&f.configmaps, Some("default"), "held", release, false)
        .await
        .expect("release");
    let err = f
        .registry
        .get(&f.configmaps, Some("default"), "held")
        .await
        .expect_err("gone");
    assert!(err.is_not_found());
}

#[tokio::test]
async fn lists_select_by_label_and_field_and_page() {
    let f = fixture().await;
    for i in 0..7 {
        let tier = if i % 2 == 0 { "fe" } else { "be" };
        f.registry
            .create(
                &f.configmaps,
                Some("default"),
                cm(&format!("c{i}"), json!({"tier": tier})),
            )
            .await
            .expect("create");
    }
    let fe = ListParams {
        selection: Selection {
            labels: Some(LabelSelector::parse("tier=fe").expect("selector")),
            ..Selection::default()
        },
        ..ListParams::default()
    };
    let list = f.registry.list(&f.configmaps, &fe).await.expect("list");
    assert_eq!(list.items.len(), 4);
    let by_name = ListParams {
        selection: Selection {
            fields: Some(keelson_core::FieldSelector::parse("metadata.name=c3").expect("selector")),
            ..Selection::default()
        },
        ..ListParams::default()
    };
    assert_eq!(
        f.registry
            .list(&f.configmaps, &by_name)
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = f
            .registry
            .list(
                &f.configmaps,
                &ListParams {
                    limit: 3,
                    continue_token: token,
                    ..fe.clone()
                },
            )
            .await
            .expect("page");
        assert!(page.items.len() <= 3);
        seen.extend(page.items);
        token = page.continue_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 4, "the limit counts selected objects");
}

#[tokio::test]
async fn a_watch_sees_selector_transitions_as_added_and_deleted() {
    let f = fixture().await;
    let a = f
        .registry
        .create(
            &f.configmaps,
            Some("default"),
            cm("a", json!({"tier": "fe"})),
        )
        .await
        .expect("create");
    let sel = Selection {
        namespace: Some("default".into()),
        labels: Some(LabelSelector::parse("tier=fe").expect("selector")),
        ..Selection::default()
    };
    let mut w = Box::pin(
        f.registry
            .watch(&f.configmaps, sel, None, false)
            .await
            .expect("watch"),
    );
    let first = w.next().await.expect("initial");
    assert_eq!(
        (first.kind, first.object["metadata"]["name"].as_str()),
        (WatchEventType::Added, Some("a"))
    );
    let mut moved = (*a).clone();
    moved["metadata"]["labels"] = json!({"tier": "be"});
    f.registry
        .update(&f.configmaps, Some("default"), "a", moved, false)
        .await
        .expect("move out");
    let out = w.next().await.expect("event");
    assert_eq!(out.kind, WatchEventType::Deleted);
    f.registry
        .create(
            &f.configmaps,
            Some("default"),
            cm("b", json!({"tier": "fe"})),
        )
        .await
        .expect("create b");
    let added = w.next().await.expect("event");
    assert_eq!(
        (added.kind, added.object["metadata"]["name"].as_str()),
        (WatchEventType::Added, Some("b"))
    );
    f.registry
        .delete(
            &f.configmaps,
            Some("default"),
            "b",
            &DeleteOptions::default(),
        )
        .await
        .expect("delete b");
    let gone = w.next().await.expect("event");
    assert_eq!(gone.kind, WatchEventType::Deleted);
    assert!(
        rv(&gone.object) > rv(&added.object),
        "a deleted object carries the delete's version"
    );
}

#[tokio::test]
async fn a_pod_on_a_node_is_deleted_gracefully_and_an_unbound_one_at_once() {
    let f = fixture().await;
    let pod = |name: &str, node: Option<&str>| {
        let mut p = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        if let Some(node) = node {
            p["spec"]["nodeName"] = json!(node);
        }
        p
    };
    f.registry
        .create(&f.pods, Some("default"), pod("loose", None))
        .await
        .expect("create");
    f.registry
        .delete(&f.pods, Some("default"), "loose", &DeleteOptions::default())
        .await
        .expect("delete");
    assert!(f
        .registry
        .get(&f.pods, Some("default"), "loose")
        .await
        .expect_err("gone")
        .is_not_found());

    f.registry
        .create(&f.pods, Some("default"), pod("bound", Some("node-1")))
        .await
        .expect("create");
    let marked = f
        .registry
        .delete(&f.pods, Some("default"), "bound", &DeleteOptions::default())
        .await
        .expect("delete");
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let now = DeleteOptions {
        grace_period_seconds: Some(0),
        ..DeleteOptions::default()
    };
    f.registry
        .delete(&f.pods, Some("default"), "bound", &now)
        .await
        .expect("force");
    assert!(f
        .registry
        .get(&f.pods, Some("default"), "bound")
        .await
        .expect_err("gone")
        .is_not_found());
}

#[tokio::test]
async fn delete_preconditions_are_checked() {
    let f = fixture().await;
    let obj = f
        .registry
        .create(&f.configmaps, Some("default"), cm("a", json!({})))
        .await
        .expect("create");
    let wrong = DeleteOptions {
        uid: Some("nope".into()),
        ..DeleteOptions::default()
    };
    let err = f
        .registry
        .delete(&f.configmaps, Some("default"), "a", &wrong)
        .await
        .expect_err("precondition");
    assert_eq!(err.code(), 409);
    assert!(
        err.to_string()
            .contains("Precondition failed: UID in precondition: nope"),
        "{err}"
    );
    let right = DeleteOptions {
        uid: obj["metadata"]["uid"].as_str().map(str::to_owned),
        resource_version: obj["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_owned),
        ..DeleteOptions::default()
    };
    f.registry
        .delete(&f.configmaps, Some("default"), "a", &right)
        .await
        .expect("delete");
}

#[tokio::test]
async fn services_get_distinct_cluster_ips_and_node_ports_that_are_released() {
    let f = fixture().await;
    let services =
        ServedResource::of::<keelson_core::k8s_openapi::api::core::v1::Service>().with_status();
    let svc = |name: &str, kind: &str| json!({"metadata": {"name": name}, "spec": {"type": kind, "ports": [{"port": 80}]}});
    let a = f
        .registry
        .create(&services, Some("default"), svc("a", "ClusterIP"))
        .await
        .expect("a");
    let b = f
        .registry
        .create(&services, Some("default"), svc("b", "NodePort"))
        .await
        .expect("b");
    let (ip_a, ip_b) = (
        a["spec"]["clusterIP"].as_str().expect("ip"),
        b["spec"]["clusterIP"].as_str().expect("ip"),
    );
    assert!(ip_a.starts_with("10.") && ip_a != ip_b, "{ip_a} {ip_b}");
    let port = b["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("node port");
    assert!((30000..=32767).contains(&port));
    assert_eq!(b["spec"]["ports"][0]["targetPort"], 80);
    let mut taken = svc("c", "ClusterIP");
    taken["spec"]["clusterIP"] = json!(ip_a);
    let err = f
        .registry
        .create(&services, Some("default"), taken.clone())
        .await
        .expect_err("taken");
    assert_eq!(err.code(), 422);
    assert!(
        err.to_string().contains("provided IP is already allocated"),
        "{err}"
    );
    // An update that leaves the address out keeps it.
    let mut change = (*a).clone();
    change["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("clusterIP");
    let updated = f
        .registry
        .update(&services, Some("default"), "a", change, false)
        .await
        .expect("update");
    assert_eq!(updated["spec"]["clusterIP"], ip_a);
    f.registry
        .delete(&services, Some("default"), "a", &DeleteOptions::default())
        .await
        .expect("delete");
    f.registry
        .create(&services, Some("default"), taken)
        .await
        .expect("a released address can be taken");
    let headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}});
    let h = f
        .registry
        .create(&services, Some("default"), headless)
        .await
        .expect("headless");
    assert_eq!(h["spec"]["clusterIP"], "None");
}

mod admission_plugins {
    use async_trait::async_trait;
    use keelson_apiserver::admission::{
        AdmissionChain, AdmissionRequest, MutatingAdmission, Operation, ValidatingAdmission,
    };
    use keelson_core::Error;
    use serde_json::{json, Value};

    pub struct AddTeam;

    #[async_trait]
    impl MutatingAdmission for AddTeam {
        fn name(&self) -> &str {
            "AddTeam"
        }
        async fn admit(
            &self,
            _req: &AdmissionRequest<'_>,
            object: &mut Value,
        ) -> Result<(), Error> {
            object["metadata"]["labels"]["team"] = json!("infra");
            Ok(())
        }
    }

    pub struct Protect;

    #[async_trait]
    impl ValidatingAdmission for Protect {
        fn name(&self) -> &str {
            "Protect"
        }
        async fn validate(&self, req: &AdmissionRequest<'_>, object: &Value) -> Result<(), Error> {
            let protected = object.pointer("/metadata/labels/protected").is_some();
            if req.name.starts_with("forbidden-")
                || (req.operation == Operation::Delete && protected)
            {
                return Err(Error::forbidden(
                    req.resource,
                    req.name,
                    format!("Protect refuses to {:?} it", req.operation),
                ));
            }
            Ok(())
        }
    }

    pub fn chain() -> AdmissionChain {
        AdmissionChain::default().mutate(AddTeam).validate(Protect)
    }
}

#[tokio::test]
async fn admission_plugins_mutate_then_validate_every_write() {
    let f = fixture().await;
    let registry = f
        .registry
        .clone()
        .with_admission(admission_plugins::chain());
    let created = registry
        .create(&f.configmaps, Some("default"), cm("a", json!({})))
        .await
        .expect("create");
    assert_eq!(
        created["metadata"]["labels"]["team"], "infra",
        "the mutating plugin ran"
    );
    let err = registry
        .create(&f.configmaps, Some("default"), cm("forbidden-x", json!({})))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), 403);
    assert!(
        err.to_string().contains("Protect refuses to Create it"),
        "{err}"
    );
    let mut protect = (*created).clone();
    protect["metadata"]["labels"]["protected"] = json!("yes");
    let updated = registry
        .update(&f.configmaps, Some("default"), "a", protect, false)
        .await
        .expect("update");
    assert_eq!(updated["metadata"]["labels"]["team"], "infra");
    let err = registry
        .delete(
            &f.configmaps,
            Some("default"),
            "a",
            &DeleteOptions::default(),
        )
        .await
        .expect_err("protected");
    assert_eq!(err.code(), 403);
    assert!(
        registry
            .get(&f.configmaps, Some("default"), "a")
            .await
            .is_ok(),
        "a refused delete deletes nothing"
    );
}

#[tokio::test]
async fn a_dry_run_does_every_step_but_stores_nothing() {
    let f = fixture().await;
    let dry = f.registry.with_dry_run(true);
    let before = f.registry.store().current_revision().await.expect("rev");
    let would = dry
        .create(&f.configmaps, Some("default"), cm("a", json!({})))
        .await
        .expect("dry create");
    assert_eq!(would["metadata"]["name"], "a");
    assert!(would["metadata"]["uid"].is_string());
    assert!(would["metadata"].get("resourceVersion").is_none());
    assert!(f
        .registry
        .get(&f.configmaps, Some("default"), "a")
        .await
        .expect_err("not stored")
        .is_not_found());
    // Validation still runs.
    let err = dry
        .create(&f.configmaps, Some("default"), cm("Bad_Name", json!({})))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), 422);

    let stored = f
        .registry
        .create(&f.configmaps, Some("default"), cm("a", json!({})))
        .await
        .expect("create");
    let err = dry
        .create(&f.configmaps, Some("default"), cm("a", json!({})))
        .await
        .expect_err("taken");
    assert!(err.is_already_exists());
    let mut change = (*stored).clone();
    change["data"]["k"] = json!("changed");
    let would = dry
        .update(&f.configmaps, Some("default"), "a", change, false)
        .await
        .expect("dry update");
    assert_eq!(would["data"]["k"], "changed");
    assert_eq!(would["metadata"]["generation"], 2);
    assert_eq!(
        would["metadata"]["resourceVersion"],
        stored["metadata"]["resourceVersion"]
    );
    dry.delete(
        &f.configmaps,
        Some("default"),
        "a",
        &DeleteOptions::default(),
    )
    .await
    .expect("dry delete");
    let still = f
        .registry
        .get(&f.configmaps, Some("default"), "a")
        .await
        .expect("still there");
    assert_eq!(still["data"]["k"], "v");
    let after = f.registry.store().current_revision().await.expect("rev");
    assert_eq!(after, before + 1, "only the real create was written");
}

#[tokio::test]
async fn an_immutable_configmap_keeps_its_data() {
    let f = fixture().await;
    let mut frozen = cm("frozen", json!({}));
    frozen["immutable"] = json!(true);
    let stored = f
        .registry
        .create(&f.configmaps, Some("default"), frozen)
        .await
        .expect("create");
    let mut change = (*stored).clone();
    change["data"]["k"] = json!("other");
    let err = f
        .registry
        .update(&f.configmaps, Some("default"), "frozen", change, false)
        .await
        .expect_err("immutable");
    assert_eq!(err.code(), 422);
    assert!(
        err.to_string()
            .contains("data: Forbidden: field is immutable when `immutable` is set"),
        "{err}"
    );
    // Labels may still change.
    let mut relabel = (*stored).clone();
    relabel["metadata"]["labels"] = json!({"a": "b"});
    f.registry
        .update(&f.configmaps, Some("default"), "frozen", relabel, false)
        .await
        .expect("metadata may change");
}

#[tokio::test]
async fn foreground_and_orphan_deletion_leave_the_object_to_the_garbage_collector() {
    use keelson_apiserver::registry::PropagationPolicy;
    let f = fixture().await;
    for (name, policy, finalizer) in [
        ("fg", PropagationPolicy::Foreground, "foregroundDeletion"),
        ("or", PropagationPolicy::Orphan, "orphan"),
    ] {
        f.registry
            .create(&f.configmaps, Some("default"), cm(name, json!({})))
            .await
            .expect("create");
        let options = DeleteOptions {
            propagation_policy: Some(policy),
            ..DeleteOptions::default()
        };
        let marked = f
            .registry
            .delete(&f.configmaps, Some("default"), name, &options)
            .await
            .expect("delete");
        assert_eq!(marked["metadata"]["finalizers"], json!([finalizer]));
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        // Deleting again changes nothing.
        let again = f
            .registry
            .delete(&f.configmaps, Some("default"), name, &options)
            .await
            .expect("delete again");
        assert_eq!(again["metadata"]["finalizers"], json!([finalizer]));
        // The garbage collector's part: once the finalizer is gone, so is the object.
        let mut done = (*again).clone();
        done["metadata"]["finalizers"] = json!([]);
        f.registry
            .update(&f.configmaps, Some("default"), name, done, false)
            .await
            .expect("finalizer removed");
        assert!(f
            .registry
            .get(&f.configmaps, Some("default"), name)
            .await
            .expect_err("gone")
            .is_not_found());
    }
    // Background (the default) deletes at once.
    f.registry
        .create(&f.configmaps, Some("default"), cm("bg", json!({})))
        .await
        .expect("create");
    let options = DeleteOptions {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteOptions::default()
    };
    f.registry
        .delete(&f.configmaps, Some("default"), "bg", &options)
        .await
        .expect("delete");
    assert!(f
        .registry
        .get(&f.configmaps, Some("default"), "bg")
        .await
        .is_err());
}
