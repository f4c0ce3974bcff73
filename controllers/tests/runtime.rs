//! The runtime's primitives and helpers against an in-process API server.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{cluster, eventually, shutdown};
use futures::stream::{BoxStream, StreamExt};
use keelson_controllers::events::{object_reference, EventType, Recorder};
use keelson_controllers::leader::{LeaderElectionConfig, LeaderElector};
use keelson_controllers::metrics::{Metrics, ReconcileResult};
use keelson_controllers::watcher::{self, watcher, Event};
use keelson_controllers::{
    finalizer, Action, Change, Context, Controller, InformerFactory, ListWatch, ObjectRef,
    Reconciler,
};
use keelson_core::client::{
    Api, Client, DeleteOptions, Event as ApiEvent, List, ListParams, ObjectList, Patch, Transport,
    WatchParams, WatchStream,
};
use keelson_core::k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent};
use keelson_core::{Error, ResourceType};
use parking_lot::Mutex;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn cm(name: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c
}

/// A source whose watches fail as told: `expire` makes the next watch yield 410 after
/// its first event; every watch ends after `events_per_watch` events.
struct Flaky {
    api: Api<ConfigMap>,
    lists: AtomicUsize,
    watches: AtomicUsize,
    expire: AtomicBool,
}

#[async_trait]
impl ListWatch<ConfigMap> for Flaky {
    fn resource_type(&self) -> &ResourceType {
        self.api.resource_type()
    }
    fn namespace(&self) -> Option<&str> {
        self.api.namespace()
    }
    async fn list(&self, params: &ListParams) -> keelson_core::Result<List<ConfigMap>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.api.list(params).await
    }
    async fn watch(
        &self,
        params: &WatchParams,
    ) -> keelson_core::Result<BoxStream<'static, keelson_core::Result<ApiEvent<ConfigMap>>>> {
        self.watches.fetch_add(1, Ordering::SeqCst);
        let inner = self.api.watch(params).await?;
        let expire = self.expire.swap(false, Ordering::SeqCst);
        // Each watch ends after one event (as a server timeout would), or fails with 410.
        let s = inner.take(1);
        Ok(if expire {
            s.chain(futures::stream::iter([Err(Error::expired(
                "too old resource version",
            ))]))
            .boxed()
        } else {
            s.boxed()
        })
    }
}

