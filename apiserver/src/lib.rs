//! keelson-apiserver: the Kubernetes-compatible API server.
//!
//! Being built (issue 3). The pieces, each in its own module:
//!
//! - `resources`: the list of served resources (kind, verbs, subresources, schema) that
//!   discovery, OpenAPI and the routes are built from;
//! - `discovery`: `/version`, aggregated and legacy discovery documents;
//! - `openapi`: OpenAPI v3 documents generated from the kinds' schemas;
//! - `table`: the `meta.k8s.io/v1` Table form of lists and watch events, with the columns
//!   kubectl shows for each built-in kind;
//! - `registry`: object semantics over a `Store` (names, uid, timestamps, resource versions,
//!   generation, namespaces, finalizers, selectors, pagination, watch), shared by every
//!   transport;
//! - `rest`: the HTTP front on axum.

pub mod allocator;
pub mod auth;
pub mod cache;
mod defaults;
pub mod discovery;
pub mod openapi;
pub mod patch;
pub mod registry;
pub mod resources;
pub mod rest;
pub mod table;
pub mod tls;
pub mod validation;

pub use keelson_core as core;
pub use registry::Registry;
pub use resources::{ServedResource, Subresource, STANDARD_VERBS};
pub use rest::{router, ApiServer};
