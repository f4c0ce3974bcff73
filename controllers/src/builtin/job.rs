//! The Job controller: runs pods to completion.
//!
//! As Kubernetes' Job controller (1.33):
//! - pods come from the template (whose labels the API server set to
//!   `batch.kubernetes.io/controller-uid` and `batch.kubernetes.io/job-name`, with the
//!   selector), with `generateName: <job>-` and a controller reference; up to
//!   `parallelism` run at once. Creations and deletions are *expected* until seen;
//! - `completionMode: NonIndexed`: the Job succeeds after `completions` pods succeed
//!   (with no `completions`, after any one pod succeeds and the rest have stopped);
//!   `Indexed`: each index `0..completions` must succeed once; pods are named
//!   `<job>-<index>-`, carry `batch.kubernetes.io/job-completion-index` as annotation
//!   and label, the `JOB_COMPLETION_INDEX` variable in every container and the hostname
//!   `<job>-<index>`; `status.completedIndexes` lists the finished ones ("1,3-5");
//! - failures: failed pods, plus container restarts with `restartPolicy: OnFailure`,
//!   count against `backoffLimit`; more than it fails the Job (`BackoffLimitExceeded`).
//!   A failed pod is replaced after a back-off of 10 s doubling per failed pod, at most
//!   6 minutes. Running longer than `activeDeadlineSeconds` (from `startTime`) fails it
//!   too (`DeadlineExceeded`);
//! - finishing: first the condition `SuccessCriteriaMet` (reason `CompletionsReached`)
//!   or `FailureTarget` is added and any running pods are deleted; once none remain,
//!   `Complete` (with `completionTime`) or `Failed`, with the same reason;
//! - `podFailurePolicy`: each failed pod is held against the rules in order, the first
//!   that matches deciding — on the exit codes of its containers and init containers
//!   (`In`/`NotIn`, optionally one container; exit code 0 never matches) or on its
//!   conditions (such as `DisruptionTarget`). `FailJob` fails the Job (reason
//!   `PodFailurePolicy`, the message naming the container, code and rule), `Ignore`
//!   leaves the failure out of `status.failed` and the back-off limit, `Count` counts
//!   it;
//! - `backoffLimitPerIndex` (Indexed Jobs): each pod carries
//!   `batch.kubernetes.io/job-index-failure-count`, the failures of its index before it;
//!   an index whose failures exceed the limit (or a pod of which a `FailIndex` rule
//!   matches) is failed, listed in `status.failedIndexes` and not run again; its
//!   replacements back off per index. More than `maxFailedIndexes` failed indexes fail
//!   the Job (`MaxFailedIndexesExceeded`); so does every index having finished with some
//!   failed (`FailedIndexes`). The API server then defaults `backoffLimit` to the
//!   largest int32;
//! - `successPolicy` (Indexed Jobs): the Job succeeds (reason `SuccessPolicy`, "Matched
//!   rules at index N") once the completed indexes satisfy a rule —
//!   `succeededIndexes` all done, or `succeededCount` of them, or `succeededCount`
//!   indexes in all — and its remaining pods are stopped;
//! - `suspend: true` deletes the active pods and sets `Suspended` (`JobSuspended`);
//!   resuming sets it False (`JobResumed`) and restarts the `startTime` clock;
//! - `ttlSecondsAfterFinished` (Kubernetes' TTL-after-finished controller, folded in):
//!   the finished Job is deleted, foreground, that long after it finished;
//! - status: `active`, `ready`, `terminating`, `succeeded`, `failed`, `startTime`,
//!   `completionTime`, `completedIndexes` and the conditions.
//!
//! Counting: pods do **not** get the `batch.kubernetes.io/job-tracking` finalizer.
//! Finished pods are counted while they exist and the counts never go down, so a
//! finished pod deleted by someone else before the controller saw it finish is not
//! counted (Kubernetes' finalizer closes that gap). `podReplacementPolicy` is always
//! `Failed` in effect: terminating pods are replaced only once gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use keelson_core::client::{Api, Client, DeleteOptions, Patch, PropagationPolicy};
use keelson_core::k8s_openapi::api::batch::v1::{
    Job, JobCondition, JobStatus, PodFailurePolicy, SuccessPolicy,
};
use keelson_core::k8s_openapi::api::core::v1::{EnvVar, Pod};
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::common::{
    claim, claim_candidates, controller_ref, is_pod_ready, orphan_index, status_merge_patch,
    workload_selector, Expectations, ORPHAN_INDEX,
};
use crate::controller::{Action, Context, Controller, Reconciler};
use crate::events::{object_reference, EventType, Recorder};
use crate::informer::InformerFactory;
use crate::object::{controller_of, ObjectRef};
use crate::reflector::{Change, Reader};
use crate::{clock, watcher};

