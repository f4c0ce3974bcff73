//! The reflector: a cache of an object set, kept by one [`Writer`] from a watcher's events
//! and read through any number of cloneable [`Reader`]s.
//!
//! Reads may be stale: a reader sees what the watcher has delivered so far, which can lag
//! the server. Objects are shared (`Arc<K>`) and never mutated in place; a change replaces
//! the `Arc`. Indexes map a value (a namespace, an owner's uid, a node name, or anything a
//! user-defined function extracts) to the objects that have it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::object::{Object, ObjectRef};
use crate::watcher;

/// The built-in index of objects by namespace.
pub const NAMESPACE_INDEX: &str = "namespace";
/// The built-in index of objects by the uid of each of their owners.
pub const OWNER_UID_INDEX: &str = "owner-uid";
/// The index name [`node_name_index`] is meant to be registered under.
pub const NODE_NAME_INDEX: &str = "node-name";

/// A function giving the index values of an object.
pub type IndexFn<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

/// An index function for pods: their `spec.nodeName`.
pub fn node_name_index() -> IndexFn<keelson_core::k8s_openapi::api::core::v1::Pod> {
    Arc::new(|p| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .into_iter()
            .collect()
    })
}

/// How a cache holds its objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// Decoded (`Arc<K>`): reads are free and share one copy; a typed Pod costs about
    /// 13 KB (k8s-openapi's structs are large: a `Container` alone is 2 KB).
    #[default]
    Decoded,
    /// As compact JSON bytes (the object's size on the wire, about 2 KB for a Pod), and
    /// decoded on every read (each reader gets its own copy, about 10 µs for a Pod).
    /// Changes cost one encode, and one decode of the replaced state when someone
    /// subscribes to the changes.
    Compact,
}

enum Entry<K> {
    Decoded(Arc<K>),
    Compact(Box<[u8]>),
}

impl<K: Object> Entry<K> {
    fn new(storage: Storage, obj: &Arc<K>) -> Entry<K> {
        match storage {
            Storage::Decoded => Entry::Decoded(obj.clone()),
            Storage::Compact => match serde_json::to_vec(obj.as_ref()) {
                Ok(bytes) => Entry::Compact(bytes.into_boxed_slice()),
                Err(_) => Entry::Decoded(obj.clone()),
            },
        }
    }

    /// The object (decoded, for compact storage).
    fn load(&self) -> Option<Arc<K>> {
        match self {
            Entry::Decoded(a) => Some(a.clone()),
            Entry::Compact(bytes) => match serde_json::from_slice::<K>(bytes) {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    tracing::error!(error = %e, "a cached object does not decode");
                    None
                }
            },
        }
    }
}

/// The values an object is filed under, per index.
type Indexed = Box<[(Arc<str>, Box<[String]>)]>;

/// One cached object: its storage, the index values it was filed under, and its
/// identity (uid and resourceVersion) for re-lists.
struct Slot<K> {
    entry: Entry<K>,
    indexed: Indexed,
    version: Box<str>,
}

struct Inner<K> {
    storage: Storage,
    objects: HashMap<ObjectRef, Slot<K>>,
    indexers: HashMap<Arc<str>, IndexFn<K>>,
    indices: HashMap<Arc<str>, HashMap<String, HashSet<ObjectRef>>>,
}

fn version_of<K: Object>(k: &K) -> Box<str> {
    let m = k.metadata();
    format!(
        "{}/{}",
        m.uid.as_deref().unwrap_or_default(),
        m.resource_version.as_deref().unwrap_or_default()
    )
    .into_boxed_str()
}

impl<K: Object> Inner<K> {
    fn new(storage: Storage) -> Self {
        let mut indexers: HashMap<Arc<str>, IndexFn<K>> = HashMap::new();
        indexers.insert(
            Arc::from(NAMESPACE_INDEX),
            Arc::new(|k: &K| k.metadata().namespace.clone().into_iter().collect()),
        );
        indexers.insert(
            Arc::from(OWNER_UID_INDEX),
            Arc::new(|k: &K| {
                k.metadata()
                    .owner_references
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .map(|r| r.uid.clone())
                    .collect()
            }),
        );
        Inner {
            storage,
            objects: HashMap::new(),
            indexers,
            indices: HashMap::new(),
        }
    }

