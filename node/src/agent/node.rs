//! The Node object, its conditions, and the Lease heartbeat.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keelson_core::client::{Api, Client, Patch};
use keelson_core::k8s_openapi::api::coordination::v1::Lease;
use keelson_core::k8s_openapi::api::core::v1::{Namespace, Node};
use serde_json::{json, Value};

use super::NodeCtx;
use crate::error::Error;
use crate::runtime::logs::to_timestamp;

/// RFC 3339 with seconds, as `metav1.Time` is written.
pub(crate) fn time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    to_timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// RFC 3339 with microseconds, as `metav1.MicroTime` is written.
pub(crate) fn micro_time(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = time(t);
    format!("{}.{:06}Z", secs.trim_end_matches('Z'), d.subsec_micros())
}

pub(crate) const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Makes sure the `kube-node-lease` namespace exists.
pub(crate) async fn ensure_lease_namespace(client: &Client) -> Result<(), Error> {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(LEASE_NAMESPACE.into());
    match Api::<Namespace>::all(client.clone()).create(&ns).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_already_exists() => Ok(()),
        Err(e) => Err(Error::api("create the kube-node-lease namespace", e)),
    }
}

/// Renews (or creates) a node's Lease.
pub(crate) async fn renew_lease(
    client: &Client,
    node: &str,
    node_uid: Option<&str>,
    duration_seconds: i32,
) -> Result<(), Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = micro_time(SystemTime::now());
    let patch = Patch::Merge(json!({"spec": {
        "holderIdentity": node,
        "leaseDurationSeconds": duration_seconds,
        "renewTime": now,
    }}));
    match leases.patch(node, &patch).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => {
            let mut owner = json!([]);
            if let Some(uid) = node_uid {
                owner = json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]);
            }
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": node, "namespace": LEASE_NAMESPACE, "ownerReferences": owner},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": duration_seconds, "renewTime": now},
            }))
            .map_err(|e| Error::Config(format!("lease: {e}")))?;
            match leases.create(&lease).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_already_exists() => Ok(()),
                Err(e) => Err(Error::api(format!("create the lease of node {node}"), e)),
            }
        }
        Err(e) => Err(Error::api(format!("renew the lease of node {node}"), e)),
    }
}

/// The Node object for a node (metadata and spec; status separately).
pub(crate) fn node_object(ctx: &NodeCtx, pod_cidr: Option<&str>) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(ctx.node_name));
    labels.insert("kubernetes.io/os".into(), json!("linux"));
    labels.insert("kubernetes.io/arch".into(), json!(arch()));
    for (k, v) in &ctx.config.labels {
        labels.insert(k.clone(), json!(v));
    }
    let mut spec = json!({});
    if let Some(c) = pod_cidr {
        spec["podCIDR"] = json!(c);
        spec["podCIDRs"] = json!([c]);
    }
    if !ctx.config.taints.is_empty() {
        spec["taints"] = serde_json::to_value(&ctx.config.taints).unwrap_or(json!([]));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": ctx.node_name, "labels": labels},
        "spec": spec,
    })
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The Node's status without conditions.
pub(crate) fn base_status(ctx: &NodeCtx, port: Option<u16>) -> Value {
    let r = &ctx.config.resources;
    let capacity = json!({
        "cpu": r.cpu, "memory": r.memory, "pods": r.pods.to_string(),
        "ephemeral-storage": r.ephemeral_storage,
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": ctx.host_ip},
            {"type": "Hostname", "address": ctx.node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port.unwrap_or(0)}},
        "nodeInfo": {
            "machineID": ctx.node_name, "systemUUID": ctx.node_name, "bootID": boot,
            "kernelVersion": kernel, "osImage": "Keelson node", "operatingSystem": "linux",
            "architecture": arch(),
            "containerRuntimeVersion": ctx.runtime.version(),
            "kubeletVersion": concat!("v1.33.0-keelson.", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
        },
    })
}

