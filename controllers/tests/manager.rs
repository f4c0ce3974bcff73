//! The controller manager: all built-in controllers together, with and without leader
//! election.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually, mark_all_ready, pods, shutdown, template};
use keelson_controllers::leader::LeaderElectionConfig;
use keelson_controllers::{ControllerManager, ControllerManagerConfig};
use keelson_core::client::{Api, DeleteOptions, ListParams, PropagationPolicy};
use keelson_core::k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use keelson_core::k8s_openapi::api::core::v1::ServiceAccount;
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

const WAIT: Duration = Duration::from_secs(60);

fn deployment(name: &str, replicas: i32) -> Deployment {
    let mut d = Deployment::default();
    d.metadata.name = Some(name.into());
    d.spec = Some(DeploymentSpec {
        replicas: Some(replicas),
        selector: LabelSelector {
            match_labels: Some([("app".to_owned(), name.to_owned())].into()),
            ..LabelSelector::default()
        },
        template: template(&[("app", name)], "nginx:1.27"),
        ..DeploymentSpec::default()
    });
    d
}

#[test]
fn controllers_are_chosen_as_kube_controller_manager_chooses_them() {
    let c = ControllerManagerConfig::default()
        .controllers(&["*", "-namespace"])
        .unwrap();
    assert!(!c.enabled.contains(&"namespace".to_owned()));
    assert_eq!(c.enabled.len(), keelson_controllers::CONTROLLERS.len() - 1);
    let c = ControllerManagerConfig::default()
        .controllers(&["deployment"])
        .unwrap();
    assert_eq!(c.enabled, ["deployment"]);
    let e = ControllerManagerConfig::default()
        .controllers(&["*", "-nope"])
        .unwrap_err();
    assert!(e.to_string().contains("unknown controller \"nope\""), "{e}");
}

