//! keelson-core: the object model every Keelson crate shares.
//!
//! Keelson builds Kubernetes' architecture out of Rust crates; this one holds the types
//! and traits they all speak, and the client every component talks to the cluster through:
//!
//! - **Kinds.** [`Resource`] is a Rust type that is a kind of object: its group,
//!   version, kind, plural, scope and JSON schema, and its [`ObjectMeta`]. It is
//!   implemented for the built-in kinds of [`k8s_openapi`] (Kubernetes 1.33), so the wire
//!   format is Kubernetes' own; [`impl_resource!`] implements it in one line for your
//!   own `serde` + `schemars` types. [`ResourceType`] describes a kind at run time
//!   (including the short names and categories `kubectl` uses), and
//!   [`builtin_resource_types`] lists the built-in ones.
//! - **Objects of any kind.** [`DynamicObject`] holds an object whose kind is known only
//!   at run time, and converts to and from typed objects.
//! - **Keys.** [`ResourceType::key`] and [`ResourceType::prefix`] name where objects live
//!   in a store: `/registry/<group>/<plural>/<namespace>/<name>`, with `core` for the
//!   core group.
//! - **Selectors.** [`LabelSelector`] and [`FieldSelector`] parse, print and evaluate
//!   Kubernetes' selector syntax with Kubernetes' error messages.
//! - **Errors.** [`Error`] has the variants callers branch on, and turns into the
//!   Kubernetes `Status` a client expects ([`Error::to_status`]).
//! - **The client.** [`client::Client`] and the typed [`client::Api`] handles: how every
//!   Keelson component reads, writes and watches the cluster, over the in-process
//!   transport of `keelson-apiserver` or over HTTP(S) to any Kubernetes-compatible server
//!   (feature `http`).
//!
//! Start with [`Resource`] and [`ResourceType`]:
//!
//! ```
//! use keelson_core::{Resource, Scope, k8s_openapi::api::core::v1::Pod};
//!
//! let pods = Pod::resource_type();
//! assert_eq!((pods.api_version().as_str(), &*pods.plural, pods.scope), ("v1", "pods", Scope::Namespaced));
//! assert_eq!(pods.key(Some("default"), "web")?, "/registry/core/pods/default/web");
//! # Ok::<(), keelson_core::Error>(())
//! ```
//!
//! One optional feature, `http`, adds the client's HTTP transport (hyper, rustls and a
//! kubeconfig reader); without it the crate does no I/O. It re-exports [`k8s_openapi`] (built with the
//! `v1_33` and `schemars` features) and [`schemars`], so that users get the versions
//! Keelson uses.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod builtin;
pub mod client;
pub mod cron;
mod dynamic;
mod error;
mod fields;
mod gvk;
mod labels;
mod resource;

pub use builtin::builtin_resource_types;
pub use dynamic::DynamicObject;
pub use error::{CauseType, Error, FieldError};
pub use fields::{
    escape_value as escape_field_value, field_value, FieldOperator, FieldRequirement,
    FieldSelector, METADATA_FIELDS,
};
pub use gvk::{GroupKind, GroupResource, GroupVersionKind};
pub use labels::{validate_label_key, validate_label_value, LabelSelector, Operator, Requirement};
pub use resource::{PrinterColumn, Resource, ResourceType, Scope, CORE_GROUP_SEGMENT, KEY_ROOT};

pub use k8s_openapi;
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
pub use schemars;

/// A `Result` whose error is Keelson's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
