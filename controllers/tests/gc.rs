//! The garbage collector against an in-process API server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually, shutdown};
use keelson_controllers::builtin::gc::{default_kinds, GarbageCollector};
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, Client, DeleteOptions, ListParams, Patch, PropagationPolicy};
use keelson_core::k8s_openapi::api::core::v1::{ConfigMap, Event};
use keelson_core::k8s_openapi::api::scheduling::v1::PriorityClass;
use keelson_core::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keelson_core::{DynamicObject, ResourceType, Scope};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

async fn start(client: &Client) -> tokio::sync::watch::Sender<bool> {
    let (tx, signal) = shutdown();
    let gc = GarbageCollector::new(client, &InformerFactory::new(), default_kinds()).await;
    tokio::spawn(gc.run(signal()));
    tx
}

async fn cm(
    api: &Api<ConfigMap>,
    name: &str,
    owners: &[(&ConfigMap, bool)],
    finalizers: &[&str],
) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    if !owners.is_empty() {
        c.metadata.owner_references = Some(
            owners
                .iter()
                .map(|(o, block)| OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: o.metadata.name.clone().unwrap(),
                    uid: o.metadata.uid.clone().unwrap(),
                    controller: None,
                    block_owner_deletion: Some(*block),
                })
                .collect(),
        );
    }
    if !finalizers.is_empty() {
        c.metadata.finalizers = Some(finalizers.iter().map(|f| (*f).to_owned()).collect());
    }
    api.create(&c).await.unwrap()
}

async fn gone(api: &Api<ConfigMap>, name: &str) -> bool {
    api.get_opt(name).await.unwrap().is_none()
}

fn delete_with(policy: PropagationPolicy) -> DeleteOptions {
    DeleteOptions {
        propagation_policy: Some(policy),
        ..DeleteOptions::default()
    }
}

