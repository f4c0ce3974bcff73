//! The watch cache: one store watch per resource type, feeding a map of the objects as
//! stored and a ring of recent events that every watcher and every cached list shares.
//!
//! ```text
//!  store ──list + watch──▶ Cache task ──▶ objects (key → stored bytes), revision
//!                                     └─▶ recent events (ring)  ──▶ watchers (broadcast)
//! ```
//!
//! A watcher subscribes under the cache's lock, so it gets the events after the
//! revision it started from exactly once: from the ring first, then live. N watchers of one
//! kind cost one store watch; a list served from the cache reads no store.
//!
//! The map keeps each object as the store holds it: the same bytes (shared, not copied)
//! and its revision, about a tenth of the memory of a decoded object. Objects are decoded
//! when read. An event's object is decoded once, when its first watcher needs it (or not at
//! all: a write of this process offers the object it wrote), and shared (`Arc`) by every
//! watcher; the object before the change only when a watcher's selector needs it.
//!
//! When the store watch fails (history compacted, watcher cut off, store unavailable), the
//! cache re-lists, bumps its generation and ends every current watcher with `410 Expired`
//! so that clients re-list too, as Kubernetes' watch cache does.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use futures::StreamExt;
use keelson_core::{Error, ResourceType};
use keelson_store::{EventKind, KeyValue, ListOptions, Revision, Store, StoreError};
use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::registry::{decode_stored, WatchEventType};

/// How many recent events each cache keeps for watchers that resume.
pub const HISTORY: usize = 10_000;

/// The watch event a store change is: a put of a key that `existed` before is MODIFIED.
fn watch_type(kind: EventKind, existed: bool) -> WatchEventType {
    match (kind, existed) {
        (EventKind::Delete, _) => WatchEventType::Deleted,
        (EventKind::Put, false) => WatchEventType::Added,
        (EventKind::Put, true) => WatchEventType::Modified,
    }
}

/// How long [`Cache::backfill`] waits for the store's next old event before taking it
/// that there are no more.
const BACKFILL_QUIET: Duration = Duration::from_millis(50);

/// One change, as the cache keeps and hands it out.
#[derive(Debug)]
pub struct CachedEvent {
    /// The revision of the change.
    pub revision: Revision,
    /// ADDED, MODIFIED or DELETED (before any selector).
    pub kind: WatchEventType,
    rt: Arc<ResourceType>,
    /// The object after the change (for DELETED, the last state, at the delete's revision).
    object: Arc<Stored>,
    /// The object decoded, once, for the event's watchers: held for as long as the event
    /// is in the ring, so that every watcher gets the same one.
    decoded: OnceLock<Option<Arc<Value>>>,
    /// The object before the change, if it existed.
    prev: Option<Arc<Stored>>,
}

impl CachedEvent {
    /// The object after the change (for DELETED, the last state, at the delete's
    /// revision); `None` if its stored bytes do not decode.
    pub fn object(&self) -> Option<Arc<Value>> {
        self.decoded
            .get_or_init(|| self.object.decode(&self.rt))
            .clone()
    }

    /// The object before the change; `None` if it did not exist (or does not decode).
    pub fn prev(&self) -> Option<Arc<Value>> {
        self.prev.as_ref().and_then(|p| p.decode(&self.rt))
    }

    /// Whether the object existed before the change.
    pub fn existed(&self) -> bool {
        self.prev.is_some()
    }
}

/// One version of an object as the cache keeps it: the store's bytes (shared with the
/// store, not copied) and revision, and a weak handle on its decoded form, so that every
/// reader shares one decoded object for as long as any of them holds it.
#[derive(Debug)]
struct Stored {
    value: Bytes,
    key: Arc<str>,
    revision: Revision,
    decoded: parking_lot::Mutex<std::sync::Weak<Value>>,
}

impl Stored {
    fn of(kv: &KeyValue) -> Arc<Stored> {
        Arc::new(Stored {
            key: kv.key.clone(),
            value: kv.value.clone(),
            revision: kv.mod_revision,
            decoded: parking_lot::Mutex::new(std::sync::Weak::new()),
        })
    }

