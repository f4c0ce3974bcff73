//! [`SimFleet`]: thousands of simulated nodes in one process.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use keelson_core::client::{Api, Client, Event, ListParams, Patch, WatchParams};
use keelson_core::k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use crate::agent::{self, lock, micro_time, AgentConfig, NodeCtx, NodeResources};
use crate::error::Error;
use crate::network::{NetworkPlugin, NetworkStatus, PodNetwork, PodNetworkRef};
use crate::runtime::sim::{SimProfile, SimRuntime};
use crate::runtime::Runtime;

/// A simulated node's pod network: node `i` owns `10.<i / 256>.<i % 256>.0/24`, in memory.
struct SimNetwork {
    index: u32,
    used: Mutex<(HashMap<String, u8>, u8)>,
}

impl SimNetwork {
    fn cidr(&self) -> String {
        format!("10.{}.{}.0/24", (self.index >> 8) & 0xff, self.index & 0xff)
    }
}

#[async_trait::async_trait]
impl NetworkPlugin for SimNetwork {
    async fn add(&self, pod: &PodNetworkRef) -> Result<PodNetwork, Error> {
        let mut g = lock(&self.used);
        let host = match g.0.get(&pod.uid) {
            Some(h) => *h,
            None => {
                let taken: HashSet<u8> = g.0.values().copied().collect();
                let mut h = g.1;
                let mut found = None;
                for _ in 0..253 {
                    h = if h >= 254 { 2 } else { h + 1 };
                    if !taken.contains(&h) {
                        found = Some(h);
                        break;
                    }
                }
                let h = found.ok_or_else(|| {
                    Error::Network(format!("no free address left in {}", self.cidr()))
                })?;
                g.1 = h;
                g.0.insert(pod.uid.clone(), h);
                h
            }
        };
        Ok(PodNetwork {
            ips: vec![IpAddr::V4(Ipv4Addr::new(
                10,
                ((self.index >> 8) & 0xff) as u8,
                (self.index & 0xff) as u8,
                host,
            ))],
        })
    }

    async fn remove(&self, pod: &PodNetworkRef) -> Result<(), Error> {
        lock(&self.used).0.remove(&pod.uid);
        Ok(())
    }

    async fn status(&self) -> Result<NetworkStatus, Error> {
        Ok(NetworkStatus {
            ready: true,
            pod_cidr: Some(self.cidr()),
            message: None,
        })
    }
}

/// Builds a [`SimFleet`].
pub struct SimFleetBuilder {
    client: Client,
    count: usize,
    prefix: String,
    profile: SimProfile,
    config: AgentConfig,
    register_concurrency: usize,
}

impl SimFleetBuilder {
    /// How many nodes (default 1).
    pub fn nodes(mut self, count: usize) -> Self {
        self.count = count;
        self
    }

    /// Node names are `<prefix><i>` (default `sim-`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How simulated containers behave by default.
    pub fn profile(mut self, profile: SimProfile) -> Self {
        self.profile = profile;
        self
    }

    /// The agents' settings (shared by every node; host conditions are always off).
    pub fn config(mut self, config: AgentConfig) -> Self {
        self.config = config;
        self
    }

