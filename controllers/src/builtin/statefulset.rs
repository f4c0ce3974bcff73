//! The StatefulSet controller: pods with stable names, created, updated and removed in
//! order.
//!
//! As Kubernetes' StatefulSet controller:
//! - pods are named `<set>-<ordinal>` for the ordinals `[start, start + replicas)`
//!   (`spec.ordinals.start`, default 0), with `hostname` the pod name and `subdomain`
//!   the set's `serviceName`, the template's labels plus
//!   `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and
//!   `controller-revision-hash` (the name of the ControllerRevision the pod was made
//!   from), and a controller reference; orphans matching the selector are adopted;
//! - `podManagementPolicy: OrderedReady` creates one pod at a time in ordinal order,
//!   each only once every lower one is Running and Ready (for `minReadySeconds`), and
//!   removes pods beyond `replicas` one at a time from the highest ordinal, each only
//!   once the rest are; `Parallel` creates and removes them all at once;
//! - failed pods are deleted and made again;
//! - the template's history is kept in ControllerRevisions (see the `history` helpers;
//!   at most `revisionHistoryLimit` unused ones are kept); `status.updateRevision`
//!   is the newest, `status.currentRevision` the one the set rolls from;
//! - `updateStrategy: RollingUpdate` replaces pods of other revisions one at a time from
//!   the highest ordinal down to `partition` (ordinals below it keep, and are re-made
//!   from, the current revision), each once every pod is Running and Ready; when every
//!   pod is updated and ready, the update revision becomes the current one. `OnDelete`
//!   replaces nothing: pods deleted by someone else are re-made from the update revision;
//! - status: `replicas`, `readyReplicas`, `availableReplicas` (ready for
//!   `minReadySeconds`), `currentReplicas`, `updatedReplicas`, `currentRevision`,
//!   `updateRevision`, `collisionCount`, `observedGeneration` — what
//!   `kubectl rollout status statefulset` reads.
//!
//! Not done: `volumeClaimTemplates` are ignored (no PersistentVolumeClaims are made and
//! the pods get no volumes for them), and `maxUnavailable` (alpha in 1.33) is taken as 1.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keelson_core::client::{Api, Client, DeleteOptions, Patch};
use keelson_core::k8s_openapi::api::apps::v1::{
    ControllerRevision, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use keelson_core::k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use keelson_core::LabelSelector;

use super::common::{
    claim, claim_candidates, controller_ref, is_pod_available, is_pod_ready, orphan_index,
    pod_available_in, status_merge_patch, workload_selector, ORPHAN_INDEX,
};
use super::history::{self, SyncError, REVISION_LABEL};
use crate::controller::{Action, Context, Controller, Reconciler};
use crate::events::{object_reference, EventType, Recorder};
use crate::informer::InformerFactory;
use crate::object::controller_of;
use crate::reflector::Reader;
use crate::watcher;

/// The pod label holding the pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The pod label holding the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

use super::common::api_err;
pub use super::common::Error;

/// The StatefulSet reconciler.
pub struct StatefulSetController {
    client: Client,
    pods: Reader<Pod>,
    revisions: Reader<ControllerRevision>,
    recorder: Recorder,
}

impl std::fmt::Debug for StatefulSetController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatefulSetController")
            .finish_non_exhaustive()
    }
}

/// The ordinal of a pod of `set` (from its name), if it has one.
pub fn ordinal_of(set: &str, pod: &Pod) -> Option<i32> {
    let name = pod.metadata.name.as_deref()?;
    let rest = name.strip_prefix(set)?.strip_prefix('-')?;
    if rest.starts_with('+') || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse::<i32>().ok().filter(|o| *o >= 0)
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn is_failed(p: &Pod) -> bool {
    matches!(phase(p), Some("Failed"))
}

fn is_terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// Running, Ready for `min_ready` seconds and not going away.
fn is_healthy(p: &Pod, min_ready: i32) -> bool {
    phase(p) == Some("Running") && is_pod_available(p, min_ready) && !is_terminating(p)
}

fn revision_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

struct Strategy {
    rolling: bool,
    partition: i32,
}

fn strategy(spec: &StatefulSetSpec) -> Strategy {
    let s = spec.update_strategy.as_ref();
    let rolling = s
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t != "OnDelete");
    let partition = s
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    Strategy { rolling, partition }
}

