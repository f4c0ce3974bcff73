//! InterPodAffinity: required and preferred pod affinity and anti-affinity, including
//! the symmetry of existing pods' anti-affinity (and preferred terms) towards the
//! incoming pod.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;

use crate::cache::Snapshot;
use crate::framework::{
    ActionType, ClusterEvent, CycleState, EventResource, Filter, NodeScore, Plugin, PreFilter,
    PreFilterResult, PreScore, PreScoreResult, Score, Status, MAX_NODE_SCORE,
};
use crate::fxhash::FxHashMap;
use crate::node_info::NodeInfo;
use crate::plugins::node_memo::{ByPtr, NodeMemo};
use crate::pod_info::{AffinityTerm, PodInfo};

/// Reason: a required affinity term has no matching pod in the node's domain.
pub const ERR_AFFINITY: &str = "node(s) didn't match pod affinity rules";
/// Reason: a pod the incoming pod's anti-affinity names is in the node's domain.
pub const ERR_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
/// Reason: an existing pod's anti-affinity names the incoming pod.
pub const ERR_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

/// Pods per topology domain: key → value → count, keyed by the nodes' shared label
/// strings, so counting copies no text.
#[derive(Clone, Debug, Default)]
struct Counts(FxHashMap<Arc<str>, FxHashMap<Arc<str>, i64>>);

impl Counts {
    fn add(&mut self, key: &str, node: &NodeInfo, delta: i64) {
        let Some((k, v)) = node.label_arc(key) else {
            return;
        };
        let values = self.0.entry(k.clone()).or_default();
        match values.get_mut(&**v) {
            Some(c) => {
                *c += delta;
                if *c == 0 {
                    values.remove(&**v);
                }
            }
            None if delta != 0 => {
                values.insert(v.clone(), delta);
            }
            None => {}
        }
    }

    fn get(&self, key: &str, value: &str) -> i64 {
        self.0
            .get(key)
            .and_then(|m| m.get(value))
            .copied()
            .unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.values().all(|m| m.is_empty())
    }

    /// Whether a domain the node is in has a positive count.
    fn hits(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().any(|(key, values)| {
            labels
                .get(&**key)
                .is_some_and(|v| values.get(v.as_str()).is_some_and(|c| *c > 0))
        })
    }
}

/// InterPodAffinity's arguments.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterPodAffinityArgs {
    /// The weight of existing pods' required affinity terms in scoring (default 1).
    #[serde(default = "default_hard_weight")]
    pub hard_pod_affinity_weight: i64,
    /// Ignore existing pods' preferred terms when scoring.
    #[serde(default)]
    pub ignore_preferred_terms_of_existing_pods: bool,
}

fn default_hard_weight() -> i64 {
    1
}

impl Default for InterPodAffinityArgs {
    fn default() -> Self {
        InterPodAffinityArgs {
            hard_pod_affinity_weight: 1,
            ignore_preferred_terms_of_existing_pods: false,
        }
    }
}

/// The InterPodAffinity plugin.
#[derive(Debug, Default)]
pub struct InterPodAffinity {
    args: InterPodAffinityArgs,
    /// The counts of the last pod, reused for the next pod with the same labels,
    /// namespace and terms (its signature) over the same node list.
    memo: NodeMemo<(String, ByPtr<()>), Arc<CountSet>>,
    /// The domain scores of the last pod scored, reused for the next pod with the same
    /// labels, namespace and preferred terms.
    score_memo: NodeMemo<(String, ByPtr<()>), Counts>,
}

impl InterPodAffinity {
    /// The plugin with these arguments.
    pub fn new(args: InterPodAffinityArgs) -> Self {
        InterPodAffinity {
            args,
            memo: NodeMemo::default(),
            score_memo: NodeMemo::default(),
        }
    }
}

#[derive(Clone, Default)]
struct PreFilterState {
    /// The counts, shared with the memo until preemption changes them.
    counts: Arc<CountSet>,
    /// The incoming pod's namespace labels.
    ns_labels: Option<BTreeMap<String, String>>,
    /// Namespace labels of every namespace, for the incoming pod's namespaceSelectors.
    namespaces: Arc<HashMap<String, BTreeMap<String, String>>>,
}

/// The three counts of a cycle.
#[derive(Clone, Debug, Default)]
struct CountSet {
    /// (key, value) domains where an existing pod's required anti-affinity matches the
    /// incoming pod.
    existing_anti: Counts,
    /// Domains with pods matching all the incoming pod's required affinity terms.
    affinity: Counts,
    /// Domains with pods matching one of the incoming pod's anti-affinity terms.
    anti: Counts,
}