#[test]
fn controllers_can_be_named_by_kubernetes_full_names() {
    let c = ControllerManagerConfig::default()
        .controllers(&["*", "-service-lb-controller", "-node-route-controller"])
        .unwrap();
    assert!(c.enabled.contains(&"cloud-node".to_owned()));
    assert!(!c.enabled.contains(&"service".to_owned()));
    assert!(!c.enabled.contains(&"route".to_owned()));
    let c = ControllerManagerConfig::default()
        .controllers(&["cloud-node-controller", "deployment-controller", "route"])
        .unwrap();
    assert_eq!(c.enabled, ["deployment", "cloud-node", "route"]);
    for (full, short) in keelson_controllers::CONTROLLER_ALIASES {
        assert!(
            keelson_controllers::CONTROLLERS.contains(&short),
            "{full} stands for an unknown controller {short}"
        );
    }
    let e = ControllerManagerConfig::default()
        .controllers(&["-service-controller"])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown controller \"service-controller\""),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deployment_runs_and_its_foreground_deletion_removes_pods_and_replica_sets_first() {
    let (_server, client) = cluster(&["ns"]).await;
    let (stop, signal) = shutdown();
    let manager = ControllerManager::new(client.clone());
    let metrics = manager.metrics();
    let run = tokio::spawn(manager.run(signal()));
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "ns");
    eventually("default service account", WAIT, || async {
        sas.get_opt("default").await.unwrap().map(|_| ())
    })
    .await;

    let api: Api<Deployment> = Api::namespaced(client.clone(), "ns");
    api.create(&deployment("web", 3)).await.unwrap();
    eventually("3 pods available", WAIT, || async {
        mark_all_ready(&client, "ns", "app=web").await;
        let d = api.get("web").await.unwrap();
        (d.status.and_then(|s| s.available_replicas) == Some(3)).then_some(())
    })
    .await;
    assert!(metrics.render().contains(
        "controller_reconcile_duration_seconds_count{controller=\"deployment\",result=\"success\"}"
    ));

    api.delete(
        "web",
        &DeleteOptions {
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..DeleteOptions::default()
        },
    )
    .await
    .unwrap();
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "ns");
    eventually("everything gone, the deployment last", WAIT, || async {
        let d = api.get_opt("web").await.unwrap();
        let rs = sets.list(&ListParams::default()).await.unwrap().items.len();
        let p = pods(&client, "ns", "app=web").await.len();
        if d.is_none() {
            assert_eq!((rs, p), (0, 0), "the deployment went before its dependents");
            return Some(());
        }
        None
    })
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn with_leader_election_only_the_leader_runs_controllers() {
    let (_server, client) = cluster(&["ns", "kube-system"]).await;
    let (stop, signal) = shutdown();
    let mut runs = Vec::new();
    for id in ["a", "b"] {
        let config = ControllerManagerConfig {
            leader_election: Some(LeaderElectionConfig::new(
                "kube-system",
                "keelson-controller-manager",
                id,
            )),
            ..ControllerManagerConfig::default()
        };
        runs.push(tokio::spawn(
            ControllerManager::with_config(client.clone(), config).run(signal()),
        ));
    }
    let api: Api<Deployment> = Api::namespaced(client.clone(), "ns");
    api.create(&deployment("web", 4)).await.unwrap();
    eventually("4 pods available", WAIT, || async {
        mark_all_ready(&client, "ns", "app=web").await;
        let d = api.get("web").await.unwrap();
        (d.status.and_then(|s| s.available_replicas) == Some(4)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        pods(&client, "ns", "app=web").await.len(),
        4,
        "no double creation by two managers"
    );
    stop.send(true).unwrap();
    for r in runs {
        tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn the_manager_runs_the_workload_controllers_and_a_finished_ttl_job_goes_with_its_pods() {
    use keelson_core::k8s_openapi::api::apps::v1::StatefulSet;
    use keelson_core::k8s_openapi::api::batch::v1::Job;
    use keelson_core::k8s_openapi::api::discovery::v1::EndpointSlice;

    let (_server, client) = cluster(&["ns"]).await;
    let (stop, signal) = shutdown();
    let run = tokio::spawn(ControllerManager::new(client.clone()).run(signal()));
    let set: StatefulSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db"},
        "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": template(&[("app", "db")], "postgres:17")},
    }))
    .unwrap();
    Api::<StatefulSet>::namespaced(client.clone(), "ns")
        .create(&set)
        .await
        .unwrap();
    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "once"},
        "spec": {"ttlSecondsAfterFinished": 0, "template": {"spec": {"restartPolicy": "Never",
                 "containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "ns");
    jobs.create(&job).await.unwrap();
    let svc: keelson_core::k8s_openapi::api::core::v1::Service =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db"},
            "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432}]},
        }))
        .unwrap();
    Api::<keelson_core::k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), "ns")
        .create(&svc)
        .await
        .unwrap();

    eventually("db-0", WAIT, || async {
        let p = pods(&client, "ns", "app=db").await;
        (p.len() == 1 && p[0].metadata.name.as_deref() == Some("db-0")).then_some(())
    })
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "ns");
    eventually("a slice for db", WAIT, || async {
        let l = slices
            .list(
                &ListParams::default()
                    .labels("kubernetes.io/service-name=db")
                    .unwrap(),
            )
            .await
            .unwrap();
        (!l.items.is_empty()).then_some(())
    })
    .await;
    let pod = eventually("the job's pod", WAIT, || async {
        let p = pods(&client, "ns", "job-name=once").await;
        p.first().and_then(|p| p.metadata.name.clone())
    })
    .await;
    common::mark_phase(&client, "ns", &pod, "Succeeded").await;
    // Complete, then deleted at once (TTL 0) with its pod by the garbage collector.
    eventually("job and pod gone", WAIT, || async {
        let j = jobs.get_opt("once").await.unwrap();
        let p = pods(&client, "ns", "job-name=once").await;
        (j.is_none() && p.is_empty()).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
}
