//! The agent: node registration and heartbeats, the pod manager, the pod watch.

mod env;
pub(crate) mod events;
pub(crate) mod node;
mod pod_worker;
mod probes;
pub(crate) mod tokens;
mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use keelson_core::client::{Api, Client, Event, ListParams, WatchParams};
use keelson_core::k8s_openapi::api::core::v1::{Pod, PodStatus, Taint};
use tokio::sync::watch;

use crate::error::Error;
use crate::network::{NetworkPlugin, PodNetworkRef};
use crate::runtime::{Runtime, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};

pub(crate) use node::{micro_time, NodeReporter};
pub(crate) use pod_worker::PodWorker;

/// The annotation that marks a mirror pod (the API's view of a static pod).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The resources a node offers.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeResources {
    /// CPUs (`"4"`, `"1500m"`).
    pub cpu: String,
    /// Memory (`"8Gi"`).
    pub memory: String,
    /// Pods it runs at most.
    pub pods: u32,
    /// Ephemeral storage (`"100Gi"`).
    pub ephemeral_storage: String,
}

impl NodeResources {
    /// The host's CPUs and memory (`/proc/meminfo`), 110 pods, and the free space of `/`.
    pub fn from_host() -> NodeResources {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(1 << 20);
        let disk = rustix::fs::statvfs("/")
            .map(|s| s.f_blocks.saturating_mul(s.f_frsize))
            .unwrap_or(10 << 30);
        NodeResources {
            cpu: cpus.to_string(),
            memory: format!("{mem_kib}Ki"),
            pods: 110,
            ephemeral_storage: disk.to_string(),
        }
    }

    /// A fixed size, as simulated nodes report.
    pub fn fixed(cpu: &str, memory: &str, pods: u32) -> NodeResources {
        NodeResources {
            cpu: cpu.to_owned(),
            memory: memory.to_owned(),
            pods,
            ephemeral_storage: "100Gi".to_owned(),
        }
    }
}

