//! The client: one typed API over two transports. The same function runs against an API
//! server embedded in this process (no sockets) and against the same server over HTTP,
//! as it would against any Kubernetes API server named by a kubeconfig.
//!
//! `cargo run -p keelson-examples --bin client`

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keelson::apiserver::{resources, ApiServer, Registry};
use keelson::core::client::{Api, Client, Config, Event, ListParams, Patch, WatchParams};
use keelson::core::k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use keelson::store::MemStore;
use serde_json::json;

/// Creates a namespace and a ConfigMap, patches it while a watch looks on, and lists.
async fn demo(client: Client, transport: &str) -> Result<(), keelson::core::Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("demo".into());
    if let Err(e) = namespaces.create(&ns).await {
        if !e.is_already_exists() {
            return Err(e);
        }
    }

    let configmaps: Api<ConfigMap> = Api::namespaced(client, "demo");
    let name = format!("settings-{transport}");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.clone());
    cm.metadata.labels = Some([("via".to_owned(), transport.to_owned())].into());
    let created = configmaps.create(&cm).await?;
    let version = created.metadata.resource_version.unwrap_or_default();

    let mut events = configmaps
        .watch(
            &WatchParams::default()
                .labels(&format!("via={transport}"))?
                .after(version),
        )
        .await?;
    configmaps
        .patch(&name, &Patch::Merge(json!({"data": {"mode": "fast"}})))
        .await?;
    if let Ok(Some(Ok(Event::Modified(cm)))) =
        tokio::time::timeout(Duration::from_secs(5), events.next()).await
    {
        println!(
            "{transport}: watched {} change to mode={}",
            cm.metadata.name.unwrap_or_default(),
            cm.data.unwrap_or_default()["mode"]
        );
    }

    let list = configmaps.list(&ListParams::default()).await?;
    let names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    println!("{transport}: configmaps in demo: {}", names.join(", "));

    let e = configmaps.get("missing").await.expect_err("absent");
    println!("{transport}: get missing: {e} ({})", e.code());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = ApiServer::new(
        Registry::new(Arc::new(MemStore::ephemeral())),
        resources::builtin(),
    );

    // In-process: calls go straight to the registry.
    demo(server.client(), "in-process").await?;

    // HTTP: the same server on a loopback port, reached like any other.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = keelson::apiserver::router(server);
    tokio::spawn(async move { axum::serve(listener, router).await });
    demo(Client::from_config(Config::new(url))?, "http").await?;
    Ok(())
}
