//! What several built-in controllers share: pod state, ownership claims, expectations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keelson_core::client::{Api, Patch};
use keelson_core::k8s_openapi::api::core::v1::Pod;
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keelson_core::{LabelSelector, ObjectMeta, Resource};
use parking_lot::Mutex;
use serde_json::json;
use tokio::time::Instant;

use crate::clock;
use crate::controller::Action;
use crate::events::{object_reference, EventType, Recorder};
use crate::object::{controller_of, ObjectRef};

/// Whether a pod counts towards its controller's replicas: not finished, not being
/// deleted.
pub fn is_pod_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// The pod's `Ready` condition, if any.
fn ready_condition(pod: &Pod) -> Option<&keelson_core::k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Whether the pod's `Ready` condition is `True`.
pub fn is_pod_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// How long until a ready pod counts as available after `min_ready_seconds`: `Some(0)`
/// when available now, `None` when not ready.
pub fn pod_available_in(pod: &Pod, min_ready_seconds: i32) -> Option<Duration> {
    let c = ready_condition(pod).filter(|c| c.status == "True")?;
    if min_ready_seconds <= 0 {
        return Some(Duration::ZERO);
    }
    let Some(since) = &c.last_transition_time else {
        return Some(Duration::ZERO);
    };
    let ready_for = clock::seconds_since(since);
    let left = i64::from(min_ready_seconds) - ready_for;
    Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
}

/// Whether the pod has been ready for at least `min_ready_seconds`.
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32) -> bool {
    pod_available_in(pod, min_ready_seconds).is_some_and(|d| d.is_zero())
}

/// The controller owner reference a controller sets on what it creates.
pub fn controller_ref<K: Resource>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version().into_owned(),
        kind: K::KIND.to_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Outcome of claiming one candidate child.
pub enum Claim {
    /// Owned (already, or adopted now).
    Owned,
    /// Not ours.
    NotOurs,
}

/// Claims candidates for `owner` as Kubernetes' controller-ref manager does: children
/// it controls stay if its selector matches them and are released otherwise (unless the
/// owner is being deleted); orphans the selector matches are adopted (unless the owner
/// or the orphan is being deleted). Adoption and release are JSON patches guarded by the
/// child's `resourceVersion` (adoption) or by the reference at its index (release).
///
/// # Errors
/// A failed adoption or release (the caller retries with backoff).
pub async fn claim<O: Resource, C: Resource>(
    api: &Api<C>,
    owner: &O,
    selector: &LabelSelector,
    candidates: Vec<Arc<C>>,
) -> keelson_core::Result<Vec<Arc<C>>> {
    let owner_uid = owner.meta().uid.clone().unwrap_or_default();
    let owner_deleting = owner.meta().deletion_timestamp.is_some();
    let mut owned = Vec::new();
    for c in candidates {
        let meta = c.meta();
        let matches = selector.matches_meta(meta);
        match controller_of(meta) {
            Some(r) if r.uid == owner_uid => {
                if matches || owner_deleting {
                    owned.push(c);
                } else {
                    release(api, meta, &owner_uid).await?;
                }
            }
            Some(_) => {}
            None => {
                if matches && !owner_deleting && meta.deletion_timestamp.is_none() {
                    adopt(api, meta, controller_ref(owner)).await?;
                    owned.push(c);
                }
            }
        }
    }
    Ok(owned)
}

async fn adopt<C: Resource>(
    api: &Api<C>,
    meta: &ObjectMeta,
    reference: OwnerReference,
) -> keelson_core::Result<()> {
    let name = meta.name.as_deref().unwrap_or_default();
    let ops = if meta
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta.resource_version},
            {"op": "add", "path": "/metadata/ownerReferences", "value": [reference]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta.resource_version},
            {"op": "add", "path": "/metadata/ownerReferences/-", "value": reference},
        ])
    };
    tracing::debug!(object = name, "adopting");
    api.patch(name, &Patch::Json(ops)).await.map(|_| ())
}

