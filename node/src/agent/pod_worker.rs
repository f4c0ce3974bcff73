//! One task per pod: sandbox → init containers in order → containers; probes, hooks,
//! restarts with back-off, deadlines, termination, and the pod's status.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keelson_core::client::{Api, DeleteOptions, Patch};
use keelson_core::k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::env::{container_env, expand};
use super::node::time;
use super::probes::{self, Outcome};
use super::volumes;
use super::{lock, Desired, NodeCtx, PodInfo};
use crate::error::RuntimeError;
use crate::network::PodNetworkRef;
use crate::quantity;
use crate::runtime::sim::SIM_ANNOTATION;
use crate::runtime::{
    ContainerConfig, ContainerFilter, ContainerState, ContainerStatus, Mount, ResourceLimits,
    SandboxConfig, SandboxState, LABEL_ATTEMPT, LABEL_CONTAINER_NAME, LABEL_POD_NAME,
    LABEL_POD_NAMESPACE, LABEL_POD_UID,
};

const FAR: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct ProbeState {
    started: bool,
    ready: bool,
    startup_failures: i32,
    live_failures: i32,
    ready_successes: i32,
    ready_failures: i32,
    next_startup: Option<Instant>,
    next_live: Option<Instant>,
    next_ready: Option<Instant>,
}

/// One container of the pod, as the worker tracks it.
struct CState {
    name: String,
    init: bool,
    /// The current instance.
    id: Option<String>,
    /// Its attempt (= restartCount).
    attempt: u32,
    status: Option<ContainerStatus>,
    previous_id: Option<String>,
    last_terminated: Option<ContainerStatus>,
    /// Why it is waiting, and the message.
    waiting: Option<(String, String)>,
    restart_at: Option<Instant>,
    backoff: Duration,
    started: Option<Instant>,
    probes: ProbeState,
    /// A message for the next termination (a failed probe or hook).
    kill_message: Option<String>,
}

impl CState {
    fn new(name: &str, init: bool) -> CState {
        CState {
            name: name.to_owned(),
            init,
            id: None,
            attempt: 0,
            status: None,
            previous_id: None,
            last_terminated: None,
            waiting: None,
            restart_at: None,
            backoff: Duration::ZERO,
            started: None,
            probes: ProbeState::default(),
            kill_message: None,
        }
    }

    fn state(&self) -> Option<ContainerState> {
        self.status.as_ref().map(|s| s.state)
    }

    fn running(&self) -> bool {
        self.state() == Some(ContainerState::Running)
    }

    fn exit_code(&self) -> Option<i32> {
        self.status
            .as_ref()
            .filter(|s| s.state == ContainerState::Exited)
            .and_then(|s| s.exit_code)
    }

    fn ready(&self) -> bool {
        self.running() && self.probes.started && self.probes.ready
    }
}

fn should_restart(policy: &str, init: bool, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        // Init containers run to completion: Always means "again on failure" for them.
        _ if init => code != 0,
        _ => true,
    }
}

