//! A profile: the plugins one `schedulerName` runs, and the code that runs them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Bind, BindResult, CycleState, Filter, NodeScore, Permit, PermitResult, Plugin, PostBind,
    PostFilter, PostFilterContext, PostFilterResult, PreBind, PreFilter, PreFilterResult, PreScore,
    PreScoreResult, QueueSort, Reserve, Score, Status, MAX_NODE_SCORE,
};
use crate::cache::Snapshot;
use crate::error::ConfigError;
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;

/// Why each node was found unfit in one cycle, for the pod's event and condition.
#[derive(Clone, Debug, Default)]
pub struct NodeStatuses {
    /// Each rejected node's status.
    pub by_node: HashMap<Arc<str>, Status>,
    /// A PreFilter rejection that applies to every node.
    pub pre_filter: Option<Status>,
    /// The plugins that rejected the pod (the queue waits for their events).
    pub unschedulable_plugins: BTreeSet<String>,
}

impl NodeStatuses {
    /// Records a node's rejection.
    pub fn insert(&mut self, node: impl Into<Arc<str>>, status: Status) {
        let plugin = status.plugin();
        if !plugin.is_empty() && !self.unschedulable_plugins.contains(plugin) {
            self.unschedulable_plugins.insert(plugin.to_owned());
        }
        self.by_node.insert(node.into(), status);
    }

    /// The status of one node, if it was rejected.
    pub fn get(&self, node: &str) -> Option<&Status> {
        self.by_node.get(node)
    }

    /// A histogram of reasons: `"3 Insufficient cpu, 2 node(s) were unschedulable"`,
    /// sorted as Kubernetes sorts it.
    pub fn histogram(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for status in self.by_node.values() {
            for reason in status.reasons() {
                *counts.entry(&**reason).or_default() += 1;
            }
        }
        let mut parts: Vec<String> = counts
            .into_iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        parts.sort();
        parts.join(", ")
    }
}

type Named<T> = (Arc<str>, Arc<T>);
/// A plugin, and the index of its other half (Filter for a PreFilter, Score for a
/// PreScore) whose skip bit it sets.
type Paired<T> = (Arc<str>, Arc<T>, Option<usize>);

/// An extension point, for enabling or disabling a plugin at one point only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExtensionPoint {
    /// QueueSort.
    QueueSort,
    /// PreFilter.
    PreFilter,
    /// Filter.
    Filter,
    /// PostFilter.
    PostFilter,
    /// PreScore.
    PreScore,
    /// Score.
    Score,
    /// Reserve.
    Reserve,
    /// Permit.
    Permit,
    /// PreBind.
    PreBind,
    /// Bind.
    Bind,
    /// PostBind.
    PostBind,
}

/// The plugins of one scheduler profile, by extension point, in order, and the code
/// that runs them. Built with [`ProfileBuilder`].
pub struct Profile {
    scheduler_name: String,
    plugins: Vec<Arc<dyn Plugin>>,
    queue_sort: Option<Named<dyn QueueSort>>,
    pre_filter: Vec<Paired<dyn PreFilter>>,
    filter: Vec<Named<dyn Filter>>,
    post_filter: Vec<Named<dyn PostFilter>>,
    pre_score: Vec<Paired<dyn PreScore>>,
    score: Vec<(Arc<str>, Arc<dyn Score>, i64)>,
    reserve: Vec<Named<dyn Reserve>>,
    permit: Vec<Named<dyn Permit>>,
    pre_bind: Vec<Named<dyn PreBind>>,
    bind: Vec<Named<dyn Bind>>,
    post_bind: Vec<Named<dyn PostBind>>,
    percentage_of_nodes_to_score: Option<u32>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("scheduler_name", &self.scheduler_name)
            .field(
                "plugins",
                &self.plugins.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`Profile`]: the plugins in the order their extension points run them,
/// Score weights, and `percentageOfNodesToScore`.
pub struct ProfileBuilder {
    scheduler_name: String,
    plugins: Vec<Arc<dyn Plugin>>,
    only: HashMap<String, BTreeSet<ExtensionPoint>>,
    disabled: BTreeSet<(String, ExtensionPoint)>,
    weights: HashMap<String, i64>,
    percentage_of_nodes_to_score: Option<u32>,
}

impl ProfileBuilder {
    /// A profile for pods with `spec.schedulerName: scheduler_name`.
    pub fn new(scheduler_name: impl Into<String>) -> ProfileBuilder {
        ProfileBuilder {
            scheduler_name: scheduler_name.into(),
            plugins: Vec::new(),
            only: HashMap::new(),
            disabled: BTreeSet::new(),
            weights: HashMap::new(),
            percentage_of_nodes_to_score: None,
        }
    }

