//! The ReplicaSet controller: keeps `spec.replicas` pods running from the template.
//!
//! As Kubernetes' ReplicaSet controller:
//! - pods are created from the template with `generateName: <rs>-` (so named
//!   `<rs>-<5 random characters>`), the template's labels, annotations and finalizers,
//!   and an ownerReference with `controller` and `blockOwnerDeletion`; in slow-start
//!   batches (1, 2, 4, ...) stopping at the first failure; at most 500 per reconcile;
//! - orphans matching the selector are adopted, owned pods that no longer match are
//!   released;
//! - scale-down deletes first unscheduled, then pending, then not-ready pods, then by
//!   `controller.kubernetes.io/pod-deletion-cost`, pods doubled up on a node, ready for
//!   less time, with more restarts, and newer ones;
//! - creations and deletions asked for are *expected* until the pod cache shows them, so
//!   a lagging cache never causes extra pods;
//! - status: `replicas`, `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas`
//!   (ready for `minReadySeconds`), `observedGeneration`, and the `ReplicaFailure`
//!   condition (`FailedCreate`/`FailedDelete`) while creating or deleting fails.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use keelson_core::client::{Api, Client, DeleteOptions, Patch};
use keelson_core::k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use keelson_core::k8s_openapi::api::core::v1::Pod;
use keelson_core::{LabelSelector, ObjectMeta};

use super::common::{
    claim, claim_candidates, controller_ref, is_pod_active, is_pod_available, is_pod_ready,
    orphan_index, pod_available_in, set_condition, status_merge_patch, Expectations, ORPHAN_INDEX,
};
use crate::controller::{Action, Context, Controller, Reconciler};
use crate::events::{object_reference, EventType, Recorder};
use crate::informer::InformerFactory;
use crate::object::{controller_of, ObjectRef};
use crate::reflector::{Change, Reader};
use crate::{clock, watcher};

/// The most pods one reconcile creates or deletes (Kubernetes' `burstReplicas`).
pub const BURST_REPLICAS: usize = 500;

use super::common::api_err;
pub use super::common::Error;

/// The ReplicaSet reconciler.
pub struct ReplicaSetController {
    client: Client,
    pods: Reader<Pod>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

impl std::fmt::Debug for ReplicaSetController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSetController")
            .finish_non_exhaustive()
    }
}

/// The ReplicaSets whose selector matches `pod` (to adopt an orphan).
fn matching_sets(sets: &Reader<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    sets.list_namespace(ns)
        .iter()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .map_or_else(
                    || Ok(LabelSelector::nothing()),
                    |s| LabelSelector::from_k8s(&s.selector),
                )
                .is_ok_and(|sel| !sel.is_empty() && sel.matches_meta(&pod.metadata))
        })
        .map(|rs| ObjectRef::from_meta(&rs.metadata))
        .collect()
}

fn owner_key(meta: &ObjectMeta, kind: &str) -> Option<ObjectRef> {
    controller_of(meta)
        .filter(|r| r.kind == kind)
        .map(|r| ObjectRef::new(meta.namespace.as_deref(), &r.name))
}

