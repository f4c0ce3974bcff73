//! The garbage collector against an in-process API server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually, shutdown};
use keelson_controllers::builtin::gc::{default_kinds, GarbageCollector};
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, Client, DeleteOptions, Patch, PropagationPolicy};
use keelson_core::k8s_openapi::api::core::v1::ConfigMap;
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
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
