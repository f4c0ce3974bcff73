//! The scheduler: watches, the scheduling loop, the binding cycle, and what users see
//! when a pod does not fit.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keelson_core::client::{Api, Client, Patch};
use keelson_core::k8s_openapi::api::core::v1::{Event, Namespace, Node, ObjectReference, Pod};
use keelson_core::k8s_openapi::api::policy::v1::PodDisruptionBudget;
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use keelson_core::k8s_openapi::jiff::Timestamp;
use keelson_core::{LabelSelector, ObjectMeta};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::cache::{Cache, PdbInfo, Snapshot};
use crate::config::SchedulerConfig;
use crate::error::{ConfigError, SchedulerError};
use crate::framework::{
    ActionType, ClusterEvent, Code, CycleState, EventResource, Handle, NodeStatuses, Profile,
    ProfileBuilder, Status, WaitingPods,
};
use crate::informer::{reflect, Change};
use crate::metrics::{AttemptResult, Metrics, MetricsSnapshot};
use crate::node_info::NodeInfo;
use crate::nominator::Nominator;
use crate::plugins::{PluginRegistry, DEFAULT_PLUGINS};
use crate::pod_info::PodInfo;
use crate::queue::{
    QueueLengths, QueuedPodInfo, SchedulingQueue, BACKOFF_FLUSH_INTERVAL,
    UNSCHEDULABLE_FLUSH_INTERVAL,
};

/// The `schedulerName` of pods that name none.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// Below this many nodes to check (or to find), filtering runs on one thread.
const PARALLEL_MIN_NODES: usize = 1024;
/// Nodes per chunk when filtering in parallel.
const CHUNK: usize = 128;

/// Kubernetes' default profile for `scheduler_name`: every default plugin, with the
/// default weights. Add, replace or remove plugins before building it.
pub fn default_profile(handle: &Handle, scheduler_name: &str) -> ProfileBuilder {
    let registry = PluginRegistry::builtin();
    let mut b = ProfileBuilder::new(scheduler_name);
    for (name, weight) in DEFAULT_PLUGINS {
        if let Some(factory) = registry.get(name) {
            // The built-in factories accept no arguments.
            if let Ok(p) = factory(&serde_json::Value::Null, handle) {
                b = b.plugin(p);
                if *weight > 0 {
                    b = b.weight(name, *weight);
                }
            }
        }
    }
    b
}

type ProfileFn = Box<dyn FnOnce(&Handle) -> Result<ProfileBuilder, ConfigError> + Send>;

/// Builds a [`Scheduler`].
pub struct SchedulerBuilder {
    handle: Handle,
    profiles: Vec<ProfileFn>,
    config: Option<SchedulerConfig>,
    registry: PluginRegistry,
    parallelism: Option<usize>,
    percentage_of_nodes_to_score: Option<u32>,
    backoff: Option<(Duration, Duration)>,
    scheduled_events: bool,
}

impl std::fmt::Debug for SchedulerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerBuilder")
            .field("profiles", &self.profiles.len())
            .finish_non_exhaustive()
    }
}

impl SchedulerBuilder {
    /// The handle plugins are built with.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Adds a profile built from the handle (see [`default_profile`]).
    pub fn profile<F>(mut self, f: F) -> Self
    where
        F: FnOnce(&Handle) -> ProfileBuilder + Send + 'static,
    {
        self.profiles.push(Box::new(move |h| Ok(f(h))));
        self
    }

