//! DefaultPreemption: when no node fits, find the node where evicting the fewest,
//! least important pods makes room, preferring victims whose PodDisruptionBudgets allow
//! the disruption; evict them and nominate the node for the pod.

use std::sync::Arc;

use async_trait::async_trait;
use keelson_core::client::{Api, Client, DeleteOptions, Patch};
use keelson_core::k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::cache::{PdbInfo, Snapshot};
use crate::framework::{
    Code, CycleState, NodeStatuses, Plugin, PostFilter, PostFilterContext, PostFilterResult,
    Profile, Status,
};
use crate::node_info::NodeInfo;
use crate::nominator::Nominator;
use crate::pod_info::PodInfo;

/// Reason for nodes where evicting pods cannot help.
pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
/// Reason for nodes where even evicting every lower-priority pod is not enough.
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// The victims on one node.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The node.
    pub node: String,
    /// The pods to evict, most important first.
    pub victims: Vec<Arc<PodInfo>>,
    /// How many of them their disruption budget does not allow to evict.
    pub pdb_violations: usize,
}

/// The DefaultPreemption plugin.
pub struct DefaultPreemption {
    client: Option<Client>,
    nominator: Arc<Nominator>,
    min_candidate_nodes_percentage: usize,
    min_candidate_nodes_absolute: usize,
    seed: std::sync::atomic::AtomicU64,
    /// Preemptors whose victims are being evicted, with their node.
    in_progress: Arc<parking_lot::Mutex<std::collections::HashMap<String, String>>>,
}

impl std::fmt::Debug for DefaultPreemption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultPreemption").finish_non_exhaustive()
    }
}

impl DefaultPreemption {
    /// Preemption that evicts through `client` (`None`: find candidates only, as in
    /// tests) and nominates through `nominator`.
    pub fn new(client: Option<Client>, nominator: Arc<Nominator>) -> DefaultPreemption {
        DefaultPreemption {
            client,
            nominator,
            min_candidate_nodes_percentage: 10,
            min_candidate_nodes_absolute: 100,
            seed: std::sync::atomic::AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            in_progress: Arc::default(),
        }
    }

    /// Sets `minCandidateNodesPercentage` and `minCandidateNodesAbsolute`.
    pub fn with_candidates(mut self, percentage: usize, absolute: usize) -> Self {
        self.min_candidate_nodes_percentage = percentage.min(100);
        self.min_candidate_nodes_absolute = absolute;
        self
    }

    fn random(&self, n: usize) -> usize {
        use std::sync::atomic::Ordering;
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        if n == 0 {
            0
        } else {
            usize::try_from(x % (n as u64)).unwrap_or(0)
        }
    }

