//! The CronJob controller: makes Jobs on a schedule.
//!
//! As Kubernetes' CronJob controller (v2):
//! - `schedule` is a five-field cron line or a macro (see [`keelson_core::cron`]),
//!   read in `timeZone` (an IANA name; the system's tz database, else a bundled copy)
//!   or UTC;
//! - at each scheduled time a Job is made from `jobTemplate`, named
//!   `<cronjob>-<scheduled time in minutes since the epoch>`, with the template's labels
//!   and annotations, the annotation `batch.kubernetes.io/cronjob-scheduled-timestamp`
//!   and a controller reference. Missed times (the controller was down) are not
//!   replayed: only the most recent one runs, and only within `startingDeadlineSeconds`
//!   of its time when that is set; more than 100 missed times raise a
//!   `TooManyMissedTimes` warning;
//! - `concurrencyPolicy`: `Allow` runs Jobs side by side; `Forbid` skips a time while a
//!   Job is active (it runs late once the Job finishes, within the starting deadline);
//!   `Replace` deletes the active Jobs (background) first;
//! - `suspend: true` makes no Jobs (running ones are left alone);
//! - finished Jobs beyond `successfulJobsHistoryLimit` / `failedJobsHistoryLimit`
//!   (oldest first) are deleted, in the background;
//! - status: `active` (references to unfinished Jobs), `lastScheduleTime`,
//!   `lastSuccessfulTime`.
//!
//! All timing uses [`crate::clock`], so under paused tokio time schedules fire
//! as time is advanced.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use keelson_core::client::{Api, Client, DeleteOptions, Patch, PropagationPolicy};
use keelson_core::k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use keelson_core::k8s_openapi::api::core::v1::ObjectReference;
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::common::{controller_ref, status_merge_patch};
use super::job::finished_at;
use crate::controller::{Action, Context, Controller, Reconciler};
use crate::events::{object_reference, EventType, Recorder};
use crate::informer::InformerFactory;
use crate::object::ObjectRef;
use crate::reflector::Reader;
use crate::{clock, watcher};
use keelson_core::cron::Schedule;

/// The Job annotation holding the time it was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// More missed times than this raise a warning.
const MAX_MISSED: usize = 100;

use super::common::api_err;
pub use super::common::Error;

/// The CronJob reconciler.
pub struct CronJobController {
    client: Client,
    jobs: Reader<Job>,
    recorder: Recorder,
}

impl std::fmt::Debug for CronJobController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronJobController").finish_non_exhaustive()
    }
}

/// The name of the Job for the time `scheduled`.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