    /// Takes profiles, `percentageOfNodesToScore`, `parallelism` and backoffs from a
    /// KubeSchedulerConfiguration; plugins by name from the registry.
    pub fn config(mut self, config: SchedulerConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// The registry that configuration profiles take plugins from (default: the
    /// built-in plugins).
    pub fn registry(mut self, registry: PluginRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// How many threads filter nodes (default: the CPUs available).
    pub fn parallelism(mut self, n: usize) -> Self {
        self.parallelism = Some(n.max(1));
        self
    }

    /// `percentageOfNodesToScore` (default: Kubernetes' adaptive one).
    pub fn percentage_of_nodes_to_score(mut self, p: u32) -> Self {
        self.percentage_of_nodes_to_score = Some(p.min(100));
        self
    }

    /// The initial and maximum backoff of failed pods (default 1 s and 10 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Some((initial, max));
        self
    }

    /// Whether to record a `Scheduled` event for every pod bound (default yes, as
    /// Kubernetes does).
    pub fn scheduled_events(mut self, on: bool) -> Self {
        self.scheduled_events = on;
        self
    }

    /// Builds the scheduler.
    ///
    /// # Errors
    /// [`ConfigError`] for an invalid profile, two profiles with one name, or profiles
    /// with different QueueSort plugins.
    pub fn build(self) -> Result<Scheduler, ConfigError> {
        let mut profiles: Vec<Profile> = Vec::new();
        let mut parallelism = self.parallelism;
        let mut percentage = self.percentage_of_nodes_to_score;
        let mut backoff = self.backoff;
        if let Some(config) = &self.config {
            for b in config.profile_builders(&self.registry, &self.handle)? {
                profiles.push(b.build()?);
            }
            parallelism = parallelism.or(config.parallelism);
            percentage = percentage.or(config.percentage_of_nodes_to_score.filter(|p| *p > 0));
            backoff = backoff.or(config.backoff());
        }
        for f in self.profiles {
            profiles.push(f(&self.handle)?.build()?);
        }
        if profiles.is_empty() {
            profiles.push(default_profile(&self.handle, DEFAULT_SCHEDULER_NAME).build()?);
        }
        let mut by_name = HashMap::new();
        let mut registrations: HashMap<String, Vec<ClusterEvent>> = HashMap::new();
        let first_sort = profiles[0].queue_sort_name().to_owned();
        let queue_sort = profiles[0]
            .queue_sort()
            .cloned()
            .ok_or_else(|| ConfigError::Invalid {
                profile: profiles[0].scheduler_name().to_owned(),
                message: "a QueueSort plugin must be enabled".into(),
            })?;
        for p in profiles {
            if p.queue_sort_name() != first_sort {
                return Err(ConfigError::Invalid {
                    profile: p.scheduler_name().to_owned(),
                    message: "every profile must use the same QueueSort plugin".into(),
                });
            }
            for plugin in p.plugins() {
                registrations
                    .entry(plugin.name().to_owned())
                    .or_default()
                    .extend(plugin.events_to_register());
            }
            let name = p.scheduler_name().to_owned();
            if by_name.insert(name.clone(), Arc::new(p)).is_some() {
                return Err(ConfigError::Invalid {
                    profile: name,
                    message: "two profiles with the same schedulerName".into(),
                });
            }
        }
        let mut queue = SchedulingQueue::new(queue_sort, registrations);
        if let Some((initial, max)) = backoff {
            queue = queue.with_backoff(initial, max);
        }
        let parallelism = parallelism.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        Ok(Scheduler {
            inner: Arc::new(Inner {
                client: self.handle.client.clone(),
                handle: self.handle,
                profiles: by_name,
                queue,
                cache: Cache::new(),
                metrics: Metrics::default(),
                parallelism,
                percentage,
                next_start: AtomicUsize::new(0),
                rng: AtomicU64::new(0x2545_f491_4f6c_dd1d),
                event_seq: AtomicU64::new(0),
                scheduled_events: self.scheduled_events,
            }),
        })
    }
}

struct Inner {
    client: Client,
    handle: Handle,
    profiles: HashMap<String, Arc<Profile>>,
    queue: SchedulingQueue,
    cache: Cache,
    metrics: Metrics,
    parallelism: usize,
    percentage: Option<u32>,
    next_start: AtomicUsize,
    rng: AtomicU64,
    event_seq: AtomicU64,
    scheduled_events: bool,
}

/// A scheduler: a queue, a cache, and one or more profiles (by `schedulerName`).
///
/// ```no_run
/// # async fn demo(client: keelson_core::client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use keelson_scheduler::Scheduler;
/// let scheduler = Scheduler::builder(client).build()?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// tokio::spawn(scheduler.clone().run(async move { let _ = stopped.await; }));
/// // ...
/// let _ = stop.send(());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("profiles", &self.inner.profiles.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What one filtering thread found: the nodes that fit and the others' statuses, by
/// position.
type ChunkResults = (Vec<(usize, Arc<NodeInfo>)>, Vec<(usize, Status)>);

/// A node that failed the filters, and why.
type NodeFailure = (Arc<str>, Status);

/// Why a cycle did not choose a node.
enum Failure {
    /// No node fits.
    Fit {
        statuses: Box<NodeStatuses>,
        num_nodes: usize,
        no_nodes: bool,
    },
    /// A plugin or the scheduler failed.
    Error(Status),
}

impl Scheduler {
    /// A builder for a scheduler on `client`.
    pub fn builder(client: Client) -> SchedulerBuilder {
        SchedulerBuilder {
            handle: Handle {
                client,
                waiting_pods: WaitingPods::default(),
                nominator: Arc::new(Nominator::default()),
            },
            profiles: Vec::new(),
            config: None,
            registry: PluginRegistry::builtin(),
            parallelism: None,
            percentage_of_nodes_to_score: None,
            backoff: None,
            scheduled_events: true,
        }
    }

    /// The counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// Every metric in Prometheus' text format.
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render(self.inner.queue.lengths())
    }

    /// The queue lengths.
    pub fn queue_lengths(&self) -> QueueLengths {
        self.inner.queue.lengths()
    }

    /// The pods Permit plugins hold.
    pub fn waiting_pods(&self) -> &WaitingPods {
        &self.inner.handle.waiting_pods
    }

    /// The profiles' scheduler names.
    pub fn scheduler_names(&self) -> Vec<String> {
        self.inner.profiles.keys().cloned().collect()
    }