async fn release<C: Resource>(
    api: &Api<C>,
    meta: &ObjectMeta,
    owner_uid: &str,
) -> keelson_core::Result<()> {
    let name = meta.name.as_deref().unwrap_or_default();
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    let Some(i) = refs.iter().position(|r| r.uid == owner_uid) else {
        return Ok(());
    };
    let path = format!("/metadata/ownerReferences/{i}/uid");
    let ops = json!([
        {"op": "test", "path": path, "value": owner_uid},
        {"op": "remove", "path": format!("/metadata/ownerReferences/{i}")},
    ]);
    tracing::debug!(object = name, "releasing");
    match api.patch(name, &Patch::Json(ops)).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// How long an unmet expectation is trusted before the controller acts anyway.
const EXPECTATION_TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Expectation {
    adds: i64,
    deletes: std::collections::HashSet<ObjectRef>,
    set_at: Instant,
}

/// Creations and deletions a controller has asked for and not yet seen in its cache
/// (Kubernetes' controller expectations): until they are seen (or 5 minutes pass), the
/// cache is known to lag and the controller must not act on its counts again.
#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<ObjectRef, Expectation>>,
}

impl Expectations {
    /// Whether `key`'s expectations are met (or expired, or absent).
    pub fn satisfied(&self, key: &ObjectRef) -> bool {
        match self.inner.lock().get(key) {
            None => true,
            Some(e) => {
                (e.adds <= 0 && e.deletes.is_empty()) || e.set_at.elapsed() > EXPECTATION_TTL
            }
        }
    }

    /// Expects `adds` creations.
    pub fn expect_creations(&self, key: &ObjectRef, adds: i64) {
        self.inner.lock().insert(
            key.clone(),
            Expectation {
                adds,
                deletes: Default::default(),
                set_at: Instant::now(),
            },
        );
    }

    /// Expects the deletion of `pods`.
    pub fn expect_deletions(&self, key: &ObjectRef, pods: impl IntoIterator<Item = ObjectRef>) {
        self.inner.lock().insert(
            key.clone(),
            Expectation {
                adds: 0,
                deletes: pods.into_iter().collect(),
                set_at: Instant::now(),
            },
        );
    }

    /// One creation was seen, or will never happen (it failed).
    pub fn creation_observed(&self, key: &ObjectRef) {
        if let Some(e) = self.inner.lock().get_mut(key) {
            e.adds -= 1;
        }
    }

    /// A deletion was seen, or will never happen.
    pub fn deletion_observed(&self, key: &ObjectRef, pod: &ObjectRef) {
        if let Some(e) = self.inner.lock().get_mut(key) {
            e.deletes.remove(pod);
        }
    }

    /// Forgets `key` (its owner is gone).
    pub fn delete(&self, key: &ObjectRef) {
        self.inner.lock().remove(key);
    }
}

/// Sets the condition `new` in `conditions` as Kubernetes' condition helpers do: an
/// existing condition of the type with the same status and reason is left alone; with the
/// same status its `lastTransitionTime` is kept.
pub fn set_condition<C: Clone>(
    conditions: &mut Vec<C>,
    new: C,
    type_of: impl Fn(&C) -> &str,
    status_of: impl Fn(&C) -> &str,
    reason_of: impl Fn(&C) -> Option<&str>,
    keep_transition: impl FnOnce(&mut C, &C),
) {
    let t = type_of(&new).to_owned();
    if let Some(i) = conditions.iter().position(|c| type_of(c) == t) {
        let old = &conditions[i];
        if status_of(old) == status_of(&new) && reason_of(old) == reason_of(&new) {
            return;
        }
        let mut new = new;
        if status_of(old) == status_of(&new) {
            keep_transition(&mut new, old);
        }
        conditions[i] = new;
    } else {
        conditions.push(new);
    }
}

