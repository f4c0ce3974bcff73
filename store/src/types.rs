//! The values the store hands out: key-values, events, list pages.

use std::sync::Arc;

use bytes::Bytes;

/// A store revision. Every successful write gets the next one; one counter serves the whole
/// store, as in etcd. Revision 0 never names a write.
pub type Revision = i64;

/// One version of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, e.g. `/registry/core/pods/default/web`.
    pub key: Arc<str>,
    /// The value as stored (Keelson stores JSON objects).
    pub value: Bytes,
    /// The revision of the write that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// The revision of the write that produced this version.
    pub mod_revision: Revision,
    /// How many times the key was written since it was created (1 after create).
    pub version: i64,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change seen by a watch: a cheap, shared handle (cloning it costs one reference
/// count, whatever the value's size), which dereferences to the change's [`EventData`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event(Arc<EventData>);

/// What an [`Event`] holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventData {
    /// Put or delete.
    pub kind: EventKind,
    /// For a put, the new version. For a delete, the last value the key had, with
    /// `mod_revision` set to the revision of the delete.
    pub kv: KeyValue,
    /// The version the key had before this change, if any.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// An event from its parts.
    pub fn new(kind: EventKind, kv: KeyValue, prev: Option<KeyValue>) -> Event {
        Event(Arc::new(EventData { kind, kv, prev }))
    }

    /// The revision at which this change happened.
    pub fn revision(&self) -> Revision {
        self.0.kv.mod_revision
    }
}

impl std::ops::Deref for Event {
    type Target = EventData;

    fn deref(&self) -> &EventData {
        &self.0
    }
}

/// Options of a list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Read at this revision; `None` (or 0) reads at the current one. A revision older than
    /// the compacted one fails with `Compacted`; one in the future with `FutureRevision`.
    /// Ignored when `continue_token` is given: the token carries its list's revision.
    pub revision: Option<Revision>,
    /// At most this many items; `None` (or 0) for all.
    pub limit: Option<usize>,
    /// Continue a previous list of the same prefix where its page ended.
    pub continue_token: Option<String>,
}

/// One page of a list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// The live keys under the prefix at `revision`, in key order.
    pub items: Vec<KeyValue>,
    /// The revision the page was read at. Every page of one list has the same.
    pub revision: Revision,
    /// Present when more keys follow: pass it back to read the next page.
    pub continue_token: Option<String>,
    /// How many keys follow this page, when `continue_token` is present and the store can
    /// tell cheaply (MemStore counts up to 10,000; etcd always counts).
    pub remaining: Option<u64>,
}

/// The result of a delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    /// The last version of the key before it was deleted.
    pub prev: KeyValue,
    /// The revision of the delete.
    pub revision: Revision,
}