    /// Watches the cluster and schedules pods until `shutdown` completes.
    ///
    /// # Errors
    /// None today: list and watch failures are retried. The `Result` leaves room for
    /// fatal conditions (such as a lost leadership).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), SchedulerError> {
        let inner = self.inner.clone();
        let mut tasks = Vec::new();
        let mut ready = Vec::new();
        {
            let (tx, rx) = oneshot::channel();
            ready.push(rx);
            let i = inner.clone();
            let mut known: HashMap<String, Arc<Node>> = HashMap::new();
            tasks.push(tokio::spawn(async move {
                reflect(
                    Api::<Node>::all(i.client.clone()),
                    "nodes",
                    move |c| i.on_node(&mut known, c),
                    tx,
                )
                .await;
            }));
        }
        {
            let (tx, rx) = oneshot::channel();
            ready.push(rx);
            let i = inner.clone();
            let mut known: HashMap<String, Arc<BTreeMap<String, String>>> = HashMap::new();
            tasks.push(tokio::spawn(async move {
                reflect(
                    Api::<Namespace>::all(i.client.clone()),
                    "namespaces",
                    move |c| i.on_namespace(&mut known, c),
                    tx,
                )
                .await;
            }));
        }
        {
            let (tx, rx) = oneshot::channel();
            ready.push(rx);
            let i = inner.clone();
            let mut known: BTreeMap<String, PdbInfo> = BTreeMap::new();
            tasks.push(tokio::spawn(async move {
                reflect(
                    Api::<PodDisruptionBudget>::all(i.client.clone()),
                    "poddisruptionbudgets",
                    move |c| i.on_pdb(&mut known, c),
                    tx,
                )
                .await;
            }));
        }
        // Pods last: the nodes are known when the pending pods arrive.
        for rx in ready.drain(..) {
            let _ = rx.await;
        }
        {
            let (tx, rx) = oneshot::channel();
            ready.push(rx);
            let i = inner.clone();
            let mut known: HashMap<String, Arc<PodInfo>> = HashMap::new();
            tasks.push(tokio::spawn(async move {
                reflect(
                    Api::<Pod>::all(i.client.clone()),
                    "pods",
                    move |c| i.on_pod(&mut known, c),
                    tx,
                )
                .await;
            }));
        }
        for rx in ready.drain(..) {
            let _ = rx.await;
        }
        {
            let i = inner.clone();
            tasks.push(tokio::spawn(async move {
                let mut backoff = tokio::time::interval(BACKOFF_FLUSH_INTERVAL);
                let mut parked = tokio::time::interval(UNSCHEDULABLE_FLUSH_INTERVAL);
                loop {
                    tokio::select! {
                        _ = backoff.tick() => i.queue.flush_backoff(),
                        _ = parked.tick() => i.queue.flush_unschedulable(),
                    }
                }
            }));
        }
        tracing::info!(profiles = ?self.scheduler_names(), "scheduler started");
        let mut snapshot = Snapshot::default();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                next = inner.queue.pop() => match next {
                    Some(qp) => {
                        inner.schedule_one(&mut snapshot, qp).await;
                        // A cycle is CPU work: let the watches and bindings run.
                        tokio::task::yield_now().await;
                    }
                    None => break,
                },
            }
        }
        inner.queue.close();
        for t in tasks {
            t.abort();
        }
        tracing::info!("scheduler stopped");
        Ok(())
    }
}

/// Whether a pod's spec or labels changed (not only its status or version).
fn significant_change(old: &Pod, new: &Pod) -> bool {
    old.spec != new.spec
        || old.metadata.labels != new.metadata.labels
        || old.metadata.annotations != new.metadata.annotations
        || old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
}

fn is_gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty())
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn node_update_actions(old: &Node, new: &Node) -> ActionType {
    let mut a = ActionType(0);
    let alloc = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
    if alloc(old) != alloc(new) {
        a = a.or(ActionType::UPDATE_NODE_ALLOCATABLE);
    }
    if old.metadata.labels != new.metadata.labels {
        a = a.or(ActionType::UPDATE_NODE_LABEL);
    }
    let taints = |n: &Node| n.spec.as_ref().map(|s| (s.taints.clone(), s.unschedulable));
    if taints(old) != taints(new) {
        a = a.or(ActionType::UPDATE_NODE_TAINT);
    }
    let images = |n: &Node| n.status.as_ref().and_then(|s| s.images.clone());
    if images(old) != images(new) {
        a = a.or(ActionType::UPDATE_NODE_OTHER);
    }
    a
}

/// The wall clock as an object timestamp (microseconds).
fn now_timestamp() -> Timestamp {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(0));
    Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn now_time() -> Time {
    Time(now_timestamp())
}

impl Inner {
    fn responsible(&self, pod: &PodInfo) -> bool {
        self.profiles.contains_key(pod.scheduler_name())
    }

    fn on_node(&self, known: &mut HashMap<String, Arc<Node>>, change: Change<Node>) {
        match change {
            Change::Sync(nodes) => {
                let mut fresh = HashMap::new();
                for n in nodes {
                    let n = Arc::new(n);
                    let name = n.metadata.name.clone().unwrap_or_default();
                    self.cache.add_or_update_node(n.clone());
                    fresh.insert(name, n);
                }
                for name in known.keys() {
                    if !fresh.contains_key(name) {
                        self.cache.remove_node(name);
                    }
                }
                *known = fresh;
                self.queue.on_event(ClusterEvent::new(
                    EventResource::Node,
                    ActionType::ADD.or(ActionType::UPDATE),
                ));
            }
            Change::Applied(n) => {
                let n = Arc::new(n);
                let name = n.metadata.name.clone().unwrap_or_default();
                let actions = match known.insert(name, n.clone()) {
                    None => ActionType::ADD,
                    Some(old) => node_update_actions(&old, &n),
                };
                self.cache.add_or_update_node(n);
                if actions.0 != 0 {
                    self.queue
                        .on_event(ClusterEvent::new(EventResource::Node, actions));
                }
            }
            Change::Deleted(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                known.remove(&name);
                self.cache.remove_node(&name);
                self.queue
                    .on_event(ClusterEvent::new(EventResource::Node, ActionType::DELETE));
            }
        }
    }