fn job_succeeded(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

fn to_time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// The most recent scheduled time in `(earliest, now]`, and how many there were.
fn most_recent(
    schedule: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, usize) {
    let mut last = None;
    let mut missed = 0;
    let mut t = earliest;
    // Bounded: a per-minute schedule missed for two years.
    for _ in 0..1_100_000 {
        match schedule.next_after(t, tz) {
            Some(n) if n <= now => {
                last = Some(n);
                missed += 1;
                t = n;
            }
            _ => break,
        }
    }
    (last, missed)
}

impl CronJobController {
    /// Builds the controller on `factory`'s informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
    ) -> (Controller<CronJob>, Arc<Self>) {
        let cfg = watcher::Config::default;
        let jobs_api = Api::<Job>::all(client.clone());
        let jobs = factory.informer(jobs_api.clone(), cfg()).reader();
        let controller =
            Controller::with_factory(factory, Api::<CronJob>::all(client.clone()), cfg())
                .name("cronjob")
                .owns(jobs_api, cfg());
        let reconciler = Arc::new(CronJobController {
            client: client.clone(),
            jobs,
            recorder: Recorder::new(client.clone(), "cronjob-controller", "keelson"),
        });
        (controller, reconciler)
    }

    async fn event(&self, cj: &CronJob, type_: EventType, reason: &str, message: &str) {
        self.recorder
            .emit(&object_reference(cj), type_, reason, message)
            .await;
    }

    async fn delete_job(&self, cj: &CronJob, job: &Job) -> Result<(), Error> {
        let ns = job.metadata.namespace.as_deref().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let api: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let opts = DeleteOptions {
            uid: job.metadata.uid.clone(),
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteOptions::default()
        };
        match api.delete(&name, &opts).await {
            Ok(_) => {
                self.event(
                    cj,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted job {name}"),
                )
                .await;
                Ok(())
            }
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(api_err(format!("deleting Job {name}"))(e)),
        }
    }

    /// Deletes finished Jobs beyond the history limits, oldest first.
    async fn cleanup(&self, cj: &CronJob, finished: &[Arc<Job>]) -> Result<(), Error> {
        let spec = cj.spec.clone().unwrap_or_default();
        for (succeeded, limit) in [
            (true, spec.successful_jobs_history_limit.unwrap_or(3)),
            (false, spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let mut jobs: Vec<&Arc<Job>> = finished
                .iter()
                .filter(|j| job_succeeded(j) == succeeded)
                .collect();
            let limit = usize::try_from(limit.max(0)).unwrap_or(0);
            if jobs.len() <= limit {
                continue;
            }
            jobs.sort_by_key(|j| {
                (
                    finished_at(j).map(|t| t.0),
                    j.metadata.creation_timestamp.as_ref().map(|t| t.0),
                )
            });
            for j in &jobs[..jobs.len() - limit] {
                self.delete_job(cj, j).await?;
            }
        }
        Ok(())
    }

    fn job_from_template(cj: &CronJob, scheduled: Timestamp, tz: &TimeZone) -> Job {
        let template = cj
            .spec
            .as_ref()
            .map(|s| s.job_template.clone())
            .unwrap_or_default();
        let tmeta = template.metadata.unwrap_or_default();
        let mut job = Job::default();
        let name = cj.metadata.name.as_deref().unwrap_or_default();
        job.metadata.name = Some(job_name(name, scheduled));
        job.metadata.namespace.clone_from(&cj.metadata.namespace);
        job.metadata.labels = tmeta.labels;
        let mut annotations = tmeta.annotations.unwrap_or_default();
        let local = scheduled.to_zoned(tz.clone());
        annotations.insert(
            SCHEDULED_TIMESTAMP.into(),
            local.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        );
        job.metadata.annotations = Some(annotations);
        job.metadata.owner_references = Some(vec![controller_ref(cj)]);
        job.spec = template.spec;
        job
    }

    async fn write_status(
        &self,
        cj: &CronJob,
        key: &ObjectRef,
        status: &CronJobStatus,
    ) -> Result<bool, Error> {
        if cj.status.as_ref() == Some(status) {
            return Ok(true);
        }
        let api: Api<CronJob> = Api::namespaced(self.client.clone(), key.ns().unwrap_or_default());
        let patch = status_merge_patch(cj.status.as_ref(), status);
        match api.patch_status(&key.name, &Patch::Merge(patch)).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(api_err("updating the status")(e)),
        }
    }
}

#[async_trait]
impl Reconciler<CronJob> for CronJobController {
    type Error = Error;