    /// Adds a plugin at these extension points only (or, if it is already in, enables
    /// it at these points as well).
    pub fn plugin_at(
        mut self,
        plugin: Arc<dyn Plugin>,
        points: &[ExtensionPoint],
    ) -> ProfileBuilder {
        let name = plugin.name().to_owned();
        for p in points {
            self.disabled.remove(&(name.clone(), *p));
        }
        if self.plugins.iter().any(|p| p.name() == name) {
            if let Some(only) = self.only.get_mut(&name) {
                only.extend(points.iter().copied());
            }
            return self;
        }
        self.only.insert(name, points.iter().copied().collect());
        self.plugins.push(plugin);
        self
    }

    /// Disables a plugin at one extension point (it keeps the others).
    pub fn disable_at(mut self, name: &str, point: ExtensionPoint) -> ProfileBuilder {
        self.disabled.insert((name.to_owned(), point));
        self
    }

    /// Whether a plugin of this name is in.
    pub fn has(&self, name: &str) -> bool {
        self.plugins.iter().any(|p| p.name() == name)
    }

    /// Adds a plugin at every extension point it implements (after those added
    /// before). A plugin of the same name replaces the earlier one.
    pub fn plugin(mut self, plugin: Arc<dyn Plugin>) -> ProfileBuilder {
        self.plugins.retain(|p| p.name() != plugin.name());
        self.only.remove(plugin.name());
        self.plugins.push(plugin);
        self
    }

    /// Removes the plugin of this name.
    pub fn without(mut self, name: &str) -> ProfileBuilder {
        self.plugins.retain(|p| p.name() != name);
        self.only.remove(name);
        self
    }

    /// The weight of a Score plugin (default 1).
    pub fn weight(mut self, plugin: &str, weight: i64) -> ProfileBuilder {
        self.weights.insert(plugin.to_owned(), weight);
        self
    }

    /// `percentageOfNodesToScore` for this profile (`None`: the scheduler's, else
    /// Kubernetes' adaptive default).
    pub fn percentage_of_nodes_to_score(mut self, percentage: Option<u32>) -> ProfileBuilder {
        self.percentage_of_nodes_to_score = percentage;
        self
    }

    /// The names of the plugins so far.
    pub fn plugin_names(&self) -> Vec<String> {
        self.plugins.iter().map(|p| p.name().to_owned()).collect()
    }

