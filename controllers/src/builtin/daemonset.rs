//! The DaemonSet controller: one pod on every eligible node.
//!
//! As Kubernetes' DaemonSet controller:
//! - a node is eligible when it matches the template's `nodeSelector`, its required node
//!   affinity (`matchExpressions` on labels, `matchFields` on `metadata.name`) and
//!   `nodeName`, and the pod tolerates its `NoSchedule` and `NoExecute` taints. A pod
//!   stays on a node that no longer matches only a `NoSchedule` taint (an untolerated
//!   `NoExecute` taint or a failed selector removes it);
//! - pods get the template plus the tolerations Kubernetes adds to every daemon pod
//!   (`node.kubernetes.io/not-ready` and `unreachable` with `NoExecute`; `disk-pressure`,
//!   `memory-pressure`, `pid-pressure` and `unschedulable` with `NoSchedule`; and
//!   `network-unavailable` for host-network pods), a required node affinity on
//!   `metadata.name` naming their node (so the scheduler binds them there), the labels
//!   `controller-revision-hash` and `pod-template-generation`, `generateName: <ds>-`
//!   and a controller reference; orphans matching the selector are adopted;
//! - extra pods on a node, pods on nodes that should not run one, and failed or
//!   succeeded pods are deleted (and, where the node should run one, made again);
//!   creations and deletions are *expected* until seen, as for ReplicaSets;
//! - template history in ControllerRevisions, as for StatefulSets (pods carry the
//!   revision's hash);
//! - `updateStrategy: RollingUpdate` with `maxSurge: 0` deletes old pods while at most
//!   `maxUnavailable` nodes lack an available pod (unavailable old pods go at once);
//!   with `maxSurge > 0` a new pod starts beside an available old one on up to
//!   `maxSurge` nodes, the old one going when the new is available. `OnDelete` replaces
//!   only pods deleted by someone else;
//! - status: `desiredNumberScheduled`, `currentNumberScheduled`, `numberMisscheduled`,
//!   `numberReady`, `numberAvailable` (ready for `minReadySeconds`),
//!   `numberUnavailable`, `updatedNumberScheduled`, `collisionCount`,
//!   `observedGeneration` — what `kubectl rollout status daemonset` reads.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use keelson_core::client::{Api, Client, DeleteOptions, Patch};
use keelson_core::k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use keelson_core::k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, PodTemplateSpec, Taint, Toleration,
};
use keelson_core::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keelson_core::LabelSelector;
use serde_json::json;

use super::common::{
    claim, claim_candidates, controller_ref, is_pod_available, is_pod_ready, orphan_index,
    pod_available_in, status_merge_patch, workload_selector, Expectations, ORPHAN_INDEX,
};
use super::history::{self, SyncError, REVISION_LABEL};
use crate::controller::{Action, Context, Controller, Reconciler};
use crate::events::{object_reference, EventType, Recorder};
use crate::informer::InformerFactory;
use crate::object::{controller_of, ObjectRef};
use crate::reflector::{Change, Reader};
use crate::watcher;

/// The (deprecated, still set) pod label holding the DaemonSet's generation.
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

use super::common::api_err;
pub use super::common::Error;

/// The DaemonSet reconciler.
pub struct DaemonSetController {
    client: Client,
    pods: Reader<Pod>,
    nodes: Reader<Node>,
    revisions: Reader<ControllerRevision>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

impl std::fmt::Debug for DaemonSetController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonSetController")
            .finish_non_exhaustive()
    }
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Toleration::default()
    }
}

/// Adds the tolerations Kubernetes gives every daemon pod to `spec`.
pub fn add_default_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    let list = spec.tolerations.get_or_insert_with(Vec::new);
    for t in wanted {
        // Kubernetes replaces a toleration of the same key and effect.
        list.retain(|o| !(o.key == t.key && o.effect == t.effect));
        list.push(t);
    }
}

/// Whether `t` tolerates `taint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    let op = t.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        return op == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match op {
        "Exists" => true,
        "Equal" => {
            t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>, exists: bool) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => exists,
        "DoesNotExist" => !exists,
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    exprs.iter().all(|r| {
        let v = labels.and_then(|l| l.get(&r.key)).map(String::as_str);
        requirement_matches(r, v, v.is_some())
    }) && fields.iter().all(|r| {
        let v = if r.key == "metadata.name" {
            node.metadata.name.as_deref()
        } else {
            None
        };
        requirement_matches(r, v, v.is_some())
    })
}

/// Whether `node` satisfies a required node selector (any term matches).
pub fn node_selector_matches(selector: &NodeSelector, node: &Node) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, node))
}

