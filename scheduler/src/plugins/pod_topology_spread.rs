//! PodTopologySpread: spreads matching pods evenly over topology domains — a hard
//! filter for `whenUnsatisfiable: DoNotSchedule` constraints (with `minDomains`) and a
//! score for `ScheduleAnyway` ones, honouring `nodeAffinityPolicy` and
//! `nodeTaintsPolicy`, with cluster-level default constraints for pods that set none.

use std::collections::HashSet;
use std::sync::Arc;

use keelson_core::k8s_openapi::api::core::v1::TopologySpreadConstraint;
use keelson_core::{LabelSelector, Operator, Requirement};
use serde::Deserialize;

use super::helpers::{pod_matches_node_selector_and_affinity, tolerations, untolerated_taint};
use crate::cache::{Snapshot, TopologyIndex};
use crate::framework::{
    ActionType, ClusterEvent, CycleState, EventResource, Filter, NodeScore, Plugin, PreFilter,
    PreFilterResult, PreScore, PreScoreResult, Score, Status, MAX_NODE_SCORE,
};
use crate::fxhash::FxHashMap;
use crate::node_info::NodeInfo;
use crate::plugins::node_memo::{ByPtr, NodeMemo};
use crate::pod_info::PodInfo;

/// Reason: placing the pod here would exceed a constraint's `maxSkew`.
pub const ERR_SPREAD: &str = "node(s) didn't match pod topology spread constraints";
/// Reason: the node lacks a constraint's topology key.
pub const ERR_SPREAD_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

const HOSTNAME: &str = "kubernetes.io/hostname";

/// PodTopologySpread's arguments (`PodTopologySpreadArgs`).
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SpreadArgs {
    /// Constraints for pods that set none (`labelSelector` must be unset: the pod's own
    /// labels select, as with Kubernetes' defaults built from its workload).
    #[serde(default)]
    pub default_constraints: Vec<TopologySpreadConstraint>,
    /// `System` or `List`.
    #[serde(default)]
    pub defaulting_type: Option<String>,
}

/// The PodTopologySpread plugin.
#[derive(Debug, Default)]
pub struct PodTopologySpread {
    defaults: Vec<TopologySpreadConstraint>,
    /// Matching-pod counts of the last single-constraint PreFilter, per node, reused
    /// for the nodes that did not change since (most of them, from one pod to the
    /// next).
    memo: NodeMemo<SpreadKey, DomainCounts>,
    /// The same for PreScore's ScheduleAnyway constraint.
    score_memo: NodeMemo<SpreadKey, DomainCounts>,
}

/// Namespace, selector and topology key the counts are for, and the domain index
/// (of one snapshot's node list) they follow.
type SpreadKey = (String, String, String, ByPtr<TopologyIndex>);

/// Counts of pods matching one constraint.
#[derive(Debug)]
struct DomainCounts {
    /// Per entry of the index's nodes.
    by_node: Vec<i64>,
    /// Per domain: the sum, and how many nodes were included.
    domains: Vec<(i64, usize)>,
}

impl PodTopologySpread {
    /// The plugin with cluster default constraints (`defaulting_type` `System` uses
    /// Kubernetes' system defaults: zone skew 5 and hostname skew 3, ScheduleAnyway).
    ///
    /// # Errors
    /// Default constraints with a label selector, or an unknown defaulting type.
    pub fn from_args(args: SpreadArgs) -> Result<PodTopologySpread, String> {
        let defaults = match args.defaulting_type.as_deref().unwrap_or("System") {
            "System" => {
                if !args.default_constraints.is_empty() {
                    return Err(
                        "defaultConstraints must be empty with defaultingType System".into(),
                    );
                }
                vec![
                    TopologySpreadConstraint {
                        max_skew: 3,
                        topology_key: HOSTNAME.into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        ..TopologySpreadConstraint::default()
                    },
                    TopologySpreadConstraint {
                        max_skew: 5,
                        topology_key: "topology.kubernetes.io/zone".into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        ..TopologySpreadConstraint::default()
                    },
                ]
            }
            "List" => args.default_constraints,
            other => return Err(format!("unknown defaultingType {other}")),
        };
        if defaults.iter().any(|c| c.label_selector.is_some()) {
            return Err("default constraints must not set labelSelector".into());
        }
        Ok(PodTopologySpread {
            defaults,
            memo: NodeMemo::default(),
            score_memo: NodeMemo::default(),
        })
    }

