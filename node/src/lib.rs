//! keelson-node: the node agent, the `Runtime` trait with the process and simulated
//! runtimes, and the network plugins.
//!
//! Filled by issue 6.

pub use keelson_core as core;