    /// The fleet.
    pub fn build(self) -> SimFleet {
        let mut config = self.config;
        config.host_conditions = false;
        let config = Arc::new(config);
        let runtime = Arc::new(SimRuntime::new(self.profile));
        let nodes: Vec<Arc<NodeCtx>> = (0..self.count)
            .map(|i| {
                let node_name = format!("{}{i}", self.prefix);
                Arc::new(NodeCtx {
                    client: self.client.clone(),
                    events: crate::agent::events::Events::new(
                        self.client.clone(),
                        node_name.clone(),
                    ),
                    node_name,
                    runtime: runtime.clone() as Arc<dyn Runtime>,
                    network: Arc::new(SimNetwork {
                        index: i as u32,
                        used: Mutex::new((HashMap::new(), 1)),
                    }),
                    config: config.clone(),
                    state_dir: None,
                    host_ip: "127.0.0.1".into(),
                    pods: Mutex::new(HashMap::new()),
                    tokens: Default::default(),
                })
            })
            .collect();
        let by_name = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.node_name.clone(), i))
            .collect();
        let last_renew = (0..self.count).map(|_| AtomicU64::new(0)).collect();
        SimFleet {
            client: self.client,
            nodes,
            by_name,
            runtime,
            config,
            register_concurrency: self.register_concurrency.max(1),
            counters: Arc::new(Counters {
                renewals: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                max_gap_ms: AtomicU64::new(0),
                last_renew,
            }),
            registered: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

struct Counters {
    renewals: AtomicU64,
    failures: AtomicU64,
    max_gap_ms: AtomicU64,
    /// Per node: milliseconds since the fleet's start at its last renewal.
    last_renew: Vec<AtomicU64>,
}

/// How a fleet is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFleetStats {
    /// Nodes in the fleet.
    pub nodes: usize,
    /// Lease renewals done.
    pub renewals: u64,
    /// Lease renewals that failed.
    pub failures: u64,
    /// The longest time between two renewals of one node's Lease (the lease interval
    /// when heartbeats keep up).
    pub max_renew_gap: Duration,
    /// Pods with workers on the fleet's nodes.
    pub pods: usize,
    /// Simulated sandboxes and containers.
    pub sandboxes: usize,
    /// Simulated containers.
    pub containers: usize,
}

/// Many simulated nodes in one process: one [`SimRuntime`], one pod watch for all of
/// them, one heartbeat loop spreading the Lease renewals over the interval, and per node
/// only its name, its small address allocator and its pods' workers.
pub struct SimFleet {
    client: Client,
    nodes: Vec<Arc<NodeCtx>>,
    by_name: HashMap<String, usize>,
    runtime: Arc<SimRuntime>,
    config: Arc<AgentConfig>,
    register_concurrency: usize,
    counters: Arc<Counters>,
    registered: std::sync::atomic::AtomicBool,
}

impl SimFleet {
    /// Starts building a fleet.
    pub fn builder(client: Client) -> SimFleetBuilder {
        SimFleetBuilder {
            client,
            count: 1,
            prefix: "sim-".into(),
            profile: SimProfile::default(),
            config: AgentConfig {
                resources: NodeResources::fixed("32", "256Gi", 110),
                ..AgentConfig::default()
            },
            register_concurrency: 32,
        }
    }

    /// The nodes' names.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.node_name.clone()).collect()
    }

    /// The shared runtime.
    pub fn runtime(&self) -> &Arc<SimRuntime> {
        &self.runtime
    }

    /// Counters.
    pub fn stats(&self) -> SimFleetStats {
        let (sandboxes, containers) = self.runtime.counts();
        SimFleetStats {
            nodes: self.nodes.len(),
            renewals: self.counters.renewals.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
            max_renew_gap: Duration::from_millis(self.counters.max_gap_ms.load(Ordering::Relaxed)),
            pods: self.nodes.iter().map(|n| lock(&n.pods).len()).sum(),
            sandboxes,
            containers,
        }
    }

    /// Registers every node (Node, status, Lease).
    ///
    /// # Errors
    /// The first registration that fails.
    pub async fn register(&self) -> Result<(), Error> {
        agent::node::ensure_lease_namespace(&self.client).await?;
        let results: Vec<Result<(), Error>> = futures::stream::iter(self.nodes.iter().cloned())
            .map(|ctx| async move { register_one(&ctx).await })
            .buffer_unordered(self.register_concurrency)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), Error>>()?;
        self.registered.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Registers the nodes (unless [`SimFleet::register`] did), then runs heartbeats and
    /// pods until `shutdown` completes.
    ///
    /// # Errors
    /// When registration fails.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        if !self.registered.load(Ordering::Relaxed) {
            self.register().await?;
        }
        tracing::info!(nodes = self.nodes.len(), "simulated nodes registered");
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(heartbeats(
            self.nodes.clone(),
            self.config.clone(),
            self.counters.clone(),
        ));
        tasks.spawn(pod_watch(
            self.client.clone(),
            self.nodes.clone(),
            self.by_name.clone(),
        ));
        shutdown.await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        for n in &self.nodes {
            n.abort_all();
        }
        Ok(())
    }
}

