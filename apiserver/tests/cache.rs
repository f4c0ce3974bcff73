//! The watch cache: one store watch per kind, lists without store reads, resumable watches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use keelson_apiserver::registry::{ListParams, Selection, WatchEventType};
use keelson_apiserver::{Registry, ServedResource};
use keelson_core::k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use keelson_store::{
    Deleted, KeyValue, ListOptions, ListPage, MemStore, Revision, Store, WatchStream,
};
use serde_json::json;

/// A store that counts the lists and watches of configmaps that reach it.
struct Counting {
    inner: MemStore,
    lists: AtomicUsize,
    watches: AtomicUsize,
}

#[async_trait]
impl Store for Counting {
    async fn get(&self, key: &str) -> keelson_store::Result<Option<KeyValue>> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str, options: ListOptions) -> keelson_store::Result<ListPage> {
        if prefix.starts_with("/registry/core/configmaps/") {
            self.lists.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.list(prefix, options).await
    }
    async fn create(&self, key: &str, value: Bytes) -> keelson_store::Result<KeyValue> {
        self.inner.create(key, value).await
    }
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> keelson_store::Result<KeyValue> {
        self.inner.update(key, value, expected).await
    }
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> keelson_store::Result<Deleted> {
        self.inner.delete(key, expected).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> keelson_store::Result<WatchStream> {
        if prefix.starts_with("/registry/core/configmaps/") {
            self.watches.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.watch(prefix, after).await
    }
    async fn compact(&self, revision: Revision) -> keelson_store::Result<()> {
        self.inner.compact(revision).await
    }
    async fn current_revision(&self) -> keelson_store::Result<Revision> {
        self.inner.current_revision().await
    }
}

#[tokio::test]
async fn many_watchers_and_lists_cost_one_store_watch_and_one_list() {
    let store = Arc::new(Counting {
        inner: MemStore::ephemeral(),
        lists: AtomicUsize::new(0),
        watches: AtomicUsize::new(0),
    });
    let registry = Registry::new(store.clone());
    let namespaces = ServedResource::of::<Namespace>();
    let configmaps = ServedResource::of::<ConfigMap>();
    registry
        .create(&namespaces, None, json!({"metadata": {"name": "default"}}))
        .await
        .expect("namespace");
    for i in 0..10 {
        registry
            .create(
                &configmaps,
                Some("default"),
                json!({"metadata": {"name": format!("c{i}")}}),
            )
            .await
            .expect("create");
    }
    let mut watchers = Vec::new();
    for _ in 0..50 {
        let w = registry
            .watch(&configmaps, Selection::default(), None, false)
            .await
            .expect("watch");
        watchers.push(Box::pin(w));
    }
    for _ in 0..20 {
        let list = registry
            .list(&configmaps, &ListParams::default())
            .await
            .expect("list");
        assert_eq!(list.items.len(), 10);
    }
    assert_eq!(
        store.watches.load(Ordering::SeqCst),
        1,
        "one store watch for every watcher"
    );
    assert_eq!(
        store.lists.load(Ordering::SeqCst),
        1,
        "the cache's own list only"
    );
    registry
        .create(
            &configmaps,
            Some("default"),
            json!({"metadata": {"name": "new"}}),
        )
        .await
        .expect("create");
    for w in &mut watchers {
        for _ in 0..10 {
            assert_eq!(w.next().await.expect("initial").kind, WatchEventType::Added);
        }
        let e = w.next().await.expect("live");
        assert_eq!(
            (e.kind, e.object["metadata"]["name"].as_str()),
            (WatchEventType::Added, Some("new"))
        );
    }
}

#[tokio::test]
async fn a_watch_resumes_from_a_version_and_a_compacted_one_is_expired_in_stream() {
    let store = Arc::new(MemStore::ephemeral());
    let registry = Registry::new(store.clone());
    let namespaces = ServedResource::of::<Namespace>();
    let configmaps = ServedResource::of::<ConfigMap>();
    registry
        .create(&namespaces, None, json!({"metadata": {"name": "default"}}))
        .await
        .expect("namespace");
    // Start the cache before the writes, so its history holds them.
    registry
        .list(&configmaps, &ListParams::default())
        .await
        .expect("warm the cache");
    let a = registry
        .create(
            &configmaps,
            Some("default"),
            json!({"metadata": {"name": "a"}}),
        )
        .await
        .expect("a");
    registry
        .create(
            &configmaps,
            Some("default"),
            json!({"metadata": {"name": "b"}}),
        )
        .await
        .expect("b");
    let rv = a["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();
    let mut w = Box::pin(
        registry
            .watch(&configmaps, Selection::default(), Some(&rv), false)
            .await
            .expect("watch"),
    );
    let e = w.next().await.expect("event");
    assert_eq!(
        (e.kind, e.object["metadata"]["name"].as_str()),
        (WatchEventType::Added, Some("b"))
    );
    // A version the store has compacted away is gone for good: 410 in the stream.
    let other = registry
        .create(&namespaces, None, json!({"metadata": {"name": "other"}}))
        .await
        .expect("namespace");
    let compact_to = other["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .expect("rv");
    store.compact(compact_to).await.expect("compact");
    let mut old = Box::pin(
        registry
            .watch(&namespaces, Selection::default(), Some("1"), false)
            .await
            .expect("watch"),
    );
    let e = old.next().await.expect("error event");
    assert_eq!(e.kind, WatchEventType::Error);
    assert_eq!(
        (e.object["code"].as_i64(), e.object["reason"].as_str()),
        (Some(410), Some("Expired"))
    );
    assert!(old.next().await.is_none());
}

/// A paged list is served by the store, so a client can list a kind before its watch
/// cache exists; a watch from that list's version must not be refused because the cache
/// started later (it takes the missing events from the store's history).
#[tokio::test]
async fn a_watch_from_a_paged_list_taken_before_the_cache_started_misses_nothing() {
    let registry = Registry::new(Arc::new(MemStore::ephemeral()));
    let namespaces = ServedResource::of::<Namespace>();
    let configmaps = ServedResource::of::<ConfigMap>();
    registry
        .create(&namespaces, None, json!({"metadata": {"name": "default"}}))
        .await
        .expect("namespace");
    let create = |name: &'static str| {
        registry.create(
            &configmaps,
            Some("default"),
            json!({"metadata": {"name": name}}),
        )
    };
    create("a").await.expect("a");
    create("b").await.expect("b");
    let page = registry
        .list(
            &configmaps,
            &ListParams {
                limit: 1,
                ..ListParams::default()
            },
        )
        .await
        .expect("first page");
    let rv = page.resource_version.clone();
    // Changes after the list, before anyone watches configmaps.
    create("c").await.expect("c");
    registry
        .delete(&configmaps, Some("default"), "a", &Default::default())
        .await
        .expect("delete a");
    let mut w = Box::pin(
        registry
            .watch(&configmaps, Selection::default(), Some(&rv), false)
            .await
            .expect("watch"),
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        let e = w.next().await.expect("event");
        seen.push((
            e.kind,
            e.object["metadata"]["name"].as_str().map(str::to_owned),
        ));
    }
    assert_eq!(
        seen,
        vec![
            (WatchEventType::Added, Some("c".to_owned())),
            (WatchEventType::Deleted, Some("a".to_owned())),
        ]
    );
    // And then live changes.
    create("d").await.expect("d");
    let e = w.next().await.expect("event");
    assert_eq!(
        (e.kind, e.object["metadata"]["name"].as_str()),
        (WatchEventType::Added, Some("d"))
    );
}

#[tokio::test]
async fn send_initial_events_ends_with_the_initial_events_end_bookmark() {
    let registry = Registry::new(Arc::new(MemStore::ephemeral()));
    let namespaces = ServedResource::of::<Namespace>();
    for n in ["a", "b"] {
        registry
            .create(&namespaces, None, json!({"metadata": {"name": n}}))
            .await
            .expect("namespace");
    }
    let mut w = Box::pin(
        registry
            .watch(&namespaces, Selection::default(), Some("0"), true)
            .await
            .expect("watch"),
    );
    assert_eq!(w.next().await.expect("a").kind, WatchEventType::Added);
    assert_eq!(w.next().await.expect("b").kind, WatchEventType::Added);
    let end = w.next().await.expect("bookmark");
    assert_eq!(end.kind, WatchEventType::Bookmark);
    assert_eq!(
        end.object["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(end.object["kind"], "Namespace");
}

#[tokio::test]
async fn a_consistent_list_sees_writes_made_while_nobody_waited() {
    let registry = Registry::new(Arc::new(MemStore::ephemeral()));
    let namespaces = ServedResource::of::<Namespace>();
    registry
        .list(&namespaces, &ListParams::default())
        .await
        .expect("warm the cache");
    for n in ["a", "b", "c"] {
        registry
            .create(&namespaces, None, json!({"metadata": {"name": n}}))
            .await
            .expect("namespace");
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let list = registry
        .list(&namespaces, &ListParams::default())
        .await
        .expect("list");
    assert_eq!(list.items.len(), 3);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "no wait for a revision already reached"
    );
}

#[tokio::test(start_paused = true)]
async fn bookmarks_carry_the_latest_revision_a_watcher_has_been_through() {
    let registry = Registry::new(Arc::new(MemStore::ephemeral()));
    let namespaces = ServedResource::of::<Namespace>();
    let configmaps = ServedResource::of::<ConfigMap>();
    registry
        .create(&namespaces, None, json!({"metadata": {"name": "default"}}))
        .await
        .expect("namespace");
    let selection = Selection {
        labels: Some(keelson_core::LabelSelector::parse("app=x").expect("selector")),
        ..Selection::default()
    };
    let every = std::time::Duration::from_secs(60);
    let mut w = Box::pin(
        registry
            .watch_with_bookmarks(&configmaps, selection, None, false, Some(every))
            .await
            .expect("watch"),
    );
    // A change the watcher does not select still moves its bookmark on.
    let other = registry
        .create(
            &configmaps,
            Some("default"),
            json!({"metadata": {"name": "other"}}),
        )
        .await
        .expect("cm");
    let started = tokio::time::Instant::now();
    let e = w.next().await.expect("bookmark");
    assert_eq!(e.kind, WatchEventType::Bookmark);
    assert_eq!(
        e.object["metadata"]["resourceVersion"],
        other["metadata"]["resourceVersion"]
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(59),
        "about a minute later"
    );
    let x = registry
        .create(
            &configmaps,
            Some("default"),
            json!({"metadata": {"name": "x", "labels": {"app": "x"}}}),
        )
        .await
        .expect("cm");
    let e = w.next().await.expect("event");
    assert_eq!(
        (e.kind, e.object["metadata"]["name"].as_str()),
        (WatchEventType::Added, Some("x"))
    );
    let e = w.next().await.expect("bookmark");
    assert_eq!(
        (e.kind, &e.object["metadata"]["resourceVersion"]),
        (WatchEventType::Bookmark, &x["metadata"]["resourceVersion"])
    );
}

#[tokio::test]
async fn an_offered_object_is_taken_instead_of_decoding_the_write() {
    use keelson_apiserver::cache::Cache;
    use keelson_core::Resource;
    let store: Arc<dyn Store> = Arc::new(MemStore::ephemeral());
    let cache = Cache::start(store.clone(), ConfigMap::resource_type()).expect("cache");
    cache
        .wait_for(0, std::time::Duration::from_secs(3))
        .await
        .expect("ready");
    let next = store.current_revision().await.expect("revision") + 1;
    // The offer carries a marker the stored bytes do not: the cache must hand the offered
    // object to its watchers.
    let offered = Arc::new(
        json!({"metadata": {"name": "a", "resourceVersion": next.to_string()}, "offered": true}),
    );
    let mut sub = cache.subscribe(next - 1).expect("subscribe");
    cache.offer(next, &offered);
    let kv = store
        .create(
            "/registry/core/configmaps/default/a",
            Bytes::from_static(br#"{"metadata":{"name":"a"}}"#),
        )
        .await
        .expect("create");
    assert_eq!(kv.mod_revision, next);
    let delivered = match sub.live.recv().await.expect("event") {
        keelson_apiserver::cache::Delivery::Event(e) => e.object().expect("decodes"),
        keelson_apiserver::cache::Delivery::Reset => panic!("reset"),
    };
    assert!(Arc::ptr_eq(&delivered, &offered));
    // Reads share the decoded object while anyone holds it (here the event, in the ring).
    let got = cache
        .lookup("/registry/core/configmaps/default/a")
        .expect("cached");
    assert!(Arc::ptr_eq(&got, &offered));
    drop(sub);
    // Without an offer, the write is decoded from the store's bytes.
    store
        .create(
            "/registry/core/configmaps/default/b",
            Bytes::from_static(br#"{"metadata":{"name":"b"}}"#),
        )
        .await
        .expect("create b");
    let now = store.current_revision().await.expect("revision");
    cache
        .wait_for(now, std::time::Duration::from_secs(3))
        .await
        .expect("caught up");
    let b = cache
        .lookup("/registry/core/configmaps/default/b")
        .expect("cached");
    assert_eq!(b["metadata"]["resourceVersion"], now.to_string());
    // A second read while the first's object is alive shares it.
    let again = cache
        .lookup("/registry/core/configmaps/default/b")
        .expect("cached");
    assert!(Arc::ptr_eq(&b, &again));
    // An offer with no watcher is dropped: the event stays undecoded until asked for.
    let next = now + 1;
    cache.offer(next, &offered);
    let mut sub = cache.subscribe(now).expect("subscribe");
    store
        .create(
            "/registry/core/configmaps/default/c",
            Bytes::from_static(br#"{"metadata":{"name":"c"}}"#),
        )
        .await
        .expect("create c");
    let c = match sub.live.recv().await.expect("event") {
        keelson_apiserver::cache::Delivery::Event(e) => e.object().expect("decodes"),
        keelson_apiserver::cache::Delivery::Reset => panic!("reset"),
    };
    assert!(!Arc::ptr_eq(&c, &offered));
    assert_eq!(c["metadata"]["name"], "c");
    // An offer for a revision the cache has passed is dropped.
    cache.offer(1, &offered);
}

#[tokio::test]
async fn a_consistent_list_of_an_idle_kind_does_not_wait_for_writes_to_other_kinds() {
    let registry = Registry::new(Arc::new(MemStore::ephemeral()));
    let namespaces = ServedResource::of::<Namespace>();
    let configmaps = ServedResource::of::<ConfigMap>();
    registry
        .create(&namespaces, None, json!({"metadata": {"name": "default"}}))
        .await
        .expect("namespace");
    registry
        .list(&namespaces, &ListParams::default())
        .await
        .expect("warm the namespaces' cache");
    // Writes to another kind move the store's revision past the namespaces' cache.
    for n in 0..20 {
        registry
            .create(
                &configmaps,
                Some("default"),
                json!({"metadata": {"name": format!("c{n}")}}),
            )
            .await
            .expect("configmap");
    }
    let started = std::time::Instant::now();
    let list = registry
        .list(&namespaces, &ListParams::default())
        .await
        .expect("a consistent list");
    assert_eq!(list.items.len(), 1);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
    let current = registry.store().current_revision().await.expect("revision");
    assert_eq!(list.resource_version, current.to_string());
    // A write to the idle kind still shows up in the next consistent list.
    registry
        .create(&namespaces, None, json!({"metadata": {"name": "other"}}))
        .await
        .expect("namespace");
    let list = registry
        .list(&namespaces, &ListParams::default())
        .await
        .expect("list");
    assert_eq!(list.items.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_compactor_keeps_one_interval_of_history() {
    let store = Arc::new(MemStore::ephemeral());
    let registry = Registry::new(store.clone());
    let namespaces = ServedResource::of::<Namespace>();
    let compactor = registry.start_compactor(std::time::Duration::from_secs(300));
    registry
        .create(&namespaces, None, json!({"metadata": {"name": "a"}}))
        .await
        .expect("namespace");
    let early = store.current_revision().await.expect("revision");
    // The first tick only records where history stands; the next compacts to it.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    registry
        .create(&namespaces, None, json!({"metadata": {"name": "b"}}))
        .await
        .expect("namespace");
    assert!(
        store.watch("/registry/", 0).await.is_ok(),
        "nothing compacted yet"
    );
    tokio::time::sleep(std::time::Duration::from_secs(301)).await;
    tokio::task::yield_now().await;
    match store.watch("/registry/", early - 1).await {
        Err(keelson_store::StoreError::Compacted { .. }) => {}
        other => panic!(
            "expected history before {early} to be compacted, got {:?}",
            other.map(|_| ())
        ),
    }
    assert!(
        store.watch("/registry/", early).await.is_ok(),
        "one interval kept"
    );
    compactor.abort();
}

/// When the cache's own store watch falls a whole ring behind (the store's watchers get
/// `WatchLagged`), the cache resumes from the last change it took in: its watchers see
/// every change and no 410.
#[tokio::test]
async fn a_cache_that_falls_behind_the_store_resumes_without_a_reset() {
    let store = MemStore::ephemeral_with(keelson_store::MemStoreOptions {
        watch_buffer: 16,
        ..Default::default()
    });
    let registry = Registry::new(Arc::new(store));
    let namespaces = ServedResource::of::<Namespace>();
    let configmaps = ServedResource::of::<ConfigMap>();
    registry
        .create(&namespaces, None, json!({"metadata": {"name": "default"}}))
        .await
        .expect("namespace");
    let mut w = Box::pin(
        registry
            .watch(&configmaps, Selection::default(), None, false)
            .await
            .expect("watch"),
    );
    // On this single-threaded runtime the cache's task does not run while these writes
    // complete one after another, so the store's ring (16 groups) overflows under it.
    for i in 0..100 {
        registry
            .create(
                &configmaps,
                Some("default"),
                json!({"metadata": {"name": format!("c{i}")}}),
            )
            .await
            .expect("create");
    }
    for i in 0..100 {
        let e = w.next().await.expect("event");
        assert_eq!(
            (e.kind, e.object["metadata"]["name"].as_str()),
            (WatchEventType::Added, Some(format!("c{i}").as_str())),
            "event {i}"
        );
    }
}

/// The next item of a watch, which must come (or the watch end) within 5 s.
async fn next_within<S: futures::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
        .await
        .expect("the watch neither sent nor ended in 5 s")
}

/// A watcher too slow for the cache's broadcast buffer has its watch closed, as
/// kube-apiserver closes unresponsive watchers; watching again from the last version it
/// saw gets the rest from the cache's history, with no 410 and no re-list.
#[tokio::test]
async fn a_watcher_that_falls_behind_is_closed_and_resumes_from_its_last_version() {
    let registry = Registry::new(Arc::new(MemStore::ephemeral()));
    let namespaces = ServedResource::of::<Namespace>();
    let configmaps = ServedResource::of::<ConfigMap>();
    registry
        .create(&namespaces, None, json!({"metadata": {"name": "default"}}))
        .await
        .expect("namespace");
    let start = registry
        .list(&configmaps, &ListParams::default())
        .await
        .expect("list")
        .resource_version;
    let mut slow = Box::pin(
        registry
            .watch(&configmaps, Selection::default(), Some(&start), false)
            .await
            .expect("watch"),
    );
    // More changes than the broadcast buffer (4,096) holds, unread.
    let total = 5000;
    for i in 0..total {
        registry
            .create(
                &configmaps,
                Some("default"),
                json!({"metadata": {"name": format!("c{i}")}}),
            )
            .await
            .expect("create");
    }
    // Let the cache take every change in (and send it to the unread watch).
    let from_cache = ListParams {
        resource_version: Some("0".into()),
        ..ListParams::default()
    };
    for _ in 0..500 {
        let listed = registry.list(&configmaps, &from_cache).await.expect("list");
        if listed.items.len() == total {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut seen = Vec::new();
    let mut last = Some(start);
    while let Ok(Some(e)) =
        tokio::time::timeout(std::time::Duration::from_secs(5), slow.next()).await
    {
        assert_ne!(
            e.kind,
            WatchEventType::Error,
            "closed, not failed: {:?}",
            e.object
        );
        last = e.object["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_owned);
        seen.push(
            e.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(
        seen.len() < total,
        "the slow watch was closed early: {}",
        seen.len()
    );
    let mut again = Box::pin(
        registry
            .watch(&configmaps, Selection::default(), last.as_deref(), false)
            .await
            .expect("watch again"),
    );
    while seen.len() < total {
        let e = next_within(&mut again).await.expect("event");
        assert_eq!(e.kind, WatchEventType::Added, "{:?}", e.object);
        seen.push(
            e.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let expected: Vec<String> = (0..total).map(|i| format!("c{i}")).collect();
    assert_eq!(seen, expected, "every change once, in order");
}
