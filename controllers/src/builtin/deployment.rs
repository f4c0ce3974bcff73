//! The Deployment controller: rolls ReplicaSets out, as Kubernetes' does.
//!
//! - The *new* ReplicaSet is the one whose pod template equals the Deployment's (ignoring
//!   the `pod-template-hash` label); when none does, one is created, named
//!   `<deployment>-<hash>` with `pod-template-hash: <hash>` added to its template labels
//!   and selector (the hash is FNV-1a of the template and `status.collisionCount`, spelled
//!   with Kubernetes' safe alphabet; a name collision with a different template bumps
//!   `collisionCount`). The others are *old*.
//! - Revisions: the new ReplicaSet gets `deployment.kubernetes.io/revision` one more than
//!   the highest old revision (a ReplicaSet brought back by `kubectl rollout undo` gets a
//!   new number, its old one going to `revision-history`); the Deployment carries the
//!   same annotation. Old ReplicaSets beyond `revisionHistoryLimit`, scaled to zero, are
//!   deleted once the rollout is complete (or while paused).
//! - RollingUpdate: the new ReplicaSet grows while the total stays within `replicas +
//!   maxSurge`; old ones shrink (unhealthy pods first) while at least `replicas -
//!   maxUnavailable` pods stay available. Recreate: old ReplicaSets go to zero, the new
//!   one starts once no old pod runs.
//! - Scaling a Deployment mid-rollout spreads the change over its active ReplicaSets in
//!   proportion to their size (the `desired-replicas`/`max-replicas` annotations);
//!   a paused Deployment only scales.
//! - Status: `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`,
//!   `unavailableReplicas`, `observedGeneration`, `collisionCount`, and the conditions
//!   `kubectl rollout status` reads: `Available` (`MinimumReplicasAvailable` /
//!   `MinimumReplicasUnavailable`) and `Progressing` (`NewReplicaSetCreated`,
//!   `FoundNewReplicaSet`, `ReplicaSetUpdated`, `NewReplicaSetAvailable`,
//!   `ProgressDeadlineExceeded`, `DeploymentPaused`, `DeploymentResumed`), with
//!   `progressDeadlineSeconds` measured from the condition's `lastUpdateTime`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keelson_core::client::{Api, Client, DeleteOptions, Patch};
use keelson_core::k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use keelson_core::k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use keelson_core::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keelson_core::LabelSelector;
use serde_json::json;

use super::common::{
    claim, claim_candidates, controller_ref, orphan_index, status_merge_patch, workload_selector,
    ORPHAN_INDEX,
};
use crate::controller::{Action, Context, Controller, Reconciler};
use crate::events::{object_reference, EventType, Recorder};
use crate::informer::InformerFactory;
use crate::object::{controller_of, ObjectRef};
use crate::reflector::{Change, Reader};
use crate::{clock, watcher};

/// The label that ties a ReplicaSet and its pods to one pod template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The revision annotation of Deployments and their ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions of a reused ReplicaSet.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// The Deployment's replicas plus surge when the ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

use super::common::api_err;
pub use super::common::Error;

/// The Deployment reconciler.
pub struct DeploymentController {
    client: Client,
    sets: Reader<ReplicaSet>,
    pods: Reader<Pod>,
    recorder: Recorder,
}

impl std::fmt::Debug for DeploymentController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentController")
            .finish_non_exhaustive()
    }
}

// ---- small helpers on the types ----

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

fn available_of(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn ready_of(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

fn annotation<'a>(meta: &'a keelson_core::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn int_annotation(rs: &ReplicaSet, key: &str) -> Option<i32> {
    annotation(&rs.metadata, key).and_then(|v| v.parse().ok())
}

fn d_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t != "Recreate")
}

fn creation_key(rs: &ReplicaSet) -> (Option<i64>, String) {
    (
        rs.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        rs.metadata.name.clone().unwrap_or_default(),
    )
}

/// `intOrPercent` of `total`, a percentage rounded up or down.
fn scaled_value(v: Option<&IntOrString>, default_percent: i32, total: i32, round_up: bool) -> i32 {
    let percent = match v {
        Some(IntOrString::Int(i)) => return *i,
        Some(IntOrString::String(s)) => s.trim_end_matches('%').parse::<i32>().unwrap_or(0),
        None => default_percent,
    };
    let x = i64::from(percent) * i64::from(total);
    let v = if round_up { (x + 99) / 100 } else { x / 100 };
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// `(maxSurge, maxUnavailable)` resolved against the replicas; never both zero.
fn fenceposts(d: &Deployment) -> (i32, i32) {
    let replicas = d_replicas(d);
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled_value(ru.and_then(|r| r.max_surge.as_ref()), 25, replicas, true);
    let mut unavailable = scaled_value(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        25,
        replicas,
        false,
    );
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

fn max_surge(d: &Deployment) -> i32 {
    if is_rolling(d) {
        fenceposts(d).0
    } else {
        0
    }
}

fn max_unavailable(d: &Deployment) -> i32 {
    let replicas = d_replicas(d);
    if !is_rolling(d) || replicas == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas)
}

/// Kubernetes' alphabet for generated name parts (no vowels, no confusable digits).
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The `pod-template-hash` of a template.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(template).unwrap_or_default());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    h.to_string()
        .bytes()
        .map(|b| char::from(SAFE[usize::from(b) % SAFE.len()]))
        .collect()
}