/// Whether a daemon pod of `spec` should be started on `node`, and whether one already
/// there should keep running.
pub fn should_run(spec: &PodSpec, node: &Node) -> (bool, bool) {
    let node_name = node.metadata.name.as_deref().unwrap_or_default();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != node_name)
    {
        return (false, false);
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affinity_ok = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|s| node_selector_matches(s, node));
    if !selector_ok || !affinity_ok {
        return (false, false);
    }
    let mut spec = spec.clone();
    add_default_tolerations(&mut spec);
    let tolerations = spec.tolerations.unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let untolerated = |effect: &str| {
        taints
            .iter()
            .filter(|t| t.effect == effect)
            .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
    };
    let no_execute = untolerated("NoExecute");
    let no_schedule = untolerated("NoSchedule");
    (!no_execute && !no_schedule, !no_execute)
}

/// The node a daemon pod is for: its `nodeName`, or the one its node affinity names.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.as_deref()?.iter().find_map(|r| {
            let values = r.values.as_deref()?;
            (r.key == "metadata.name" && r.operator == "In" && values.len() == 1)
                .then(|| values[0].clone())
        })
    })
}

/// Requires the pod to run on `node` (replacing other required terms, which the
/// controller has checked already).
fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.to_owned()]),
        }]),
        ..NodeSelectorTerm::default()
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

fn is_finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