    fn on_namespace(
        &self,
        known: &mut HashMap<String, Arc<BTreeMap<String, String>>>,
        change: Change<Namespace>,
    ) {
        let mut apply = |ns: &Namespace, deleted: bool| {
            let name = ns.metadata.name.clone().unwrap_or_default();
            if deleted {
                known.remove(&name);
                self.cache.set_namespace(&name, None);
                return;
            }
            let labels = ns.metadata.labels.clone().unwrap_or_default();
            let changed = known.get(&name).is_none_or(|l| **l != labels);
            if changed {
                known.insert(name.clone(), Arc::new(labels.clone()));
                self.cache.set_namespace(&name, Some(labels));
                self.queue.on_event(ClusterEvent::new(
                    EventResource::Namespace,
                    ActionType::ADD.or(ActionType::UPDATE),
                ));
            }
        };
        match change {
            Change::Sync(all) => {
                let names: std::collections::HashSet<String> =
                    all.iter().filter_map(|n| n.metadata.name.clone()).collect();
                for ns in &all {
                    apply(ns, false);
                }
                let gone: Vec<String> = known
                    .keys()
                    .filter(|k| !names.contains(*k))
                    .cloned()
                    .collect();
                for name in gone {
                    known.remove(&name);
                    self.cache.set_namespace(&name, None);
                }
            }
            Change::Applied(ns) => apply(&ns, false),
            Change::Deleted(ns) => apply(&ns, true),
        }
    }

