//! The small default plugins: PrioritySort, NodeName, NodeUnschedulable,
//! TaintToleration, NodeAffinity, ImageLocality and DefaultBinder.

use std::sync::Arc;

use async_trait::async_trait;
use keelson_core::client::{Api, Client};
use keelson_core::k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod, Taint};
use keelson_core::ObjectMeta;

use super::helpers::{
    default_normalize, pod_matches_node_selector_and_affinity, term_matches, tolerates,
    tolerations, untolerated_taint,
};
use crate::cache::Snapshot;
use crate::framework::{
    ActionType, Bind, BindResult, ClusterEvent, CycleState, EventResource, Filter, NodeScore,
    Plugin, PreFilter, PreFilterResult, PreScore, PreScoreResult, QueueSort, Score, Status,
    MAX_NODE_SCORE,
};
use crate::node_info::{normalize_image, NodeInfo};
use crate::pod_info::PodInfo;
use crate::queue::QueuedPodInfo;

fn node_event(actions: ActionType) -> ClusterEvent {
    ClusterEvent::new(EventResource::Node, actions)
}

/// Orders the queue by priority (highest first), then by time in the queue.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrioritySort;

impl Plugin for PrioritySort {
    fn name(&self) -> &str {
        "PrioritySort"
    }
    fn as_queue_sort(self: Arc<Self>) -> Option<Arc<dyn QueueSort>> {
        Some(self)
    }
}

impl QueueSort for PrioritySort {
    fn less(&self, a: &QueuedPodInfo, b: &QueuedPodInfo) -> bool {
        let (pa, pb) = (a.pod.priority, b.pod.priority);
        pa > pb || (pa == pb && a.timestamp < b.timestamp)
    }
}

/// Rejects nodes other than the one `spec.nodeName` names.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeName;

/// NodeName's reason.
pub const ERR_NODE_NAME: &str = "node(s) didn't match the requested node name";

impl Plugin for NodeName {
    fn name(&self) -> &str {
        "NodeName"
    }
    fn events_to_register(&self) -> Vec<ClusterEvent> {
        vec![node_event(ActionType::ADD.or(ActionType::UPDATE))]
    }
    fn as_filter(self: Arc<Self>) -> Option<Arc<dyn Filter>> {
        Some(self)
    }
}

impl Filter for NodeName {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        match pod.node_name() {
            Some(name) if name != node.name() => Err(Status::unresolvable(ERR_NODE_NAME)),
            _ => Ok(()),
        }
    }
}

/// Rejects cordoned nodes (`spec.unschedulable`) unless the pod tolerates the
/// `node.kubernetes.io/unschedulable` taint.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeUnschedulable;

/// NodeUnschedulable's reason.
pub const ERR_NODE_UNSCHEDULABLE: &str = "node(s) were unschedulable";

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &str {
        "NodeUnschedulable"
    }
    fn events_to_register(&self) -> Vec<ClusterEvent> {
        vec![node_event(
            ActionType::ADD.or(ActionType::UPDATE_NODE_TAINT),
        )]
    }
    fn as_filter(self: Arc<Self>) -> Option<Arc<dyn Filter>> {
        Some(self)
    }
}

impl Filter for NodeUnschedulable {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        if !node.unschedulable() {
            return Ok(());
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            value: None,
            time_added: None,
        };
        if tolerations(&pod.pod).iter().any(|t| tolerates(t, &taint)) {
            Ok(())
        } else {
            Err(Status::unresolvable(ERR_NODE_UNSCHEDULABLE))
        }
    }
}

/// Filters out nodes with NoSchedule/NoExecute taints the pod does not tolerate, and
/// prefers nodes with fewer untolerated PreferNoSchedule taints.
#[derive(Debug, Default, Clone, Copy)]
pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &str {
        "TaintToleration"
    }
    fn events_to_register(&self) -> Vec<ClusterEvent> {
        vec![node_event(
            ActionType::ADD.or(ActionType::UPDATE_NODE_TAINT),
        )]
    }
    fn as_filter(self: Arc<Self>) -> Option<Arc<dyn Filter>> {
        Some(self)
    }
    fn as_pre_score(self: Arc<Self>) -> Option<Arc<dyn PreScore>> {
        Some(self)
    }
    fn as_score(self: Arc<Self>) -> Option<Arc<dyn Score>> {
        Some(self)
    }
}

