//! keelson-scheduler: the scheduling framework, queue, cache and default plugins.
//!
//! Filled by issue 5. Like every component, it talks to the cluster only through the
//! client defined in `keelson-core`.

pub use keelson_core as core;