    fn on_pdb(&self, known: &mut BTreeMap<String, PdbInfo>, change: Change<PodDisruptionBudget>) {
        let info = |p: &PodDisruptionBudget| {
            let namespace = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            let selector = p
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .map_or_else(|| Ok(LabelSelector::nothing()), LabelSelector::from_k8s)
                .unwrap_or_else(|_| LabelSelector::nothing());
            let status = p.status.as_ref();
            PdbInfo {
                disruptions_allowed: status.map_or(0, |s| s.disruptions_allowed),
                disrupted_pods: status
                    .and_then(|s| s.disrupted_pods.as_ref())
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default(),
                namespace,
                name,
                selector,
            }
        };
        let key = |p: &PodDisruptionBudget| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            )
        };
        match change {
            Change::Sync(all) => {
                *known = all.iter().map(|p| (key(p), info(p))).collect();
            }
            Change::Applied(p) => {
                known.insert(key(&p), info(&p));
            }
            Change::Deleted(p) => {
                known.remove(&key(&p));
            }
        }
        self.cache.set_pdbs(known.values().cloned().collect());
        self.queue.on_event(ClusterEvent::new(
            EventResource::PodDisruptionBudget,
            ActionType::ALL,
        ));
    }

    fn on_pod(&self, known: &mut HashMap<String, Arc<PodInfo>>, change: Change<Pod>) {
        match change {
            Change::Sync(pods) => {
                let mut fresh: HashMap<String, Arc<PodInfo>> = HashMap::new();
                for p in pods {
                    let info = Arc::new(PodInfo::new(Arc::new(p)));
                    fresh.insert(info.uid.clone(), info);
                }
                let gone: Vec<Arc<PodInfo>> = known
                    .iter()
                    .filter(|(uid, _)| !fresh.contains_key(*uid))
                    .map(|(_, p)| p.clone())
                    .collect();
                for p in gone {
                    self.pod_deleted(known, &p);
                }
                for (_, info) in fresh {
                    self.pod_applied(known, info);
                }
            }
            Change::Applied(p) => {
                let info = Arc::new(PodInfo::new(Arc::new(p)));
                self.pod_applied(known, info);
            }
            Change::Deleted(p) => {
                let info = Arc::new(PodInfo::new(Arc::new(p)));
                self.pod_deleted(known, &info);
            }
        }
    }

    fn pod_applied(&self, known: &mut HashMap<String, Arc<PodInfo>>, info: Arc<PodInfo>) {
        let old = known.insert(info.uid.clone(), info.clone());
        if info.node_name().is_some() {
            let was_assigned = old.as_ref().is_some_and(|o| o.node_name().is_some());
            if !was_assigned {
                self.queue.delete(&info.uid);
            }
            self.handle.nominator.remove(&info.uid);
            if is_finished(&info.pod) {
                self.cache.remove_pod(&info.uid);
                self.queue.on_event(ClusterEvent::new(
                    EventResource::AssignedPod,
                    ActionType::DELETE,
                ));
                return;
            }
            self.cache.add_or_update_pod(info.clone());
            let actions = match old.filter(|o| o.node_name().is_some()) {
                None => ActionType::ADD,
                Some(o) => {
                    let mut a = ActionType(0);
                    if o.labels != info.labels {
                        a = a.or(ActionType::UPDATE_POD_LABEL);
                    }
                    if info.requests.milli_cpu < o.requests.milli_cpu
                        || info.requests.memory < o.requests.memory
                    {
                        a = a.or(ActionType::UPDATE_POD_SCALE_DOWN);
                    }
                    if a.0 == 0 && o.pod.spec != info.pod.spec {
                        a = ActionType::UPDATE_OTHER;
                    }
                    a
                }
            };
            if actions.0 != 0 {
                self.queue
                    .on_event(ClusterEvent::new(EventResource::AssignedPod, actions));
            }
            return;
        }
        if !self.responsible(&info) || is_finished(&info.pod) {
            return;
        }
        // Terminating pods, and pods held by scheduling gates (Kubernetes'
        // SchedulingGates PreEnqueue), do not enter the queue.
        if info.is_terminating() || is_gated(&info.pod) {
            self.queue.delete(&info.uid);
            return;
        }
        match old {
            None => self.queue.add(info),
            Some(o) if is_gated(&o.pod) => self.queue.add(info),
            Some(o) => {
                let significant = significant_change(&o.pod, &info.pod);
                self.queue.update(info, significant);
            }
        }
    }

    fn pod_deleted(&self, known: &mut HashMap<String, Arc<PodInfo>>, info: &Arc<PodInfo>) {
        let last = known.remove(&info.uid);
        self.handle.nominator.remove(&info.uid);
        let assigned =
            info.node_name().is_some() || last.as_ref().is_some_and(|l| l.node_name().is_some());
        if let Some(w) = self.handle.waiting_pods.get(&info.uid) {
            w.reject("", "pod deleted");
        }
        if assigned || self.cache.contains(&info.uid) {
            self.cache.remove_pod(&info.uid);
            self.queue.on_event(ClusterEvent::new(
                EventResource::AssignedPod,
                ActionType::DELETE,
            ));
        }
        self.queue.delete(&info.uid);
    }

    /// How many feasible nodes to find before scoring.
    fn num_feasible_nodes_to_find(&self, profile: &Profile, all: usize) -> usize {
        num_feasible_nodes_to_find(
            profile.percentage_of_nodes_to_score().or(self.percentage),
            all,
        )
    }

    fn random(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        x
    }

    async fn schedule_one(self: &Arc<Self>, snapshot: &mut Snapshot, qp: QueuedPodInfo) {
        let start = Instant::now();
        let pod = qp.pod.clone();
        let Some(profile) = self.profiles.get(pod.scheduler_name()).cloned() else {
            self.queue.done(&pod.uid);
            return;
        };
        if pod.is_terminating() || self.cache.contains(&pod.uid) {
            self.queue.done(&pod.uid);
            return;
        }
        self.cache.update_snapshot(snapshot);
        let mut state = CycleState::new();
        match self.find_host(&profile, &mut state, &pod, snapshot) {
            Ok(host) => self.assume_and_bind(profile, state, qp, host, start),
            Err(Failure::Error(status)) => {
                self.metrics.attempt(AttemptResult::Error, start.elapsed());
                self.fail(
                    &profile,
                    qp,
                    status.message(),
                    "SchedulerError",
                    true,
                    None,
                    false,
                );
            }
            Err(Failure::Fit {
                statuses,
                num_nodes,
                no_nodes,
            }) => {
                let mut message = if no_nodes {
                    "no nodes available to schedule pods".to_owned()
                } else {
                    fit_error_message(num_nodes, &statuses, None)
                };
                let mut nominated = None;
                let mut clear_nomination = false;
                if profile.has_post_filter() && !no_nodes {
                    let result = profile
                        .run_post_filter(&state, &pod, snapshot, &statuses)
                        .await;
                    match result {
                        Ok(r) => {
                            if let Some(node) = &r.nominated_node {
                                self.metrics.preemption(0);
                                tracing::debug!(pod = %pod.key, node = %node, "nominated after preemption");
                            }
                            nominated = r.nominated_node;
                        }
                        Err(s) if s.code() == Code::Error => {
                            tracing::warn!(pod = %pod.key, error = %s, "post-filter failed");
                        }
                        Err(s) => {
                            let msg = s.message();
                            if !msg.is_empty() {
                                message = fit_error_message(
                                    num_nodes,
                                    &statuses,
                                    Some(&format!("preemption: {msg}")),
                                );
                            }
                            clear_nomination = pod.nominated_node_name().is_some();
                        }
                    }
                }
                self.metrics
                    .attempt(AttemptResult::Unschedulable, start.elapsed());
                let mut qp = qp;
                qp.unschedulable_plugins = statuses.unschedulable_plugins.clone();
                if let Some(node) = &nominated {
                    self.handle.nominator.add(pod.clone(), node);
                } else if clear_nomination {
                    self.handle.nominator.remove(&pod.uid);
                }
                self.fail(
                    &profile,
                    qp,
                    message,
                    "Unschedulable",
                    false,
                    nominated,
                    clear_nomination,
                );
            }
        }
    }

    /// The scheduling algorithm: PreFilter, Filter over enough nodes, Score, choice.
    fn find_host(
        &self,
        profile: &Profile,
        state: &mut CycleState,
        pod: &Arc<PodInfo>,
        snapshot: &Snapshot,
    ) -> Result<String, Failure> {
        let all = snapshot.nodes().len();
        if all == 0 {
            return Err(Failure::Fit {
                statuses: Box::default(),
                num_nodes: 0,
                no_nodes: true,
            });
        }
        let narrowed = match profile.run_pre_filter(state, pod, snapshot) {
            Ok(n) => n,
            Err(status) if status.is_rejected() => {
                let mut statuses = NodeStatuses::default();
                if !status.plugin().is_empty() {
                    statuses
                        .unschedulable_plugins
                        .insert(status.plugin().to_owned());
                }
                statuses.pre_filter = Some(status);
                return Err(Failure::Fit {
                    statuses: Box::new(statuses),
                    num_nodes: all,
                    no_nodes: false,
                });
            }
            Err(status) => return Err(Failure::Error(status)),
        };
        // A pod nominated by an earlier preemption tries its node first.
        if let Some(node) = pod.nominated_node_name().and_then(|n| snapshot.get(n)) {
            if narrowed.as_ref().is_none_or(|s| s.contains(node.name())) {
                let nominated = self.handle.nominator.pods_on(node.name());
                if profile
                    .run_filters_with_nominated(state, pod, node, &nominated)
                    .is_ok()
                {
                    return Ok(node.name().to_owned());
                }
            }
        }
        let candidates: Vec<Arc<NodeInfo>>;
        let nodes: &[Arc<NodeInfo>] = match &narrowed {
            None => snapshot.nodes(),
            Some(names) => {
                candidates = names
                    .iter()
                    .filter_map(|n| snapshot.get(n).cloned())
                    .collect();
                &candidates
            }
        };
        let to_find = if narrowed.is_some() {
            nodes.len()
        } else {
            self.num_feasible_nodes_to_find(profile, nodes.len())
        };
        let (feasible, failed) =
            self.find_feasible(profile, state, pod, nodes, to_find, narrowed.is_none());
        if feasible.is_empty() {
            // Only a failure needs the statuses by node (for the message and PostFilter).
            let mut statuses = NodeStatuses::default();
            for (node, status) in failed {
                statuses.insert(node, status);
            }
            if let Some(names) = &narrowed {
                // Nodes the PreFilter plugins ruled out.
                for n in snapshot.nodes() {
                    if !names.contains(n.name()) {
                        statuses.insert(
                            n.name_arc().clone(),
                            Status::unresolvable("node(s) didn't satisfy plugin(s) [PreFilter]"),
                        );
                    }
                }
            }
            return Err(Failure::Fit {
                statuses: Box::new(statuses),
                num_nodes: all,
                no_nodes: false,
            });
        }
        if feasible.len() == 1 {
            return Ok(feasible[0].name().to_owned());
        }
        let scores = profile
            .run_scoring(state, pod, snapshot, &feasible)
            .map_err(Failure::Error)?;
        // The highest score; ties broken at random (reservoir sampling).
        let mut best = 0usize;
        let mut ties = 0u64;
        let mut best_score = i64::MIN;
        for (i, &s) in scores.iter().enumerate() {
            if s > best_score {
                best_score = s;
                best = i;
                ties = 1;
            } else if s == best_score {
                ties += 1;
                if self.random().is_multiple_of(ties) {
                    best = i;
                }
            }
        }
        Ok(feasible[best].name().to_owned())
    }

    /// Runs the filters from the rotating start until `to_find` nodes fit; chunks
    /// over threads when there are many nodes.
    fn find_feasible(
        &self,
        profile: &Profile,
        state: &CycleState,
        pod: &PodInfo,
        nodes: &[Arc<NodeInfo>],
        to_find: usize,
        rotate: bool,
    ) -> (Vec<Arc<NodeInfo>>, Vec<NodeFailure>) {
        let n = nodes.len();
        let mut statuses: Vec<NodeFailure> = Vec::new();
        if n == 0 {
            return (Vec::new(), statuses);
        }
        let start = if rotate {
            self.next_start.load(Ordering::Relaxed) % n
        } else {
            0
        };
        let nominator = &self.handle.nominator;
        let check = |node: &NodeInfo| -> Result<(), Status> {
            if nominator.is_empty() {
                profile.run_filters(state, pod, node)
            } else {
                profile.run_filters_with_nominated(
                    state,
                    pod,
                    node,
                    &nominator.pods_on(node.name()),
                )
            }
        };
        let mut feasible: Vec<(usize, Arc<NodeInfo>)> = Vec::with_capacity(to_find.min(n));
        let processed;
        // Threads only pay off when there is much to check: they are started per
        // cycle (scoped), which costs tens of microseconds.
        if self.parallelism <= 1 || n < PARALLEL_MIN_NODES || to_find < PARALLEL_MIN_NODES {
            let mut i = 0;
            while i < n && feasible.len() < to_find {
                let node = &nodes[(start + i) % n];
                match check(node) {
                    Ok(()) => feasible.push((i, node.clone())),
                    Err(s) => statuses.push((node.name_arc().clone(), s)),
                }
                i += 1;
            }
            processed = i;
        } else {
            let chunks = n.div_ceil(CHUNK);
            let next = AtomicUsize::new(0);
            let found = AtomicUsize::new(0);
            let workers = self.parallelism.min(chunks);
            let results: Vec<ChunkResults> = std::thread::scope(|scope| {
                let work = || {
                    let mut ok = Vec::new();
                    let mut failed = Vec::new();
                    loop {
                        if found.load(Ordering::Relaxed) >= to_find {
                            break;
                        }
                        let c = next.fetch_add(1, Ordering::Relaxed);
                        if c >= chunks {
                            break;
                        }
                        for i in c * CHUNK..((c + 1) * CHUNK).min(n) {
                            let node = &nodes[(start + i) % n];
                            match check(node) {
                                Ok(()) => {
                                    ok.push((i, node.clone()));
                                    found.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(s) => failed.push((i, s)),
                            }
                        }
                    }
                    (ok, failed)
                };
                let handles: Vec<_> = (1..workers).map(|_| scope.spawn(work)).collect();
                let mut all = vec![work()];
                for h in handles {
                    if let Ok(r) = h.join() {
                        all.push(r);
                    }
                }
                all
            });
            let mut last = 0;
            for (ok, failed) in results {
                for (i, s) in failed {
                    last = last.max(i + 1);
                    statuses.push((nodes[(start + i) % n].name_arc().clone(), s));
                }
                feasible.extend(ok);
            }
            feasible.sort_by_key(|(i, _)| *i);
            feasible.truncate(to_find);
            if let Some((i, _)) = feasible.last() {
                last = last.max(i + 1);
            }
            processed = last;
        }
        if rotate {
            self.next_start
                .store((start + processed) % n, Ordering::Relaxed);
        }
        (feasible.into_iter().map(|(_, n)| n).collect(), statuses)
    }

    fn assume_and_bind(
        self: &Arc<Self>,
        profile: Arc<Profile>,
        mut state: CycleState,
        qp: QueuedPodInfo,
        host: String,
        start: Instant,
    ) {
        let pod = qp.pod.clone();
        if let Err(e) = self.cache.assume_pod(pod.clone(), &host) {
            self.metrics.attempt(AttemptResult::Error, start.elapsed());
            self.fail(
                &profile,
                qp,
                e.to_string(),
                "SchedulerError",
                true,
                None,
                false,
            );
            return;
        }
        if let Err(s) = profile.run_reserve(&mut state, &pod, &host) {
            self.cache.forget_pod(&pod.uid);
            self.metrics.attempt(AttemptResult::Error, start.elapsed());
            let error = s.code() == Code::Error;
            self.fail(
                &profile,
                qp,
                s.message(),
                if error {
                    "SchedulerError"
                } else {
                    "Unschedulable"
                },
                error,
                None,
                false,
            );
            return;
        }
        let waiting = match profile.run_permit(&state, &pod, &host) {
            Ok(w) => w,
            Err(s) => {
                profile.run_unreserve(&state, &pod, &host);
                self.cache.forget_pod(&pod.uid);
                self.metrics
                    .attempt(AttemptResult::Unschedulable, start.elapsed());
                let error = s.code() == Code::Error;
                let mut qp = qp;
                if !s.plugin().is_empty() {
                    qp.unschedulable_plugins.insert(s.plugin().to_owned());
                }
                self.fail(
                    &profile,
                    qp,
                    s.message(),
                    if error {
                        "SchedulerError"
                    } else {
                        "Unschedulable"
                    },
                    error,
                    None,
                    false,
                );
                return;
            }
        };
        self.handle.nominator.remove(&pod.uid);
        self.metrics
            .attempt(AttemptResult::Scheduled, start.elapsed());
        let held = (!waiting.is_empty())
            .then(|| self.handle.waiting_pods.hold(pod.clone(), &host, waiting));
        let this = self.clone();
        tokio::spawn(async move {
            let result = async {
                if let Some((w, rx)) = held {
                    this.handle.waiting_pods.wait(&w, rx).await?;
                }
                profile.run_pre_bind(&state, &pod, &host).await?;
                profile.run_bind(&state, &pod, &host).await
            }
            .await;
            match result {
                Ok(()) => {
                    this.cache.finish_binding(&pod.uid);
                    this.queue.done(&pod.uid);
                    this.metrics.binding(true);
                    tracing::debug!(pod = %pod.key, node = %host, "bound");
                    if this.scheduled_events {
                        this.record_event(
                            &profile,
                            &pod,
                            "Normal",
                            "Scheduled",
                            format!("Successfully assigned {} to {host}", pod.key),
                        )
                        .await;
                    }
                    profile.run_post_bind(&state, &pod, &host).await;
                }
                Err(s) => {
                    profile.run_unreserve(&state, &pod, &host);
                    this.cache.forget_pod(&pod.uid);
                    this.metrics.binding(false);
                    // Resources were freed: pods parked for them may fit now.
                    this.queue.on_event(ClusterEvent::new(
                        EventResource::AssignedPod,
                        ActionType::DELETE,
                    ));
                    let error = s.code() == Code::Error;
                    let mut qp = qp;
                    if !error && !s.plugin().is_empty() {
                        qp.unschedulable_plugins.insert(s.plugin().to_owned());
                    }
                    tracing::debug!(pod = %pod.key, node = %host, error = %s, "binding failed");
                    this.fail(
                        &profile,
                        qp,
                        s.message(),
                        if error {
                            "SchedulerError"
                        } else {
                            "Unschedulable"
                        },
                        error,
                        None,
                        false,
                    );
                }
            }
        });
    }

    /// Requeues a pod that failed and tells its user why: the PodScheduled=False
    /// condition (and nominated node) in its status, and a FailedScheduling event.
    #[allow(clippy::too_many_arguments)]
    fn fail(
        self: &Arc<Self>,
        profile: &Arc<Profile>,
        qp: QueuedPodInfo,
        message: String,
        reason: &'static str,
        error: bool,
        nominated: Option<String>,
        clear_nomination: bool,
    ) {
        let pod = qp.pod.clone();
        tracing::debug!(pod = %pod.key, %message, "unschedulable");
        self.queue.requeue(qp, error);
        let this = self.clone();
        let profile = profile.clone();
        tokio::spawn(async move {
            this.record_event(
                &profile,
                &pod,
                "Warning",
                "FailedScheduling",
                message.clone(),
            )
            .await;
            let current = pod
                .pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
            let same = current.is_some_and(|c| {
                c.status == "False"
                    && c.reason.as_deref() == Some(reason)
                    && c.message.as_deref() == Some(message.as_str())
            });
            if same && nominated.is_none() && !clear_nomination {
                return;
            }
            let mut status = json!({
                "conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": null,
                    "lastTransitionTime": now_time(),
                }]
            });
            if let Some(node) = &nominated {
                status["nominatedNodeName"] = json!(node);
            } else if clear_nomination {
                status["nominatedNodeName"] = serde_json::Value::Null;
            }
            let pods: Api<Pod> = Api::namespaced(this.client.clone(), &pod.namespace);
            if let Err(e) = pods
                .patch_status(&pod.name, &Patch::Strategic(json!({"status": status})))
                .await
            {
                tracing::debug!(pod = %pod.key, error = %e, "failed to update the pod's condition");
            }
        });
    }

    async fn record_event(
        &self,
        profile: &Profile,
        pod: &PodInfo,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let seq = self.event_seq.fetch_add(1, Ordering::Relaxed);
        let now = now_timestamp();
        let suffix =
            (u64::try_from(now.as_nanosecond()).unwrap_or(0) ^ self.random()).wrapping_add(seq);
        let component = profile.scheduler_name().to_owned();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", pod.name, suffix)),
                namespace: Some(pod.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: Some(pod.uid.clone()),
                resource_version: pod.pod.metadata.resource_version.clone(),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            action: Some("Scheduling".into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            reporting_component: Some(component.clone()),
            reporting_instance: Some(component.clone()),
            source: Some(keelson_core::k8s_openapi::api::core::v1::EventSource {
                component: Some(component),
                host: None,
            }),
            ..Event::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &pod.namespace);
        if let Err(e) = events.create(&event).await {
            tracing::debug!(pod = %pod.key, error = %e, "failed to record an event");
        }
    }
}

