//! The watch cache: one store watch per resource type, feeding a map of decoded objects
//! and a ring of recent events that every watcher and every cached list shares.
//!
//! ```text
//!  store ──list + watch──▶ Cache task ──▶ objects (key → Arc<Value>), revision
//!                                     └─▶ recent events (ring)  ──▶ watchers (broadcast)
//! ```
//!
//! A watcher subscribes under the cache's lock, so it gets the events after the
//! revision it started from exactly once: from the ring first, then live. N watchers of one
//! kind cost one store watch; a list served from the cache reads no store. Objects are
//! decoded once, when their event arrives, and shared (`Arc`) by every reader.
//!
//! When the store watch fails (history compacted, watcher cut off, store unavailable), the
//! cache re-lists, bumps its generation and ends every current watcher with `410 Expired`
//! so that clients re-list too, as Kubernetes' watch cache does.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keelson_core::{Error, ResourceType};
use keelson_store::{EventKind, ListOptions, Revision, Store, StoreError};
use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::registry::{decode_object, WatchEventType};

/// How many recent events each cache keeps for watchers that resume.
pub const HISTORY: usize = 10_000;

/// One change, as the cache keeps and hands it out.
#[derive(Debug)]
pub struct CachedEvent {
    /// The revision of the change.
    pub revision: Revision,
    /// ADDED, MODIFIED or DELETED (before any selector).
    pub kind: WatchEventType,
    /// The object after the change (for DELETED, the last state, at the delete's revision).
    pub object: Arc<Value>,
    /// The object before the change, if it existed.
    pub prev: Option<Arc<Value>>,
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
    objects: BTreeMap<String, Arc<Value>>,
    history: VecDeque<Arc<CachedEvent>>,
    /// The revision the history starts after: events after it are all in `history`.
    history_start: Revision,
    ready: bool,
}

/// The cache of one resource type.
pub struct Cache {
    rt: ResourceType,
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

/// A snapshot for a list: the objects under a prefix at one revision.
pub struct Snapshot {
    /// The revision.
    pub revision: Revision,
    /// The objects, in key order.
    pub objects: Vec<Arc<Value>>,
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
            rt,
            prefix,
            state: RwLock::new(State {
                revision: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_start: 0,
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
                if let Ok(obj) = decode_object(&self.rt, kv) {
                    objects.insert(kv.key.to_string(), Arc::new(obj));
                }
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
            state.ready = true;
        }
        self.progress.send_replace(revision);
        while let Some(item) = watch.next().await {
            let e = item?;
            if e.kind == EventKind::Put && !self.hints.lock().contains_key(&e.revision()) {
                // The writer of this change, if it is in this process, is probably about
                // to offer its object: let it run first, rather than decode the bytes.
                tokio::task::yield_now().await;
            }
            let key = e.kv.key.to_string();
            let offered = match e.kind {
                EventKind::Put => self.take_hint(e.revision()),
                EventKind::Delete => None,
            };
            let object = match offered {
                Some(object) => object,
                None => match decode_object(&self.rt, &e.kv) {
                    Ok(object) => Arc::new(object),
                    Err(_) => continue,
                },
            };
            let mut state = self.state.write();
            let prev = match e.kind {
                EventKind::Put => state.objects.insert(key, object.clone()),
                EventKind::Delete => state.objects.remove(&key),
            };
            let kind = match (e.kind, &prev) {
                (EventKind::Delete, _) => WatchEventType::Deleted,
                (EventKind::Put, None) => WatchEventType::Added,
                (EventKind::Put, Some(_)) => WatchEventType::Modified,
            };
            let event = Arc::new(CachedEvent {
                revision: e.revision(),
                kind,
                object,
                prev,
            });
            state.revision = state.revision.max(e.revision());
            if state.history.len() == HISTORY {
                if let Some(old) = state.history.pop_front() {
                    state.history_start = old.revision;
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
    /// bytes again when the write's event arrives. Offers for events the cache has
    /// already handled are dropped.
    pub fn offer(&self, revision: Revision, object: &Arc<Value>) {
        if *self.progress.borrow() >= revision {
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
        Ok(Self::snapshot_of(&self.state.read(), &prefix))
    }

    fn snapshot_of(state: &State, prefix: &str) -> Snapshot {
        let objects = state
            .objects
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        Snapshot {
            revision: state.revision,
            objects,
        }
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
        let snapshot = Self::snapshot_of(&state, &prefix);
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
        let state = self.state.read();
        (state.ready && state.revision >= revision).then(|| state.objects.get(key).cloned())
    }

    /// The cache's current revision.
    pub fn revision(&self) -> Revision {
        self.state.read().revision
    }
}