async fn register_one(ctx: &NodeCtx) -> Result<(), Error> {
    let cidr = ctx.network.status().await.ok().and_then(|s| s.pod_cidr);
    let mut obj = agent::node::node_object(ctx, cidr.as_deref());
    obj["metadata"]["labels"]["keelson.dev/simulated"] = json!("true");
    let node: Node =
        serde_json::from_value(obj).map_err(|e| Error::Config(format!("node object: {e}")))?;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let created = match nodes.create(&node).await {
        Ok(n) => Some(n),
        Err(e) if e.is_already_exists() => nodes.get_opt(&ctx.node_name).await.ok().flatten(),
        Err(e) => return Err(Error::api(format!("register node {}", ctx.node_name), e)),
    };
    let now = agent::node::time(std::time::SystemTime::now());
    let mut status = agent::node::base_status(ctx, None);
    let cond = |t: &str, s: &str, r: &str| json!({"type": t, "status": s, "reason": r, "message": "simulated", "lastHeartbeatTime": now, "lastTransitionTime": now});
    status["conditions"] = json!([
        cond("Ready", "True", "KubeletReady"),
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID"),
    ]);
    nodes
        .patch_status(&ctx.node_name, &Patch::Merge(json!({"status": status})))
        .await
        .map_err(|e| Error::api(format!("update the status of node {}", ctx.node_name), e))?;
    let uid = created.and_then(|n| n.metadata.uid);
    agent::node::renew_lease(
        &ctx.client,
        &ctx.node_name,
        uid.as_deref(),
        ctx.config.lease_duration_seconds,
    )
    .await
}

/// Renews every node's Lease once per interval, spread evenly over it.
async fn heartbeats(nodes: Vec<Arc<NodeCtx>>, config: Arc<AgentConfig>, counters: Arc<Counters>) {
    if nodes.is_empty() {
        return;
    }
    let start = tokio::time::Instant::now();
    let step = config.lease_interval / nodes.len().max(1) as u32;
    let mut tick = tokio::time::interval(step.max(Duration::from_micros(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let _ = micro_time;
    for i in (0..nodes.len()).cycle() {
        tick.tick().await;
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let ctx = nodes[i].clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let r = agent::node::renew_lease(
                &ctx.client,
                &ctx.node_name,
                None,
                ctx.config.lease_duration_seconds,
            )
            .await;
            let now_ms = start.elapsed().as_millis() as u64;
            match r {
                Ok(()) => {
                    counters.renewals.fetch_add(1, Ordering::Relaxed);
                    let prev = counters.last_renew[i].swap(now_ms, Ordering::Relaxed);
                    if prev > 0 {
                        counters
                            .max_gap_ms
                            .fetch_max(now_ms - prev.min(now_ms), Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %ctx.node_name, error = %e, "failed to renew a simulated node's lease");
                }
            }
        });
    }
}

/// One watch on every pod, routed to the nodes by `spec.nodeName`.
async fn pod_watch(client: Client, nodes: Vec<Arc<NodeCtx>>, by_name: HashMap<String, usize>) {
    let pods: Api<Pod> = Api::all(client);
    let node_of = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .and_then(|n| by_name.get(n).copied())
    };
    loop {
        let list = match pods.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "failed to list pods for the simulated nodes");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut per_node: HashMap<usize, Vec<Pod>> = HashMap::new();
        for p in list.items {
            if let Some(i) = node_of(&p) {
                per_node.entry(i).or_default().push(p);
            }
        }
        for (i, n) in nodes.iter().enumerate() {
            let list = per_node.remove(&i).unwrap_or_default();
            if list.is_empty() && lock(&n.pods).is_empty() {
                continue;
            }
            n.on_list(list, &HashSet::new());
        }
        let mut stream = match pods
            .watch(&WatchParams::default().after(list.resource_version))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "failed to watch pods for the simulated nodes");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(event) = stream.next().await {
            match event {
                Ok(e) => {
                    let target = match &e {
                        Event::Added(p) | Event::Modified(p) | Event::Deleted(p) => node_of(p),
                        Event::Bookmark { .. } => None,
                    };
                    if let Some(i) = target {
                        nodes[i].on_event(e);
                    }
                }
                Err(e) => {
                    if !e.is_expired() {
                        tracing::warn!(error = %e, "the pod watch of the simulated nodes failed");
                    }
                    break;
                }
            }
        }
    }
}
