//! The garbage collector: deletes objects whose owners are gone, and carries out
//! foreground and orphan deletion.
//!
//! It caches the metadata of every object of every kind it is given (one
//! [`MetadataApi`] informer per kind, indexed by owner uid and by uid) and works on a
//! queue of objects, with Kubernetes' rules:
//!
//! - **Background**: an object none of whose owners exists any more (each absent owner is
//!   confirmed with a live read, so a lagging cache never deletes anything) is deleted,
//!   with the propagation its own finalizers ask for. Owner references to owners that
//!   are gone are removed from objects that still have a live owner.
//! - **Foreground**: an owner being deleted with the `foregroundDeletion` finalizer has
//!   all its dependents deleted (in foreground themselves when they have dependents, so
//!   whole chains go bottom-up); once no dependent that references it with
//!   `blockOwnerDeletion: true` is left, the finalizer is removed and the owner goes.
//! - **Orphan**: an owner being deleted with the `orphan` finalizer has its reference
//!   removed from every dependent, then the finalizer removed.
//!
//! Every delete carries the object's uid as a precondition; every ownerReferences edit is
//! a JSON patch guarded by a `test`, so a concurrent change makes it fail and retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keelson_core::client::{Client, DeleteOptions, Patch, PropagationPolicy};
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keelson_core::{builtin_resource_types, GroupVersionKind, ResourceType};
use serde_json::json;

use crate::informer::InformerFactory;
use crate::object::{MetadataApi, ObjectRef, PartialObjectMeta};
use crate::reflector::{Change, Reader};
use crate::watcher;
use crate::workqueue::WorkQueue;

/// The finalizer of foreground deletion.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of orphan deletion.
pub const ORPHAN: &str = "orphan";
const UID_INDEX: &str = "uid";

/// A garbage collection step failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {object} failed: {source}")]
pub struct Error {
    action: &'static str,
    object: String,
    #[source]
    source: keelson_core::Error,
}

/// The kinds the collector watches by default: every built-in kind but Events (which
/// nothing owns; they expire on their own).
pub fn default_kinds() -> Vec<ResourceType> {
    builtin_resource_types()
        .into_iter()
        .filter(|rt| rt.kind != "Event")
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Item {
    kind: usize,
    key: ObjectRef,
}

struct Kinds {
    types: Vec<ResourceType>,
    readers: Vec<Reader<PartialObjectMeta>>,
    by_gvk: HashMap<(String, String), usize>,
}

impl Kinds {
    fn of_ref(&self, r: &OwnerReference) -> Option<usize> {
        let gvk = GroupVersionKind::from_api_version(&r.api_version, r.kind.clone());
        self.by_gvk.get(&(gvk.group, gvk.kind)).copied()
    }

    /// Every cached object that lists `uid` among its owners.
    fn dependents(&self, uid: &str) -> Vec<(usize, Arc<PartialObjectMeta>)> {
        self.readers
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.owned_by(uid).into_iter().map(move |o| (i, o)))
            .collect()
    }

    fn find_uid(&self, kind: usize, uid: &str) -> Option<Arc<PartialObjectMeta>> {
        self.readers[kind]
            .by_index(UID_INDEX, uid)
            .into_iter()
            .next()
    }
}

/// The garbage collector.
pub struct GarbageCollector {
    client: Client,
    kinds: Arc<Kinds>,
    queue: WorkQueue<Item>,
    workers: usize,
    /// Keeps the watches running.
    _informers: Vec<crate::Informer<PartialObjectMeta>>,
}

impl std::fmt::Debug for GarbageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarbageCollector")
            .field("kinds", &self.kinds.types.len())
            .finish_non_exhaustive()
    }
}

enum OwnerState {
    Solid,
    Dangling,
    /// Being deleted in the foreground.
    Waiting,
}

fn has_finalizer(m: &PartialObjectMeta, f: &str) -> bool {
    m.metadata
        .finalizers
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|x| x == f)
}