/// The annotation and label holding an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The environment variable holding an Indexed Job pod's completion index.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The annotation holding how many pods of the index failed before this one (Jobs with
/// `backoffLimitPerIndex`).
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";

const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);
/// The most pods one reconcile creates or deletes.
const BURST: usize = 500;

use super::common::api_err;
pub use super::common::Error;

/// The Job reconciler.
pub struct JobController {
    client: Client,
    pods: Reader<Pod>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

impl std::fmt::Debug for JobController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobController").finish_non_exhaustive()
    }
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn is_terminal(p: &Pod) -> bool {
    matches!(phase(p), Some("Succeeded" | "Failed"))
}

fn is_active(p: &Pod) -> bool {
    !is_terminal(p) && p.metadata.deletion_timestamp.is_none()
}

/// The completion index of an Indexed Job's pod.
pub fn index_of(p: &Pod) -> Option<i32> {
    let from = |m: Option<&std::collections::BTreeMap<String, String>>| {
        m.and_then(|m| m.get(COMPLETION_INDEX))
            .and_then(|v| v.parse::<i32>().ok())
    };
    from(p.metadata.annotations.as_ref())
        .or_else(|| from(p.metadata.labels.as_ref()))
        .filter(|i| *i >= 0)
}

/// Parses `completedIndexes` ("1,3-5").
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Formats indexes as `completedIndexes` does: ascending, runs as ranges.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if end == start {
            start.to_string()
        } else if end == start + 1 {
            format!("{start},{end}")
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

fn condition_true(status: &JobStatus, type_: &str) -> Option<JobCondition> {
    status
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .cloned()
}

/// Whether the Job has finished (`Complete` or `Failed`), and when.
pub fn finished_at(job: &Job) -> Option<Time> {
    let status = job.status.as_ref()?;
    if let Some(c) = condition_true(status, "Complete") {
        return status
            .completion_time
            .clone()
            .or(c.last_transition_time)
            .or_else(|| Some(clock::now_time()));
    }
    condition_true(status, "Failed").map(|c| c.last_transition_time.unwrap_or_else(clock::now_time))
}

fn set_condition(status: &mut JobStatus, type_: &str, value: &str, reason: &str, message: &str) {
    let now = clock::now_time();
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status == value && c.reason.as_deref() == Some(reason) {
            return;
        }
        if c.status != value {
            c.last_transition_time = Some(now.clone());
        }
        c.status = value.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(now);
        return;
    }
    conditions.push(JobCondition {
        type_: type_.into(),
        status: value.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    });
}

/// When a failed pod failed: its containers' finish, else its last condition change,
/// else its creation (seconds since the epoch).
fn failed_at(p: &Pod) -> Option<i64> {
    let status = p.status.as_ref();
    let finished = status
        .and_then(|s| s.container_statuses.as_deref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0.as_second())
        .max();
    let condition = status
        .and_then(|s| s.conditions.as_deref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second())
        .max();
    finished.or(condition).or_else(|| {
        p.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
    })
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum()
}

/// What a pod failure policy says of one failed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FailureVerdict {
    /// Fail the whole Job, with this message.
    FailJob(String),
    /// Fail the pod's index (with `backoffLimitPerIndex`).
    FailIndex,
    /// Not counted against `backoffLimit`, nor in `status.failed`.
    Ignore,
    /// Counted, as without a policy.
    Count,
}

