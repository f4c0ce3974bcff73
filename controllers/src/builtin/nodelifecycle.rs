//! The node lifecycle controller: notices nodes that stopped heart-beating, taints
//! nodes that are not Ready, and evicts the pods that do not tolerate a `NoExecute`
//! taint (Kubernetes' node-lifecycle and taint-eviction controllers).
//!
//! **Health.** A node's agent renews its Lease in `kube-node-lease` (every 10 s) and
//! posts its status. The controller notes, *by its own clock*, when it last saw either
//! change (the Lease's `renewTime` or the Ready condition's `lastHeartbeatTime`), so the
//! agent's and the controller's clocks need not agree. When nothing has changed for the
//! grace period (40 s), every condition of the node becomes `Unknown` with reason
//! `NodeStatusUnknown` ("Kubelet stopped posting node status."), and the node's pods are
//! marked not Ready. A node that never posted a Ready condition gets the startup grace
//! period (60 s) instead. The controller starts every node's clock when it first sees
//! the node, so a controller that starts (or takes over leadership) gives every node a
//! full grace period.
//!
//! **Taints.** Ready `Unknown` puts `node.kubernetes.io/unreachable` on the node, Ready
//! `False` puts `node.kubernetes.io/not-ready`, each with the effects `NoSchedule` (no new
//! pods) and `NoExecute` (evict the running ones); Ready `True` removes them. The agent
//! sets Ready `True` again when it comes back.
//!
//! **Eviction.** On a node with `NoExecute` taints, a pod that does not tolerate one of
//! them is deleted at once; a pod that tolerates all of them is deleted after the
//! smallest `tolerationSeconds` of the tolerations it uses (counted from when the
//! controller first saw it on the tainted node), or never if none of them has
//! `tolerationSeconds`. The API server gives every pod `not-ready` and `unreachable`
//! tolerations of 300 s (DefaultTolerationSeconds), so pods leave a lost node after
//! five minutes. Removing the taints cancels the pending evictions.
//!
//! All periods are in [`NodeLifecycleConfig`]; all timing is `tokio::time`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keelson_core::client::{Api, Client, DeleteOptions, Patch};
use keelson_core::k8s_openapi::api::coordination::v1::Lease;
use keelson_core::k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use parking_lot::Mutex;
use serde_json::json;
use tokio::time::Instant;

use crate::clock;
use crate::controller::{Action, Context, Controller, Reconciler};
use crate::events::{object_reference, EventType, Recorder};
use crate::informer::InformerFactory;
use crate::object::ObjectRef;
use crate::reflector::{node_name_index, Reader, NODE_NAME_INDEX};
use crate::watcher;

/// The taint of a node whose Ready condition is `Unknown`.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node whose Ready condition is `False`.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The reason of conditions the controller set to `Unknown`.
pub const REASON_UNKNOWN: &str = "NodeStatusUnknown";
/// The message of conditions the controller set to `Unknown`.
pub const MESSAGE_UNKNOWN: &str = "Kubelet stopped posting node status.";

/// The node lifecycle controller's settings (Kubernetes' defaults).
#[derive(Clone, Debug)]
pub struct NodeLifecycleConfig {
    /// How long a node may go without a heartbeat before it is `Unknown`
    /// (`--node-monitor-grace-period`, 40 s).
    pub grace_period: Duration,
    /// The same for a node that never posted a Ready condition
    /// (`--node-startup-grace-period`, 60 s).
    pub startup_grace_period: Duration,
    /// How often every node is looked at even when nothing changes
    /// (`--node-monitor-period`, 5 s).
    pub monitor_period: Duration,
    /// Where the nodes' Leases are (`kube-node-lease`).
    pub lease_namespace: String,
}

impl Default for NodeLifecycleConfig {
    fn default() -> Self {
        NodeLifecycleConfig {
            grace_period: Duration::from_secs(40),
            startup_grace_period: Duration::from_secs(60),
            monitor_period: Duration::from_secs(5),
            lease_namespace: "kube-node-lease".into(),
        }
    }
}