    /// The constraints that apply to `pod` with `action` (`DoNotSchedule` or
    /// `ScheduleAnyway`).
    fn constraints(&self, pod: &PodInfo, action: &str) -> Result<Vec<Constraint>, Status> {
        let own = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_deref())
            .unwrap_or(&[]);
        if !own.is_empty() {
            return own
                .iter()
                .filter(|c| c.when_unsatisfiable == action)
                .map(|c| Constraint::parse(c, pod, false))
                .collect();
        }
        // Defaults apply to pods a workload controller owns, and select pods like this
        // one in its namespace by its own labels (Kubernetes takes the selector of the
        // workloads and services that select the pod). Other pods get none.
        let owned = pod.pod.metadata.owner_references.iter().flatten().any(|o| {
            o.controller == Some(true)
                && matches!(
                    o.kind.as_str(),
                    "ReplicaSet" | "StatefulSet" | "ReplicationController"
                )
        });
        if !owned || pod.labels.is_empty() {
            return Ok(Vec::new());
        }
        self.defaults
            .iter()
            .filter(|c| c.when_unsatisfiable == action)
            .map(|c| Constraint::parse(c, pod, true))
            .collect()
    }
}

#[derive(Clone, Debug)]
struct Constraint {
    max_skew: i64,
    key: String,
    selector: LabelSelector,
    min_domains: i64,
    honor_affinity: bool,
    honor_taints: bool,
}

impl Constraint {
    fn parse(
        c: &TopologySpreadConstraint,
        pod: &PodInfo,
        default: bool,
    ) -> Result<Constraint, Status> {
        let bad =
            |m: String| Status::unresolvable(format!("invalid topology spread constraint: {m}"));
        let mut selector = if default {
            LabelSelector::from_labels(&pod.labels).map_err(|e| bad(e.to_string()))?
        } else {
            LabelSelector::from_optional(c.label_selector.as_ref())
                .map_err(|e| bad(e.to_string()))?
        };
        for key in c.match_label_keys.iter().flatten() {
            if let Some(v) = pod.labels.get(key) {
                let r = Requirement::new(key.clone(), Operator::In, [v.clone()])
                    .map_err(|e| bad(e.to_string()))?;
                selector = selector.and(r);
            }
        }
        if c.max_skew < 1 {
            return Err(bad(format!("maxSkew {} must be at least 1", c.max_skew)));
        }
        Ok(Constraint {
            max_skew: i64::from(c.max_skew),
            key: c.topology_key.clone(),
            selector,
            min_domains: i64::from(c.min_domains.unwrap_or(1)).max(1),
            honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        })
    }

    /// Whether `node` counts for this constraint under its inclusion policies.
    fn includes(&self, pod: &PodInfo, node: &NodeInfo) -> bool {
        (!self.honor_affinity || pod_matches_node_selector_and_affinity(&pod.pod, node))
            && (!self.honor_taints
                || untolerated_taint(
                    node.taints(),
                    tolerations(&pod.pod),
                    &["NoSchedule", "NoExecute"],
                )
                .is_none())
    }

    fn count(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let n = node
            .pods
            .iter()
            .filter(|p| {
                p.namespace == pod.namespace
                    && !p.is_terminating()
                    && self.selector.matches(&p.labels)
            })
            .count();
        i64::try_from(n).unwrap_or(i64::MAX)
    }
}

/// Whether the pod restricts nodes by `nodeSelector` or required node affinity.
fn has_node_constraints(pod: &PodInfo) -> bool {
    pod.pod.spec.as_ref().is_some_and(|s| {
        s.node_selector.as_ref().is_some_and(|n| !n.is_empty())
            || s.affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .is_some()
    })
}

