//! Probes and lifecycle handlers: exec, httpGet, tcpSocket (and sleep for hooks).

use std::time::Duration;

use keelson_core::k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use keelson_core::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::Runtime;

/// A probe's or handler's outcome.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure(String),
}

fn port_of(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("port {p} is out of range")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("port {name:?} is not a named port of the container"))
        }
    }
}

async fn exec(rt: &dyn Runtime, id: &str, action: &ExecAction, timeout: Duration) -> Outcome {
    let cmd = action.command.clone().unwrap_or_default();
    match rt.exec(id, &cmd, Some(timeout)).await {
        Ok(out) if out.exit_code == 0 => Outcome::Success,
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Outcome::Failure(format!(
                "command {cmd:?} exited with {}: {}",
                out.exit_code,
                text.trim()
            ))
        }
        Err(e) => Outcome::Failure(format!("command {cmd:?} failed: {e}")),
    }
}

async fn http_get(
    action: &HTTPGetAction,
    container: &Container,
    pod_ip: &str,
    timeout: Duration,
) -> Outcome {
    let port = match port_of(&action.port, container) {
        Ok(p) => p,
        Err(e) => return Outcome::Failure(e),
    };
    let host = action
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod_ip.to_owned());
    let path = action.path.clone().unwrap_or_else(|| "/".into());
    let scheme = action.scheme.as_deref().unwrap_or("HTTP");
    if scheme.eq_ignore_ascii_case("HTTPS") {
        return Outcome::Failure("HTTPS probes are not supported by this node".into());
    }
    let url = format!("http://{host}:{port}{path}");
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for h in action.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        let mut buf = vec![0u8; 1024];
        let mut got = 0;
        while got < 16 {
            let n = stream
                .read(&mut buf[got..])
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let head = String::from_utf8_lossy(&buf[..got]).into_owned();
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
        Ok::<u16, String>(code)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(code)) if (200..400).contains(&code) => Outcome::Success,
        Ok(Ok(code)) => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
        Ok(Err(e)) => Outcome::Failure(e),
        Err(_) => Outcome::Failure(format!("Get \"{url}\": timed out after {timeout:?}")),
    }
}

async fn tcp(
    action: &TCPSocketAction,
    container: &Container,
    pod_ip: &str,
    timeout: Duration,
) -> Outcome {
    let port = match port_of(&action.port, container) {
        Ok(p) => p,
        Err(e) => return Outcome::Failure(e),
    };
    let host = action
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod_ip.to_owned());
    match tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {host}:{port}: {e}")),
        Err(_) => Outcome::Failure(format!("dial tcp {host}:{port}: timed out")),
    }
}

/// Runs a probe once.
pub(crate) async fn probe(
    rt: &dyn Runtime,
    id: &str,
    probe: &Probe,
    container: &Container,
    pod_ip: &str,
) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &probe.exec {
        exec(rt, id, e, timeout).await
    } else if let Some(h) = &probe.http_get {
        http_get(h, container, pod_ip, timeout).await
    } else if let Some(t) = &probe.tcp_socket {
        tcp(t, container, pod_ip, timeout).await
    } else if probe.grpc.is_some() {
        Outcome::Failure("gRPC probes are not supported by this node".into())
    } else {
        Outcome::Failure("the probe has no handler".into())
    }
}

/// Runs a lifecycle hook once, within `timeout`.
pub(crate) async fn hook(
    rt: &dyn Runtime,
    id: &str,
    handler: &LifecycleHandler,
    container: &Container,
    pod_ip: &str,
    timeout: Duration,
) -> Outcome {
    if let Some(e) = &handler.exec {
        exec(rt, id, e, timeout).await
    } else if let Some(h) = &handler.http_get {
        http_get(h, container, pod_ip, timeout).await
    } else if let Some(t) = &handler.tcp_socket {
        tcp(t, container, pod_ip, timeout).await
    } else if let Some(s) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(timeout)).await;
        Outcome::Success
    } else {
        Outcome::Failure("the hook has no handler".into())
    }
}