impl Filter for TaintToleration {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        let taints = node.taints();
        if taints.is_empty() {
            return Ok(());
        }
        match untolerated_taint(taints, tolerations(&pod.pod), &["NoSchedule", "NoExecute"]) {
            None => Ok(()),
            Some(t) => Err(Status::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            ))),
        }
    }
}

impl PreScore for TaintToleration {
    fn pre_score(
        &self,
        _: &mut CycleState,
        _: &PodInfo,
        _: &Snapshot,
        nodes: &[Arc<NodeInfo>],
    ) -> Result<PreScoreResult, Status> {
        let any = nodes
            .iter()
            .any(|n| n.taints().iter().any(|t| t.effect == "PreferNoSchedule"));
        Ok(if any {
            PreScoreResult::Run
        } else {
            PreScoreResult::Skip
        })
    }
}

impl Score for TaintToleration {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let tols: Vec<_> = tolerations(&pod.pod)
            .iter()
            .filter(|t| {
                t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
            })
            .collect();
        let n = node
            .taints()
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !tols.iter().any(|tol| tolerates(tol, t)))
            .count();
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    }

    fn normalize_scores(
        &self,
        _: &CycleState,
        _: &PodInfo,
        scores: &mut [NodeScore],
    ) -> Result<(), Status> {
        default_normalize(scores, true);
        Ok(())
    }
}

/// Filters nodes by the pod's `nodeSelector` and required node affinity; scores them by
/// its preferred node affinity terms.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeAffinity;

/// NodeAffinity's reason.
pub const ERR_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";

fn preferred_terms(
    pod: &Pod,
) -> &[keelson_core::k8s_openapi::api::core::v1::PreferredSchedulingTerm] {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or(&[])
}

impl Plugin for NodeAffinity {
    fn name(&self) -> &str {
        "NodeAffinity"
    }
    fn events_to_register(&self) -> Vec<ClusterEvent> {
        vec![node_event(
            ActionType::ADD.or(ActionType::UPDATE_NODE_LABEL),
        )]
    }
    fn as_pre_filter(self: Arc<Self>) -> Option<Arc<dyn PreFilter>> {
        Some(self)
    }
    fn as_filter(self: Arc<Self>) -> Option<Arc<dyn Filter>> {
        Some(self)
    }
    fn as_pre_score(self: Arc<Self>) -> Option<Arc<dyn PreScore>> {
        Some(self)
    }
    fn as_score(self: Arc<Self>) -> Option<Arc<dyn Score>> {
        Some(self)
    }
}

impl PreFilter for NodeAffinity {
    fn pre_filter(
        &self,
        _: &mut CycleState,
        pod: &PodInfo,
        _: &Snapshot,
    ) -> Result<PreFilterResult, Status> {
        let Some(spec) = pod.pod.spec.as_ref() else {
            return Ok(PreFilterResult::Skip);
        };
        let required = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        if spec.node_selector.as_ref().is_none_or(|s| s.is_empty()) && required.is_none() {
            return Ok(PreFilterResult::Skip);
        }
        // Terms that pin metadata.name narrow the nodes to those names, when every
        // term does (the terms are ORed).
        if let Some(required) = required {
            let mut names = std::collections::BTreeSet::new();
            for term in &required.node_selector_terms {
                let pinned = term
                    .match_fields
                    .iter()
                    .flatten()
                    .find(|f| f.key == "metadata.name" && f.operator == "In");
                match pinned {
                    Some(f) => names.extend(f.values.iter().flatten().cloned()),
                    None => return Ok(PreFilterResult::AllNodes),
                }
            }
            if names.is_empty() {
                return Err(Status::unresolvable(ERR_NODE_AFFINITY));
            }
            return Ok(PreFilterResult::Nodes(names));
        }
        Ok(PreFilterResult::AllNodes)
    }
}

impl Filter for NodeAffinity {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        if pod_matches_node_selector_and_affinity(&pod.pod, node) {
            Ok(())
        } else {
            Err(Status::unresolvable(ERR_NODE_AFFINITY))
        }
    }
}

impl PreScore for NodeAffinity {
    fn pre_score(
        &self,
        _: &mut CycleState,
        pod: &PodInfo,
        _: &Snapshot,
        _: &[Arc<NodeInfo>],
    ) -> Result<PreScoreResult, Status> {
        Ok(if preferred_terms(&pod.pod).is_empty() {
            PreScoreResult::Skip
        } else {
            PreScoreResult::Run
        })
    }
}