fn has_all_keys(constraints: &[Constraint], node: &NodeInfo) -> bool {
    let labels = node.labels();
    constraints.iter().all(|c| labels.contains_key(&c.key))
}

#[derive(Clone, Debug, Default)]
struct FilterState {
    constraints: Vec<Constraint>,
    /// Per constraint: domain value → matching pods.
    counts: Vec<FxHashMap<Arc<str>, i64>>,
    /// Per constraint: the smallest count over its domains.
    min: Vec<i64>,
}

impl FilterState {
    fn recompute_min(&mut self) {
        self.min = self
            .counts
            .iter()
            .map(|c| c.values().copied().min().unwrap_or(0))
            .collect();
    }

    fn update(&mut self, pod: &PodInfo, other: &PodInfo, node: &NodeInfo, delta: i64) {
        if other.namespace != pod.namespace || !has_all_keys(&self.constraints, node) {
            return;
        }
        for (i, c) in self.constraints.iter().enumerate() {
            if !c.includes(pod, node) || !c.selector.matches(&other.labels) {
                continue;
            }
            if let (Some((_, v)), Some(counts)) = (node.label_arc(&c.key), self.counts.get_mut(i)) {
                *counts.entry(v.clone()).or_insert(0) += delta;
            }
        }
        self.recompute_min();
    }
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &str {
        "PodTopologySpread"
    }
    fn events_to_register(&self) -> Vec<ClusterEvent> {
        vec![
            ClusterEvent::new(
                EventResource::AssignedPod,
                ActionType::ADD
                    .or(ActionType::DELETE)
                    .or(ActionType::UPDATE_POD_LABEL),
            ),
            ClusterEvent::new(
                EventResource::Node,
                ActionType::ADD
                    .or(ActionType::DELETE)
                    .or(ActionType::UPDATE_NODE_LABEL)
                    .or(ActionType::UPDATE_NODE_TAINT),
            ),
        ]
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

/// Whether the counts for `constraints` may come from a memo: one constraint whose node
/// inclusion does not depend on the pod.
fn memoizable(constraints: &[Constraint], pod: &PodInfo) -> bool {
    constraints.len() == 1
        && !constraints[0].honor_taints
        && (!constraints[0].honor_affinity || !has_node_constraints(pod))
}

/// Pods matching `c` per domain of `index` (domains with no node left out), from `memo`:
/// only the nodes that changed since the last pod with the same selector are recounted.
fn memo_counts(
    memo: &NodeMemo<SpreadKey, DomainCounts>,
    pod: &PodInfo,
    c: &Constraint,
    index: &Arc<TopologyIndex>,
    snapshot: &Snapshot,
) -> FxHashMap<Arc<str>, i64> {
    let id = (
        pod.namespace.clone(),
        c.selector.to_string(),
        c.key.clone(),
        ByPtr(index.clone()),
    );
    let nodes = snapshot.nodes();
    // Every node of the index exists in the snapshot it was built from.
    let indexed = index.nodes.iter().filter_map(|&(ni, _)| nodes.get(ni));
    memo.refresh(
        id,
        indexed,
        index.nodes.len(),
        || DomainCounts {
            by_node: vec![0; index.nodes.len()],
            domains: vec![(0, 0); index.domains.len()],
        },
        |m, k, old, new| {
            let n = c.count(pod, new);
            let di = index.nodes.get(k).map_or(usize::MAX, |&(_, di)| di);
            if let (Some(d), Some(slot)) = (m.domains.get_mut(di), m.by_node.get_mut(k)) {
                if old.is_some() {
                    d.0 += n - *slot;
                } else {
                    *d = (d.0 + n, d.1 + 1);
                }
                *slot = n;
            }
        },
        |m| {
            index
                .domains
                .iter()
                .zip(&m.domains)
                .filter(|(_, (_, included))| *included > 0)
                .map(|(domain, (n, _))| (domain.clone(), *n))
                .collect()
        },
    )
}

impl PreFilter for PodTopologySpread {
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> Result<PreFilterResult, Status> {
        let constraints = self.constraints(pod, "DoNotSchedule")?;
        if constraints.is_empty() {
            return Ok(PreFilterResult::Skip);
        }
        let mut counts: Vec<FxHashMap<Arc<str>, i64>> =
            vec![FxHashMap::default(); constraints.len()];
        // The nodes that have the first constraint's key, with their domain, come from
        // the snapshot's index: no label lookups per node for it.
        let index = snapshot.topology_index(&constraints[0].key);
        if memoizable(&constraints, pod) {
            // One constraint whose node inclusion does not depend on this pod: recount
            // only the nodes that changed since the last pod with the same selector.
            let domain_counts = memo_counts(&self.memo, pod, &constraints[0], &index, snapshot);
            if let Some(out) = counts.first_mut() {
                *out = domain_counts;
            }
        } else {
            let mut first: Vec<Option<i64>> = vec![None; index.domains.len()];
            let nodes = snapshot.nodes();
            for &(ni, di) in &index.nodes {
                let Some(node) = nodes.get(ni) else { continue };
                if constraints.len() > 1 && !has_all_keys(&constraints, node) {
                    continue;
                }
                for (i, c) in constraints.iter().enumerate() {
                    if !c.includes(pod, node) {
                        continue;
                    }
                    let n = c.count(pod, node);
                    if i == 0 {
                        if let Some(slot) = first.get_mut(di) {
                            *slot = Some(slot.unwrap_or(0) + n);
                        }
                        continue;
                    }
                    let Some((_, v)) = node.label_arc(&c.key) else {
                        continue;
                    };
                    if let Some(m) = counts.get_mut(i) {
                        *m.entry(v.clone()).or_insert(0) += n;
                    }
                }
            }
            if let Some(m) = counts.first_mut() {
                for (domain, n) in index.domains.iter().zip(first) {
                    if let Some(n) = n {
                        m.insert(domain.clone(), n);
                    }
                }
            }
        }
        let mut s = FilterState {
            constraints,
            counts,
            min: Vec::new(),
        };
        s.recompute_min();
        state.insert(s);
        Ok(PreFilterResult::AllNodes)
    }

    fn add_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        added: &Arc<PodInfo>,
        node: &NodeInfo,
    ) -> Result<(), Status> {
        if let Some(s) = state.get_mut::<FilterState>() {
            s.update(pod, added, node, 1);
        }
        Ok(())
    }

    fn remove_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        removed: &Arc<PodInfo>,
        node: &NodeInfo,
    ) -> Result<(), Status> {
        if let Some(s) = state.get_mut::<FilterState>() {
            s.update(pod, removed, node, -1);
        }
        Ok(())
    }
}