/// The pod's QoS class.
pub(crate) fn qos_class(spec: &PodSpec) -> &'static str {
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.as_ref();
        let limits = r.and_then(|r| r.limits.as_ref());
        let requests = r.and_then(|r| r.requests.as_ref());
        for res in ["cpu", "memory"] {
            let l = limits.and_then(|m| m.get(res)).map(|q| q.0.as_str());
            let q = requests
                .and_then(|m| m.get(res))
                .map(|q| q.0.as_str())
                .or(l);
            if l.is_some() || q.is_some() {
                any = true;
            }
            match (l, q) {
                (Some(l), Some(q)) if quantity::parse(l) == quantity::parse(q) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

pub(crate) struct PodWorker {
    ctx: Arc<NodeCtx>,
    uid: String,
    rx: watch::Receiver<Desired>,
    info: Arc<Mutex<PodInfo>>,
    pod_ip: Option<String>,
    sandbox: Option<String>,
    sandbox_attempt: u32,
    volumes: Option<HashMap<String, PathBuf>>,
    /// When the volumes made from objects are written again.
    volumes_refresh_at: Option<Instant>,
    adopted: bool,
    start_time: Option<SystemTime>,
    containers: Vec<CState>,
    /// A pod-level problem (network, volumes): reason and message.
    pod_problem: Option<(String, String)>,
    /// The pod reached Succeeded or Failed.
    phase_final: Option<&'static str>,
    /// Pod-level reason and message (DeadlineExceeded).
    pod_reason: Option<(String, String)>,
    transitions: HashMap<&'static str, (bool, String)>,
    last_status: Option<Value>,
    /// When `activeDeadlineSeconds` runs out.
    deadline: Option<Instant>,
}

impl PodWorker {
    pub(crate) fn new(
        ctx: Arc<NodeCtx>,
        uid: String,
        rx: watch::Receiver<Desired>,
        info: Arc<Mutex<PodInfo>>,
    ) -> PodWorker {
        PodWorker {
            ctx,
            uid,
            rx,
            info,
            pod_ip: None,
            sandbox: None,
            sandbox_attempt: 0,
            volumes: None,
            volumes_refresh_at: None,
            adopted: false,
            start_time: None,
            containers: Vec::new(),
            pod_problem: None,
            phase_final: None,
            pod_reason: None,
            transitions: HashMap::new(),
            last_status: None,
            deadline: None,
        }
    }

    fn net_ref(&self, pod: &Pod) -> PodNetworkRef {
        PodNetworkRef {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: self.uid.clone(),
        }
    }

    pub(crate) async fn run(mut self) {
        let span = tracing::debug_span!("pod", uid = %self.uid);
        let _ = span.enter();
        loop {
            let desired = self.rx.borrow_and_update().clone();
            // Boxed: a pass's futures are large and live only while it runs, so an idle
            // worker stays small (it matters with thousands of simulated pods).
            if desired.removed || desired.pod.metadata.deletion_timestamp.is_some() {
                Box::pin(self.terminate(&desired)).await;
                break;
            }
            let next = Box::pin(self.sync(&desired)).await;
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        // The agent is going away; the containers stay for the next one.
                        return;
                    }
                }
                _ = tokio::time::sleep_until(next) => {}
            }
        }
        self.ctx.forget(&self.uid);
    }

    fn spec(pod: &Pod) -> Option<&PodSpec> {
        pod.spec.as_ref()
    }

    fn container_spec<'a>(pod: &'a Pod, c: &CState) -> Option<&'a Container> {
        let spec = pod.spec.as_ref()?;
        if c.init {
            spec.init_containers
                .iter()
                .flatten()
                .find(|x| x.name == c.name)
        } else {
            spec.containers.iter().find(|x| x.name == c.name)
        }
    }

    /// Finds what an earlier agent left running for this pod.
    async fn adopt(&mut self) {
        self.adopted = true;
        let rt = &self.ctx.runtime;
        if let Ok(sandboxes) = rt.list_sandboxes().await {
            let mine: Vec<_> = sandboxes
                .into_iter()
                .filter(|s| s.config.uid == self.uid)
                .collect();
            self.sandbox_attempt = mine.iter().map(|s| s.config.attempt + 1).max().unwrap_or(0);
            if let Some(s) = mine
                .iter()
                .filter(|s| s.state == SandboxState::Ready)
                .max_by_key(|s| s.config.attempt)
            {
                self.sandbox = Some(s.id.clone());
            }
        }
        let Some(sandbox) = self.sandbox.clone() else {
            return;
        };
        let mut filter = ContainerFilter {
            sandbox_id: Some(sandbox),
            ..ContainerFilter::default()
        };
        filter.labels.insert(LABEL_POD_UID.into(), self.uid.clone());
        let Ok(found) = rt.list_containers(&filter).await else {
            return;
        };
        let mut by_name: BTreeMap<String, Vec<ContainerStatus>> = BTreeMap::new();
        for c in found {
            by_name.entry(c.name.clone()).or_default().push(c);
        }
        for (name, mut list) in by_name {
            list.sort_by_key(|c| c.attempt);
            let Some(cs) = self.containers.iter_mut().find(|c| c.name == name) else {
                continue;
            };
            let current = list.pop();
            let previous = list.pop();
            for old in list {
                let _ = rt.remove_container(&old.id).await;
            }
            if let Some(cur) = current {
                tracing::info!(pod_uid = %self.uid, container = %name, id = %cur.id, "adopted a container");
                cs.id = Some(cur.id.clone());
                cs.attempt = cur.attempt;
                if cur.state == ContainerState::Running {
                    cs.started = Some(Instant::now());
                    cs.probes = ProbeState::default();
                }
                cs.status = Some(cur);
            }
            if let Some(prev) = previous {
                cs.previous_id = Some(prev.id.clone());
                cs.last_terminated = Some(prev);
            }
        }
    }

    fn init_probe_state(&self, pod: &Pod, c: &mut CState) {
        let now = Instant::now();
        c.started = Some(now);
        let mut ps = ProbeState::default();
        if let Some(spec) = Self::container_spec(pod, c) {
            let delay = |p: &keelson_core::k8s_openapi::api::core::v1::Probe| {
                Some(now + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64))
            };
            ps.next_startup = spec.startup_probe.as_ref().and_then(delay);
            ps.next_live = spec.liveness_probe.as_ref().and_then(delay);
            ps.next_ready = spec.readiness_probe.as_ref().and_then(delay);
            ps.started = spec.startup_probe.is_none();
            ps.ready = spec.readiness_probe.is_none();
        }
        c.probes = ps;
    }

    async fn container_config(
        &self,
        pod: &Pod,
        spec: &Container,
        attempt: u32,
    ) -> Result<ContainerConfig, String> {
        let ip = self.pod_ip.clone().unwrap_or_default();
        let env = container_env(&self.ctx, pod, spec, &ip)
            .await
            .map_err(|e| e.0)?;
        let map: HashMap<String, String> = env.iter().cloned().collect();
        let command = spec
            .command
            .iter()
            .flatten()
            .map(|s| expand(s, &map))
            .collect();
        let args = spec
            .args
            .iter()
            .flatten()
            .map(|s| expand(s, &map))
            .collect();
        let mut mounts = Vec::new();
        for m in spec.volume_mounts.iter().flatten() {
            let base = match &self.volumes {
                Some(v) => match v.get(&m.name) {
                    Some(p) => p.clone(),
                    None => return Err(format!("volume {:?} is not defined in the pod", m.name)),
                },
                None => PathBuf::from("/nonexistent/simulated").join(&m.name),
            };
            let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => {
                    if sub.starts_with('/') || sub.split('/').any(|p| p == "..") {
                        return Err(format!(
                            "subPath {sub:?} must be relative and must not contain '..'"
                        ));
                    }
                    let p = base.join(sub);
                    if self.volumes.is_some() && !p.exists() {
                        let _ = std::fs::create_dir_all(&p);
                    }
                    p
                }
                None => base,
            };
            mounts.push(Mount {
                volume: m.name.clone(),
                container_path: m.mount_path.clone(),
                host_path: host,
                read_only: m.read_only.unwrap_or(false),
            });
        }
        let limits = spec.resources.as_ref().map(|r| ResourceLimits {
            cpu_millis: r
                .limits
                .as_ref()
                .and_then(|l| l.get("cpu"))
                .and_then(|q| quantity::parse_millis(&q.0)),
            memory_bytes: r
                .limits
                .as_ref()
                .and_then(|l| l.get("memory"))
                .and_then(|q| quantity::parse_bytes(&q.0)),
            cpu_request_millis: r
                .requests
                .as_ref()
                .and_then(|l| l.get("cpu"))
                .and_then(|q| quantity::parse_millis(&q.0)),
        });
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_POD_UID.to_owned(), self.uid.clone());
        labels.insert(
            LABEL_POD_NAME.to_owned(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        labels.insert(
            LABEL_POD_NAMESPACE.to_owned(),
            pod.metadata.namespace.clone().unwrap_or_default(),
        );
        labels.insert(LABEL_CONTAINER_NAME.to_owned(), spec.name.clone());
        labels.insert(LABEL_ATTEMPT.to_owned(), attempt.to_string());
        let mut annotations = BTreeMap::new();
        if let Some(a) = &pod.metadata.annotations {
            let specific = a.get(&format!("sim.keelson.dev/{}", spec.name));
            if let Some(b) = specific.or_else(|| a.get("sim.keelson.dev/all")) {
                annotations.insert(SIM_ANNOTATION.to_owned(), b.clone());
            }
        }
        Ok(ContainerConfig {
            name: spec.name.clone(),
            image: spec.image.clone().unwrap_or_default(),
            command,
            args,
            env,
            working_dir: spec.working_dir.clone().filter(|w| !w.is_empty()),
            mounts,
            limits: limits.unwrap_or_default(),
            labels,
            annotations,
            attempt,
        })
    }

    /// Creates and starts the next instance of container `i`.
    async fn start(&mut self, pod: &Pod, i: usize) {
        let Some(spec) = Self::container_spec(pod, &self.containers[i]).cloned() else {
            return;
        };
        let Some(sandbox) = self.sandbox.clone() else {
            return;
        };
        let rt = self.ctx.runtime.clone();
        let attempt = {
            let c = &self.containers[i];
            if c.id.is_some() {
                c.attempt + 1
            } else {
                c.attempt
            }
        };
        let config = match self.container_config(pod, &spec, attempt).await {
            Ok(c) => c,
            Err(msg) => {
                self.containers[i].waiting = Some(("CreateContainerConfigError".into(), msg));
                return;
            }
        };
        let id = match rt.create_container(&sandbox, &config).await {
            Ok(id) => id,
            Err(e) => {
                let reason = match e {
                    RuntimeError::CommandNotFound(_) => "RunContainerError",
                    _ => "CreateContainerError",
                };
                self.containers[i].waiting = Some((reason.into(), e.to_string()));
                return;
            }
        };
        // The new instance replaces the current one; the current becomes the previous.
        {
            let c = &mut self.containers[i];
            if let Some(old) = c.id.take() {
                if let Some(older) = c.previous_id.replace(old) {
                    let _ = rt.remove_container(&older).await;
                }
                if let Some(s) = c.status.take() {
                    c.last_terminated = Some(s);
                }
            }
            c.id = Some(id.clone());
            c.attempt = attempt;
            c.restart_at = None;
            c.kill_message = None;
        }
        let result = rt.start_container(&id).await;
        let status = rt.container_status(&id).await.ok();
        self.containers[i].status = status;
        match result {
            Ok(()) => {
                self.containers[i].waiting = None;
                let mut c = std::mem::replace(&mut self.containers[i], CState::new("", false));
                self.init_probe_state(pod, &mut c);
                self.containers[i] = c;
                if let Some(hook) = spec.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
                    let ip = self.pod_ip.clone().unwrap_or_default();
                    if let Outcome::Failure(msg) =
                        probes::hook(rt.as_ref(), &id, hook, &spec, &ip, Duration::from_secs(30))
                            .await
                    {
                        tracing::info!(pod_uid = %self.uid, container = %spec.name, %msg, "postStart hook failed; killing the container");
                        self.containers[i].kill_message =
                            Some(format!("PostStartHook failed: {msg}"));
                        let grace = self.grace(pod);
                        let _ = rt.stop_container(&id, grace).await;
                        self.containers[i].status = rt.container_status(&id).await.ok();
                    }
                }
            }
            Err(e) => {
                self.containers[i].waiting = Some(("RunContainerError".into(), e.to_string()));
            }
        }
    }

    /// Removes a container that was created and never started, so that `start` makes it
    /// again with the same attempt.
    async fn discard_created(&mut self, i: usize) {
        if let Some(id) = self.containers[i].id.take() {
            let _ = self.ctx.runtime.remove_container(&id).await;
        }
        self.containers[i].status = None;
    }

    /// When the volumes are next written again: after the refresh period, or when a
    /// token of the pod is due, whichever comes first.
    fn next_volume_refresh(&self, now: Instant) -> Instant {
        let periodic = now + self.ctx.config.volume_refresh_period;
        match self.ctx.tokens.next_refresh(&self.uid) {
            Some(t) => periodic.min(t),
            None => periodic,
        }
    }

    fn grace(&self, pod: &Pod) -> Duration {
        let secs = pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| Self::spec(pod).and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0);
        Duration::from_secs(secs as u64)
    }

    async fn refresh(&mut self) {
        let rt = self.ctx.runtime.clone();
        for c in &mut self.containers {
            if let Some(id) = &c.id {
                match rt.container_status(id).await {
                    Ok(s) => c.status = Some(s),
                    Err(e) if e.is_not_found() => {
                        c.id = None;
                        c.status = None;
                    }
                    Err(e) => tracing::debug!(error = %e, "container status"),
                }
            }
        }
    }

    /// Handles an exited container: decides on a restart and its back-off. Returns
    /// whether the container is done for good.
    fn on_exit(&mut self, i: usize, policy: &str, now: Instant) -> bool {
        let cfg = self.ctx.config.clone();
        let c = &mut self.containers[i];
        let code = c.exit_code().unwrap_or(0);
        let start_failed = c
            .waiting
            .as_ref()
            .is_some_and(|(r, _)| r == "RunContainerError");
        if !should_restart(policy, c.init, if start_failed { 128 } else { code }) {
            c.waiting = None;
            return true;
        }
        if c.restart_at.is_none() {
            if c.started
                .is_some_and(|s| now.duration_since(s) >= cfg.backoff_reset)
            {
                c.backoff = Duration::ZERO;
            }
            let delay = c.backoff;
            c.backoff = if delay.is_zero() {
                cfg.backoff_base
            } else {
                (delay * 2).min(cfg.backoff_max)
            };
            c.restart_at = Some(now + delay);
            if !delay.is_zero() && !start_failed {
                let pod = lock(&self.info).pod.clone();
                let (name, ns) = pod
                    .as_ref()
                    .map(|p| {
                        (
                            p.metadata.name.clone().unwrap_or_default(),
                            p.metadata.namespace.clone().unwrap_or_default(),
                        )
                    })
                    .unwrap_or_default();
                c.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off {}s restarting failed container={} pod={}_{}({})",
                        delay.as_secs(),
                        c.name,
                        name,
                        ns,
                        self.uid
                    ),
                ));
            }
        }
        false
    }

    /// One pass: make the containers match the spec. Returns when to look again.
    async fn sync(&mut self, desired: &Desired) -> Instant {
        let pod = desired.pod.clone();
        {
            let mut info = lock(&self.info);
            info.pod = Some(pod.clone());
        }
        let now = Instant::now();
        let period = self.ctx.config.sync_period;
        let Some(spec) = Self::spec(&pod) else {
            return now + FAR;
        };
        if self.containers.is_empty() {
            for c in spec.init_containers.iter().flatten() {
                self.containers.push(CState::new(&c.name, true));
            }
            for c in &spec.containers {
                self.containers.push(CState::new(&c.name, false));
            }
            self.start_time = pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| crate::runtime::logs::from_timestamp(t.0))
                .or_else(|| Some(SystemTime::now()));
        }
        if self.phase_final.is_some() {
            self.publish(&pod, desired.is_static).await;
            return now + FAR;
        }
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        // activeDeadlineSeconds
        // The deadline runs on tokio's clock from the pod's start time.
        if let (Some(ads), Some(start)) = (spec.active_deadline_seconds, self.start_time) {
            let at = start + Duration::from_secs(ads.max(0) as u64);
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            let deadline = *self.deadline.get_or_insert(now + left);
            if now >= deadline {
                tracing::info!(pod_uid = %self.uid, "the pod passed its active deadline");
                self.stop_all(&pod, self.grace(&pod)).await;
                self.pod_reason = Some((
                    "DeadlineExceeded".into(),
                    format!(
                        "Pod was active on the node longer than the specified deadline of {ads}s"
                    ),
                ));
                self.phase_final = Some("Failed");
                self.release(&pod).await;
                self.publish(&pod, desired.is_static).await;
                return now + FAR;
            }
        }
        if self.pod_ip.is_none() {
            match self.ctx.network.add(&self.net_ref(&pod)).await {
                Ok(n) => self.pod_ip = n.ips.first().map(|ip| ip.to_string()),
                Err(e) => {
                    self.pod_problem = Some((
                        "ContainerCreating".into(),
                        format!("failed to set up the pod network: {e}"),
                    ));
                    self.publish(&pod, desired.is_static).await;
                    return now + period;
                }
            }
        }
        if let Some(dir) = self.ctx.state_dir.clone() {
            let due = self.volumes_refresh_at.is_some_and(|t| t <= now);
            if self.volumes.is_none() || due {
                let root = dir.join("pods").join(&self.uid).join("volumes");
                let ip = self.pod_ip.clone().unwrap_or_default();
                let prepared = volumes::prepare(&self.ctx, &pod, &ip, &root).await;
                self.volumes_refresh_at = Some(self.next_volume_refresh(now));
                match prepared {
                    Ok(v) => self.volumes = Some(v),
                    Err(e) => {
                        // As kubelet: a FailedMount event; a pod not started yet waits in
                        // ContainerCreating, a running one keeps its volumes as they were.
                        let message = format!("MountVolume.SetUp failed {}", e.0);
                        self.ctx.events.warning(&pod, "FailedMount", &message).await;
                        if self.volumes.is_none() {
                            self.pod_problem = Some(("ContainerCreating".into(), message));
                            self.publish(&pod, desired.is_static).await;
                            return now + period;
                        }
                        tracing::warn!(pod_uid = %self.uid, error = %e.0, "failed to refresh the pod's volumes");
                    }
                }
            }
        }
        self.pod_problem = None;
        if !self.adopted {
            self.adopt().await;
        }
        if self.sandbox.is_none() {
            let mut labels = BTreeMap::new();
            labels.insert(LABEL_POD_UID.to_owned(), self.uid.clone());
            labels.insert(
                LABEL_POD_NAME.to_owned(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            labels.insert(
                LABEL_POD_NAMESPACE.to_owned(),
                pod.metadata.namespace.clone().unwrap_or_default(),
            );
            let config = SandboxConfig {
                name: pod.metadata.name.clone().unwrap_or_default(),
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                uid: self.uid.clone(),
                attempt: self.sandbox_attempt,
                hostname: spec
                    .hostname
                    .clone()
                    .or_else(|| pod.metadata.name.clone())
                    .unwrap_or_default(),
                ip: self.pod_ip.as_deref().and_then(|ip| ip.parse().ok()),
                labels,
                annotations: BTreeMap::new(),
            };
            match self.ctx.runtime.run_sandbox(&config).await {
                Ok(id) => self.sandbox = Some(id),
                Err(e) => {
                    self.pod_problem = Some((
                        "ContainerCreating".into(),
                        format!("failed to create the pod sandbox: {e}"),
                    ));
                    self.publish(&pod, desired.is_static).await;
                    return now + period;
                }
            }
        }
        self.refresh().await;
        let mut next = now + period;
        // Init containers, in order.
        let n_init = self.containers.iter().filter(|c| c.init).count();
        let mut init_done = true;
        for i in 0..n_init {
            let state = self.containers[i].state();
            match state {
                Some(ContainerState::Exited) if self.containers[i].exit_code() == Some(0) => {
                    continue
                }
                Some(ContainerState::Running) => {
                    init_done = false;
                    break;
                }
                Some(ContainerState::Created) => {
                    // Created but never started (an agent stopped in between): redo it.
                    init_done = false;
                    self.discard_created(i).await;
                    self.start(&pod, i).await;
                    break;
                }
                Some(ContainerState::Exited) | Some(ContainerState::Unknown) => {
                    init_done = false;
                    if self.on_exit(i, &policy, now) {
                        self.phase_final = Some("Failed");
                        self.release(&pod).await;
                        break;
                    }
                    if self.containers[i].restart_at.is_some_and(|t| t <= now) {
                        self.start(&pod, i).await;
                    } else if let Some(t) = self.containers[i].restart_at {
                        next = next.min(t);
                    }
                    break;
                }
                None => {
                    init_done = false;
                    if self.containers[i].waiting.is_some()
                        && self.containers[i].restart_at.is_some_and(|t| t > now)
                    {
                        break;
                    }
                    self.start(&pod, i).await;
                    break;
                }
            }
        }
        if init_done && self.phase_final.is_none() {
            for i in n_init..self.containers.len() {
                match self.containers[i].state() {
                    None => self.start(&pod, i).await,
                    Some(ContainerState::Running) => {
                        let wanted = Self::container_spec(&pod, &self.containers[i])
                            .and_then(|s| s.image.clone())
                            .unwrap_or_default();
                        let image_changed = self.containers[i]
                            .status
                            .as_ref()
                            .is_some_and(|s| s.image != wanted);
                        if image_changed {
                            // A new image (the one mutable part of a pod's spec): restart
                            // the container at once, without back-off.
                            if let Some(id) = self.containers[i].id.clone() {
                                tracing::info!(pod_uid = %self.uid, container = %self.containers[i].name, "the image changed; restarting the container");
                                let grace = self.grace(&pod);
                                let _ = self.ctx.runtime.stop_container(&id, grace).await;
                                self.containers[i].status =
                                    self.ctx.runtime.container_status(&id).await.ok();
                                self.containers[i].restart_at = Some(Instant::now());
                                self.start(&pod, i).await;
                            }
                        } else if let Some(t) = self.run_probes(&pod, i).await {
                            next = next.min(t);
                        }
                    }
                    Some(ContainerState::Created) => {
                        self.discard_created(i).await;
                        self.start(&pod, i).await;
                    }
                    Some(ContainerState::Exited) | Some(ContainerState::Unknown) => {
                        if self.on_exit(i, &policy, now) {
                            continue;
                        }
                        match self.containers[i].restart_at {
                            Some(t) if t <= now => self.start(&pod, i).await,
                            Some(t) => next = next.min(t),
                            None => {}
                        }
                    }
                }
            }
            // Every container done for good: the pod is finished.
            let all_done = self.containers[n_init..].iter().all(|c| {
                c.state() == Some(ContainerState::Exited)
                    && c.restart_at.is_none()
                    && !should_restart(&policy, false, c.exit_code().unwrap_or(0))
            });
            if all_done && self.containers.len() > n_init {
                let ok = self.containers[n_init..]
                    .iter()
                    .all(|c| c.exit_code() == Some(0));
                for c in &mut self.containers[n_init..] {
                    c.waiting = None;
                }
                self.phase_final = Some(if ok { "Succeeded" } else { "Failed" });
                self.release(&pod).await;
            }
        }
        self.publish(&pod, desired.is_static).await;
        for t in [self.deadline, self.volumes_refresh_at]
            .into_iter()
            .flatten()
        {
            next = next.min(t);
        }
        for c in &self.containers {
            for t in [
                c.probes.next_startup,
                c.probes.next_live,
                c.probes.next_ready,
                c.restart_at,
            ]
            .into_iter()
            .flatten()
            {
                if t > now {
                    next = next.min(t);
                }
            }
        }
        next.max(now + Duration::from_millis(10))
    }

    async fn run_probes(&mut self, pod: &Pod, i: usize) -> Option<Instant> {
        let spec = Self::container_spec(pod, &self.containers[i])?.clone();
        let id = self.containers[i].id.clone()?;
        let rt = self.ctx.runtime.clone();
        let ip = self.pod_ip.clone().unwrap_or_default();
        let now = Instant::now();
        let period = |p: &keelson_core::k8s_openapi::api::core::v1::Probe| {
            Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64)
        };
        let mut kill: Option<String> = None;
        if !self.containers[i].probes.started {
            if let Some(p) = &spec.startup_probe {
                if self.containers[i]
                    .probes
                    .next_startup
                    .is_some_and(|t| t <= now)
                {
                    let out = probes::probe(rt.as_ref(), &id, p, &spec, &ip).await;
                    let ps = &mut self.containers[i].probes;
                    ps.next_startup = Some(now + period(p));
                    match out {
                        Outcome::Success => {
                            ps.started = true;
                            ps.next_startup = None;
                        }
                        Outcome::Failure(msg) => {
                            ps.startup_failures += 1;
                            if ps.startup_failures >= p.failure_threshold.unwrap_or(3).max(1) {
                                kill = Some(format!("Startup probe failed: {msg}"));
                            }
                        }
                    }
                }
            }
        }
        if self.containers[i].probes.started && kill.is_none() {
            if let Some(p) = &spec.liveness_probe {
                let ps = &self.containers[i].probes;
                if ps.next_live.is_none_or(|t| t <= now) {
                    let out = probes::probe(rt.as_ref(), &id, p, &spec, &ip).await;
                    let ps = &mut self.containers[i].probes;
                    ps.next_live = Some(now + period(p));
                    match out {
                        Outcome::Success => ps.live_failures = 0,
                        Outcome::Failure(msg) => {
                            ps.live_failures += 1;
                            if ps.live_failures >= p.failure_threshold.unwrap_or(3).max(1) {
                                kill = Some(format!("Liveness probe failed: {msg}"));
                            }
                        }
                    }
                }
            }
            if let Some(p) = &spec.readiness_probe {
                let ps = &self.containers[i].probes;
                if ps.next_ready.is_none_or(|t| t <= now) {
                    let out = probes::probe(rt.as_ref(), &id, p, &spec, &ip).await;
                    let ps = &mut self.containers[i].probes;
                    ps.next_ready = Some(now + period(p));
                    match out {
                        Outcome::Success => {
                            ps.ready_failures = 0;
                            ps.ready_successes += 1;
                            if ps.ready_successes >= p.success_threshold.unwrap_or(1).max(1) {
                                ps.ready = true;
                            }
                        }
                        Outcome::Failure(_) => {
                            ps.ready_successes = 0;
                            ps.ready_failures += 1;
                            if ps.ready_failures >= p.failure_threshold.unwrap_or(3).max(1) {
                                ps.ready = false;
                            }
                        }
                    }
                }
            }
        }
        if let Some(msg) = kill {
            tracing::info!(pod_uid = %self.uid, container = %spec.name, %msg, "killing the container");
            let grace = self.grace(pod);
            if let Some(h) = spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                let _ = probes::hook(rt.as_ref(), &id, h, &spec, &ip, grace).await;
            }
            self.containers[i].kill_message = Some(msg);
            let _ = rt.stop_container(&id, grace).await;
            self.containers[i].status = rt.container_status(&id).await.ok();
            self.containers[i].probes = ProbeState::default();
            return Some(Instant::now());
        }
        let ps = &self.containers[i].probes;
        [ps.next_startup, ps.next_live, ps.next_ready]
            .into_iter()
            .flatten()
            .min()
    }

    /// Stops every running container: preStop hooks, then SIGTERM, the grace period,
    /// SIGKILL, all containers at once.
    async fn stop_all(&mut self, pod: &Pod, grace: Duration) {
        let rt = self.ctx.runtime.clone();
        let ip = self.pod_ip.clone().unwrap_or_default();
        let deadline = Instant::now() + grace;
        let mut stops = Vec::new();
        for c in &self.containers {
            let (Some(id), true) = (c.id.clone(), c.running()) else {
                continue;
            };
            let spec = Self::container_spec(pod, c).cloned();
            let rt = rt.clone();
            let ip = ip.clone();
            stops.push(async move {
                if let Some(spec) = &spec {
                    if let Some(h) = spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                        let left = deadline.saturating_duration_since(Instant::now());
                        let _ = tokio::time::timeout(
                            left,
                            probes::hook(rt.as_ref(), &id, h, spec, &ip, left),
                        )
                        .await;
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(e) = rt.stop_container(&id, left).await {
                    tracing::warn!(container = %id, error = %e, "failed to stop a container");
                }
            });
        }
        futures::future::join_all(stops).await;
        self.refresh().await;
    }

    /// The pod is finished: free its sandbox and address (containers stay for logs).
    async fn release(&mut self, pod: &Pod) {
        if let Some(s) = &self.sandbox {
            let _ = self.ctx.runtime.stop_sandbox(s).await;
        }
        let _ = self.ctx.network.remove(&self.net_ref(pod)).await;
        self.refresh().await;
    }

    async fn terminate(&mut self, desired: &Desired) {
        let pod = desired.pod.clone();
        tracing::info!(pod_uid = %self.uid, "stopping the pod");
        if !self.adopted {
            self.adopt().await;
            self.refresh().await;
        }
        let grace = self.grace(&pod);
        self.stop_all(&pod, grace).await;
        if let Some(s) = self.sandbox.take() {
            if let Err(e) = self.ctx.runtime.remove_sandbox(&s).await {
                tracing::warn!(sandbox = %s, error = %e, "failed to remove a sandbox");
            }
        }
        if let Err(e) = self.ctx.network.remove(&self.net_ref(&pod)).await {
            tracing::warn!(pod_uid = %self.uid, error = %e, "failed to free the pod's address");
        }
        if let Some(dir) = &self.ctx.state_dir {
            let _ = tokio::fs::remove_dir_all(dir.join("pods").join(&self.uid)).await;
        }
        self.ctx.tokens.forget(&self.uid);
        self.ctx.events.forget(&self.uid);
        if desired.removed || desired.is_static {
            return;
        }
        if self.phase_final.is_none() {
            let failed = self
                .containers
                .iter()
                .any(|c| c.exit_code().is_some_and(|x| x != 0));
            self.phase_final = Some(if failed { "Failed" } else { "Succeeded" });
        }
        self.publish(&pod, false).await;
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        let opts = DeleteOptions {
            uid: Some(self.uid.clone()),
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        match api.delete(&name, &opts).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() || e.is_conflict() => {}
            Err(e) => tracing::warn!(pod = %name, error = %e, "failed to delete the pod"),
        }
    }

    fn condition(
        &mut self,
        kind: &'static str,
        ok: bool,
        reason: Option<&str>,
        message: Option<String>,
    ) -> Value {
        let now = time(SystemTime::now());
        let t = match self.transitions.get(kind) {
            Some((s, t)) if *s == ok => t.clone(),
            _ => {
                self.transitions.insert(kind, (ok, now.clone()));
                now
            }
        };
        let mut c = json!({"type": kind, "status": if ok {"True"} else {"False"}, "lastProbeTime": null, "lastTransitionTime": t});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        if let Some(m) = message {
            c["message"] = json!(m);
        }
        c
    }

    fn container_json(&self, pod: &Pod, c: &CState, scheme: &str, init_pending: bool) -> Value {
        let image = Self::container_spec(pod, c)
            .and_then(|s| s.image.clone())
            .unwrap_or_default();
        let terminated = |s: &ContainerStatus, message: Option<&String>| {
            let mut t = json!({
                "exitCode": s.exit_code.unwrap_or(0),
                "reason": s.reason.clone().unwrap_or_else(|| "Error".into()),
                "containerID": format!("{scheme}://{}", s.id),
            });
            if let Some(st) = s.started_at {
                t["startedAt"] = json!(time(st));
            }
            if let Some(f) = s.finished_at {
                t["finishedAt"] = json!(time(f));
            }
            if let Some(m) = message.or(s.message.as_ref()) {
                t["message"] = json!(m);
            }
            json!({"terminated": t})
        };
        let state = if let Some((reason, message)) = &c.waiting {
            json!({"waiting": {"reason": reason, "message": message}})
        } else {
            match &c.status {
                Some(s) if s.state == ContainerState::Running => {
                    json!({"running": {"startedAt": time(s.started_at.unwrap_or(s.created_at))}})
                }
                Some(s) if s.state == ContainerState::Exited => {
                    terminated(s, c.kill_message.as_ref())
                }
                Some(_) => json!({"waiting": {"reason": "ContainerCreating"}}),
                None if self.pod_problem.is_some() => {
                    let (r, m) = self.pod_problem.clone().unwrap_or_default();
                    json!({"waiting": {"reason": r, "message": m}})
                }
                None if init_pending => json!({"waiting": {"reason": "PodInitializing"}}),
                None => json!({"waiting": {"reason": "ContainerCreating"}}),
            }
        };
        let mut out = json!({
            "name": c.name,
            "image": image,
            "imageID": image,
            "ready": c.ready(),
            "restartCount": c.attempt,
            "started": c.running() && c.probes.started,
            "state": state,
            "lastState": c.last_terminated.as_ref().map_or(json!({}), |s| terminated(s, None)),
        });
        if let Some(id) = &c.id {
            out["containerID"] = json!(format!("{scheme}://{id}"));
        }
        out
    }

    /// Computes the pod's status and writes it when it changed.
    async fn publish(&mut self, pod: &Pod, is_static: bool) {
        let scheme = self
            .ctx
            .runtime
            .version()
            .split("://")
            .next()
            .unwrap_or("process")
            .to_owned();
        let n_init = self.containers.iter().filter(|c| c.init).count();
        let init_done = self.containers[..n_init]
            .iter()
            .all(|c| c.exit_code() == Some(0));
        let init_json: Vec<Value> = self.containers[..n_init]
            .iter()
            .map(|c| self.container_json(pod, c, &scheme, false))
            .collect();
        let main_json: Vec<Value> = self.containers[n_init..]
            .iter()
            .map(|c| self.container_json(pod, c, &scheme, !init_done))
            .collect();
        let main = &self.containers[n_init..];
        let phase = match self.phase_final {
            Some(p) => p,
            None if !init_done => "Pending",
            None if main
                .iter()
                .any(|c| c.running() || c.attempt > 0 || c.restart_at.is_some()) =>
            {
                "Running"
            }
            None => "Pending",
        };
        let unready: Vec<String> = main
            .iter()
            .filter(|c| !c.ready())
            .map(|c| c.name.clone())
            .collect();
        let uninit: Vec<String> = self.containers[..n_init]
            .iter()
            .filter(|c| c.exit_code() != Some(0))
            .map(|c| c.name.clone())
            .collect();
        let sandbox_ready =
            self.sandbox.is_some() && self.pod_ip.is_some() && self.phase_final.is_none();
        let ready = unready.is_empty() && self.phase_final.is_none();
        let completed = self.phase_final == Some("Succeeded");
        let ready_reason = if completed {
            Some("PodCompleted")
        } else if ready {
            None
        } else {
            Some("ContainersNotReady")
        };
        let ready_msg = (!ready && !completed)
            .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
        let conditions = vec![
            self.condition("PodReadyToStartContainers", sandbox_ready, None, None),
            self.condition(
                "Initialized",
                uninit.is_empty(),
                (!uninit.is_empty()).then_some("ContainersNotInitialized"),
                (!uninit.is_empty())
                    .then(|| format!("containers with incomplete status: [{}]", uninit.join(" "))),
            ),
            self.condition("Ready", ready, ready_reason, ready_msg.clone()),
            self.condition("ContainersReady", ready, ready_reason, ready_msg),
            self.condition("PodScheduled", true, None, None),
        ];
        let ip = self.pod_ip.clone();
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.ctx.host_ip,
            "hostIPs": [{"ip": self.ctx.host_ip}],
            "podIP": ip,
            "podIPs": ip.as_ref().map_or(json!(null), |ip| json!([{"ip": ip}])),
            "startTime": self.start_time.map(time),
            "qosClass": pod.spec.as_ref().map(qos_class).unwrap_or("BestEffort"),
            "initContainerStatuses": if n_init > 0 { json!(init_json) } else { json!(null) },
            "containerStatuses": main_json,
            "reason": self.pod_reason.as_ref().map(|r| r.0.clone()),
            "message": self.pod_reason.as_ref().map(|r| r.1.clone()),
        });
        {
            let mut info = lock(&self.info);
            if std::mem::take(&mut info.force_publish) {
                self.last_status = None;
            }
            info.status = serde_json::from_value::<PodStatus>(status.clone()).ok();
            info.containers = self
                .containers
                .iter()
                .map(|c| (c.name.clone(), (c.id.clone(), c.previous_id.clone())))
                .collect();
        }
        // Times in conditions are stable; compare without them changing each pass.
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        let snapshot = status.clone();
        let result = api
            .patch_status(&name, &Patch::Merge(json!({"status": status.take()})))
            .await;
        match result {
            Ok(_) => {}
            // A static pod's mirror may not exist yet: try again on the next pass.
            Err(e) if e.is_not_found() && is_static => return,
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "failed to update the pod status");
                return;
            }
        }
        self.last_status = Some(snapshot);
    }
}
