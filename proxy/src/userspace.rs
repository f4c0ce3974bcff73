//! [`UserspaceProxy`]: frontends served by listeners of its own.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::proxy::{Frontend, Protocol, Proxy, ProxyError};

/// How a [`UserspaceProxy`] connects to backends.
#[derive(Clone, Debug)]
pub struct UserspaceConfig {
    /// How long one connection attempt to a backend may take before the next backend is
    /// tried (default 5 s).
    pub connect_timeout: Duration,
}

impl Default for UserspaceConfig {
    fn default() -> Self {
        UserspaceConfig {
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A frontend's backends, shared with its listener's task.
struct Backends {
    list: RwLock<Arc<[SocketAddr]>>,
    next: AtomicUsize,
    open: AtomicUsize,
}

impl Backends {
    fn new(list: Vec<SocketAddr>) -> Backends {
        Backends {
            list: RwLock::new(list.into()),
            next: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
        }
    }

    /// Every backend, starting with the next one in round-robin order.
    fn rotation(&self) -> Vec<SocketAddr> {
        let list = self.list.read().clone();
        if list.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % list.len();
        list[start..]
            .iter()
            .chain(&list[..start])
            .copied()
            .collect()
    }
}

struct Served {
    backends: Arc<Backends>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    served: HashMap<Frontend, Served>,
    closed: bool,
}

/// The userspace proxy: a listener per frontend, bytes copied to and from a backend per
/// connection (see the [crate docs](crate)).
///
/// Its listeners run on the tokio runtime that called [`Proxy::serve`]. Dropping the
/// proxy, or [`UserspaceProxy::shutdown`], stops every frontend.
pub struct UserspaceProxy {
    config: UserspaceConfig,
    state: Mutex<State>,
}

impl fmt::Debug for UserspaceProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("UserspaceProxy")
            .field("frontends", &state.served.len())
            .field("closed", &state.closed)
            .finish()
    }
}

impl Default for UserspaceProxy {
    fn default() -> Self {
        UserspaceProxy::new()
    }
}

impl UserspaceProxy {
    /// A proxy serving nothing yet, with the default [`UserspaceConfig`].
    pub fn new() -> UserspaceProxy {
        UserspaceProxy::with_config(UserspaceConfig::default())
    }

    /// A proxy serving nothing yet.
    pub fn with_config(config: UserspaceConfig) -> UserspaceProxy {
        UserspaceProxy {
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// Stops every frontend (listeners closed, connections cut) and refuses to serve
    /// any more. Does not wait: the sockets close as the runtime cancels their tasks.
    pub fn shutdown(&self) {
        let served = {
            let mut state = self.state.lock();
            state.closed = true;
            std::mem::take(&mut state.served)
        };
        for (frontend, s) in served {
            tracing::debug!(%frontend, "proxy shutting down: frontend stopped");
            s.task.abort();
        }
    }

    /// How many client connections `frontend` has open (`None` when it is not served).
    pub fn open_connections(&self, frontend: &Frontend) -> Option<usize> {
        let state = self.state.lock();
        let served = state.served.get(frontend)?;
        Some(served.backends.open.load(Ordering::Relaxed))
    }
}

impl Drop for UserspaceProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[async_trait]
impl Proxy for UserspaceProxy {
    async fn serve(&self, frontend: Frontend, backends: Vec<SocketAddr>) -> Result<(), ProxyError> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(ProxyError::ShutDown(frontend));
        }
        if let Some(served) = state.served.get(&frontend) {
            if **served.backends.list.read() != *backends {
                tracing::debug!(%frontend, ?backends, "backends changed");
                *served.backends.list.write() = backends.into();
            }
            return Ok(());
        }
        // Binding is one quick system call; doing it under the lock makes two calls for
        // one new frontend agree instead of one of them finding the address in use.
        let listener = match frontend.protocol {
            Protocol::Tcp => std::net::TcpListener::bind(frontend.addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std),
        }
        .map_err(|source| ProxyError::Listen { frontend, source })?;
        tracing::info!(%frontend, ?backends, "serving");
        let shared = Arc::new(Backends::new(backends));
        let task = tokio::spawn(accept_loop(
            frontend,
            listener,
            shared.clone(),
            self.config.clone(),
        ));
        state.served.insert(
            frontend,
            Served {
                backends: shared,
                task,
            },
        );
        Ok(())
    }

    async fn stop(&self, frontend: &Frontend) {
        let served = self.state.lock().served.remove(frontend);
        if let Some(s) = served {
            tracing::info!(%frontend, "stopped serving");
            s.task.abort();
        }
    }

    fn served(&self) -> BTreeMap<Frontend, Vec<SocketAddr>> {
        self.state
            .lock()
            .served
            .iter()
            .map(|(f, s)| (*f, s.backends.list.read().to_vec()))
            .collect()
    }
}

/// Accepts the frontend's connections until aborted; aborting it drops the set of
/// connection tasks, which aborts them too.
async fn accept_loop(
    frontend: Frontend,
    listener: TcpListener,
    backends: Arc<Backends>,
    config: UserspaceConfig,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    connections.spawn(forward(frontend, client, peer, backends.clone(), config.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: wait a little rather than spin.
                    tracing::warn!(%frontend, error = %e, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<Backends>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn forward(
    frontend: Frontend,
    mut client: TcpStream,
    peer: SocketAddr,
    backends: Arc<Backends>,
    config: UserspaceConfig,
) {
    backends.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(backends.clone());
    let mut upstream = None;
    for backend in backends.rotation() {
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(backend)).await {
            Ok(Ok(stream)) => {
                upstream = Some((backend, stream));
                break;
            }
            Ok(Err(e)) => {
                tracing::debug!(%frontend, %backend, error = %e, "backend refused a connection; trying the next");
            }
            Err(_) => {
                tracing::debug!(%frontend, %backend, "connecting to the backend timed out; trying the next");
            }
        }
    }
    let Some((backend, mut upstream)) = upstream else {
        tracing::debug!(%frontend, %peer, "no backend took the connection; closing it");
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::trace!(%frontend, %peer, %backend, up, down, "connection closed");
        }
        Err(e) => {
            tracing::debug!(%frontend, %peer, %backend, error = %e, "connection failed");
        }
    }
}