impl Score for NodeAffinity {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        Ok(preferred_terms(&pod.pod)
            .iter()
            .filter(|t| t.weight != 0 && term_matches(&t.preference, node.labels(), node.name()))
            .map(|t| i64::from(t.weight))
            .sum())
    }

    fn normalize_scores(
        &self,
        _: &CycleState,
        _: &PodInfo,
        scores: &mut [NodeScore],
    ) -> Result<(), Status> {
        default_normalize(scores, false);
        Ok(())
    }
}

/// Prefers nodes that already have the pod's images, weighted by image size and by how
/// widely the image is spread (to avoid piling pods on the few nodes that have it).
#[derive(Debug, Default, Clone, Copy)]
pub struct ImageLocality;

const MB: i64 = 1024 * 1024;
const MIN_THRESHOLD: i64 = 23 * MB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

#[derive(Clone)]
struct ImageLocalityState {
    total_nodes: usize,
    images: Vec<(String, usize)>,
}

impl Plugin for ImageLocality {
    fn name(&self) -> &str {
        "ImageLocality"
    }
    fn events_to_register(&self) -> Vec<ClusterEvent> {
        vec![node_event(
            ActionType::ADD.or(ActionType::UPDATE_NODE_OTHER),
        )]
    }
    fn as_pre_score(self: Arc<Self>) -> Option<Arc<dyn PreScore>> {
        Some(self)
    }
    fn as_score(self: Arc<Self>) -> Option<Arc<dyn Score>> {
        Some(self)
    }
}

impl ImageLocality {
    /// The pod's images (init containers and containers), normalized.
    fn images(pod: &PodInfo) -> Vec<String> {
        let spec = pod.pod.spec.as_ref();
        spec.into_iter()
            .flat_map(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
            })
            .filter_map(|c| c.image.as_deref())
            .map(normalize_image)
            .collect()
    }
}

impl PreScore for ImageLocality {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        nodes: &[Arc<NodeInfo>],
    ) -> Result<PreScoreResult, Status> {
        let images = Self::images(pod);
        if images.is_empty() || nodes.iter().all(|n| n.images.is_empty()) {
            return Ok(PreScoreResult::Skip);
        }
        let counts = images
            .into_iter()
            .map(|i| {
                let c = snapshot.image_node_count(&i);
                (i, c)
            })
            .collect();
        state.insert(ImageLocalityState {
            total_nodes: snapshot.nodes().len(),
            images: counts,
        });
        Ok(PreScoreResult::Run)
    }
}

impl Score for ImageLocality {
    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let Some(s) = state.get::<ImageLocalityState>() else {
            return Ok(0);
        };
        if s.total_nodes == 0 {
            return Ok(0);
        }
        let mut sum: i64 = 0;
        for (image, count) in &s.images {
            if let Some(size) = node.images.get(image) {
                #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
                let scaled = (*size as f64 * (*count as f64 / s.total_nodes as f64)) as i64;
                sum = sum.saturating_add(scaled);
            }
        }
        let containers = i64::try_from(s.images.len()).unwrap_or(1);
        let max = MAX_CONTAINER_THRESHOLD * containers;
        let sum = sum.clamp(MIN_THRESHOLD, max);
        Ok(MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max - MIN_THRESHOLD))
    }
}

/// Binds pods through the API: `POST pods/NAME/binding`.
#[derive(Clone, Debug)]
pub struct DefaultBinder {
    client: Client,
}

impl DefaultBinder {
    /// A binder using `client`.
    pub fn new(client: Client) -> DefaultBinder {
        DefaultBinder { client }
    }
}

impl Plugin for DefaultBinder {
    fn name(&self) -> &str {
        "DefaultBinder"
    }
    fn as_bind(self: Arc<Self>) -> Option<Arc<dyn Bind>> {
        Some(self)
    }
}

#[async_trait]
impl Bind for DefaultBinder {
    async fn bind(&self, _: &CycleState, pod: &PodInfo, node: &str) -> Result<BindResult, Status> {
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: Some(pod.uid.clone()),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                kind: Some("Node".into()),
                name: Some(node.to_owned()),
                ..ObjectReference::default()
            },
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        pods.create_subresource::<_, serde_json::Value>("binding", &pod.name, &binding)
            .await
            .map_err(|e| Status::error(format!("binding rejected: {e}")))?;
        Ok(BindResult::Bound)
    }
}
