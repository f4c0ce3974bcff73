//! Projected service account tokens: asked for by the agent, bound to the pod, written
//! with the volume, refreshed before they expire; a token that cannot be had keeps the
//! pod from starting with a FailedMount event. Simulated containers, real volume
//! directories.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use keelson_core::client::{Api, ListParams, Patch};
use keelson_core::k8s_openapi::api::core::v1::{ConfigMap, Event, ServiceAccount};
use keelson_node::{Agent, AgentConfig, LoopbackNetwork, NodeResources, Runtime, SimRuntime};
use serde_json::{json, Value};

/// An agent on simulated containers whose volumes live under `dir`.
fn start_agent(
    client: &keelson_core::client::Client,
    dir: &Path,
    config: AgentConfig,
) -> tokio::sync::oneshot::Sender<()> {
    let runtime = Arc::new(SimRuntime::new(Default::default()));
    let network = Arc::new(LoopbackNetwork::open(dir.join("network"), 7).expect("network"));
    let agent = Agent::builder(client.clone(), "n1")
        .runtime(runtime as Arc<dyn Runtime>)
        .network(network)
        .state_dir(dir)
        .config(config)
        .build()
        .expect("agent");
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        agent
            .run(async {
                let _ = rx.await;
            })
            .await
            .expect("agent run");
    });
    stop
}

fn config() -> AgentConfig {
    AgentConfig {
        sync_period: Duration::from_secs(1),
        resources: NodeResources::fixed("4", "8Gi", 110),
        host_conditions: false,
        // Only the token's own schedule rewrites the volume in these tests.
        volume_refresh_period: Duration::from_secs(24 * 3600),
        ..AgentConfig::default()
    }
}

async fn create_account(client: &keelson_core::client::Client, name: &str) {
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("account");
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create(&sa)
        .await
        .expect("create the account");
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&base64_url(payload)).expect("claims")
}

/// Decodes unpadded base64url (the JWT's encoding), without a dependency for it.
fn base64_url(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn volume_dir(dir: &Path, uid: &str, volume: &str) -> PathBuf {
    dir.join("pods").join(uid).join("volumes").join(volume)
}

#[tokio::test(start_paused = true)]
async fn a_bound_token_is_written_with_the_volume_and_refreshed_at_80_percent_of_its_life() {
    let c = cluster().await;
    create_account(&c.client, "builder").await;
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "settings"}, "data": {"mode": "fast", "old": "x"}}),
    )
    .expect("cm");
    Api::<ConfigMap>::namespaced(c.client.clone(), NS)
        .create(&cm)
        .await
        .expect("configmap");
    let tmp = tempfile::tempdir().expect("tempdir");
    let _stop = start_agent(&c.client, tmp.path(), config());
    let pod = pod(
        "web",
        "n1",
        json!({
            "serviceAccountName": "builder",
            "containers": [{"name": "main", "image": "nginx",
                "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}],
            "volumes": [
                {"name": "creds", "projected": {"defaultMode": 0o640, "sources": [
                    {"serviceAccountToken": {"path": "vault/token", "audience": "vault", "expirationSeconds": 600}},
                    {"configMap": {"name": "settings", "items": [{"key": "mode", "path": "mode"}]}},
                ]}},
                {"name": "all", "configMap": {"name": "settings"}},
            ],
        }),
    );
    let created =
        Api::<keelson_core::k8s_openapi::api::core::v1::Pod>::namespaced(c.client.clone(), NS)
            .create(&pod)
            .await
            .expect("create");
    let uid = created.metadata.uid.clone().expect("uid");
    let dir = volume_dir(tmp.path(), &uid, "creds");
    let token_path = dir.join("vault/token");
    let first = eventually(20, "the token file", || async {
        std::fs::read_to_string(&token_path).ok()
    })
    .await;
    let c1 = claims(&first);
    assert_eq!(c1["aud"], json!(["vault"]));
    assert_eq!(c1["sub"], json!("system:serviceaccount:test:builder"));
    assert_eq!(c1["kubernetes.io"]["pod"]["name"], json!("web"));
    assert_eq!(c1["kubernetes.io"]["pod"]["uid"], json!(uid));
    assert_eq!(
        c1["exp"].as_i64().expect("exp") - c1["iat"].as_i64().expect("iat"),
        600
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_path)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "the volume's mode");
    assert_eq!(
        std::fs::read_to_string(dir.join("mode")).expect("mode"),
        "fast"
    );
    let all = volume_dir(tmp.path(), &uid, "all");
    assert_eq!(std::fs::read_to_string(all.join("old")).expect("old"), "x");

    Api::<ConfigMap>::namespaced(c.client.clone(), NS)
        .patch(
            "settings",
            &Patch::Merge(json!({"data": {"mode": "slow", "old": null}})),
        )
        .await
        .expect("patch");
    // Before 80% of its ten minutes, nothing is rewritten.
    tokio::time::sleep(Duration::from_secs(470)).await;
    assert_eq!(std::fs::read_to_string(&token_path).expect("token"), first);
    assert_eq!(
        std::fs::read_to_string(dir.join("mode")).expect("mode"),
        "fast"
    );
    // At 480 s, a new token, and the rest of the volume brought up to date with it.
    let second = eventually(30, "a new token", || async {
        std::fs::read_to_string(&token_path)
            .ok()
            .filter(|t| *t != first)
    })
    .await;
    assert_eq!(claims(&second)["kubernetes.io"]["pod"]["uid"], json!(uid));
    assert_eq!(
        std::fs::read_to_string(dir.join("mode")).expect("mode"),
        "slow"
    );
    // The pod's other volumes too: a key gone from the ConfigMap is gone from the volume.
    let all = volume_dir(tmp.path(), &uid, "all");
    assert_eq!(
        std::fs::read_to_string(all.join("mode")).expect("mode"),
        "slow"
    );
    assert!(!all.join("old").exists());
}