impl Filter for PodTopologySpread {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        let Some(s) = state.get::<FilterState>() else {
            return Err(Status::error("PodTopologySpread: no PreFilter state"));
        };
        let labels = node.labels();
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(value) = labels.get(&c.key) else {
                return Err(Status::unresolvable(ERR_SPREAD_LABEL));
            };
            let counts = s.counts.get(i);
            let self_match = i64::from(c.selector.matches(&pod.labels));
            let matching = counts
                .and_then(|m| m.get(value.as_str()))
                .copied()
                .unwrap_or(0);
            let domains = counts.map_or(0, |m| i64::try_from(m.len()).unwrap_or(i64::MAX));
            let min = if domains < c.min_domains {
                0
            } else {
                s.min.get(i).copied().unwrap_or(0)
            };
            if matching + self_match - min > c.max_skew {
                return Err(Status::unschedulable(ERR_SPREAD));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default)]
struct ScoreState {
    constraints: Vec<Constraint>,
    counts: Vec<FxHashMap<Arc<str>, i64>>,
    weights: Vec<f64>,
    ignored: HashSet<usize>,
}

impl PreScore for PodTopologySpread {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        nodes: &[Arc<NodeInfo>],
    ) -> Result<PreScoreResult, Status> {
        let constraints = self.constraints(pod, "ScheduleAnyway")?;
        if constraints.is_empty() || nodes.is_empty() {
            return Ok(PreScoreResult::Skip);
        }
        let mut counts: Vec<FxHashMap<Arc<str>, i64>> =
            vec![FxHashMap::default(); constraints.len()];
        let mut ignored = HashSet::new();
        let mut feasible = 0i64;
        for (n, node) in nodes.iter().enumerate() {
            if !has_all_keys(&constraints, node) {
                ignored.insert(n);
                continue;
            }
            feasible += 1;
            for (i, c) in constraints.iter().enumerate() {
                if c.key == HOSTNAME {
                    continue;
                }
                if let (Some((_, v)), Some(m)) = (node.label_arc(&c.key), counts.get_mut(i)) {
                    m.entry(v.clone()).or_insert(0);
                }
            }
        }
        if feasible == 0 {
            return Ok(PreScoreResult::Skip);
        }
        #[allow(clippy::cast_precision_loss)]
        let weights = constraints
            .iter()
            .zip(&counts)
            .map(|(c, m)| {
                let domains = if c.key == HOSTNAME {
                    feasible
                } else {
                    i64::try_from(m.len()).unwrap_or(i64::MAX)
                };
                ((domains + 2) as f64).ln()
            })
            .collect();
        let needs_counting = constraints.iter().any(|c| c.key != HOSTNAME);
        if needs_counting && memoizable(&constraints, pod) {
            let index = snapshot.topology_index(&constraints[0].key);
            let all = memo_counts(&self.score_memo, pod, &constraints[0], &index, snapshot);
            if let Some(m) = counts.first_mut() {
                for (domain, n) in m.iter_mut() {
                    *n = all.get(domain).copied().unwrap_or(0);
                }
            }
        } else if needs_counting {
            for node in snapshot.nodes() {
                if !has_all_keys(&constraints, node) {
                    continue;
                }
                for (i, c) in constraints.iter().enumerate() {
                    if c.key == HOSTNAME || !c.includes(pod, node) {
                        continue;
                    }
                    let Some(v) = node.labels().get(&c.key) else {
                        continue;
                    };
                    let Some(m) = counts.get_mut(i) else { continue };
                    if let Some(slot) = m.get_mut(v.as_str()) {
                        *slot += c.count(pod, node);
                    }
                }
            }
        }
        state.insert(ScoreState {
            constraints,
            counts,
            weights,
            ignored,
        });
        Ok(PreScoreResult::Run)
    }
}

