//! The [`Proxy`] trait and what it speaks of.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use async_trait::async_trait;

/// A transport protocol a frontend serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Protocol {
    /// TCP: each connection goes to one backend.
    Tcp,
}

impl Protocol {
    /// The protocol of a Kubernetes port (`TCP`, the default when absent); `None` for
    /// the ones no proxy here serves (`UDP`, `SCTP`).
    pub fn from_k8s(protocol: Option<&str>) -> Option<Protocol> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            _ => None,
        }
    }

    /// The Kubernetes name (`TCP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where clients connect: an address, a port and a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// The address and port.
    pub addr: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
}

impl Frontend {
    /// The frontend at `addr` for `protocol`.
    pub fn new(addr: SocketAddr, protocol: Protocol) -> Frontend {
        Frontend { addr, protocol }
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)
    }
}

/// A proxy could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The frontend's address could not be listened on (in use, not local, no
    /// permission for a low port).
    #[error("failed to listen on {frontend}: {source}")]
    Listen {
        /// The frontend.
        frontend: Frontend,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The proxy was shut down and serves nothing any more.
    #[error("failed to serve {0}: the proxy is shut down")]
    ShutDown(Frontend),
}

impl ProxyError {
    /// Whether the frontend's address is taken by another listener (so another address
    /// may do).
    pub fn is_addr_in_use(&self) -> bool {
        matches!(self, ProxyError::Listen { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
    }
}

/// A service proxy: serves frontends, sending their traffic to backends.
///
/// Contracts, which the [`conformance`](crate::conformance) suite checks:
/// - [`serve`](Proxy::serve) is idempotent: serving a frontend that is already served
///   keeps it (listener and open connections) and replaces its backends, which new
///   connections use;
/// - new connections are spread over the backends, and a backend that refuses a
///   connection is skipped for a working one;
/// - a frontend without backends accepts nothing useful: clients are disconnected at
///   once;
/// - [`stop`](Proxy::stop) stops listening and cuts the frontend's open connections;
///   stopping a frontend that is not served does nothing.
#[async_trait]
pub trait Proxy: Send + Sync + 'static {
    /// Serves `frontend`, sending its traffic to `backends` (see the trait's contracts).
    ///
    /// # Errors
    /// [`ProxyError::Listen`] when the frontend cannot be listened on (nothing is then
    /// served for it); [`ProxyError::ShutDown`] after the proxy was shut down.
    async fn serve(&self, frontend: Frontend, backends: Vec<SocketAddr>) -> Result<(), ProxyError>;

    /// Stops serving `frontend` and cuts its connections.
    async fn stop(&self, frontend: &Frontend);

    /// What is served: every frontend with its backends.
    fn served(&self) -> BTreeMap<Frontend, Vec<SocketAddr>>;
}