/// How the agent behaves; the defaults are Kubernetes' kubelet defaults.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// How often each pod worker looks at its containers (default 1 s).
    pub sync_period: Duration,
    /// How often the node's Lease is renewed (default 10 s).
    pub lease_interval: Duration,
    /// The Lease's `leaseDurationSeconds` (default 40).
    pub lease_duration_seconds: i32,
    /// How often node conditions are computed (default 10 s); the status is written
    /// when they change, and at least every `node_status_report_interval`.
    pub node_status_interval: Duration,
    /// See `node_status_interval` (default 5 min).
    pub node_status_report_interval: Duration,
    /// The first crash-loop back-off (default 10 s), doubled per restart.
    pub backoff_base: Duration,
    /// The longest back-off (default 5 min).
    pub backoff_max: Duration,
    /// A container that ran this long resets its back-off (default 10 min).
    pub backoff_reset: Duration,
    /// The node's capacity (default: the host's).
    pub resources: NodeResources,
    /// Extra labels on the Node.
    pub labels: BTreeMap<String, String>,
    /// Taints on the Node.
    pub taints: Vec<Taint>,
    /// Check the host for memory, disk and PID pressure (default true; simulated nodes
    /// report none).
    pub host_conditions: bool,
    /// MemoryPressure when the host has less available memory than this (default 100 MiB).
    pub memory_pressure_bytes: u64,
    /// DiskPressure when the state directory's file system has less free than this
    /// fraction (default 0.10).
    pub disk_pressure_fraction: f64,
    /// How often the manifest directory is read (default 1 s).
    pub manifest_poll: Duration,
    /// How often a running pod's volumes made from objects (configMap, secret,
    /// downwardAPI, projected) are written again from the objects' current state
    /// (default 1 min, kubelet's sync frequency). A projected service account token is
    /// also asked for again when 80% of its lifetime (or 24 h) has passed, whichever
    /// comes first.
    pub volume_refresh_period: Duration,
    /// Where the node's pods reach the API server: given to their containers as
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` (with the rest of a
    /// Service's variables, named `kubernetes`), which in-cluster clients read, when the
    /// cluster has no `kubernetes` Service in `default` (kubelet takes them from that
    /// Service). Default: none.
    pub api_server: Option<SocketAddr>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            sync_period: Duration::from_secs(1),
            lease_interval: Duration::from_secs(10),
            lease_duration_seconds: 40,
            node_status_interval: Duration::from_secs(10),
            node_status_report_interval: Duration::from_secs(300),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            backoff_reset: Duration::from_secs(600),
            resources: NodeResources::from_host(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            host_conditions: true,
            memory_pressure_bytes: 100 << 20,
            disk_pressure_fraction: 0.10,
            manifest_poll: Duration::from_secs(1),
            volume_refresh_period: Duration::from_secs(60),
            api_server: None,
        }
    }
}

/// What a running pod worker publishes about its pod (for the HTTP endpoint, static pods
/// and tests).
#[derive(Clone, Debug, Default)]
pub(crate) struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// Container name → (current id, previous id).
    pub containers: HashMap<String, (Option<String>, Option<String>)>,
    /// The last status the worker computed.
    pub status: Option<PodStatus>,
    /// The pod as last seen.
    pub pod: Option<Arc<Pod>>,
    /// Write the status even if it did not change (its mirror pod was recreated).
    pub force_publish: bool,
}

/// What the worker is told about its pod.
#[derive(Clone, Debug)]
pub(crate) struct Desired {
    pub pod: Arc<Pod>,
    /// The pod left the API (or its manifest was removed): stop it.
    pub removed: bool,
    /// A static pod: its status goes to the mirror pod, and it is never deleted from
    /// the API by the worker.
    pub is_static: bool,
}

pub(crate) struct PodHandle {
    tx: watch::Sender<Desired>,
    pub info: Arc<Mutex<PodInfo>>,
    task: tokio::task::AbortHandle,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything a node's workers share.
pub(crate) struct NodeCtx {
    pub client: Client,
    pub node_name: String,
    pub runtime: Arc<dyn Runtime>,
    pub network: Arc<dyn NetworkPlugin>,
    pub config: Arc<AgentConfig>,
    /// Where pods' volumes live (`None`: volumes are not materialised — simulated nodes).
    pub state_dir: Option<PathBuf>,
    pub host_ip: String,
    pub pods: Mutex<HashMap<String, PodHandle>>,
    /// Service account tokens of projected volumes.
    pub tokens: tokens::TokenManager,
    /// Events about the pods.
    pub events: events::Events,
}

impl NodeCtx {
    /// Starts or updates the worker for a pod.
    pub(crate) fn upsert(self: &Arc<Self>, pod: Arc<Pod>, is_static: bool) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let mut pods = lock(&self.pods);
        if let Some(h) = pods.get(&uid) {
            h.tx.send_replace(Desired {
                pod,
                removed: false,
                is_static,
            });
            return;
        }
        let desired = Desired {
            pod: pod.clone(),
            removed: false,
            is_static,
        };
        let (tx, rx) = watch::channel(desired);
        let info = Arc::new(Mutex::new(PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            pod: Some(pod),
            ..PodInfo::default()
        }));
        let worker = PodWorker::new(self.clone(), uid.clone(), rx, info.clone());
        let task = tokio::spawn(worker.run()).abort_handle();
        pods.insert(uid, PodHandle { tx, info, task });
    }

    /// Tells a pod's worker that the pod is gone.
    pub(crate) fn remove(&self, uid: &str) {
        if let Some(h) = lock(&self.pods).get(uid) {
            h.tx.send_modify(|d| d.removed = true);
        }
    }

    /// Makes a pod's worker look again (and rewrite its status).
    pub(crate) fn resend(&self, uid: &str) {
        if let Some(h) = lock(&self.pods).get(uid) {
            lock(&h.info).force_publish = true;
            h.tx.send_modify(|_| {});
        }
    }

    /// The uids of the pods with workers.
    pub(crate) fn uids(&self) -> HashSet<String> {
        lock(&self.pods).keys().cloned().collect()
    }

    /// Called by a worker when it is done.
    pub(crate) fn forget(&self, uid: &str) {
        lock(&self.pods).remove(uid);
    }

    /// The info of the pod named `namespace/name`.
    pub(crate) fn find(&self, namespace: &str, name: &str) -> Option<Arc<Mutex<PodInfo>>> {
        lock(&self.pods)
            .values()
            .find(|h| {
                let i = lock(&h.info);
                i.namespace == namespace && i.name == name
            })
            .map(|h| h.info.clone())
    }

    /// Stops every worker without touching its containers (the agent is going away;
    /// a new one adopts them).
    pub(crate) fn abort_all(&self) {
        for h in lock(&self.pods).values() {
            h.task.abort();
        }
        lock(&self.pods).clear();
    }

    /// Applies one event of the pod watch.
    pub(crate) fn on_event(self: &Arc<Self>, event: Event<Pod>) {
        match event {
            Event::Added(p) | Event::Modified(p) => {
                if is_mirror(&p) {
                    return;
                }
                self.upsert(Arc::new(p), false)
            }
            Event::Deleted(p) => {
                if let Some(uid) = &p.metadata.uid {
                    if !is_mirror(&p) {
                        self.remove(uid)
                    }
                }
            }
            Event::Bookmark { .. } => {}
        }
    }

    /// Applies a full list: pods missing from it are gone.
    pub(crate) fn on_list(self: &Arc<Self>, pods: Vec<Pod>, static_uids: &HashSet<String>) {
        let mut seen = HashSet::new();
        for p in pods {
            if is_mirror(&p) {
                continue;
            }
            if let Some(uid) = &p.metadata.uid {
                seen.insert(uid.clone());
            }
            self.upsert(Arc::new(p), false);
        }
        for uid in self.uids() {
            if !seen.contains(&uid) && !static_uids.contains(&uid) {
                self.remove(&uid);
            }
        }
    }

    /// Stops and removes sandboxes of pods this node does not run (left by an earlier
    /// agent).
    pub(crate) async fn remove_orphans(&self) {
        let known = self.uids();
        let Ok(sandboxes) = self.runtime.list_sandboxes().await else {
            return;
        };
        for s in sandboxes {
            if known.contains(&s.config.uid) {
                continue;
            }
            tracing::info!(node = %self.node_name, pod = %format!("{}/{}", s.config.namespace, s.config.name), "removing the sandbox of a pod this node no longer runs");
            if let Err(e) = self.runtime.remove_sandbox(&s.id).await {
                tracing::warn!(sandbox = %s.id, error = %e, "failed to remove an orphaned sandbox");
            }
            let r = PodNetworkRef {
                namespace: s
                    .config
                    .labels
                    .get(LABEL_POD_NAMESPACE)
                    .cloned()
                    .unwrap_or_default(),
                name: s
                    .config
                    .labels
                    .get(LABEL_POD_NAME)
                    .cloned()
                    .unwrap_or_default(),
                uid: s
                    .config
                    .labels
                    .get(LABEL_POD_UID)
                    .cloned()
                    .unwrap_or(s.config.uid.clone()),
            };
            let _ = self.network.remove(&r).await;
            if let Some(dir) = &self.state_dir {
                let _ = tokio::fs::remove_dir_all(dir.join("pods").join(&s.config.uid)).await;
            }
        }
    }
}

pub(crate) fn is_mirror(p: &Pod) -> bool {
    p.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// Builds an [`Agent`].
pub struct AgentBuilder {
    client: Client,
    node_name: String,
    runtime: Option<Arc<dyn Runtime>>,
    network: Option<Arc<dyn NetworkPlugin>>,
    manifests: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    config: AgentConfig,
    serve: Option<u16>,
}

impl AgentBuilder {
    /// The container runtime (required).
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The network plugin (required).
    pub fn network(mut self, network: Arc<dyn NetworkPlugin>) -> Self {
        self.network = Some(network);
        self
    }

    /// A directory of static pod manifests (YAML or JSON, one pod a file).
    pub fn manifests(mut self, dir: impl Into<PathBuf>) -> Self {
        self.manifests = Some(dir.into());
        self
    }

    /// Where pods' volumes live (required unless the runtime is simulated; without it,
    /// volumes are not made).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The agent's settings.
    pub fn config(mut self, config: AgentConfig) -> Self {
        self.config = config;
        self
    }

    /// Serves the kubelet-like HTTP endpoint on `127.0.0.1:port` (0: any free port).
    pub fn serve(mut self, port: u16) -> Self {
        self.serve = Some(port);
        self
    }

    /// The agent.
    ///
    /// # Errors
    /// [`Error::Config`] without a runtime or network plugin, or with an empty node name.
    pub fn build(self) -> Result<Agent, Error> {
        let runtime = self
            .runtime
            .ok_or_else(|| Error::Config("the agent needs a runtime".into()))?;
        let network = self
            .network
            .ok_or_else(|| Error::Config("the agent needs a network plugin".into()))?;
        if self.node_name.is_empty() {
            return Err(Error::Config("the node name is empty".into()));
        }
        let events = events::Events::new(self.client.clone(), self.node_name.clone());
        let ctx = Arc::new(NodeCtx {
            client: self.client,
            node_name: self.node_name,
            runtime,
            network,
            config: Arc::new(self.config),
            state_dir: self.state_dir,
            host_ip: "127.0.0.1".into(),
            pods: Mutex::new(HashMap::new()),
            tokens: tokens::TokenManager::default(),
            events,
        });
        Ok(Agent {
            ctx,
            manifests: self.manifests,
            serve: self.serve,
            port: watch::channel(None).0,
        })
    }
}

/// A node agent: registers its Node, keeps its Lease and status, and runs the pods bound
/// to it (and the static pods of its manifest directory).
pub struct Agent {
    ctx: Arc<NodeCtx>,
    manifests: Option<PathBuf>,
    serve: Option<u16>,
    port: watch::Sender<Option<u16>>,
}

impl Agent {
    /// Starts building an agent for node `node_name`.
    pub fn builder(client: Client, node_name: impl Into<String>) -> AgentBuilder {
        AgentBuilder {
            client,
            node_name: node_name.into(),
            runtime: None,
            network: None,
            manifests: None,
            state_dir: None,
            config: AgentConfig::default(),
            serve: None,
        }
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.ctx.node_name
    }

    /// The HTTP endpoint's port, once it listens.
    pub async fn port(&self) -> Option<u16> {
        self.serve?;
        let mut rx = self.port.subscribe();
        rx.wait_for(Option::is_some).await.ok().and_then(|p| *p)
    }

    /// Runs the agent until `shutdown` completes. Leaves the containers running (an agent
    /// started later on the same runtime state adopts them).
    ///
    /// # Errors
    /// When the node cannot be registered, the endpoint cannot listen, or the manifest
    /// directory cannot be read. Later API errors are retried, never returned.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let ctx = self.ctx.clone();
        let span = tracing::info_span!("agent", node = %ctx.node_name);
        let _enter = span.enter();
        drop(_enter);
        // However `run` ends (also when its future is dropped), the pod workers stop.
        struct StopWorkers(Arc<NodeCtx>);
        impl Drop for StopWorkers {
            fn drop(&mut self) {
                self.0.abort_all();
            }
        }
        let _stop_workers = StopWorkers(ctx.clone());
        let mut tasks = tokio::task::JoinSet::new();
        let port = match self.serve {
            Some(p) => {
                let (listener, port) = crate::server::bind(p).await?;
                self.port.send_replace(Some(port));
                tasks.spawn(crate::server::serve(ctx.clone(), listener));
                Some(port)
            }
            None => None,
        };
        let mut reporter = NodeReporter::new(ctx.clone(), port);
        reporter.register().await?;
        let mut static_pods = self
            .manifests
            .as_ref()
            .map(|dir| crate::static_pods::StaticPods::new(ctx.clone(), dir.clone()));
        if let Some(s) = static_pods.as_mut() {
            s.scan().await;
        }
        tasks.spawn(async move { reporter.heartbeat_loop().await });
        tasks.spawn(pod_watch_loop(
            ctx.clone(),
            static_pods.as_ref().map(|s| s.uids()),
        ));
        if let Some(mut s) = static_pods {
            tasks.spawn(async move { s.run().await });
        }
        shutdown.await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        tracing::info!(node = %ctx.node_name, "agent stopped");
        Ok(())
    }

    /// The status the agent last computed for a pod (by namespace and name).
    pub fn pod_status(&self, namespace: &str, name: &str) -> Option<PodStatus> {
        self.ctx
            .find(namespace, name)
            .and_then(|i| lock(&i).status.clone())
    }
}

/// Lists and watches the node's pods until aborted.
async fn pod_watch_loop(ctx: Arc<NodeCtx>, static_uids: Option<Arc<Mutex<HashSet<String>>>>) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("spec.nodeName={}", ctx.node_name);
    let mut first = true;
    loop {
        let list = match ListParams::default().fields(&selector) {
            Ok(p) => pods.list(&p).await,
            Err(e) => Err(e),
        };
        let list = match list {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(node = %ctx.node_name, error = %e, "failed to list the node's pods");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let statics = static_uids
            .as_ref()
            .map(|s| lock(s).clone())
            .unwrap_or_default();
        ctx.on_list(list.items, &statics);
        if first {
            first = false;
            ctx.remove_orphans().await;
        }
        let params = match WatchParams::default().fields(&selector) {
            Ok(p) => p.after(list.resource_version),
            Err(_) => return,
        };
        let mut stream = match pods.watch(&params).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(node = %ctx.node_name, error = %e, "failed to watch the node's pods");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(event) = stream.next().await {
            match event {
                Ok(e) => ctx.on_event(e),
                Err(e) => {
                    if !e.is_expired() {
                        tracing::warn!(node = %ctx.node_name, error = %e, "the pod watch failed");
                    }
                    break;
                }
            }
        }
    }
}
