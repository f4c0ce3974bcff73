//! The kubelet-like HTTP endpoint on 127.0.0.1 (see the crate docs for the contract).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use serde_json::json;

use crate::agent::{lock, NodeCtx};
use crate::error::Error;
use crate::runtime::logs::from_timestamp;
use crate::runtime::{ContainerState, ExecRequest, LogOptions};
use crate::streaming;

pub(crate) async fn bind(port: u16) -> Result<(tokio::net::TcpListener, u16), Error> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io("listen on", format!("127.0.0.1:{port}"), e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("read the address of", "the listener", e))?
        .port();
    Ok((listener, port))
}

pub(crate) async fn serve(ctx: Arc<NodeCtx>, listener: tokio::net::TcpListener) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods))
        .route("/containerLogs/{namespace}/{pod}/{container}", get(logs))
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(exec_stream).post(exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(attach_stream).post(attach_stream),
        )
        .route(
            "/portforward/{namespace}/{pod}",
            get(port_forward_websocket).post(port_forward_spdy),
        )
        .with_state(ctx);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the node endpoint stopped");
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn pods(State(ctx): State<Arc<NodeCtx>>) -> Response {
    let items: Vec<serde_json::Value> = lock(&ctx.pods)
        .values()
        .filter_map(|h| {
            let info = lock(&h.info);
            let mut pod = (*info.pod.clone()?).clone();
            pod.status = info.status.clone();
            serde_json::to_value(pod).ok()
        })
        .collect();
    let body = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn container_id(
    ctx: &NodeCtx,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<String, Box<Response>> {
    let Some(info) = ctx.find(ns, pod) else {
        return Err(Box::new(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pod \"{pod}\" not found on this node"),
        )));
    };
    let info = lock(&info);
    let Some((current, prev)) = info.containers.get(container) else {
        return Err(Box::new(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("container \"{container}\" in pod \"{pod}\" not found"),
        )));
    };
    let id = if previous { prev } else { current };
    id.clone().ok_or_else(|| {
        let what = if previous {
            "previous terminated container"
        } else {
            "container"
        };
        Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("{what} \"{container}\" in pod \"{pod}\" not found"),
        ))
    })
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k)
        .is_some_and(|v| v.is_empty() || v == "true" || v == "1")
}

fn number(q: &HashMap<String, String>, k: &str) -> Result<Option<u64>, Box<Response>> {
    match q.get(k) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            Box::new(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("{k} must be a non-negative integer, not {v:?}"),
            ))
        }),
    }
}

async fn logs(
    State(ctx): State<Arc<NodeCtx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let id = match container_id(&ctx, &ns, &pod, &container, flag(&q, "previous")) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let mut options = LogOptions {
        follow: flag(&q, "follow"),
        timestamps: flag(&q, "timestamps"),
        ..LogOptions::default()
    };
    match number(&q, "tailLines") {
        Ok(n) => options.tail_lines = n.map(|n| n as usize),
        Err(r) => return *r,
    }
    match number(&q, "limitBytes") {
        Ok(n) => options.limit_bytes = n.map(|n| n as usize),
        Err(r) => return *r,
    }
    match number(&q, "sinceSeconds") {
        Ok(Some(s)) => options.since = SystemTime::now().checked_sub(Duration::from_secs(s)),
        Ok(None) => {}
        Err(r) => return *r,
    }
    if let Some(t) = q.get("sinceTime") {
        match t.parse::<keelson_core::k8s_openapi::jiff::Timestamp>() {
            Ok(ts) => options.since = Some(from_timestamp(ts)),
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("sinceTime {t:?} is not an RFC 3339 time"),
                )
            }
        }
    }
    match ctx.runtime.logs(&id, &options).await {
        Ok(stream) => {
            let body = Body::from_stream(stream.map(|r| r.map(Bytes::from)));
            ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
        }
        Err(e) if e.is_not_found() => status(StatusCode::NOT_FOUND, "NotFound", e.to_string()),
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        ),
    }
}