impl GarbageCollector {
    /// A collector over those of `kinds` (see [`default_kinds`]) the server serves, its
    /// informers from `factory`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn new(
        client: &Client,
        factory: &InformerFactory,
        kinds: Vec<ResourceType>,
    ) -> GarbageCollector {
        let kinds = super::common::served_kinds(client, kinds).await;
        let mut readers = Vec::new();
        let mut by_gvk = HashMap::new();
        let mut informers = Vec::new();
        for (i, rt) in kinds.iter().enumerate() {
            let informer = factory.informer(
                MetadataApi::new(client.clone(), rt.clone(), None),
                watcher::Config::default(),
            );
            informer.add_index(
                UID_INDEX,
                Arc::new(|m: &PartialObjectMeta| m.metadata.uid.clone().into_iter().collect()),
            );
            readers.push(informer.reader());
            informers.push(informer);
            by_gvk.insert((rt.group.to_string(), rt.kind.to_string()), i);
        }
        let kinds = Arc::new(Kinds {
            types: kinds,
            readers,
            by_gvk,
        });
        let queue = WorkQueue::new();
        for (i, informer) in informers.iter().enumerate() {
            let mut sub = informer.subscribe();
            let (queue, kinds) = (queue.clone(), kinds.clone());
            tokio::spawn(async move {
                while let Some(change) = sub.next().await {
                    on_change(&kinds, &queue, i, &change);
                }
            });
        }
        GarbageCollector {
            client: client.clone(),
            kinds,
            queue,
            workers: 4,
            _informers: informers,
        }
    }

    /// Runs until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        for r in &self.kinds.readers {
            if r.wait_until_ready().await.is_err() {
                tracing::error!("a garbage collector cache stopped before it was ready");
                return;
            }
        }
        tracing::info!(
            kinds = self.kinds.types.len(),
            "garbage collector caches ready"
        );
        let this = Arc::new(self);
        let mut workers = Vec::new();
        for _ in 0..this.workers {
            let this = this.clone();
            workers.push(tokio::spawn(async move {
                while let Some(item) = this.queue.get().await {
                    match this.process(&item).await {
                        Ok(()) => this.queue.forget(&item),
                        Err(e) => {
                            tracing::debug!(error = %e, "garbage collection step failed; retrying");
                            this.queue.add_rate_limited(item.clone());
                        }
                    }
                    this.queue.done(&item);
                }
            }));
        }
        shutdown.await;
        this.queue.shut_down();
        for w in workers {
            let _ = w.await;
        }
    }

    fn err(&self, action: &'static str, item: &Item) -> impl FnOnce(keelson_core::Error) -> Error {
        let object = format!("{} {}", self.kinds.types[item.kind].kind, item.key);
        move |source| Error {
            action,
            object,
            source,
        }
    }

    async fn delete(
        &self,
        item: &Item,
        uid: Option<&str>,
        policy: PropagationPolicy,
    ) -> Result<(), Error> {
        let rt = &self.kinds.types[item.kind];
        let opts = DeleteOptions {
            uid: uid.map(str::to_owned),
            propagation_policy: Some(policy),
            ..DeleteOptions::default()
        };
        tracing::debug!(kind = %rt.kind, object = %item.key, policy = policy.as_str(), "garbage collecting");
        match self
            .client
            .transport()
            .delete(rt, item.key.ns(), &item.key.name, &opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(self.err("deleting", item)(e)),
        }
    }

    async fn patch(&self, item: &Item, ops: serde_json::Value) -> Result<(), Error> {
        let rt = &self.kinds.types[item.kind];
        match self
            .client
            .transport()
            .patch(rt, item.key.ns(), &item.key.name, None, &Patch::Json(ops))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(self.err("patching", item)(e)),
        }
    }

    async fn remove_finalizer(
        &self,
        item: &Item,
        obj: &PartialObjectMeta,
        name: &str,
    ) -> Result<(), Error> {
        let list = obj.metadata.finalizers.as_deref().unwrap_or_default();
        let Some(i) = list.iter().position(|f| f == name) else {
            return Ok(());
        };
        let path = format!("/metadata/finalizers/{i}");
        self.patch(
            item,
            json!([{"op": "test", "path": path, "value": name}, {"op": "remove", "path": path}]),
        )
        .await
    }

    /// Whether the owner a reference names exists (confirmed live when the cache says no).
    async fn owner_state(
        &self,
        obj_ns: Option<&str>,
        r: &OwnerReference,
    ) -> Result<OwnerState, Error> {
        let Some(kind) = self.kinds.of_ref(r) else {
            // A kind the collector does not know: never collect on its account.
            return Ok(OwnerState::Solid);
        };
        let state = |m: &PartialObjectMeta| {
            if m.metadata.deletion_timestamp.is_some() && has_finalizer(m, FOREGROUND) {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            }
        };
        if let Some(owner) = self.kinds.find_uid(kind, &r.uid) {
            return Ok(state(&owner));
        }
        let rt = &self.kinds.types[kind];
        let ns = if rt.is_namespaced() { obj_ns } else { None };
        match self.client.transport().get(rt, ns, &r.name).await {
            Ok(v) => {
                let owner: PartialObjectMeta =
                    serde_json::from_value((*v).clone()).unwrap_or_default();
                if owner.metadata.uid.as_deref() == Some(r.uid.as_str()) {
                    Ok(state(&owner))
                } else {
                    Ok(OwnerState::Dangling)
                }
            }
            Err(e) if e.is_not_found() => Ok(OwnerState::Dangling),
            Err(e) => Err(Error {
                action: "reading owner",
                object: format!("{} {}", rt.kind, r.name),
                source: e,
            }),
        }
    }

    async fn process(&self, item: &Item) -> Result<(), Error> {
        let Some(obj) = self.kinds.readers[item.kind].get(&item.key) else {
            return Ok(());
        };
        let uid = obj.metadata.uid.clone().unwrap_or_default();
        if obj.metadata.deletion_timestamp.is_some() {
            if has_finalizer(&obj, ORPHAN) {
                return self.orphan_dependents(item, &obj, &uid).await;
            }
            if has_finalizer(&obj, FOREGROUND) {
                return self.delete_dependents(item, &obj, &uid).await;
            }
            return Ok(());
        }
        let refs = obj.metadata.owner_references.clone().unwrap_or_default();
        if refs.is_empty() {
            return Ok(());
        }
        let mut solid = 0;
        let mut dangling = Vec::new();
        let mut waiting = Vec::new();
        for r in &refs {
            match self.owner_state(item.key.ns(), r).await? {
                OwnerState::Solid => solid += 1,
                OwnerState::Dangling => dangling.push(r.uid.clone()),
                OwnerState::Waiting => waiting.push(r.uid.clone()),
            }
        }
        if solid > 0 {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(());
            }
            // Keep the live owners; drop the gone ones; stop blocking the deleting ones.
            let kept: Vec<OwnerReference> = refs
                .iter()
                .filter(|r| !dangling.contains(&r.uid))
                .map(|r| {
                    let mut r = r.clone();
                    if waiting.contains(&r.uid) {
                        r.block_owner_deletion = Some(false);
                    }
                    r
                })
                .collect();
            return self
                .patch(
                    item,
                    json!([
                        {"op": "test", "path": "/metadata/ownerReferences", "value": refs},
                        {"op": "replace", "path": "/metadata/ownerReferences", "value": kept},
                    ]),
                )
                .await;
        }
        let policy = if !waiting.is_empty() && !self.kinds.dependents(&uid).is_empty() {
            PropagationPolicy::Foreground
        } else if has_finalizer(&obj, ORPHAN) {
            PropagationPolicy::Orphan
        } else if has_finalizer(&obj, FOREGROUND) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        self.delete(item, Some(&uid), policy).await
    }

    async fn orphan_dependents(
        &self,
        item: &Item,
        obj: &PartialObjectMeta,
        uid: &str,
    ) -> Result<(), Error> {
        for (kind, dep) in self.kinds.dependents(uid) {
            let refs = dep.metadata.owner_references.clone().unwrap_or_default();
            let Some(i) = refs.iter().position(|r| r.uid == uid) else {
                continue;
            };
            let dep_item = Item {
                kind,
                key: ObjectRef::from_meta(&dep.metadata),
            };
            let path = format!("/metadata/ownerReferences/{i}/uid");
            let ops = if refs.len() == 1 {
                json!([{"op": "test", "path": path, "value": uid}, {"op": "remove", "path": "/metadata/ownerReferences"}])
            } else {
                json!([{"op": "test", "path": path, "value": uid}, {"op": "remove", "path": format!("/metadata/ownerReferences/{i}")}])
            };
            self.patch(&dep_item, ops).await?;
        }
        self.remove_finalizer(item, obj, ORPHAN).await
    }

    async fn delete_dependents(
        &self,
        item: &Item,
        obj: &PartialObjectMeta,
        uid: &str,
    ) -> Result<(), Error> {
        let deps = self.kinds.dependents(uid);
        let mut blocking = 0;
        for (kind, dep) in &deps {
            let blocks = dep
                .metadata
                .owner_references
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|r| r.uid == uid && r.block_owner_deletion == Some(true));
            if blocks {
                blocking += 1;
            }
            if dep.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let dep_uid = dep.metadata.uid.clone().unwrap_or_default();
            let policy = if self.kinds.dependents(&dep_uid).is_empty() {
                PropagationPolicy::Background
            } else {
                PropagationPolicy::Foreground
            };
            let dep_item = Item {
                kind: *kind,
                key: ObjectRef::from_meta(&dep.metadata),
            };
            self.delete(&dep_item, Some(&dep_uid), policy).await?;
        }
        if blocking == 0 {
            self.remove_finalizer(item, obj, FOREGROUND).await?;
        } else {
            // Dependents' deletions re-queue this owner; check again anyway.
            self.queue.add_after(item.clone(), Duration::from_secs(5));
        }
        Ok(())
    }
}