/// The first rule of `policy` a failed pod matches (Kubernetes' order), as a verdict;
/// `Count` when none does. Exit codes are those of terminated containers and init
/// containers, those that exited 0 left out.
fn failure_verdict(policy: &PodFailurePolicy, pod: &Pod) -> FailureVerdict {
    let status = pod.status.as_ref();
    let exits: Vec<(&str, i32)> = status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .filter_map(|c| {
            let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
            (code != 0).then_some((c.name.as_str(), code))
        })
        .collect();
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let pod_name = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    for (i, rule) in policy.rules.iter().enumerate() {
        let matched = if let Some(req) = &rule.on_exit_codes {
            exits
                .iter()
                .filter(|(name, _)| req.container_name.as_deref().is_none_or(|n| n == *name))
                .find(|(_, code)| req.values.contains(code) == (req.operator == "In"))
                .map(|(name, code)| {
                    format!("Container {name} for pod {pod_name} failed with exit code {code} matching {} rule at index {i}", rule.action)
                })
        } else {
            rule.on_pod_conditions
                .iter()
                .flatten()
                .find(|pattern| {
                    let want = match pattern.status.as_str() {
                        "" => "True",
                        s => s,
                    };
                    conditions
                        .iter()
                        .any(|c| c.type_ == pattern.type_ && c.status == want)
                })
                .map(|pattern| {
                    format!(
                        "Pod {pod_name} has condition {} matching {} rule at index {i}",
                        pattern.type_, rule.action
                    )
                })
        };
        let Some(message) = matched else { continue };
        return match rule.action.as_str() {
            "FailJob" => FailureVerdict::FailJob(message),
            "FailIndex" => FailureVerdict::FailIndex,
            "Ignore" => FailureVerdict::Ignore,
            _ => FailureVerdict::Count,
        };
    }
    FailureVerdict::Count
}

/// The index of the first success policy rule the completed indexes satisfy.
fn success_rule_met(policy: &SuccessPolicy, completed: &BTreeSet<i32>) -> Option<usize> {
    policy.rules.iter().position(|rule| {
        let count = rule.succeeded_count.and_then(|c| usize::try_from(c).ok());
        match rule.succeeded_indexes.as_deref() {
            Some(indexes) => {
                let wanted = parse_indexes(indexes);
                let done = wanted.intersection(completed).count();
                done >= count.unwrap_or(wanted.len())
            }
            None => count.is_some_and(|c| completed.len() >= c),
        }
    })
}

/// The back-off before replacing a pod after `failures` failures, the last at `last`
/// (seconds since the epoch): 10 s doubling per failure, at most 6 minutes, less the
/// time since.
fn backoff_left(failures: usize, last: Option<i64>) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(failures - 1).unwrap_or(u32::MAX).min(16);
    let delay = BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(exp))
        .min(BACKOFF_MAX);
    let since = last.map_or(i64::MAX, |t| clock::now().as_second() - t);
    delay.saturating_sub(Duration::from_secs(u64::try_from(since).unwrap_or(0)))
}

