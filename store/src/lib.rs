//! keelson-store: the consistent key-value store with watch that Keelson's API server
//! keeps every object in.
//!
//! Start with the [`Store`] trait: get, list at a revision with pagination, create,
//! compare-and-swap update, guarded delete, watch from a revision, compaction, one
//! monotonic revision for the whole store. Two implementations:
//!
//! - [`MemStore`], the embedded default: multi-version state in memory, made durable by a
//!   write-ahead log with group commit and snapshots on local disk (or no disk at all, for
//!   tests: [`MemStore::ephemeral`]).
//! - `EtcdStore` (feature `etcd`), over a real etcd v3 server, for clusters that outgrow one
//!   machine.
//!
//! Both pass the same conformance suite (feature `conformance`, module `conformance`),
//! which any other implementation of [`Store`] can run too.
//!
//! # Features
//! - `etcd`: `EtcdStore`; pulls in `etcd-client` (and needs `protoc` to build).
//! - `conformance`: the shared test suite.

mod continue_token;
mod error;
mod limits;
mod mem;
mod store;
mod types;

#[cfg(feature = "etcd")]
mod etcd;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{Result, StoreError};
pub use limits::{check_key, check_value, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use mem::{MemStore, MemStoreOptions, RecoveryReport};
pub use store::{Store, WatchStream};
pub use types::{Deleted, Event, EventData, EventKind, KeyValue, ListOptions, ListPage, Revision};

#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdStore};