fn without_hash(t: Option<&PodTemplateSpec>) -> serde_json::Value {
    let mut t = t.cloned().unwrap_or_default();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
        if labels.is_empty() {
            if let Some(m) = t.metadata.as_mut() {
                m.labels = None;
            }
        }
    }
    serde_json::to_value(&t).unwrap_or_default()
}

fn templates_equal(rs: &ReplicaSet, d: &Deployment) -> bool {
    without_hash(rs.spec.as_ref().and_then(|s| s.template.as_ref()))
        == without_hash(d.spec.as_ref().map(|s| &s.template))
}

/// The oldest ReplicaSet whose template is the Deployment's.
fn find_new(d: &Deployment, sets: &[ReplicaSet]) -> Option<usize> {
    let mut idx: Vec<usize> = (0..sets.len()).collect();
    idx.sort_by_key(|i| creation_key(&sets[*i]));
    idx.into_iter().find(|i| templates_equal(&sets[*i], d))
}

fn sum(sets: &[&ReplicaSet], f: fn(&ReplicaSet) -> i32) -> i32 {
    sets.iter().map(|rs| f(rs)).sum()
}

fn get_condition<'a>(s: &'a DeploymentStatus, t: &str) -> Option<&'a DeploymentCondition> {
    s.conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == t)
}

fn new_condition(t: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let now = clock::now_time();
    DeploymentCondition {
        type_: t.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// Kubernetes' `SetDeploymentCondition`: same status and reason → unchanged; same status
/// → keeps the transition time.
fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    let list = s.conditions.get_or_insert_with(Vec::new);
    if let Some(i) = list.iter().position(|x| x.type_ == c.type_) {
        let old = &list[i];
        if old.status == c.status && old.reason == c.reason {
            return;
        }
        if old.status == c.status {
            c.last_transition_time.clone_from(&old.last_transition_time);
        }
        list[i] = c;
    } else {
        list.push(c);
    }
}

fn remove_condition(s: &mut DeploymentStatus, t: &str) {
    if let Some(list) = s.conditions.as_mut() {
        list.retain(|c| c.type_ != t);
        if list.is_empty() {
            s.conditions = None;
        }
    }
}

fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some_and(|p| p != i32::MAX)
}

fn deployment_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let r = d_replicas(d);
    s.updated_replicas == Some(r)
        && s.replicas == Some(r)
        && s.available_replicas == Some(r)
        && s.observed_generation >= d.metadata.generation
}

fn deployment_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let z = |v: Option<i32>| v.unwrap_or(0);
    let old_old = z(old.replicas) - z(old.updated_replicas);
    let new_old = z(new.replicas) - z(new.updated_replicas);
    z(new.updated_replicas) > z(old.updated_replicas)
        || new_old < old_old
        || z(new.ready_replicas) > z(old.ready_replicas)
        || z(new.available_replicas) > z(old.available_replicas)
}

fn deployment_timed_out(d: &Deployment, s: &DeploymentStatus) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let Some(c) = get_condition(s, "Progressing") else {
        return false;
    };
    match c.reason.as_deref() {
        Some("NewReplicaSetAvailable") => return false,
        Some("ProgressDeadlineExceeded") => return true,
        _ => {}
    }
    let deadline = i64::from(
        d.spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(600),
    );
    c.last_update_time
        .as_ref()
        .is_some_and(|t| clock::seconds_since(t) > deadline)
}