    /// A slot for `obj`, with its index values computed now (while it is decoded).
    fn slot(&self, obj: &Arc<K>) -> Slot<K> {
        Slot {
            entry: Entry::new(self.storage, obj),
            indexed: self
                .indexers
                .iter()
                .map(|(name, f)| (name.clone(), f(obj).into_boxed_slice()))
                .filter(|(_, v)| !v.is_empty())
                .collect(),
            version: version_of(obj.as_ref()),
        }
    }

    fn index(&mut self, key: &ObjectRef, indexed: &[(Arc<str>, Box<[String]>)]) {
        for (name, values) in indexed {
            let idx = self.indices.entry(name.clone()).or_default();
            for v in values.iter() {
                idx.entry(v.clone()).or_default().insert(key.clone());
            }
        }
    }

    fn unindex(&mut self, key: &ObjectRef, indexed: &[(Arc<str>, Box<[String]>)]) {
        for (name, values) in indexed {
            if let Some(idx) = self.indices.get_mut(name) {
                for v in values.iter() {
                    if let Some(set) = idx.get_mut(v) {
                        set.remove(key);
                        if set.is_empty() {
                            idx.remove(v);
                        }
                    }
                }
            }
        }
    }

    /// Files `slot` under `key`; returns the slot it replaced.
    fn put(&mut self, key: ObjectRef, slot: Slot<K>) -> Option<Slot<K>> {
        let old = self.objects.remove(&key);
        if let Some(o) = &old {
            self.unindex(&key, &o.indexed);
        }
        self.index(&key, &slot.indexed);
        self.objects.insert(key, slot);
        old
    }

    fn remove(&mut self, key: &ObjectRef) -> Option<Slot<K>> {
        let old = self.objects.remove(key);
        if let Some(o) = &old {
            self.unindex(key, &o.indexed);
        }
        old
    }

    fn get(&self, key: &ObjectRef) -> Option<Arc<K>> {
        self.objects.get(key).and_then(|s| s.entry.load())
    }
}

struct Shared<K> {
    inner: RwLock<Inner<K>>,
}

/// A change a [`Writer`] made to its cache.
#[derive(Debug)]
pub enum Change<K> {
    /// An object was added (`old: None`) or replaced.
    Applied {
        /// The state it replaced.
        old: Option<Arc<K>>,
        /// The new state.
        new: Arc<K>,
    },
    /// An object left the cache (deleted, or missing from a re-list).
    Deleted(Arc<K>),
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied { old, new } => Change::Applied {
                old: old.clone(),
                new: new.clone(),
            },
            Change::Deleted(k) => Change::Deleted(k.clone()),
        }
    }
}

/// The one writer of a cache: feed it a watcher's events.
pub struct Writer<K> {
    shared: Arc<Shared<K>>,
    buffer: Option<HashMap<ObjectRef, Slot<K>>>,
    ready: watch::Sender<bool>,
}

impl<K> fmt::Debug for Writer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl<K: Object> Default for Writer<K> {
    fn default() -> Self {
        Writer::new()
    }
}

impl<K: Object> Writer<K> {
    /// An empty cache, not ready until its first complete list.
    pub fn new() -> Writer<K> {
        Writer::with_storage(Storage::Decoded)
    }

    /// An empty cache holding its objects as `storage` says.
    pub fn with_storage(storage: Storage) -> Writer<K> {
        let (ready, _) = watch::channel(false);
        Writer {
            shared: Arc::new(Shared {
                inner: RwLock::new(Inner::new(storage)),
            }),
            buffer: None,
            ready,
        }
    }

    /// A reader of this cache.
    pub fn reader(&self) -> Reader<K> {
        Reader {
            shared: self.shared.clone(),
            ready: self.ready.subscribe(),
        }
    }

    /// Applies one watcher event and returns the changes it made. A list is buffered
    /// and swapped in whole at `InitDone` (objects not listed become `Deleted` changes),
    /// which also makes the cache ready.
    pub fn apply(&mut self, event: watcher::Event<K>) -> Vec<Change<K>> {
        self.apply_inner(event, true)
    }

    /// [`Writer::apply`] without computing the changes (nobody listens): with compact
    /// storage, no replaced state is decoded.
    pub fn apply_silently(&mut self, event: watcher::Event<K>) {
        self.apply_inner(event, false);
    }

