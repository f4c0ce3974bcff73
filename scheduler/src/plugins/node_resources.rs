//! NodeResourcesFit (does the pod fit the node's free resources, and how full should
//! nodes be) and NodeResourcesBalancedAllocation (balance CPU against memory).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;

use crate::cache::Snapshot;
use crate::framework::{
    ActionType, ClusterEvent, CycleState, EventResource, Filter, Plugin, PreFilter,
    PreFilterResult, Score, Status, MAX_NODE_SCORE,
};
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;

/// A resource and its weight in scoring.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ResourceWeight {
    /// The resource (`cpu`, `memory`, `example.com/gpu`).
    pub name: String,
    /// Its weight (default 1).
    #[serde(default = "one")]
    pub weight: i64,
}

fn one() -> i64 {
    1
}

fn default_resources() -> Vec<ResourceWeight> {
    vec![
        ResourceWeight {
            name: "cpu".into(),
            weight: 1,
        },
        ResourceWeight {
            name: "memory".into(),
            weight: 1,
        },
    ]
}

/// One point of RequestedToCapacityRatio's shape: utilization (0–100) → score (0–10).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct ShapePoint {
    /// Utilization, percent.
    pub utilization: i64,
    /// Score, 0–10.
    pub score: i64,
}

/// How NodeResourcesFit scores nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScoringStrategy {
    /// Prefer the emptiest nodes (the default): spreads pods.
    LeastAllocated,
    /// Prefer the fullest nodes: packs pods (bin packing).
    MostAllocated,
    /// Score by a piecewise-linear function of utilization.
    RequestedToCapacityRatio(Vec<ShapePoint>),
}

/// NodeResourcesFit's arguments (`NodeResourcesFitArgs`).
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct FitArgs {
    /// Resources the filter ignores.
    #[serde(default)]
    pub ignored_resources: Vec<String>,
    /// Resource groups (the prefix before `/`) the filter ignores.
    #[serde(default)]
    pub ignored_resource_groups: Vec<String>,
    /// The scoring strategy.
    #[serde(default)]
    pub scoring_strategy: Option<ScoringStrategyArgs>,
}

/// `scoringStrategy` as configured.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScoringStrategyArgs {
    /// `LeastAllocated`, `MostAllocated` or `RequestedToCapacityRatio`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The resources scored, with weights.
    #[serde(default)]
    pub resources: Option<Vec<ResourceWeight>>,
    /// The shape for `RequestedToCapacityRatio`.
    #[serde(default)]
    pub requested_to_capacity_ratio: Option<ShapeArgs>,
}

/// `requestedToCapacityRatio`.
#[derive(Clone, Debug, Deserialize, Default)]
pub struct ShapeArgs {
    /// The points.
    #[serde(default)]
    pub shape: Vec<ShapePoint>,
}

/// Checks that the node has room for the pod's requests and pod count, and scores
/// nodes by how allocated they would be.
#[derive(Clone, Debug)]
pub struct NodeResourcesFit {
    ignored: BTreeSet<String>,
    ignored_groups: BTreeSet<String>,
    strategy: ScoringStrategy,
    resources: Vec<ResourceWeight>,
}

impl Default for NodeResourcesFit {
    fn default() -> Self {
        NodeResourcesFit::new(ScoringStrategy::LeastAllocated, default_resources())
    }
}

impl NodeResourcesFit {
    /// A plugin with this scoring.
    pub fn new(strategy: ScoringStrategy, resources: Vec<ResourceWeight>) -> NodeResourcesFit {
        NodeResourcesFit {
            ignored: BTreeSet::new(),
            ignored_groups: BTreeSet::new(),
            strategy,
            resources,
        }
    }

