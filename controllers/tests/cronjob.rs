//! The CronJob controller against an in-process API server, under paused time.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually};
use keelson_controllers::builtin::cronjob::CronJobController;
use keelson_controllers::{clock, InformerFactory};
use keelson_core::client::{Api, Client, ListParams, Patch};
use keelson_core::k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(200);

fn cron_job(name: &str, schedule: &str, extra: serde_json::Value) -> CronJob {
    let mut spec = json!({
        "schedule": schedule,
        "jobTemplate": {
            "metadata": {"labels": {"cron": name}},
            "spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "tick", "image": "busybox", "command": ["true"]}],
            }}},
        },
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn start(client: &Client) -> tokio::task::JoinHandle<()> {
    let factory = InformerFactory::new();
    let (controller, reconciler) = CronJobController::controller(client, &factory);
    tokio::spawn(controller.concurrency(2).run(reconciler))
}

async fn status(api: &Api<CronJob>, name: &str) -> CronJobStatus {
    api.get(name).await.unwrap().status.unwrap_or_default()
}

async fn jobs(client: &Client, cron: &str) -> Vec<Job> {
    let mut list = Api::<Job>::namespaced(client.clone(), "ns")
        .list(
            &ListParams::default()
                .labels(&format!("cron={cron}"))
                .unwrap(),
        )
        .await
        .unwrap()
        .items;
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    list
}

/// What the Job controller would write for a finished Job.
async fn finish(client: &Client, name: &str, success: bool) {
    let api: Api<Job> = Api::namespaced(client.clone(), "ns");
    let now = clock::now_time();
    let t = if success { "Complete" } else { "Failed" };
    let mut status =
        json!({"conditions": [{"type": t, "status": "True", "lastTransitionTime": now}]});
    if success {
        status["completionTime"] = json!(now);
        status["succeeded"] = json!(1);
    }
    api.patch_status(name, &Patch::Merge(json!({ "status": status })))
        .await
        .unwrap();
}

fn minute_of(job: &Job) -> i64 {
    let name = job.metadata.name.as_deref().unwrap();
    name.rsplit('-').next().unwrap().parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn every_minute_a_job_is_made_named_by_its_scheduled_minute() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<CronJob> = Api::namespaced(client.clone(), "ns");
    api.create(&cron_job("tick", "* * * * *", json!({})))
        .await
        .unwrap();
    let first = eventually("a job", WAIT, || async {
        jobs(&client, "tick").await.into_iter().next()
    })
    .await;
    let minute = minute_of(&first);
    let scheduled = first.metadata.annotations.as_ref().unwrap()
        ["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .clone();
    assert!(scheduled.ends_with("+00:00"), "{scheduled}");
    let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CronJob", Some(true))
    );
    // The API server gave it its selector.
    assert!(first.spec.as_ref().unwrap().selector.is_some());
    let st = eventually("status", WAIT, || async {
        let s = status(&api, "tick").await;
        s.last_schedule_time.is_some().then_some(s)
    })
    .await;
    assert_eq!(st.last_schedule_time.unwrap().0.as_second(), minute * 60);
    assert_eq!(st.active.as_ref().unwrap().len(), 1);

    // Allow: the next minute's Job runs beside the first.
    let second = eventually("a second job", WAIT, || async {
        let j = jobs(&client, "tick").await;
        (j.len() == 2).then(|| j[1].clone())
    })
    .await;
    assert_eq!(minute_of(&second), minute + 1);
    finish(&client, first.metadata.name.as_deref().unwrap(), true).await;
    let st = eventually("last successful time", WAIT, || async {
        let s = status(&api, "tick").await;
        s.last_successful_time.is_some().then_some(s)
    })
    .await;
    assert!(st
        .active
        .unwrap()
        .iter()
        .all(|r| r.name != first.metadata.name));
}