/// The kinds among `candidates` the server serves (a one-object list answers), as a
/// discovery step: kinds it answers 404 (or 405) for are left out.
pub async fn served_kinds(
    client: &keelson_core::client::Client,
    candidates: Vec<keelson_core::ResourceType>,
) -> Vec<keelson_core::ResourceType> {
    let probes = candidates.into_iter().map(|rt| async move {
        let params = keelson_core::client::ListParams::default().limit(1);
        match client.transport().list(&rt, &params).await {
            Ok(_) => Some(rt),
            Err(e) => {
                tracing::debug!(resource = %rt, error = %e, "resource not served; skipping it");
                None
            }
        }
    });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The index of objects that have no controller, by namespace: the orphans a controller
/// may adopt. With the owner-uid index it makes a claim cost what the owner owns, not
/// what its namespace holds.
pub const ORPHAN_INDEX: &str = "orphans-by-namespace";

/// The [`ORPHAN_INDEX`] function.
pub fn orphan_index<K: crate::object::Object>() -> crate::reflector::IndexFn<K> {
    Arc::new(|k: &K| {
        if controller_of(k.metadata()).is_none() {
            k.metadata().namespace.clone().into_iter().collect()
        } else {
            Vec::new()
        }
    })
}

/// Candidates for a claim by the owner with `uid` in `namespace`: what it owns (by the
/// owner-uid index) and the namespace's orphans (by [`ORPHAN_INDEX`], which the reader
/// must have).
pub fn claim_candidates<K: crate::object::Object>(
    reader: &crate::reflector::Reader<K>,
    namespace: &str,
    uid: &str,
) -> Vec<Arc<K>> {
    let mut out = reader.owned_by(uid);
    out.extend(reader.by_index(ORPHAN_INDEX, namespace));
    out
}

/// A merge patch setting `status` to `new`: every field of `new`, and `null` for the
/// fields `old` has that `new` does not (lists are replaced whole by merge patches).
/// Status writes go as patches so that they never conflict with spec or metadata writes
/// made since the cache was read.
pub fn status_merge_patch<S: serde::Serialize>(old: Option<&S>, new: &S) -> serde_json::Value {
    let new = serde_json::to_value(new).unwrap_or_default();
    let old = old.and_then(|o| serde_json::to_value(o).ok());
    let mut fields = match new {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    if let Some(serde_json::Value::Object(old)) = old {
        for k in old.keys() {
            if !fields.contains_key(k) {
                fields.insert(k.clone(), serde_json::Value::Null);
            }
        }
    }
    json!({ "status": fields })
}

/// A workload's selector, which must parse and select something. Otherwise records a
/// Warning event on `owner` — `SelectingAll` ("This `what` is selecting all pods. A
/// non-empty selector is required.", Kubernetes' words) or `InvalidSelector` with the parse
/// error — and gives back the reconcile's answer: wait until the object changes.
///
/// # Errors
/// The [`Action`] to return when there is no usable selector.
pub async fn workload_selector<K: Resource>(
    recorder: &Recorder,
    owner: &K,
    selector: Option<&keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    what: &str,
) -> Result<LabelSelector, Action> {
    let (reason, message) = match selector.map(LabelSelector::from_k8s) {
        Some(Ok(s)) if !s.is_empty() => return Ok(s),
        Some(Err(e)) => ("InvalidSelector", e.to_string()),
        None | Some(Ok(_)) => (
            "SelectingAll",
            format!("This {what} is selecting all pods. A non-empty selector is required."),
        ),
    };
    recorder
        .emit(
            &object_reference(owner),
            EventType::Warning,
            reason,
            &message,
        )
        .await;
    Err(Action::await_change())
}

/// A reconcile of a built-in controller failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("{action} failed: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: keelson_core::Error,
    },
    /// The new ReplicaSet's name is taken by one with another template (Deployment).
    #[error("hash collision on ReplicaSet {0}; collisionCount raised")]
    Collision(String),
    /// The revision history could not be synced (StatefulSet, DaemonSet).
    #[error(transparent)]
    History(#[from] super::history::SyncError),
}

/// Maps a failed API call to [`Error::Api`], naming what was being done.
pub fn api_err(action: impl Into<String>) -> impl FnOnce(keelson_core::Error) -> Error {
    let action = action.into();
    move |source| Error::Api { action, source }
}
