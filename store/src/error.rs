//! The store's error type.

use crate::types::Revision;

/// Why a store operation failed. Callers branch on the variants; each maps to a Kubernetes
/// `Status` reason at the API edge (see `keelson_core::Error`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The key does not exist.
    #[error("key {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A create found the key already there.
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// A compare-and-swap found another revision than the one expected.
    #[error("conflict on {key}: expected revision {expected}, found {actual}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The key's current revision (0 when it does not exist).
        actual: Revision,
    },
    /// The requested revision was compacted away: re-list.
    #[error("revision {requested} has been compacted (compacted revision is {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The store's compacted revision.
        compacted: Revision,
    },
    /// The requested revision is newer than the store's current one.
    #[error("revision {requested} is in the future (current revision is {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },
    /// A watcher fell too far behind the writers and was cut off: re-list, then watch again.
    #[error("watch on {prefix} fell behind the writers and was cut off at revision {revision}; re-list and watch again")]
    WatchLagged {
        /// The watched prefix.
        prefix: String,
        /// The last revision the watcher received.
        revision: Revision,
    },
    /// A key is empty, malformed or too long.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key (possibly cut short).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value is over the size limit.
    #[error("value for {key} is {size} bytes, over the limit of {limit} bytes")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// The value's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A continue token that this store did not issue for this list.
    #[error("invalid continue token: {reason}")]
    InvalidContinue {
        /// What is wrong with it.
        reason: String,
    },
    /// The store cannot serve requests (closed, unreachable, or failed after an I/O error).
    #[error("store unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
        /// The underlying cause, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Reading or writing the data on disk failed; the write was not acknowledged.
    #[error("{op} failed: {source}")]
    Io {
        /// What the store was doing.
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The data on disk is damaged in a way recovery cannot repair without losing
    /// acknowledged writes.
    #[error("store data is corrupt: {reason}")]
    Corrupt {
        /// Where and how.
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        StoreError::Unavailable {
            reason: reason.into(),
            source: None,
        }
    }
}

/// Short for `Result<T, StoreError>`.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
