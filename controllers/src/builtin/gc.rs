//! The garbage collector: deletes objects whose owners are gone, and carries out
//! foreground and orphan deletion.
//!
//! It caches the metadata of every object of every kind it is given (one
//! [`MetadataApi`] informer per kind, indexed by owner uid and by uid), and of every kind
//! CustomResourceDefinitions add while it runs: it watches the CRDs, starts an informer
//! for each kind once its CRD is established and stops it when the CRD is gone. It works
//! on a queue of objects, with Kubernetes' rules:
//!
//! - **Background**: an object none of whose owners exists any more (each absent owner is
//!   confirmed with a live read, so a lagging cache never deletes anything) is deleted,
//!   with the propagation its own finalizers ask for. Owner references to owners that
//!   are gone are removed from objects that still have a live owner.
//! - **Foreground**: an owner being deleted with the `foregroundDeletion` finalizer has
//!   its dependents looked at again: each one with no other live owner is deleted (in
//!   the foreground itself when it has dependents, so whole chains go bottom-up), one
//!   with another live owner stops blocking it. Once no dependent that references it with
//!   `blockOwnerDeletion: true` is left, the finalizer is removed and the owner goes.
//! - **Orphan**: an owner being deleted with the `orphan` finalizer has its reference
//!   removed from every dependent, then the finalizer removed.
//!
//! And with Kubernetes' answers to bad references:
//!
//! - **Cycles**: a dependent about to be deleted in the foreground whose own dependents
//!   are waiting for theirs (A owns B owns A) stops blocking its owners first, so the
//!   cycle unwinds instead of waiting forever; it gets a Warning event `OwnerRefCycle`.
//! - **Namespaces**: an owner is looked for in its dependent's namespace. A reference to
//!   an owner in another namespace counts as absent, and a cluster-scoped object owned by
//!   a namespaced kind is never collected on that reference's account; both get a
//!   Warning event `OwnerRefInvalidNamespace` on the dependent.
//! - **Unknown kinds**: an owner of a kind the server does not serve is never taken as
//!   absent (it may be a CRD not yet created); the dependent is looked at again when a
//!   kind is added. An owner of a kind whose CRD was deleted is absent (its objects went
//!   with the CRD).
//!
//! Every delete carries the object's uid as a precondition; every ownerReferences edit is
//! a JSON patch guarded by a `test`, so a concurrent change makes it fail and retry.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use keelson_core::client::{Api, Client, DeleteOptions, Patch, PropagationPolicy};
use keelson_core::k8s_openapi::api::core::v1::ObjectReference;
use keelson_core::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keelson_core::{builtin_resource_types, GroupVersionKind, ResourceType};
use parking_lot::RwLock;
use serde_json::json;

use crate::events::{EventType, Recorder};
use crate::informer::{Informer, InformerFactory};
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
/// nothing owns; they expire on their own). Kinds of CustomResourceDefinitions are added
/// as they come.
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

/// One watched kind. Kinds are only ever appended, so an [`Item`]'s index stays valid;
/// a kind whose CRD is deleted is marked gone and its informer stopped.
struct Kind {
    rt: Arc<ResourceType>,
    reader: Reader<PartialObjectMeta>,
    informer: Informer<PartialObjectMeta>,
    gone: bool,
}

#[derive(Default)]
struct Table {
    kinds: Vec<Kind>,
    /// Live kinds by group and kind.
    by_gk: HashMap<(String, String), usize>,
    /// Group and kind of kinds whose CRD was deleted.
    removed: HashSet<(String, String)>,
}

fn group_kind(r: &OwnerReference) -> (String, String) {
    let gvk = GroupVersionKind::from_api_version(&r.api_version, r.kind.clone());
    (gvk.group, gvk.kind)
}

/// What the collector shares with its workers and its informers' subscribers.
struct Shared {
    client: Client,
    factory: InformerFactory,
    queue: WorkQueue<Item>,
    table: RwLock<Table>,
    recorder: Recorder,
}

/// Where a reference's kind stands.
enum KindOf {
    Known(usize, Arc<ResourceType>),
    /// Its CRD was deleted, and every object of it with it.
    Removed,
    /// Not served (perhaps not yet).
    Unknown,
}