    /// The object decoded: the one some reader still holds, or a fresh one.
    fn decode(&self, rt: &ResourceType) -> Option<Arc<Value>> {
        let mut shared = self.decoded.lock();
        if let Some(obj) = shared.upgrade() {
            return Some(obj);
        }
        let obj = Arc::new(decode_stored(rt, &self.key, &self.value, self.revision).ok()?);
        *shared = Arc::downgrade(&obj);
        Some(obj)
    }

    /// Records `obj` as this version decoded (a write of this process offered it).
    fn share(&self, obj: &Arc<Value>) {
        *self.decoded.lock() = Arc::downgrade(obj);
    }

    /// Appends the object's JSON as clients see it to `out`, from its stored bytes when
    /// they can be used as they are, else from `decoded` or by decoding. `false` when it
    /// does not decode.
    fn write_json(&self, rt: &ResourceType, decoded: Option<&Value>, out: &mut Vec<u8>) -> bool {
        if crate::stored::write_with_version(rt, &self.value, self.revision, out) {
            return true;
        }
        let owned;
        let obj = match decoded {
            Some(obj) => obj,
            None => match self.decode(rt) {
                Some(obj) => {
                    owned = obj;
                    &*owned
                }
                None => return false,
            },
        };
        serde_json::to_writer(&mut *out, obj).is_ok()
    }
}

/// What a live watcher receives.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// A change.
    Event(Arc<CachedEvent>),
    /// The cache lost its store watch and re-listed: watchers must re-list.
    Reset,
}

struct State {
    revision: Revision,
    objects: BTreeMap<Arc<str>, Arc<Stored>>,
    history: VecDeque<Arc<CachedEvent>>,
    /// The revision the history starts after: events after it are all in `history`.
    history_start: Revision,
    /// Whether `history_start` is where the cache's list was taken (nothing dropped since),
    /// so older events may still be had from the store (see [`Cache::backfill`]).
    starts_at_list: bool,
    ready: bool,
}

/// The cache of one resource type.
pub struct Cache {
    rt: Arc<ResourceType>,
    prefix: String,
    state: RwLock<State>,
    tx: broadcast::Sender<Delivery>,
    progress: tokio::sync::watch::Sender<Revision>,
    /// Objects this process has just written, by revision, offered by the registry so
    /// that their events need no decoding (see [`Cache::offer`]).
    hints: parking_lot::Mutex<std::collections::HashMap<Revision, Arc<Value>>>,
}

/// At most this many offered objects wait for their events; more are not kept.
const MAX_HINTS: usize = 4096;

/// A snapshot for a list: the objects under a prefix at one revision, decoded as they
/// are taken.
pub struct Snapshot {
    /// The revision.
    pub revision: Revision,
    stored: Vec<Arc<Stored>>,
    rt: Arc<ResourceType>,
}

impl Snapshot {
    /// How many objects the snapshot holds.
    pub fn len(&self) -> usize {
        self.stored.len()
    }

    /// Whether the snapshot is empty.
    pub fn is_empty(&self) -> bool {
        self.stored.is_empty()
    }

    /// The objects, decoded, in key order (any whose bytes do not decode left out).
    pub fn objects(self) -> impl Iterator<Item = Arc<Value>> {
        let rt = self.rt;
        self.stored.into_iter().filter_map(move |s| s.decode(&rt))
    }

    /// Appends the JSON of the objects `select` keeps (all with `None`), as clients see
    /// them and separated by commas, to `out`; returns how many. Objects are copied from
    /// their stored bytes, decoded only for `select` (or when they need it).
    pub fn write_json(&self, select: Option<&dyn Fn(&Value) -> bool>, out: &mut Vec<u8>) -> usize {
        let mut count = 0;
        for s in &self.stored {
            let decoded = match select {
                Some(select) => match s.decode(&self.rt) {
                    Some(obj) if select(&obj) => Some(obj),
                    _ => continue,
                },
                None => None,
            };
            if count > 0 {
                out.push(b',');
            }
            if s.write_json(&self.rt, decoded.as_deref(), out) {
                count += 1;
            } else if count > 0 {
                out.pop();
            }
        }
        count
    }
}