/// Maps a cache change to the items to process.
fn on_change(
    kinds: &Kinds,
    queue: &WorkQueue<Item>,
    kind: usize,
    change: &Change<PartialObjectMeta>,
) {
    let (obj, gone, newly_deleting) = match change {
        Change::Applied { old, new } => (
            new,
            false,
            new.metadata.deletion_timestamp.is_some()
                && old
                    .as_ref()
                    .is_none_or(|o| o.metadata.deletion_timestamp.is_none()),
        ),
        Change::Deleted(o) => (o, true, false),
    };
    let key = ObjectRef::from_meta(&obj.metadata);
    if !gone {
        queue.add(Item {
            kind,
            key: key.clone(),
        });
    }
    // Its dependents must look at their owners again when it goes.
    if gone || newly_deleting || obj.metadata.deletion_timestamp.is_some() {
        if let Some(uid) = &obj.metadata.uid {
            for (k, dep) in kinds.dependents(uid) {
                queue.add(Item {
                    kind: k,
                    key: ObjectRef::from_meta(&dep.metadata),
                });
            }
        }
    }
    // Owners deleting in the foreground wait for their dependents to go.
    if gone || newly_deleting {
        for r in obj.metadata.owner_references.as_deref().unwrap_or_default() {
            if let Some(k) = kinds.of_ref(r) {
                if let Some(owner) = kinds.find_uid(k, &r.uid) {
                    queue.add(Item {
                        kind: k,
                        key: ObjectRef::from_meta(&owner.metadata),
                    });
                }
            }
        }
    }
}