impl CountSet {
    /// Counts every pod on `node` (`delta` 1) or uncounts them (-1).
    fn node(
        &mut self,
        pod: &PodInfo,
        node: &NodeInfo,
        ns_labels: Option<&BTreeMap<String, String>>,
        namespaces: &HashMap<String, BTreeMap<String, String>>,
        has_own: bool,
        delta: i64,
    ) {
        for existing in &node.pods_with_required_anti_affinity {
            for term in &existing.required_anti_affinity {
                if term.matches(pod, ns_labels) {
                    self.existing_anti.add(&term.topology_key, node, delta);
                }
            }
        }
        if has_own {
            for existing in &node.pods {
                self.own(pod, existing, node, namespaces, delta);
            }
        }
    }

    /// Counts one existing pod against the incoming pod's own terms.
    fn own(
        &mut self,
        pod: &PodInfo,
        existing: &PodInfo,
        node: &NodeInfo,
        namespaces: &HashMap<String, BTreeMap<String, String>>,
        delta: i64,
    ) {
        if !pod.required_affinity.is_empty()
            && pod
                .required_affinity
                .iter()
                .all(|t| term_matches(t, existing, namespaces))
        {
            for t in &pod.required_affinity {
                self.affinity.add(&t.topology_key, node, delta);
            }
        }
        for t in &pod.required_anti_affinity {
            if term_matches(t, existing, namespaces) {
                self.anti.add(&t.topology_key, node, delta);
            }
        }
    }
}

/// What the counts of a pod depend on, or `None` when they also depend on other
/// namespaces' labels (a namespaceSelector in its own terms).
fn signature(pod: &PodInfo, ns_labels: Option<&BTreeMap<String, String>>) -> Option<String> {
    use std::fmt::Write;
    let mut sig = format!("{}|{:?}|{:?}", pod.namespace, pod.labels, ns_labels);
    for (kind, terms) in [
        ("a", &pod.required_affinity),
        ("n", &pod.required_anti_affinity),
    ] {
        for t in terms {
            if t.namespace_selector.is_some() {
                return None;
            }
            let _ = write!(
                sig,
                "|{kind}:{}:{:?}:{}",
                t.selector, t.namespaces, t.topology_key
            );
        }
    }
    Some(sig)
}

fn term_matches(
    term: &AffinityTerm,
    pod: &PodInfo,
    namespaces: &HashMap<String, BTreeMap<String, String>>,
) -> bool {
    term.matches_with(pod, || namespaces.get(&pod.namespace))
}