/// What the controller last saw of a node's heartbeats, and when.
struct Health {
    lease: Option<String>,
    heartbeat: Option<String>,
    seen_at: Instant,
}

/// The node lifecycle reconciler (see the [module docs](self)).
pub struct NodeLifecycleController {
    client: Client,
    config: NodeLifecycleConfig,
    leases: Reader<Lease>,
    pods: Reader<Pod>,
    nodes: Reader<Node>,
    health: Mutex<HashMap<String, Health>>,
    recorder: Recorder,
    /// Per node: when each pod (by uid) was first seen under its `NoExecute` taints.
    tainted_since: Mutex<HashMap<String, HashMap<String, Instant>>>,
}

impl std::fmt::Debug for NodeLifecycleController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLifecycleController")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn has_no_execute(node: &Node) -> bool {
    no_execute_taints(node).next().is_some()
}

fn no_execute_taints(node: &Node) -> impl Iterator<Item = &Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|t| t.effect == "NoExecute")
}

fn condition<'a>(node: &'a Node, kind: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == kind)
}

fn ready_status(node: &Node) -> Option<&str> {
    condition(node, "Ready").map(|c| c.status.as_str())
}

/// Whether `toleration` tolerates `taint` (Kubernetes' matching rules).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        "Equal" => {
            !key.is_empty()
                && key == taint.key
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// How long `pod` may stay on a node with `taints` (all `NoExecute`): `Some(ZERO)` when
/// it does not tolerate one of them, the smallest `tolerationSeconds` of the tolerations
/// it uses, or `None` (forever) when none of those has `tolerationSeconds`.
pub fn time_to_eviction(pod: &Pod, taints: &[&Taint]) -> Option<Duration> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let mut least: Option<i64> = None;
    for taint in taints {
        let used: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if used.is_empty() {
            return Some(Duration::ZERO);
        }
        for t in used {
            if let Some(s) = t.toleration_seconds {
                least = Some(least.map_or(s, |l| l.min(s)));
            }
        }
    }
    least.map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
}

/// The taints a node should carry for its Ready condition, among the four this
/// controller manages.
fn wanted_taints(ready: Option<&str>) -> Vec<(&'static str, &'static str)> {
    let key = match ready {
        Some("Unknown") => TAINT_UNREACHABLE,
        Some("False") => TAINT_NOT_READY,
        _ => return Vec::new(),
    };
    vec![(key, "NoSchedule"), (key, "NoExecute")]
}

