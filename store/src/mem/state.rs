//! The multi-version state in memory: every key's retained versions, the revision
//! counters, and the rules that turn a requested write into a new version.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::error::{Result, StoreError};
use crate::types::{Event, EventKind, KeyValue, Revision};

/// One version of a key. `value: None` is a tombstone (the key was deleted at `mod_revision`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    pub mod_revision: Revision,
    pub create_revision: Revision,
    pub version: i64,
    pub value: Option<Bytes>,
}

/// A key's versions in revision order. Almost every key has one, kept inline.
pub(crate) type History = SmallVec<[Version; 1]>;

/// The whole state. Only the committer mutates it; readers hold the read lock.
#[derive(Default)]
pub(crate) struct State {
    pub keys: BTreeMap<Arc<str>, History>,
    pub revision: Revision,
    pub compacted: Revision,
    /// Writes that left history behind (a superseded version or a tombstone), in revision
    /// order, so compaction visits only the keys that have something to drop.
    pub compactable: VecDeque<(Revision, Arc<str>)>,
}

/// A copy of the state's versions at one revision, for a snapshot: the map is copied, the
/// values are shared.
pub(crate) struct Frozen {
    pub revision: Revision,
    pub compacted: Revision,
    pub keys: BTreeMap<Arc<str>, History>,
}

/// A write as the caller asked for it.
#[derive(Debug)]
pub(crate) enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

/// A write that passed its checks and got its revision, ready to be logged and applied.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    pub key: Arc<str>,
    pub new: Version,
    /// The live version it replaces, if any.
    pub prev: Option<Version>,
}

impl Prepared {
    pub fn event(&self) -> Event {
        let prev = self.prev.as_ref().map(|p| key_value(&self.key, p));
        match &self.new.value {
            Some(_) => Event::new(EventKind::Put, key_value(&self.key, &self.new), prev),
            None => {
                let mut kv = prev
                    .clone()
                    .unwrap_or_else(|| key_value(&self.key, &self.new));
                kv.mod_revision = self.new.mod_revision;
                Event::new(EventKind::Delete, kv, prev)
            }
        }
    }

    /// What the caller gets back for this write.
    pub fn result(&self) -> KeyValue {
        match (&self.new.value, &self.prev) {
            (None, Some(prev)) => key_value(&self.key, prev),
            _ => key_value(&self.key, &self.new),
        }
    }
}

pub(crate) fn key_value(key: &Arc<str>, v: &Version) -> KeyValue {
    KeyValue {
        key: key.clone(),
        value: v.value.clone().unwrap_or_default(),
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
    }
}

/// The latest versions of keys written earlier in the same commit group, which the
/// state does not show yet.
pub(crate) type Overlay = HashMap<Arc<str>, Version>;

impl State {
    /// The version of `key` visible at `revision` (live or not).
    pub fn at(history: &History, revision: Revision) -> Option<&Version> {
        let idx = history.partition_point(|v| v.mod_revision <= revision);
        idx.checked_sub(1).map(|i| &history[i])
    }

    /// A copy for a snapshot: O(keys) pointer copies, no value is copied.
    pub fn freeze(&self) -> Frozen {
        Frozen {
            revision: self.revision,
            compacted: self.compacted,
            keys: self.keys.clone(),
        }
    }

    /// Checks `op` against the state plus `overlay`, and on success gives it revision
    /// `revision` and records it in `overlay`.
    pub fn prepare(&self, overlay: &mut Overlay, op: &Op, revision: Revision) -> Result<Prepared> {
        let key = match op {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => {
                key.as_str()
            }
        };
        let (key, current): (Arc<str>, Option<Version>) = match overlay.get_key_value(key) {
            Some((k, v)) => (k.clone(), Some(v.clone())),
            None => match self.keys.get_key_value(key) {
                Some((k, h)) => (k.clone(), h.last().cloned()),
                None => (Arc::from(key), None),
            },
        };
        let live = current.filter(|v| v.value.is_some());
        let new = match (op, &live) {
            (Op::Create { .. }, Some(_)) => {
                return Err(StoreError::AlreadyExists {
                    key: key.to_string(),
                });
            }
            (Op::Create { value, .. }, None) => Version {
                mod_revision: revision,
                create_revision: revision,
                version: 1,
                value: Some(value.clone()),
            },
            (Op::Update { .. } | Op::Delete { .. }, None) => {
                return Err(StoreError::NotFound {
                    key: key.to_string(),
                });
            }
            (
                Op::Update {
                    value, expected, ..
                },
                Some(cur),
            ) => {
                check_expected(&key, Some(*expected), cur)?;
                Version {
                    mod_revision: revision,
                    create_revision: cur.create_revision,
                    version: cur.version + 1,
                    value: Some(value.clone()),
                }
            }
            (Op::Delete { expected, .. }, Some(cur)) => {
                check_expected(&key, *expected, cur)?;
                Version {
                    mod_revision: revision,
                    create_revision: 0,
                    version: 0,
                    value: None,
                }
            }
        };
        overlay.insert(key.clone(), new.clone());
        Ok(Prepared {
            key,
            new,
            prev: live,
        })
    }

