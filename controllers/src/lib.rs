//! keelson-controllers: the controller runtime (informers, work queue, reconcilers) and
//! the built-in controllers, including the cloud controllers.
//!
//! Filled by issue 7.

pub use keelson_core as core;
