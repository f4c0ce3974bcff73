//! The root CA publisher against an in-process API server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually};
use keelson_controllers::builtin::rootcacert::{
    RootCaCertPublisher, CA_KEY, CONFIG_MAP, DESCRIPTION, DESCRIPTION_ANNOTATION,
};
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, DeleteOptions, Patch};
use keelson_core::k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn ca_of(cm: &ConfigMap) -> Option<&str> {
    cm.data.as_ref()?.get(CA_KEY).map(String::as_str)
}

/// Waits until namespace `ns` has the published ConfigMap with `ca`, and returns it.
async fn published(api: &Api<ConfigMap>, ca: &str) -> ConfigMap {
    eventually("the published CA", WAIT, || async {
        api.get_opt(CONFIG_MAP).await.unwrap().filter(|cm| {
            ca_of(cm) == Some(ca)
                && cm.data.as_ref().map(|d| d.len()) == Some(1)
                && cm
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
                    .map(String::as_str)
                    == Some(DESCRIPTION)
        })
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn every_namespace_gets_the_ca_back_after_a_deletion_or_an_edit() {
    let (_server, client) = cluster(&["one"]).await;
    let factory = InformerFactory::new();
    let (ctl, rec) = RootCaCertPublisher::controller(&client, &factory, CA);
    tokio::spawn(ctl.run(rec));
    let mut two = Namespace::default();
    two.metadata.name = Some("two".into());
    Api::<Namespace>::all(client.clone())
        .create(&two)
        .await
        .unwrap();
    for ns in ["one", "two"] {
        published(&Api::namespaced(client.clone(), ns), CA).await;
    }

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "one");
    let before = api.get(CONFIG_MAP).await.unwrap().metadata.uid;
    api.delete(CONFIG_MAP, &DeleteOptions::default())
        .await
        .unwrap();
    let again = published(&api, CA).await;
    assert_ne!(again.metadata.uid, before, "recreated");

    api.patch(
        CONFIG_MAP,
        &Patch::Merge(json!({"data": {CA_KEY: "forged", "extra": "x"}})),
    )
    .await
    .unwrap();
    let restored = published(&api, CA).await;
    assert_eq!(
        restored.metadata.uid, again.metadata.uid,
        "put back, not recreated"
    );

    api.patch(
        CONFIG_MAP,
        &Patch::Merge(json!({"metadata": {"annotations": {DESCRIPTION_ANNOTATION: null}}})),
    )
    .await
    .unwrap();
    published(&api, CA).await;
}

#[tokio::test(start_paused = true)]
async fn without_a_ca_the_config_map_is_published_empty_so_pods_can_mount_it() {
    let (_server, client) = cluster(&["one"]).await;
    let factory = InformerFactory::new();
    let (ctl, rec) = RootCaCertPublisher::controller(&client, &factory, "");
    tokio::spawn(ctl.run(rec));
    let cm = published(&Api::namespaced(client.clone(), "one"), "").await;
    assert_eq!(ca_of(&cm), Some(""));
}
