//! `pods/log`, `pods/exec` and `pods/portforward` over HTTP: checked against the pod as
//! Kubernetes checks them, then proxied to the agent endpoint its Node publishes (a
//! stand-in agent here; `keelson-node`'s in the end-to-end tests).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_core::client::Api;
use keelson_core::k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use keelson_store::MemStore;
use serde_json::json;

/// A stand-in agent: echoes what it was asked for; container `gone` is unknown to it.
async fn agent() -> u16 {
    async fn logs(
        Path((ns, pod, container)): Path<(String, String, String)>,
        Query(q): Query<HashMap<String, String>>,
    ) -> axum::response::Response {
        if container == "gone" {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "container \"gone\" not found"});
            return (StatusCode::NOT_FOUND, status.to_string()).into_response();
        }
        let mut params: Vec<_> = q.into_iter().collect();
        params.sort();
        (
            StatusCode::OK,
            format!("log of {ns}/{pod}/{container} {params:?}\n"),
        )
            .into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new()
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            axum::routing::get(logs),
        )
        .route(
            "/exec/{ns}/{pod}/{container}",
            axum::routing::get(echo_upgrade),
        )
        .route(
            "/attach/{ns}/{pod}/{container}",
            axum::routing::get(echo_upgrade),
        )
        .route("/portforward/{ns}/{pod}", axum::routing::post(echo_upgrade));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

/// The stand-in agent's upgrades: `Upgrade: echo` switches protocols, sends the request's
/// path and query as a line, then echoes what it reads.
async fn echo_upgrade(mut req: axum::extract::Request) -> axum::response::Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if req.headers().get("upgrade").and_then(|v| v.to_str().ok()) != Some("echo") {
        return (StatusCode::BAD_REQUEST, "upgrade to echo").into_response();
    }
    let line = format!("{}\n", req.uri());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let _ = io.write_all(line.as_bytes()).await;
        let mut buf = [0u8; 1024];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    response
        .headers_mut()
        .insert("upgrade", axum::http::HeaderValue::from_static("echo"));
    response.headers_mut().insert(
        "connection",
        axum::http::HeaderValue::from_static("Upgrade"),
    );
    response
}

/// Sends a raw upgrade request; answers the status line and, once switched, the first line
/// the agent sends and the echo of `ping`.
async fn upgrade(base: &str, method: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.expect("send");
    let mut reader = tokio::io::BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status).await.expect("status line");
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.expect("header") <= 2 {
            break;
        }
        head.push_str(&line);
    }
    if !status.contains(" 101 ") {
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .expect("a content-length");
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await.expect("body");
        return (status, String::from_utf8_lossy(&body).into_owned());
    }
    let mut first = String::new();
    reader.read_line(&mut first).await.expect("first line");
    reader.get_mut().write_all(b"ping").await.expect("ping");
    let mut echo = [0u8; 4];
    reader.read_exact(&mut echo).await.expect("echo");
    (status, format!("{first}{}", String::from_utf8_lossy(&echo)))
}