    /// The plugin from its arguments.
    ///
    /// # Errors
    /// An unknown strategy, a weight out of 1–100, or a bad shape.
    pub fn from_args(args: FitArgs) -> Result<NodeResourcesFit, String> {
        let s = args.scoring_strategy.unwrap_or_default();
        let resources = s.resources.unwrap_or_else(default_resources);
        if let Some(r) = resources.iter().find(|r| !(1..=100).contains(&r.weight)) {
            return Err(format!(
                "resource {} weight {} must be in 1-100",
                r.name, r.weight
            ));
        }
        let strategy = match s.kind.as_deref().unwrap_or("LeastAllocated") {
            "LeastAllocated" => ScoringStrategy::LeastAllocated,
            "MostAllocated" => ScoringStrategy::MostAllocated,
            "RequestedToCapacityRatio" => {
                let shape = s.requested_to_capacity_ratio.unwrap_or_default().shape;
                if shape.is_empty() {
                    return Err("requestedToCapacityRatio needs a shape".into());
                }
                if shape
                    .windows(2)
                    .any(|w| w[0].utilization >= w[1].utilization)
                {
                    return Err("shape utilizations must increase".into());
                }
                if shape
                    .iter()
                    .any(|p| !(0..=100).contains(&p.utilization) || !(0..=10).contains(&p.score))
                {
                    return Err("shape points must have utilization 0-100 and score 0-10".into());
                }
                ScoringStrategy::RequestedToCapacityRatio(shape)
            }
            other => return Err(format!("unknown scoring strategy {other}")),
        };
        let mut plugin = NodeResourcesFit::new(strategy, resources);
        plugin.ignored = args.ignored_resources.into_iter().collect();
        plugin.ignored_groups = args.ignored_resource_groups.into_iter().collect();
        Ok(plugin)
    }

    fn ignored(&self, name: &str) -> bool {
        self.ignored.contains(name)
            || name
                .split_once('/')
                .is_some_and(|(group, _)| self.ignored_groups.contains(group))
    }

    fn resource_score(&self, requested: i64, capacity: i64) -> i64 {
        if capacity <= 0 {
            return 0;
        }
        match &self.strategy {
            ScoringStrategy::LeastAllocated => {
                if requested > capacity {
                    0
                } else {
                    (capacity - requested) * MAX_NODE_SCORE / capacity
                }
            }
            ScoringStrategy::MostAllocated => requested.min(capacity) * MAX_NODE_SCORE / capacity,
            ScoringStrategy::RequestedToCapacityRatio(shape) => {
                let utilization = requested.min(capacity) * 100 / capacity;
                shape_score(shape, utilization) * (MAX_NODE_SCORE / 10)
            }
        }
    }
}

fn shape_score(shape: &[ShapePoint], utilization: i64) -> i64 {
    let (Some(first), Some(last)) = (shape.first(), shape.last()) else {
        return 0;
    };
    if utilization <= first.utilization {
        return first.score;
    }
    for w in shape.windows(2) {
        let (a, b) = (w[0], w[1]);
        if utilization <= b.utilization {
            return a.score
                + (b.score - a.score) * (utilization - a.utilization)
                    / (b.utilization - a.utilization);
        }
    }
    last.score
}

/// What a pod requests of resource `name`, with scoring's non-zero defaults.
fn requested_for_scoring(pod: &PodInfo, node: &NodeInfo, name: &str) -> (i64, i64) {
    match name {
        "cpu" => (
            node.non_zero_requested.milli_cpu + pod.non_zero_requests.milli_cpu,
            node.allocatable.milli_cpu,
        ),
        "memory" => (
            node.non_zero_requested.memory + pod.non_zero_requests.memory,
            node.allocatable.memory,
        ),
        other => (
            node.requested.get(other) + pod.requests.get(other),
            node.allocatable.get(other),
        ),
    }
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &str {
        "NodeResourcesFit"
    }
    fn events_to_register(&self) -> Vec<ClusterEvent> {
        vec![
            ClusterEvent::new(
                EventResource::Node,
                ActionType::ADD.or(ActionType::UPDATE_NODE_ALLOCATABLE),
            ),
            ClusterEvent::new(
                EventResource::AssignedPod,
                ActionType::DELETE.or(ActionType::UPDATE_POD_SCALE_DOWN),
            ),
        ]
    }
    fn as_pre_filter(self: Arc<Self>) -> Option<Arc<dyn PreFilter>> {
        Some(self)
    }
    fn as_filter(self: Arc<Self>) -> Option<Arc<dyn Filter>> {
        Some(self)
    }
    fn as_score(self: Arc<Self>) -> Option<Arc<dyn Score>> {
        Some(self)
    }
}

impl PreFilter for NodeResourcesFit {
    fn pre_filter(
        &self,
        _: &mut CycleState,
        _: &PodInfo,
        _: &Snapshot,
    ) -> Result<PreFilterResult, Status> {
        // The requests are computed once per pod (PodInfo); nothing more to prepare.
        Ok(PreFilterResult::AllNodes)
    }
}