impl ReplicaSetController {
    /// Builds the controller on `factory`'s informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
    ) -> (Controller<ReplicaSet>, Arc<Self>) {
        let cfg = watcher::Config::default;
        let pods_api = Api::<Pod>::all(client.clone());
        // Pods are the most numerous objects: cached compactly.
        let pod_informer = factory.informer(pods_api.clone(), cfg().compact());
        pod_informer.add_index(ORPHAN_INDEX, orphan_index());
        let pods = pod_informer.reader();
        let expectations = Arc::new(Expectations::default());
        let controller =
            Controller::with_factory(factory, Api::<ReplicaSet>::all(client.clone()), cfg())
                .name("replicaset");
        let sets = controller.store();
        let exp = expectations.clone();
        let controller =
            controller.watches_changes(pods_api, cfg().compact(), move |change: &Change<Pod>| {
                let mut keys = Vec::new();
                match change {
                    Change::Applied { old, new } => {
                        let owner = owner_key(&new.metadata, "ReplicaSet");
                        let newly_deleting = new.metadata.deletion_timestamp.is_some()
                            && old
                                .as_ref()
                                .is_none_or(|o| o.metadata.deletion_timestamp.is_none());
                        if let Some(o) = &owner {
                            if old.is_none() && new.metadata.deletion_timestamp.is_none() {
                                exp.creation_observed(o);
                            } else if newly_deleting {
                                exp.deletion_observed(o, &ObjectRef::from_meta(&new.metadata));
                            }
                            keys.push(o.clone());
                        } else if new.metadata.deletion_timestamp.is_none() {
                            keys.extend(matching_sets(&sets, new));
                        }
                        if let Some(prev) = old
                            .as_ref()
                            .and_then(|o| owner_key(&o.metadata, "ReplicaSet"))
                        {
                            if Some(&prev) != owner.as_ref() {
                                keys.push(prev);
                            }
                        }
                    }
                    Change::Deleted(pod) => {
                        if let Some(o) = owner_key(&pod.metadata, "ReplicaSet") {
                            exp.deletion_observed(&o, &ObjectRef::from_meta(&pod.metadata));
                            keys.push(o);
                        }
                    }
                }
                keys
            });
        let reconciler = Arc::new(ReplicaSetController {
            client: client.clone(),
            pods,
            expectations,
            recorder: Recorder::new(client.clone(), "replicaset-controller", "keelson"),
        });
        (controller, reconciler)
    }

    async fn manage_replicas(
        &self,
        rs: &ReplicaSet,
        key: &ObjectRef,
        owned: &[Arc<Pod>],
    ) -> Result<(), Error> {
        let replicas =
            usize::try_from(rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)).unwrap_or(0);
        let ns = key.ns().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let reference = object_reference(rs);
        if owned.len() < replicas {
            let want = (replicas - owned.len()).min(BURST_REPLICAS);
            self.expectations
                .expect_creations(key, i64::try_from(want).unwrap_or(i64::MAX));
            let template = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.clone())
                .unwrap_or_default();
            let tmeta = template.metadata.unwrap_or_default();
            let mut pod = Pod::default();
            pod.metadata.generate_name = Some(format!("{}-", key.name));
            pod.metadata.namespace = Some(ns.to_owned());
            pod.metadata.labels = tmeta.labels;
            pod.metadata.annotations = tmeta.annotations;
            pod.metadata.finalizers = tmeta.finalizers;
            pod.metadata.owner_references = Some(vec![controller_ref(rs)]);
            pod.spec = template.spec;
            let mut done = 0;
            let mut batch = 1;
            while done < want {
                let size = batch.min(want - done);
                let results = join_all((0..size).map(|_| pods.create(&pod))).await;
                done += size;
                let mut first_err = None;
                for r in results {
                    match r {
                        Ok(p) => {
                            let name = p.metadata.name.unwrap_or_default();
                            self.recorder
                                .emit(
                                    &reference,
                                    EventType::Normal,
                                    "SuccessfulCreate",
                                    &format!("Created pod: {name}"),
                                )
                                .await;
                        }
                        Err(e) => {
                            self.expectations.creation_observed(key);
                            first_err.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = first_err {
                    // The creations not attempted will not be observed either.
                    for _ in done..want {
                        self.expectations.creation_observed(key);
                    }
                    self.recorder
                        .emit(
                            &reference,
                            EventType::Warning,
                            "FailedCreate",
                            &format!("Error creating: {e}"),
                        )
                        .await;
                    return Err(api_err("creating pods")(e));
                }
                batch *= 2;
            }
        } else if owned.len() > replicas {
            let n = (owned.len() - replicas).min(BURST_REPLICAS);
            let victims = pods_to_delete(owned, n);
            self.expectations.expect_deletions(
                key,
                victims.iter().map(|p| ObjectRef::from_meta(&p.metadata)),
            );
            let results = join_all(victims.iter().map(|p| {
                let name = p.metadata.name.clone().unwrap_or_default();
                let pods = pods.clone();
                async move {
                    (
                        name.clone(),
                        pods.delete(&name, &DeleteOptions::default()).await,
                    )
                }
            }))
            .await;
            let mut first_err = None;
            for (name, r) in results {
                match r {
                    Ok(_) => {
                        self.recorder
                            .emit(
                                &reference,
                                EventType::Normal,
                                "SuccessfulDelete",
                                &format!("Deleted pod: {name}"),
                            )
                            .await;
                    }
                    Err(e) => {
                        self.expectations
                            .deletion_observed(key, &ObjectRef::new(Some(ns), &name));
                        if !e.is_not_found() {
                            self.recorder
                                .emit(
                                    &reference,
                                    EventType::Warning,
                                    "FailedDelete",
                                    &format!("Error deleting: {e}"),
                                )
                                .await;
                            first_err.get_or_insert(e);
                        }
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(api_err("deleting pods")(e));
            }
        }
        Ok(())
    }
}

fn phase_rank(p: &Pod) -> u8 {
    match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    }
}

fn node(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

fn deletion_cost(p: &Pod) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn ready_since(p: &Pod) -> Option<i64> {
    p.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0.as_second())
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

/// `Less` when `a` should be deleted before `b` (Kubernetes' ranking).
fn deletion_order(a: &Pod, b: &Pod, ranks: &HashMap<&str, usize>) -> Ordering {
    let (na, nb) = (node(a), node(b));
    if na != nb && (na.is_empty() || nb.is_empty()) {
        return if na.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    phase_rank(a)
        .cmp(&phase_rank(b))
        .then_with(|| is_pod_ready(a).cmp(&is_pod_ready(b)))
        .then_with(|| deletion_cost(a).cmp(&deletion_cost(b)))
        .then_with(|| {
            let ra = ranks.get(na).copied().unwrap_or(0);
            let rb = ranks.get(nb).copied().unwrap_or(0);
            rb.cmp(&ra)
        })
        .then_with(|| {
            if is_pod_ready(a) && is_pod_ready(b) {
                // Ready for less time first.
                ready_since(b).cmp(&ready_since(a))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let ca = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let cb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
            match (ca, cb) {
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (ca, cb) => cb.cmp(&ca),
            }
        })
}

/// The `n` pods to delete first.
pub fn pods_to_delete(pods: &[Arc<Pod>], n: usize) -> Vec<Arc<Pod>> {
    let mut ranks: HashMap<&str, usize> = HashMap::new();
    for p in pods {
        if !node(p).is_empty() {
            *ranks.entry(node(p)).or_default() += 1;
        }
    }
    let mut sorted: Vec<&Arc<Pod>> = pods.iter().collect();
    sorted.sort_by(|a, b| deletion_order(a, b, &ranks));
    sorted.into_iter().take(n).cloned().collect()
}

fn fully_labeled(
    pod: &Pod,
    template_labels: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    let labels = pod.metadata.labels.as_ref();
    template_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The status a ReplicaSet should have, given the pods it owns.
fn calculate_status(
    rs: &ReplicaSet,
    owned: &[Arc<Pod>],
    manage_err: Option<(&Error, bool)>,
) -> ReplicaSetStatus {
    let spec = rs.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(owned.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let mut status = rs.status.clone().unwrap_or_default();
    status.replicas = count(&|_| true);
    status.fully_labeled_replicas = Some(count(&|p| fully_labeled(p, template_labels)));
    status.ready_replicas = Some(count(&is_pod_ready));
    status.available_replicas = Some(count(&|p| is_pod_available(p, min_ready)));
    status.observed_generation = rs.metadata.generation;
    let mut conditions = status.conditions.take().unwrap_or_default();
    match manage_err {
        Some((e, creating)) => {
            let cond = ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some(
                    if creating {
                        "FailedCreate"
                    } else {
                        "FailedDelete"
                    }
                    .into(),
                ),
                message: Some(e.to_string()),
                last_transition_time: Some(clock::now_time()),
            };
            if !conditions.iter().any(|c| c.type_ == "ReplicaFailure") {
                set_condition(
                    &mut conditions,
                    cond,
                    |c| &c.type_,
                    |c| &c.status,
                    |c| c.reason.as_deref(),
                    |n, o| n.last_transition_time.clone_from(&o.last_transition_time),
                );
            }
        }
        None => conditions.retain(|c| c.type_ != "ReplicaFailure"),
    }
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    status
}

#[async_trait]
impl Reconciler<ReplicaSet> for ReplicaSetController {
    type Error = Error;

    async fn reconcile(&self, rs: Arc<ReplicaSet>, ctx: &Context) -> Result<Action, Error> {
        let key = &ctx.key;
        let ns = key.ns().unwrap_or_default();
        let spec = rs.spec.clone().unwrap_or_default();
        let selector = match LabelSelector::from_k8s(&spec.selector) {
            Ok(s) => s,
            Err(e) => {
                self.recorder
                    .emit(
                        &object_reference(rs.as_ref()),
                        EventType::Warning,
                        "InvalidSelector",
                        &e.to_string(),
                    )
                    .await;
                return Ok(Action::await_change());
            }
        };
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let active: Vec<Arc<Pod>> = claim_candidates(&self.pods, ns, &uid)
            .into_iter()
            .filter(|p| is_pod_active(p))
            .collect();
        let owned = claim(&pods_api, rs.as_ref(), &selector, active)
            .await
            .map_err(api_err("claiming pods"))?;
        let replicas = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
        let mut manage_err = None;
        if self.expectations.satisfied(key) && rs.metadata.deletion_timestamp.is_none() {
            if let Err(e) = self.manage_replicas(&rs, key, &owned).await {
                manage_err = Some((e, owned.len() < replicas));
            }
        }
        let status = calculate_status(&rs, &owned, manage_err.as_ref().map(|(e, c)| (e, *c)));
        if rs.status.as_ref() != Some(&status) {
            let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
            let patch = status_merge_patch(rs.status.as_ref(), &status);
            match api.patch_status(&key.name, &Patch::Merge(patch)).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::await_change()),
                Err(e) => return Err(api_err("updating the status")(e)),
            }
        }
        if let Some((e, _)) = manage_err {
            return Err(e);
        }
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        if min_ready > 0 {
            // Reconcile again when the next ready pod becomes available.
            let next = owned
                .iter()
                .filter_map(|p| pod_available_in(p, min_ready))
                .filter(|d| !d.is_zero())
                .min();
            if let Some(d) = next {
                return Ok(Action::requeue(d + Duration::from_millis(100)));
            }
        }
        Ok(Action::await_change())
    }
}