impl StatefulSetController {
    /// Builds the controller on `factory`'s informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
    ) -> (Controller<StatefulSet>, Arc<Self>) {
        let cfg = watcher::Config::default;
        let pods_api = Api::<Pod>::all(client.clone());
        let pod_informer = factory.informer(pods_api.clone(), cfg().compact());
        pod_informer.add_index(ORPHAN_INDEX, orphan_index());
        let pods = pod_informer.reader();
        let rev_api = Api::<ControllerRevision>::all(client.clone());
        let revisions = factory.informer(rev_api.clone(), cfg()).reader();
        let controller =
            Controller::with_factory(factory, Api::<StatefulSet>::all(client.clone()), cfg())
                .name("statefulset");
        let sets = controller.store();
        let controller =
            controller
                .owns(rev_api, cfg())
                .watches(pods_api, cfg().compact(), move |pod: &Pod| {
                    let ns = pod.metadata.namespace.as_deref();
                    match controller_of(&pod.metadata) {
                        Some(r) if r.kind == "StatefulSet" => {
                            vec![crate::ObjectRef::new(ns, &r.name)]
                        }
                        Some(_) => Vec::new(),
                        None => sets
                            .list_namespace(ns.unwrap_or_default())
                            .iter()
                            .filter(|s| {
                                s.spec
                                    .as_ref()
                                    .and_then(|s| LabelSelector::from_k8s(&s.selector).ok())
                                    .is_some_and(|sel| {
                                        !sel.is_empty() && sel.matches_meta(&pod.metadata)
                                    })
                            })
                            .map(|s| crate::ObjectRef::from_meta(&s.metadata))
                            .collect(),
                    }
                });
        let reconciler = Arc::new(StatefulSetController {
            client: client.clone(),
            pods,
            revisions,
            recorder: Recorder::new(client.clone(), "statefulset-controller", "keelson"),
        });
        (controller, reconciler)
    }

    async fn event(&self, set: &StatefulSet, type_: EventType, reason: &str, message: &str) {
        self.recorder
            .emit(&object_reference(set), type_, reason, message)
            .await;
    }

    /// A new pod for `ordinal` from `template` of revision `revision`.
    fn new_pod(set: &StatefulSet, ordinal: i32, template: &PodTemplateSpec, revision: &str) -> Pod {
        let set_name = set.metadata.name.clone().unwrap_or_default();
        let name = format!("{set_name}-{ordinal}");
        let tmeta = template.metadata.clone().unwrap_or_default();
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.clone());
        pod.metadata.namespace.clone_from(&set.metadata.namespace);
        let mut labels = tmeta.labels.unwrap_or_default();
        labels.insert(POD_NAME_LABEL.into(), name.clone());
        labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
        labels.insert(REVISION_LABEL.into(), revision.to_owned());
        pod.metadata.labels = Some(labels);
        pod.metadata.annotations = tmeta.annotations;
        pod.metadata.finalizers = tmeta.finalizers;
        pod.metadata.owner_references = Some(vec![controller_ref(set)]);
        let mut spec = template.spec.clone().unwrap_or_default();
        spec.hostname = Some(name);
        if let Some(svc) = set
            .spec
            .as_ref()
            .and_then(|s| s.service_name.clone())
            .filter(|s| !s.is_empty())
        {
            spec.subdomain = Some(svc);
        }
        pod.spec = Some(spec);
        pod
    }

    async fn create_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<(), Error> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match api.create(pod).await {
            Ok(_) => {
                let set_name = set.metadata.name.as_deref().unwrap_or_default();
                self.event(
                    set,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("create Pod {name} in StatefulSet {set_name} successful"),
                )
                .await;
                Ok(())
            }
            // The cache is behind: it is there already.
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => {
                self.event(
                    set,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("create Pod {name} failed error: {e}"),
                )
                .await;
                Err(api_err(format!("creating pod {name}"))(e))
            }
        }
    }

    async fn delete_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<(), Error> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let opts = DeleteOptions {
            uid: pod.metadata.uid.clone(),
            ..DeleteOptions::default()
        };
        match api.delete(&name, &opts).await {
            Ok(_) => {
                let set_name = set.metadata.name.as_deref().unwrap_or_default();
                self.event(
                    set,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("delete Pod {name} in StatefulSet {set_name} successful"),
                )
                .await;
                Ok(())
            }
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(api_err(format!("deleting pod {name}"))(e)),
        }
    }

    /// Creates, deletes and replaces pods, one step of the policy at a time.
    async fn manage(
        &self,
        set: &StatefulSet,
        owned: &[Arc<Pod>],
        current: (&str, &PodTemplateSpec),
        update: (&str, &PodTemplateSpec),
    ) -> Result<(), Error> {
        let spec = set.spec.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let end = start.saturating_add(replicas);
        let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let is_healthy = |p: &Pod| is_healthy(p, min_ready);
        let strategy = strategy(&spec);
        let mut slots: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
        let mut condemned: Vec<(i32, Arc<Pod>)> = Vec::new();
        for p in owned {
            match ordinal_of(&name, p) {
                Some(o) if (start..end).contains(&o) => {
                    slots.insert(o, p.clone());
                }
                Some(o) => condemned.push((o, p.clone())),
                None => {}
            }
        }
        condemned.sort_by_key(|c| std::cmp::Reverse(c.0));
        // Which revision a (re)made pod gets: below the partition, the current one.
        let revision_for = |o: i32| {
            if strategy.rolling && o < strategy.partition {
                current
            } else {
                update
            }
        };

        // Failed pods go, to be made again.
        let mut changed = false;
        for p in slots.values() {
            if is_failed(p) && !is_terminating(p) {
                self.delete_pod(set, p).await?;
                changed = true;
                if ordered {
                    return Ok(());
                }
            }
        }
        if changed {
            return Ok(());
        }

        // Create missing pods; in order, wait for each to be Running and Ready.
        for o in start..end {
            match slots.get(&o) {
                None => {
                    let (rev, template) = revision_for(o);
                    let pod = Self::new_pod(set, o, template, rev);
                    self.create_pod(set, &pod).await?;
                    if ordered {
                        return Ok(());
                    }
                }
                Some(p) if ordered && !is_healthy(p) => {
                    tracing::debug!(pod = ?p.metadata.name, "waiting for pod to be Running and Ready");
                    return Ok(());
                }
                Some(_) => {}
            }
        }

        // Remove pods beyond the replicas, from the highest ordinal.
        let all_healthy = slots.values().all(|p| is_healthy(p));
        for (_, p) in &condemned {
            if is_terminating(p) {
                if ordered {
                    return Ok(());
                }
                continue;
            }
            if ordered && !all_healthy {
                return Ok(());
            }
            self.delete_pod(set, p).await?;
            if ordered {
                return Ok(());
            }
        }
        if ordered && !condemned.is_empty() {
            return Ok(());
        }

        // Rolling update: one pod at a time, highest ordinal first, down to the partition.
        if !strategy.rolling {
            return Ok(());
        }
        if slots.len() < usize::try_from(replicas).unwrap_or(0)
            || slots.values().any(|p| !is_healthy(p))
        {
            return Ok(());
        }
        let floor = strategy.partition.max(start);
        for (o, p) in slots.iter().rev() {
            if *o < floor {
                break;
            }
            if revision_of(p) != Some(update.0) {
                tracing::debug!(pod = ?p.metadata.name, revision = update.0, "updating pod");
                self.delete_pod(set, p).await?;
                return Ok(());
            }
        }
        Ok(())
    }
}