    #[allow(clippy::too_many_lines)]
    async fn reconcile(&self, cj: Arc<CronJob>, ctx: &Context) -> Result<Action, Error> {
        let key = &ctx.key;
        let ns = key.ns().unwrap_or_default();
        let spec = cj.spec.clone().unwrap_or_default();
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let now = clock::now();

        let owned: Vec<Arc<Job>> = self
            .jobs
            .owned_by(&uid)
            .into_iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .collect();
        let (finished, running): (Vec<Arc<Job>>, Vec<Arc<Job>>) =
            owned.into_iter().partition(|j| finished_at(j).is_some());
        let mut status = cj.status.clone().unwrap_or_default();
        let mut running_refs: Vec<ObjectReference> = running.iter().map(|j| job_ref(j)).collect();
        running_refs.sort_by(|a, b| a.name.cmp(&b.name));
        let last_success = finished
            .iter()
            .filter(|j| job_succeeded(j))
            .filter_map(|j| j.status.as_ref()?.completion_time.clone())
            .max_by_key(|t| t.0);
        if let Some(t) = last_success {
            if status
                .last_successful_time
                .as_ref()
                .is_none_or(|old| old.0 < t.0)
            {
                status.last_successful_time = Some(t);
            }
        }
        status.active = (!running_refs.is_empty()).then_some(running_refs);
        self.cleanup(&cj, &finished).await?;

        if cj.metadata.deletion_timestamp.is_some() {
            self.write_status(&cj, key, &status).await?;
            return Ok(Action::await_change());
        }
        let schedule = match Schedule::parse(&spec.schedule) {
            Ok(s) => s,
            Err(e) => {
                self.event(
                    &cj,
                    EventType::Warning,
                    "UnparseableSchedule",
                    &e.to_string(),
                )
                .await;
                self.write_status(&cj, key, &status).await?;
                return Ok(Action::await_change());
            }
        };
        let tz = match spec.time_zone.as_deref() {
            None | Some("") => TimeZone::UTC,
            Some(name) => match TimeZone::get(name) {
                Ok(tz) => tz,
                Err(e) => {
                    self.event(
                        &cj,
                        EventType::Warning,
                        "UnknownTimeZone",
                        &format!("invalid timeZone {name:?}: {e}"),
                    )
                    .await;
                    self.write_status(&cj, key, &status).await?;
                    return Ok(Action::await_change());
                }
            },
        };
        let next_wait = |from: Timestamp| {
            schedule.next_after(from, &tz).map(|n| {
                let secs = n.as_second() - clock::now().as_second();
                Duration::from_secs(u64::try_from(secs).unwrap_or(0)) + Duration::from_millis(100)
            })
        };
        let requeue = |w: Option<Duration>| w.map_or(Action::await_change(), Action::requeue);
        if spec.suspend == Some(true) {
            self.write_status(&cj, key, &status).await?;
            return Ok(Action::await_change());
        }

        let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
        let mut earliest = status.last_schedule_time.as_ref().map_or(created, |t| t.0);
        if let Some(sds) = spec.starting_deadline_seconds {
            let floor = Timestamp::from_second(now.as_second() - sds).unwrap_or(now);
            if floor > earliest {
                earliest = floor;
            }
        }
        let (scheduled, missed) = most_recent(&schedule, &tz, earliest, now);
        let Some(scheduled) = scheduled else {
            if !self.write_status(&cj, key, &status).await? {
                return Ok(Action::await_change());
            }
            return Ok(requeue(next_wait(now)));
        };
        if missed > MAX_MISSED {
            self.event(
                &cj,
                EventType::Warning,
                "TooManyMissedTimes",
                &format!("too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"),
            )
            .await;
        }

        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        let name = job_name(&key.name, scheduled);
        let already = running
            .iter()
            .chain(finished.iter())
            .any(|j| j.metadata.name.as_deref() == Some(name.as_str()));
        if !already {
            if policy == "Forbid" && !running.is_empty() {
                tracing::debug!(cronjob = %key, "a Job is still active; skipping this time");
                self.write_status(&cj, key, &status).await?;
                return Ok(requeue(next_wait(now)));
            }
            if policy == "Replace" {
                for j in &running {
                    self.delete_job(&cj, j).await?;
                }
                status.active = None;
            }
            let job = Self::job_from_template(&cj, scheduled, &tz);
            let api: Api<Job> = Api::namespaced(self.client.clone(), ns);
            match api.create(&job).await {
                Ok(j) => {
                    self.event(
                        &cj,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("Created job {name}"),
                    )
                    .await;
                    status.active.get_or_insert_with(Vec::new).push(job_ref(&j));
                }
                Err(e) if e.is_already_exists() => {
                    // Made by an earlier pass whose status write was lost, or by someone
                    // else: either way not made again.
                    tracing::debug!(job = %name, "Job exists already");
                }
                Err(e) => {
                    self.event(
                        &cj,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("Error creating job: {e}"),
                    )
                    .await;
                    self.write_status(&cj, key, &status).await?;
                    return Err(api_err(format!("creating Job {name}"))(e));
                }
            }
        }
        if status
            .last_schedule_time
            .as_ref()
            .is_none_or(|t| t.0 < scheduled)
        {
            status.last_schedule_time = Some(to_time(scheduled));
        }
        if !self.write_status(&cj, key, &status).await? {
            return Ok(Action::await_change());
        }
        Ok(requeue(next_wait(now)))
    }
}
