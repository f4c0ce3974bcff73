//! The scheduling framework: one trait per extension point, the per-cycle state, the
//! status codes, and [`Profile`], which runs a set of plugins for one `schedulerName`.

mod cycle_state;
mod events;
mod profile;
mod status;
mod waiting;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use cycle_state::{CycleState, StateData};
pub use events::{ActionType, ClusterEvent, EventResource};
pub use profile::{ExtensionPoint, NodeStatuses, Profile, ProfileBuilder};
pub use status::{Code, Status};
pub use waiting::{WaitingPod, WaitingPods};

use crate::cache::Snapshot;
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;
use crate::queue::QueuedPodInfo;

/// What plugins get from the scheduler when they are built: the client, the pods
/// Permit plugins hold, and the nominations preemption made.
#[derive(Clone, Debug)]
pub struct Handle {
    /// The cluster.
    pub client: keelson_core::client::Client,
    /// Pods held by Permit plugins.
    pub waiting_pods: WaitingPods,
    /// Pods nominated to nodes.
    pub nominator: Arc<crate::nominator::Nominator>,
}

/// The highest score a Score plugin gives after normalizing.
pub const MAX_NODE_SCORE: i64 = 100;

/// A plugin: a name, the cluster events after which a pod it rejected may fit, and the
/// extension points it implements. Implement the extension traits you need and return
/// `Some(self)` from the matching `as_*` method:
///
/// ```
/// use std::sync::Arc;
/// use keelson_scheduler::{CycleState, NodeInfo, Plugin, PodInfo, Score, Status};
///
/// /// Prefers nodes labelled `tier=fast`.
/// struct FastNodes;
///
/// impl Plugin for FastNodes {
///     fn name(&self) -> &str { "FastNodes" }
///     fn as_score(self: Arc<Self>) -> Option<Arc<dyn Score>> { Some(self) }
/// }
///
/// impl Score for FastNodes {
///     fn score(&self, _: &CycleState, _: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
///         Ok(if node.labels().get("tier").map(String::as_str) == Some("fast") { 100 } else { 0 })
///     }
/// }
/// ```
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's name, as configuration refers to it.
    fn name(&self) -> &str;

    /// Events that may make a pod this plugin rejected fit; the queue moves such pods
    /// back only on these (and on its periodic flush). Default: none.
    fn events_to_register(&self) -> Vec<ClusterEvent> {
        Vec::new()
    }

    /// The QueueSort extension, if implemented.
    fn as_queue_sort(self: Arc<Self>) -> Option<Arc<dyn QueueSort>> {
        None
    }
    /// The PreFilter extension, if implemented.
    fn as_pre_filter(self: Arc<Self>) -> Option<Arc<dyn PreFilter>> {
        None
    }
    /// The Filter extension, if implemented.
    fn as_filter(self: Arc<Self>) -> Option<Arc<dyn Filter>> {
        None
    }
    /// The PostFilter extension, if implemented.
    fn as_post_filter(self: Arc<Self>) -> Option<Arc<dyn PostFilter>> {
        None
    }
    /// The PreScore extension, if implemented.
    fn as_pre_score(self: Arc<Self>) -> Option<Arc<dyn PreScore>> {
        None
    }
    /// The Score extension, if implemented.
    fn as_score(self: Arc<Self>) -> Option<Arc<dyn Score>> {
        None
    }
    /// The Reserve extension, if implemented.
    fn as_reserve(self: Arc<Self>) -> Option<Arc<dyn Reserve>> {
        None
    }
    /// The Permit extension, if implemented.
    fn as_permit(self: Arc<Self>) -> Option<Arc<dyn Permit>> {
        None
    }
    /// The PreBind extension, if implemented.
    fn as_pre_bind(self: Arc<Self>) -> Option<Arc<dyn PreBind>> {
        None
    }
    /// The Bind extension, if implemented.
    fn as_bind(self: Arc<Self>) -> Option<Arc<dyn Bind>> {
        None
    }
    /// The PostBind extension, if implemented.
    fn as_post_bind(self: Arc<Self>) -> Option<Arc<dyn PostBind>> {
        None
    }
}

/// Orders the active queue. Every profile of one scheduler uses the same one.
pub trait QueueSort: Send + Sync {
    /// Whether `a` is scheduled before `b`.
    fn less(&self, a: &QueuedPodInfo, b: &QueuedPodInfo) -> bool;
}

/// What a PreFilter plugin says about the nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreFilterResult {
    /// Every node may fit; run this plugin's Filter on each.
    AllNodes,
    /// Only these nodes may fit (the framework intersects the sets of every plugin).
    Nodes(BTreeSet<String>),
    /// The plugin has nothing to check for this pod: its Filter is skipped.
    Skip,
}

/// Runs once per cycle before filtering: precomputes state, may narrow the node set,
/// and may reject the pod outright.
pub trait PreFilter: Send + Sync {
    /// Prepares the cycle.
    ///
    /// # Errors
    /// A rejecting status makes the pod unschedulable on every node.
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> Result<PreFilterResult, Status>;

    /// Updates the precomputed state as if `added` ran on `node` (preemption and
    /// nominated pods use this). Default: nothing to update.
    ///
    /// # Errors
    /// An internal error.
    fn add_pod(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _added: &Arc<PodInfo>,
        _node: &NodeInfo,
    ) -> Result<(), Status> {
        Ok(())
    }

