//! keelson-controllers: the controller runtime, and the controllers Kubernetes ships
//! built on it.
//!
//! # Design
//!
//! Controllers turn desired state into actual state. Every controller here, and every
//! controller you write, has the same shape: watch some kinds, cache them, and when
//! something changes, *reconcile* the object it concerns — read the cached state, compare
//! with what should be, write the difference. The runtime has two layers, as kube-runtime
//! has:
//!
//! **The builder**, for the common case:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use keelson_controllers::{Action, Context, Controller, Reconciler, watcher};
//! # use keelson_core::{client::{Api, Client}, k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod}};
//! # struct MyReconciler;
//! # #[async_trait::async_trait]
//! # impl Reconciler<ReplicaSet> for MyReconciler {
//! #     type Error = keelson_core::Error;
//! #     async fn reconcile(&self, _: Arc<ReplicaSet>, _: &Context) -> Result<Action, Self::Error> {
//! #         Ok(Action::await_change())
//! #     }
//! # }
//! # async fn demo(client: Client) {
//! Controller::new(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default())
//!     .owns(Api::<Pod>::all(client), watcher::Config::default())
//!     .concurrency(5)
//!     .run(Arc::new(MyReconciler))
//!     .await;
//! # }
//! ```
//!
//! [`Controller`] reconciles objects of one kind; `owns` maps changes of other objects to
//! their managing owner (the `ownerReference` with `controller: true`); `watches` maps
//! anything to anything with a function. A [`Reconciler`] returns an [`Action`]: requeue
//! after a while, await the next change, or back off. The runtime guarantees that a key
//! is never reconciled twice at once and that bursts of changes to one object collapse
//! into one reconcile.
//!
//! **The primitives** underneath, each usable alone:
//!
//! - [`watcher::watcher`]: list then watch a [`ListWatch`] source as a stream of
//!   changes; resumes from the last `resourceVersion` (bookmarks included), re-lists on
//!   410 Gone, backs off on errors; streaming lists by default, paged lists where the
//!   server has none.
//! - [`reflector`]: a cache split into one [`Writer`] and cloneable [`Reader`]s (`get`,
//!   `list`, `wait_until_ready`), with indexes by namespace, owner uid, node name and any
//!   user function. Reads may be stale.
//! - [`Informer`] and [`InformerFactory`]: one watch and one cache per kind and selector
//!   per process, shared by any number of subscribers that join (receiving the cache's
//!   content first) and leave at run time.
//! - [`WorkQueue`]: de-duplication, no concurrent processing of a key, delays, per-key
//!   exponential backoff (5 ms doubling to 1000 s) under an overall token bucket (10 qps,
//!   burst 100), shutdown.
//!
//! And helpers: [`finalizer`](mod@finalizer) (run cleanup before an object goes), [`events::Recorder`]
//! (core/v1 Events aggregated with `count` and `lastTimestamp`), [`leader`] (election on
//! Leases with `leaseTransitions` as fencing token and a client that refuses writes when
//! not leading), [`metrics`] (queue depth, reconciles by result and duration, in the
//! Prometheus text format), and [`clock`] (timestamps on tokio's clock, so everything runs
//! under paused time).
//!
//! Objects are `Arc`-shared between the cache and reconcilers and never copied per
//! subscriber. Caches drop `managedFields` by default. A cache holds decoded objects, or
//! ([`reflector::Storage::Compact`], what the built-in controllers use for pods) their
//! JSON bytes, decoded on read: a typed k8s-openapi Pod costs about 13 KB, its JSON about
//! 2 KB. The garbage collector and the namespace controller cache only metadata
//! ([`PartialObjectMeta`] through [`MetadataApi`]).
//!
//! # Built-in controllers
//!
//! [`builtin`] holds Kubernetes' controllers with Kubernetes' semantics and status fields:
//! ReplicaSet, Deployment, StatefulSet, DaemonSet, Job, CronJob, EndpointSlice,
//! Endpoints, the garbage collector, Namespace, ServiceAccount, the root CA publisher
//! ([`builtin::rootcacert`]: the `kube-root-ca.crt` ConfigMap in every namespace) and the
//! legacy token controller ([`builtin::serviceaccount_token`]: token Secrets filled in
//! with a token signed by a [`TokenSigner`](builtin::serviceaccount_token::TokenSigner)
//! the API server's key stands behind); node lifecycle
//! ([`builtin::nodelifecycle`]: nodes whose Lease goes stale become `Unknown`, are tainted
//! `unreachable`, and lose the pods that do not tolerate that for long) and the pod
//! garbage collector ([`builtin::podgc`]). [`ControllerManager`] runs them all in one
//! process, optionally under leader election. Each controller's module says what it does
//! and what it leaves out: notably StatefulSets ignore `volumeClaimTemplates`, Jobs count
//! pods without the `batch.kubernetes.io/job-tracking` finalizer, and the Job controller
//! also does the TTL-after-finished controller's work. CronJob schedules are parsed by
//! [`keelson_core::cron`] and evaluated in their `timeZone` with `jiff` (system tz database,
//! bundled copy as fallback).
//!
//! # Cloud controllers
//!
//! [`cloud`] holds cloud-controller-manager's controllers — cloud node, cloud node
//! lifecycle, route and service (load balancers) — and the [`cloud::CloudProvider`]
//! trait they call. [`ControllerManager::cloud_provider`] runs them beside the others.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod builtin;
pub mod clock;
pub mod cloud;
mod controller;
pub mod events;
pub mod finalizer;
mod informer;
pub mod leader;
mod manager;
pub mod metrics;
mod object;
pub mod reflector;
pub mod watcher;
pub mod workqueue;

pub use controller::{Action, Context, Controller, Reconciler};
pub use finalizer::finalizer;
pub use informer::{Informer, InformerFactory, Subscription};
pub use manager::{
    ControllerManager, ControllerManagerConfig, UnknownController, CONTROLLERS, CONTROLLER_ALIASES,
};
pub use object::{controller_of, ListWatch, MetadataApi, Object, ObjectRef, PartialObjectMeta};
pub use reflector::{Change, Reader, Writer};
pub use workqueue::WorkQueue;

pub use keelson_core as core;
