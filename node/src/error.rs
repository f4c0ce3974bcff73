//! The crate's errors.

use std::path::PathBuf;

/// What a [`Runtime`](crate::Runtime) operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The sandbox or container does not exist (or was removed).
    #[error("{kind} {id} not found")]
    NotFound {
        /// `sandbox` or `container`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The operation does not apply in the object's state (starting a running
    /// container, creating a container in a stopped sandbox).
    #[error("{0}")]
    InvalidState(String),
    /// The container's program cannot be found or executed (Kubernetes shows
    /// `RunContainerError`).
    #[error("{0}")]
    CommandNotFound(String),
    /// The container's configuration cannot be used (Kubernetes shows
    /// `CreateContainerError`).
    #[error("{0}")]
    InvalidConfig(String),
    /// The runtime failed to start the container (Kubernetes shows `RunContainerError`).
    #[error("failed to start the container: {0}")]
    StartFailed(String),
    /// The operation did not finish in time.
    #[error("{0} timed out")]
    Timeout(String),
    /// A file-system operation failed.
    #[error("failed to {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The runtime does not do this (a terminal, streaming exec in a simulated runtime).
    #[error("{0}")]
    Unsupported(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl RuntimeError {
    /// A not-found error for a container.
    pub fn container_not_found(id: &str) -> RuntimeError {
        RuntimeError::NotFound {
            kind: "container",
            id: id.to_owned(),
        }
    }

    /// A not-found error for a sandbox.
    pub fn sandbox_not_found(id: &str) -> RuntimeError {
        RuntimeError::NotFound {
            kind: "sandbox",
            id: id.to_owned(),
        }
    }

    /// Whether this is [`RuntimeError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::NotFound { .. })
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// What the agent, the network plugins and the fleet can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("{op}: {source}")]
    Api {
        /// What was being done.
        op: String,
        /// The client's error.
        #[source]
        source: Box<keelson_core::Error>,
    },
    /// A runtime operation failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The network plugin failed.
    #[error("network: {0}")]
    Network(String),
    /// The agent's configuration cannot be used.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file-system operation failed.
    #[error("failed to {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn api(op: impl Into<String>, source: keelson_core::Error) -> Error {
        Error::Api {
            op: op.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
