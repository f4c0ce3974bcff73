//! keelson-apiserver: the Kubernetes-compatible API server.
//!
//! The registry (object semantics), the REST front, authentication and admission live
//! here. This crate is filled by issues 3 and 4; today it only re-exports the object model
//! it is built on.

pub use keelson_core as core;