impl Score for PodTopologySpread {
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let Some(s) = state.get::<ScoreState>() else {
            return Ok(0);
        };
        let labels = node.labels();
        let mut score = 0.0f64;
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(v) = labels.get(&c.key) else {
                continue;
            };
            let count = if c.key == HOSTNAME {
                c.count(pod, node)
            } else {
                s.counts
                    .get(i)
                    .and_then(|m| m.get(v.as_str()))
                    .copied()
                    .unwrap_or(0)
            };
            #[allow(clippy::cast_precision_loss)]
            {
                score += count as f64 * s.weights.get(i).copied().unwrap_or(1.0)
                    + (c.max_skew - 1) as f64;
            }
        }
        #[allow(clippy::cast_possible_truncation)]
        Ok(score.round() as i64)
    }

    fn normalize_scores(
        &self,
        state: &CycleState,
        _: &PodInfo,
        scores: &mut [NodeScore],
    ) -> Result<(), Status> {
        let Some(s) = state.get::<ScoreState>() else {
            return Ok(());
        };
        let (mut min, mut max) = (i64::MAX, 0i64);
        for sc in scores.iter().filter(|sc| !s.ignored.contains(&sc.node)) {
            min = min.min(sc.score);
            max = max.max(sc.score);
        }
        for sc in scores.iter_mut() {
            sc.score = if s.ignored.contains(&sc.node) {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - sc.score) / max
            };
        }
        Ok(())
    }
}
