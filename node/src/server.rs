//! The kubelet-like HTTP endpoint on 127.0.0.1 (see the crate docs for the contract).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use serde_json::json;

use crate::agent::{lock, NodeCtx};
use crate::error::Error;
use crate::runtime::logs::from_timestamp;
use crate::runtime::LogOptions;

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
        .route("/exec/{namespace}/{pod}/{container}", post(exec))
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

async fn exec(
    State(ctx): State<Arc<NodeCtx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let id = match container_id(&ctx, &ns, &pod, &container, false) {
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
