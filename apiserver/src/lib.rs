//! keelson-apiserver: the Kubernetes-compatible API server (issue 3 in progress).
//!
//! Start with [`Registry`] (object semantics over a `keelson_store::Store`, shared by every
//! transport) and [`router`] (the HTTP front). `keelson up` puts them together:
//!
//! ```text
//!  HTTP(S) ─▶ auth ─▶ rest (parse path, negotiate JSON/Table, fieldValidation)
//!                       └─▶ registry: defaults ─▶ validation ─▶ allocation ─▶ store
//!                                       reads/watches ◀─ cache (one store watch per kind)
//! ```
//!
//! The modules:
//! - `resources`: the served resources (kind, verbs, subresources, schema) that discovery,
//!   OpenAPI and routing are built from;
//! - `registry`: names, uid, timestamps, resource versions, generation, namespaces,
//!   finalizers, graceful deletion, status kept apart, selectors, pagination, watch;
//! - `defaults`, `validation`, `allocator`, `patch`, `strategic`: Kubernetes defaulting;
//!   required fields and unknown fields (`fieldValidation`); Service cluster IPs and node
//!   ports; JSON merge patch, JSON patch and strategic merge patch;
//! - `crd`: CustomResourceDefinitions — the controller that serves the kinds they
//!   define, their validation, and the clean-up when one is deleted;
//! - `subresources`: `scale`, `binding` and `eviction` (honouring PodDisruptionBudgets);
//! - `cache`: the watch cache — the store's bytes of every object (decoded on read, one
//!   decoded copy shared while in use) and recent events shared by every watcher; whole
//!   lists and reads over HTTP copy the stored bytes without decoding;
//! - `discovery`, `openapi`, `table`: `/version`, discovery documents, OpenAPI v3 from the
//!   kinds' schemas, and the Table form with kubectl's columns;
//! - `admission`: the mutating and validating plugins users add to every write;
//! - `client` (`ApiServer::client`): the in-process transport of `keelson_core`'s client;
//! - `rest`: the HTTP front on axum; `auth` and `tls`: bearer tokens, client certificates,
//!   the generated CA and the HTTPS server.

pub mod admission;
pub mod allocator;
pub mod apply;
pub mod auth;
pub mod cache;
pub mod catalog;
mod client;
pub mod crd;
mod defaults;
pub mod discovery;
mod nodeproxy;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod resources;
pub mod rest;
pub mod satoken;
mod stored;
pub mod strategic;
mod subresources;
pub mod table;
pub mod tls;
pub mod validation;

pub use keelson_core as core;
pub use registry::Registry;
pub use resources::{ServedResource, Subresource, STANDARD_VERBS};
pub use rest::{router, ApiServer};