impl Shared {
    fn kind_of(&self, r: &OwnerReference) -> KindOf {
        let gk = group_kind(r);
        let table = self.table.read();
        match table.by_gk.get(&gk) {
            Some(&i) => KindOf::Known(i, table.kinds[i].rt.clone()),
            None if table.removed.contains(&gk) => KindOf::Removed,
            None => KindOf::Unknown,
        }
    }

    fn rt(&self, kind: usize) -> Arc<ResourceType> {
        self.table.read().kinds[kind].rt.clone()
    }

    /// The cache of a kind still watched.
    fn reader(&self, kind: usize) -> Option<Reader<PartialObjectMeta>> {
        let table = self.table.read();
        let k = &table.kinds[kind];
        (!k.gone).then(|| k.reader.clone())
    }

    fn live_readers(&self) -> Vec<(usize, Reader<PartialObjectMeta>)> {
        let table = self.table.read();
        table
            .kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| !k.gone)
            .map(|(i, k)| (i, k.reader.clone()))
            .collect()
    }

    /// Every cached object that lists `uid` among its owners.
    fn dependents(&self, uid: &str) -> Vec<(usize, Arc<PartialObjectMeta>)> {
        self.live_readers()
            .into_iter()
            .flat_map(|(i, r)| r.owned_by(uid).into_iter().map(move |o| (i, o)))
            .collect()
    }

    fn find_uid(&self, kind: usize, uid: &str) -> Option<Arc<PartialObjectMeta>> {
        self.reader(kind)?
            .by_index(UID_INDEX, uid)
            .into_iter()
            .next()
    }

    /// Starts watching `rt` unless its group and kind are watched already at the same
    /// version; when the version differs the old informer makes way. With `look_again`
    /// (a kind added while running), objects that reference the kind as an owner are
    /// looked at again; the kinds the collector starts with need not be, as every object
    /// is queued when its cache fills.
    fn add_kind(self: &Arc<Self>, rt: ResourceType, look_again: bool) {
        let gk = (rt.group.to_string(), rt.kind.to_string());
        {
            let table = self.table.read();
            if let Some(&i) = table.by_gk.get(&gk) {
                if table.kinds[i].rt.version == rt.version {
                    return;
                }
            }
        }
        let informer = self.factory.informer(
            MetadataApi::new(self.client.clone(), rt.clone(), None),
            watcher::Config::default(),
        );
        informer.add_index(
            UID_INDEX,
            Arc::new(|m: &PartialObjectMeta| m.metadata.uid.clone().into_iter().collect()),
        );
        let reader = informer.reader();
        let mut sub = informer.subscribe();
        let index = {
            let mut table = self.table.write();
            if let Some(old) = table.by_gk.remove(&gk) {
                table.kinds[old].gone = true;
                table.kinds[old].informer.stop();
            }
            table.removed.remove(&gk);
            let index = table.kinds.len();
            table.kinds.push(Kind {
                rt: Arc::new(rt),
                reader,
                informer,
                gone: false,
            });
            table.by_gk.insert(gk.clone(), index);
            index
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(change) = sub.next().await {
                let Some(shared) = weak.upgrade() else { return };
                shared.on_change(index, &change);
            }
        });
        if !look_again {
            return;
        }
        // Dependents that waited for this kind to be known.
        for (i, reader) in self.live_readers() {
            for obj in reader.list() {
                let refs = obj.metadata.owner_references.as_deref().unwrap_or_default();
                if refs.iter().any(|r| group_kind(r) == gk) {
                    self.queue.add(Item {
                        kind: i,
                        key: ObjectRef::from_meta(&obj.metadata),
                    });
                }
            }
        }
    }

    /// Stops watching a kind whose CRD is gone; its dependents are looked at again (their
    /// owners of that kind are gone too).
    fn remove_kind(&self, gk: (String, String)) {
        let dependents: Vec<Arc<PartialObjectMeta>> = {
            let mut table = self.table.write();
            let Some(i) = table.by_gk.remove(&gk) else {
                return;
            };
            table.removed.insert(gk.clone());
            let kind = &mut table.kinds[i];
            kind.gone = true;
            kind.informer.stop();
            kind.reader.list()
        };
        tracing::debug!(group = %gk.0, kind = %gk.1, "kind gone; no longer watched");
        for obj in dependents {
            if let Some(uid) = &obj.metadata.uid {
                for (k, dep) in self.dependents(uid) {
                    self.queue.add(Item {
                        kind: k,
                        key: ObjectRef::from_meta(&dep.metadata),
                    });
                }
            }
        }
    }

    /// Follows a CRD: its kind is watched while it is established.
    fn on_crd(self: &Arc<Self>, change: &Change<CustomResourceDefinition>) {
        match change {
            Change::Applied { new, .. } => {
                let established = new
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                if !established {
                    return;
                }
                let Ok(value) = serde_json::to_value(&**new) else {
                    return;
                };
                let served = ResourceType::served_by_crd(&value);
                let storage = new
                    .spec
                    .versions
                    .iter()
                    .find(|v| v.storage)
                    .map(|v| &v.name);
                let chosen = served
                    .iter()
                    .find(|(rt, _)| Some(&rt.version.to_string()) == storage)
                    .or(served.first());
                if let Some((rt, _)) = chosen {
                    self.add_kind(rt.clone(), true);
                }
            }
            Change::Deleted(crd) => {
                self.remove_kind((crd.spec.group.clone(), crd.spec.names.kind.clone()));
            }
        }
    }

    /// Maps a cache change to the items to process.
    fn on_change(&self, kind: usize, change: &Change<PartialObjectMeta>) {
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
            self.queue.add(Item {
                kind,
                key: key.clone(),
            });
        }
        // Its dependents must look at their owners again when it goes.
        if gone || newly_deleting || obj.metadata.deletion_timestamp.is_some() {
            if let Some(uid) = &obj.metadata.uid {
                for (k, dep) in self.dependents(uid) {
                    self.queue.add(Item {
                        kind: k,
                        key: ObjectRef::from_meta(&dep.metadata),
                    });
                }
            }
        }
        // Owners deleting in the foreground wait for their dependents to go.
        if gone || newly_deleting {
            for r in obj.metadata.owner_references.as_deref().unwrap_or_default() {
                if let KindOf::Known(k, _) = self.kind_of(r) {
                    if let Some(owner) = self.find_uid(k, &r.uid) {
                        self.queue.add(Item {
                            kind: k,
                            key: ObjectRef::from_meta(&owner.metadata),
                        });
                    }
                }
            }
        }
    }
}