#[derive(Clone, Debug, PartialEq)]
struct Condition {
    kind: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

fn host_conditions(ctx: &NodeCtx, network_ready: Result<(), String>) -> Vec<Condition> {
    let c = &ctx.config;
    let (mut mem, mut disk, mut pid) = (false, false, false);
    if c.host_conditions {
        if let Ok(info) = std::fs::read_to_string("/proc/meminfo") {
            let avail = info
                .lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|kib| kib * 1024);
            mem = avail.is_some_and(|a| a < c.memory_pressure_bytes);
        }
        let path = ctx
            .state_dir
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from("/"));
        if let Ok(s) = rustix::fs::statvfs(&path) {
            if s.f_blocks > 0 {
                disk = (s.f_bavail as f64 / s.f_blocks as f64) < c.disk_pressure_fraction;
            }
        }
        let max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let (Some(max), Ok(dir)) = (max, std::fs::read_dir("/proc")) {
            let n = dir
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
                })
                .count() as u64;
            pid = n * 10 > max * 9;
        }
    }
    vec![
        match &network_ready {
            Ok(()) => Condition {
                kind: "Ready",
                status: true,
                reason: "KubeletReady",
                message: "the node agent is ready to run pods".into(),
            },
            Err(m) => Condition {
                kind: "Ready",
                status: false,
                reason: "KubeletNotReady",
                message: format!("the pod network is not ready: {m}"),
            },
        },
        if mem {
            Condition {
                kind: "MemoryPressure",
                status: true,
                reason: "KubeletHasInsufficientMemory",
                message: "the node is short of memory".into(),
            }
        } else {
            Condition {
                kind: "MemoryPressure",
                status: false,
                reason: "KubeletHasSufficientMemory",
                message: "the node has enough memory".into(),
            }
        },
        if disk {
            Condition {
                kind: "DiskPressure",
                status: true,
                reason: "KubeletHasDiskPressure",
                message: "the node is short of disk space".into(),
            }
        } else {
            Condition {
                kind: "DiskPressure",
                status: false,
                reason: "KubeletHasNoDiskPressure",
                message: "the node has enough disk space".into(),
            }
        },
        if pid {
            Condition {
                kind: "PIDPressure",
                status: true,
                reason: "KubeletHasInsufficientPID",
                message: "the node is short of process ids".into(),
            }
        } else {
            Condition {
                kind: "PIDPressure",
                status: false,
                reason: "KubeletHasSufficientPID",
                message: "the node has enough process ids".into(),
            }
        },
    ]
}

/// Registers a node and keeps its Lease and status.
pub(crate) struct NodeReporter {
    ctx: Arc<NodeCtx>,
    port: Option<u16>,
    uid: Option<String>,
    last: Vec<Condition>,
    transitions: Vec<String>,
    last_report: Option<tokio::time::Instant>,
}

impl NodeReporter {
    pub(crate) fn new(ctx: Arc<NodeCtx>, port: Option<u16>) -> NodeReporter {
        NodeReporter {
            ctx,
            port,
            uid: None,
            last: Vec::new(),
            transitions: Vec::new(),
            last_report: None,
        }
    }

    /// Creates (or updates) the Node, its status, and the Lease.
    pub(crate) async fn register(&mut self) -> Result<(), Error> {
        let ctx = self.ctx.clone();
        let cidr = ctx.network.status().await.ok().and_then(|s| s.pod_cidr);
        let obj = node_object(&ctx, cidr.as_deref());
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let node: Node = serde_json::from_value(obj.clone())
            .map_err(|e| Error::Config(format!("node object: {e}")))?;
        let created = match nodes.create(&node).await {
            Ok(n) => n,
            Err(e) if e.is_already_exists() => {
                // As kubelet: taints are the node's own only when it is created (others
                // may have changed them since, as `kubectl cordon` changes
                // `unschedulable`); labels and the pod range are brought up to date.
                let mut spec = obj["spec"].clone();
                if let Some(spec) = spec.as_object_mut() {
                    spec.remove("taints");
                }
                let patch =
                    json!({"metadata": {"labels": obj["metadata"]["labels"]}, "spec": spec});
                nodes
                    .patch(&ctx.node_name, &Patch::Merge(patch))
                    .await
                    .map_err(|e| Error::api(format!("update node {}", ctx.node_name), e))?
            }
            Err(e) => return Err(Error::api(format!("register node {}", ctx.node_name), e)),
        };
        self.uid = created.metadata.uid.clone();
        self.update_status(true).await?;
        ensure_lease_namespace(&ctx.client).await?;
        renew_lease(
            &ctx.client,
            &ctx.node_name,
            self.uid.as_deref(),
            ctx.config.lease_duration_seconds,
        )
        .await?;
        tracing::info!(node = %ctx.node_name, "node registered");
        Ok(())
    }