fn pod_hash(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

fn creation(p: &Pod) -> (Option<i64>, String) {
    (
        p.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

/// `intOrPercent` of `total`, a percentage rounded up.
fn scaled(v: Option<&IntOrString>, default: i32, total: i32) -> i32 {
    match v {
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let p = s.trim_end_matches('%').parse::<i64>().unwrap_or(0);
            i32::try_from((p * i64::from(total) + 99) / 100).unwrap_or(i32::MAX)
        }
        None => default,
    }
}

/// One node's view: should it run a pod, may its pod stay, and the live pods on it
/// (oldest first).
struct NodeState {
    name: String,
    should_run: bool,
    should_continue: bool,
    pods: Vec<Arc<Pod>>,
}

impl DaemonSetController {
    /// Builds the controller on `factory`'s informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
    ) -> (Controller<DaemonSet>, Arc<Self>) {
        let cfg = watcher::Config::default;
        let pods_api = Api::<Pod>::all(client.clone());
        let pod_informer = factory.informer(pods_api.clone(), cfg().compact());
        pod_informer.add_index(ORPHAN_INDEX, orphan_index());
        let pods = pod_informer.reader();
        let nodes_api = Api::<Node>::all(client.clone());
        let nodes = factory.informer(nodes_api.clone(), cfg()).reader();
        let rev_api = Api::<ControllerRevision>::all(client.clone());
        let revisions = factory.informer(rev_api.clone(), cfg()).reader();
        let expectations = Arc::new(Expectations::default());
        let controller =
            Controller::with_factory(factory, Api::<DaemonSet>::all(client.clone()), cfg())
                .name("daemonset");
        let sets = controller.store();
        let sets2 = sets.clone();
        let exp = expectations.clone();
        let owner_key = |pod: &Pod| {
            controller_of(&pod.metadata)
                .filter(|r| r.kind == "DaemonSet")
                .map(|r| ObjectRef::new(pod.metadata.namespace.as_deref(), &r.name))
        };
        let controller = controller
            .owns(rev_api, cfg())
            .watches_changes(pods_api, cfg().compact(), move |change: &Change<Pod>| {
                let mut keys = Vec::new();
                match change {
                    Change::Applied { old, new } => {
                        let owner = owner_key(new);
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
                            let ns = new.metadata.namespace.as_deref().unwrap_or_default();
                            keys.extend(
                                sets.list_namespace(ns)
                                    .iter()
                                    .filter(|d| {
                                        d.spec
                                            .as_ref()
                                            .and_then(|s| LabelSelector::from_k8s(&s.selector).ok())
                                            .is_some_and(|sel| {
                                                !sel.is_empty() && sel.matches_meta(&new.metadata)
                                            })
                                    })
                                    .map(|d| ObjectRef::from_meta(&d.metadata)),
                            );
                        }
                        if let Some(prev) = old.as_ref().and_then(|o| owner_key(o)) {
                            if Some(&prev) != owner.as_ref() {
                                keys.push(prev);
                            }
                        }
                    }
                    Change::Deleted(pod) => {
                        if let Some(o) = owner_key(pod) {
                            exp.deletion_observed(&o, &ObjectRef::from_meta(&pod.metadata));
                            keys.push(o);
                        }
                    }
                }
                keys
            })
            // A node added or removed, or its labels or spec (taints) changed, may change
            // where daemon pods belong; status heartbeats do not.
            .watches_changes(nodes_api, cfg(), move |change: &Change<Node>| {
                let relevant = match change {
                    Change::Applied { old: None, .. } | Change::Deleted(_) => true,
                    Change::Applied { old: Some(o), new } => {
                        o.metadata.labels != new.metadata.labels || o.spec != new.spec
                    }
                };
                if !relevant {
                    return Vec::new();
                }
                sets2
                    .list()
                    .iter()
                    .map(|d| ObjectRef::from_meta(&d.metadata))
                    .collect()
            });
        let reconciler = Arc::new(DaemonSetController {
            client: client.clone(),
            pods,
            nodes,
            revisions,
            expectations,
            recorder: Recorder::new(client.clone(), "daemonset-controller", "keelson"),
        });
        (controller, reconciler)
    }

    async fn event(&self, ds: &DaemonSet, type_: EventType, reason: &str, message: &str) {
        self.recorder
            .emit(&object_reference(ds), type_, reason, message)
            .await;
    }

    fn node_states(&self, ds: &DaemonSet, owned: &[Arc<Pod>]) -> Vec<NodeState> {
        let spec = ds
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .unwrap_or_default();
        let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        for p in owned {
            if let Some(n) = target_node(p) {
                by_node.entry(n).or_default().push(p.clone());
            }
        }
        let mut nodes: Vec<Arc<Node>> = self.nodes.list();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        nodes
            .iter()
            .map(|n| {
                let name = n.metadata.name.clone().unwrap_or_default();
                let (should_run, should_continue) = should_run(&spec, n);
                let mut pods = by_node.remove(&name).unwrap_or_default();
                pods.sort_by_key(|p| creation(p));
                NodeState {
                    name,
                    should_run,
                    should_continue,
                    pods,
                }
            })
            .collect()
    }

    fn new_pod(ds: &DaemonSet, template: &PodTemplateSpec, node: &str, hash: &str) -> Pod {
        let tmeta = template.metadata.clone().unwrap_or_default();
        let mut pod = Pod::default();
        pod.metadata.generate_name = Some(format!(
            "{}-",
            ds.metadata.name.as_deref().unwrap_or_default()
        ));
        pod.metadata.namespace.clone_from(&ds.metadata.namespace);
        let mut labels = tmeta.labels.unwrap_or_default();
        labels.insert(REVISION_LABEL.into(), hash.to_owned());
        labels.insert(
            TEMPLATE_GENERATION_LABEL.into(),
            ds.metadata.generation.unwrap_or(0).to_string(),
        );
        pod.metadata.labels = Some(labels);
        pod.metadata.annotations = tmeta.annotations;
        pod.metadata.finalizers = tmeta.finalizers;
        pod.metadata.owner_references = Some(vec![controller_ref(ds)]);
        let mut spec = template.spec.clone().unwrap_or_default();
        add_default_tolerations(&mut spec);
        pin_to_node(&mut spec, node);
        pod.spec = Some(spec);
        pod
    }

    /// Creates pods on `create` and deletes `delete`, as expected changes.
    async fn sync_nodes(
        &self,
        ds: &DaemonSet,
        key: &ObjectRef,
        create: &[String],
        delete: &[Arc<Pod>],
        hash: &str,
    ) -> Result<(), Error> {
        let ns = key.ns().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let template = ds
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let mut first_err = None;
        if !create.is_empty() {
            self.expectations
                .expect_creations(key, i64::try_from(create.len()).unwrap_or(i64::MAX));
            let results = join_all(create.iter().map(|node| {
                let pod = Self::new_pod(ds, &template, node, hash);
                let api = api.clone();
                async move { (node, api.create(&pod).await) }
            }))
            .await;
            for (node, r) in results {
                match r {
                    Ok(p) => {
                        let name = p.metadata.name.unwrap_or_default();
                        self.event(
                            ds,
                            EventType::Normal,
                            "SuccessfulCreate",
                            &format!("Created pod: {name}"),
                        )
                        .await;
                    }
                    Err(e) => {
                        self.expectations.creation_observed(key);
                        self.event(
                            ds,
                            EventType::Warning,
                            "FailedCreate",
                            &format!("Error creating pod on node {node}: {e}"),
                        )
                        .await;
                        first_err.get_or_insert(api_err("creating daemon pods")(e));
                    }
                }
            }
        }
        if !delete.is_empty() {
            self.expectations.expect_deletions(
                key,
                delete.iter().map(|p| ObjectRef::from_meta(&p.metadata)),
            );
            let results = join_all(delete.iter().map(|p| {
                let api = api.clone();
                let name = p.metadata.name.clone().unwrap_or_default();
                let opts = DeleteOptions {
                    uid: p.metadata.uid.clone(),
                    ..DeleteOptions::default()
                };
                async move { (name.clone(), api.delete(&name, &opts).await) }
            }))
            .await;
            for (name, r) in results {
                match r {
                    Ok(_) => {
                        self.event(
                            ds,
                            EventType::Normal,
                            "SuccessfulDelete",
                            &format!("Deleted pod: {name}"),
                        )
                        .await;
                    }
                    Err(e) => {
                        self.expectations
                            .deletion_observed(key, &ObjectRef::new(Some(ns), &name));
                        if !(e.is_not_found() || e.is_conflict()) {
                            first_err.get_or_insert(api_err("deleting daemon pods")(e));
                        }
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// What placement needs: pods to create (by node) and to delete.
    fn manage(states: &[NodeState], hash: &str) -> (Vec<String>, Vec<Arc<Pod>>) {
        let mut create = Vec::new();
        let mut delete = Vec::new();
        for s in states {
            let mut live = Vec::new();
            for p in &s.pods {
                if p.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                if is_finished(p) {
                    delete.push(p.clone());
                } else {
                    live.push(p.clone());
                }
            }
            if s.should_run {
                if live.is_empty() {
                    create.push(s.name.clone());
                } else if live.len() > 1 {
                    // One pod per node: keep the oldest, unless an old and a new pod
                    // are there together (a surge the rolling update resolves).
                    let surge = live.len() == 2
                        && (pod_hash(&live[0]) == Some(hash)) != (pod_hash(&live[1]) == Some(hash));
                    if !surge {
                        delete.extend(live[1..].iter().cloned());
                    }
                }
            } else if !s.should_continue {
                delete.extend(live);
            }
        }
        (create, delete)
    }

    /// The rolling update's next step: old pods to delete and nodes to surge on.
    fn rolling_update(
        ds: &DaemonSet,
        states: &[NodeState],
        hash: &str,
    ) -> (Vec<String>, Vec<Arc<Pod>>) {
        let spec = ds.spec.clone().unwrap_or_default();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let desired =
            i32::try_from(states.iter().filter(|s| s.should_run).count()).unwrap_or(i32::MAX);
        let ru = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref());
        let max_surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), 0, desired);
        let mut max_unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), 1, desired);
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        let available = |p: &Pod| is_pod_available(p, min_ready);
        let mut delete = Vec::new();
        let mut create = Vec::new();
        if max_surge == 0 {
            let mut unavailable = 0;
            let mut allowed = Vec::new();
            let mut candidates = Vec::new();
            for s in states.iter().filter(|s| s.should_run) {
                let live: Vec<&Arc<Pod>> = s.pods.iter().filter(|p| !is_finished(p)).collect();
                let new = live.iter().find(|p| pod_hash(p) == Some(hash));
                let old = live.iter().find(|p| pod_hash(p) != Some(hash));
                match (old, new) {
                    (None, None) => unavailable += 1,
                    (None, Some(n)) => {
                        if !available(n) {
                            unavailable += 1;
                        }
                    }
                    (Some(o), _) => {
                        if o.metadata.deletion_timestamp.is_some() {
                            unavailable += 1;
                        } else if !available(o) {
                            allowed.push((*o).clone());
                            unavailable += 1;
                        } else if unavailable < max_unavailable {
                            candidates.push((*o).clone());
                        }
                    }
                }
            }
            let room = usize::try_from((max_unavailable - unavailable).max(0)).unwrap_or(0);
            delete.extend(allowed);
            delete.extend(candidates.into_iter().take(room));
        } else {
            let mut surging = 0;
            let mut allowed = Vec::new();
            let mut candidates = Vec::new();
            for s in states.iter().filter(|s| s.should_run) {
                let live: Vec<&Arc<Pod>> = s
                    .pods
                    .iter()
                    .filter(|p| !is_finished(p) && p.metadata.deletion_timestamp.is_none())
                    .collect();
                let new = live.iter().find(|p| pod_hash(p) == Some(hash));
                let old = live.iter().find(|p| pod_hash(p) != Some(hash));
                match (old, new) {
                    (None, _) => {}
                    (Some(o), None) => {
                        if !available(o) {
                            allowed.push(s.name.clone());
                        } else {
                            candidates.push(s.name.clone());
                        }
                    }
                    (Some(o), Some(n)) => {
                        if available(n) {
                            delete.push((*o).clone());
                        } else {
                            surging += 1;
                        }
                    }
                }
            }
            let room = usize::try_from((max_surge - surging).max(0)).unwrap_or(0);
            create.extend(allowed);
            create.extend(candidates.into_iter().take(room));
        }
        (create, delete)
    }
}

