//! An in-process cluster for the controllers' behaviour tests, and a stand-in for node
//! agents (tests mark pods Running and Ready themselves).

#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_controllers::clock;
use keelson_core::client::{Api, Client, ListParams, Patch};
use keelson_core::k8s_openapi::api::core::v1::{
    Container, Namespace, Pod, PodSpec, PodTemplateSpec,
};
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keelson_store::MemStore;
use serde_json::json;

/// A server on an in-memory store, with namespaces created.
pub async fn cluster(namespaces: &[&str]) -> (Arc<ApiServer>, Client) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let server = ApiServer::new(
        Registry::new(Arc::new(MemStore::ephemeral())),
        resources::builtin(),
    );
    let client = server.client();
    for ns in namespaces {
        let mut n = Namespace::default();
        n.metadata.name = Some((*ns).into());
        Api::<Namespace>::all(client.clone())
            .create(&n)
            .await
            .unwrap();
    }
    (server, client)
}

/// Polls `check` every 50 ms (of tokio time) until it returns `Some`, for at most
/// `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pod template with `labels`.
pub fn template(labels: &[(&str, &str)], image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some(image.into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    }
}

/// What a node agent does for a started pod: phase Running, condition Ready=True
/// (transition now, by the controllers' clock).
pub async fn mark_ready(client: &Client, ns: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = clock::now_time();
    let patch = json!({"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
    }});
    pods.patch_status(name, &Patch::Merge(patch)).await.unwrap();
}

/// Marks every pending or not-ready pod matching `selector` ready; returns how many.
pub async fn mark_all_ready(client: &Client, ns: &str, selector: &str) -> usize {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(selector).unwrap())
        .await
        .unwrap();
    let mut n = 0;
    for p in list.items {
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !ready && p.metadata.deletion_timestamp.is_none() {
            mark_ready(client, ns, p.metadata.name.as_deref().unwrap()).await;
            n += 1;
        }
    }
    n
}

/// The pods matching `selector`.
pub async fn pods(client: &Client, ns: &str, selector: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(selector).unwrap())
        .await
        .unwrap()
        .items
}

/// A shutdown signal for controllers: send `true` to stop them.
pub fn shutdown() -> (
    tokio::sync::watch::Sender<bool>,
    impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let signal = move || {
        let mut rx = rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
    };
    (tx, signal)
}

/// What a node agent reports for a finished pod: phase `Succeeded` or `Failed`, not
/// ready.
pub async fn mark_phase(client: &Client, ns: &str, name: &str, phase: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = clock::now_time();
    let patch = json!({"status": {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}],
    }});
    pods.patch_status(name, &Patch::Merge(patch)).await.unwrap();
}

/// The name of a pod.
pub fn name_of(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}