    fn apply_inner(&mut self, event: watcher::Event<K>, changes_wanted: bool) -> Vec<Change<K>> {
        match event {
            watcher::Event::Init => {
                self.buffer = Some(HashMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(k) => {
                let key = k.object_ref();
                let slot = self.shared.inner.read().slot(&Arc::new(k));
                self.buffer
                    .get_or_insert_with(HashMap::new)
                    .insert(key, slot);
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listed = self.buffer.take().unwrap_or_default();
                let mut changes = Vec::new();
                {
                    let mut inner = self.shared.inner.write();
                    let gone: Vec<ObjectRef> = inner
                        .objects
                        .keys()
                        .filter(|k| !listed.contains_key(*k))
                        .cloned()
                        .collect();
                    for key in gone {
                        if let Some(old) = inner.remove(&key) {
                            if changes_wanted {
                                if let Some(o) = old.entry.load() {
                                    changes.push(Change::Deleted(o));
                                }
                            }
                        }
                    }
                    for (key, slot) in listed {
                        let unchanged = inner
                            .objects
                            .get(&key)
                            .is_some_and(|old| old.version == slot.version);
                        if unchanged {
                            continue;
                        }
                        let new = changes_wanted.then(|| slot.entry.load()).flatten();
                        let old = inner.put(key, slot);
                        if let Some(new) = new {
                            let old = old.and_then(|o| o.entry.load());
                            changes.push(Change::Applied { old, new });
                        }
                    }
                }
                self.ready.send_replace(true);
                changes
            }
            watcher::Event::Apply(k) => {
                let key = k.object_ref();
                let new = Arc::new(k);
                let mut inner = self.shared.inner.write();
                let slot = inner.slot(&new);
                let old = inner.put(key, slot);
                drop(inner);
                if changes_wanted {
                    let old = old.and_then(|o| o.entry.load());
                    vec![Change::Applied { old, new }]
                } else {
                    Vec::new()
                }
            }
            watcher::Event::Delete(k) => {
                let key = k.object_ref();
                let old = self.shared.inner.write().remove(&key);
                if changes_wanted {
                    let last = old
                        .and_then(|o| o.entry.load())
                        .unwrap_or_else(|| Arc::new(k));
                    vec![Change::Deleted(last)]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Adds (or replaces) an index; existing objects are indexed at once.
    pub fn add_index(&self, name: &str, f: IndexFn<K>) {
        add_index(&self.shared, name, f);
    }
}

fn add_index<K: Object>(shared: &Shared<K>, name: &str, f: IndexFn<K>) {
    let mut inner = shared.inner.write();
    let name: Arc<str> = Arc::from(name);
    let mut idx: HashMap<String, HashSet<ObjectRef>> = HashMap::new();
    let inner = &mut *inner;
    for (key, slot) in &mut inner.objects {
        let mut indexed: Vec<(Arc<str>, Box<[String]>)> = slot
            .indexed
            .iter()
            .filter(|(n, _)| *n != name)
            .cloned()
            .collect();
        if let Some(obj) = slot.entry.load() {
            let values = f(&obj);
            for v in &values {
                idx.entry(v.clone()).or_default().insert(key.clone());
            }
            if !values.is_empty() {
                indexed.push((name.clone(), values.into_boxed_slice()));
            }
        }
        slot.indexed = indexed.into_boxed_slice();
    }
    inner.indexers.insert(name.clone(), f);
    inner.indices.insert(name, idx);
}

/// A reader of a cache, cheap to clone. Reads may be stale.
pub struct Reader<K> {
    shared: Arc<Shared<K>>,
    ready: watch::Receiver<bool>,
}

impl<K> Clone for Reader<K> {
    fn clone(&self) -> Self {
        Reader {
            shared: self.shared.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<K> fmt::Debug for Reader<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

/// The writer of a cache went away before the cache became ready.
#[derive(Debug, thiserror::Error)]
#[error("the cache's writer stopped before the cache was ready")]
pub struct WriterDropped;

impl<K: Object> Reader<K> {
    /// Waits until the cache has had its first complete list.
    ///
    /// # Errors
    /// [`WriterDropped`] when the writer is gone before that.
    pub async fn wait_until_ready(&self) -> Result<(), WriterDropped> {
        let mut ready = self.ready.clone();
        ready
            .wait_for(|r| *r)
            .await
            .map(|_| ())
            .map_err(|_| WriterDropped)
    }

    /// Whether the cache has had its first complete list.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// The object named `key`, if cached.
    pub fn get(&self, key: &ObjectRef) -> Option<Arc<K>> {
        self.shared.inner.read().get(key)
    }

    /// Every cached object (in no particular order).
    pub fn list(&self) -> Vec<Arc<K>> {
        self.shared
            .inner
            .read()
            .objects
            .values()
            .filter_map(|s| s.entry.load())
            .collect()
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        self.shared.inner.read().objects.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached objects in a namespace.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.by_index(NAMESPACE_INDEX, namespace)
    }

    /// The cached objects that have one of their owners' uid equal to `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<K>> {
        self.by_index(OWNER_UID_INDEX, uid)
    }

    /// The objects whose index `index` has `value` (none for an unknown index).
    pub fn by_index(&self, index: &str, value: &str) -> Vec<Arc<K>> {
        let inner = self.shared.inner.read();
        inner
            .indices
            .get(index)
            .and_then(|idx| idx.get(value))
            .map(|keys| keys.iter().filter_map(|k| inner.get(k)).collect())
            .unwrap_or_default()
    }

    /// Whether an index of this name exists.
    pub fn has_index(&self, index: &str) -> bool {
        self.shared
            .inner
            .read()
            .indexers
            .contains_key(index as &str)
    }

    /// Adds (or replaces) an index; existing objects are indexed at once.
    pub fn add_index(&self, name: &str, f: IndexFn<K>) {
        add_index(&self.shared, name, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_core::k8s_openapi::api::core::v1::{Pod, PodSpec};

    fn pod(ns: &str, name: &str, rv: &str, node: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p.metadata.resource_version = Some(rv.into());
        p.spec = Some(PodSpec {
            node_name: node.map(Into::into),
            ..PodSpec::default()
        });
        p
    }

    #[tokio::test]
    async fn a_relist_replaces_the_content_and_reports_what_went() {
        let mut w = Writer::<Pod>::new();
        let r = w.reader();
        assert!(!r.is_ready());
        w.apply(watcher::Event::Init);
        w.apply(watcher::Event::InitApply(pod("a", "p1", "1", None)));
        w.apply(watcher::Event::InitApply(pod("b", "p2", "2", None)));
        let changes = w.apply(watcher::Event::InitDone);
        assert_eq!(changes.len(), 2);
        r.wait_until_ready().await.expect("ready");
        assert_eq!(r.list_namespace("a").len(), 1);
        w.apply(watcher::Event::Init);
        w.apply(watcher::Event::InitApply(pod("a", "p1", "1", None)));
        let changes = w.apply(watcher::Event::InitDone);
        assert!(
            matches!(&changes[..], [Change::Deleted(p)] if p.metadata.name.as_deref() == Some("p2"))
        );
        assert_eq!(r.len(), 1);
        assert!(r.get(&ObjectRef::new(Some("b"), "p2")).is_none());
    }

    #[test]
    fn compact_storage_reads_back_what_was_written() {
        let mut w = Writer::<Pod>::with_storage(Storage::Compact);
        let r = w.reader();
        w.apply(watcher::Event::Apply(pod("a", "p1", "1", Some("n1"))));
        let key = ObjectRef::new(Some("a"), "p1");
        let one = r.get(&key).unwrap();
        assert_eq!(one.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        assert_eq!(r.by_index(NAMESPACE_INDEX, "a").len(), 1);
        let changes = w.apply(watcher::Event::Apply(pod("a", "p1", "2", Some("n2"))));
        match &changes[..] {
            [Change::Applied {
                old: Some(old),
                new,
            }] => {
                assert_eq!(old.metadata.resource_version.as_deref(), Some("1"));
                assert_eq!(new.metadata.resource_version.as_deref(), Some("2"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.list_namespace("a").len(), 1);
        assert_eq!(r.owned_by("none").len(), 0);
    }

    #[test]
    fn user_indexes_follow_updates() {
        let mut w = Writer::<Pod>::new();
        let r = w.reader();
        w.apply(watcher::Event::Apply(pod("a", "p1", "1", Some("n1"))));
        r.add_index(NODE_NAME_INDEX, node_name_index());
        assert_eq!(r.by_index(NODE_NAME_INDEX, "n1").len(), 1);
        w.apply(watcher::Event::Apply(pod("a", "p1", "2", Some("n2"))));
        assert!(r.by_index(NODE_NAME_INDEX, "n1").is_empty());
        assert_eq!(r.by_index(NODE_NAME_INDEX, "n2").len(), 1);
        w.apply(watcher::Event::Delete(pod("a", "p1", "3", Some("n2"))));
        assert!(r.by_index(NODE_NAME_INDEX, "n2").is_empty());
        assert!(r.by_index("nope", "x").is_empty());
    }
}