    /// Builds the profile.
    ///
    /// # Errors
    /// [`ConfigError`] when there is no QueueSort or no Bind plugin, more than one
    /// QueueSort, more than 64 plugins at one point, or a weight out of 1–100.
    pub fn build(self) -> Result<Profile, ConfigError> {
        let invalid = |msg: String| ConfigError::Invalid {
            profile: self.scheduler_name.clone(),
            message: msg,
        };
        let mut queue_sort = self.at(ExtensionPoint::QueueSort, Plugin::as_queue_sort);
        if queue_sort.len() > 1 {
            return Err(invalid("only one QueueSort plugin may be enabled".into()));
        }
        let filter = self.at(ExtensionPoint::Filter, Plugin::as_filter);
        let mut score = Vec::new();
        for (name, x) in self.at(ExtensionPoint::Score, Plugin::as_score) {
            let weight = self.weights.get(&*name).copied().unwrap_or(1);
            if !(1..=100).contains(&weight) {
                return Err(invalid(format!(
                    "the weight of score plugin {name} must be in 1-100, not {weight}"
                )));
            }
            score.push((name, x, weight));
        }
        // A PreFilter (PreScore) plugin that returns Skip skips its own Filter (Score).
        let pre_filter = self
            .at(ExtensionPoint::PreFilter, Plugin::as_pre_filter)
            .into_iter()
            .map(|(name, x)| {
                let skip = filter.iter().position(|(n, _)| *n == name);
                (name, x, skip)
            })
            .collect();
        let pre_score = self
            .at(ExtensionPoint::PreScore, Plugin::as_pre_score)
            .into_iter()
            .map(|(name, x)| {
                let skip = score.iter().position(|(n, _, _)| *n == name);
                (name, x, skip)
            })
            .collect();
        if filter.len() > 64 || score.len() > 64 {
            return Err(invalid("at most 64 Filter and 64 Score plugins".into()));
        }
        let Some(queue_sort) = queue_sort.pop() else {
            return Err(invalid("a QueueSort plugin must be enabled".into()));
        };
        let bind = self.at(ExtensionPoint::Bind, Plugin::as_bind);
        if bind.is_empty() {
            return Err(invalid("a Bind plugin must be enabled".into()));
        }
        Ok(Profile {
            queue_sort: Some(queue_sort),
            pre_filter,
            filter,
            post_filter: self.at(ExtensionPoint::PostFilter, Plugin::as_post_filter),
            pre_score,
            score,
            reserve: self.at(ExtensionPoint::Reserve, Plugin::as_reserve),
            permit: self.at(ExtensionPoint::Permit, Plugin::as_permit),
            pre_bind: self.at(ExtensionPoint::PreBind, Plugin::as_pre_bind),
            bind,
            post_bind: self.at(ExtensionPoint::PostBind, Plugin::as_post_bind),
            scheduler_name: self.scheduler_name,
            plugins: self.plugins,
            percentage_of_nodes_to_score: self.percentage_of_nodes_to_score,
        })
    }

    /// The plugins enabled at one extension point, in order, as that point's trait
    /// (`cast` is the plugin's `as_*` method for it).
    fn at<T: ?Sized>(
        &self,
        point: ExtensionPoint,
        cast: fn(Arc<dyn Plugin>) -> Option<Arc<T>>,
    ) -> Vec<Named<T>> {
        self.plugins
            .iter()
            .filter(|p| {
                let name = p.name();
                !self.disabled.contains(&(name.to_owned(), point))
                    && self.only.get(name).is_none_or(|only| only.contains(&point))
            })
            .filter_map(|p| Some((Arc::from(p.name()), cast(p.clone())?)))
            .collect()
    }
}

impl Profile {
    /// The `schedulerName` the profile serves.
    pub fn scheduler_name(&self) -> &str {
        &self.scheduler_name
    }

    /// The plugins.
    pub fn plugins(&self) -> &[Arc<dyn Plugin>] {
        &self.plugins
    }

    /// The QueueSort plugin.
    pub fn queue_sort(&self) -> Option<&Arc<dyn QueueSort>> {
        self.queue_sort.as_ref().map(|(_, q)| q)
    }

    pub(crate) fn queue_sort_name(&self) -> &str {
        self.queue_sort.as_ref().map_or("", |(n, _)| &**n)
    }

    /// The profile's `percentageOfNodesToScore`, if it sets one.
    pub fn percentage_of_nodes_to_score(&self) -> Option<u32> {
        self.percentage_of_nodes_to_score
    }

    /// Whether a PostFilter plugin is enabled.
    pub fn has_post_filter(&self) -> bool {
        !self.post_filter.is_empty()
    }

    /// Runs the PreFilter plugins: `Ok(None)` for every node, `Ok(Some(names))` when
    /// plugins narrowed the set.
    ///
    /// # Errors
    /// The first rejecting status.
    pub fn run_pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> Result<Option<BTreeSet<String>>, Status> {
        let mut narrowed: Option<BTreeSet<String>> = None;
        for (name, plugin, filter_index) in &self.pre_filter {
            match plugin.pre_filter(state, pod, snapshot) {
                Ok(PreFilterResult::AllNodes) => {}
                Ok(PreFilterResult::Skip) => {
                    if let Some(i) = filter_index {
                        state.skip_filter |= 1 << i;
                    }
                }
                Ok(PreFilterResult::Nodes(set)) => {
                    narrowed = Some(match narrowed {
                        None => set,
                        Some(prev) => prev.intersection(&set).cloned().collect(),
                    });
                    if narrowed.as_ref().is_some_and(BTreeSet::is_empty) {
                        return Err(Status::unresolvable(format!(
                            "node(s) didn't satisfy plugin(s) [{name}] simultaneously"
                        ))
                        .with_plugin_arc(name));
                    }
                }
                Err(status) if status.code() == super::Code::Skip => {
                    if let Some(i) = filter_index {
                        state.skip_filter |= 1 << i;
                    }
                }
                Err(status) => return Err(status.with_plugin_arc(name)),
            }
        }
        Ok(narrowed)
    }

