//! The `Store` trait.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::error::Result;
use crate::types::{Deleted, Event, KeyValue, ListOptions, ListPage, Revision};

/// A stream of watch events in revision order. It ends with an error item when the watch
/// cannot go on (`WatchLagged`, `Compacted`, `Unavailable`); after that it yields nothing.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send + 'static>>;

/// A consistent key-value store with multi-version history and watch: the contract the API
/// server builds on, shaped like etcd's v3 API.
///
/// # Contract
/// - **One revision for the whole store.** Every successful write (create, update, delete)
///   gets the next revision; revisions only grow, also across restarts.
/// - **Durability.** A write returns `Ok` only once it would survive a crash of the process
///   (and, for durable stores, of the machine). A write that returns an error may or may
///   not have happened only when the error is `Unavailable` (the connection broke);
///   every other error means nothing changed.
/// - **Read your writes.** A get, list or watch started after a write returned sees it.
/// - **Watch.** `watch(prefix, after)` yields every change under `prefix` with a revision
///   greater than `after`, in revision order, with no gaps and no duplicates, first the
///   history and then live changes. A watcher that falls behind is cut off with
///   `WatchLagged`; it never slows writers down.
/// - **Compaction.** After `compact(c)`, reads at revisions below `c` fail with
///   `Compacted`, and so does a watch from `after` below `c`. Reads at `c` and later, and
///   watches of the changes after `c` (with their previous values), still work.
/// - **Limits.** Keys are non-empty UTF-8 that start with `/`, at most [`MAX_KEY_BYTES`]
///   long, without NUL bytes; values are at most [`MAX_VALUE_BYTES`] (1.5 MiB less 8 KiB, to fit etcd's request limit).
///
/// [`MAX_KEY_BYTES`]: crate::MAX_KEY_BYTES
/// [`MAX_VALUE_BYTES`]: crate::MAX_VALUE_BYTES
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current version of `key`, or `None` if it does not exist.
    ///
    /// # Errors
    /// `InvalidKey`, `Unavailable`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// The live keys under `prefix` (in key order) at a revision, a page at a time.
    ///
    /// # Errors
    /// `Compacted` for a revision (or a continue token's revision) older than the compacted
    /// one; `FutureRevision`; `InvalidContinue` for a token issued for another prefix or
    /// altered; `InvalidKey`; `Unavailable`.
    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage>;

    /// Creates `key`; fails if it exists.
    ///
    /// # Errors
    /// `AlreadyExists`; `InvalidKey`, `ValueTooLarge`; `Io` or `Unavailable` when the write
    /// could not be made durable.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Replaces `key` if its current `mod_revision` is `expected` (compare-and-swap).
    ///
    /// # Errors
    /// `NotFound` if the key does not exist; `Conflict` if its revision is not `expected`;
    /// plus the errors of `create`.
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue>;

    /// Deletes `key`, only if its current `mod_revision` is `expected` when one is given.
    ///
    /// # Errors
    /// `NotFound`; `Conflict` when `expected` does not match; plus the errors of `create`.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted>;

    /// Watches the changes under `prefix` after revision `after` (use the revision of a
    /// list to follow it without a gap; use [`Store::current_revision`] for only new
    /// changes).
    ///
    /// # Errors
    /// `Compacted` when history after `after` is gone; `FutureRevision`; `InvalidKey`;
    /// `Unavailable`. Errors after the start arrive as the stream's last item.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// Discards the history before `revision`: reads at older revisions will fail with
    /// `Compacted`. Compacting to a revision at or below the compacted one does nothing.
    ///
    /// # Errors
    /// `FutureRevision`; `Io`, `Unavailable`.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The revision of the latest write (0 for an empty, new store).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn current_revision(&self) -> Result<Revision>;
}