/// A watcher's start: the events after its revision so far, and the live feed.
pub struct Subscription {
    /// Events after the requested revision, already in the cache.
    pub backlog: Vec<Arc<CachedEvent>>,
    /// Everything after the backlog.
    pub live: broadcast::Receiver<Delivery>,
    /// The cache's revision when the subscription was taken.
    pub revision: Revision,
}

impl Cache {
    /// Starts a cache for `rt` over `store` (its task runs until the store fails for good
    /// or the cache is dropped).
    pub fn start(store: Arc<dyn Store>, rt: ResourceType) -> Result<Arc<Cache>, Error> {
        let prefix = rt.prefix(None)?;
        let (tx, _) = broadcast::channel(4096);
        let (progress, _) = tokio::sync::watch::channel(0);
        let cache = Arc::new(Cache {
            rt: Arc::new(rt),
            prefix,
            state: RwLock::new(State {
                revision: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_start: 0,
                starts_at_list: false,
                ready: false,
            }),
            tx,
            progress,
            hints: parking_lot::Mutex::default(),
        });
        let weak = Arc::downgrade(&cache);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let Some(cache) = weak.upgrade() else { return };
                match cache.run(&store).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(resource = %cache.rt.plural, error = %e, "watch cache restarts");
                        cache.reset();
                    }
                }
                drop(cache);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Ok(cache)
    }

    /// Marks the cache not ready and tells every watcher to re-list.
    fn reset(&self) {
        let mut state = self.state.write();
        state.ready = false;
        state.starts_at_list = false;
        state.history.clear();
        let _ = self.tx.send(Delivery::Reset);
    }

    /// Lists, then follows the store watch until it fails.
    async fn run(&self, store: &Arc<dyn Store>) -> Result<(), StoreError> {
        let mut objects = BTreeMap::new();
        let mut token = None;
        let mut revision = None;
        loop {
            let page = store
                .list(
                    &self.prefix,
                    ListOptions {
                        revision,
                        limit: Some(1000),
                        continue_token: token.take(),
                    },
                )
                .await?;
            revision = Some(page.revision);
            for kv in &page.items {
                objects.insert(kv.key.clone(), Stored::of(kv));
            }
            match page.continue_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let revision = revision.unwrap_or(0);
        let mut watch = store.watch(&self.prefix, revision).await?;
        {
            let mut state = self.state.write();
            state.objects = objects;
            state.revision = revision;
            state.history.clear();
            state.history_start = revision;
            state.starts_at_list = true;
            state.ready = true;
        }
        self.progress.send_replace(revision);
        // The last change this cache has taken in: a watch that falls behind the store's
        // ring resumes from here (the store still has the history) rather than re-listing.
        let mut last = revision;
        loop {
            let e = match watch.next().await {
                Some(Ok(e)) => e,
                Some(Err(StoreError::WatchLagged { .. })) => {
                    tracing::debug!(resource = %self.rt.plural, after = last, "watch cache fell behind; resuming");
                    watch = store.watch(&self.prefix, last).await?;
                    continue;
                }
                Some(Err(e)) => return Err(e),
                None => break,
            };
            last = e.revision();
            if e.kind == EventKind::Put
                && self.tx.receiver_count() > 0
                && !self.hints.lock().contains_key(&e.revision())
            {
                // The writer of this change, if it is in this process, is probably about
                // to offer its object: let it run first, rather than decode the bytes.
                tokio::task::yield_now().await;
            }
            let stored = Stored::of(&e.kv);
            let decoded = OnceLock::new();
            if e.kind == EventKind::Put {
                if let Some(offered) = self.take_hint(e.revision()) {
                    stored.share(&offered);
                    let _ = decoded.set(Some(offered));
                }
            }
            let stored_for_event = stored.clone();
            let mut state = self.state.write();
            let prev = match e.kind {
                EventKind::Put => state.objects.insert(stored.key.clone(), stored),
                EventKind::Delete => state.objects.remove(&stored.key),
            };
            let kind = watch_type(e.kind, prev.is_some());
            let event = Arc::new(CachedEvent {
                revision: e.revision(),
                kind,
                rt: self.rt.clone(),
                object: stored_for_event,
                decoded,
                prev,
            });
            state.revision = state.revision.max(e.revision());
            if state.history.len() == HISTORY {
                if let Some(old) = state.history.pop_front() {
                    state.history_start = old.revision;
                    state.starts_at_list = false;
                }
            }
            state.history.push_back(event.clone());
            let _ = self.tx.send(Delivery::Event(event));
            drop(state);
            self.note_progress(e.revision());
        }
        Err(StoreError::Unavailable {
            reason: "the store watch ended".into(),
            source: None,
        })
    }

    /// Offers the object a write of this process stored at `revision` (with its
    /// `resourceVersion`), so that the cache takes it instead of decoding the store's
    /// bytes again when the write's event arrives and a watcher wants it. Offers for
    /// events the cache has already handled, or made while nobody watches, are dropped.
    pub fn offer(&self, revision: Revision, object: &Arc<Value>) {
        // With no live watcher, the event's object stays undecoded until one asks.
        if self.tx.receiver_count() == 0 || *self.progress.borrow() >= revision {
            return;
        }
        let mut hints = self.hints.lock();
        if hints.len() < MAX_HINTS {
            hints.insert(revision, object.clone());
        }
    }

    /// The object offered for `revision`, if any; forgets offers the cache has passed.
    fn take_hint(&self, revision: Revision) -> Option<Arc<Value>> {
        let mut hints = self.hints.lock();
        if hints.is_empty() {
            return None;
        }
        let found = hints.remove(&revision);
        // An offer that lost the race with its own event stays behind; sweep those now
        // and then.
        if hints.len() > 64 {
            hints.retain(|r, _| *r > revision);
        }
        found
    }

    /// The object at `key` as the cache has it now (possibly a little behind the store);
    /// `None` when absent or when the cache is not ready.
    pub fn lookup(&self, key: &str) -> Option<Arc<Value>> {
        self.lookup_stored(key)?.decode(&self.rt)
    }

    /// As [`Cache::lookup`], decoding only what `T` asks for (a view of a few fields).
    pub fn lookup_as<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_slice(&self.lookup_stored(key)?.value).ok()
    }

    fn lookup_stored(&self, key: &str) -> Option<Arc<Stored>> {
        let state = self.state.read();
        if state.ready {
            state.objects.get(key).cloned()
        } else {
            None
        }
    }

    /// Tells readers waiting for a revision that the cache has reached `revision` (it
    /// never goes back).
    fn note_progress(&self, revision: Revision) {
        self.progress.send_if_modified(|r| {
            let older = *r < revision;
            if older {
                *r = revision;
            }
            older
        });
    }

    /// Records that nothing under the cache's prefix changed up to `revision` (the
    /// registry checked the store), so reads at `revision` need not wait for an event.
    pub fn advance(&self, revision: Revision) {
        {
            let mut state = self.state.write();
            if !state.ready || state.revision >= revision {
                return;
            }
            state.revision = revision;
        }
        self.note_progress(revision);
    }

    /// Waits until the cache has seen `revision` (at most `timeout`).
    ///
    /// # Errors
    /// 504 when it does not get there in time.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> Result<(), Error> {
        let mut rx = self.progress.subscribe();
        let reached = {
            let wait = rx.wait_for(|r| *r >= revision && self.state.read().ready);
            matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
        };
        if reached {
            return Ok(());
        }
        Err(Error::timeout(
            format!(
                "Too large resource version: {revision}, current: {}",
                self.state.read().revision
            ),
            Some(1),
        ))
    }

    /// The objects under `namespace` (all when `None`) at the cache's revision.
    pub fn snapshot(&self, namespace: Option<&str>) -> Result<Snapshot, Error> {
        let prefix = self.rt.prefix(namespace)?;
        Ok(self.snapshot_of(&self.state.read(), &prefix))
    }

    fn snapshot_of(&self, state: &State, prefix: &str) -> Snapshot {
        let stored: Vec<Arc<Stored>> = state
            .objects
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        Snapshot {
            revision: state.revision,
            stored,
            rt: self.rt.clone(),
        }
    }

    /// Extends the history back to just after `revision` with the store's own history,
    /// when the cache started (listed) after `revision` and has dropped nothing since: a
    /// client that listed before this cache existed (a paged list is served by the store)
    /// can then still watch from its list's version. Returns whether the history now
    /// reaches back to `revision`.
    ///
    /// # Errors
    /// 410 when the store has compacted `revision` away; the store's other errors.
    pub async fn backfill(
        &self,
        store: &Arc<dyn Store>,
        revision: Revision,
    ) -> Result<bool, Error> {
        let start = {
            let state = self.state.read();
            if !state.ready || revision >= state.history_start {
                return Ok(true);
            }
            if !state.starts_at_list {
                return Ok(false);
            }
            state.history_start
        };
        let mut changes = store
            .watch(&self.prefix, revision)
            .await
            .map_err(|e| match e {
                StoreError::Compacted {
                    requested,
                    compacted,
                } => Error::too_old_resource_version(requested, compacted),
                other => Error::internal(other),
            })?;
        let mut older = Vec::new();
        // The events up to `start` are history in the store, delivered at once; a quiet
        // watch means there are no more of them.
        while let Ok(Some(item)) = tokio::time::timeout(BACKFILL_QUIET, changes.next()).await {
            let e = item.map_err(Error::internal)?;
            if e.revision() > start {
                break;
            }
            if older.len() == HISTORY {
                return Ok(false);
            }
            let kind = watch_type(e.kind, e.prev.is_some());
            older.push(Arc::new(CachedEvent {
                revision: e.revision(),
                kind,
                rt: self.rt.clone(),
                object: Stored::of(&e.kv),
                decoded: OnceLock::new(),
                prev: e.prev.as_ref().map(Stored::of),
            }));
        }
        let mut state = self.state.write();
        // A reset, or history dropped meanwhile, makes the events found useless.
        if !(state.ready && state.starts_at_list && state.history_start == start) {
            return Ok(false);
        }
        if state.history.len() + older.len() > HISTORY {
            return Ok(false);
        }
        for e in older.into_iter().rev() {
            state.history.push_front(e);
        }
        state.history_start = revision;
        Ok(true)
    }

    /// Subscribes to the changes after `revision`.
    ///
    /// # Errors
    /// 410 Expired when the cache no longer holds the events after `revision`.
    pub fn subscribe(&self, revision: Revision) -> Result<Subscription, Error> {
        let state = self.state.read();
        if !state.ready || revision < state.history_start {
            return Err(Error::too_old_resource_version(
                revision,
                state.history_start,
            ));
        }
        let from = state.history.partition_point(|e| e.revision <= revision);
        Ok(Subscription {
            backlog: state.history.iter().skip(from).cloned().collect(),
            live: self.tx.subscribe(),
            revision: state.revision,
        })
    }

    /// A snapshot and the subscription to everything after it, taken together.
    ///
    /// # Errors
    /// As [`Cache::snapshot`].
    pub fn snapshot_and_subscribe(
        &self,
        namespace: Option<&str>,
    ) -> Result<(Snapshot, Subscription), Error> {
        let prefix = self.rt.prefix(namespace)?;
        let state = self.state.read();
        let snapshot = self.snapshot_of(&state, &prefix);
        let sub = Subscription {
            backlog: Vec::new(),
            live: self.tx.subscribe(),
            revision: state.revision,
        };
        Ok((snapshot, sub))
    }

    /// The object at `key` if the cache has caught up with `revision` (`Some(None)`: it
    /// does not exist); `None` when the cache is behind or not ready.
    pub fn lookup_if_current(&self, key: &str, revision: Revision) -> Option<Option<Arc<Value>>> {
        let found = {
            let state = self.state.read();
            if !(state.ready && state.revision >= revision) {
                return None;
            }
            state.objects.get(key).cloned()
        };
        Some(found.and_then(|s| s.decode(&self.rt)))
    }

    /// As [`Cache::lookup_if_current`], the object's JSON as clients see it, copied from
    /// its stored bytes where possible.
    pub fn lookup_json_if_current(&self, key: &str, revision: Revision) -> Option<Option<Vec<u8>>> {
        let found = {
            let state = self.state.read();
            if !(state.ready && state.revision >= revision) {
                return None;
            }
            state.objects.get(key).cloned()
        };
        Some(found.and_then(|s| {
            let mut out = Vec::new();
            s.write_json(&self.rt, None, &mut out).then_some(out)
        }))
    }

    /// The cache's current revision.
    pub fn revision(&self) -> Revision {
        self.state.read().revision
    }
}
