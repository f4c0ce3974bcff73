//! The pod garbage collector (Kubernetes' PodGC controller). Every `period` (20 s) it
//! deletes:
//!
//! - **terminated pods over the threshold**: when more pods than
//!   `terminated_pod_threshold` (12,500, `--terminated-pod-gc-threshold`; 0 turns this
//!   off) have finished (phase `Succeeded` or `Failed`), the oldest by creation time go
//!   until the threshold is met;
//! - **orphaned pods**: pods bound to a node that does not exist. A missing node is
//!   quarantined first (40 s) and then read once more from the API server, so that a node
//!   the cache has not seen yet, or one being re-registered, keeps its pods. The pods are
//!   marked `Failed` with a `DisruptionTarget` condition (reason `DeletionByPodGC`) and
//!   deleted at once (grace period 0): no agent is left to stop them;
//! - **unscheduled terminating pods**: pods being deleted that were never bound to a
//!   node, deleted at once.
//!
//! Pods are read from the shared (compact) pod cache and nodes from the node cache;
//! all timing is `tokio::time`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keelson_core::client::{Api, Client, DeleteOptions, Patch};
use keelson_core::k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use tokio::time::Instant;

use crate::clock;
use crate::informer::InformerFactory;
use crate::object::ObjectRef;
use crate::reflector::Reader;
use crate::watcher;

/// The pod garbage collector's settings (Kubernetes' defaults).
#[derive(Clone, Debug)]
pub struct PodGcConfig {
    /// How many finished pods may exist before the oldest are deleted (12,500; 0: no
    /// limit).
    pub terminated_pod_threshold: usize,
    /// How often to look (20 s).
    pub period: Duration,
    /// How long a node must be missing before its pods are deleted (40 s).
    pub quarantine: Duration,
}

impl Default for PodGcConfig {
    fn default() -> Self {
        PodGcConfig {
            terminated_pod_threshold: 12_500,
            period: Duration::from_secs(20),
            quarantine: Duration::from_secs(40),
        }
    }
}

/// Why a pod is to be deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// One of the oldest finished pods over the threshold.
    Terminated,
    /// Bound to a node that does not exist.
    Orphaned,
    /// Being deleted, never bound to a node.
    UnscheduledTerminating,
}

fn is_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// The finished pods to delete so that at most `threshold` remain (0: none), oldest
/// first (by creation time, then namespace and name).
pub fn terminated_over_threshold(pods: &[Arc<Pod>], threshold: usize) -> Vec<Arc<Pod>> {
    if threshold == 0 {
        return Vec::new();
    }
    let mut done: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| is_terminated(p) && p.metadata.deletion_timestamp.is_none())
        .collect();
    if done.len() <= threshold {
        return Vec::new();
    }
    done.sort_by(|a, b| {
        let key = |p: &Pod| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.namespace.clone(),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let excess = done.len() - threshold;
    done.into_iter().take(excess).cloned().collect()
}

/// Pods being deleted that were never bound to a node.
pub fn unscheduled_terminating(pods: &[Arc<Pod>]) -> Vec<Arc<Pod>> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() && node_name(p).is_none())
        .cloned()
        .collect()
}

/// The pod garbage collector (see the [module docs](self)).
pub struct PodGarbageCollector {
    client: Client,
    config: PodGcConfig,
    pods: Reader<Pod>,
    nodes: Reader<Node>,
    /// Nodes named by pods but missing from the cache, and since when.
    missing_since: HashMap<String, Instant>,
}