    /// Whether the API server's copy of the node's conditions says something else than
    /// `conds` (as kubelet, which compares with the node it reads back): after a
    /// partition the node lifecycle controller has set them Unknown, and the agent puts
    /// them right at once instead of at its next periodic report.
    async fn api_copy_differs(&self, conds: &[Condition]) -> bool {
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        let Ok(node) = nodes.get(&self.ctx.node_name).await else {
            // Unreadable: nothing to compare; the next report is due in time anyway.
            return false;
        };
        let api = node.status.and_then(|s| s.conditions).unwrap_or_default();
        conds.iter().any(|c| {
            let want = if c.status { "True" } else { "False" };
            !api.iter().any(|a| a.type_ == c.kind && a.status == want)
        })
    }

    async fn update_status(&mut self, force: bool) -> Result<(), Error> {
        let ctx = self.ctx.clone();
        let net = match ctx.network.status().await {
            Ok(s) if s.ready => Ok(()),
            Ok(s) => Err(s.message.unwrap_or_else(|| "not ready".into())),
            Err(e) => Err(e.to_string()),
        };
        let conds = host_conditions(&ctx, net);
        let now = time(SystemTime::now());
        let due = self
            .last_report
            .is_none_or(|t| t.elapsed() >= ctx.config.node_status_report_interval);
        if !force && !due && conds == self.last && !self.api_copy_differs(&conds).await {
            return Ok(());
        }
        let mut transitions = Vec::with_capacity(conds.len());
        for (i, c) in conds.iter().enumerate() {
            let same = self.last.get(i).is_some_and(|o| o.status == c.status);
            transitions.push(if same {
                self.transitions
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| now.clone())
            } else {
                now.clone()
            });
        }
        let mut status = base_status(&ctx, self.port);
        status["conditions"] = Value::Array(
            conds
                .iter()
                .zip(&transitions)
                .map(|(c, t)| {
                    json!({
                        "type": c.kind,
                        "status": if c.status { "True" } else { "False" },
                        "reason": c.reason,
                        "message": c.message,
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": t,
                    })
                })
                .collect(),
        );
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        nodes
            // Strategic: conditions merge by type, so those other components own (the
            // route controller's NetworkUnavailable) stay.
            .patch_status(&ctx.node_name, &Patch::Strategic(json!({"status": status})))
            .await
            .map_err(|e| Error::api(format!("update the status of node {}", ctx.node_name), e))?;
        self.last = conds;
        self.transitions = transitions;
        self.last_report = Some(tokio::time::Instant::now());
        Ok(())
    }

    /// Renews the Lease every `lease_interval` and checks the status every
    /// `node_status_interval`, until aborted.
    pub(crate) async fn heartbeat_loop(mut self) {
        let cfg = self.ctx.config.clone();
        let mut lease = tokio::time::interval(cfg.lease_interval);
        let mut status = tokio::time::interval(cfg.node_status_interval);
        lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        lease.tick().await;
        status.tick().await;
        loop {
            tokio::select! {
                _ = lease.tick() => {
                    if let Err(e) = renew_lease(&self.ctx.client, &self.ctx.node_name, self.uid.as_deref(), cfg.lease_duration_seconds).await {
                        tracing::warn!(node = %self.ctx.node_name, error = %e, "failed to renew the node lease");
                    }
                }
                _ = status.tick() => {
                    if let Err(e) = self.update_status(false).await {
                        tracing::warn!(node = %self.ctx.node_name, error = %e, "failed to update the node status");
                    }
                }
            }
        }
    }
}
