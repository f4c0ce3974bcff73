//! The conformance suite every [`Proxy`] runs.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use keelson_proxy::{conformance, Proxy, UserspaceProxy};
//!
//! conformance::run(|| Arc::new(UserspaceProxy::new()) as Arc<dyn Proxy>).await;
//! # }
//! ```
//!
//! Each check gets a fresh proxy from the factory, serves frontends on free ports of
//! 127.0.0.1 with backends the suite runs itself (small TCP servers on 127.0.0.1), and
//! panics with a message naming the contract that was broken. It needs a multi-threaded
//! or current-thread tokio runtime with I/O and time enabled, and real time (not paused).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::proxy::{Frontend, Protocol, Proxy};

/// How long the suite waits for anything.
const WAIT: Duration = Duration::from_secs(10);

/// Runs every check against proxies from `make`.
///
/// # Panics
/// When a proxy breaks a contract (the message says which).
pub async fn run<F>(make: F)
where
    F: Fn() -> Arc<dyn Proxy>,
{
    spreads_connections_over_the_backends(make()).await;
    serving_again_replaces_the_backends_and_keeps_open_connections(make()).await;
    skips_a_backend_that_refuses(make()).await;
    without_backends_clients_are_disconnected(make()).await;
    stop_closes_the_listener_and_cuts_connections(make()).await;
    an_address_in_use_is_an_error(make()).await;
}

/// A backend that writes its name to each connection and then echoes what it reads.
struct Backend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn backend(name: &'static str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("conformance: bind a backend");
    let addr = listener.local_addr().expect("conformance: backend address");
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut s, _)) = listener.accept().await {
            conns.spawn(async move {
                if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Backend { addr, task }
}

/// A frontend on a port of 127.0.0.1 that was free a moment ago.
fn free_frontend() -> Frontend {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("conformance: find a free port");
    Frontend::new(addr, Protocol::Tcp)
}

/// A port on 127.0.0.1 where nothing listens.
fn dead_backend() -> SocketAddr {
    free_frontend().addr
}

/// Connects and reads the backend's greeting line.
async fn greeting(stream: &mut TcpStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut byte)).await {
            Ok(Ok(1)) if byte[0] == b'\n' => return String::from_utf8(line).ok(),
            Ok(Ok(1)) => line.push(byte[0]),
            _ => return None,
        }
    }
}

/// Which backend a new connection to `frontend` reaches (`None`: disconnected).
async fn reached(frontend: &Frontend) -> Option<String> {
    let mut s = TcpStream::connect(frontend.addr).await.ok()?;
    greeting(&mut s).await
}

/// Whether the stream is closed by the other side within the suite's wait.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn spreads_connections_over_the_backends(proxy: Arc<dyn Proxy>) {
    let (a, b) = (backend("a").await, backend("b").await);
    let frontend = free_frontend();
    proxy
        .serve(frontend, vec![a.addr, b.addr])
        .await
        .expect("conformance: serve a free frontend");
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(reached(&frontend).await.unwrap_or_default());
    }
    seen.sort();
    assert_eq!(
        seen,
        ["a", "a", "b", "b"],
        "conformance: four connections go to two backends in turn"
    );
    assert_eq!(
        proxy.served().get(&frontend),
        Some(&vec![a.addr, b.addr]),
        "conformance: served() lists the frontend with its backends"
    );
    proxy.stop(&frontend).await;
}

async fn serving_again_replaces_the_backends_and_keeps_open_connections(proxy: Arc<dyn Proxy>) {
    let (a, b) = (backend("a").await, backend("b").await);
    let frontend = free_frontend();
    proxy.serve(frontend, vec![a.addr]).await.expect("serve");
    let mut open = TcpStream::connect(frontend.addr)
        .await
        .expect("conformance: connect to a served frontend");
    assert_eq!(greeting(&mut open).await.as_deref(), Some("a"));
    proxy
        .serve(frontend, vec![b.addr])
        .await
        .expect("conformance: serving a served frontend again is not an error");
    assert_eq!(
        reached(&frontend).await.as_deref(),
        Some("b"),
        "conformance: new connections use the new backends"
    );
    open.write_all(b"still here\n").await.expect("write");
    assert_eq!(
        greeting(&mut open).await.as_deref(),
        Some("still here"),
        "conformance: a connection opened before the change keeps working"
    );
    assert_eq!(
        proxy.served().len(),
        1,
        "conformance: one frontend, served once"
    );
    proxy.stop(&frontend).await;
}

async fn skips_a_backend_that_refuses(proxy: Arc<dyn Proxy>) {
    let a = backend("a").await;
    let frontend = free_frontend();
    proxy
        .serve(frontend, vec![dead_backend(), a.addr])
        .await
        .expect("serve");
    for _ in 0..3 {
        assert_eq!(
            reached(&frontend).await.as_deref(),
            Some("a"),
            "conformance: a backend that refuses connections is skipped"
        );
    }
    proxy.stop(&frontend).await;
}

async fn without_backends_clients_are_disconnected(proxy: Arc<dyn Proxy>) {
    let frontend = free_frontend();
    proxy.serve(frontend, Vec::new()).await.expect("serve");
    if let Ok(mut s) = TcpStream::connect(frontend.addr).await {
        assert!(
            closed(&mut s).await,
            "conformance: with no backends, a client is disconnected at once"
        );
    }
    proxy.stop(&frontend).await;
}

async fn stop_closes_the_listener_and_cuts_connections(proxy: Arc<dyn Proxy>) {
    let a = backend("a").await;
    let frontend = free_frontend();
    proxy.serve(frontend, vec![a.addr]).await.expect("serve");
    let mut open = TcpStream::connect(frontend.addr).await.expect("connect");
    assert_eq!(greeting(&mut open).await.as_deref(), Some("a"));
    proxy.stop(&frontend).await;
    assert!(
        closed(&mut open).await,
        "conformance: stop cuts the frontend's open connections"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(frontend.addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "conformance: a stopped frontend no longer accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        proxy.served().is_empty(),
        "conformance: a stopped frontend is not listed"
    );
    // Stopping it again is harmless.
    proxy.stop(&frontend).await;
}

async fn an_address_in_use_is_an_error(proxy: Arc<dyn Proxy>) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let frontend = Frontend::new(taken.local_addr().expect("addr"), Protocol::Tcp);
    let err = proxy
        .serve(frontend, Vec::new())
        .await
        .expect_err("conformance: serving an address another listener holds fails");
    assert!(
        err.is_addr_in_use(),
        "conformance: the error says the address is in use: {err}"
    );
    assert!(
        proxy.served().is_empty(),
        "conformance: a frontend that failed is not served"
    );
}
