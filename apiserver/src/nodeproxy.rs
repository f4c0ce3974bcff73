//! The subresources a node agent answers: `pods/log`, `pods/exec`, `pods/attach` and
//! `pods/portforward`,
//! proxied to the agent of the pod's node, as kube-apiserver proxies them to the kubelet.
//!
//! The agent publishes its endpoint in its Node: the address (`InternalIP`, else the first
//! in `status.addresses`) and `status.daemonEndpoints.kubeletEndpoint.Port`. Keelson's
//! agent (`keelson-node`) serves plain HTTP on 127.0.0.1 with kubelet's paths:
//! `GET /containerLogs/{namespace}/{pod}/{container}?follow=..&previous=..&tailLines=..
//! &sinceSeconds=..&sinceTime=..&timestamps=..&limitBytes=..`, answering `text/plain` (a
//! chunked stream with `follow`). The server checks the request against the pod first, with
//! Kubernetes' errors; the agent's answer (its text, or its `Status` and code) is passed on.
//!
//! `exec`, `attach` and `portforward` are upgraded connections (a WebSocket, or SPDY/3.1): the
//! server checks the request, sends it with its upgrade headers to the agent's
//! `/exec/{namespace}/{pod}/{container}?..` (`/attach/..` alike) or
//! `/portforward/{namespace}/{pod}`, passes
//! the agent's `101 Switching Protocols` on to the client and then splices the two
//! connections byte for byte, as kube-apiserver does with the kubelet. The protocols
//! (`v5.channel.k8s.io`, SPDY) are the agent's business.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use keelson_core::{Error, FieldError};
use serde_json::Value;

use crate::registry::Registry;
use crate::resources::ServedResource;

/// The query parameters of `pods/log` passed on to the agent.
const LOG_PARAMS: &[&str] = &[
    "follow",
    "previous",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "timestamps",
    "limitBytes",
];

/// How long connecting to an agent may take.
const CONNECT: Duration = Duration::from_secs(5);

/// `GET pods/{name}/log`: the container's log, from the agent of the pod's node.
///
/// # Errors
/// 404 for a missing pod; 400 for a pod with no node yet, or a container that is missing,
/// unknown or must be named; 422 for a negative count; 500 when the agent cannot be reached.
pub(crate) async fn pod_log(
    registry: &Registry,
    pods: &ServedResource,
    namespace: Option<&str>,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response, Error> {
    check_counts(&pods.rt, name, query)?;
    let pod = registry.get_shared(pods, namespace, name).await?;
    let container = container(&pod, name, query.get("container").map(String::as_str))?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::bad_request(format!("pod {name} does not have a host assigned")))?;
    let (address, port) = agent_endpoint(registry, node_name).await?;
    let mut path = format!(
        "/containerLogs/{}/{name}/{container}",
        namespace.unwrap_or_default()
    );
    let passed: Vec<(&str, &str)> = LOG_PARAMS
        .iter()
        .filter_map(|p| query.get(*p).map(|v| (*p, v.as_str())))
        .collect();
    if !passed.is_empty() {
        path.push('?');
        path.push_str(&serde_urlencoded::to_string(&passed).map_err(Error::internal)?);
    }
    get_from_agent(&address, port, &path).await
}