/// How many pods of its index failed before this one.
fn index_failure_count(p: &Pod) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INDEX_FAILURE_COUNT))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl JobController {
    /// Builds the controller on `factory`'s informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(client: &Client, factory: &InformerFactory) -> (Controller<Job>, Arc<Self>) {
        let cfg = watcher::Config::default;
        let pods_api = Api::<Pod>::all(client.clone());
        let pod_informer = factory.informer(pods_api.clone(), cfg().compact());
        pod_informer.add_index(ORPHAN_INDEX, orphan_index());
        let pods = pod_informer.reader();
        let expectations = Arc::new(Expectations::default());
        let controller =
            Controller::with_factory(factory, Api::<Job>::all(client.clone()), cfg()).name("job");
        let exp = expectations.clone();
        let owner_key = |pod: &Pod| {
            controller_of(&pod.metadata)
                .filter(|r| r.kind == "Job")
                .map(|r| ObjectRef::new(pod.metadata.namespace.as_deref(), &r.name))
        };
        let controller =
            controller.watches_changes(pods_api, cfg().compact(), move |change: &Change<Pod>| {
                let mut keys = Vec::new();
                match change {
                    Change::Applied { old, new } => {
                        if let Some(o) = owner_key(new) {
                            let newly_deleting = new.metadata.deletion_timestamp.is_some()
                                && old
                                    .as_ref()
                                    .is_none_or(|o| o.metadata.deletion_timestamp.is_none());
                            if old.is_none() && new.metadata.deletion_timestamp.is_none() {
                                exp.creation_observed(&o);
                            } else if newly_deleting {
                                exp.deletion_observed(&o, &ObjectRef::from_meta(&new.metadata));
                            }
                            keys.push(o);
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
            });
        let reconciler = Arc::new(JobController {
            client: client.clone(),
            pods,
            expectations,
            recorder: Recorder::new(client.clone(), "job-controller", "keelson"),
        });
        (controller, reconciler)
    }

    async fn event(&self, job: &Job, type_: EventType, reason: &str, message: &str) {
        self.recorder
            .emit(&object_reference(job), type_, reason, message)
            .await;
    }

    fn new_pod(job: &Job, index: Option<i32>, failures: Option<i32>) -> Pod {
        let name = job.metadata.name.clone().unwrap_or_default();
        let template = job
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let tmeta = template.metadata.unwrap_or_default();
        let mut pod = Pod::default();
        pod.metadata.namespace.clone_from(&job.metadata.namespace);
        pod.metadata.labels = tmeta.labels;
        pod.metadata.annotations = tmeta.annotations;
        pod.metadata.finalizers = tmeta.finalizers;
        pod.metadata.owner_references = Some(vec![controller_ref(job)]);
        let mut spec = template.spec.unwrap_or_default();
        match index {
            Some(i) => {
                pod.metadata.generate_name = Some(format!("{name}-{i}-"));
                let v = i.to_string();
                pod.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(COMPLETION_INDEX.into(), v.clone());
                pod.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(COMPLETION_INDEX.into(), v.clone());
                if let Some(n) = failures {
                    pod.metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert(INDEX_FAILURE_COUNT.into(), n.to_string());
                }
                if spec.hostname.as_deref().is_none_or(str::is_empty) {
                    spec.hostname = Some(format!("{name}-{i}"));
                }
                for c in spec
                    .containers
                    .iter_mut()
                    .chain(spec.init_containers.iter_mut().flatten())
                {
                    let env = c.env.get_or_insert_with(Vec::new);
                    env.retain(|e| e.name != COMPLETION_INDEX_ENV);
                    env.push(EnvVar {
                        name: COMPLETION_INDEX_ENV.into(),
                        value: Some(v.clone()),
                        value_from: None,
                    });
                }
            }
            None => pod.metadata.generate_name = Some(format!("{name}-")),
        }
        pod.spec = Some(spec);
        pod
    }

    async fn create_pods(
        &self,
        job: &Job,
        key: &ObjectRef,
        indexes: Vec<Option<i32>>,
        index_failures: Option<&BTreeMap<i32, usize>>,
    ) -> Result<(), Error> {
        if indexes.is_empty() {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), key.ns().unwrap_or_default());
        self.expectations
            .expect_creations(key, i64::try_from(indexes.len()).unwrap_or(i64::MAX));
        let results = join_all(indexes.into_iter().map(|i| {
            let failures = index_failures.map(|f| {
                i.and_then(|i| f.get(&i))
                    .map_or(0, |n| i32::try_from(*n).unwrap_or(i32::MAX))
            });
            let pod = Self::new_pod(job, i, failures);
            let api = api.clone();
            async move { api.create(&pod).await }
        }))
        .await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(p) => {
                    let name = p.metadata.name.unwrap_or_default();
                    self.event(
                        job,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("Created pod: {name}"),
                    )
                    .await;
                }
                Err(e) => {
                    self.expectations.creation_observed(key);
                    self.event(
                        job,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("Error creating: {e}"),
                    )
                    .await;
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(api_err("creating pods")(e)),
            None => Ok(()),
        }
    }

    async fn delete_pods(
        &self,
        job: &Job,
        key: &ObjectRef,
        pods: &[Arc<Pod>],
    ) -> Result<(), Error> {
        if pods.is_empty() {
            return Ok(());
        }
        let ns = key.ns().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        self.expectations
            .expect_deletions(key, pods.iter().map(|p| ObjectRef::from_meta(&p.metadata)));
        let results = join_all(pods.iter().map(|p| {
            let api = api.clone();
            let name = p.metadata.name.clone().unwrap_or_default();
            let opts = DeleteOptions {
                uid: p.metadata.uid.clone(),
                ..DeleteOptions::default()
            };
            async move { (name.clone(), api.delete(&name, &opts).await) }
        }))
        .await;
        let mut first_err = None;
        for (name, r) in results {
            match r {
                Ok(_) => {
                    self.event(
                        job,
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
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(api_err("deleting pods")(e)),
            None => Ok(()),
        }
    }

    async fn write_status(
        &self,
        job: &Job,
        key: &ObjectRef,
        status: &JobStatus,
    ) -> Result<bool, Error> {
        if job.status.as_ref() == Some(status) {
            return Ok(true);
        }
        let api: Api<Job> = Api::namespaced(self.client.clone(), key.ns().unwrap_or_default());
        let patch = status_merge_patch(job.status.as_ref(), status);
        match api.patch_status(&key.name, &Patch::Merge(patch)).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(api_err("updating the status")(e)),
        }
    }

    /// Deletes a finished Job once its TTL has passed; otherwise when to look again.
    async fn ttl(&self, job: &Job, key: &ObjectRef) -> Result<Action, Error> {
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return Ok(Action::await_change());
        };
        let Some(at) = finished_at(job) else {
            return Ok(Action::await_change());
        };
        let left = i64::from(ttl) - clock::seconds_since(&at);
        if left > 0 {
            let secs = u64::try_from(left).unwrap_or(0);
            return Ok(Action::requeue(Duration::from_secs(secs)));
        }
        let api: Api<Job> = Api::namespaced(self.client.clone(), key.ns().unwrap_or_default());
        let opts = DeleteOptions {
            uid: job.metadata.uid.clone(),
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..DeleteOptions::default()
        };
        tracing::info!(job = %key, "deleting finished Job after its TTL");
        match api.delete(&key.name, &opts).await {
            Ok(_) => Ok(Action::await_change()),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(Action::await_change()),
            Err(e) => Err(api_err("deleting the Job after its TTL")(e)),
        }
    }
}

/// The pods to remove first when there are too many: not ready before ready, pending
/// before running, newer before older.
fn removal_order(pods: &mut [Arc<Pod>]) {
    pods.sort_by(|a, b| {
        let rank = |p: &Pod| (is_pod_ready(p), phase(p) == Some("Running"));
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        rank(a)
            .cmp(&rank(b))
            .then_with(|| created(b).cmp(&created(a)))
    });
}

#[async_trait]
impl Reconciler<Job> for JobController {
    type Error = Error;

    #[allow(clippy::too_many_lines)]
    async fn reconcile(&self, job: Arc<Job>, ctx: &Context) -> Result<Action, Error> {
        let key = &ctx.key;
        let ns = key.ns().unwrap_or_default();
        let spec = job.spec.clone().unwrap_or_default();
        let selector =
            match workload_selector(&self.recorder, job.as_ref(), spec.selector.as_ref(), "job")
                .await
            {
                Ok(s) => s,
                Err(action) => return Ok(action),
            };
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pods = claim(
            &pods_api,
            job.as_ref(),
            &selector,
            claim_candidates(&self.pods, ns, &uid),
        )
        .await
        .map_err(api_err("claiming pods"))?;
        let mut active: Vec<Arc<Pod>> = pods.iter().filter(|p| is_active(p)).cloned().collect();
        let terminating = count(
            pods.iter()
                .filter(|p| !is_terminal(p) && p.metadata.deletion_timestamp.is_some())
                .count(),
        );
        let old = job.status.clone().unwrap_or_default();
        let mut status = old.clone();

        // Already finished: only leftovers and the TTL.
        if finished_at(&job).is_some() {
            if self.expectations.satisfied(key) {
                self.delete_pods(&job, key, &active).await?;
            }
            return self.ttl(&job, key).await;
        }

        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let completions = spec.completions;
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let restart_on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");

        // Counts (never going down: finished pods may be deleted by others).
        let succeeded_pods: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| phase(p) == Some("Succeeded"))
            .collect();
        // Failed pods, less those the pod failure policy ignores; the first a FailJob
        // rule matches fails the Job. With backoffLimitPerIndex, each index's failures
        // (the count its pods carry, plus one for a failed one) and their last time.
        let per_index = spec.backoff_limit_per_index.filter(|_| indexed);
        let mut fail_job: Option<String> = None;
        let mut failed_pods: Vec<&Arc<Pod>> = Vec::new();
        let mut index_failures: BTreeMap<i32, usize> = BTreeMap::new();
        let mut index_last_failure: BTreeMap<i32, i64> = BTreeMap::new();
        let mut failed_indexes = parse_indexes(old.failed_indexes.as_deref().unwrap_or_default());
        for p in pods.iter().filter(|p| phase(p) == Some("Failed")) {
            let verdict = spec
                .pod_failure_policy
                .as_ref()
                .map_or(FailureVerdict::Count, |policy| failure_verdict(policy, p));
            let index = index_of(p).filter(|_| per_index.is_some());
            match verdict {
                FailureVerdict::Ignore => continue,
                FailureVerdict::FailJob(message) => {
                    fail_job.get_or_insert(message);
                }
                FailureVerdict::FailIndex => failed_indexes.extend(index),
                FailureVerdict::Count => {}
            }
            failed_pods.push(p);
            if let Some(i) = index {
                let n = usize::try_from(index_failure_count(p)).unwrap_or(0) + 1;
                let entry = index_failures.entry(i).or_default();
                *entry = (*entry).max(n);
                if let Some(t) = failed_at(p) {
                    let last = index_last_failure.entry(i).or_default();
                    *last = (*last).max(t);
                }
            }
        }
        let mut completed = BTreeSet::new();
        if indexed {
            completed = parse_indexes(old.completed_indexes.as_deref().unwrap_or_default());
            let limit = completions.unwrap_or(0);
            completed.extend(
                succeeded_pods
                    .iter()
                    .filter_map(|p| index_of(p))
                    .filter(|i| *i < limit),
            );
            status.completed_indexes = Some(format_indexes(&completed));
            status.succeeded = Some(count(completed.len()));
        } else {
            status.succeeded = Some(old.succeeded.unwrap_or(0).max(count(succeeded_pods.len())));
        }
        if let Some(limit) = per_index {
            let limit = usize::try_from(limit).unwrap_or(0);
            failed_indexes.extend(
                index_failures
                    .iter()
                    .filter(|(_, n)| **n > limit)
                    .map(|(i, _)| *i),
            );
            failed_indexes.retain(|i| *i < completions.unwrap_or(0) && !completed.contains(i));
            status.failed_indexes = Some(format_indexes(&failed_indexes));
        }
        status.failed = Some(old.failed.unwrap_or(0).max(count(failed_pods.len())));
        let succeeded = status.succeeded.unwrap_or(0);
        let failures = status.failed.unwrap_or(0)
            + if restart_on_failure {
                active.iter().map(|p| restarts(p)).sum()
            } else {
                0
            };

        // Suspension and the start time.
        let suspended = spec.suspend == Some(true);
        let was_suspended = condition_true(&old, "Suspended").is_some();
        if suspended {
            if !was_suspended {
                set_condition(
                    &mut status,
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                );
                self.event(&job, EventType::Normal, "Suspended", "Job suspended")
                    .await;
            }
        } else if was_suspended {
            set_condition(
                &mut status,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
            );
            status.start_time = Some(clock::now_time());
            self.event(&job, EventType::Normal, "Resumed", "Job resumed")
                .await;
        } else if status.start_time.is_none() {
            status.start_time = Some(clock::now_time());
        }

        // Has it reached an end?
        let mut target = if let Some(c) = condition_true(&old, "FailureTarget") {
            Some((
                false,
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default(),
            ))
        } else if let Some(c) = condition_true(&old, "SuccessCriteriaMet") {
            Some((
                true,
                c.reason.unwrap_or_else(|| "CompletionsReached".to_owned()),
                c.message.unwrap_or_default(),
            ))
        } else {
            None
        };
        let deadline_left = spec.active_deadline_seconds.and_then(|d| {
            let start = status.start_time.as_ref()?;
            (!suspended).then(|| d - clock::seconds_since(start))
        });
        let success_rule = spec
            .success_policy
            .as_ref()
            .filter(|_| indexed)
            .and_then(|policy| success_rule_met(policy, &completed));
        if target.is_none() {
            let done = match completions {
                Some(c) => succeeded >= c,
                None => succeeded > 0,
            };
            let max_failed = spec
                .max_failed_indexes
                .and_then(|m| usize::try_from(m).ok())
                .filter(|_| per_index.is_some());
            let all_finished = per_index.is_some()
                && !failed_indexes.is_empty()
                && completed.len() + failed_indexes.len()
                    >= usize::try_from(completions.unwrap_or(0)).unwrap_or(0);
            if let Some(message) = fail_job {
                target = Some((false, "PodFailurePolicy".into(), message));
            } else if max_failed.is_some_and(|m| failed_indexes.len() > m) {
                target = Some((
                    false,
                    "MaxFailedIndexesExceeded".into(),
                    "Job has exceeded the specified maximal number of failed indexes".into(),
                ));
            } else if let Some(rule) = success_rule {
                target = Some((
                    true,
                    "SuccessPolicy".into(),
                    format!("Matched rules at index {rule}"),
                ));
            } else if done {
                target = Some((
                    true,
                    "CompletionsReached".into(),
                    "Reached expected number of succeeded pods".into(),
                ));
            } else if all_finished {
                target = Some((
                    false,
                    "FailedIndexes".into(),
                    "Job has failed indexes".into(),
                ));
            } else if failures > spec.backoff_limit.unwrap_or(6) {
                target = Some((
                    false,
                    "BackoffLimitExceeded".into(),
                    "Job has reached the specified backoff limit".into(),
                ));
            } else if deadline_left.is_some_and(|l| l <= 0) {
                target = Some((
                    false,
                    "DeadlineExceeded".into(),
                    "Job was active longer than specified deadline".into(),
                ));
            }
        }

        let mut requeue: Option<Duration> = None;
        let mut active_count = active.len();
        let satisfied = self.expectations.satisfied(key);
        if let Some((success, reason, message)) = &target {
            let interim = if *success {
                "SuccessCriteriaMet"
            } else {
                "FailureTarget"
            };
            set_condition(&mut status, interim, "True", reason, message);
            // Completions reached with no completions set: the others finish on
            // their own in Kubernetes; failing: they are stopped.
            let stop_others = !*success || completions.is_some();
            if stop_others && satisfied && !active.is_empty() {
                self.delete_pods(&job, key, &active).await?;
                active.clear();
            }
            if active.is_empty() && terminating == 0 {
                if *success {
                    set_condition(&mut status, "Complete", "True", reason, message);
                    status.completion_time = Some(clock::now_time());
                    self.event(&job, EventType::Normal, "Completed", "Job completed")
                        .await;
                } else {
                    set_condition(&mut status, "Failed", "True", reason, message);
                    self.event(&job, EventType::Warning, reason, message).await;
                }
            }
        } else if suspended {
            if satisfied && !active.is_empty() {
                self.delete_pods(&job, key, &active).await?;
                active.clear();
            }
        } else if satisfied {
            // Back-off after failures before making new pods: per index with
            // backoffLimitPerIndex, else over all of the Job's failures.
            let backoff = if per_index.is_some() {
                Duration::ZERO
            } else {
                let last = failed_pods.iter().filter_map(|p| failed_at(p)).max();
                backoff_left(failed_pods.len(), last)
            };
            let mut index_wait: Option<Duration> = None;
            let mut create: Vec<Option<i32>> = Vec::new();
            let mut remove: Vec<Arc<Pod>> = Vec::new();
            if indexed {
                let limit = completions.unwrap_or(0);
                let mut running: BTreeSet<i32> = BTreeSet::new();
                let mut keep = Vec::new();
                for p in &active {
                    match index_of(p) {
                        Some(i) if i < limit && !completed.contains(&i) && running.insert(i) => {
                            keep.push(p.clone());
                        }
                        _ => remove.push(p.clone()),
                    }
                }
                let slots = usize::try_from(parallelism).unwrap_or(0);
                if keep.len() > slots {
                    removal_order(&mut keep);
                    remove.extend(keep.drain(..keep.len() - slots));
                }
                let room = slots.saturating_sub(keep.len());
                create = (0..limit)
                    .filter(|i| {
                        !completed.contains(i)
                            && !running.contains(i)
                            && !failed_indexes.contains(i)
                    })
                    .filter(|i| {
                        let n = index_failures.get(i).copied().unwrap_or(0);
                        let wait = backoff_left(n, index_last_failure.get(i).copied());
                        if wait.is_zero() {
                            return true;
                        }
                        index_wait = Some(index_wait.map_or(wait, |w| w.min(wait)));
                        false
                    })
                    .take(room)
                    .map(Some)
                    .collect();
            } else {
                let want = match completions {
                    Some(c) => parallelism.min((c - succeeded).max(0)),
                    None if succeeded > 0 => 0,
                    None => parallelism,
                };
                let want = usize::try_from(want).unwrap_or(0);
                if active.len() > want {
                    let mut extra = active.clone();
                    removal_order(&mut extra);
                    remove.extend(extra.into_iter().take(active.len() - want));
                } else {
                    create = vec![None; want - active.len()];
                }
            }
            create.truncate(BURST);
            remove.truncate(BURST);
            if !create.is_empty() && !backoff.is_zero() {
                requeue = Some(backoff);
                create.clear();
            }
            let removed: Vec<String> = remove
                .iter()
                .filter_map(|p| p.metadata.uid.clone())
                .collect();
            self.delete_pods(&job, key, &remove).await?;
            active.retain(|p| p.metadata.uid.as_ref().is_none_or(|u| !removed.contains(u)));
            if let Some(wait) = index_wait {
                requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
            }
            let created = create.len();
            let counts = per_index.map(|_| &index_failures);
            self.create_pods(&job, key, create, counts).await?;
            // Kubernetes counts the pods it has just made as active.
            active_count = active.len() + created;
        }
        if target.is_some() || suspended {
            active_count = active.len();
        }
        status.active = Some(count(active_count));
        status.ready = Some(count(active.iter().filter(|p| is_pod_ready(p)).count()));
        status.terminating = Some(terminating);
        // A Job that finishes now is reconciled again for its TTL on the status change.
        if !self.write_status(&job, key, &status).await? {
            return Ok(Action::await_change());
        }
        if let Some(left) = deadline_left.filter(|l| *l > 0) {
            let d = Duration::from_secs(u64::try_from(left).unwrap_or(0));
            requeue = Some(requeue.map_or(d, |r| r.min(d)));
        }
        Ok(requeue.map_or(Action::await_change(), |d| {
            Action::requeue(d + Duration::from_millis(100))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_are_written_as_ranges_and_read_back() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,4,6,7");
        assert_eq!(parse_indexes("0-2,4,6,7"), set);
        assert_eq!(parse_indexes(""), BTreeSet::new());
    }
}