fn calculate_status(
    ds: &DaemonSet,
    states: &[NodeState],
    hash: &str,
    collision_count: i32,
) -> DaemonSetStatus {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let generation = ds.metadata.generation.unwrap_or(0).to_string();
    let mut st = ds.status.clone().unwrap_or_default();
    let (mut desired, mut current, mut mis, mut ready, mut available, mut updated) =
        (0, 0, 0, 0, 0, 0);
    for s in states {
        let pods: Vec<&Arc<Pod>> = s.pods.iter().filter(|p| !is_finished(p)).collect();
        if s.should_run {
            desired += 1;
            if let Some(p) = pods.first() {
                current += 1;
                if is_pod_ready(p) {
                    ready += 1;
                    if is_pod_available(p, min_ready) {
                        available += 1;
                    }
                }
                let labels = p.metadata.labels.as_ref();
                let by_hash = pod_hash(p) == Some(hash);
                let by_generation = pod_hash(p).is_none()
                    && labels.and_then(|l| l.get(TEMPLATE_GENERATION_LABEL)) == Some(&generation);
                if by_hash || by_generation {
                    updated += 1;
                }
            }
        } else if !pods.is_empty() {
            mis += 1;
        }
    }
    st.desired_number_scheduled = desired;
    st.current_number_scheduled = current;
    st.number_misscheduled = mis;
    st.number_ready = ready;
    st.number_available = Some(available);
    st.number_unavailable = Some(desired - available);
    st.updated_number_scheduled = Some(updated);
    st.observed_generation = ds.metadata.generation;
    st.collision_count = Some(collision_count);
    st
}