    /// Updates the precomputed state as if `removed` left `node`. Default: nothing.
    ///
    /// # Errors
    /// An internal error.
    fn remove_pod(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _removed: &Arc<PodInfo>,
        _node: &NodeInfo,
    ) -> Result<(), Status> {
        Ok(())
    }
}

/// Whether a pod fits a node. Called for many nodes, possibly from several threads at
/// once; must not block.
pub trait Filter: Send + Sync {
    /// `Ok` when the pod fits.
    ///
    /// # Errors
    /// Why it does not fit (`Unschedulable` or `UnschedulableAndUnresolvable`), or an
    /// internal error.
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status>;
}

/// What the scheduler has at hand when no node fits.
pub struct PostFilterContext<'a> {
    /// The cycle's state, after PreFilter.
    pub state: &'a CycleState,
    /// The pod.
    pub pod: &'a Arc<PodInfo>,
    /// The nodes as this cycle saw them.
    pub snapshot: &'a Snapshot,
    /// Why each node was rejected.
    pub statuses: &'a NodeStatuses,
    /// The profile (to run its filters on changed nodes).
    pub profile: &'a Profile,
}

/// What a PostFilter plugin achieved.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PostFilterResult {
    /// The node the pod should go to once room is made there.
    pub nominated_node: Option<String>,
}

/// Runs when no node fits: makes room (preemption), or explains why it cannot.
#[async_trait]
pub trait PostFilter: Send + Sync {
    /// Tries to make the pod schedulable.
    ///
    /// # Errors
    /// `Unschedulable` with the reason when it cannot help; an internal error.
    async fn post_filter(&self, cx: PostFilterContext<'_>) -> Result<PostFilterResult, Status>;
}

/// What a PreScore plugin decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreScoreResult {
    /// Score the nodes.
    Run,
    /// Nothing to score for this pod: this plugin's Score is skipped.
    Skip,
}

/// Runs once per cycle before scoring, with the cycle's snapshot and the nodes that fit.
pub trait PreScore: Send + Sync {
    /// Prepares scoring.
    ///
    /// # Errors
    /// An internal error fails the cycle.
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        nodes: &[Arc<NodeInfo>],
    ) -> Result<PreScoreResult, Status>;
}

/// A node's score from one plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeScore {
    /// The node, as an index into the nodes being scored.
    pub node: usize,
    /// The score.
    pub score: i64,
}

/// Ranks the nodes that fit. The framework multiplies each plugin's normalized score
/// (0–[`MAX_NODE_SCORE`]) by the plugin's weight and sums.
pub trait Score: Send + Sync {
    /// The raw score of one node.
    ///
    /// # Errors
    /// An internal error fails the cycle.
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status>;

    /// Brings the raw scores into 0–[`MAX_NODE_SCORE`]. Default: they already are.
    ///
    /// # Errors
    /// An internal error fails the cycle.
    fn normalize_scores(
        &self,
        _state: &CycleState,
        _pod: &PodInfo,
        _scores: &mut [NodeScore],
    ) -> Result<(), Status> {
        Ok(())
    }
}

/// Holds (reserves) resources of its own for a pod once its node is chosen.
pub trait Reserve: Send + Sync {
    /// Reserves.
    ///
    /// # Errors
    /// Failing unreserves every Reserve plugin and fails the cycle.
    fn reserve(&self, state: &mut CycleState, pod: &PodInfo, node: &str) -> Result<(), Status>;

    /// Undoes `reserve`. May be called without `reserve` having been called, and more
    /// than once: must be idempotent.
    fn unreserve(&self, state: &CycleState, pod: &PodInfo, node: &str);
}

/// What a Permit plugin decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermitResult {
    /// Go ahead.
    Allow,
    /// Hold the pod until the plugin (or anyone, through [`WaitingPods`]) allows or
    /// rejects it, at most this long; a timeout rejects it.
    Wait(Duration),
}

/// The last gate before binding: allow, reject, or hold the pod (gang scheduling,
/// quotas).
pub trait Permit: Send + Sync {
    /// Decides.
    ///
    /// # Errors
    /// A rejection (`Unschedulable`), or an internal error.
    fn permit(&self, state: &CycleState, pod: &PodInfo, node: &str)
        -> Result<PermitResult, Status>;
}

/// Work before binding (volumes, network), in the binding cycle.
#[async_trait]
pub trait PreBind: Send + Sync {
    /// Prepares the binding.
    ///
    /// # Errors
    /// Failing unreserves and requeues the pod.
    async fn pre_bind(&self, state: &CycleState, pod: &PodInfo, node: &str) -> Result<(), Status>;
}

/// What a Bind plugin did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindResult {
    /// The pod is bound.
    Bound,
    /// Not this plugin's pod: the next Bind plugin binds it.
    Skip,
}

/// Binds the pod to the node. The first plugin that does not skip does it.
#[async_trait]
pub trait Bind: Send + Sync {
    /// Binds.
    ///
    /// # Errors
    /// Failing unreserves and requeues the pod.
    async fn bind(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: &str,
    ) -> Result<BindResult, Status>;
}

/// Informational, after a successful bind.
#[async_trait]
pub trait PostBind: Send + Sync {
    /// Notes the binding.
    async fn post_bind(&self, state: &CycleState, pod: &PodInfo, node: &str);
}
