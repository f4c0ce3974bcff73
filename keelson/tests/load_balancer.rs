//! End to end: a `type: LoadBalancer` Service of `keelson up`, made and removed with
//! kubectl, answering on its external IP.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{kubectl_available, up, Cluster};

/// Polls `kubectl args` until its output satisfies `done` (at most 60 s: every test
/// file runs whole clusters, all at once on a 2-core machine).
fn eventually(c: &Cluster, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = c.kubectl(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {args:?} never got there: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An HTTP/1.0 GET of `/` on `addr`: the body, or why there is none.
fn http_get(addr: SocketAddr) -> Result<String, String> {
    let mut conn =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
    Ok(body)
}

#[test]
fn kubectl_expose_type_load_balancer_serves_a_deployment_on_its_external_ip() {
    if !kubectl_available() {
        return;
    }
    let c = up(false);
    eventually(&c, &["get", "nodes"], |n| {
        n.contains("node-1") && n.contains(" Ready")
    });
    // Two pods, each serving its own name over HTTP on its own address.
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: python
        command: ["sh", "-c", "echo \"$HOSTNAME\" > index.html; exec python3 -u -m http.server 8080 --bind \"$POD_IP\""]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
"#;
    let applied = c.kubectl_stdin(&["apply", "-f", "-"], Some(manifest));
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let rolled = c.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert!(rolled.contains("successfully rolled out"), "{rolled}");
    let pods = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let mut pods: Vec<&str> = pods.split_whitespace().collect();
    pods.sort();
    assert_eq!(pods.len(), 2, "{pods:?}");

    let port = common::free_port().to_string();
    let out = c.ok(&[
        "expose",
        "deployment",
        "web",
        "--type=LoadBalancer",
        &format!("--port={port}"),
        "--target-port=8080",
    ]);
    assert!(out.contains("service/web exposed"), "{out}");
    // EXTERNAL-IP goes from <pending> to an address of the local cloud's pool.
    let table = eventually(&c, &["get", "svc", "web"], |t| {
        t.lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(3))
            .is_some_and(|ip| ip.starts_with("127.0."))
    });
    let ip = table
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or_default()
        .to_owned();
    assert!(table.contains(&format!("{port}:")), "{table}");
    let addr: SocketAddr = format!("{ip}:{port}").parse().expect("an address");

    // Connections are spread over both pods.
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 2 {
        match http_get(addr) {
            Ok(name) if !seen.contains(&name) => seen.push(name),
            Ok(_) => {}
            Err(e) => assert!(Instant::now() < deadline, "{addr} does not answer: {e}"),
        }
        assert!(Instant::now() < deadline, "only {seen:?} answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    seen.sort();
    assert_eq!(seen, pods);
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web,involvedObject.kind=Service",
    ]);
    assert!(
        events.contains("EnsuringLoadBalancer") && events.contains("EnsuredLoadBalancer"),
        "{events}"
    );
    let finalizers = c.ok(&["get", "svc", "web", "-o", "jsonpath={.metadata.finalizers}"]);
    assert!(
        finalizers.contains("service.kubernetes.io/load-balancer-cleanup"),
        "{finalizers}"
    );

    // Deleted: the load balancer goes first, then the Service; the address stops answering.
    let out = c.ok(&["delete", "svc", "web", "--timeout=60s"]);
    assert!(out.contains("service \"web\" deleted"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
        assert!(Instant::now() < deadline, "{addr} still answers");
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ]);
    assert!(events.contains("DeletedLoadBalancer"), "{events}");
}
