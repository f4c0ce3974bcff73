//! keelson-addons: cluster DNS, the dashboard, metrics and logging.
//!
//! Filled by a later issue.

pub use keelson_core as core;