#[tokio::test(start_paused = true)]
async fn dependents_of_a_deleted_owner_are_deleted_in_the_background() {
    let (_server, client) = cluster(&["ns"]).await;
    let _gc = start(&client).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    let owner = cm(&api, "owner", &[], &[]).await;
    let child = cm(&api, "child", &[(&owner, false)], &[]).await;
    cm(&api, "grandchild", &[(&child, false)], &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !gone(&api, "child").await,
        "nothing is collected while the owner lives"
    );
    api.delete("owner", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("the whole chain collected", WAIT, || async {
        (gone(&api, "child").await && gone(&api, "grandchild").await).then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_dependent_with_another_live_owner_stays_and_loses_the_dead_reference() {
    let (_server, client) = cluster(&["ns"]).await;
    let _gc = start(&client).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    let a = cm(&api, "a", &[], &[]).await;
    let b = cm(&api, "b", &[], &[]).await;
    cm(&api, "shared", &[(&a, false), (&b, false)], &[]).await;
    api.delete("a", &DeleteOptions::default()).await.unwrap();
    eventually("reference to a removed", WAIT, || async {
        let s = api.get("shared").await.unwrap();
        let refs = s.metadata.owner_references.unwrap_or_default();
        (refs.len() == 1 && refs[0].name == "b").then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn foreground_deletion_waits_for_blocking_dependents() {
    let (_server, client) = cluster(&["ns"]).await;
    let _gc = start(&client).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    let owner = cm(&api, "owner", &[], &[]).await;
    // The blocking dependent is held by a finalizer of its own.
    cm(&api, "blocker", &[(&owner, true)], &["example.com/hold"]).await;
    cm(&api, "free", &[(&owner, false)], &[]).await;
    api.delete("owner", &delete_with(PropagationPolicy::Foreground))
        .await
        .unwrap();
    eventually("dependents deleted", WAIT, || async {
        let blocker = api.get("blocker").await.unwrap();
        (blocker.metadata.deletion_timestamp.is_some() && gone(&api, "free").await).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let o = api.get("owner").await.unwrap();
    assert!(o.metadata.deletion_timestamp.is_some());
    assert_eq!(
        o.metadata.finalizers.as_deref(),
        Some(&["foregroundDeletion".to_owned()][..]),
        "the owner waits for its blocking dependent"
    );
    api.patch(
        "blocker",
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("owner gone after its dependent", WAIT, || async {
        gone(&api, "owner").await.then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn orphan_deletion_strips_the_owner_from_dependents_and_keeps_them() {
    let (_server, client) = cluster(&["ns"]).await;
    let _gc = start(&client).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    let owner = cm(&api, "owner", &[], &[]).await;
    cm(&api, "kept1", &[(&owner, true)], &[]).await;
    cm(&api, "kept2", &[(&owner, false)], &[]).await;
    api.delete("owner", &delete_with(PropagationPolicy::Orphan))
        .await
        .unwrap();
    eventually("owner gone", WAIT, || async {
        gone(&api, "owner").await.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    for name in ["kept1", "kept2"] {
        let c = api.get(name).await.unwrap();
        assert!(
            c.metadata.owner_references.unwrap_or_default().is_empty(),
            "{name} still owned"
        );
    }
}

fn reference(api_version: &str, kind: &str, name: &str, uid: &str, block: bool) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: None,
        block_owner_deletion: Some(block),
    }
}

fn owned_by(name: &str, owners: Vec<OwnerReference>) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.owner_references = Some(owners);
    c
}

async fn event_reasons(client: &Client, ns: &str, object: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(object))
        .filter_map(|e| e.reason)
        .collect()
}

fn gizmo_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "metadata": {"name": "gizmos.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .unwrap()
}

fn gizmos() -> ResourceType {
    ResourceType::new("example.com", "v1", "Gizmo", "gizmos", Scope::Namespaced)
}

async fn serve_gizmos(client: &Client) -> Api<DynamicObject> {
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&gizmo_crd())
        .await
        .unwrap();
    let api = Api::dynamic(client.clone(), &gizmos(), Some("ns"));
    eventually("gizmos served", WAIT, || async {
        api.list(&ListParams::default()).await.ok().map(|_| ())
    })
    .await;
    api
}

#[tokio::test(start_paused = true)]
async fn dependents_of_a_custom_resource_created_after_the_collector_are_collected() {
    let (_server, client) = cluster(&["ns"]).await;
    let _gc = start(&client).await;
    let gizmo_api = serve_gizmos(&client).await;
    let gizmo = gizmo_api
        .create(&DynamicObject::new(&gizmos(), "g1").within("ns"))
        .await
        .unwrap();
    let uid = gizmo.metadata.uid.clone().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    api.create(&owned_by(
        "of-g1",
        vec![reference("example.com/v1", "Gizmo", "g1", &uid, false)],
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!gone(&api, "of-g1").await, "kept while its owner lives");
    gizmo_api
        .delete("g1", &DeleteOptions::default())
        .await
        .unwrap();
    eventually(
        "the custom resource's dependent collected",
        WAIT,
        || async { gone(&api, "of-g1").await.then_some(()) },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_owner_of_an_unknown_kind_is_kept_until_the_kind_is_served_and_found_absent() {
    let (_server, client) = cluster(&["ns"]).await;
    let _gc = start(&client).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    api.create(&owned_by(
        "of-nothing-yet",
        vec![reference(
            "example.com/v1",
            "Gizmo",
            "g0",
            "no-such-uid",
            false,
        )],
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !gone(&api, "of-nothing-yet").await,
        "an owner of a kind nobody serves may be a CRD still to come"
    );
    serve_gizmos(&client).await;
    eventually(
        "collected once the kind shows the owner absent",
        WAIT,
        || async { gone(&api, "of-nothing-yet").await.then_some(()) },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_cycle_of_blocking_owners_unwinds_under_foreground_deletion() {
    let (_server, client) = cluster(&["ns"]).await;
    let _gc = start(&client).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    let a = cm(&api, "a", &[], &[]).await;
    let b = cm(&api, "b", &[(&a, true)], &[]).await;
    let c = cm(&api, "c", &[(&b, true)], &[]).await;
    // a owns b owns c owns a, each blocking.
    let refs = vec![reference(
        "v1",
        "ConfigMap",
        "c",
        c.metadata.uid.as_deref().unwrap(),
        true,
    )];
    api.patch(
        "a",
        &Patch::Merge(json!({"metadata": {"ownerReferences": refs}})),
    )
    .await
    .unwrap();
    api.delete("a", &delete_with(PropagationPolicy::Foreground))
        .await
        .unwrap();
    eventually("the whole cycle deleted", WAIT, || async {
        (gone(&api, "a").await && gone(&api, "b").await && gone(&api, "c").await).then_some(())
    })
    .await;
    let reasons = event_reasons(&client, "ns", "c").await;
    assert!(
        reasons.iter().any(|r| r == "OwnerRefCycle"),
        "the object whose references were unblocked says why: {reasons:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn foreground_deletion_keeps_a_dependent_with_another_live_owner() {
    let (_server, client) = cluster(&["ns"]).await;
    let _gc = start(&client).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    let a = cm(&api, "a", &[], &[]).await;
    let b = cm(&api, "b", &[], &[]).await;
    cm(&api, "shared", &[(&a, true), (&b, true)], &[]).await;
    api.delete("a", &delete_with(PropagationPolicy::Foreground))
        .await
        .unwrap();
    eventually("a gone", WAIT, || async {
        gone(&api, "a").await.then_some(())
    })
    .await;
    let shared = api.get("shared").await.unwrap();
    assert!(
        shared.metadata.deletion_timestamp.is_none(),
        "b still owns it"
    );
    let names: Vec<String> = shared
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    eventually("the reference to a dropped", WAIT, || async {
        let s = api.get("shared").await.unwrap();
        let refs = s.metadata.owner_references.unwrap_or_default();
        (refs.len() == 1 && refs[0].name == "b").then_some(())
    })
    .await;
    assert!(names.contains(&"b".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn an_owner_in_another_namespace_counts_as_absent_with_a_warning() {
    let (_server, client) = cluster(&["ns", "other"]).await;
    let _gc = start(&client).await;
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
    let owner = cm(&other, "owner", &[], &[]).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    cm(&api, "cross", &[(&owner, false)], &[]).await;
    eventually("the cross-namespace dependent collected", WAIT, || async {
        gone(&api, "cross").await.then_some(())
    })
    .await;
    assert!(!gone(&other, "owner").await);
    let reasons = event_reasons(&client, "ns", "cross").await;
    assert!(
        reasons.iter().any(|r| r == "OwnerRefInvalidNamespace"),
        "{reasons:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cluster_scoped_object_owned_by_a_namespaced_kind_is_kept_with_a_warning() {
    // Events about cluster-scoped objects go to `default`.
    let (_server, client) = cluster(&["default"]).await;
    let _gc = start(&client).await;
    let mut pc = PriorityClass {
        value: 10,
        ..PriorityClass::default()
    };
    pc.metadata.name = Some("owned-wrongly".into());
    pc.metadata.owner_references = Some(vec![reference(
        "v1",
        "ConfigMap",
        "missing",
        "no-such-uid",
        false,
    )]);
    let pcs: Api<PriorityClass> = Api::all(client.clone());
    pcs.create(&pc).await.unwrap();
    eventually("a warning event", WAIT, || async {
        let reasons = event_reasons(&client, "default", "owned-wrongly").await;
        reasons
            .iter()
            .any(|r| r == "OwnerRefInvalidNamespace")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(pcs.get_opt("owned-wrongly").await.unwrap().is_some());
}