    /// Runs the Filter plugins on one node, stopping at the first rejection.
    ///
    /// # Errors
    /// The rejecting status, naming its plugin.
    pub fn run_filters(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
    ) -> Result<(), Status> {
        for (i, (name, plugin)) in self.filter.iter().enumerate() {
            if state.skip_filter & (1 << i) != 0 {
                continue;
            }
            if let Err(status) = plugin.filter(state, pod, node) {
                if status.is_success() {
                    continue;
                }
                return Err(status.with_plugin_arc(name));
            }
        }
        Ok(())
    }

    /// Runs the Filter plugins as if `added` (nominated pods of equal or higher
    /// priority) ran on the node too, then without them: the pod fits only if both pass,
    /// as in Kubernetes.
    ///
    /// # Errors
    /// The rejecting status.
    pub fn run_filters_with_nominated(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        nominated: &[Arc<PodInfo>],
    ) -> Result<(), Status> {
        let relevant: Vec<&Arc<PodInfo>> = nominated
            .iter()
            .filter(|p| p.uid != pod.uid && p.priority >= pod.priority)
            .collect();
        if !relevant.is_empty() {
            let mut node = node.clone();
            let mut state = state.clone();
            for p in relevant {
                node.add_pod(p.clone());
                self.run_add_pod(&mut state, pod, p, &node)?;
            }
            self.run_filters(&state, pod, &node)?;
        }
        self.run_filters(state, pod, node)
    }

    /// Runs every PreFilter plugin's `add_pod`.
    ///
    /// # Errors
    /// The first error.
    pub fn run_add_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        added: &Arc<PodInfo>,
        node: &NodeInfo,
    ) -> Result<(), Status> {
        for (name, plugin, filter_index) in &self.pre_filter {
            if filter_index.is_some_and(|i| state.skip_filter & (1 << i) != 0) {
                continue;
            }
            plugin
                .add_pod(state, pod, added, node)
                .map_err(|s| s.with_plugin_arc(name))?;
        }
        Ok(())
    }