#[tokio::test(start_paused = true)]
async fn the_watcher_resumes_from_its_version_and_relists_after_410() {
    let (_server, client) = cluster(&["ns"]).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    api.create(&cm("a")).await.unwrap();
    let source = Arc::new(Flaky {
        api: api.clone(),
        lists: 0.into(),
        watches: 0.into(),
        expire: false.into(),
    });
    struct Shared(Arc<Flaky>);
    #[async_trait]
    impl ListWatch<ConfigMap> for Shared {
        fn resource_type(&self) -> &ResourceType {
            self.0.resource_type()
        }
        fn namespace(&self) -> Option<&str> {
            self.0.namespace()
        }
        async fn list(&self, p: &ListParams) -> keelson_core::Result<List<ConfigMap>> {
            self.0.list(p).await
        }
        async fn watch(
            &self,
            p: &WatchParams,
        ) -> keelson_core::Result<BoxStream<'static, keelson_core::Result<ApiEvent<ConfigMap>>>>
        {
            self.0.watch(p).await
        }
    }
    let config = watcher::Config {
        initial_list: watcher::InitialList::ListWatch,
        ..watcher::Config::default()
    };
    let mut w = watcher(Shared(source.clone()), config);
    macro_rules! next {
        () => {
            tokio::time::timeout(WAIT, w.next()).await.unwrap().unwrap()
        };
    }
    assert!(matches!(next!().unwrap(), Event::Init));
    assert!(
        matches!(next!().unwrap(), Event::InitApply(c) if c.metadata.name.as_deref() == Some("a"))
    );
    assert!(matches!(next!().unwrap(), Event::InitDone));
    // Watches end after each event; changes in between are not lost and no list is needed.
    for name in ["b", "c", "d"] {
        api.create(&cm(name)).await.unwrap();
        let e = next!();
        assert!(
            matches!(&e, Ok(Event::Apply(c)) if c.metadata.name.as_deref() == Some(name)),
            "{e:?}"
        );
    }
    assert_eq!(source.lists.load(Ordering::SeqCst), 1);
    assert!(source.watches.load(Ordering::SeqCst) >= 3);
    // A 410: list again, framed by Init ... InitDone, with everything.
    source.expire.store(true, Ordering::SeqCst);
    api.create(&cm("e")).await.unwrap();
    assert!(matches!(next!().unwrap(), Event::Apply(_)));
    assert!(matches!(next!().unwrap(), Event::Init));
    let mut listed = HashSet::new();
    loop {
        match next!().unwrap() {
            Event::InitApply(c) => {
                listed.insert(c.metadata.name.unwrap());
            }
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(listed.len(), 5);
    assert_eq!(source.lists.load(Ordering::SeqCst), 2);
}

/// A server without streaming lists: it refuses `sendInitialEvents`.
struct NoStreaming(Api<ConfigMap>);

#[async_trait]
impl ListWatch<ConfigMap> for NoStreaming {
    fn resource_type(&self) -> &ResourceType {
        self.0.resource_type()
    }
    fn namespace(&self) -> Option<&str> {
        self.0.namespace()
    }
    async fn list(&self, p: &ListParams) -> keelson_core::Result<List<ConfigMap>> {
        self.0.list(p).await
    }
    async fn watch(
        &self,
        p: &WatchParams,
    ) -> keelson_core::Result<BoxStream<'static, keelson_core::Result<ApiEvent<ConfigMap>>>> {
        if p.send_initial_events {
            return Err(Error::bad_request("sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"));
        }
        self.0.watch(p).await
    }
}

#[tokio::test(start_paused = true)]
async fn the_watcher_falls_back_to_list_and_watch_without_streaming_lists() {
    let (_server, client) = cluster(&["ns"]).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    api.create(&cm("a")).await.unwrap();
    let mut w = watcher(NoStreaming(api.clone()), watcher::Config::default());
    let mut seen = Vec::new();
    while seen.last() != Some(&"done") {
        match tokio::time::timeout(WAIT, w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Event::Init => seen.push("init"),
            Event::InitApply(_) => seen.push("object"),
            Event::InitDone => seen.push("done"),
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, ["init", "object", "done"]);
    api.create(&cm("b")).await.unwrap();
    let e = tokio::time::timeout(WAIT, w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(e, Event::Apply(c) if c.metadata.name.as_deref() == Some("b")));
}

#[tokio::test(start_paused = true)]
async fn shared_informers_serve_late_subscribers_the_cache_then_changes() {
    let (_server, client) = cluster(&["ns"]).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    api.create(&cm("a")).await.unwrap();
    let factory = InformerFactory::new();
    let informer = factory.informer(api.clone(), watcher::Config::default());
    let same = factory.informer(api.clone(), watcher::Config::default());
    let other = factory.informer(
        api.clone(),
        watcher::Config::default().labels("x=y").unwrap(),
    );
    assert_eq!(factory.len(), 2, "one informer per kind and selector");
    informer.reader().wait_until_ready().await.unwrap();
    assert_eq!(same.reader().len(), 1, "the same cache");
    other.reader().wait_until_ready().await.unwrap();
    assert_eq!(other.reader().len(), 0);

    let mut late = same.subscribe();
    match late.next().await.unwrap() {
        Change::Applied { old: None, new } => assert_eq!(new.metadata.name.as_deref(), Some("a")),
        c => panic!("{c:?}"),
    }
    let mut second = informer.subscribe();
    assert!(matches!(
        second.next().await.unwrap(),
        Change::Applied { .. }
    ));
    drop(second);
    api.patch("a", &Patch::Merge(json!({"data": {"k": "v"}})))
        .await
        .unwrap();
    match late.next().await.unwrap() {
        Change::Applied {
            old: Some(old),
            new,
        } => {
            assert!(old.data.is_none());
            assert_eq!(new.data.as_ref().unwrap()["k"], "v");
        }
        c => panic!("{c:?}"),
    }
    assert_eq!(
        informer.subscriber_count(),
        1,
        "the subscriber that left is gone"
    );
    api.delete("a", &DeleteOptions::default()).await.unwrap();
    assert!(matches!(late.next().await.unwrap(), Change::Deleted(_)));
    assert!(informer.reader().is_empty());
}

/// Records reconciles; fails `fail_first` times per key.
#[derive(Default)]
struct Recording {
    busy: Mutex<HashSet<ObjectRef>>,
    seen: Mutex<Vec<String>>,
    failures: AtomicUsize,
    fail_first: usize,
    requeue: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
#[error("injected failure")]
struct Injected;

#[async_trait]
impl Reconciler<ConfigMap> for Recording {
    type Error = Injected;
    async fn reconcile(&self, obj: Arc<ConfigMap>, ctx: &Context) -> Result<Action, Injected> {
        assert!(
            self.busy.lock().insert(ctx.key.clone()),
            "{} reconciled twice at once",
            ctx.key
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.busy.lock().remove(&ctx.key);
        self.seen.lock().push(obj.metadata.name.clone().unwrap());
        if self.failures.load(Ordering::SeqCst) < self.fail_first {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(Injected);
        }
        Ok(self.requeue.map_or(Action::await_change(), Action::requeue))
    }
}

#[tokio::test(start_paused = true)]
async fn a_controller_collapses_bursts_retries_failures_and_shuts_down_gracefully() {
    let (_server, client) = cluster(&["ns"]).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    let metrics = Metrics::new();
    let (stop, signal) = shutdown();
    let rec = Arc::new(Recording {
        fail_first: 2,
        ..Recording::default()
    });
    let run = tokio::spawn(
        Controller::new(api.clone(), watcher::Config::default())
            .concurrency(4)
            .metrics(&metrics)
            .graceful_shutdown_on(signal())
            .run(rec.clone()),
    );
    api.create(&cm("a")).await.unwrap();
    // Two failures, then success: three reconciles of `a`, backed off.
    eventually("a reconciled after retries", WAIT, || async {
        (rec.seen.lock().len() == 3).then_some(())
    })
    .await;
    // A burst of changes while a reconcile runs collapses into few reconciles.
    rec.seen.lock().clear();
    for i in 0..20 {
        api.patch("a", &Patch::Merge(json!({"data": {"i": i.to_string()}})))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let n = rec.seen.lock().len();
    assert!(
        (1..=3).contains(&n),
        "{n} reconciles for a burst of 20 changes"
    );
    let m = metrics.controller("configmap");
    assert_eq!(m.reconciles(ReconcileResult::Error), 2);
    assert!(m.reconciles(ReconcileResult::Success) >= 2);
    assert!(metrics
        .render()
        .contains("workqueue_depth{name=\"configmap\"}"));
    stop.send(true).unwrap();
    tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn requeue_after_reconciles_again_without_a_change() {
    let (_server, client) = cluster(&["ns"]).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    api.create(&cm("tick")).await.unwrap();
    let rec = Arc::new(Recording {
        requeue: Some(Duration::from_secs(10)),
        ..Recording::default()
    });
    tokio::spawn(Controller::new(api, watcher::Config::default()).run(rec.clone()));
    tokio::time::sleep(Duration::from_secs(35)).await;
    let n = rec.seen.lock().len();
    assert!(
        (3..=5).contains(&n),
        "{n} reconciles in 35 s with a 10 s requeue"
    );
}

#[tokio::test(start_paused = true)]
async fn the_finalizer_helper_adds_runs_cleanup_and_removes() {
    let (_server, client) = cluster(&["ns"]).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    struct Fin {
        api: Api<ConfigMap>,
        cleaned: AtomicUsize,
    }
    #[async_trait]
    impl Reconciler<ConfigMap> for Fin {
        type Error = finalizer::Error<Injected>;
        async fn reconcile(&self, obj: Arc<ConfigMap>, _: &Context) -> Result<Action, Self::Error> {
            finalizer(&self.api, "example.com/cleanup", obj, |e| async move {
                if let finalizer::Event::Cleanup(_) = e {
                    self.cleaned.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, Injected>(Action::await_change())
            })
            .await
        }
    }
    let rec = Arc::new(Fin {
        api: api.clone(),
        cleaned: 0.into(),
    });
    tokio::spawn(Controller::new(api.clone(), watcher::Config::default()).run(rec.clone()));
    api.create(&cm("f")).await.unwrap();
    eventually("finalizer added", WAIT, || async {
        api.get("f")
            .await
            .unwrap()
            .metadata
            .finalizers
            .filter(|f| f == &["example.com/cleanup"])
            .map(|_| ())
    })
    .await;
    api.delete("f", &DeleteOptions::default()).await.unwrap();
    eventually("cleaned and gone", WAIT, || async {
        api.get_opt("f").await.unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(rec.cleaned.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn repeated_events_are_aggregated_with_a_count() {
    let (_server, client) = cluster(&["ns"]).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    let obj = api.create(&cm("x")).await.unwrap();
    let rec = Recorder::new(client.clone(), "test-controller", "host-1");
    let r = object_reference(&obj);
    rec.publish(&r, EventType::Warning, "FailedSync", "boom")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    rec.publish(&r, EventType::Warning, "FailedSync", "boom")
        .await
        .unwrap();
    rec.publish(&r, EventType::Warning, "FailedSync", "boom")
        .await
        .unwrap();
    rec.publish(&r, EventType::Normal, "Synced", "fine")
        .await
        .unwrap();
    let events: Api<CoreEvent> = Api::namespaced(client.clone(), "ns");
    let list = events.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 2);
    let e = list
        .iter()
        .find(|e| e.reason.as_deref() == Some("FailedSync"))
        .unwrap();
    assert_eq!(e.count, Some(3));
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.involved_object.name.as_deref(), Some("x"));
    assert_eq!(
        e.source.as_ref().unwrap().component.as_deref(),
        Some("test-controller")
    );
    let (first, last) = (
        e.first_timestamp.as_ref().unwrap().0,
        e.last_timestamp.as_ref().unwrap().0,
    );
    assert!(
        last.as_second() - first.as_second() >= 60,
        "{first} .. {last}"
    );
}

/// A transport that can be cut off (a partition).
struct Partition {
    inner: Arc<dyn Transport>,
    cut: Arc<AtomicBool>,
}

impl Partition {
    fn check(&self) -> keelson_core::Result<()> {
        if self.cut.load(Ordering::SeqCst) {
            Err(Error::service_unavailable("partitioned"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Transport for Partition {
    async fn get(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> keelson_core::Result<Arc<Value>> {
        self.check()?;
        self.inner.get(rt, ns, name).await
    }
    async fn get_subresource(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        s: &str,
    ) -> keelson_core::Result<Arc<Value>> {
        self.check()?;
        self.inner.get_subresource(rt, ns, name, s).await
    }
    async fn create_subresource(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        s: &str,
        b: Value,
    ) -> keelson_core::Result<Arc<Value>> {
        self.check()?;
        self.inner.create_subresource(rt, ns, name, s, b).await
    }
    async fn list(&self, rt: &ResourceType, p: &ListParams) -> keelson_core::Result<ObjectList> {
        self.check()?;
        self.inner.list(rt, p).await
    }
    async fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        o: Value,
    ) -> keelson_core::Result<Arc<Value>> {
        self.check()?;
        self.inner.create(rt, ns, o).await
    }
    async fn replace(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        s: Option<&str>,
        o: Value,
    ) -> keelson_core::Result<Arc<Value>> {
        self.check()?;
        self.inner.replace(rt, ns, name, s, o).await
    }
    async fn patch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        s: Option<&str>,
        p: &Patch,
    ) -> keelson_core::Result<Arc<Value>> {
        self.check()?;
        self.inner.patch(rt, ns, name, s, p).await
    }
    async fn delete(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        o: &DeleteOptions,
    ) -> keelson_core::Result<Option<Arc<Value>>> {
        self.check()?;
        self.inner.delete(rt, ns, name, o).await
    }
    async fn watch(&self, rt: &ResourceType, p: &WatchParams) -> keelson_core::Result<WatchStream> {
        self.check()?;
        self.inner.watch(rt, p).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_deposed_leader_cannot_write_and_the_new_term_has_a_new_token() {
    let (_server, client) = cluster(&["kube-system", "ns"]).await;
    let cut = Arc::new(AtomicBool::new(false));
    let a_client = Client::new(Arc::new(Partition {
        inner: client.transport().clone(),
        cut: cut.clone(),
    }));
    let a = Arc::new(LeaderElector::new(
        a_client,
        LeaderElectionConfig::new("kube-system", "kcm", "a"),
    ));
    let b = Arc::new(LeaderElector::new(
        client.clone(),
        LeaderElectionConfig::new("kube-system", "kcm", "b"),
    ));
    let (stop, signal) = shutdown();
    let (a2, b2) = (a.clone(), b.clone());
    let s1 = signal();
    tokio::spawn(async move { a2.run(s1).await });
    eventually("a leads", WAIT, || async {
        a.leadership().is_leader().then_some(())
    })
    .await;
    let s2 = signal();
    tokio::spawn(async move { b2.run(s2).await });
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        a.leadership().is_leader() && !b.leadership().is_leader(),
        "one leader at a time"
    );
    let first_token = a.leadership().token().unwrap();
    let fence = a.fence().unwrap();
    fence.check().await.unwrap();

    let a_writes: Api<ConfigMap> = Api::namespaced(a.fenced_client(client.clone()), "ns");
    let b_writes: Api<ConfigMap> = Api::namespaced(b.fenced_client(client.clone()), "ns");
    a_writes.create(&cm("from-a")).await.unwrap();
    let refused = b_writes.create(&cm("from-b")).await.unwrap_err();
    assert_eq!(refused.code(), 403, "{refused}");

    // Partition a from the server: it stops leading within the renew deadline, before b
    // can take the lease (lease duration), and b's term has a new token.
    cut.store(true, Ordering::SeqCst);
    let cut_at = tokio::time::Instant::now();
    let mut a_state = a.subscribe();
    let mut b_state = b.subscribe();
    a_state.wait_for(|s| !s.is_leader()).await.unwrap();
    let a_stopped = cut_at.elapsed();
    assert!(
        a_stopped <= Duration::from_secs(11),
        "a led {a_stopped:?} past its last renewal"
    );
    b_state.wait_for(|s| s.is_leader()).await.unwrap();
    let b_started = cut_at.elapsed();
    assert!(b_started > a_stopped, "b led while a still did");
    assert!(b.leadership().token().unwrap() > first_token);
    let refused = a_writes.create(&cm("late-from-a")).await.unwrap_err();
    assert_eq!(refused.code(), 403, "{refused}");
    b_writes.create(&cm("from-b")).await.unwrap();
    // The old term's fence fails against the lease (read through an unpartitioned client).
    cut.store(false, Ordering::SeqCst);
    assert_eq!(fence.check().await.unwrap_err().code(), 403);
    stop.send(true).unwrap();
}