impl std::fmt::Debug for PodGarbageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodGarbageCollector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PodGarbageCollector {
    /// Builds the collector on `factory`'s pod and node informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(client: &Client, factory: &InformerFactory, config: PodGcConfig) -> Self {
        let cfg = watcher::Config::default;
        let pods = factory
            .informer(Api::<Pod>::all(client.clone()), cfg().compact())
            .reader();
        let nodes = factory
            .informer(Api::<Node>::all(client.clone()), cfg())
            .reader();
        PodGarbageCollector {
            client: client.clone(),
            config,
            pods,
            nodes,
            missing_since: HashMap::new(),
        }
    }

    /// Collects every `period` until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => return,
            r = async {
                let p = self.pods.wait_until_ready().await;
                let n = self.nodes.wait_until_ready().await;
                p.and(n)
            } => if r.is_err() { return },
        }
        let mut ticks = tokio::time::interval(self.config.period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticks.tick() => {}
            }
            match self.collect().await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "pod garbage collection"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pod garbage collection failed"),
            }
        }
    }

    /// One pass; returns how many pods it deleted.
    ///
    /// # Errors
    /// The first request that failed (other than the pod being gone already); the rest
    /// of the pass is left to the next one.
    pub async fn collect(&mut self) -> Result<usize, keelson_core::Error> {
        let pods = self.pods.list();
        let mut deleted = 0;
        for pod in terminated_over_threshold(&pods, self.config.terminated_pod_threshold) {
            deleted += usize::from(self.delete(&pod, Reason::Terminated).await?);
        }
        for pod in self.orphaned(&pods).await? {
            deleted += usize::from(self.delete(&pod, Reason::Orphaned).await?);
        }
        for pod in unscheduled_terminating(&pods) {
            deleted += usize::from(self.delete(&pod, Reason::UnscheduledTerminating).await?);
        }
        Ok(deleted)
    }

    /// Pods on nodes that have been missing for the quarantine and are still missing
    /// when asked for.
    async fn orphaned(&mut self, pods: &[Arc<Pod>]) -> Result<Vec<Arc<Pod>>, keelson_core::Error> {
        let now = Instant::now();
        let named: HashSet<&str> = pods.iter().filter_map(|p| node_name(p)).collect();
        let missing: HashSet<&str> = named
            .into_iter()
            .filter(|n| self.nodes.get(&ObjectRef::new(None, n)).is_none())
            .collect();
        self.missing_since
            .retain(|n, _| missing.contains(n.as_str()));
        let mut gone = HashSet::new();
        for name in missing {
            let since = *self.missing_since.entry(name.to_owned()).or_insert(now);
            if now.saturating_duration_since(since) < self.config.quarantine {
                continue;
            }
            match Api::<Node>::all(self.client.clone()).get_opt(name).await? {
                Some(_) => {
                    self.missing_since.remove(name);
                }
                None => {
                    gone.insert(name.to_owned());
                }
            }
        }
        Ok(pods
            .iter()
            .filter(|p| node_name(p).is_some_and(|n| gone.contains(n)))
            .cloned()
            .collect())
    }

    /// Deletes `pod` (at once unless it is a finished pod over the threshold); false
    /// when it was gone already.
    async fn delete(&self, pod: &Pod, reason: Reason) -> Result<bool, keelson_core::Error> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        tracing::debug!(pod = %format!("{ns}/{name}"), ?reason, "pod garbage collection");
        if reason == Reason::Orphaned && !is_terminated(pod) {
            let patch = json!({"status": {
                "phase": "Failed",
                "conditions": [{
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "DeletionByPodGC",
                    "message": "PodGC: node no longer exists",
                    "lastTransitionTime": clock::now_time(),
                }],
            }});
            match api.patch_status(name, &Patch::Strategic(patch)).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        let options = DeleteOptions {
            uid: pod.metadata.uid.clone(),
            grace_period_seconds: (reason != Reason::Terminated).then_some(0),
            ..DeleteOptions::default()
        };
        match api.delete(name, &options).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use keelson_core::k8s_openapi::jiff::Timestamp;

    fn pod(name: &str, created: i64, phase: &str, node: Option<&str>) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.creation_timestamp = Timestamp::from_second(created).ok().map(Time);
        p.status = Some(keelson_core::k8s_openapi::api::core::v1::PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        p.spec = Some(keelson_core::k8s_openapi::api::core::v1::PodSpec {
            node_name: node.map(Into::into),
            ..Default::default()
        });
        Arc::new(p)
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<&str> {
        pods.iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect()
    }

    #[test]
    fn the_oldest_finished_pods_over_the_threshold_are_chosen() {
        let pods = vec![
            pod("new-done", 30, "Succeeded", Some("n")),
            pod("old-failed", 10, "Failed", Some("n")),
            pod("running", 5, "Running", Some("n")),
            pod("mid-done", 20, "Succeeded", Some("n")),
        ];
        assert_eq!(
            names(&terminated_over_threshold(&pods, 1)),
            ["old-failed", "mid-done"]
        );
        assert!(terminated_over_threshold(&pods, 3).is_empty());
        assert!(
            terminated_over_threshold(&pods, 0).is_empty(),
            "0 turns it off"
        );
    }

    #[test]
    fn only_unbound_pods_being_deleted_are_unscheduled_terminating() {
        let mut deleting = (*pod("deleting", 1, "Pending", None)).clone();
        deleting.metadata.deletion_timestamp = Some(clock::now_time());
        let mut bound = (*pod("bound", 1, "Running", Some("n"))).clone();
        bound.metadata.deletion_timestamp = Some(clock::now_time());
        let pods = vec![
            Arc::new(deleting),
            Arc::new(bound),
            pod("pending", 1, "Pending", None),
        ];
        assert_eq!(names(&unscheduled_terminating(&pods)), ["deleting"]);
    }
}