impl PreFilterState {
    /// Counts `existing` (on `node`) into the state, `delta` = 1 or -1.
    fn update(&mut self, pod: &PodInfo, existing: &PodInfo, node: &NodeInfo, delta: i64) {
        let counts = Arc::make_mut(&mut self.counts);
        for term in &existing.required_anti_affinity {
            if term.matches(pod, self.ns_labels.as_ref()) {
                counts.existing_anti.add(&term.topology_key, node, delta);
            }
        }
        counts.own(pod, existing, node, &self.namespaces, delta);
    }
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &str {
        "InterPodAffinity"
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
                ActionType::ADD.or(ActionType::UPDATE_NODE_LABEL),
            ),
            ClusterEvent::new(
                EventResource::Namespace,
                ActionType::ADD.or(ActionType::UPDATE),
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

impl PreFilter for InterPodAffinity {
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> Result<PreFilterResult, Status> {
        if let Some(e) = &pod.parse_error {
            return Err(Status::unresolvable(format!("invalid pod affinity: {e}")));
        }
        let has_own = !(pod.required_affinity.is_empty() && pod.required_anti_affinity.is_empty());
        if !has_own
            && snapshot
                .nodes_with_required_anti_affinity()
                .next()
                .is_none()
        {
            return Ok(PreFilterResult::Skip);
        }
        let ns_labels = snapshot.namespace_labels(&pod.namespace).cloned();
        let namespaces = snapshot.namespaces_arc().clone();
        let nodes = snapshot.nodes();
        let counts = match signature(pod, ns_labels.as_ref()) {
            Some(sig) => self.memo.refresh(
                (sig, ByPtr(snapshot.layout().clone())),
                nodes.iter(),
                nodes.len(),
                Arc::<CountSet>::default,
                |c, _, old, new| {
                    let c = Arc::make_mut(c);
                    if let Some(old) = old {
                        c.node(pod, old, ns_labels.as_ref(), &namespaces, has_own, -1);
                    }
                    c.node(pod, new, ns_labels.as_ref(), &namespaces, has_own, 1);
                },
                Arc::clone,
            ),
            None => {
                let mut c = CountSet::default();
                for node in snapshot.nodes_with_required_anti_affinity() {
                    for existing in &node.pods_with_required_anti_affinity {
                        for term in &existing.required_anti_affinity {
                            if term.matches(pod, ns_labels.as_ref()) {
                                c.existing_anti.add(&term.topology_key, node, 1);
                            }
                        }
                    }
                }
                if has_own {
                    for node in nodes {
                        for existing in &node.pods {
                            c.own(pod, existing, node, &namespaces, 1);
                        }
                    }
                }
                Arc::new(c)
            }
        };
        state.insert(PreFilterState {
            counts,
            ns_labels,
            namespaces,
        });
        Ok(PreFilterResult::AllNodes)
    }

    fn add_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        added: &Arc<PodInfo>,
        node: &NodeInfo,
    ) -> Result<(), Status> {
        if let Some(s) = state.get_mut::<PreFilterState>() {
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
        if let Some(s) = state.get_mut::<PreFilterState>() {
            s.update(pod, removed, node, -1);
        }
        Ok(())
    }
}

impl Filter for InterPodAffinity {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        let Some(s) = state.get::<PreFilterState>() else {
            return Err(Status::error("InterPodAffinity: no PreFilter state"));
        };
        let labels = node.labels();
        // Required affinity: every term's domain on this node has a matching pod.
        if !pod.required_affinity.is_empty() {
            let satisfied = pod.required_affinity.iter().all(|t| {
                labels
                    .get(&t.topology_key)
                    .is_some_and(|v| s.counts.affinity.get(&t.topology_key, v) > 0)
            });
            if !satisfied {
                // The first pod of a group that selects itself may go anywhere that has
                // the topology keys, when no pod matches yet.
                let self_match = s.counts.affinity.is_empty()
                    && pod
                        .required_affinity
                        .iter()
                        .all(|t| t.matches(pod, s.ns_labels.as_ref()))
                    && pod
                        .required_affinity
                        .iter()
                        .all(|t| labels.contains_key(&t.topology_key));
                if !self_match {
                    return Err(Status::unresolvable(ERR_AFFINITY));
                }
            }
        }
        for t in &pod.required_anti_affinity {
            if let Some(v) = labels.get(&t.topology_key) {
                if s.counts.anti.get(&t.topology_key, v) > 0 {
                    return Err(Status::unschedulable(ERR_ANTI_AFFINITY));
                }
            }
        }
        if s.counts.existing_anti.hits(labels) {
            return Err(Status::unschedulable(ERR_EXISTING_ANTI_AFFINITY));
        }
        Ok(())
    }
}

#[derive(Clone, Default)]
struct ScoreState {
    /// The score of each node being scored, by name.
    by_node: FxHashMap<Arc<str>, i64>,
}

/// What the scores for a pod depend on besides the nodes, or `None` when they also
/// depend on other namespaces' labels (a namespaceSelector in its preferred terms).
fn score_signature(
    pod: &PodInfo,
    ns_labels: Option<&BTreeMap<String, String>>,
    all_pods: bool,
) -> Option<String> {
    use std::fmt::Write;
    let mut sig = format!(
        "{all_pods}|{}|{:?}|{:?}",
        pod.namespace, pod.labels, ns_labels
    );
    for (kind, terms) in [
        ("a", &pod.preferred_affinity),
        ("n", &pod.preferred_anti_affinity),
    ] {
        for t in terms {
            if t.term.namespace_selector.is_some() {
                return None;
            }
            let _ = write!(
                sig,
                "|{kind}{}:{}:{:?}:{}",
                t.weight, t.term.selector, t.term.namespaces, t.term.topology_key
            );
        }
    }
    Some(sig)
}

impl InterPodAffinity {
    /// Adds (`sign` 1) or takes out (-1) what the pods on `node` add to the scores of
    /// its domains: `all_pods` counts every pod against the incoming pod's preferred
    /// terms, else only the pods with affinity terms of their own are looked at.
    #[allow(clippy::too_many_arguments)]
    fn score_node(
        &self,
        scores: &mut Counts,
        pod: &PodInfo,
        pod_ns_labels: Option<&BTreeMap<String, String>>,
        namespaces: &HashMap<String, BTreeMap<String, String>>,
        node: &NodeInfo,
        all_pods: bool,
        sign: i64,
    ) {
        let existing = if all_pods {
            &node.pods
        } else {
            &node.pods_with_affinity
        };
        for existing in existing {
            self.score_existing(scores, pod, pod_ns_labels, existing, namespaces, node, sign);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn score_existing(
        &self,
        scores: &mut Counts,
        pod: &PodInfo,
        pod_ns_labels: Option<&BTreeMap<String, String>>,
        existing: &PodInfo,
        namespaces: &HashMap<String, BTreeMap<String, String>>,
        node: &NodeInfo,
        sign: i64,
    ) {
        for t in &pod.preferred_affinity {
            if term_matches(&t.term, existing, namespaces) {
                scores.add(&t.term.topology_key, node, sign * i64::from(t.weight));
            }
        }
        for t in &pod.preferred_anti_affinity {
            if term_matches(&t.term, existing, namespaces) {
                scores.add(&t.term.topology_key, node, -sign * i64::from(t.weight));
            }
        }
        if self.args.hard_pod_affinity_weight > 0 {
            for t in &existing.required_affinity {
                if t.matches(pod, pod_ns_labels) {
                    scores.add(
                        &t.topology_key,
                        node,
                        sign * self.args.hard_pod_affinity_weight,
                    );
                }
            }
        }
        if !self.args.ignore_preferred_terms_of_existing_pods {
            for t in &existing.preferred_affinity {
                if t.term.matches(pod, pod_ns_labels) {
                    scores.add(&t.term.topology_key, node, sign * i64::from(t.weight));
                }
            }
            for t in &existing.preferred_anti_affinity {
                if t.term.matches(pod, pod_ns_labels) {
                    scores.add(&t.term.topology_key, node, -sign * i64::from(t.weight));
                }
            }
        }
    }
}

/// The score of `node` under domain scores.
fn node_score(scores: &Counts, node: &NodeInfo) -> i64 {
    let labels = node.labels();
    scores
        .0
        .iter()
        .filter_map(|(key, values)| labels.get(&**key).and_then(|v| values.get(v.as_str())))
        .sum()
}

impl PreScore for InterPodAffinity {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        nodes: &[Arc<NodeInfo>],
    ) -> Result<PreScoreResult, Status> {
        if nodes.is_empty() {
            return Ok(PreScoreResult::Skip);
        }
        let has_constraints =
            !(pod.preferred_affinity.is_empty() && pod.preferred_anti_affinity.is_empty());
        if !has_constraints
            && (self.args.ignore_preferred_terms_of_existing_pods
                || snapshot.nodes_with_affinity().next().is_none())
        {
            return Ok(PreScoreResult::Skip);
        }
        let ns_labels = snapshot.namespace_labels(&pod.namespace);
        let namespaces = snapshot.namespaces();
        // Scores by domain over every node's pods (kept from the last pod with the
        // same signature: only the nodes that changed since are looked at again),
        // then each node being scored reads its domains'.
        let by_node = |scores: &Counts| -> Option<FxHashMap<Arc<str>, i64>> {
            if scores.is_empty() {
                return None;
            }
            Some(
                nodes
                    .iter()
                    .map(|n| (n.name_arc().clone(), node_score(scores, n)))
                    .collect(),
            )
        };
        let by_node = match score_signature(pod, ns_labels, has_constraints) {
            Some(sig) => self.score_memo.refresh(
                (sig, ByPtr(snapshot.layout().clone())),
                snapshot.nodes().iter(),
                snapshot.nodes().len(),
                Counts::default,
                |c, _, old, new| {
                    if let Some(old) = old {
                        self.score_node(c, pod, ns_labels, namespaces, old, has_constraints, -1);
                    }
                    self.score_node(c, pod, ns_labels, namespaces, new, has_constraints, 1);
                },
                by_node,
            ),
            None => {
                let mut scores = Counts::default();
                let with_pods: Box<dyn Iterator<Item = &Arc<NodeInfo>>> = if has_constraints {
                    Box::new(snapshot.nodes().iter())
                } else {
                    Box::new(snapshot.nodes_with_affinity())
                };
                for node in with_pods {
                    self.score_node(
                        &mut scores,
                        pod,
                        ns_labels,
                        namespaces,
                        node,
                        has_constraints,
                        1,
                    );
                }
                by_node(&scores)
            }
        };
        let Some(by_node) = by_node else {
            return Ok(PreScoreResult::Skip);
        };
        state.insert(ScoreState { by_node });
        Ok(PreScoreResult::Run)
    }
}

impl Score for InterPodAffinity {
    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        Ok(state
            .get::<ScoreState>()
            .and_then(|s| s.by_node.get(node.name()))
            .copied()
            .unwrap_or(0))
    }

    fn normalize_scores(
        &self,
        state: &CycleState,
        _: &PodInfo,
        scores: &mut [NodeScore],
    ) -> Result<(), Status> {
        if state.get::<ScoreState>().is_none() {
            return Ok(());
        }
        let max = scores.iter().map(|s| s.score).max().unwrap_or(0);
        let min = scores.iter().map(|s| s.score).min().unwrap_or(0);
        let diff = max - min;
        for s in scores.iter_mut() {
            s.score = if diff > 0 {
                MAX_NODE_SCORE * (s.score - min) / diff
            } else {
                0
            };
        }
        Ok(())
    }
}
