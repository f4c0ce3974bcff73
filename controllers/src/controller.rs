//! The `Controller` builder and the `Reconciler` trait.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::StreamExt;
use keelson_core::ResourceType;
use tracing::Instrument;

use crate::informer::{Informer, InformerFactory};
use crate::metrics::{ControllerMetrics, Metrics, ReconcileResult};
use crate::object::{controller_of, ListWatch, Object, ObjectRef};
use crate::reflector::{Change, Reader};
use crate::watcher;
use crate::workqueue::{default_rate_limiter, RateLimiter, WorkQueue};

/// What to do with a key after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again after this long (even without a change).
    Requeue(Duration),
    /// Wait for the next change of the object or of what it watches.
    AwaitChange,
    /// Reconcile again after the queue's per-key backoff (the default after an error).
    Backoff,
}

impl Action {
    /// Reconcile again after `after`.
    pub fn requeue(after: Duration) -> Action {
        Action::Requeue(after)
    }

    /// Wait for a change.
    pub fn await_change() -> Action {
        Action::AwaitChange
    }

    /// Retry with the per-key exponential backoff.
    pub fn backoff() -> Action {
        Action::Backoff
    }
}

/// What the runtime tells a reconcile about its key.
#[derive(Clone, Debug)]
pub struct Context {
    /// The key reconciled.
    pub key: ObjectRef,
    /// How many times the key has been retried with backoff since its last success.
    pub retries: u32,
    /// The controller's name.
    pub controller: Arc<str>,
}

/// Brings the world in line with one object.
///
/// The runtime calls `reconcile` with the latest cached state of an object whenever it
/// or something it owns or watches changes; never twice at once for the same object;
/// and again as the returned [`Action`] asks. Reconciles must be idempotent: they may
/// run with a stale object and more often than changes happen. An object that is gone
/// from the cache is not reconciled (use finalizers for cleanup).
#[async_trait]
pub trait Reconciler<K>: Send + Sync + 'static {
    /// The error a reconcile may fail with.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Reconciles one object.
    async fn reconcile(&self, obj: Arc<K>, ctx: &Context) -> Result<Action, Self::Error>;

    /// What to do after a failed reconcile; by default, retry with backoff.
    fn error_policy(&self, _obj: Arc<K>, _error: &Self::Error, _ctx: &Context) -> Action {
        Action::Backoff
    }
}

type Trigger = Box<dyn FnOnce(WorkQueue<ObjectRef>) -> BoxFuture<'static, ()> + Send>;

/// Runs a [`Reconciler`] over the objects of one kind, triggered by changes to them, to
/// the objects they own, and to anything else mapped to them.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use keelson_controllers::{Action, Context, Controller, Reconciler, watcher};
/// # use keelson_core::{client::{Api, Client}, k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod}};
/// struct Count;
/// #[async_trait::async_trait]
/// impl Reconciler<ReplicaSet> for Count {
///     type Error = keelson_core::Error;
///     async fn reconcile(&self, rs: Arc<ReplicaSet>, _: &Context) -> Result<Action, Self::Error> {
///         Ok(Action::await_change())
///     }
/// }
/// # async fn demo(client: Client) {
/// Controller::new(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default())
///     .owns(Api::<Pod>::all(client), watcher::Config::default())
///     .concurrency(4)
///     .run(Arc::new(Count))
///     .await;
/// # }
/// ```
pub struct Controller<K> {
    name: Arc<str>,
    factory: InformerFactory,
    primary: Informer<K>,
    primary_rt: ResourceType,
    ready: Vec<BoxFuture<'static, bool>>,
    triggers: Vec<Trigger>,
    concurrency: usize,
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    metrics: Option<Arc<ControllerMetrics>>,
    limiter: Option<Box<dyn RateLimiter<ObjectRef>>>,
    queue: Option<WorkQueue<ObjectRef>>,
}

impl<K> fmt::Debug for Controller<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.name)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

fn ready_future<K: Object>(reader: Reader<K>) -> BoxFuture<'static, bool> {
    Box::pin(async move { reader.wait_until_ready().await.is_ok() })
}