impl DeploymentController {
    /// Builds the controller on `factory`'s informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
    ) -> (Controller<Deployment>, Arc<Self>) {
        let cfg = watcher::Config::default;
        let rs_api = Api::<ReplicaSet>::all(client.clone());
        let pods_api = Api::<Pod>::all(client.clone());
        let rs_informer = factory.informer(rs_api.clone(), cfg());
        rs_informer.add_index(ORPHAN_INDEX, orphan_index());
        let sets = rs_informer.reader();
        let pods = factory.informer(pods_api.clone(), cfg().compact()).reader();
        let controller =
            Controller::with_factory(factory, Api::<Deployment>::all(client.clone()), cfg())
                .name("deployment");
        let deployments = controller.store();
        let deployments2 = deployments.clone();
        // ReplicaSets: their owner, or (orphans) every Deployment selecting them.
        let controller =
            controller.watches_changes(rs_api, cfg(), move |change: &Change<ReplicaSet>| {
                let owner = |rs: &ReplicaSet| {
                    controller_of(&rs.metadata)
                        .filter(|r| r.kind == "Deployment")
                        .map(|r| ObjectRef::new(rs.metadata.namespace.as_deref(), &r.name))
                };
                let mut keys = Vec::new();
                let (old, new) = match change {
                    Change::Applied { old, new } => (old.as_ref(), new),
                    Change::Deleted(rs) => (None, rs),
                };
                match owner(new) {
                    Some(k) => keys.push(k),
                    None if !matches!(change, Change::Deleted(_)) => {
                        let ns = new.metadata.namespace.as_deref().unwrap_or_default();
                        for d in deployments.list_namespace(ns) {
                            let sel = d
                                .spec
                                .as_ref()
                                .map(|s| LabelSelector::from_k8s(&s.selector));
                            if let Some(Ok(sel)) = sel {
                                if !sel.is_empty() && sel.matches_meta(&new.metadata) {
                                    keys.push(ObjectRef::from_meta(&d.metadata));
                                }
                            }
                        }
                    }
                    None => {}
                }
                if let Some(k) = old.and_then(|o| owner(o)) {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                keys
            });
        // Pods going away: a Recreate rollout waits for them.
        let sets2 = sets.clone();
        let controller =
            controller.watches_changes(pods_api, cfg().compact(), move |change: &Change<Pod>| {
                let Change::Deleted(pod) = change else {
                    return Vec::new();
                };
                let ns = pod.metadata.namespace.as_deref();
                let Some(rs_ref) = controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet")
                else {
                    return Vec::new();
                };
                let Some(rs) = sets2.get(&ObjectRef::new(ns, &rs_ref.name)) else {
                    return Vec::new();
                };
                controller_of(&rs.metadata)
                    .filter(|r| r.kind == "Deployment")
                    .map(|r| ObjectRef::new(ns, &r.name))
                    .filter(|k| deployments2.get(k).is_some_and(|d| !is_rolling(&d)))
                    .into_iter()
                    .collect()
            });
        let reconciler = Arc::new(DeploymentController {
            client: client.clone(),
            sets,
            pods,
            recorder: Recorder::new(client.clone(), "deployment-controller", "keelson"),
        });
        (controller, reconciler)
    }

    fn rs_api(&self, ns: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn d_api(&self, ns: &str) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn event(&self, d: &Deployment, type_: EventType, reason: &str, message: &str) {
        self.recorder
            .emit(&object_reference(d), type_, reason, message)
            .await;
    }

    /// Scales `rs` to `size`, refreshing its annotations; returns whether it wrote.
    async fn scale_rs(
        &self,
        rs: &mut ReplicaSet,
        size: i32,
        d: &Deployment,
    ) -> Result<bool, Error> {
        let desired = d_replicas(d).to_string();
        let max = (d_replicas(d) + max_surge(d)).to_string();
        let size_changes = replicas_of(rs) != size;
        let annotations_change = annotation(&rs.metadata, DESIRED_REPLICAS)
            != Some(desired.as_str())
            || annotation(&rs.metadata, MAX_REPLICAS) != Some(max.as_str());
        if !size_changes && !annotations_change {
            return Ok(false);
        }
        let before = replicas_of(rs);
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let name = rs.metadata.name.clone().unwrap_or_default();
        // A patch, guarded by the ReplicaSet's uid: status writes by the ReplicaSet
        // controller in between do not make it fail.
        let patch = json!({
            "metadata": {"uid": rs.metadata.uid, "annotations": {DESIRED_REPLICAS: desired, MAX_REPLICAS: max}},
            "spec": {"replicas": size},
        });
        *rs = self
            .rs_api(&ns)
            .patch(&name, &Patch::Merge(patch))
            .await
            .map_err(api_err(format!("scaling ReplicaSet {name}")))?;
        if size_changes {
            let dir = if size > before { "up" } else { "down" };
            self.event(
                d,
                EventType::Normal,
                "ScalingReplicaSet",
                &format!("Scaled {dir} replica set {name} from {before} to {size}"),
            )
            .await;
        }
        Ok(size_changes)
    }

    /// Finds (and, with `create`, makes) the new ReplicaSet and syncs revisions. Returns
    /// the new ReplicaSet (if any) and the old ones.
    async fn get_all(
        &self,
        d: &mut Deployment,
        mut sets: Vec<ReplicaSet>,
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), Error> {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let new_idx = find_new(d, &sets);
        let new = new_idx.map(|i| sets.remove(i));
        let old = sets;
        let max_old = old.iter().map(revision_of).max().unwrap_or(0);
        let new_revision = (max_old + 1).to_string();
        let new = match new {
            Some(mut rs) => {
                let mut updated = rs.clone();
                let changed = self.sync_rs_annotations(d, &mut updated, &new_revision);
                if changed {
                    let name = rs.metadata.name.clone().unwrap_or_default();
                    let patch = json!({"metadata": {"uid": rs.metadata.uid, "annotations": updated.metadata.annotations}});
                    rs = self
                        .rs_api(&ns)
                        .patch(&name, &Patch::Merge(patch))
                        .await
                        .map_err(api_err(format!("updating ReplicaSet {name}")))?;
                }
                let mut status = d.status.clone().unwrap_or_default();
                if get_condition(&status, "Progressing").is_none() && has_progress_deadline(d) {
                    let name = rs.metadata.name.clone().unwrap_or_default();
                    set_condition(
                        &mut status,
                        new_condition(
                            "Progressing",
                            "True",
                            "FoundNewReplicaSet",
                            format!("Found new replica set \"{name}\""),
                        ),
                    );
                    self.update_status(d, status).await?;
                }
                Some(rs)
            }
            None if create => Some(self.create_new(d, &old, &new_revision).await?),
            None => None,
        };
        if let Some(rs) = &new {
            self.set_deployment_revision(d, &revision_of(rs).to_string())
                .await?;
        }
        Ok((new, old))
    }

    /// Sets the revision and copied annotations on a ReplicaSet; whether anything changed.
    fn sync_rs_annotations(&self, d: &Deployment, rs: &mut ReplicaSet, new_revision: &str) -> bool {
        let mut changed = false;
        let a = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in d.metadata.annotations.iter().flatten() {
            if [
                LAST_APPLIED,
                REVISION,
                REVISION_HISTORY,
                DESIRED_REPLICAS,
                MAX_REPLICAS,
            ]
            .contains(&k.as_str())
            {
                continue;
            }
            if a.get(k) != Some(v) {
                a.insert(k.clone(), v.clone());
                changed = true;
            }
        }
        let old: i64 = a.get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0);
        let new: i64 = new_revision.parse().unwrap_or(0);
        if old < new {
            if old > 0 {
                let history = a.get(REVISION_HISTORY).cloned().unwrap_or_default();
                let history = if history.is_empty() {
                    old.to_string()
                } else {
                    format!("{history},{old}")
                };
                a.insert(REVISION_HISTORY.into(), history);
            }
            a.insert(REVISION.into(), new_revision.into());
            changed = true;
        }
        let desired = d_replicas(d).to_string();
        if !a.contains_key(DESIRED_REPLICAS) {
            a.insert(DESIRED_REPLICAS.into(), desired);
            a.insert(
                MAX_REPLICAS.into(),
                (d_replicas(d) + max_surge(d)).to_string(),
            );
            changed = true;
        }
        changed
    }

    async fn set_deployment_revision(
        &self,
        d: &mut Deployment,
        revision: &str,
    ) -> Result<(), Error> {
        if annotation(&d.metadata, REVISION) == Some(revision) {
            return Ok(());
        }
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let name = d.metadata.name.clone().unwrap_or_default();
        let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
        *d = self
            .d_api(&ns)
            .patch(&name, &Patch::Merge(patch))
            .await
            .map_err(api_err("setting the deployment's revision"))?;
        Ok(())
    }

    async fn create_new(
        &self,
        d: &mut Deployment,
        old: &[ReplicaSet],
        revision: &str,
    ) -> Result<ReplicaSet, Error> {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let d_name = d.metadata.name.clone().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let collision = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collision);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut rs = ReplicaSet::default();
        rs.metadata.name = Some(format!("{d_name}-{hash}"));
        rs.metadata.namespace = Some(ns.clone());
        rs.metadata.labels = template.metadata.as_ref().and_then(|m| m.labels.clone());
        rs.metadata.owner_references = Some(vec![controller_ref(d)]);
        rs.spec = Some(ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        });
        self.sync_rs_annotations(d, &mut rs, revision);
        // The size it starts with.
        let all: Vec<&ReplicaSet> = old.iter().collect();
        let size = if is_rolling(d) {
            let current = sum(&all, replicas_of);
            let max_total = d_replicas(d) + max_surge(d);
            if current >= max_total {
                0
            } else {
                (max_total - current).min(d_replicas(d))
            }
        } else {
            d_replicas(d)
        };
        rs.spec.get_or_insert_with(ReplicaSetSpec::default).replicas = Some(size);
        let rs_name = rs.metadata.name.clone().unwrap_or_default();
        match self.rs_api(&ns).create(&rs).await {
            Ok(created) => {
                if size > 0 {
                    self.event(
                        d,
                        EventType::Normal,
                        "ScalingReplicaSet",
                        &format!("Scaled up replica set {rs_name} from 0 to {size}"),
                    )
                    .await;
                }
                let mut status = d.status.clone().unwrap_or_default();
                if has_progress_deadline(d) {
                    set_condition(
                        &mut status,
                        new_condition(
                            "Progressing",
                            "True",
                            "NewReplicaSetCreated",
                            format!("Created new replica set \"{rs_name}\""),
                        ),
                    );
                    self.update_status(d, status).await?;
                }
                Ok(created)
            }
            Err(e) if e.is_already_exists() => {
                let existing = self
                    .rs_api(&ns)
                    .get(&rs_name)
                    .await
                    .map_err(api_err(format!("reading ReplicaSet {rs_name}")))?;
                let ours = controller_of(&existing.metadata)
                    .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
                if ours && templates_equal(&existing, d) {
                    return Ok(existing);
                }
                let mut status = d.status.clone().unwrap_or_default();
                status.collision_count = Some(collision.unwrap_or(0) + 1);
                self.update_status(d, status).await?;
                Err(Error::Collision(rs_name))
            }
            Err(e) => {
                let msg = format!("Failed to create new replica set \"{rs_name}\": {e}");
                self.event(d, EventType::Warning, "FailedCreate", &msg)
                    .await;
                if has_progress_deadline(d) {
                    let mut status = d.status.clone().unwrap_or_default();
                    set_condition(
                        &mut status,
                        new_condition("Progressing", "False", "ReplicaSetCreateError", msg),
                    );
                    let _ = self.update_status(d, status).await;
                }
                Err(api_err("creating the new ReplicaSet")(e))
            }
        }
    }

    async fn update_status(
        &self,
        d: &mut Deployment,
        status: DeploymentStatus,
    ) -> Result<(), Error> {
        if d.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let patch = status_merge_patch(d.status.as_ref(), &status);
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let name = d.metadata.name.clone().unwrap_or_default();
        *d = self
            .d_api(&ns)
            .patch_status(&name, &Patch::Merge(patch))
            .await
            .map_err(api_err("updating the deployment's status"))?;
        Ok(())
    }

    fn calculate_status(
        d: &Deployment,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> DeploymentStatus {
        let mut all: Vec<&ReplicaSet> = old.iter().collect();
        all.extend(new);
        let available = sum(&all, available_of);
        let total = sum(&all, replicas_of);
        let mut s = d.status.clone().unwrap_or_default();
        s.observed_generation = d.metadata.generation;
        s.replicas = Some(sum(&all, status_replicas));
        s.updated_replicas = Some(new.map_or(0, status_replicas));
        s.ready_replicas = Some(sum(&all, ready_of));
        s.available_replicas = Some(available);
        s.unavailable_replicas = Some((total - available).max(0));
        if available >= d_replicas(d) - max_unavailable(d) {
            set_condition(
                &mut s,
                new_condition(
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.".into(),
                ),
            );
        } else {
            set_condition(
                &mut s,
                new_condition(
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.".into(),
                ),
            );
        }
        s
    }

    /// Status for scaling and paused Deployments.
    async fn sync_status(
        &self,
        d: &mut Deployment,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<(), Error> {
        let s = Self::calculate_status(d, new, old);
        self.update_status(d, s).await
    }

    /// Status during rollouts, with the Progressing condition; returns when to check the
    /// progress deadline again.
    async fn sync_rollout_status(
        &self,
        d: &mut Deployment,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<Option<Duration>, Error> {
        let mut s = Self::calculate_status(d, new, old);
        if !has_progress_deadline(d) {
            remove_condition(&mut s, "Progressing");
        }
        let current = d
            .status
            .as_ref()
            .and_then(|s| get_condition(s, "Progressing"))
            .cloned();
        let complete_already = s.replicas == s.updated_replicas
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
        let new_name = new
            .and_then(|rs| rs.metadata.name.clone())
            .unwrap_or_default();
        if has_progress_deadline(d) && !complete_already {
            if deployment_complete(d, &s) {
                set_condition(
                    &mut s,
                    new_condition(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                    ),
                );
            } else if deployment_progressing(d, &s) {
                let mut c = new_condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{new_name}\" is progressing."),
                );
                if let Some(cur) = &current {
                    if cur.status == "True" {
                        c.last_transition_time.clone_from(&cur.last_transition_time);
                    }
                    remove_condition(&mut s, "Progressing");
                }
                set_condition(&mut s, c);
            } else if deployment_timed_out(d, &s) {
                set_condition(
                    &mut s,
                    new_condition(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                    ),
                );
            }
        }
        // ReplicaFailure from the ReplicaSets.
        let failure = new
            .into_iter()
            .chain(old.iter())
            .flat_map(|rs| {
                rs.status
                    .as_ref()
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default()
            })
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True");
        match failure {
            Some(f) => set_condition(
                &mut s,
                DeploymentCondition {
                    type_: "ReplicaFailure".into(),
                    status: f.status,
                    reason: f.reason,
                    message: f.message,
                    last_update_time: f.last_transition_time.clone(),
                    last_transition_time: f.last_transition_time,
                },
            ),
            None => remove_condition(&mut s, "ReplicaFailure"),
        }
        let timed_out_before =
            current.as_ref().and_then(|c| c.reason.as_deref()) == Some("ProgressDeadlineExceeded");
        let newly_timed_out = !timed_out_before
            && get_condition(&s, "Progressing").and_then(|c| c.reason.as_deref())
                == Some("ProgressDeadlineExceeded");
        if d.status.as_ref() != Some(&s) {
            self.update_status(d, s.clone()).await?;
            if newly_timed_out {
                self.event(
                    d,
                    EventType::Warning,
                    "ProgressDeadlineExceeded",
                    &format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                )
                .await;
            }
        }
        // Requeue for the deadline of a rollout in progress.
        if has_progress_deadline(d) && !deployment_complete(d, &s) {
            if let Some(c) = get_condition(&s, "Progressing") {
                if c.reason.as_deref() != Some("ProgressDeadlineExceeded")
                    && c.reason.as_deref() != Some("NewReplicaSetAvailable")
                {
                    let deadline = i64::from(
                        d.spec
                            .as_ref()
                            .and_then(|s| s.progress_deadline_seconds)
                            .unwrap_or(600),
                    );
                    let since = c.last_update_time.as_ref().map_or(0, clock::seconds_since);
                    let left = u64::try_from(deadline - since + 1).unwrap_or(1);
                    return Ok(Some(Duration::from_secs(left.max(1))));
                }
            }
        }
        Ok(None)
    }

    async fn check_paused_conditions(&self, d: &mut Deployment) -> Result<(), Error> {
        if !has_progress_deadline(d) {
            return Ok(());
        }
        let mut s = d.status.clone().unwrap_or_default();
        let cond = get_condition(&s, "Progressing");
        if cond.and_then(|c| c.reason.as_deref()) == Some("ProgressDeadlineExceeded") {
            return Ok(());
        }
        let paused_cond = cond.and_then(|c| c.reason.as_deref()) == Some("DeploymentPaused");
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused && !paused_cond {
            set_condition(
                &mut s,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused".into(),
                ),
            );
        } else if !paused && paused_cond {
            set_condition(
                &mut s,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed".into(),
                ),
            );
        } else {
            return Ok(());
        }
        self.update_status(d, s).await
    }

    /// Proportional scaling of the active ReplicaSets.
    async fn scale(
        &self,
        d: &Deployment,
        new: &mut Option<ReplicaSet>,
        old: &mut [ReplicaSet],
    ) -> Result<(), Error> {
        let replicas = d_replicas(d);
        // One active (or none: the newest) ReplicaSet takes the whole size.
        let active: Vec<usize> = (0..old.len())
            .filter(|i| replicas_of(&old[*i]) > 0)
            .collect();
        let new_active = new.as_ref().is_some_and(|rs| replicas_of(rs) > 0);
        let n_active = active.len() + usize::from(new_active);
        if n_active <= 1 {
            if new_active || (n_active == 0 && new.is_some()) {
                if let Some(rs) = new.as_mut() {
                    if replicas_of(rs) != replicas {
                        self.scale_rs(rs, replicas, d).await?;
                    }
                }
                return Ok(());
            }
            let target = if n_active == 1 {
                active.first().copied()
            } else {
                (0..old.len()).max_by_key(|i| creation_key(&old[*i]))
            };
            if let Some(i) = target {
                if replicas_of(&old[i]) != replicas {
                    self.scale_rs(&mut old[i], replicas, d).await?;
                }
            }
            return Ok(());
        }
        // Saturated new ReplicaSet: old ones go.
        if let Some(rs) = new.as_ref() {
            let saturated = replicas_of(rs) == replicas
                && int_annotation(rs, DESIRED_REPLICAS) == Some(replicas)
                && available_of(rs) == replicas;
            if saturated {
                for i in active {
                    self.scale_rs(&mut old[i], 0, d).await?;
                }
                return Ok(());
            }
        }
        if !is_rolling(d) {
            return Ok(());
        }
        // Spread the difference in proportion to the ReplicaSets' sizes.
        enum Which {
            New,
            Old(usize),
        }
        let mut sets: Vec<(Which, i32, (Option<i64>, String))> = Vec::new();
        if let Some(rs) = new.as_ref().filter(|rs| replicas_of(rs) > 0) {
            sets.push((Which::New, replicas_of(rs), creation_key(rs)));
        }
        for i in active {
            sets.push((Which::Old(i), replicas_of(&old[i]), creation_key(&old[i])));
        }
        let current: i32 = sets.iter().map(|s| s.1).sum();
        let allowed = if replicas > 0 {
            replicas + max_surge(d)
        } else {
            0
        };
        let to_add = allowed - current;
        if to_add == 0 {
            return Ok(());
        }
        if to_add > 0 {
            // Larger first, newer first on ties.
            sets.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.2.cmp(&a.2)));
        } else {
            // Larger first, older first on ties.
            sets.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.2.cmp(&b.2)));
        }
        let status_replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let mut sizes: Vec<i32> = Vec::with_capacity(sets.len());
        let mut added = 0;
        for (which, size, _) in &sets {
            let rs = match which {
                Which::New => new.as_ref(),
                Which::Old(i) => old.get(*i),
            };
            let mut proportion = 0;
            if let Some(rs) = rs {
                if *size > 0 && to_add != added {
                    let fraction = if replicas == 0 {
                        -*size
                    } else {
                        let annotated = int_annotation(rs, MAX_REPLICAS)
                            .unwrap_or(status_replicas)
                            .max(1);
                        let f = f64::from(*size) * f64::from(allowed) / f64::from(annotated);
                        (f.round() as i32) - *size
                    };
                    let left = to_add - added;
                    proportion = if to_add > 0 {
                        fraction.min(left)
                    } else {
                        fraction.max(left)
                    };
                }
            }
            added += proportion;
            sizes.push(size + proportion);
        }
        if added != to_add {
            if let Some(first) = sizes.first_mut() {
                *first = (*first + to_add - added).max(0);
            }
        }
        for ((which, _, _), size) in sets.iter().zip(sizes) {
            match which {
                Which::New => {
                    if let Some(rs) = new.as_mut() {
                        self.scale_rs(rs, size.max(0), d).await?;
                    }
                }
                Which::Old(i) => {
                    self.scale_rs(&mut old[*i], size.max(0), d).await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes old ReplicaSets beyond the history limit that have no pods.
    async fn cleanup(&self, d: &Deployment, old: &[ReplicaSet]) -> Result<(), Error> {
        let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let diff = cleanable.len() as i64 - i64::from(limit);
        if diff <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|rs| (revision_of(rs), creation_key(rs)));
        for rs in cleanable
            .into_iter()
            .take(usize::try_from(diff).unwrap_or(0))
        {
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if status_replicas(rs) != 0
                || replicas_of(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            let name = rs.metadata.name.clone().unwrap_or_default();
            let ns = rs.metadata.namespace.clone().unwrap_or_default();
            match self
                .rs_api(&ns)
                .delete(&name, &DeleteOptions::default())
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(api_err(format!("deleting old ReplicaSet {name}"))(e)),
            }
        }
        Ok(())
    }

    /// Scaling, or a paused Deployment.
    async fn sync(&self, d: &mut Deployment, sets: Vec<ReplicaSet>) -> Result<Action, Error> {
        let (mut new, mut old) = self.get_all(d, sets, false).await?;
        self.scale(d, &mut new, &mut old).await?;
        if d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false) {
            self.cleanup(d, &old).await?;
        }
        self.sync_status(d, new.as_ref(), &old).await?;
        Ok(Action::await_change())
    }

    async fn finish_rollout(
        &self,
        d: &mut Deployment,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<Action, Error> {
        let next = self.sync_rollout_status(d, new, old).await?;
        Ok(next.map_or(Action::await_change(), Action::requeue))
    }

    async fn rollout_rolling(
        &self,
        d: &mut Deployment,
        sets: Vec<ReplicaSet>,
    ) -> Result<Action, Error> {
        let (new, mut old) = self.get_all(d, sets, true).await?;
        let Some(mut new) = new else {
            return Ok(Action::backoff());
        };
        let replicas = d_replicas(d);
        // Grow (or trim) the new ReplicaSet.
        let scaled_up = if replicas_of(&new) == replicas {
            false
        } else if replicas_of(&new) > replicas {
            self.scale_rs(&mut new, replicas, d).await?
        } else {
            let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&new)).collect();
            let current = sum(&all, replicas_of);
            let max_total = replicas + max_surge(d);
            let size = if current >= max_total {
                replicas_of(&new)
            } else {
                replicas_of(&new) + (max_total - current).min(replicas - replicas_of(&new))
            };
            self.scale_rs(&mut new, size, d).await?
        };
        if scaled_up {
            return self.finish_rollout(d, Some(&new), &old).await;
        }
        // Shrink the old ones within maxUnavailable.
        let scaled_down = self.reconcile_old(d, &new, &mut old).await?;
        if scaled_down {
            return self.finish_rollout(d, Some(&new), &old).await;
        }
        let status = Self::calculate_status(d, Some(&new), &old);
        if deployment_complete(d, &status) {
            self.cleanup(d, &old).await?;
        }
        self.finish_rollout(d, Some(&new), &old).await
    }

    async fn reconcile_old(
        &self,
        d: &Deployment,
        new: &ReplicaSet,
        old: &mut [ReplicaSet],
    ) -> Result<bool, Error> {
        let old_refs: Vec<&ReplicaSet> = old.iter().collect();
        if sum(&old_refs, replicas_of) == 0 {
            return Ok(false);
        }
        let all_pods = sum(&old_refs, replicas_of) + replicas_of(new);
        let min_available = d_replicas(d) - max_unavailable(d);
        let new_unavailable = replicas_of(new) - available_of(new);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let mut order: Vec<usize> = (0..old.len()).collect();
        order.sort_by_key(|i| creation_key(&old[*i]));
        // Unhealthy replicas first: they do not count towards availability.
        let mut cleaned = 0;
        for &i in &order {
            if cleaned >= max_scaled_down {
                break;
            }
            let rs = &old[i];
            let unhealthy = replicas_of(rs) - available_of(rs);
            if replicas_of(rs) == 0 || unhealthy <= 0 {
                continue;
            }
            let n = (max_scaled_down - cleaned).min(unhealthy);
            let size = replicas_of(rs) - n;
            self.scale_rs(&mut old[i], size, d).await?;
            cleaned += n;
        }
        // Then healthy ones, keeping minAvailable. A set's pods beyond its replicas are
        // on their way out (its status may still count them just after a scale-down),
        // so no set counts as more available than its replicas: Kubernetes sums the
        // statuses as they are, and a status that lags a scale-down lets it take one
        // step too many below minAvailable.
        let mut all: Vec<&ReplicaSet> = old.iter().collect();
        all.push(new);
        let available = sum(&all, |rs| available_of(rs).min(replicas_of(rs)));
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for &i in &order {
                if scaled >= total {
                    break;
                }
                let size = replicas_of(&old[i]);
                if size == 0 {
                    continue;
                }
                let n = size.min(total - scaled);
                self.scale_rs(&mut old[i], size - n, d).await?;
                scaled += n;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    fn old_pods_running(&self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> bool {
        let old_refs: Vec<&ReplicaSet> = old.iter().collect();
        if sum(&old_refs, status_replicas) > 0 {
            return true;
        }
        let new_uid = new.and_then(|rs| rs.metadata.uid.clone());
        old.iter()
            .filter(|rs| rs.metadata.uid != new_uid)
            .filter_map(|rs| rs.metadata.uid.as_deref())
            .flat_map(|uid| self.pods.owned_by(uid))
            .any(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Failed" | "Succeeded")
                )
            })
    }

    async fn rollout_recreate(
        &self,
        d: &mut Deployment,
        sets: Vec<ReplicaSet>,
    ) -> Result<Action, Error> {
        let (new, mut old) = self.get_all(d, sets, false).await?;
        let mut scaled_down = false;
        for rs in old.iter_mut().filter(|rs| replicas_of(rs) > 0) {
            scaled_down |= self.scale_rs(rs, 0, d).await?;
        }
        if scaled_down {
            return self.finish_rollout(d, new.as_ref(), &old).await;
        }
        if self.old_pods_running(new.as_ref(), &old) {
            return self.finish_rollout(d, new.as_ref(), &old).await;
        }
        let mut new = match new {
            Some(rs) => rs,
            None => {
                let sets: Vec<ReplicaSet> = old.clone();
                let (new, rest) = self.get_all(d, sets, true).await?;
                old = rest;
                match new {
                    Some(rs) => rs,
                    None => return Ok(Action::backoff()),
                }
            }
        };
        let replicas = d_replicas(d);
        if replicas_of(&new) != replicas {
            self.scale_rs(&mut new, replicas, d).await?;
        }
        let status = Self::calculate_status(d, Some(&new), &old);
        if deployment_complete(d, &status) {
            self.cleanup(d, &old).await?;
        }
        self.finish_rollout(d, Some(&new), &old).await
    }
}

