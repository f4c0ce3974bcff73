//! An API server embedded in an application: the registry on an in-memory store, an
//! admission plugin of the application's own, and the Kubernetes HTTP API on 127.0.0.1.
//!
//! `cargo run -p keelson-examples --bin embedded_apiserver`

use std::io::{Read, Write};
use std::sync::Arc;

use async_trait::async_trait;
use keelson::apiserver::admission::{AdmissionChain, AdmissionRequest, ValidatingAdmission};
use keelson::apiserver::{resources, ApiServer, Registry};
use keelson::core::Error;
use keelson::store::MemStore;
use serde_json::{json, Value};

/// Refuses pods whose images do not come from the company registry.
struct TrustedImages;

#[async_trait]
impl ValidatingAdmission for TrustedImages {
    fn name(&self) -> &str {
        "TrustedImages"
    }

    async fn validate(&self, req: &AdmissionRequest<'_>, object: &Value) -> Result<(), Error> {
        if req.resource.kind != "Pod" {
            return Ok(());
        }
        let images = object
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for image in images.filter_map(|c| c.get("image").and_then(Value::as_str)) {
            if !image.starts_with("registry.example.com/") {
                return Err(Error::forbidden(
                    req.resource,
                    req.name,
                    format!("image {image} is not from registry.example.com"),
                ));
            }
        }
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new(Arc::new(MemStore::ephemeral()))
        .with_admission(AdmissionChain::default().validate(TrustedImages));
    let server = ApiServer::new(registry.clone(), resources::builtin());
    let find = |plural: &str| {
        server
            .served()
            .iter()
            .find(|s| s.rt.plural == plural)
            .cloned()
    };
    let (namespaces, pods) = (
        find("namespaces").ok_or("no namespaces")?,
        find("pods").ok_or("no pods")?,
    );

    // In process: the same registry every transport uses.
    registry
        .create(&namespaces, None, json!({"metadata": {"name": "default"}}))
        .await?;
    let pod = |image: &str| json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "web", "image": image}]}});
    match registry
        .create(&pods, Some("default"), pod("docker.io/nginx"))
        .await
    {
        Err(e) => println!("refused: {e} ({} {})", e.code(), e.reason()),
        Ok(_) => return Err("the admission plugin should have refused the pod".into()),
    }
    let created = registry
        .create(&pods, Some("default"), pod("registry.example.com/web:1.0"))
        .await?;
    println!(
        "created pod {} with status {}",
        created["metadata"]["name"], created["status"]["phase"]
    );

    // Over HTTP, as kubectl would see it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, keelson::apiserver::router(server)).await });
    let response = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(b"GET /api/v1/namespaces/default/pods/web HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .await??;
    let status = response.lines().next().unwrap_or_default();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: Value = serde_json::from_str(body.trim()).or_else(|_| {
        // A chunked body: the JSON is the second line.
        serde_json::from_str(body.lines().nth(1).unwrap_or_default())
    })?;
    println!(
        "GET over HTTP: {status}; pod {} in {}",
        body["metadata"]["name"], body["metadata"]["namespace"]
    );
    Ok(())
}
