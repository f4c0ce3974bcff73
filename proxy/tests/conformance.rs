//! The shared Proxy conformance suite, run against every proxy Keelson ships.

use std::sync::Arc;

use keelson_proxy::{conformance, Proxy, UserspaceProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_proxy_passes_the_conformance_suite() {
    conformance::run(|| Arc::new(UserspaceProxy::new()) as Arc<dyn Proxy>).await;
}

#[tokio::test]
async fn a_shut_down_proxy_serves_nothing_and_refuses_to_serve() {
    let proxy = UserspaceProxy::new();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let frontend = keelson_proxy::Frontend::new(addr, keelson_proxy::Protocol::Tcp);
    proxy.serve(frontend, Vec::new()).await.expect("serve");
    assert_eq!(proxy.open_connections(&frontend), Some(0));
    proxy.shutdown();
    assert!(proxy.served().is_empty());
    let err = proxy
        .serve(frontend, Vec::new())
        .await
        .expect_err("serving after shutdown");
    assert!(err.to_string().contains("shut down"), "{err}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still listening");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