    /// Runs every PreFilter plugin's `remove_pod`.
    ///
    /// # Errors
    /// The first error.
    pub fn run_remove_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        removed: &Arc<PodInfo>,
        node: &NodeInfo,
    ) -> Result<(), Status> {
        for (name, plugin, filter_index) in &self.pre_filter {
            if filter_index.is_some_and(|i| state.skip_filter & (1 << i) != 0) {
                continue;
            }
            plugin
                .remove_pod(state, pod, removed, node)
                .map_err(|s| s.with_plugin_arc(name))?;
        }
        Ok(())
    }

    /// Runs the PostFilter plugins until one finds a way.
    ///
    /// # Errors
    /// The last plugin's status when none could help.
    pub async fn run_post_filter(
        &self,
        state: &CycleState,
        pod: &Arc<PodInfo>,
        snapshot: &Snapshot,
        statuses: &NodeStatuses,
    ) -> Result<PostFilterResult, Status> {
        let mut last = Status::unschedulable("");
        for (name, plugin) in &self.post_filter {
            let cx = PostFilterContext {
                state,
                pod,
                snapshot,
                statuses,
                profile: self,
            };
            match plugin.post_filter(cx).await {
                Ok(r) => return Ok(r),
                Err(s) if s.code() == super::Code::Error => return Err(s.with_plugin_arc(name)),
                Err(s) => last = s.with_plugin_arc(name),
            }
        }
        Err(last)
    }

    /// Runs PreScore, Score, NormalizeScore and the weights: each node's total.
    ///
    /// # Errors
    /// The first plugin error.
    pub fn run_scoring(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        nodes: &[Arc<NodeInfo>],
    ) -> Result<Vec<i64>, Status> {
        for (name, plugin, score_index) in &self.pre_score {
            match plugin.pre_score(state, pod, snapshot, nodes) {
                Ok(PreScoreResult::Run) => {}
                Ok(PreScoreResult::Skip) => {
                    if let Some(i) = score_index {
                        state.skip_score |= 1 << i;
                    }
                }
                Err(s) => return Err(s.with_plugin_arc(name)),
            }
        }
        let mut totals = vec![0i64; nodes.len()];
        let mut scores: Vec<NodeScore> = Vec::with_capacity(nodes.len());
        for (i, (name, plugin, weight)) in self.score.iter().enumerate() {
            if state.skip_score & (1 << i) != 0 {
                continue;
            }
            scores.clear();
            for (n, node) in nodes.iter().enumerate() {
                let score = plugin
                    .score(state, pod, node)
                    .map_err(|s| s.with_plugin_arc(name))?;
                scores.push(NodeScore { node: n, score });
            }
            plugin
                .normalize_scores(state, pod, &mut scores)
                .map_err(|s| s.with_plugin_arc(name))?;
            for s in &scores {
                if !(0..=MAX_NODE_SCORE).contains(&s.score) {
                    return Err(Status::error(format!(
                        "plugin {name} returns an invalid score {}, it should be in the range [0, {MAX_NODE_SCORE}] after normalizing",
                        s.score
                    ))
                    .with_plugin_arc(name));
                }
                if let Some(t) = totals.get_mut(s.node) {
                    *t += s.score * weight;
                }
            }
        }
        Ok(totals)
    }

    /// Runs the Reserve plugins; on failure unreserves them all (in reverse order).
    ///
    /// # Errors
    /// The failing status.
    pub fn run_reserve(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        node: &str,
    ) -> Result<(), Status> {
        for (name, plugin) in &self.reserve {
            if let Err(s) = plugin.reserve(state, pod, node) {
                self.run_unreserve(state, pod, node);
                return Err(s.with_plugin_arc(name));
            }
        }
        Ok(())
    }

    /// Runs every Reserve plugin's `unreserve`, in reverse order.
    pub fn run_unreserve(&self, state: &CycleState, pod: &PodInfo, node: &str) {
        for (_, plugin) in self.reserve.iter().rev() {
            plugin.unreserve(state, pod, node);
        }
    }

    /// Runs the Permit plugins: the plugins that asked to wait, with their deadlines.
    ///
    /// # Errors
    /// The first rejection.
    pub fn run_permit(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: &str,
    ) -> Result<BTreeMap<String, Instant>, Status> {
        let mut waiting = BTreeMap::new();
        for (name, plugin) in &self.permit {
            match plugin.permit(state, pod, node) {
                Ok(PermitResult::Allow) => {}
                Ok(PermitResult::Wait(timeout)) => {
                    let timeout = timeout.min(Duration::from_secs(15 * 60));
                    waiting.insert(name.to_string(), Instant::now() + timeout);
                }
                Err(s) => return Err(s.with_plugin_arc(name)),
            }
        }
        Ok(waiting)
    }

    /// Runs the PreBind plugins.
    ///
    /// # Errors
    /// The first failure.
    pub async fn run_pre_bind(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: &str,
    ) -> Result<(), Status> {
        for (name, plugin) in &self.pre_bind {
            plugin
                .pre_bind(state, pod, node)
                .await
                .map_err(|s| s.with_plugin_arc(name))?;
        }
        Ok(())
    }

    /// Runs the Bind plugins until one binds.
    ///
    /// # Errors
    /// A failure, or every plugin skipping.
    pub async fn run_bind(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: &str,
    ) -> Result<(), Status> {
        for (name, plugin) in &self.bind {
            match plugin.bind(state, pod, node).await {
                Ok(BindResult::Bound) => return Ok(()),
                Ok(BindResult::Skip) => {}
                Err(s) => return Err(s.with_plugin_arc(name)),
            }
        }
        Err(Status::error("every Bind plugin skipped the pod"))
    }

    /// Runs the PostBind plugins.
    pub async fn run_post_bind(&self, state: &CycleState, pod: &PodInfo, node: &str) {
        for (_, plugin) in &self.post_bind {
            plugin.post_bind(state, pod, node).await;
        }
    }
}