async fn get(base: &str, path: &str) -> (u16, String) {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<String>();
    let uri: hyper::Uri = format!("{base}{path}").parse().expect("uri");
    let response = client.get(uri).await.expect("request");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn pod_logs_are_checked_then_proxied_to_the_node_agent() {
    let server = ApiServer::new(
        Registry::new(Arc::new(MemStore::ephemeral())),
        resources::builtin(),
    );
    let client = server.client();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, keelson_apiserver::router(server)).await;
    });
    let port = agent().await;
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&ns)
        .await
        .expect("namespace");
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}}))
    .expect("node");
    Api::<Node>::all(client.clone())
        .create(&node)
        .await
        .expect("node");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, node) in [("web", Some("n1")), ("waiting", None)] {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x"}, {"name": "gone", "image": "x"}],
                     "initContainers": [{"name": "setup", "image": "x"}]}}))
        .expect("pod");
        pods.create(&pod).await.expect("pod");
    }
    let log = "/api/v1/namespaces/default/pods/web/log";

    // Proxied, with the log options passed on.
    let (code, body) = get(
        &base,
        &format!("{log}?container=app&tailLines=3&timestamps=true"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        "log of default/web/app [(\"tailLines\", \"3\"), (\"timestamps\", \"true\")]\n"
    );
    let (code, body) = get(&base, &format!("{log}?container=setup")).await;
    assert_eq!(
        (code, body.starts_with("log of default/web/setup")),
        (200, true),
        "{body}"
    );
    // The agent's own refusal is passed on.
    let (code, body) = get(&base, &format!("{log}?container=gone")).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("container \\\"gone\\\" not found"), "{body}");

    // Checked against the pod first, with Kubernetes' words.
    let (code, body) = get(&base, log).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("a container name must be specified for pod web, choose one of: [app gone] or one of the init containers: [setup]"),
        "{body}"
    );
    let (code, body) = get(&base, &format!("{log}?container=nope")).await;
    assert_eq!(code, 400);
    assert!(
        body.contains("container nope is not valid for pod web"),
        "{body}"
    );
    let (code, body) = get(
        &base,
        "/api/v1/namespaces/default/pods/waiting/log?container=app",
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        body.contains("pod waiting does not have a host assigned"),
        "{body}"
    );
    let (code, body) = get(&base, &format!("{log}?container=app&tailLines=-1")).await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("tailLines"), "{body}");
    let (code, _) = get(&base, "/api/v1/namespaces/default/pods/missing/log").await;
    assert_eq!(code, 404);

    // Discovery lists the subresource.
    let (_, discovery) = get(&base, "/api/v1").await;
    assert!(discovery.contains("\"pods/log\""), "{discovery}");

    // exec and port-forward: checked, then the upgraded connection is spliced to the agent.
    let exec = "/api/v1/namespaces/default/pods/web/exec";
    let (status, through) = upgrade(
        &base,
        "GET",
        &format!("{exec}?command=ls&command=-l&container=app&stdout=true"),
    )
    .await;
    assert!(status.contains(" 101 "), "{status}{through}");
    assert_eq!(
        through,
        "/exec/default/web/app?command=ls&command=-l&container=app&stdout=true\nping"
    );
    let (status, through) = upgrade(
        &base,
        "GET",
        "/api/v1/namespaces/default/pods/web/attach?container=app&stdout=true",
    )
    .await;
    assert!(status.contains(" 101 "), "{status}{through}");
    assert_eq!(
        through,
        "/attach/default/web/app?container=app&stdout=true\nping"
    );
    let pf = "/api/v1/namespaces/default/pods/web/portforward";
    let (status, through) = upgrade(&base, "POST", pf).await;
    assert!(status.contains(" 101 "), "{status}{through}");
    assert_eq!(through, "/portforward/default/web\nping");
    for (path, code, words) in [
        (
            format!("{exec}?command=ls&container=nope&stdout=true"),
            "400",
            "container nope is not valid for pod web",
        ),
        (
            format!("{exec}?container=app&stdout=true"),
            "400",
            "you must specify at least 1 command",
        ),
        (
            format!("{exec}?command=ls&container=app"),
            "400",
            "you must specify at least 1 of stdin, stdout, stderr",
        ),
        (
            "/api/v1/namespaces/default/pods/missing/exec?command=ls&stdout=true".to_owned(),
            "404",
            r#"pods \"missing\" not found"#,
        ),
        (
            "/api/v1/namespaces/default/pods/waiting/portforward".to_owned(),
            "400",
            "pod waiting does not have a host assigned",
        ),
    ] {
        let (status, body) = upgrade(&base, "GET", &path).await;
        assert!(status.contains(code), "{path}: {status}{body}");
        assert!(body.contains(words), "{path}: {body}");
    }
    for sub in ["pods/exec", "pods/attach", "pods/portforward"] {
        assert!(
            discovery.contains(&format!("\"{sub}\"")),
            "{sub}: {discovery}"
        );
    }

    // A node whose agent does not answer: 500, naming what failed.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n2"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": dead_port}}}}))
    .expect("node");
    Api::<Node>::all(client.clone())
        .create(&node)
        .await
        .expect("node");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "orphan"},
        "spec": {"nodeName": "n2", "containers": [{"name": "app", "image": "x"}]}}))
    .expect("pod");
    pods.create(&pod).await.expect("pod");
    let (code, body) = get(&base, "/api/v1/namespaces/default/pods/orphan/log").await;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("/containerLogs/default/orphan/app"), "{body}");
}
