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

/// Fails a pod with its `work` container's exit code, and a condition if given.
async fn fail_with(client: &Client, name: &str, code: i32, condition: Option<&str>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let mut conditions = vec![json!({"type": "Ready", "status": "False"})];
    if let Some(c) = condition {
        conditions.push(json!({"type": c, "status": "True"}));
    }
    let patch = json!({"status": {
        "phase": "Failed",
        "conditions": conditions,
        "containerStatuses": [{"name": "work", "image": "busybox", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": code}}}],
    }});
    pods.patch_status(name, &Patch::Merge(patch)).await.unwrap();
}

async fn one_live_pod(client: &Client, job: &str) -> String {
    eventually("a live pod", Duration::from_secs(120), || async {
        let p = live(&pods(client, "ns", &format!("job-name={job}")).await);
        (p.len() == 1).then(|| name_of(&p[0]))
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_pod_failure_policy_ignores_disruptions_and_fails_the_job_on_a_fatal_exit_code() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<Job> = Api::namespaced(client.clone(), "ns");
    let policy = json!({"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "work", "operator": "In", "values": [42]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [42]}},
    ]});
    api.create(&job(
        "policy",
        json!({"backoffLimit": 1, "podFailurePolicy": policy}),
    ))
    .await
    .unwrap();
    // Two disruptions: ignored, so a backoffLimit of 1 is not reached and none counts.
    for _ in 0..2 {
        let pod = one_live_pod(&client, "policy").await;
        fail_with(&client, &pod, 137, Some("DisruptionTarget")).await;
        eventually("the pod failed", WAIT, || async {
            let p = pods(&client, "ns", "job-name=policy").await;
            p.iter()
                .any(|p| name_of(p) == pod && live(std::slice::from_ref(p)).is_empty())
                .then_some(())
        })
        .await;
    }
    // One counted failure (exit 1, no disruption) is within the limit...
    let pod = one_live_pod(&client, "policy").await;
    fail_with(&client, &pod, 1, None).await;
    let st = eventually("one failure counted", WAIT, || async {
        let s = status(&api, "policy").await;
        (s.failed == Some(1)).then_some(s)
    })
    .await;
    assert!(condition(&st, "Failed").is_none(), "{st:?}");
    // ...and exit code 42 fails the Job at once, naming the rule.
    let pod = one_live_pod(&client, "policy").await;
    fail_with(&client, &pod, 42, None).await;
    let st = eventually("failed by the policy", WAIT, || async {
        let s = status(&api, "policy").await;
        condition(&s, "Failed").is_some().then_some(s)
    })
    .await;
    assert_eq!(
        condition(&st, "Failed").unwrap(),
        ("True".into(), "PodFailurePolicy".into())
    );
    let message = st
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .and_then(|c| c.message)
        .unwrap();
    assert!(
        message.contains(&format!("Container work for pod ns/{pod} failed with exit code 42 matching FailJob rule at index 0")),
        "{message}"
    );
    assert_eq!(st.failed, Some(2), "the disruptions are not counted");
}

#[tokio::test(start_paused = true)]
async fn a_success_policy_completes_an_indexed_job_before_all_its_indexes() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<Job> = Api::namespaced(client.clone(), "ns");
    api.create(&job(
        "leader",
        json!({"completions": 4, "parallelism": 4, "completionMode": "Indexed",
               "successPolicy": {"rules": [{"succeededIndexes": "0"}]}}),
    ))
    .await
    .unwrap();
    let all = eventually("4 pods", WAIT, || async {
        let p = pods(&client, "ns", "job-name=leader").await;
        (p.len() == 4).then_some(p)
    })
    .await;
    let index = |p: &Pod| {
        p.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"].clone()
    };
    // A follower finishing does not meet the rule.
    let follower = all.iter().find(|p| index(p) == "2").unwrap();
    mark_phase(&client, "ns", &name_of(follower), "Succeeded").await;
    eventually("one succeeded", WAIT, || async {
        (status(&api, "leader").await.succeeded == Some(1)).then_some(())
    })
    .await;
    assert!(condition(&status(&api, "leader").await, "SuccessCriteriaMet").is_none());
    // Index 0 finishing does: the others are stopped and the Job completes.
    let leader = all.iter().find(|p| index(p) == "0").unwrap();
    mark_phase(&client, "ns", &name_of(leader), "Succeeded").await;
    let st = eventually("the criteria met", WAIT, || async {
        let s = status(&api, "leader").await;
        condition(&s, "SuccessCriteriaMet").is_some().then_some(s)
    })
    .await;
    assert_eq!(
        condition(&st, "SuccessCriteriaMet").unwrap(),
        ("True".into(), "SuccessPolicy".into())
    );
    // The stopped pods go (the test plays the node: they are deleted at once).
    eventually("complete", WAIT, || async {
        let s = status(&api, "leader").await;
        condition(&s, "Complete").is_some().then_some(s)
    })
    .await;
    let st = status(&api, "leader").await;
    assert_eq!(
        condition(&st, "Complete").unwrap(),
        ("True".into(), "SuccessPolicy".into())
    );
    assert_eq!(st.completed_indexes.as_deref(), Some("0,2"));
}

#[tokio::test(start_paused = true)]
async fn policies_the_server_cannot_honour_or_that_are_malformed_are_refused() {
    let (_server, client) = cluster(&["ns"]).await;
    let api: Api<Job> = Api::namespaced(client.clone(), "ns");
    let on_failure = {
        let mut j = job(
            "a",
            json!({"podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}}),
        );
        j.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = Some("OnFailure".into());
        j
    };
    let cases = [
        (on_failure, "spec.template.spec.restartPolicy"),
        (
            job(
                "b",
                json!({"podFailurePolicy": {"rules": [{"action": "FailJob",
                "onExitCodes": {"operator": "In", "values": [0]}}]}}),
            ),
            "spec.podFailurePolicy.rules[0].onExitCodes.values[0]",
        ),
        (
            job(
                "c",
                json!({"podFailurePolicy": {"rules": [{"action": "Explode",
                "onPodConditions": [{"type": "DisruptionTarget"}]}]}}),
            ),
            "spec.podFailurePolicy.rules[0].action",
        ),
        (
            job(
                "d",
                json!({"successPolicy": {"rules": [{"succeededCount": 1}]}}),
            ),
            "spec.successPolicy",
        ),
        (
            job("e", json!({"completions": 2, "backoffLimitPerIndex": 1})),
            "spec.backoffLimitPerIndex",
        ),
        (
            job(
                "f",
                json!({"completions": 2, "completionMode": "Indexed",
                "backoffLimitPerIndex": 1, "maxFailedIndexes": 3}),
            ),
            "spec.maxFailedIndexes",
        ),
        (
            job(
                "g",
                json!({"podFailurePolicy": {"rules": [{"action": "FailIndex",
                "onExitCodes": {"operator": "In", "values": [3]}}]}}),
            ),
            "spec.podFailurePolicy.rules[0].action",
        ),
    ];
    for (j, field) in cases {
        let err = api.create(&j).await.expect_err("refused");
        assert_eq!(err.code(), 422, "{err}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
}

fn index_of_pod(p: &Pod) -> String {
    p.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"].clone()
}

async fn live_of_index(client: &Client, job: &str, index: &str) -> Option<Pod> {
    live(&pods(client, "ns", &format!("job-name={job}")).await)
        .into_iter()
        .find(|p| index_of_pod(p) == index)
}

#[tokio::test(start_paused = true)]
async fn a_backoff_limit_per_index_fails_only_that_index_then_the_job() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    let api: Api<Job> = Api::namespaced(client.clone(), "ns");
    api.create(&job(
        "per-index",
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed",
               "backoffLimitPerIndex": 1}),
    ))
    .await
    .unwrap();
    assert_eq!(
        api.get("per-index")
            .await
            .unwrap()
            .spec
            .unwrap()
            .backoff_limit,
        Some(i32::MAX),
        "the Job-wide limit is off"
    );
    for failures in 0..2 {
        let pod = eventually("a pod of index 1", Duration::from_secs(120), || async {
            live_of_index(&client, "per-index", "1").await
        })
        .await;
        let count = &pod.metadata.annotations.as_ref().unwrap()
            ["batch.kubernetes.io/job-index-failure-count"];
        assert_eq!(count, &failures.to_string());
        fail_with(&client, &name_of(&pod), 1, None).await;
    }
    let st = eventually("index 1 failed", WAIT, || async {
        let s = status(&api, "per-index").await;
        (s.failed_indexes.as_deref() == Some("1")).then_some(s)
    })
    .await;
    assert!(
        condition(&st, "Failed").is_none(),
        "the other indexes go on"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        live_of_index(&client, "per-index", "1").await.is_none(),
        "a failed index is not run again"
    );
    for index in ["0", "2"] {
        let pod = live_of_index(&client, "per-index", index).await.unwrap();
        mark_phase(&client, "ns", &name_of(&pod), "Succeeded").await;
    }
    let st = eventually("the Job failed", WAIT, || async {
        let s = status(&api, "per-index").await;
        condition(&s, "Failed").is_some().then_some(s)
    })
    .await;
    assert_eq!(
        condition(&st, "Failed").unwrap(),
        ("True".into(), "FailedIndexes".into())
    );
    assert_eq!(st.completed_indexes.as_deref(), Some("0,2"));
    assert_eq!(st.failed, Some(2));

    // With maxFailedIndexes, the Job fails as soon as too many indexes have.
    api.create(&job(
        "strict",
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed",
               "backoffLimitPerIndex": 0, "maxFailedIndexes": 0}),
    ))
    .await
    .unwrap();
    let pod = eventually("a pod of index 2", WAIT, || async {
        live_of_index(&client, "strict", "2").await
    })
    .await;
    fail_with(&client, &name_of(&pod), 1, None).await;
    let st = eventually("the Job failed", WAIT, || async {
        let s = status(&api, "strict").await;
        condition(&s, "Failed").is_some().then_some(s)
    })
    .await;
    assert_eq!(
        condition(&st, "Failed").unwrap(),
        ("True".into(), "MaxFailedIndexesExceeded".into())
    );
}