impl Filter for NodeResourcesFit {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        let mut reasons: Vec<String> = Vec::new();
        let mut unresolvable = false;
        let allowed_pods = node.allocatable.pods;
        if i64::try_from(node.pods.len()).unwrap_or(i64::MAX) + 1 > allowed_pods {
            reasons.push("Too many pods".into());
            unresolvable |= allowed_pods == 0;
        }
        let req = &pod.requests;
        let (alloc, used) = (&node.allocatable, &node.requested);
        let mut check = |name: &str, wanted: i64, free: i64, total: i64| {
            if wanted > 0 && wanted > free {
                reasons.push(format!("Insufficient {name}"));
                unresolvable |= wanted > total;
            }
        };
        if !self.ignored("cpu") {
            check(
                "cpu",
                req.milli_cpu,
                alloc.milli_cpu - used.milli_cpu,
                alloc.milli_cpu,
            );
        }
        if !self.ignored("memory") {
            check(
                "memory",
                req.memory,
                alloc.memory - used.memory,
                alloc.memory,
            );
        }
        if !self.ignored("ephemeral-storage") {
            check(
                "ephemeral-storage",
                req.ephemeral_storage,
                alloc.ephemeral_storage - used.ephemeral_storage,
                alloc.ephemeral_storage,
            );
        }
        for (name, wanted) in &req.scalar {
            if self.ignored(name) {
                continue;
            }
            let total = alloc.get(name);
            check(name, *wanted, total - used.get(name), total);
        }
        if reasons.is_empty() {
            return Ok(());
        }
        let mut status = if unresolvable {
            Status::unresolvable(reasons.remove(0))
        } else {
            Status::unschedulable(reasons.remove(0))
        };
        for r in reasons {
            status = status.with_reason(r);
        }
        Err(status)
    }
}

impl Score for NodeResourcesFit {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let (mut total, mut weights) = (0i64, 0i64);
        for r in &self.resources {
            let is_scalar = !matches!(r.name.as_str(), "cpu" | "memory" | "ephemeral-storage");
            if is_scalar && pod.requests.get(&r.name) == 0 {
                continue;
            }
            let (requested, capacity) = requested_for_scoring(pod, node, &r.name);
            if capacity == 0 {
                continue;
            }
            total += self.resource_score(requested, capacity) * r.weight;
            weights += r.weight;
        }
        Ok(if weights == 0 { 0 } else { total / weights })
    }
}

/// Prefers nodes whose CPU and memory would be equally used (the lower the standard
/// deviation of the fractions used, the higher the score).
#[derive(Clone, Debug)]
pub struct NodeResourcesBalancedAllocation {
    resources: Vec<ResourceWeight>,
}

impl Default for NodeResourcesBalancedAllocation {
    fn default() -> Self {
        NodeResourcesBalancedAllocation {
            resources: default_resources(),
        }
    }
}

impl NodeResourcesBalancedAllocation {
    /// The plugin for these resources.
    pub fn new(resources: Vec<ResourceWeight>) -> Self {
        NodeResourcesBalancedAllocation { resources }
    }
}

impl Plugin for NodeResourcesBalancedAllocation {
    fn name(&self) -> &str {
        "NodeResourcesBalancedAllocation"
    }
    fn events_to_register(&self) -> Vec<ClusterEvent> {
        vec![
            ClusterEvent::new(
                EventResource::Node,
                ActionType::ADD.or(ActionType::UPDATE_NODE_ALLOCATABLE),
            ),
            ClusterEvent::new(EventResource::AssignedPod, ActionType::DELETE),
        ]
    }
    fn as_score(self: Arc<Self>) -> Option<Arc<dyn Score>> {
        Some(self)
    }
}

impl Score for NodeResourcesBalancedAllocation {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let mut fractions: Vec<f64> = Vec::with_capacity(self.resources.len());
        for r in &self.resources {
            let (requested, capacity) = requested_for_scoring(pod, node, &r.name);
            if capacity == 0 {
                continue;
            }
            #[allow(clippy::cast_precision_loss)]
            let f = (requested as f64 / capacity as f64).min(1.0);
            fractions.push(f);
        }
        let std = match fractions.as_slice() {
            [] | [_] => 0.0,
            [a, b] => (a - b).abs() / 2.0,
            many => {
                #[allow(clippy::cast_precision_loss)]
                let n = many.len() as f64;
                let mean = many.iter().sum::<f64>() / n;
                (many.iter().map(|f| (f - mean) * (f - mean)).sum::<f64>() / n).sqrt()
            }
        };
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let score = ((1.0 - std) * MAX_NODE_SCORE as f64) as i64;
        Ok(score)
    }
}