fn managed(taint: &Taint) -> bool {
    (taint.key == TAINT_UNREACHABLE || taint.key == TAINT_NOT_READY)
        && (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
}

impl NodeLifecycleController {
    /// Builds the controller on `factory`'s informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
        config: NodeLifecycleConfig,
    ) -> (Controller<Node>, Arc<Self>) {
        let cfg = watcher::Config::default;
        let lease_api = Api::<Lease>::namespaced(client.clone(), &config.lease_namespace);
        let leases = factory.informer(lease_api.clone(), cfg()).reader();
        let pods_api = Api::<Pod>::all(client.clone());
        let pod_informer = factory.informer(pods_api.clone(), cfg().compact());
        if !pod_informer.reader().has_index(NODE_NAME_INDEX) {
            pod_informer.add_index(NODE_NAME_INDEX, node_name_index());
        }
        let pods = pod_informer.reader();
        let controller = Controller::with_factory(factory, Api::<Node>::all(client.clone()), cfg())
            .name("nodelifecycle");
        let nodes = controller.store();
        let node_reader = nodes.clone();
        let controller = controller
            .watches(lease_api, cfg(), |lease: &Lease| {
                vec![ObjectRef::new(
                    None,
                    lease.metadata.name.as_deref().unwrap_or_default(),
                )]
            })
            .watches(pods_api, cfg().compact(), move |pod: &Pod| {
                // Only pods on nodes with NoExecute taints (eviction) matter here.
                let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
                    return Vec::new();
                };
                let key = ObjectRef::new(None, node);
                match nodes.get(&key) {
                    Some(n) if has_no_execute(&n) => vec![key],
                    _ => Vec::new(),
                }
            });
        (
            controller,
            Arc::new(NodeLifecycleController {
                client: client.clone(),
                config,
                leases,
                pods,
                nodes: node_reader,
                health: Mutex::new(HashMap::new()),
                recorder: Recorder::new(client.clone(), "node-controller", "keelson"),
                tainted_since: Mutex::new(HashMap::new()),
            }),
        )
    }

    /// Drops what is remembered of nodes that no longer exist (now and then: when the
    /// memory holds noticeably more nodes than the cache).
    fn forget_deleted_nodes(&self) {
        let known = self.nodes.len();
        let exists = |n: &String| self.nodes.get(&ObjectRef::new(None, n)).is_some();
        let mut health = self.health.lock();
        if health.len() > known + 16 {
            health.retain(|n, _| exists(n));
        }
        drop(health);
        let mut tainted = self.tainted_since.lock();
        if tainted.len() > known + 16 {
            tainted.retain(|n, _| exists(n));
        }
    }

    /// Notes the node's heartbeats; returns how long it has been silent.
    fn silence(&self, node: &Node, name: &str) -> Duration {
        let lease = self
            .leases
            .get(&ObjectRef::new(Some(&self.config.lease_namespace), name))
            .and_then(|l| {
                l.spec
                    .as_ref()?
                    .renew_time
                    .as_ref()
                    .map(|t| t.0.to_string())
            });
        let heartbeat = condition(node, "Ready")
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0.to_string());
        let now = Instant::now();
        let mut health = self.health.lock();
        let h = health.entry(name.to_owned()).or_insert_with(|| Health {
            lease: lease.clone(),
            heartbeat: heartbeat.clone(),
            seen_at: now,
        });
        if h.lease != lease || h.heartbeat != heartbeat {
            h.lease = lease;
            h.heartbeat = heartbeat;
            h.seen_at = now;
        }
        now.saturating_duration_since(h.seen_at)
    }

    /// Sets every condition (and Ready, if missing) to Unknown.
    async fn mark_unknown(&self, node: &Node, name: &str) -> Result<Node, keelson_core::Error> {
        let now = clock::now_time();
        let never = condition(node, "Ready").is_none();
        let (reason, message) = if never {
            (
                "NodeStatusNeverUpdated",
                "Kubelet never posted node status.",
            )
        } else {
            (REASON_UNKNOWN, MESSAGE_UNKNOWN)
        };
        let mut updated = node.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        for kind in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            if !conditions.iter().any(|c| c.type_ == kind) {
                conditions.push(NodeCondition {
                    type_: kind.to_owned(),
                    status: "Unknown".into(),
                    ..NodeCondition::default()
                });
                if let Some(c) = conditions.last_mut() {
                    c.last_transition_time = Some(now.clone());
                    c.reason = Some("NodeStatusNeverUpdated".into());
                    c.message = Some("Kubelet never posted node status.".into());
                }
            }
        }
        for c in conditions.iter_mut() {
            if c.status != "Unknown" {
                c.status = "Unknown".into();
                c.last_transition_time = Some(now.clone());
                c.reason = Some(reason.to_owned());
                c.message = Some(message.to_owned());
            }
        }
        tracing::info!(node = %name, "node stopped posting status: conditions Unknown");
        let written = Api::<Node>::all(self.client.clone())
            .replace_status(name, &updated)
            .await?;
        self.recorder
            .emit(
                &object_reference(node),
                EventType::Normal,
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
            )
            .await;
        Ok(written)
    }

    /// Puts the taints for the node's Ready condition on it and takes the others off.
    async fn sync_taints(
        &self,
        node: &Node,
        name: &str,
    ) -> Result<Option<Node>, keelson_core::Error> {
        let wanted = wanted_taints(ready_status(node));
        let current: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let has = |k: &str, e: &str| current.iter().any(|t| t.key == k && t.effect == e);
        let stale = current
            .iter()
            .any(|t| managed(t) && !wanted.contains(&(t.key.as_str(), t.effect.as_str())));
        let missing: Vec<&(&str, &str)> = wanted.iter().filter(|(k, e)| !has(k, e)).collect();
        if !stale && missing.is_empty() {
            return Ok(None);
        }
        let mut taints: Vec<Taint> = current
            .into_iter()
            .filter(|t| !managed(t) || wanted.contains(&(t.key.as_str(), t.effect.as_str())))
            .collect();
        for (key, effect) in missing {
            taints.push(Taint {
                key: (*key).to_owned(),
                effect: (*effect).to_owned(),
                time_added: (*effect == "NoExecute").then(clock::now_time),
                value: None,
            });
        }
        let mut updated = node.clone();
        updated.spec.get_or_insert_with(Default::default).taints =
            (!taints.is_empty()).then_some(taints);
        tracing::info!(node = %name, ready = ?ready_status(node), "updating the node's taints");
        Api::<Node>::all(self.client.clone())
            .replace(name, &updated)
            .await
            .map(Some)
    }

    /// Marks the Ready condition of the node's pods False (their node is unreachable).
    async fn mark_pods_not_ready(&self, name: &str) -> Result<(), keelson_core::Error> {
        for pod in self.pods.by_index(NODE_NAME_INDEX, name) {
            let Some(conditions) = pod.status.as_ref().and_then(|s| s.conditions.clone()) else {
                continue;
            };
            if !conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            {
                continue;
            }
            let now = clock::now_time();
            let conditions: Vec<_> = conditions
                .into_iter()
                .map(|mut c| {
                    if c.type_ == "Ready" {
                        c.status = "False".into();
                        c.last_transition_time = Some(now.clone());
                    }
                    c
                })
                .collect();
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
            let patch = json!({
                "metadata": {"resourceVersion": pod.metadata.resource_version},
                "status": {"conditions": conditions},
            });
            match Api::<Pod>::namespaced(self.client.clone(), ns)
                .patch_status(pod_name, &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes the pods whose time on the tainted node is up; returns when the next one
    /// is due.
    async fn evict(
        &self,
        node: &Node,
        name: &str,
    ) -> Result<Option<Duration>, keelson_core::Error> {
        let taints: Vec<&Taint> = no_execute_taints(node).collect();
        if taints.is_empty() {
            self.tainted_since.lock().remove(name);
            return Ok(None);
        }
        let pods = self.pods.by_index(NODE_NAME_INDEX, name);
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Duration> = None;
        {
            let mut all = self.tainted_since.lock();
            let since = all.entry(name.to_owned()).or_default();
            let mut kept = HashMap::new();
            for pod in &pods {
                if pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let first = since.get(&uid).copied().unwrap_or(now);
                kept.insert(uid, first);
                let Some(allowed) = time_to_eviction(pod, &taints) else {
                    continue;
                };
                let left = (first + allowed).saturating_duration_since(now);
                if left.is_zero() {
                    due.push(pod.clone());
                } else {
                    next = Some(next.map_or(left, |n| n.min(left)));
                }
            }
            *since = kept;
        }
        for pod in due {
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
            tracing::info!(node = %name, pod = %format!("{ns}/{pod_name}"), "evicting a pod from a NoExecute-tainted node");
            let api = Api::<Pod>::namespaced(self.client.clone(), ns);
            let disruption = json!({"status": {"conditions": [{
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint",
                "lastTransitionTime": clock::now_time(),
            }]}});
            // A strategic merge patch adds the condition beside the others.
            let _ = api
                .patch_status(pod_name, &Patch::Strategic(disruption))
                .await;
            let options = DeleteOptions {
                uid: pod.metadata.uid.clone(),
                ..DeleteOptions::default()
            };
            match api.delete(pod_name, &options).await {
                Ok(_) => {
                    self.recorder
                        .emit(
                            &object_reference(pod.as_ref()),
                            EventType::Normal,
                            "TaintManagerEviction",
                            &format!("Marking for deletion Pod {ns}/{pod_name}"),
                        )
                        .await;
                }
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(next)
    }
}

#[async_trait]
impl Reconciler<Node> for NodeLifecycleController {
    type Error = keelson_core::Error;

    async fn reconcile(&self, node: Arc<Node>, ctx: &Context) -> Result<Action, Self::Error> {
        let name = ctx.key.name.to_string();
        let mut node: Node = (*node).clone();
        let silent = self.silence(&node, &name);
        let grace = match ready_status(&node) {
            None => self.config.startup_grace_period,
            Some(_) => self.config.grace_period,
        };
        let mut next = self.config.monitor_period;
        let unknown = ready_status(&node) == Some("Unknown");
        if silent > grace {
            if !unknown {
                node = self.mark_unknown(&node, &name).await?;
            }
        } else {
            next = next.min(grace - silent + Duration::from_millis(1));
        }
        if let Some(updated) = self.sync_taints(&node, &name).await? {
            node = updated;
        }
        if ready_status(&node) == Some("Unknown") {
            self.mark_pods_not_ready(&name).await?;
        }
        if let Some(due) = self.evict(&node, &name).await? {
            next = next.min(due);
        }
        self.forget_deleted_nodes();
        Ok(Action::requeue(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Taint::default()
        }
    }

    fn toleration(key: &str, op: &str, effect: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.into()),
            operator: Some(op.into()),
            effect: (!effect.is_empty()).then(|| effect.into()),
            toleration_seconds: secs,
            value: None,
        }
    }

    fn pod(tolerations: Vec<Toleration>) -> Pod {
        Pod {
            spec: Some(keelson_core::k8s_openapi::api::core::v1::PodSpec {
                tolerations: Some(tolerations),
                ..Default::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn a_pod_without_a_matching_toleration_is_evicted_at_once() {
        let t = taint(TAINT_UNREACHABLE, "NoExecute");
        let p = pod(vec![toleration(
            TAINT_NOT_READY,
            "Exists",
            "NoExecute",
            Some(300),
        )]);
        assert_eq!(time_to_eviction(&p, &[&t]), Some(Duration::ZERO));
    }

    #[test]
    fn the_smallest_toleration_seconds_of_the_used_tolerations_wins() {
        let t = taint(TAINT_UNREACHABLE, "NoExecute");
        let p = pod(vec![
            toleration(TAINT_UNREACHABLE, "Exists", "NoExecute", Some(300)),
            toleration("", "Exists", "", Some(60)),
            toleration(TAINT_NOT_READY, "Exists", "NoExecute", Some(5)),
        ]);
        assert_eq!(time_to_eviction(&p, &[&t]), Some(Duration::from_secs(60)));
    }

    #[test]
    fn a_toleration_without_seconds_tolerates_forever() {
        let t = taint(TAINT_UNREACHABLE, "NoExecute");
        let p = pod(vec![toleration(TAINT_UNREACHABLE, "Exists", "", None)]);
        assert_eq!(time_to_eviction(&p, &[&t]), None);
    }

    #[test]
    fn equal_tolerations_match_key_and_value() {
        let mut t = taint("dedicated", "NoExecute");
        t.value = Some("gpu".into());
        let mut tol = toleration("dedicated", "Equal", "NoExecute", Some(10));
        tol.value = Some("gpu".into());
        assert!(tolerates(&tol, &t));
        tol.value = Some("cpu".into());
        assert!(!tolerates(&tol, &t));
        let wrong_effect = toleration("dedicated", "Exists", "NoSchedule", None);
        assert!(!tolerates(&wrong_effect, &t));
    }

    #[test]
    fn ready_decides_the_managed_taints() {
        assert_eq!(
            wanted_taints(Some("Unknown")),
            [
                (TAINT_UNREACHABLE, "NoSchedule"),
                (TAINT_UNREACHABLE, "NoExecute")
            ]
        );
        assert_eq!(
            wanted_taints(Some("False")),
            [
                (TAINT_NOT_READY, "NoSchedule"),
                (TAINT_NOT_READY, "NoExecute")
            ]
        );
        assert!(wanted_taints(Some("True")).is_empty());
    }
}
