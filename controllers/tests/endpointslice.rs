//! The EndpointSlice and Endpoints controllers against an in-process API server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually, mark_ready};
use keelson_controllers::builtin::endpoints::EndpointsController;
use keelson_controllers::builtin::endpointslice::EndpointSliceController;
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, Client, DeleteOptions, ListParams, Patch};
use keelson_core::k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use keelson_core::k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn start(client: &Client) -> Vec<tokio::task::JoinHandle<()>> {
    let factory = InformerFactory::new();
    let (c1, r1) = EndpointSliceController::controller(client, &factory);
    let (c2, r2) = EndpointsController::controller(client, &factory);
    vec![tokio::spawn(c1.run(r1)), tokio::spawn(c2.run(r2))]
}

async fn service(client: &Client, name: &str) {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"team": "a"}},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "web"}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "ns")
        .create(&svc)
        .await
        .unwrap();
}

async fn pod(client: &Client, name: &str, app: &str, ip: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x", "ports": [{"name": "web", "containerPort": 8080}]}]},
    }))
    .unwrap();
    pods.create(&p).await.unwrap();
    pods.patch_status(
        name,
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip}})),
    )
    .await
    .unwrap();
}

async fn slices(client: &Client, svc: &str) -> Vec<EndpointSlice> {
    Api::<EndpointSlice>::namespaced(client.clone(), "ns")
        .list(
            &ListParams::default()
                .labels(&format!("kubernetes.io/service-name={svc}"))
                .unwrap(),
        )
        .await
        .unwrap()
        .items
}

fn endpoint_count(s: &[EndpointSlice]) -> usize {
    s.iter().map(|s| s.endpoints.len()).sum()
}

#[tokio::test(start_paused = true)]
async fn a_service_gets_slices_of_its_pods_with_conditions_and_resolved_ports() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    service(&client, "web").await;
    // Before any pod: one empty placeholder slice.
    let s = eventually("placeholder", WAIT, || async {
        let s = slices(&client, "web").await;
        (s.len() == 1).then_some(s)
    })
    .await;
    assert!(s[0].endpoints.is_empty());
    let labels = s[0].metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(labels["team"], "a");
    assert_eq!(
        s[0].metadata.owner_references.as_ref().unwrap()[0].kind,
        "Service"
    );

    pod(&client, "web-a", "web", "10.0.0.1").await;
    pod(&client, "web-b", "web", "10.0.0.2").await;
    pod(&client, "other", "db", "10.0.0.3").await;
    mark_ready(&client, "ns", "web-a").await;
    let s = eventually("2 endpoints", WAIT, || async {
        let s = slices(&client, "web").await;
        (s.len() == 1 && endpoint_count(&s) == 2).then_some(s)
    })
    .await;
    let slice = &s[0];
    assert_eq!(slice.address_type, "IPv4");
    let port = &slice.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port),
        (Some("http"), Some(8080))
    );
    let a = slice
        .endpoints
        .iter()
        .find(|e| e.addresses == ["10.0.0.1"])
        .unwrap();
    let c = a.conditions.as_ref().unwrap();
    assert_eq!(
        (c.ready, c.serving, c.terminating),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(a.node_name.as_deref(), Some("node-1"));
    assert_eq!(
        a.target_ref.as_ref().unwrap().name.as_deref(),
        Some("web-a")
    );
    let b = slice
        .endpoints
        .iter()
        .find(|e| e.addresses == ["10.0.0.2"])
        .unwrap();
    assert_eq!(b.conditions.as_ref().unwrap().ready, Some(false));

    // The legacy Endpoints object: ready and not-ready addresses.
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "ns");
    let ep = eventually("endpoints", WAIT, || async {
        eps.get_opt("web").await.unwrap()
    })
    .await;
    let subset = &ep.subsets.as_ref().unwrap()[0];
    assert_eq!(subset.addresses.as_ref().unwrap()[0].ip, "10.0.0.1");
    assert_eq!(
        subset.not_ready_addresses.as_ref().unwrap()[0].ip,
        "10.0.0.2"
    );
    assert_eq!(subset.ports.as_ref().unwrap()[0].port, 8080);

    // A deleted pod leaves both.
    Api::<Pod>::namespaced(client.clone(), "ns")
        .delete(
            "web-a",
            &DeleteOptions {
                grace_period_seconds: Some(0),
                ..DeleteOptions::default()
            },
        )
        .await
        .unwrap();
    eventually("1 endpoint", WAIT, || async {
        let s = slices(&client, "web").await;
        let e = eps.get("web").await.unwrap();
        let ready = e.subsets.as_ref().and_then(|s| s[0].addresses.clone());
        (endpoint_count(&s) == 1 && ready.is_none()).then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn more_than_a_hundred_pods_are_split_across_slices() {
    let (_server, client) = cluster(&["ns"]).await;
    let _ctl = start(&client);
    service(&client, "big").await;
    for i in 0..150 {
        pod(
            &client,
            &format!("big-{i:03}"),
            "big",
            &format!("10.1.{}.{}", i / 200, i % 200),
        )
        .await;
    }
    let s = eventually("150 endpoints in 2 slices", WAIT, || async {
        let s = slices(&client, "big").await;
        (endpoint_count(&s) == 150 && s.len() == 2).then_some(s)
    })
    .await;
    assert!(s.iter().all(|s| s.endpoints.len() <= 100));
    // Scaling down packs them into one again.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    for i in 0..100 {
        pods.delete(
            &format!("big-{i:03}"),
            &DeleteOptions {
                grace_period_seconds: Some(0),
                ..DeleteOptions::default()
            },
        )
        .await
        .unwrap();
    }
    eventually("50 endpoints in 1 slice", WAIT, || async {
        let s = slices(&client, "big").await;
        (endpoint_count(&s) == 50 && s.len() == 1).then_some(())
    })
    .await;
}