    /// Finds the candidates and the best one, without evicting anything.
    ///
    /// # Errors
    /// `Unschedulable` with Kubernetes' summary when no node can be made to fit.
    pub fn find_candidate(
        &self,
        state: &CycleState,
        pod: &Arc<PodInfo>,
        snapshot: &Snapshot,
        statuses: &NodeStatuses,
        profile: &Profile,
    ) -> Result<Candidate, Status> {
        let all = snapshot.nodes().len();
        if pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.preemption_policy.as_deref())
            == Some("Never")
        {
            return Err(Status::unschedulable(
                "not eligible due to preemptionPolicy=Never.",
            ));
        }
        if let Some(nominated) = pod.nominated_node_name().and_then(|n| snapshot.get(n)) {
            if nominated
                .pods
                .iter()
                .any(|p| p.is_terminating() && p.priority < pod.priority)
            {
                return Err(Status::unschedulable(
                    "not eligible due to a terminating pod on the nominated node.",
                ));
            }
        }
        let mut reasons = NodeStatuses::default();
        let mut potential: Vec<&Arc<NodeInfo>> = Vec::new();
        for node in snapshot.nodes() {
            let unresolvable = statuses.pre_filter.as_ref().map_or_else(
                || {
                    statuses
                        .get(node.name())
                        .is_some_and(|s| s.code() == Code::UnschedulableAndUnresolvable)
                },
                |s| s.code() == Code::UnschedulableAndUnresolvable,
            );
            if unresolvable {
                reasons.insert(node.name_arc().clone(), Status::unresolvable(NOT_HELPFUL));
            } else {
                potential.push(node);
            }
        }
        let summary = |reasons: &NodeStatuses| {
            Status::unschedulable(format!(
                "0/{all} nodes are available: {}.",
                reasons.histogram()
            ))
        };
        if potential.is_empty() {
            return Err(summary(&reasons));
        }
        let wanted = (potential.len() * self.min_candidate_nodes_percentage / 100)
            .max(self.min_candidate_nodes_absolute)
            .min(potential.len());
        let offset = self.random(potential.len());
        let mut candidates: Vec<Candidate> = Vec::new();
        for i in 0..potential.len() {
            if candidates.len() >= wanted {
                break;
            }
            let node = potential[(offset + i) % potential.len()];
            match self.select_victims(state, pod, node, snapshot.pdbs(), profile)? {
                Some(c) => candidates.push(c),
                None => reasons.insert(node.name_arc().clone(), Status::unschedulable(NO_VICTIMS)),
            }
        }
        pick_one(candidates).ok_or_else(|| summary(&reasons))
    }

    /// The fewest, least important pods on `node` whose eviction lets `pod` fit, or
    /// `None` when evicting every lower-priority pod is not enough.
    fn select_victims(
        &self,
        state: &CycleState,
        pod: &Arc<PodInfo>,
        node: &NodeInfo,
        pdbs: &[PdbInfo],
        profile: &Profile,
    ) -> Result<Option<Candidate>, Status> {
        let mut lower: Vec<Arc<PodInfo>> = node
            .pods
            .iter()
            .filter(|p| p.priority < pod.priority)
            .cloned()
            .collect();
        if lower.is_empty() {
            return Ok(None);
        }
        let mut node = node.clone();
        let mut state = state.clone();
        for p in &lower {
            node.remove_pod(&p.uid);
            profile.run_remove_pod(&mut state, pod, p, &node)?;
        }
        let nominated = self.nominator.pods_on(node.name());
        let fits = |state: &CycleState, node: &NodeInfo| {
            profile
                .run_filters_with_nominated(state, pod, node, &nominated)
                .is_ok()
        };
        if !fits(&state, &node) {
            return Ok(None);
        }
        lower.sort_by(|a, b| more_important(a, b));
        let (violating, non_violating) = split_by_pdb(&lower, pdbs);
        let mut victims = Vec::new();
        let mut pdb_violations = 0;
        for (group, is_violating) in [(violating, true), (non_violating, false)] {
            for p in group {
                node.add_pod(p.clone());
                profile.run_add_pod(&mut state, pod, &p, &node)?;
                if !fits(&state, &node) {
                    node.remove_pod(&p.uid);
                    profile.run_remove_pod(&mut state, pod, &p, &node)?;
                    if is_violating {
                        pdb_violations += 1;
                    }
                    victims.push(p);
                }
            }
        }
        victims.sort_by(|a, b| more_important(a, b));
        Ok(Some(Candidate {
            node: node.name().to_owned(),
            victims,
            pdb_violations,
        }))
    }
}

/// Orders pods most important first: higher priority, then the one running longer.
fn more_important(a: &PodInfo, b: &PodInfo) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| a.start_time().cmp(&b.start_time()))
}

/// Splits pods (most important first) into those whose eviction would exceed a
/// disruption budget and the others.
fn split_by_pdb(pods: &[Arc<PodInfo>], pdbs: &[PdbInfo]) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let mut allowed: Vec<i32> = pdbs.iter().map(|p| p.disruptions_allowed).collect();
    let (mut violating, mut ok) = (Vec::new(), Vec::new());
    for p in pods {
        let mut violates = false;
        for (i, pdb) in pdbs.iter().enumerate() {
            if pdb.namespace != p.namespace
                || pdb.selector.is_empty()
                || !pdb.selector.matches(&p.labels)
                || pdb.disrupted_pods.contains(&p.name)
            {
                continue;
            }
            if let Some(a) = allowed.get_mut(i) {
                *a -= 1;
                if *a < 0 {
                    violates = true;
                }
            }
        }
        if violates {
            violating.push(p.clone());
        } else {
            ok.push(p.clone());
        }
    }
    (violating, ok)
}

