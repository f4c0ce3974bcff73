//! The Job controller against an in-process API server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually, mark_phase, mark_ready, name_of, pods};
use keelson_controllers::builtin::job::JobController;
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, Client, Patch};
use keelson_core::k8s_openapi::api::batch::v1::{Job, JobStatus};
use keelson_core::k8s_openapi::api::core::v1::Pod;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn job(name: &str, spec: serde_json::Value) -> Job {
    let mut spec = spec;
    spec["template"] = json!({
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "work", "image": "busybox", "command": ["sh", "-c", "exit 0"]}],
        }
    });
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn start(client: &Client) -> tokio::task::JoinHandle<()> {
    let factory = InformerFactory::new();
    let (controller, reconciler) = JobController::controller(client, &factory);
    tokio::spawn(controller.concurrency(2).run(reconciler))
}

async fn status(api: &Api<Job>, name: &str) -> JobStatus {
    api.get(name).await.unwrap().status.unwrap_or_default()
}

fn condition(s: &JobStatus, t: &str) -> Option<(String, String)> {
    s.conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

fn live(p: &[Pod]) -> Vec<Pod> {
    p.iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .cloned()
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_job_runs_parallelism_pods_until_its_completions_succeed() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<Job> = Api::namespaced(client.clone(), "ns");
    api.create(&job("batch", json!({"completions": 3, "parallelism": 2})))
        .await
        .unwrap();
    let first = eventually("2 pods", WAIT, || async {
        let p = pods(&client, "ns", "job-name=batch").await;
        (p.len() == 2).then_some(p)
    })
    .await;
    let owner = &first[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("Job", Some(true)));
    assert!(name_of(&first[0]).starts_with("batch-"));
    mark_ready(&client, "ns", &name_of(&first[0])).await;
    let st = eventually("active and ready", WAIT, || async {
        let s = status(&api, "batch").await;
        (s.ready == Some(1)).then_some(s)
    })
    .await;
    assert_eq!(st.active, Some(2));
    assert!(st.start_time.is_some());

    // One succeeds: one more pod, never more than 2 at once, 3 in all.
    mark_phase(&client, "ns", &name_of(&first[0]), "Succeeded").await;
    let p = eventually("a third pod", WAIT, || async {
        let p = pods(&client, "ns", "job-name=batch").await;
        (p.len() == 3).then_some(p)
    })
    .await;
    assert_eq!(live(&p).len(), 2);
    for pod in live(&p) {
        mark_phase(&client, "ns", &name_of(&pod), "Succeeded").await;
    }
    let st = eventually("complete", WAIT, || async {
        let s = status(&api, "batch").await;
        (condition(&s, "Complete").is_some()).then_some(s)
    })
    .await;
    assert_eq!(
        condition(&st, "Complete").unwrap(),
        ("True".into(), "CompletionsReached".into())
    );
    assert_eq!(
        condition(&st, "SuccessCriteriaMet").unwrap(),
        ("True".into(), "CompletionsReached".into())
    );
    assert_eq!(st.succeeded, Some(3));
    assert_eq!(st.active, Some(0));
    assert!(st.completion_time.is_some());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(pods(&client, "ns", "job-name=batch").await.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn failures_beyond_the_backoff_limit_fail_the_job() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<Job> = Api::namespaced(client.clone(), "ns");
    api.create(&job("flaky", json!({"backoffLimit": 1})))
        .await
        .unwrap();
    for round in 1..=2 {
        let pod = eventually("a live pod", Duration::from_secs(120), || async {
            let p = live(&pods(&client, "ns", "job-name=flaky").await);
            (p.len() == 1).then(|| name_of(&p[0]))
        })
        .await;
        let before = tokio::time::Instant::now();
        mark_phase(&client, "ns", &pod, "Failed").await;
        if round == 1 {
            // The replacement waits out the back-off (10 s).
            eventually("a replacement", Duration::from_secs(60), || async {
                let p = live(&pods(&client, "ns", "job-name=flaky").await);
                (p.len() == 1).then_some(())
            })
            .await;
            assert!(
                before.elapsed() >= Duration::from_secs(9),
                "{:?}",
                before.elapsed()
            );
        }
    }
    let st = eventually("failed", WAIT, || async {
        let s = status(&api, "flaky").await;
        condition(&s, "Failed").is_some().then_some(s)
    })
    .await;
    assert_eq!(
        condition(&st, "Failed").unwrap(),
        ("True".into(), "BackoffLimitExceeded".into())
    );
    assert_eq!(
        condition(&st, "FailureTarget").unwrap(),
        ("True".into(), "BackoffLimitExceeded".into())
    );
    assert_eq!(st.failed, Some(2));
    assert!(st.completion_time.is_none());
}

#[tokio::test(start_paused = true)]
async fn an_active_deadline_fails_the_job_and_stops_its_pods() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<Job> = Api::namespaced(client.clone(), "ns");
    api.create(&job(
        "slow",
        json!({"activeDeadlineSeconds": 30, "parallelism": 2, "completions": 4}),
    ))
    .await
    .unwrap();
    eventually("2 pods", WAIT, || async {
        (pods(&client, "ns", "job-name=slow").await.len() == 2).then_some(())
    })
    .await;
    let st = eventually("deadline exceeded", Duration::from_secs(60), || async {
        let s = status(&api, "slow").await;
        condition(&s, "Failed").is_some().then_some(s)
    })
    .await;
    assert_eq!(
        condition(&st, "Failed").unwrap(),
        ("True".into(), "DeadlineExceeded".into())
    );
    assert!(pods(&client, "ns", "job-name=slow").await.is_empty());
    assert_eq!(st.active, Some(0));
}

#[tokio::test(start_paused = true)]
async fn an_indexed_job_gives_every_pod_its_completion_index() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<Job> = Api::namespaced(client.clone(), "ns");
    api.create(&job(
        "idx",
        json!({"completions": 3, "parallelism": 2, "completionMode": "Indexed"}),
    ))
    .await
    .unwrap();
    let p = eventually("2 pods", WAIT, || async {
        let p = pods(&client, "ns", "job-name=idx").await;
        (p.len() == 2).then_some(p)
    })
    .await;
    let mut indexes = Vec::new();
    for pod in &p {
        let i = pod.metadata.annotations.as_ref().unwrap()
            ["batch.kubernetes.io/job-completion-index"]
            .clone();
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"],
            i
        );
        assert!(name_of(pod).starts_with(&format!("idx-{i}-")));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(format!("idx-{i}").as_str()));
        let env = spec.containers[0].env.as_ref().unwrap();
        let var = env
            .iter()
            .find(|e| e.name == "JOB_COMPLETION_INDEX")
            .unwrap();
        assert_eq!(var.value.as_deref(), Some(i.as_str()));
        indexes.push(i);
    }
    indexes.sort();
    assert_eq!(indexes, ["0", "1"]);

    let one = p.iter().find(|p| name_of(p).starts_with("idx-1-")).unwrap();
    mark_phase(&client, "ns", &name_of(one), "Succeeded").await;
    let st = eventually("index 1 done, index 2 started", WAIT, || async {
        let s = status(&api, "idx").await;
        let started = pods(&client, "ns", "job-name=idx")
            .await
            .iter()
            .any(|p| name_of(p).starts_with("idx-2-"));
        (s.completed_indexes.as_deref() == Some("1") && started).then_some(s)
    })
    .await;
    assert_eq!(st.succeeded, Some(1));
    for pod in live(&pods(&client, "ns", "job-name=idx").await) {
        mark_phase(&client, "ns", &name_of(&pod), "Succeeded").await;
    }
    let st = eventually("complete", WAIT, || async {
        let s = status(&api, "idx").await;
        condition(&s, "Complete").is_some().then_some(s)
    })
    .await;
    assert_eq!(st.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(st.succeeded, Some(3));
}

