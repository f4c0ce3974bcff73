//! Finalizers: run cleanup before an object goes.
//!
//! [`finalizer`] wraps a reconcile: it adds the finalizer to a live object that lacks it,
//! runs the `Apply` branch for live objects, and for an object being deleted runs the
//! `Cleanup` branch and then removes the finalizer so the API server can delete it. The
//! finalizer is added and removed with JSON patches guarded by a `test` of the list
//! (or of the `resourceVersion` when the list is absent), so a concurrent change to the
//! finalizers makes the patch fail instead of overwriting another controller's entry.

use std::future::Future;
use std::sync::Arc;

use keelson_core::client::{Api, Patch};
use keelson_core::Resource;
use serde_json::json;

use crate::controller::Action;

/// Which branch of a finalizer-guarded reconcile to run.
#[derive(Debug)]
pub enum Event<K> {
    /// The object is live: converge it.
    Apply(Arc<K>),
    /// The object is being deleted: clean up what it holds.
    Cleanup(Arc<K>),
}

/// A finalizer step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error<E: std::error::Error + 'static> {
    /// The apply branch failed.
    #[error("apply failed: {0}")]
    ApplyFailed(#[source] E),
    /// The cleanup branch failed (the finalizer stays).
    #[error("cleanup failed: {0}")]
    CleanupFailed(#[source] E),
    /// Adding the finalizer failed.
    #[error("failed to add finalizer {name}: {source}")]
    AddFinalizer {
        /// The finalizer.
        name: String,
        /// The cause.
        #[source]
        source: keelson_core::Error,
    },
    /// Removing the finalizer failed.
    #[error("failed to remove finalizer {name}: {source}")]
    RemoveFinalizer {
        /// The finalizer.
        name: String,
        /// The cause.
        #[source]
        source: keelson_core::Error,
    },
    /// The object has no name.
    #[error("the object has no name")]
    Unnamed,
}

/// Whether `obj` lists finalizer `name`.
pub fn has_finalizer<K: Resource>(obj: &K, name: &str) -> bool {
    obj.meta()
        .finalizers
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|f| f == name)
}

/// Adds finalizer `name` to `obj` (nothing if present).
///
/// # Errors
/// [`keelson_core::Error::Invalid`] or `Conflict`-like failures of the guarded patch when
/// the object changed meanwhile; not-found.
pub async fn add_finalizer<K: Resource>(
    api: &Api<K>,
    obj: &K,
    name: &str,
) -> keelson_core::Result<()> {
    if has_finalizer(obj, name) {
        return Ok(());
    }
    let obj_name = obj.meta().name.as_deref().unwrap_or_default();
    let ops = match &obj.meta().finalizers {
        Some(list) if !list.is_empty() => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": list},
            {"op": "add", "path": "/metadata/finalizers/-", "value": name},
        ]),
        _ => json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": obj.meta().resource_version},
            {"op": "add", "path": "/metadata/finalizers", "value": [name]},
        ]),
    };
    api.patch(obj_name, &Patch::Json(ops)).await.map(|_| ())
}

/// Removes finalizer `name` from `obj` (nothing if absent).
///
/// # Errors
/// As [`add_finalizer`].
pub async fn remove_finalizer<K: Resource>(
    api: &Api<K>,
    obj: &K,
    name: &str,
) -> keelson_core::Result<()> {
    let list = obj.meta().finalizers.as_deref().unwrap_or_default();
    let Some(i) = list.iter().position(|f| f == name) else {
        return Ok(());
    };
    let obj_name = obj.meta().name.as_deref().unwrap_or_default();
    let path = format!("/metadata/finalizers/{i}");
    let ops = json!([
        {"op": "test", "path": path, "value": name},
        {"op": "remove", "path": path},
    ]);
    match api.patch(obj_name, &Patch::Json(ops)).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs `reconcile` under finalizer `name` (see the [module docs](self)).
///
/// # Errors
/// The branch's error, or the failure to add or remove the finalizer.
pub async fn finalizer<K, E, F, Fut>(
    api: &Api<K>,
    name: &str,
    obj: Arc<K>,
    reconcile: F,
) -> Result<Action, Error<E>>
where
    K: Resource,
    E: std::error::Error + 'static,
    F: FnOnce(Event<K>) -> Fut,
    Fut: Future<Output = Result<Action, E>>,
{
    if obj.meta().name.is_none() {
        return Err(Error::Unnamed);
    }
    let deleting = obj.meta().deletion_timestamp.is_some();
    match (deleting, has_finalizer(obj.as_ref(), name)) {
        (false, true) => reconcile(Event::Apply(obj))
            .await
            .map_err(Error::ApplyFailed),
        (false, false) => {
            add_finalizer(api, obj.as_ref(), name)
                .await
                .map_err(|source| Error::AddFinalizer {
                    name: name.to_owned(),
                    source,
                })?;
            // The patch is a change: the next reconcile runs the apply branch.
            Ok(Action::await_change())
        }
        (true, true) => {
            let action = reconcile(Event::Cleanup(obj.clone()))
                .await
                .map_err(Error::CleanupFailed)?;
            remove_finalizer(api, obj.as_ref(), name)
                .await
                .map_err(|source| Error::RemoveFinalizer {
                    name: name.to_owned(),
                    source,
                })?;
            Ok(action)
        }
        (true, false) => Ok(Action::await_change()),
    }
}