/// The garbage collector.
pub struct GarbageCollector {
    shared: Arc<Shared>,
    workers: usize,
}

impl std::fmt::Debug for GarbageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarbageCollector")
            .field("kinds", &self.shared.table.read().by_gk.len())
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

/// Being deleted in the foreground: waiting for its dependents.
fn deleting_dependents(m: &PartialObjectMeta) -> bool {
    m.metadata.deletion_timestamp.is_some() && has_finalizer(m, FOREGROUND)
}

fn reference(rt: &ResourceType, m: &PartialObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(rt.api_version()),
        kind: Some(rt.kind.to_string()),
        name: m.metadata.name.clone(),
        namespace: m.metadata.namespace.clone(),
        uid: m.metadata.uid.clone(),
        resource_version: m.metadata.resource_version.clone(),
        field_path: None,
    }
}

impl GarbageCollector {
    /// A collector over those of `kinds` (see [`default_kinds`]) the server serves, its
    /// informers from `factory`; when the server serves CustomResourceDefinitions, the
    /// kinds they add are watched as well.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn new(
        client: &Client,
        factory: &InformerFactory,
        kinds: Vec<ResourceType>,
    ) -> GarbageCollector {
        let kinds = super::common::served_kinds(client, kinds).await;
        let crds_served = kinds
            .iter()
            .any(|rt| rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition");
        let shared = Arc::new(Shared {
            client: client.clone(),
            factory: factory.clone(),
            queue: WorkQueue::new(),
            table: RwLock::new(Table::default()),
            recorder: Recorder::new(client.clone(), "garbage-collector-controller", "keelson"),
        });
        for rt in kinds {
            shared.add_kind(rt, false);
        }
        if crds_served {
            let crds = factory.informer(
                Api::<CustomResourceDefinition>::all(client.clone()),
                watcher::Config::default(),
            );
            let mut sub = crds.subscribe();
            let weak: Weak<Shared> = Arc::downgrade(&shared);
            tokio::spawn(async move {
                // Holds the CRD informer as long as the collector lives.
                let _crds = crds;
                while let Some(change) = sub.next().await {
                    let Some(shared) = weak.upgrade() else { return };
                    shared.on_crd(&change);
                }
            });
        }
        GarbageCollector { shared, workers: 4 }
    }

    /// Runs until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        for (_, r) in self.shared.live_readers() {
            if r.wait_until_ready().await.is_err() {
                tracing::error!("a garbage collector cache stopped before it was ready");
                return;
            }
        }
        tracing::info!(
            kinds = self.shared.table.read().by_gk.len(),
            "garbage collector caches ready"
        );
        let this = Arc::new(self);
        let mut workers = Vec::new();
        for _ in 0..this.workers {
            let this = this.clone();
            workers.push(tokio::spawn(async move {
                let queue = &this.shared.queue;
                while let Some(item) = queue.get().await {
                    match this.process(&item).await {
                        Ok(()) => queue.forget(&item),
                        Err(e) => {
                            tracing::debug!(error = %e, "garbage collection step failed; retrying");
                            queue.add_rate_limited(item.clone());
                        }
                    }
                    queue.done(&item);
                }
            }));
        }
        shutdown.await;
        this.shared.queue.shut_down();
        for w in workers {
            let _ = w.await;
        }
    }

    fn err(&self, action: &'static str, item: &Item) -> impl FnOnce(keelson_core::Error) -> Error {
        let object = format!("{} {}", self.shared.rt(item.kind).kind, item.key);
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
        let rt = self.shared.rt(item.kind);
        let opts = DeleteOptions {
            uid: uid.map(str::to_owned),
            propagation_policy: Some(policy),
            ..DeleteOptions::default()
        };
        tracing::debug!(kind = %rt.kind, object = %item.key, policy = policy.as_str(), "garbage collecting");
        match self
            .shared
            .client
            .transport()
            .delete(&rt, item.key.ns(), &item.key.name, &opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(self.err("deleting", item)(e)),
        }
    }

    async fn patch(&self, item: &Item, ops: serde_json::Value) -> Result<(), Error> {
        let rt = self.shared.rt(item.kind);
        match self
            .shared
            .client
            .transport()
            .patch(&rt, item.key.ns(), &item.key.name, None, &Patch::Json(ops))
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

    async fn warn(&self, item: &Item, obj: &PartialObjectMeta, reason: &str, message: &str) {
        let rt = self.shared.rt(item.kind);
        self.shared
            .recorder
            .emit(&reference(&rt, obj), EventType::Warning, reason, message)
            .await;
    }

    /// Whether the owner a reference names exists (confirmed live when the cache says
    /// no), by Kubernetes' rules for namespaces and kinds (see the module docs).
    async fn owner_state(
        &self,
        item: &Item,
        obj: &PartialObjectMeta,
        r: &OwnerReference,
    ) -> Result<OwnerState, Error> {
        let (kind, rt) = match self.shared.kind_of(r) {
            KindOf::Known(kind, rt) => (kind, rt),
            KindOf::Removed => return Ok(OwnerState::Dangling),
            KindOf::Unknown => {
                tracing::debug!(object = %item.key, owner = %r.name, api_version = %r.api_version, kind = %r.kind, "owner of a kind not served; kept");
                return Ok(OwnerState::Solid);
            }
        };
        let obj_ns = item.key.ns();
        let invalid_namespace = |why: &str| {
            format!(
                "ownerReference to {} {} {:?} (uid {}) {why}",
                r.api_version, r.kind, r.name, r.uid
            )
        };
        if rt.is_namespaced() && obj_ns.is_none() {
            let message = invalid_namespace(
                "names a namespaced kind, which cannot own a cluster-scoped object; it is never collected on this reference's account",
            );
            self.warn(item, obj, "OwnerRefInvalidNamespace", &message)
                .await;
            return Ok(OwnerState::Solid);
        }
        let state = |m: &PartialObjectMeta| {
            if deleting_dependents(m) {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            }
        };
        let ns = if rt.is_namespaced() { obj_ns } else { None };
        if let Some(owner) = self.shared.find_uid(kind, &r.uid) {
            if owner.metadata.namespace.as_deref() == ns {
                return Ok(state(&owner));
            }
            let message = invalid_namespace(&format!(
                "does not exist in namespace {:?}: an owner must be in its dependent's namespace or cluster-scoped",
                obj_ns.unwrap_or_default()
            ));
            self.warn(item, obj, "OwnerRefInvalidNamespace", &message)
                .await;
            return Ok(OwnerState::Dangling);
        }
        match self.shared.client.transport().get(&rt, ns, &r.name).await {
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
        let Some(obj) = self.shared.reader(item.kind).and_then(|r| r.get(&item.key)) else {
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
            match self.owner_state(item, &obj, r).await? {
                OwnerState::Solid => solid += 1,
                OwnerState::Dangling => dangling.push(r.uid.clone()),
                OwnerState::Waiting => waiting.push(r.uid.clone()),
            }
        }
        let replace_refs = |kept: &[OwnerReference]| {
            json!([
                {"op": "test", "path": "/metadata/ownerReferences", "value": refs},
                {"op": "replace", "path": "/metadata/ownerReferences", "value": kept},
            ])
        };
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
            if kept == refs {
                // Already unblocked; waiting for the deleting owners to go.
                return Ok(());
            }
            return self.patch(item, replace_refs(&kept)).await;
        }
        let dependents = self.shared.dependents(&uid);
        let policy = if !waiting.is_empty()
            && dependents
                .iter()
                .any(|(_, d)| d.metadata.uid != obj.metadata.uid)
        {
            // A dependent that waits for its own dependents, while this object's owners
            // wait for it: possibly a cycle, which would wait forever. Stop blocking the
            // owners first (as Kubernetes does).
            let cycle = dependents
                .iter()
                .find(|(_, d)| d.metadata.uid != obj.metadata.uid && deleting_dependents(d));
            let blocking = refs.iter().any(|r| r.block_owner_deletion == Some(true));
            if let (Some((k, dep)), true) = (cycle, blocking) {
                let kept: Vec<OwnerReference> = refs
                    .iter()
                    .map(|r| OwnerReference {
                        block_owner_deletion: r.block_owner_deletion.map(|_| false),
                        ..r.clone()
                    })
                    .collect();
                self.patch(item, replace_refs(&kept)).await?;
                let message = format!(
                    "possible cycle of ownerReferences: its dependent {} {} is waiting for its own dependents; its owners being deleted in the foreground no longer wait for it",
                    self.shared.rt(*k).kind,
                    ObjectRef::from_meta(&dep.metadata)
                );
                self.warn(item, &obj, "OwnerRefCycle", &message).await;
            }
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
        for (kind, dep) in self.shared.dependents(uid) {
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

    /// An owner deleting in the foreground: its dependents are looked at again (each is
    /// deleted, or stops blocking when it has another live owner); it goes once none
    /// blocks it.
    async fn delete_dependents(
        &self,
        item: &Item,
        obj: &PartialObjectMeta,
        uid: &str,
    ) -> Result<(), Error> {
        if self
            .shared
            .live_readers()
            .iter()
            .any(|(_, r)| !r.is_ready())
        {
            // A dependent of a kind still being listed could be missed.
            self.shared
                .queue
                .add_after(item.clone(), Duration::from_secs(1));
            return Ok(());
        }
        let mut blocking = 0;
        for (kind, dep) in self.shared.dependents(uid) {
            if dep.metadata.uid.as_deref() == Some(uid) {
                // Its own owner: it cannot wait for its own deletion.
                continue;
            }
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
            if dep.metadata.deletion_timestamp.is_none() {
                self.shared.queue.add(Item {
                    kind,
                    key: ObjectRef::from_meta(&dep.metadata),
                });
            }
        }
        if blocking == 0 {
            self.remove_finalizer(item, obj, FOREGROUND).await?;
        } else {
            // Dependents' deletions re-queue this owner; check again anyway.
            self.shared
                .queue
                .add_after(item.clone(), Duration::from_secs(5));
        }
        Ok(())
    }
}