/// Kubernetes' rule for how many feasible nodes to find before scoring: every node
/// below 100; otherwise `percentage` of them (adaptive when unset or 0: 50% minus one
/// point per 125 nodes, at least 5%), and at least 100.
pub fn num_feasible_nodes_to_find(percentage: Option<u32>, all: usize) -> usize {
    const MIN_FEASIBLE: usize = 100;
    if all < MIN_FEASIBLE {
        return all;
    }
    let mut pct = percentage.unwrap_or(0) as usize;
    if pct >= 100 {
        return all;
    }
    if pct == 0 {
        pct = 50usize.saturating_sub(all / 125).max(5);
    }
    (all * pct / 100).max(MIN_FEASIBLE).min(all)
}

/// Kubernetes' summary of why a pod fits nowhere: `0/5 nodes are available: 3
/// Insufficient cpu, 2 node(s) were unschedulable.`, then what preemption said.
pub fn fit_error_message(all: usize, statuses: &NodeStatuses, post_filter: Option<&str>) -> String {
    let mut m = format!("0/{all} nodes are available:");
    match &statuses.pre_filter {
        Some(s) => {
            m.push(' ');
            m.push_str(s.message().trim_end_matches('.'));
            m.push('.');
        }
        None => {
            let h = statuses.histogram();
            if !h.is_empty() {
                m.push(' ');
                m.push_str(&h);
                m.push('.');
            }
        }
    }
    if let Some(p) = post_filter.filter(|p| !p.is_empty()) {
        m.push(' ');
        m.push_str(p.trim_end_matches('.'));
        m.push('.');
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feasible_nodes_follow_the_adaptive_percentage() {
        assert_eq!(num_feasible_nodes_to_find(None, 50), 50);
        assert_eq!(num_feasible_nodes_to_find(None, 100), 100);
        // 1000 nodes: 50 - 8 = 42%.
        assert_eq!(num_feasible_nodes_to_find(None, 1000), 420);
        // 5000 nodes: 50 - 40 = 10%.
        assert_eq!(num_feasible_nodes_to_find(None, 5000), 500);
        // 10000 nodes: at least 5%.
        assert_eq!(num_feasible_nodes_to_find(None, 10000), 500);
        assert_eq!(num_feasible_nodes_to_find(Some(1), 1000), 100);
        assert_eq!(num_feasible_nodes_to_find(Some(100), 1000), 1000);
    }

    #[test]
    fn the_failure_message_reads_as_kubernetes_writes_it() {
        let mut statuses = NodeStatuses::default();
        for n in ["a", "b", "c"] {
            statuses.insert(n, Status::unschedulable("Insufficient cpu"));
        }
        for n in ["d", "e"] {
            statuses.insert(
                n,
                Status::unresolvable("node(s) had untolerated taint {key: value}"),
            );
        }
        assert_eq!(
            fit_error_message(5, &statuses, Some("preemption: 0/5 nodes are available: 5 Preemption is not helpful for scheduling.")),
            // Kubernetes sorts the "count reason" strings as strings.
            "0/5 nodes are available: 2 node(s) had untolerated taint {key: value}, 3 Insufficient cpu. preemption: 0/5 nodes are available: 5 Preemption is not helpful for scheduling."
        );
    }
}
