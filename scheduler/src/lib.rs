//! keelson-scheduler: Kubernetes' scheduler as a library — the scheduling framework,
//! the scheduling queue, the node/pod cache, and the default plugins.
//!
//! Like every Keelson component it talks to the cluster only through
//! [`keelson_core::client::Client`], so it runs in one process with the API server or
//! against any Kubernetes-compatible one.
//!
//! # Where to start
//!
//! ```no_run
//! # async fn demo(client: keelson_core::client::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use keelson_scheduler::{default_profile, Scheduler};
//!
//! let scheduler = Scheduler::builder(client)
//!     .profile(|h| default_profile(h, "default-scheduler"))
//!     .build()?;
//! scheduler.run(std::future::pending()).await?;
//! # Ok(()) }
//! ```
//!
//! Pods choose a profile by `spec.schedulerName`; a scheduler may serve several
//! (each [`ProfileBuilder`] is one). [`SchedulerConfig`] reads a
//! `KubeSchedulerConfiguration` file (profiles, plugins enabled and disabled per
//! extension point, weights, plugin arguments, `percentageOfNodesToScore`).
//!
//! # The shape
//!
//! ```text
//!  watches (nodes, pods, namespaces, PDBs)          informer.rs: list, watch, re-list on 410
//!     |  nodes, bound pods            | pending pods (our schedulerNames)
//!     v                               v
//!  Cache (cache.rs)              SchedulingQueue (queue.rs)
//!  NodeInfo per node,            activeQ (QueueSort: priority, then age)
//!  assumed pods                  backoffQ (1 s doubling to 10 s)
//!     |                          unschedulable (moved back by ClusterEvents the
//!     | Snapshot (incremental)    rejecting plugins registered; flushed after 5 min)
//!     v                               |
//!  scheduling cycle (scheduler.rs) <--+  one pod at a time:
//!     PreFilter -> Filter (rotating start, percentageOfNodesToScore, chunked threads)
//!     -> PostFilter if none fit (DefaultPreemption) -> PreScore -> Score/Normalize x weight
//!     -> choose (ties at random) -> assume in the cache -> Reserve -> Permit
//!     |
//!     v  binding cycle (a task per pod)
//!  wait for Permit -> PreBind -> Bind (POST pods/NAME/binding) -> PostBind
//!     failure anywhere: Unreserve, forget the assumed pod, requeue with backoff;
//!     an unschedulable pod gets a FailedScheduling event and PodScheduled=False.
//! ```
//!
//! # Extension points
//!
//! One object-safe trait per point, as in the Kubernetes scheduling framework:
//! [`QueueSort`], [`PreFilter`] (may narrow the node set; `add_pod`/`remove_pod` keep
//! its state right when preemption or nominated pods change a node), [`Filter`],
//! [`PostFilter`], [`PreScore`], [`Score`] (with `normalize_scores` to 0–100; weights
//! per profile), [`Reserve`] (and unreserve), [`Permit`] (allow, reject, wait with a
//! timeout — see [`WaitingPods`]), [`PreBind`], [`Bind`], [`PostBind`]. A [`Plugin`]
//! names itself, declares the [`ClusterEvent`]s that may make a pod it rejected fit,
//! and returns itself from the `as_*` method of each point it implements. Plugins share
//! per-cycle data through the typed [`CycleState`]; outcomes are [`Status`]es with a
//! [`Code`].
//!
//! # Default plugins
//!
//! [`PrioritySort`], [`NodeName`], [`NodeUnschedulable`], [`NodeResourcesFit`]
//! (LeastAllocated, MostAllocated, RequestedToCapacityRatio),
//! [`NodeResourcesBalancedAllocation`], [`NodeAffinity`], [`TaintToleration`],
//! [`InterPodAffinity`], [`PodTopologySpread`], [`ImageLocality`],
//! [`DefaultPreemption`], [`DefaultBinder`] — see [`plugins`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cache;
pub mod config;
mod error;
pub mod framework;
mod fxhash;
mod informer;
mod metrics;
mod node_info;
mod nominator;
pub mod plugins;
mod pod_info;
mod pod_list;
mod queue;
mod resources;
mod scheduler;
pub mod testing;

pub use cache::{Cache, CacheError, PdbInfo, Snapshot, TopologyIndex};
pub use config::SchedulerConfig;
pub use error::{ConfigError, SchedulerError};
pub use framework::{
    ActionType, Bind, BindResult, ClusterEvent, Code, CycleState, EventResource, ExtensionPoint,
    Filter, Handle, NodeScore, NodeStatuses, Permit, PermitResult, Plugin, PostBind, PostFilter,
    PostFilterContext, PostFilterResult, PreBind, PreFilter, PreFilterResult, PreScore,
    PreScoreResult, Profile, ProfileBuilder, QueueSort, Reserve, Score, StateData, Status,
    WaitingPod, WaitingPods, MAX_NODE_SCORE,
};
pub use metrics::{AttemptResult, Metrics, MetricsSnapshot};
pub use node_info::NodeInfo;
pub use nominator::Nominator;
pub use plugins::{
    DefaultBinder, DefaultPreemption, ImageLocality, InterPodAffinity, NodeAffinity, NodeName,
    NodeResourcesBalancedAllocation, NodeResourcesFit, NodeUnschedulable, PluginRegistry,
    PodTopologySpread, PrioritySort, TaintToleration,
};
pub use pod_info::{AffinityTerm, PodInfo, WeightedAffinityTerm};
pub use pod_list::PodList;
pub use queue::{QueueLengths, QueuedPodInfo, SchedulingQueue};
pub use resources::{parse_quantity, pod_requests, Resources};
pub use scheduler::{
    default_profile, fit_error_message, num_feasible_nodes_to_find, Scheduler, SchedulerBuilder,
    DEFAULT_SCHEDULER_NAME,
};

pub use keelson_core as core;