#[async_trait]
impl Reconciler<DaemonSet> for DaemonSetController {
    type Error = Error;

    async fn reconcile(&self, ds: Arc<DaemonSet>, ctx: &Context) -> Result<Action, Error> {
        let key = &ctx.key;
        let ns = key.ns().unwrap_or_default();
        let spec = ds.spec.clone().unwrap_or_default();
        let selector = match workload_selector(
            &self.recorder,
            ds.as_ref(),
            Some(&spec.selector),
            "daemon set",
        )
        .await
        {
            Ok(s) => s,
            Err(action) => return Ok(action),
        };
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let owned = claim(
            &pods_api,
            ds.as_ref(),
            &selector,
            claim_candidates(&self.pods, ns, &uid),
        )
        .await
        .map_err(api_err("claiming pods"))?;

        let rev_api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), ns);
        let collision = ds
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0);
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let synced = match history::sync(
            &rev_api,
            ds.as_ref(),
            labels,
            &spec.template,
            self.revisions.owned_by(&uid),
            collision,
        )
        .await
        {
            Ok(s) => s,
            Err(SyncError::Collision(name, count)) => {
                let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), ns);
                let patch = json!({"status": {"collisionCount": count}});
                api.patch_status(&key.name, &Patch::Merge(patch))
                    .await
                    .map_err(api_err("raising collisionCount"))?;
                return Err(SyncError::Collision(name, count).into());
            }
            Err(e) => return Err(e.into()),
        };
        let hash = history::hash_of(&synced.update);

        let states = self.node_states(&ds, &owned);
        let mut result = Ok(());
        if ds.metadata.deletion_timestamp.is_none() && self.expectations.satisfied(key) {
            let (create, delete) = Self::manage(&states, &hash);
            let (create, delete) = if create.is_empty() && delete.is_empty() {
                let rolling = spec
                    .update_strategy
                    .as_ref()
                    .and_then(|s| s.type_.as_deref())
                    .is_none_or(|t| t == "RollingUpdate");
                if rolling {
                    Self::rolling_update(&ds, &states, &hash)
                } else {
                    (create, delete)
                }
            } else {
                (create, delete)
            };
            result = self.sync_nodes(&ds, key, &create, &delete, &hash).await;
        }

        let status = calculate_status(&ds, &states, &hash, synced.collision_count);
        if ds.status.as_ref() != Some(&status) {
            let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), ns);
            let patch = status_merge_patch(ds.status.as_ref(), &status);
            match api.patch_status(&key.name, &Patch::Merge(patch)).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::await_change()),
                Err(e) => return Err(api_err("updating the status")(e)),
            }
        }
        result?;

        let mut live: HashSet<String> = owned
            .iter()
            .filter_map(|p| pod_hash(p).map(str::to_owned))
            .collect();
        live.insert(hash);
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
