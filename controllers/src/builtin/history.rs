//! ControllerRevisions: the pod-template history of StatefulSets and DaemonSets.
//!
//! As Kubernetes' history helpers: a revision holds `{"spec": {"template": ...,
//! "$patch": "replace"}}` (what `kubectl rollout undo` applies back), is named
//! `<owner>-<hash>` (FNV-1a of the data and the owner's `collisionCount`, in the safe
//! alphabet) with the label `controller.kubernetes.io/hash: <hash>`, carries the owner's
//! selector labels and a controller reference, and has a `revision` number one more than
//! the highest before it. Going back to an earlier template re-numbers that revision
//! rather than creating a duplicate.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use keelson_core::client::{Api, DeleteOptions, Patch};
use keelson_core::k8s_openapi::api::apps::v1::ControllerRevision;
use keelson_core::k8s_openapi::api::core::v1::PodTemplateSpec;
use keelson_core::k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use keelson_core::Resource;
use serde_json::{json, Value};

use super::common::controller_ref;

/// The label a ControllerRevision carries its hash in.
pub const HASH_LABEL: &str = "controller.kubernetes.io/hash";
/// The pod label naming the revision (StatefulSets: the revision's name; DaemonSets: its
/// hash) a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// Kubernetes' alphabet for generated name parts (no vowels, no confusable digits).
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The hash of revision `data` with the owner's collision count, as a name suffix.
pub fn hash(data: &Value, collision_count: i32) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(data).unwrap_or_default());
    if collision_count != 0 {
        feed(&collision_count.to_le_bytes());
    }
    h.to_string()
        .bytes()
        .map(|b| char::from(SAFE[usize::from(b) % SAFE.len()]))
        .collect()
}

/// The revision data of a pod template.
pub fn data_of(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The pod template a revision holds.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// The hash part of a revision (its label, or its name after the owner's).
pub fn hash_of(rev: &ControllerRevision) -> String {
    rev.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(HASH_LABEL))
        .cloned()
        .unwrap_or_else(|| {
            let name = rev.metadata.name.as_deref().unwrap_or_default();
            name.rsplit('-').next().unwrap_or(name).to_owned()
        })
}

fn same_data(rev: &ControllerRevision, data: &Value) -> bool {
    rev.data.as_ref().is_some_and(|d| &d.0 == data)
}

/// The outcome of [`sync`].
#[derive(Debug)]
pub struct Synced {
    /// Every revision of the owner, oldest (lowest `revision`) first.
    pub revisions: Vec<ControllerRevision>,
    /// The revision of the owner's current template.
    pub update: ControllerRevision,
    /// The owner's collision count after the sync.
    pub collision_count: i32,
}

/// A revision could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// An API call failed.
    #[error("{action} failed: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: keelson_core::Error,
    },
    /// The revision name is taken by another template; the collision count was raised.
    #[error("hash collision on ControllerRevision {0}; collisionCount raised to {1}")]
    Collision(String, i32),
}

/// Makes sure a revision of `template` exists and is the newest of `owner`'s
/// `existing` revisions: reuses (and re-numbers) an equal one, or creates one.
///
/// # Errors
/// A failed API call, or [`SyncError::Collision`] (retry with the returned count).
pub async fn sync<O: Resource>(
    api: &Api<ControllerRevision>,
    owner: &O,
    labels: BTreeMap<String, String>,
    template: &PodTemplateSpec,
    existing: Vec<Arc<ControllerRevision>>,
    collision_count: i32,
) -> Result<Synced, SyncError> {
    let mut revisions: Vec<ControllerRevision> = existing
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .map(|r| (**r).clone())
        .collect();
    revisions.sort_by_key(|r| (r.revision, r.metadata.name.clone()));
    let data = data_of(template);
    let max = revisions.last().map_or(0, |r| r.revision);
    if let Some(i) = revisions.iter().rposition(|r| same_data(r, &data)) {
        if revisions[i].revision != max {
            // Back to an earlier template: it becomes the newest revision.
            let name = revisions[i].metadata.name.clone().unwrap_or_default();
            let updated = api
                .patch(&name, &Patch::Merge(json!({"revision": max + 1})))
                .await
                .map_err(|source| SyncError::Api {
                    action: format!("renumbering ControllerRevision {name}"),
                    source,
                })?;
            revisions.remove(i);
            revisions.push(updated);
        } else {
            let r = revisions.remove(i);
            revisions.push(r);
        }
        let update = revisions.last().cloned().unwrap_or_default();
        return Ok(Synced {
            revisions,
            update,
            collision_count,
        });
    }
    let owner_name = owner.meta().name.clone().unwrap_or_default();
    let h = hash(&data, collision_count);
    let mut rev = ControllerRevision::default();
    rev.metadata.name = Some(format!("{owner_name}-{h}"));
    rev.metadata.namespace.clone_from(&owner.meta().namespace);
    let mut labels = labels;
    labels.insert(HASH_LABEL.into(), h);
    rev.metadata.labels = Some(labels);
    rev.metadata.owner_references = Some(vec![controller_ref(owner)]);
    rev.data = Some(RawExtension(data.clone()));
    rev.revision = max + 1;
    let name = rev.metadata.name.clone().unwrap_or_default();
    let created = match api.create(&rev).await {
        Ok(r) => r,
        Err(e) if e.is_already_exists() => {
            let found = api.get(&name).await.map_err(|source| SyncError::Api {
                action: format!("reading ControllerRevision {name}"),
                source,
            })?;
            let owner_uid = owner.meta().uid.as_deref().unwrap_or_default();
            let ours =
                crate::object::controller_of(&found.metadata).is_some_and(|r| r.uid == owner_uid);
            if !ours || !same_data(&found, &data) {
                return Err(SyncError::Collision(name, collision_count + 1));
            }
            found
        }
        Err(source) => {
            return Err(SyncError::Api {
                action: format!("creating ControllerRevision {name}"),
                source,
            })
        }
    };
    revisions.push(created.clone());
    Ok(Synced {
        revisions,
        update: created,
        collision_count,
    })
}

/// Deletes the oldest revisions beyond `limit` that neither `keep` names nor a live pod
/// uses (`live` holds the revision names or hashes in use).
///
/// # Errors
/// A failed deletion (other than the revision being gone already).
pub async fn truncate(
    api: &Api<ControllerRevision>,
    revisions: &[ControllerRevision],
    live: &HashSet<String>,
    limit: i32,
) -> Result<(), keelson_core::Error> {
    let unused: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| {
            let name = r.metadata.name.as_deref().unwrap_or_default();
            !live.contains(name) && !live.contains(&hash_of(r))
        })
        .collect();
    let limit = usize::try_from(limit.max(0)).unwrap_or(0);
    if unused.len() <= limit {
        return Ok(());
    }
    for r in &unused[..unused.len() - limit] {
        let name = r.metadata.name.as_deref().unwrap_or_default();
        match api.delete(name, &DeleteOptions::default()).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