/// What a client that asks for an exec over SPDY (kubectl's fallback) is told.
const EXEC_NEEDS_WEBSOCKET: &str = "exec streams only over a WebSocket (subprotocol \
    v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not supported";

async fn exec(
    State(ctx): State<Arc<NodeCtx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let id = match container_id(&ctx, &ns, &pod, &container, false) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    if headers.contains_key(header::UPGRADE) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            EXEC_NEEDS_WEBSOCKET.into(),
        );
    }
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "exec needs at least one command parameter".into(),
        );
    }
    let timeout = q
        .iter()
        .find(|(k, _)| k == "timeoutSeconds")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    match ctx.runtime.exec(&id, &command, timeout).await {
        Ok(out) => {
            let body = json!({
                "exitCode": out.exit_code,
                "stdout": String::from_utf8_lossy(&out.stdout),
                "stderr": String::from_utf8_lossy(&out.stderr),
            });
            (
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Err(e) if e.is_not_found() => status(StatusCode::NOT_FOUND, "NotFound", e.to_string()),
        Err(crate::RuntimeError::CommandNotFound(m)) => {
            status(StatusCode::BAD_REQUEST, "BadRequest", m)
        }
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        ),
    }
}

fn query_flag(q: &[(String, String)], k: &str) -> bool {
    q.iter()
        .any(|(key, v)| key == k && (v.is_empty() || v == "true" || v == "1"))
}

/// The running container `container` of a pod, or the error to answer.
async fn running_container(
    ctx: &NodeCtx,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<String, Box<Response>> {
    let id = container_id(ctx, ns, pod, container, false)?;
    match ctx.runtime.container_status(&id).await {
        Ok(s) if s.state == ContainerState::Running => Ok(id),
        Ok(_) => Err(Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("container \"{container}\" in pod \"{pod}\" is not running"),
        ))),
        Err(e) => Err(Box::new(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            e.to_string(),
        ))),
    }
}

/// `GET /exec/..` with a WebSocket upgrade: the command runs with its standard streams on
/// the channels of `v5.channel.k8s.io` (or v4).
async fn exec_stream(
    State(ctx): State<Arc<NodeCtx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let id = match running_container(&ctx, &ns, &pod, &container).await {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 command".into(),
        );
    }
    if !["stdin", "stdout", "stderr"]
        .iter()
        .any(|k| query_flag(&q, k))
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 of stdin, stdout, stderr".into(),
        );
    }
    let Ok(upgrade) = upgrade else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            EXEC_NEEDS_WEBSOCKET.into(),
        );
    };
    let Some(protocol) = channel_protocol(&upgrade) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            EXEC_NEEDS_WEBSOCKET.into(),
        );
    };
    let wanted = streaming::exec::Wanted {
        stdout: query_flag(&q, "stdout"),
        stderr: query_flag(&q, "stderr"),
        v5: protocol == streaming::exec::PROTOCOLS[0],
    };
    let request = ExecRequest {
        command: command.clone(),
        stdin: query_flag(&q, "stdin"),
        tty: query_flag(&q, "tty"),
    };
    let runtime = ctx.runtime.clone();
    upgrade
        .protocols([protocol])
        .on_upgrade(move |socket| async move {
            let tty = request.tty;
            let start = async move { runtime.exec_stream(&id, &request).await };
            streaming::exec::serve(socket, wanted, command, tty, start).await;
        })
}

/// The address of a pod on this node, or the error to answer.
fn pod_ip(ctx: &NodeCtx, ns: &str, pod: &str) -> Result<std::net::IpAddr, Box<Response>> {
    let Some(info) = ctx.find(ns, pod) else {
        return Err(Box::new(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pod \"{pod}\" not found on this node"),
        )));
    };
    let ip = lock(&info)
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .and_then(|ip| ip.parse().ok());
    ip.ok_or_else(|| {
        Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("pod \"{pod}\" has no IP address yet"),
        ))
    })
}