#[tokio::test(start_paused = true)]
async fn a_suspended_job_makes_no_pods_until_it_is_resumed() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<Job> = Api::namespaced(client.clone(), "ns");
    api.create(&job("later", json!({"suspend": true})))
        .await
        .unwrap();
    let st = eventually("suspended", WAIT, || async {
        let s = status(&api, "later").await;
        condition(&s, "Suspended").is_some().then_some(s)
    })
    .await;
    assert_eq!(
        condition(&st, "Suspended").unwrap(),
        ("True".into(), "JobSuspended".into())
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(pods(&client, "ns", "job-name=later").await.is_empty());
    api.patch("later", &Patch::Merge(json!({"spec": {"suspend": false}})))
        .await
        .unwrap();
    let p = eventually("a pod", WAIT, || async {
        let p = pods(&client, "ns", "job-name=later").await;
        (p.len() == 1).then(|| name_of(&p[0]))
    })
    .await;
    let st = status(&api, "later").await;
    assert_eq!(
        condition(&st, "Suspended").unwrap(),
        ("False".into(), "JobResumed".into())
    );
    // Suspending again stops the running pod.
    api.patch("later", &Patch::Merge(json!({"spec": {"suspend": true}})))
        .await
        .unwrap();
    eventually("pod stopped", WAIT, || async {
        pods(&client, "ns", "job-name=later")
            .await
            .iter()
            .all(|q| name_of(q) != p)
            .then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_finished_job_is_deleted_after_its_ttl() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<Job> = Api::namespaced(client.clone(), "ns");
    api.create(&job("brief", json!({"ttlSecondsAfterFinished": 60})))
        .await
        .unwrap();
    let p = eventually("a pod", WAIT, || async {
        let p = pods(&client, "ns", "job-name=brief").await;
        (p.len() == 1).then(|| name_of(&p[0]))
    })
    .await;
    mark_phase(&client, "ns", &p, "Succeeded").await;
    eventually("complete", WAIT, || async {
        let s = status(&api, "brief").await;
        condition(&s, "Complete").is_some().then_some(())
    })
    .await;
    let done = tokio::time::Instant::now();
    // Foreground deletion: the Job is marked deleted (the garbage collector, not
    // running here, would finish it).
    eventually("deleted after 60 s", Duration::from_secs(120), || async {
        let j = api.get_opt("brief").await.unwrap();
        j.is_none_or(|j| j.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    assert!(
        done.elapsed() >= Duration::from_secs(59),
        "{:?}",
        done.elapsed()
    );
}