#[tokio::test(start_paused = true)]
async fn forbid_skips_while_a_job_runs_and_replace_replaces_it() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<CronJob> = Api::namespaced(client.clone(), "ns");
    api.create(&cron_job(
        "solo",
        "* * * * *",
        json!({"concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 10}),
    ))
    .await
    .unwrap();
    let first = eventually("a job", WAIT, || async {
        jobs(&client, "solo").await.into_iter().next()
    })
    .await;
    // Three more minutes pass: nothing new while it runs.
    tokio::time::sleep(Duration::from_secs(180)).await;
    assert_eq!(jobs(&client, "solo").await.len(), 1);

    // Replace: the running Job goes, a new one comes.
    api.patch(
        "solo",
        &Patch::Merge(json!({"spec": {"concurrencyPolicy": "Replace"}})),
    )
    .await
    .unwrap();
    let next = eventually("a replacement", WAIT, || async {
        let j = jobs(&client, "solo").await;
        (j.len() == 1 && j[0].metadata.name != first.metadata.name).then(|| j[0].clone())
    })
    .await;
    assert!(minute_of(&next) > minute_of(&first) + 2);
}

#[tokio::test(start_paused = true)]
async fn finished_jobs_beyond_the_history_limits_are_deleted_oldest_first() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<CronJob> = Api::namespaced(client.clone(), "ns");
    api.create(&cron_job(
        "hist",
        "* * * * *",
        json!({"successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 1}),
    ))
    .await
    .unwrap();
    let mut finished_ok = Vec::new();
    let mut finished_bad = Vec::new();
    for i in 0..5 {
        let j = eventually("a new job", WAIT, || async {
            jobs(&client, "hist").await.into_iter().find(|j| {
                let n = j.metadata.name.clone().unwrap();
                !finished_ok.contains(&n) && !finished_bad.contains(&n)
            })
        })
        .await;
        let name = j.metadata.name.clone().unwrap();
        let ok = i != 1 && i != 2;
        finish(&client, &name, ok).await;
        if ok {
            finished_ok.push(name);
        } else {
            finished_bad.push(name);
        }
    }
    eventually("history trimmed", WAIT, || async {
        let names: Vec<String> = jobs(&client, "hist")
            .await
            .iter()
            .filter(|j| j.status.as_ref().is_some_and(|s| s.conditions.is_some()))
            .map(|j| j.metadata.name.clone().unwrap())
            .collect();
        let want = [
            finished_bad[1].clone(),
            finished_ok[1].clone(),
            finished_ok[2].clone(),
        ];
        let mut want = want.to_vec();
        want.sort();
        (names == want).then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_suspended_cron_job_makes_no_jobs_and_a_bad_schedule_is_refused() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<CronJob> = Api::namespaced(client.clone(), "ns");
    api.create(&cron_job("paused", "* * * * *", json!({"suspend": true})))
        .await
        .unwrap();
    // A schedule that does not parse, or an unknown zone, is refused at the API.
    for (schedule, zone, field) in [
        ("61 * * * *", None, "spec.schedule"),
        ("CRON_TZ=UTC * * * * *", None, "spec.schedule"),
        ("@hourly", Some("Mars/Olympus"), "spec.timeZone"),
    ] {
        let extra = zone.map_or(json!({}), |z| json!({ "timeZone": z }));
        let err = api
            .create(&cron_job("broken", schedule, extra))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), 422, "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
    api.create(&cron_job(
        "zoned",
        "@hourly",
        json!({"timeZone": "Asia/Kolkata"}),
    ))
    .await
    .unwrap();
    // Kolkata is UTC+5:30: its hours start at half past in UTC.
    let mut waited = Duration::ZERO;
    let zoned = loop {
        if let Some(j) = jobs(&client, "zoned").await.into_iter().next() {
            break j;
        }
        assert!(
            waited < Duration::from_secs(3700),
            "no hourly job in an hour"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        waited += Duration::from_secs(10);
    };
    assert_eq!(minute_of(&zoned).rem_euclid(60), 30);
    let scheduled = &zoned.metadata.annotations.as_ref().unwrap()
        ["batch.kubernetes.io/cronjob-scheduled-timestamp"];
    assert!(scheduled.ends_with(":00:00+05:30"), "{scheduled}");
    assert!(jobs(&client, "paused").await.is_empty());
    api.patch("paused", &Patch::Merge(json!({"spec": {"suspend": false}})))
        .await
        .unwrap();
    eventually("a job once resumed", WAIT, || async {
        jobs(&client, "paused").await.into_iter().next()
    })
    .await;
}
