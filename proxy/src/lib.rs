//! keelson-proxy: the service proxy — what kube-proxy does in Kubernetes.
//!
//! # Design
//!
//! A [`Proxy`] serves *frontends*: an address, port and protocol where clients connect
//! (a load balancer's address today; a Service's cluster IP or a node port later), each
//! with the *backends* (endpoint addresses) its traffic goes to. Whoever knows the
//! Services and their endpoints tells the proxy what to serve: [`Proxy::serve`] starts
//! serving a frontend or, when it is already served, gives it new backends;
//! [`Proxy::stop`] stops it. Today that is the all-in-one cluster's local cloud provider
//! (in the `keelson` crate), which serves `type: LoadBalancer` Services.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keelson_proxy::ProxyError> {
//! use keelson_proxy::{Frontend, Protocol, Proxy, UserspaceProxy};
//!
//! let proxy = UserspaceProxy::new();
//! let frontend = Frontend::new("127.0.0.2:80".parse().unwrap(), Protocol::Tcp);
//! // Connections to 127.0.0.2:80 go to the two backends in turn.
//! proxy.serve(frontend, vec!["127.1.0.2:8080".parse().unwrap(), "127.1.0.3:8080".parse().unwrap()]).await?;
//! // A backend went away: new connections go to the other one.
//! proxy.serve(frontend, vec!["127.1.0.3:8080".parse().unwrap()]).await?;
//! proxy.stop(&frontend).await;
//! # Ok(()) }
//! ```
//!
//! # Implementations
//!
//! [`UserspaceProxy`] is Keelson's first proxy, and needs no privileges: it listens on
//! each frontend itself, sends each new TCP connection to the next backend in round-robin
//! order (skipping backends that refuse it) and copies bytes both ways. Changing the
//! backends affects new connections only; stopping a frontend closes its listener and
//! cuts its open connections. Only TCP is served so far ([`Protocol`] is
//! non-exhaustive; UDP comes with the Service proxy).
//!
//! Every implementation runs the shared [`conformance`] suite.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod conformance;
mod proxy;
mod userspace;

pub use proxy::{Frontend, Protocol, Proxy, ProxyError};
pub use userspace::{UserspaceConfig, UserspaceProxy};

pub use keelson_core as core;