/// `GET /portforward/..` with a WebSocket upgrade: SPDY tunnelled in binary messages.
async fn port_forward_websocket(
    State(ctx): State<Arc<NodeCtx>>,
    Path((ns, pod)): Path<(String, String)>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ip = match pod_ip(&ctx, &ns, &pod) {
        Ok(ip) => ip,
        Err(r) => return *r,
    };
    let refuse = || {
        status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "port-forward needs a WebSocket with subprotocol {} or an upgrade to SPDY/3.1",
                streaming::SPDY_TUNNEL_PROTOCOL
            ),
        )
    };
    let Ok(upgrade) = upgrade else {
        return refuse();
    };
    let upgrade = upgrade.protocols([streaming::SPDY_TUNNEL_PROTOCOL]);
    if upgrade.selected_protocol().is_none() {
        return refuse();
    }
    let name = format!("{ns}/{pod}");
    upgrade.on_upgrade(move |socket| async move {
        let io = streaming::tunnel(socket);
        streaming::spdy::serve_port_forward(io, ip, name).await;
    })
}

/// `POST /portforward/..` with `Upgrade: SPDY/3.1` and `X-Stream-Protocol-Version:
/// portforward.k8s.io`.
async fn port_forward_spdy(
    State(ctx): State<Arc<NodeCtx>>,
    Path((ns, pod)): Path<(String, String)>,
    mut req: Request,
) -> Response {
    let ip = match pod_ip(&ctx, &ns, &pod) {
        Ok(ip) => ip,
        Err(r) => return *r,
    };
    let headers = req.headers();
    let spdy = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    let protocol = headers
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == streaming::PORT_FORWARD_PROTOCOL);
    if !spdy || !protocol {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "port-forward needs Upgrade: SPDY/3.1 with X-Stream-Protocol-Version: {}",
                streaming::PORT_FORWARD_PROTOCOL
            ),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let name = format!("{ns}/{pod}");
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                streaming::spdy::serve_port_forward(io, ip, name).await;
            }
            Err(e) => tracing::debug!(error = %e, "the SPDY upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(
        "x-stream-protocol-version",
        HeaderValue::from_static(streaming::PORT_FORWARD_PROTOCOL),
    );
    response
}

/// The channel protocol to answer a WebSocket upgrade with: the first of ours the client
/// asked for.
fn channel_protocol(upgrade: &WebSocketUpgrade) -> Option<&'static str> {
    streaming::exec::PROTOCOLS.iter().copied().find(|p| {
        upgrade.requested_protocols().any(|r| {
            r.to_str()
                .is_ok_and(|r| r.split(',').any(|x| x.trim() == *p))
        })
    })
}

/// `GET /attach/..` with a WebSocket upgrade: the container's output from now on (read
/// from its log, standard error included, on the stdout channel) until it ends. Its
/// standard input cannot be attached: containers run with theirs closed.
async fn attach_stream(
    State(ctx): State<Arc<NodeCtx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let id = match running_container(&ctx, &ns, &pod, &container).await {
        Ok(id) => id,
        Err(r) => return *r,
    };
    if query_flag(&q, "stdin") {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "attaching to a container's standard input is not supported: containers run with \
             their standard input closed (attach without -i, or exec -i)"
                .into(),
        );
    }
    if !query_flag(&q, "stdout") && !query_flag(&q, "stderr") {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 of stdin, stdout, stderr".into(),
        );
    }
    let Some((upgrade, protocol)) = upgrade
        .ok()
        .and_then(|u| channel_protocol(&u).map(|p| (u, p)))
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "attach streams only over a WebSocket (subprotocol v5.channel.k8s.io or \
             v4.channel.k8s.io)"
                .into(),
        );
    };
    let options = LogOptions {
        follow: true,
        tail_lines: Some(0),
        ..LogOptions::default()
    };
    let logs = ctx.runtime.logs(&id, &options).await;
    upgrade
        .protocols([protocol])
        .on_upgrade(move |socket| streaming::exec::serve_attach(socket, logs))
}
