//! Keelson: Kubernetes' cluster architecture as Rust crates.
//!
//! This facade re-exports the crates an application embeds. Today: the object model
//! ([`core`]), the store ([`store`]), the API server ([`apiserver`]), the scheduler
//! ([`scheduler`]), the controller runtime and built-in controllers ([`controllers`]) and
//! the node agent with its runtimes ([`node`]); the proxy and add-ons join as they are
//! built.

pub use keelson_apiserver as apiserver;
pub use keelson_controllers as controllers;
pub use keelson_core as core;
pub use keelson_node as node;
pub use keelson_scheduler as scheduler;
pub use keelson_store as store;