fn calculate_status(
    set: &StatefulSet,
    owned: &[Arc<Pod>],
    current: &str,
    update: &str,
    collision_count: i32,
) -> StatefulSetStatus {
    let spec = set.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(owned.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let mut status = set.status.clone().unwrap_or_default();
    status.observed_generation = set.metadata.generation;
    status.replicas = count(&|_| true);
    let ready = |p: &Pod| phase(p) == Some("Running") && is_pod_ready(p);
    status.ready_replicas = Some(count(&ready));
    status.available_replicas = Some(count(&|p| ready(p) && is_pod_available(p, min_ready)));
    let live = |p: &Pod| !is_terminating(p);
    status.current_replicas = Some(count(&|p| live(p) && revision_of(p) == Some(current)));
    status.updated_replicas = Some(count(&|p| live(p) && revision_of(p) == Some(update)));
    status.current_revision = Some(current.to_owned());
    status.update_revision = Some(update.to_owned());
    status.collision_count = Some(collision_count);
    // A finished rolling update: the update revision is now the current one.
    if strategy(&spec).rolling
        && status.updated_replicas == Some(status.replicas)
        && status.ready_replicas == Some(status.replicas)
    {
        status.current_revision = Some(update.to_owned());
        status.current_replicas = status.updated_replicas;
    }
    status
}

#[async_trait]
impl Reconciler<StatefulSet> for StatefulSetController {
    type Error = Error;

    async fn reconcile(&self, set: Arc<StatefulSet>, ctx: &Context) -> Result<Action, Error> {
        let key = &ctx.key;
        let ns = key.ns().unwrap_or_default();
        let spec = set.spec.clone().unwrap_or_default();
        let selector = match workload_selector(
            &self.recorder,
            set.as_ref(),
            Some(&spec.selector),
            "stateful set",
        )
        .await
        {
            Ok(s) => s,
            Err(action) => return Ok(action),
        };
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let candidates: Vec<Arc<Pod>> = claim_candidates(&self.pods, ns, &uid);
        let owned = claim(&pods_api, set.as_ref(), &selector, candidates)
            .await
            .map_err(api_err("claiming pods"))?;

        // Revisions.
        let rev_api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), ns);
        let status = set.status.clone().unwrap_or_default();
        let collision = status.collision_count.unwrap_or(0);
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let synced = match history::sync(
            &rev_api,
            set.as_ref(),
            labels,
            &spec.template,
            self.revisions.owned_by(&uid),
            collision,
        )
        .await
        {
            Ok(s) => s,
            Err(SyncError::Collision(name, count)) => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), ns);
                let patch = serde_json::json!({"status": {"collisionCount": count}});
                api.patch_status(&key.name, &Patch::Merge(patch))
                    .await
                    .map_err(api_err("raising collisionCount"))?;
                return Err(SyncError::Collision(name, count).into());
            }
            Err(e) => return Err(e.into()),
        };
        let update_name = synced.update.metadata.name.clone().unwrap_or_default();
        let update_template = spec.template.clone();
        let current_rev = status
            .current_revision
            .as_deref()
            .and_then(|c| {
                synced
                    .revisions
                    .iter()
                    .find(|r| r.metadata.name.as_deref() == Some(c))
            })
            .unwrap_or(&synced.update);
        let current_name = current_rev.metadata.name.clone().unwrap_or_default();
        let current_template =
            history::template_of(current_rev).unwrap_or_else(|| update_template.clone());

        if set.metadata.deletion_timestamp.is_none() {
            self.manage(
                &set,
                &owned,
                (&current_name, &current_template),
                (&update_name, &update_template),
            )
            .await?;
        }

        let new_status = calculate_status(
            &set,
            &owned,
            &current_name,
            &update_name,
            synced.collision_count,
        );
        if set.status.as_ref() != Some(&new_status) {
            let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), ns);
            let patch = status_merge_patch(set.status.as_ref(), &new_status);
            match api.patch_status(&key.name, &Patch::Merge(patch)).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::await_change()),
                Err(e) => return Err(api_err("updating the status")(e)),
            }
        }

        // History beyond the limit.
        let mut live: HashSet<String> = owned
            .iter()
            .filter_map(|p| revision_of(p).map(str::to_owned))
            .collect();
        live.insert(current_name);
        live.insert(update_name);
        history::truncate(
            &rev_api,
            &synced.revisions,
            &live,
            spec.revision_history_limit.unwrap_or(10),
        )
        .await
        .map_err(api_err("deleting old ControllerRevisions"))?;

        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        if min_ready > 0 {
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