/// The request headers that make an upgrade, passed on to the agent.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// The agent's answer headers passed back with its `101`.
const UPGRADED_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// `GET` or `POST` `pods/{name}/exec`, `pods/{name}/attach` or `pods/{name}/portforward`: an
/// upgraded connection to the agent of the pod's node.
///
/// # Errors
/// 404 for a missing pod; 400 for a pod with no node, a missing or unknown container, no
/// command, no stream asked for, or a pod that has ended; 500 when the agent cannot be
/// reached.
pub(crate) async fn pod_stream(
    registry: &Registry,
    pods: &ServedResource,
    namespace: Option<&str>,
    name: &str,
    subresource: &str,
    query: &HashMap<String, String>,
    mut req: Request<Body>,
) -> Result<Response, Error> {
    let pod = registry.get_shared(pods, namespace, name).await?;
    let ns = namespace.unwrap_or_default();
    let path = if subresource == "portforward" {
        format!("/portforward/{ns}/{name}")
    } else {
        if subresource == "exec" && !query.contains_key("command") {
            return Err(Error::bad_request("you must specify at least 1 command"));
        }
        if !["stdin", "stdout", "stderr"]
            .iter()
            .any(|k| query.get(*k).is_some_and(|v| v == "true" || v == "1"))
        {
            return Err(Error::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        let container = container(&pod, name, query.get("container").map(String::as_str))?;
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return Err(Error::bad_request(format!(
                "cannot {subresource} into a container in a completed pod; current phase is {phase}"
            )));
        }
        format!("/{subresource}/{ns}/{name}/{container}")
    };
    let path = match req.uri().query() {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path,
    };
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::bad_request(format!("pod {name} does not have a host assigned")))?;
    let (address, port) = agent_endpoint(registry, node_name).await?;
    let host = host_port(&address, port);
    let unreachable =
        |e: &dyn std::fmt::Display| Error::internal(format!("error dialing backend: {e}"));
    let stream = tokio::time::timeout(CONNECT, tokio::net::TcpStream::connect(&host))
        .await
        .map_err(|_| unreachable(&format!("dial tcp {host}: i/o timeout")))?
        .map_err(|e| unreachable(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let mut forward = Request::builder()
        .method(req.method().clone())
        .uri(&path)
        .header(header::HOST, &host);
    for name in UPGRADE_HEADERS {
        for value in req.headers().get_all(*name) {
            forward = forward.header(*name, value);
        }
    }
    let forward = forward.body(Body::empty()).map_err(Error::internal)?;
    let client_side = hyper::upgrade::on(&mut req);
    let mut answer = sender
        .send_request(forward)
        .await
        .map_err(|e| unreachable(&e))?;
    if answer.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = StatusCode::from_u16(answer.status().as_u16())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let content_type = answer
            .headers()
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("text/plain"));
        let mut response = (status, Body::new(answer.into_body())).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
        return Ok(response);
    }
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    for name in UPGRADED_HEADERS {
        for value in answer.headers().get_all(*name) {
            response.headers_mut().append(*name, value.clone());
        }
    }
    let agent_side = hyper::upgrade::on(&mut answer);
    tokio::spawn(async move {
        let (client, agent) = match tokio::join!(client_side, agent_side) {
            (Ok(c), Ok(a)) => (c, a),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "an upgraded pod stream failed to start");
                return;
            }
        };
        let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
        let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
    });
    Ok(response)
}

fn host_port(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// `tailLines`, `sinceSeconds` and `limitBytes` are checked as Kubernetes checks
/// PodLogOptions: not negative (`sinceSeconds` and `limitBytes` at least 1).
fn check_counts(
    rt: &keelson_core::ResourceType,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<(), Error> {
    let mut causes = Vec::new();
    for (param, min) in [("tailLines", 0), ("sinceSeconds", 1), ("limitBytes", 1)] {
        let Some(raw) = query.get(param) else {
            continue;
        };
        match raw.parse::<i64>() {
            Ok(n) if n >= min => {}
            Ok(n) => causes.push(FieldError::invalid(
                param,
                n,
                &format!("must be greater than or equal to {min}"),
            )),
            Err(_) => {
                return Err(Error::bad_request(format!(
                    "invalid value for {param}: {raw:?} is not an integer"
                )))
            }
        }
    }
    if query.contains_key("sinceSeconds") && query.contains_key("sinceTime") {
        causes.push(FieldError::forbidden(
            "sinceTime",
            "at most one of `sinceTime` or `sinceSeconds` may be specified",
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(rt, name, causes))
    }
}

/// The container a log request is for: the one named, or the pod's only container.
fn container<'p>(pod: &'p Value, name: &str, wanted: Option<&str>) -> Result<&'p str, Error> {
    let names = |list: &str| -> Vec<&'p str> {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .map(|cs| cs.iter().filter_map(|c| c.get("name")?.as_str()).collect())
            .unwrap_or_default()
    };
    let (containers, init) = (names("containers"), names("initContainers"));
    let ephemeral = names("ephemeralContainers");
    match wanted.filter(|w| !w.is_empty()) {
        Some(w) => containers
            .iter()
            .chain(&init)
            .chain(&ephemeral)
            .find(|c| **c == w)
            .copied()
            .ok_or_else(|| {
                Error::bad_request(format!("container {w} is not valid for pod {name}"))
            }),
        None if containers.len() == 1 => Ok(containers[0]),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(Error::bad_request(message))
        }
    }
}

