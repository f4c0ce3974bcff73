//! Keelson: Kubernetes' cluster architecture as Rust crates.
//!
//! This facade re-exports the crates an application embeds. Today: the object model
//! ([`core`]), the store ([`store`]), the API server ([`apiserver`]), the scheduler
//! ([`scheduler`]), the controller runtime, built-in and cloud controllers
//! ([`controllers`]), the node agent with its runtimes ([`node`]) and the service proxy
//! ([`proxy`]); the add-ons join as they are built.
//!
//! [`Cluster`] assembles them into a whole cluster in one process — store, API server,
//! scheduler, controller manager and nodes — in one call, for tests (under paused tokio
//! time too), examples and `keelson up`, with [`LocalCloud`] as the cloud provider the
//! cloud controllers drive (its load balancers are served by the userspace proxy):
//!
//! ```no_run
//! # async fn demo() -> Result<(), keelson::ClusterError> {
//! let cluster = keelson::Cluster::builder().sim_nodes(3).build().await?;
//! let client = cluster.client();
//! # let _ = client;
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```

pub use keelson_apiserver as apiserver;
pub use keelson_controllers as controllers;
pub use keelson_core as core;
pub use keelson_node as node;
pub use keelson_proxy as proxy;
pub use keelson_scheduler as scheduler;
pub use keelson_store as store;

mod cloud;
mod cluster;

pub use cloud::{AddressRange, InvalidRange, LocalCloud, LocalCloudConfig};
pub use cluster::{Cluster, ClusterBuilder, ClusterError, ADMISSION_PLUGINS, SYSTEM_NAMESPACES};