impl<K: Object> Controller<K> {
    /// A controller of the objects `source` lists, with its own informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(source: impl ListWatch<K>, config: watcher::Config) -> Controller<K> {
        Controller::with_factory(&InformerFactory::new(), source, config)
    }

    /// A controller whose informers come from (and are shared through) `factory`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn with_factory(
        factory: &InformerFactory,
        source: impl ListWatch<K>,
        config: watcher::Config,
    ) -> Controller<K> {
        let primary_rt = source.resource_type().clone();
        let primary = factory.informer(source, config);
        let name: Arc<str> = Arc::from(primary_rt.kind.to_lowercase());
        let ready = vec![ready_future(primary.reader())];
        let sub_source = primary.clone();
        let mut triggers: Vec<Trigger> = Vec::new();
        triggers.push(Box::new(move |queue: WorkQueue<ObjectRef>| {
            let mut sub = sub_source.subscribe();
            drop(sub_source);
            Box::pin(async move {
                while let Some(change) = sub.next().await {
                    if let Change::Applied { new, .. } = change {
                        queue.add(new.object_ref());
                    }
                }
            })
        }));
        Controller {
            name,
            factory: factory.clone(),
            primary,
            primary_rt,
            ready,
            triggers,
            concurrency: 1,
            shutdown: None,
            metrics: None,
            limiter: None,
            queue: None,
        }
    }

    /// Also reconciles the owner (by a `controller: true` ownerReference of the primary
    /// kind) of every object `source` lists, when it changes. Both the old and the new
    /// owner are reconciled when a change moves an object between owners.
    pub fn owns<C: Object>(self, source: impl ListWatch<C>, config: watcher::Config) -> Self {
        let group = self.primary_rt.group.to_string();
        let kind = self.primary_rt.kind.to_string();
        let owner_of = move |c: &C| -> Option<ObjectRef> {
            let r = controller_of(c.metadata())?;
            let g = r.api_version.rsplit_once('/').map_or("", |(g, _)| g);
            (r.kind == kind && g == group)
                .then(|| ObjectRef::new(c.metadata().namespace.as_deref(), &r.name))
        };
        self.watches_changes(source, config, move |change: &Change<C>| match change {
            Change::Applied { old, new } => {
                let mut keys: Vec<ObjectRef> = owner_of(new).into_iter().collect();
                if let Some(o) = old.as_ref().and_then(|o| owner_of(o)) {
                    if !keys.contains(&o) {
                        keys.push(o);
                    }
                }
                keys
            }
            Change::Deleted(c) => owner_of(c).into_iter().collect(),
        })
    }

    /// Also reconciles the objects `mapper` names for every change (new or deleted
    /// state) of an object `source` lists.
    pub fn watches<O: Object>(
        self,
        source: impl ListWatch<O>,
        config: watcher::Config,
        mapper: impl Fn(&O) -> Vec<ObjectRef> + Send + Sync + 'static,
    ) -> Self {
        self.watches_changes(source, config, move |change: &Change<O>| match change {
            Change::Applied { new, .. } => mapper(new),
            Change::Deleted(o) => mapper(o),
        })
    }

    /// Also reconciles the objects `mapper` names for every change of an object `source`
    /// lists, seeing the change itself (added, replaced with its old state, or deleted):
    /// what controllers that keep expectations need.
    pub fn watches_changes<O: Object>(
        mut self,
        source: impl ListWatch<O>,
        config: watcher::Config,
        mapper: impl Fn(&Change<O>) -> Vec<ObjectRef> + Send + Sync + 'static,
    ) -> Self {
        let informer = self.factory.informer(source, config);
        self.ready.push(ready_future(informer.reader()));
        self.triggers
            .push(Box::new(move |queue: WorkQueue<ObjectRef>| {
                let mut sub = informer.subscribe();
                drop(informer);
                Box::pin(async move {
                    while let Some(change) = sub.next().await {
                        for key in mapper(&change) {
                            queue.add(key);
                        }
                    }
                })
            }));
        self
    }

    /// Reconciles up to `n` different objects at once (default 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Names the controller (logs and metrics; default: the kind in lower case).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Arc::from(name);
        self
    }

    /// Records queue and reconcile metrics in `metrics` under the controller's name.
    pub fn metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.controller(&self.name));
        self
    }

    /// Replaces the queue's rate limiter.
    pub fn rate_limiter(mut self, limiter: Box<dyn RateLimiter<ObjectRef>>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Stops when `signal` completes: no new reconcile starts, running ones finish, then
    /// [`Controller::run`] returns.
    pub fn graceful_shutdown_on(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// A reader of the primary kind's cache.
    pub fn store(&self) -> Reader<K> {
        self.primary.reader()
    }

    /// The controller's work queue, to trigger reconciles from elsewhere.
    pub fn queue(&mut self) -> WorkQueue<ObjectRef> {
        if self.queue.is_none() {
            let limiter = self
                .limiter
                .take()
                .unwrap_or_else(|| Box::new(default_rate_limiter()));
            self.queue = Some(WorkQueue::build(limiter, self.metrics.clone()));
        }
        // Just set above when it was missing.
        self.queue.clone().unwrap_or_default()
    }

    /// Runs until the shutdown signal (or forever): waits for every cache to be ready,
    /// then reconciles.
    pub async fn run<R: Reconciler<K>>(mut self, reconciler: Arc<R>) {
        let queue = self.queue();
        let name = self.name.clone();
        let mut shutdown = self
            .shutdown
            .take()
            .unwrap_or_else(|| Box::pin(futures::future::pending()));
        let ready = futures::future::join_all(std::mem::take(&mut self.ready));
        tokio::select! {
            _ = &mut shutdown => {
                queue.shut_down();
                return;
            }
            r = ready => {
                if r.iter().any(|ok| !ok) {
                    tracing::error!(controller = %name, "a cache stopped before it was ready");
                    return;
                }
            }
        }
        tracing::info!(controller = %name, "caches ready; starting workers");
        let triggers: Vec<_> = self
            .triggers
            .drain(..)
            .map(|t| tokio::spawn(t(queue.clone())))
            .collect();
        let reader = self.primary.reader();
        let mut workers = Vec::new();
        for _ in 0..self.concurrency {
            let (queue, reader, reconciler, name, metrics) = (
                queue.clone(),
                reader.clone(),
                reconciler.clone(),
                name.clone(),
                self.metrics.clone(),
            );
            workers.push(tokio::spawn(async move {
                while let Some(key) = queue.get().await {
                    reconcile_one(
                        &queue,
                        &reader,
                        reconciler.as_ref(),
                        &name,
                        metrics.as_deref(),
                        &key,
                    )
                    .await;
                    queue.done(&key);
                }
            }));
        }
        shutdown.await;
        tracing::info!(controller = %name, "shutting down");
        queue.shut_down();
        for t in &triggers {
            t.abort();
        }
        for w in workers {
            let _ = w.await;
        }
    }
}

async fn reconcile_one<K: Object, R: Reconciler<K>>(
    queue: &WorkQueue<ObjectRef>,
    reader: &Reader<K>,
    reconciler: &R,
    name: &Arc<str>,
    metrics: Option<&ControllerMetrics>,
    key: &ObjectRef,
) {
    let Some(obj) = reader.get(key) else {
        queue.forget(key);
        return;
    };
    let ctx = Context {
        key: key.clone(),
        retries: queue.retries(key),
        controller: name.clone(),
    };
    let span = tracing::debug_span!("reconcile", controller = %name, object = %key);
    let start = tokio::time::Instant::now();
    let result = reconciler
        .reconcile(obj.clone(), &ctx)
        .instrument(span)
        .await;
    let took = start.elapsed();
    let action = match result {
        Ok(action) => {
            if let Some(m) = metrics {
                m.record_reconcile(ReconcileResult::Success, took);
            }
            if action != Action::Backoff {
                queue.forget(key);
            }
            action
        }
        Err(e) => {
            if let Some(m) = metrics {
                m.record_reconcile(ReconcileResult::Error, took);
            }
            tracing::warn!(controller = %name, object = %key, error = %e, "reconcile failed");
            reconciler.error_policy(obj, &e, &ctx)
        }
    };
    match action {
        Action::Requeue(after) => queue.add_after(key.clone(), after),
        Action::AwaitChange => {}
        Action::Backoff => queue.add_rate_limited(key.clone()),
    }
}