    /// Applies a prepared write (or one replayed from the log).
    pub fn apply(&mut self, p: &Prepared) {
        self.apply_version(p.key.clone(), p.new.clone());
    }

    pub fn apply_version(&mut self, key: Arc<str>, new: Version) {
        debug_assert!(new.mod_revision > self.revision);
        self.revision = new.mod_revision;
        let history = self.keys.entry(key.clone()).or_default();
        if !history.is_empty() || new.value.is_none() {
            self.compactable.push_back((new.mod_revision, key));
        }
        history.push(new);
    }

    /// Drops the history before `revision`. For every key, versions older than its newest
    /// version at or below `revision` go, and so does that version if it is a tombstone.
    /// Reads at `revision` and later, and watches of the changes after `revision` (with
    /// their previous values), are unaffected.
    pub fn compact(&mut self, revision: Revision) {
        if revision <= self.compacted {
            return;
        }
        self.compacted = revision;
        while self
            .compactable
            .front()
            .is_some_and(|(rev, _)| *rev <= revision)
        {
            let Some((_, key)) = self.compactable.pop_front() else {
                break;
            };
            let Some(history) = self.keys.get_mut(&key) else {
                continue;
            };
            let upto = history.partition_point(|v| v.mod_revision <= revision);
            let Some(newest) = upto.checked_sub(1) else {
                continue;
            };
            let cut = newest + usize::from(history[newest].value.is_none());
            if cut > 0 {
                history.drain(..cut);
            }
            if history.is_empty() {
                self.keys.remove(&key);
            }
        }
    }

    /// Every change under `prefix` with a revision above `after`, in revision order.
    pub fn history_since(&self, prefix: &str, after: Revision) -> Vec<Event> {
        let mut events = Vec::new();
        for (key, history) in self
            .keys
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            let first = history.partition_point(|v| v.mod_revision <= after);
            for i in first..history.len() {
                let prev = i
                    .checked_sub(1)
                    .map(|j| history[j].clone())
                    .filter(|v| v.value.is_some());
                events.push(
                    Prepared {
                        key: key.clone(),
                        new: history[i].clone(),
                        prev,
                    }
                    .event(),
                );
            }
        }
        events.sort_unstable_by_key(Event::revision);
        events
    }

    /// Checks a read revision: 0 means current.
    pub fn read_revision(&self, requested: Option<Revision>) -> Result<Revision> {
        match requested {
            None | Some(0) => Ok(self.revision),
            Some(r) if r > self.revision => Err(StoreError::FutureRevision {
                requested: r,
                current: self.revision,
            }),
            Some(r) if r < self.compacted || r < 0 => Err(StoreError::Compacted {
                requested: r,
                compacted: self.compacted,
            }),
            Some(r) => Ok(r),
        }
    }
}

fn check_expected(key: &Arc<str>, expected: Option<Revision>, cur: &Version) -> Result<()> {
    match expected {
        Some(e) if e != cur.mod_revision => Err(StoreError::Conflict {
            key: key.to_string(),
            expected: e,
            actual: cur.mod_revision,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(state: &mut State, key: &str, value: &str) -> Prepared {
        let op = Op::Create {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        };
        let p = state
            .prepare(&mut Overlay::new(), &op, state.revision + 1)
            .expect("create");
        state.apply(&p);
        p
    }

    #[test]
    fn compaction_keeps_what_reads_at_the_compacted_revision_need() {
        let mut s = State::default();
        put(&mut s, "/a", "1"); // rev 1
        let p = s
            .prepare(
                &mut Overlay::new(),
                &Op::Update {
                    key: "/a".into(),
                    value: Bytes::from_static(b"2"),
                    expected: 1,
                },
                2,
            )
            .expect("update");
        s.apply(&p);
        put(&mut s, "/b", "1"); // rev 3
        let d = s
            .prepare(
                &mut Overlay::new(),
                &Op::Delete {
                    key: "/b".into(),
                    expected: None,
                },
                4,
            )
            .expect("delete");
        s.apply(&d);
        s.compact(3);
        assert_eq!(s.keys["/a"].len(), 1, "rev 1 of /a is superseded at 2 <= 3");
        assert_eq!(
            s.keys["/b"].len(),
            2,
            "a watch after 3 needs the delete at 4 and the value it hid"
        );
        s.compact(4);
        assert!(
            !s.keys.contains_key("/b"),
            "tombstone at 4 and what it hides are gone"
        );
        assert!(s.compactable.is_empty());
    }

    #[test]
    fn a_group_sees_its_own_earlier_writes() {
        let s = State::default();
        let mut overlay = Overlay::new();
        let c = Op::Create {
            key: "/k".into(),
            value: Bytes::from_static(b"v"),
        };
        s.prepare(&mut overlay, &c, 1).expect("first create");
        assert!(matches!(
            s.prepare(&mut overlay, &c, 2),
            Err(StoreError::AlreadyExists { .. })
        ));
        let u = Op::Update {
            key: "/k".into(),
            value: Bytes::from_static(b"w"),
            expected: 1,
        };
        assert_eq!(
            s.prepare(&mut overlay, &u, 2).expect("update").new.version,
            2
        );
    }
}