/// Kubernetes' choice among candidates: fewest budget violations, then the lowest
/// highest-priority victim, the lowest sum of priorities, the fewest victims, the
/// latest start among the most important victims, then the first.
fn pick_one(mut candidates: Vec<Candidate>) -> Option<Candidate> {
    if candidates.len() <= 1 {
        return candidates.pop();
    }
    let key = |c: &Candidate| {
        let highest = c.victims.first().map_or(i32::MIN, |v| v.priority);
        let sum: i64 = c
            .victims
            .iter()
            .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
            .sum();
        let earliest_of_highest = c
            .victims
            .iter()
            .filter(|v| v.priority == highest)
            .filter_map(|v| v.start_time().copied())
            .min();
        (
            c.pdb_violations,
            highest,
            sum,
            c.victims.len(),
            std::cmp::Reverse(earliest_of_highest),
        )
    };
    let mut best = 0;
    for i in 1..candidates.len() {
        if key(&candidates[i]) < key(&candidates[best]) {
            best = i;
        }
    }
    Some(candidates.swap_remove(best))
}

impl Plugin for DefaultPreemption {
    fn name(&self) -> &str {
        "DefaultPreemption"
    }
    fn as_post_filter(self: Arc<Self>) -> Option<Arc<dyn PostFilter>> {
        Some(self)
    }
}

#[async_trait]
impl PostFilter for DefaultPreemption {
    async fn post_filter(&self, cx: PostFilterContext<'_>) -> Result<PostFilterResult, Status> {
        // A preemption for this pod still evicting: wait for it (the evictions' events
        // bring the pod back) rather than choosing victims again.
        if let Some(node) = self.in_progress.lock().get(&cx.pod.uid) {
            return Ok(PostFilterResult {
                nominated_node: Some(node.clone()),
            });
        }
        let candidate =
            self.find_candidate(cx.state, cx.pod, cx.snapshot, cx.statuses, cx.profile)?;
        let Some(client) = self.client.clone() else {
            return Ok(PostFilterResult {
                nominated_node: Some(candidate.node),
            });
        };
        // As Kubernetes' asynchronous preemption: the evictions run beside the
        // scheduling loop, all at once; the pod is nominated now.
        let preemptor = cx.pod.clone();
        let node = candidate.node.clone();
        self.in_progress
            .lock()
            .insert(preemptor.uid.clone(), node.clone());
        let in_progress = self.in_progress.clone();
        let nominator = self.nominator.clone();
        let victims = candidate.victims;
        tokio::spawn(async move {
            let deletes = victims.iter().map(|victim| {
                let pods: Api<Pod> = Api::namespaced(client.clone(), &victim.namespace);
                let options = DeleteOptions {
                    uid: Some(victim.uid.clone()),
                    ..DeleteOptions::default()
                };
                async move {
                    match pods.delete(&victim.name, &options).await {
                        Ok(_) => {
                            tracing::debug!(victim = %victim.key, "preempted");
                        }
                        Err(e) if e.is_not_found() || e.is_conflict() => {}
                        Err(e) => {
                            tracing::warn!(victim = %victim.key, error = %e, "failed to preempt");
                        }
                    }
                }
            });
            futures::future::join_all(deletes).await;
            // Lower-priority pods nominated to the node lose their nomination.
            for p in nominator.pods_on(&node) {
                if p.priority < preemptor.priority {
                    nominator.remove(&p.uid);
                    let pods: Api<Pod> = Api::namespaced(client.clone(), &p.namespace);
                    let patch = Patch::Merge(json!({"status": {"nominatedNodeName": null}}));
                    if let Err(e) = pods.patch_status(&p.name, &patch).await {
                        tracing::debug!(pod = %p.key, error = %e, "failed to clear a nomination");
                    }
                }
            }
            in_progress.lock().remove(&preemptor.uid);
        });
        Ok(PostFilterResult {
            nominated_node: Some(candidate.node),
        })
    }
}
