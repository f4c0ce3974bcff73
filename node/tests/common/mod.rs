//! A small in-process cluster and a node agent on real processes, for the agent tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_core::client::{Api, Client};
use keelson_core::k8s_openapi::api::core::v1::{Namespace, Pod};
use keelson_node::{Agent, AgentConfig, LoopbackNetwork, NodeResources, ProcessRuntime, Runtime};
use keelson_store::MemStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const NS: &str = "test";

pub struct Cluster {
    pub server: Arc<ApiServer>,
    pub client: Client,
}

pub async fn cluster() -> Cluster {
    let server = ApiServer::new(
        Registry::new(Arc::new(MemStore::ephemeral())),
        resources::builtin(),
    );
    let client = server.client();
    let mut ns = Namespace::default();
    ns.metadata.name = Some(NS.into());
    Api::<Namespace>::all(client.clone())
        .create(&ns)
        .await
        .expect("create the namespace");
    Cluster { server, client }
}

/// Settings that make the agent quick in tests.
pub fn fast_config() -> AgentConfig {
    AgentConfig {
        sync_period: Duration::from_millis(100),
        lease_interval: Duration::from_millis(200),
        node_status_interval: Duration::from_millis(500),
        backoff_base: Duration::from_millis(300),
        backoff_max: Duration::from_secs(2),
        manifest_poll: Duration::from_millis(100),
        resources: NodeResources::fixed("4", "8Gi", 110),
        ..AgentConfig::default()
    }
}

/// A node agent on a ProcessRuntime under a temporary directory. Dropping it stops the
/// agent and kills every process it started.
pub struct Node {
    pub name: String,
    pub runtime: Arc<ProcessRuntime>,
    pub dir: PathBuf,
    pub port: Option<u16>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    keep: bool,
    _tmp: Option<tempfile::TempDir>,
}

impl Node {
    pub async fn start(client: &Client, name: &str) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let mut n = Node::start_in(client, name, dir, fast_config(), None).await;
        n._tmp = Some(tmp);
        n
    }

    pub async fn start_in(
        client: &Client,
        name: &str,
        dir: PathBuf,
        config: AgentConfig,
        manifests: Option<PathBuf>,
    ) -> Node {
        let runtime = Arc::new(ProcessRuntime::open(dir.join("runtime")).expect("runtime"));
        let network = Arc::new(LoopbackNetwork::open(dir.join("network"), 9).expect("network"));
        let mut b = Agent::builder(client.clone(), name)
            .runtime(runtime.clone() as Arc<dyn Runtime>)
            .network(network)
            .state_dir(&dir)
            .config(config)
            .serve(0);
        if let Some(m) = manifests {
            b = b.manifests(m);
        }
        let agent = Arc::new(b.build().expect("agent"));
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let a = agent.clone();
        let task = tokio::spawn(async move {
            a.run(async {
                let _ = rx.await;
            })
            .await
            .expect("agent run");
        });
        let port = tokio::time::timeout(Duration::from_secs(10), agent.port())
            .await
            .expect("the endpoint listens");
        Node {
            name: name.into(),
            runtime,
            dir,
            port,
            stop: Some(stop),
            task: Some(task),
            keep: false,
            _tmp: None,
        }
    }

    /// Stops the agent, leaving its containers running.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        // The caller wants the processes kept for the next agent.
        self.keep = true;
    }

    /// GET on the agent's endpoint over HTTP/1.0; returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path).await
    }

    pub async fn request(&self, method: &str, path: &str) -> (u16, String) {
        let port = self.port.expect("the agent serves");
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, body.to_owned())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if !self.keep {
            self.runtime.kill_all();
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn pod(name: &str, node: &str, spec: serde_json::Value) -> Pod {
    let mut v = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    });
    v["spec"]["nodeName"] = serde_json::json!(node);
    serde_json::from_value(v).expect("pod")
}

pub async fn get_pod(client: &Client, name: &str) -> Option<Pod> {
    Api::<Pod>::namespaced(client.clone(), NS)
        .get_opt(name)
        .await
        .expect("get pod")
}

pub fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

pub fn condition(p: &Pod, kind: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

pub fn container_status<'a>(
    p: &'a Pod,
    name: &str,
) -> Option<&'a keelson_core::k8s_openapi::api::core::v1::ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
}

pub fn waiting_reason(p: &Pod, name: &str) -> Option<String> {
    container_status(p, name)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

/// Whether a process is alive (not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim().to_owned()))
        .is_some_and(|r| !r.starts_with('Z'))
}
