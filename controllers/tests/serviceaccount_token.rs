//! The legacy token controller against an in-process API server, with a stand-in signer.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cluster, eventually};
use keelson_controllers::builtin::serviceaccount_token::{
    LegacyTokenClaims, ServiceAccountTokenController, TokenSigner, ACCOUNT_NAME_ANNOTATION,
    ACCOUNT_UID_ANNOTATION, SECRET_TYPE,
};
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, DeleteOptions};
use keelson_core::k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Signs by writing the claims out (the API server's key signs for real).
#[derive(Debug)]
struct PlainSigner;

impl TokenSigner for PlainSigner {
    fn sign(&self, c: &LegacyTokenClaims) -> Result<String, keelson_core::Error> {
        Ok(format!("{}/{}/{}/{}", c.namespace, c.name, c.uid, c.secret))
    }
}

fn token_secret(name: &str, account: &str, data: serde_json::Value) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {ACCOUNT_NAME_ANNOTATION: account}},
        "type": SECRET_TYPE,
        "data": data,
    }))
    .unwrap()
}

fn value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

#[tokio::test(start_paused = true)]
async fn token_secrets_are_filled_in_and_go_with_their_account() {
    let (_server, client) = cluster(&["ns"]).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "ns");
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "builder"}})).unwrap();
    let uid = accounts.create(&sa).await.unwrap().metadata.uid.unwrap();
    let factory = InformerFactory::new();
    let (ctl, rec) =
        ServiceAccountTokenController::controller(&client, &factory, Arc::new(PlainSigner), "CA");
    tokio::spawn(ctl.run(rec));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "ns");
    secrets
        .create(&token_secret("builder-token", "builder", json!({})))
        .await
        .unwrap();
    // A token of its own is kept; what it lacks is added.
    secrets
        .create(&token_secret(
            "builder-own",
            "builder",
            json!({"token": "bWluZQ=="}),
        ))
        .await
        .unwrap();
    let filled = eventually("the token filled in", WAIT, || async {
        secrets
            .get_opt("builder-token")
            .await
            .unwrap()
            .filter(|s| value(s, "token").is_some())
    })
    .await;
    assert_eq!(
        value(&filled, "token").as_deref(),
        Some(format!("ns/builder/{uid}/builder-token").as_str())
    );
    assert_eq!(value(&filled, "ca.crt").as_deref(), Some("CA"));
    assert_eq!(value(&filled, "namespace").as_deref(), Some("ns"));
    assert_eq!(
        filled
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ACCOUNT_UID_ANNOTATION)),
        Some(&uid)
    );
    let own = eventually("the CA added", WAIT, || async {
        secrets
            .get_opt("builder-own")
            .await
            .unwrap()
            .filter(|s| value(s, "ca.crt").is_some())
    })
    .await;
    assert_eq!(value(&own, "token").as_deref(), Some("mine"));
    assert_eq!(value(&own, "namespace").as_deref(), Some("ns"));

    // A Secret for an account that does not exist is deleted.
    secrets
        .create(&token_secret("ghost-token", "ghost", json!({})))
        .await
        .unwrap();
    eventually("the ghost's token deleted", WAIT, || async {
        secrets
            .get_opt("ghost-token")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // Deleting the account deletes its token Secrets.
    accounts
        .delete("builder", &DeleteOptions::default())
        .await
        .unwrap();
    for name in ["builder-token", "builder-own"] {
        eventually("the account's tokens deleted", WAIT, || async {
            secrets.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    // Other Secrets are none of its business.
    let plain: Secret =
        serde_json::from_value(json!({"metadata": {"name": "plain"}, "data": {}})).unwrap();
    secrets.create(&plain).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(secrets.get_opt("plain").await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_token_of_an_account_made_again_under_the_same_name_is_deleted() {
    let (_server, client) = cluster(&["ns"]).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "ns");
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "builder"}})).unwrap();
    accounts.create(&sa).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "ns");
    let mut stale = token_secret("old-token", "builder", json!({}));
    stale
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ACCOUNT_UID_ANNOTATION.into(), "an-older-uid".into());
    secrets.create(&stale).await.unwrap();
    let factory = InformerFactory::new();
    let (ctl, rec) =
        ServiceAccountTokenController::controller(&client, &factory, Arc::new(PlainSigner), "");
    tokio::spawn(ctl.run(rec));
    eventually("the stale token deleted", WAIT, || async {
        secrets
            .get_opt("old-token")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}
