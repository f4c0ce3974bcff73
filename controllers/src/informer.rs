//! Shared informers: one watch and one cache per kind (and selector) per process, with any
//! number of subscribers that join and leave at run time.
//!
//! An [`Informer`] runs a [`watcher`](crate::watcher::watcher) into a
//! [`Writer`](crate::reflector::Writer) on its own task and fans each change out to its
//! subscribers. A subscriber that joins late first receives the cached objects (as
//! additions), then every later change, in order: the snapshot and the registration
//! happen under the same lock the task holds while it applies a change, so nothing is
//! missed or seen twice. Each subscriber has its own unbounded channel: a slow subscriber
//! costs memory, never blocks the others. Dropping a [`Subscription`] leaves.
//!
//! An [`InformerFactory`] hands out the same informer to every caller asking for the same
//! kind, namespace and selectors.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::object::{ListWatch, Object};
use crate::reflector::{Change, IndexFn, Reader, Writer};
use crate::watcher::{self, watcher_arc};

struct Shared<K> {
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Change<K>>>>,
    description: String,
}

struct Handle<K> {
    shared: Arc<Shared<K>>,
    reader: Reader<K>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl<K> Drop for Handle<K> {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.lock().take() {
            let _ = stop.send(());
        }
    }
}

/// A shared informer: one watch, one cache, many subscribers. Cheap to clone; the watch
/// stops when the last clone is dropped (or [`Informer::stop`] is called).
pub struct Informer<K> {
    handle: Arc<Handle<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            handle: self.handle.clone(),
        }
    }
}

impl<K> fmt::Debug for Informer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Informer")
            .field("source", &self.handle.shared.description)
            .finish_non_exhaustive()
    }
}

impl<K: Object> Informer<K> {
    /// Starts an informer on `source` on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(source: impl ListWatch<K>, config: watcher::Config) -> Informer<K> {
        Self::from_arc(Arc::new(source), config)
    }

    fn from_arc(source: Arc<dyn ListWatch<K>>, config: watcher::Config) -> Informer<K> {
        let description = match source.namespace() {
            Some(ns) => format!("{} in {ns}", source.resource_type()),
            None => source.resource_type().to_string(),
        };
        let mut writer = Writer::with_storage(config.storage);
        let reader = writer.reader();
        let shared = Arc::new(Shared {
            subscribers: Mutex::new(Vec::new()),
            description,
        });
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let task_shared = shared.clone();
        let mut stream = watcher_arc(source, config);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = &mut stop_rx => break,
                    e = stream.next() => e,
                };
                match event {
                    Some(Ok(event)) => {
                        let mut subs = task_shared.subscribers.lock();
                        if subs.is_empty() {
                            writer.apply_silently(event);
                            continue;
                        }
                        let changes = writer.apply(event);
                        if !changes.is_empty() {
                            subs.retain(|s| changes.iter().all(|c| s.send(c.clone()).is_ok()));
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(source = %task_shared.description, error = %e, "informer's watch failed; retrying");
                    }
                    None => break,
                }
            }
            tracing::debug!(source = %task_shared.description, "informer stopped");
        });
        Informer {
            handle: Arc::new(Handle {
                shared,
                reader,
                stop: Mutex::new(Some(stop_tx)),
            }),
        }
    }

    /// A reader of the cache.
    pub fn reader(&self) -> Reader<K> {
        self.handle.reader.clone()
    }

    /// Joins the subscribers: the cached objects first (as additions), then every change.
    pub fn subscribe(&self) -> Subscription<K> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subs = self.handle.shared.subscribers.lock();
        for obj in self.handle.reader.list() {
            let _ = tx.send(Change::Applied {
                old: None,
                new: obj,
            });
        }
        subs.push(tx);
        Subscription { rx }
    }

    /// How many subscribers are attached (ones that left are counted until the next
    /// change is delivered).
    pub fn subscriber_count(&self) -> usize {
        self.handle.shared.subscribers.lock().len()
    }

    /// Adds an index to the cache (see [`Reader::add_index`]).
    pub fn add_index(&self, name: &str, f: IndexFn<K>) {
        self.handle.reader.add_index(name, f);
    }

    /// Whether [`Informer::stop`] was called (a factory then starts a new informer for
    /// the next request).
    pub fn is_stopped(&self) -> bool {
        self.handle.stop.lock().is_none()
    }

    /// Stops the watch; the cache keeps its last content and subscriptions end.
    pub fn stop(&self) {
        if let Some(stop) = self.handle.stop.lock().take() {
            let _ = stop.send(());
        }
        self.handle.shared.subscribers.lock().clear();
    }
}

/// A subscriber's stream of changes; drop it to leave.
pub struct Subscription<K> {
    rx: mpsc::UnboundedReceiver<Change<K>>,
}

impl<K> fmt::Debug for Subscription<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl<K> Stream for Subscription<K> {
    type Item = Change<K>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    type_id: TypeId,
    resource: String,
    namespace: Option<String>,
    selectors: String,
}

/// Hands out one [`Informer`] per object type, kind, namespace and selectors. Cheap to
/// clone (clones share the informers); informers live as long as the factory or a clone
/// of them.
#[derive(Clone, Default)]
pub struct InformerFactory {
    informers: Arc<Mutex<HashMap<Key, Box<dyn Any + Send + Sync>>>>,
}

impl fmt::Debug for InformerFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InformerFactory")
            .field("informers", &self.informers.lock().len())
            .finish()
    }
}

impl InformerFactory {
    /// An empty factory.
    pub fn new() -> InformerFactory {
        InformerFactory::default()
    }

    /// The informer for `source` and `config`'s selectors, started on first request (and
    /// again after it was stopped). Other settings of `config` (page size, ...) are the first requester's.
    ///
    /// # Panics
    /// Outside a tokio runtime, when the informer has to be started.
    pub fn informer<K: Object>(
        &self,
        source: impl ListWatch<K>,
        config: watcher::Config,
    ) -> Informer<K> {
        let key = Key {
            type_id: TypeId::of::<K>(),
            resource: source.resource_type().to_string(),
            namespace: source.namespace().map(str::to_owned),
            selectors: config.selector_key(),
        };
        let mut informers = self.informers.lock();
        if let Some(existing) = informers
            .get(&key)
            .and_then(|b| b.downcast_ref::<Informer<K>>())
            .filter(|i| !i.is_stopped())
        {
            return existing.clone();
        }
        let informer = Informer::from_arc(Arc::new(source), config);
        informers.insert(key, Box::new(informer.clone()));
        informer
    }

    /// How many informers the factory runs.
    pub fn len(&self) -> usize {
        self.informers.lock().len()
    }

    /// Whether the factory runs no informer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every informer (each stops when its last clone is dropped).
    pub fn clear(&self) {
        self.informers.lock().clear();
    }
}