#[async_trait]
impl Reconciler<Deployment> for DeploymentController {
    type Error = Error;

    async fn reconcile(&self, obj: Arc<Deployment>, ctx: &Context) -> Result<Action, Error> {
        let mut d = (*obj).clone();
        let ns = ctx.key.ns().unwrap_or_default().to_owned();
        let spec = d.spec.clone().unwrap_or_default();
        let selector =
            match workload_selector(&self.recorder, &d, Some(&spec.selector), "deployment").await {
                Ok(s) => s,
                Err(action) => return Ok(action),
            };
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let candidates = claim_candidates(&self.sets, &ns, &uid);
        let owned = claim(&self.rs_api(&ns), &d, &selector, candidates)
            .await
            .map_err(api_err("claiming ReplicaSets"))?;
        let sets: Vec<ReplicaSet> = owned.iter().map(|rs| (**rs).clone()).collect();
        if d.metadata.deletion_timestamp.is_some() {
            let (new, old) = self.get_all(&mut d, sets, false).await?;
            self.sync_status(&mut d, new.as_ref(), &old).await?;
            return Ok(Action::await_change());
        }
        self.check_paused_conditions(&mut d).await?;
        if spec.paused.unwrap_or(false) {
            return self.sync(&mut d, sets).await;
        }
        // A scaling event: an active ReplicaSet's desired-replicas differs.
        let replicas = d_replicas(&d);
        let scaling = sets.iter().any(|rs| {
            replicas_of(rs) > 0
                && int_annotation(rs, DESIRED_REPLICAS).is_some_and(|v| v != replicas)
        });
        if scaling {
            return self.sync(&mut d, sets).await;
        }
        if is_rolling(&d) {
            self.rollout_rolling(&mut d, sets).await
        } else {
            self.rollout_recreate(&mut d, sets).await
        }
    }
}