/// Where the agent of `node` listens.
async fn agent_endpoint(registry: &Registry, node: &str) -> Result<(String, u16), Error> {
    static NODES: std::sync::OnceLock<ServedResource> = std::sync::OnceLock::new();
    let nodes = NODES.get_or_init(ServedResource::of::<k8s_openapi::api::core::v1::Node>);
    let obj = registry.get_shared(nodes, None, node).await?;
    let port = obj
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            Error::bad_request(format!(
                "node {node} has no agent endpoint (status.daemonEndpoints.kubeletEndpoint.Port)"
            ))
        })?;
    let addresses = obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let address_of = |kind: Option<&str>| {
        addresses.iter().find_map(|a| {
            let matches = kind.is_none_or(|k| a.get("type").and_then(Value::as_str) == Some(k));
            matches
                .then(|| a.get("address")?.as_str().map(str::to_owned))
                .flatten()
        })
    };
    let address = address_of(Some("InternalIP"))
        .or_else(|| address_of(None))
        .ok_or_else(|| Error::bad_request(format!("node {node} has no address")))?;
    Ok((address, port))
}

/// GETs `path` from the agent and passes its answer on: the body streamed, its status code
/// kept.
async fn get_from_agent(address: &str, port: u16, path: &str) -> Result<Response, Error> {
    let host = host_port(address, port);
    let unreachable =
        |e: &dyn std::fmt::Display| Error::internal(format!("Get \"http://{host}{path}\": {e}"));
    let stream = tokio::time::timeout(CONNECT, tokio::net::TcpStream::connect(&host))
        .await
        .map_err(|_| unreachable(&"dial tcp: i/o timeout"))?
        .map_err(|e| unreachable(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get(path)
        .header(header::HOST, &host)
        .body(Body::empty())
        .map_err(Error::internal)?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(&e))?;
    let status =
        StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("text/plain"));
    let mut response = (status, Body::new(answer.into_body())).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_named_or_the_only_one() {
        let one = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(container(&one, "p", None).expect("only one"), "a");
        assert_eq!(container(&one, "p", Some("a")).expect("named"), "a");
        let err = container(&one, "p", Some("b")).expect_err("unknown");
        assert_eq!(err.message(), "container b is not valid for pod p");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}],
            "initContainers": [{"name": "i"}]}});
        let err = container(&two, "p", None).expect_err("must name one");
        assert_eq!(err.code(), 400);
        assert_eq!(
            err.message(),
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(container(&two, "p", Some("i")).expect("init"), "i");
    }

    #[test]
    fn counts_are_checked_as_kubernetes_does() {
        let rt = keelson_core::ResourceType::of::<k8s_openapi::api::core::v1::Pod>();
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(check_counts(&rt, "p", &q(&[("tailLines", "0"), ("limitBytes", "10")])).is_ok());
        let err = check_counts(&rt, "p", &q(&[("tailLines", "-1")])).expect_err("negative");
        assert_eq!(err.code(), 422);
        let err = check_counts(&rt, "p", &q(&[("sinceSeconds", "0")])).expect_err("zero");
        assert_eq!(err.code(), 422);
        let err = check_counts(&rt, "p", &q(&[("tailLines", "x")])).expect_err("not a number");
        assert_eq!(err.code(), 400);
        let both = q(&[("sinceSeconds", "5"), ("sinceTime", "2026-01-01T00:00:00Z")]);
        assert_eq!(check_counts(&rt, "p", &both).expect_err("both").code(), 422);
    }
}