#[tokio::test(start_paused = true)]
async fn a_token_that_cannot_be_had_keeps_the_pod_creating_with_a_failed_mount_event() {
    let c = cluster().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let _stop = start_agent(&c.client, tmp.path(), config());
    let pod = pod(
        "lonely",
        "n1",
        json!({
            "serviceAccountName": "ghost",
            "containers": [{"name": "main", "image": "nginx"}],
            "volumes": [{"name": "token", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token"}},
            ]}}],
        }),
    );
    let created =
        Api::<keelson_core::k8s_openapi::api::core::v1::Pod>::namespaced(c.client.clone(), NS)
            .create(&pod)
            .await
            .expect("create");
    let expected = r#"MountVolume.SetUp failed for volume "token" : failed to fetch token: serviceaccounts "ghost" not found"#;
    let p = eventually(20, "ContainerCreating", || async {
        let p = get_pod(&c.client, "lonely").await?;
        let state = container_status(&p, "main")?.state.clone()?;
        let waiting = state.waiting?;
        (waiting.reason.as_deref() == Some("ContainerCreating")
            && waiting.message.as_deref() == Some(expected))
        .then_some(p)
    })
    .await;
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    let events: Api<Event> = Api::namespaced(c.client.clone(), NS);
    let event = eventually(20, "a FailedMount event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedMount"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.message.as_deref(), Some(expected));
    assert_eq!(event.involved_object.uid, created.metadata.uid);
    assert_eq!(
        event.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("kubelet")
    );
    // Retried every sync: one event, counted.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let list = events.list(&ListParams::default()).await.expect("events");
    let failed: Vec<&Event> = list
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedMount"))
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].count.unwrap_or(0) > 1, "{:?}", failed[0].count);

    // Once the account exists, the pod starts.
    create_account(&c.client, "ghost").await;
    let uid = created.metadata.uid.expect("uid");
    let token_path = volume_dir(tmp.path(), &uid, "token").join("token");
    eventually(20, "the token file", || async {
        std::fs::read_to_string(&token_path).ok()
    })
    .await;
    eventually(20, "Running", || async {
        let p = get_pod(&c.client, "lonely").await?;
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
}
