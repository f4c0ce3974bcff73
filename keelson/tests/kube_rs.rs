//! End to end: `keelson up` driven by kube-rs (`kube` 5 with `k8s-openapi` 0.29), the Rust
//! client people already use: lists and pages, watchers (plain and streaming lists),
//! create, the patch types, a stale replace, a CRD from `#[derive(CustomResource)]`, and a
//! `kube::runtime::Controller` reconciling objects.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A custom kind defined in Rust, as kube-rs users define them.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Gizmo", namespaced)]
#[kube(status = "GizmoStatus")]
struct GizmoSpec {
    size: i32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
struct GizmoStatus {
    doubled: i32,
}

async fn client(cluster: &common::Cluster) -> Client {
    let kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig).expect("read the kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a config");
    Client::try_from(config).expect("a client")
}

fn configmap(name: &str, app: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "data": {"k": "v"}
    }))
    .expect("a configmap")
}

async fn timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("done within 20 s")
}

#[tokio::test]
async fn kube_rs_lists_watches_writes_and_runs_a_controller() {
    let cluster = common::up(true);
    let client = client(&cluster).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // Create and list, in pages.
    for i in 0..5 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("c{i}"), "paged"),
        )
        .await
        .expect("create");
    }
    let all = cms
        .list(&ListParams::default().labels("app=paged"))
        .await
        .expect("list");
    assert_eq!(all.items.len(), 5);
    let mut names = Vec::new();
    let mut params = ListParams::default().labels("app=paged").limit(2);
    loop {
        let page = cms.list(&params).await.expect("page");
        assert!(page.items.len() <= 2);
        names.extend(page.items.iter().map(|c| c.name_any()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(names, ["c0", "c1", "c2", "c3", "c4"]);

    // Watchers: a plain list then watch, and a streaming list.
    for config in [
        watcher::Config::default().labels("app=paged"),
        watcher::Config::default()
            .labels("app=paged")
            .streaming_lists(),
    ] {
        let seen: Vec<ConfigMap> = timeout(
            watcher(cms.clone(), config)
                .applied_objects()
                .take(5)
                .try_collect(),
        )
        .await
        .expect("watch");
        assert_eq!(seen.len(), 5);
    }
    let mut changes = watcher(cms.clone(), watcher::Config::default().labels("app=later"))
        .applied_objects()
        .boxed();
    cms.create(&PostParams::default(), &configmap("later", "later"))
        .await
        .expect("create later");
    let later = timeout(changes.try_next())
        .await
        .expect("watch")
        .expect("an object");
    assert_eq!(later.name_any(), "later");

    // The patch types.
    let merged = cms
        .patch(
            "c0",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"merged": "1"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(merged.data.as_ref().map(|d| d.len()), Some(2));
    let strategic = cms
        .patch(
            "c0",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"tier": "x"}}})),
        )
        .await
        .expect("strategic merge patch");
    assert_eq!(strategic.labels()["tier"], "x");
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/data/k", "value": "json"}
    ]))
    .expect("a JSON patch");
    let patched = cms
        .patch("c0", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .expect("json patch");
    assert_eq!(patched.data.expect("data")["k"], "json");

    // Server-side apply, with a conflict and a forced apply.
    let applied = cms
        .patch(
            "applied",
            &PatchParams::apply("kube-test"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "applied"}, "data": {"x": "1"}})),
        )
        .await
        .expect("apply");
    assert_eq!(applied.data.expect("data")["x"], "1");
    let conflict = cms
        .patch(
            "applied",
            &PatchParams::apply("other"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "applied"}, "data": {"x": "2"}})),
        )
        .await;
    match conflict {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    cms.patch(
        "applied",
        &PatchParams::apply("other").force(),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": "applied"}, "data": {"x": "2"}})),
    )
    .await
    .expect("forced apply");

    // A stale replace is a 409.
    let mut stale = all.items[1].clone();
    cms.patch(
        "c1",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "new"}})),
    )
    .await
    .expect("patch c1");
    stale.data = Some([("k".to_owned(), "old".to_owned())].into());
    match cms.replace("c1", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("expected a 409, got {other:?}"),
    }
    cms.delete("c4", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(cms.get_opt("c4").await.expect("get").is_none());

    // A CRD from #[derive(CustomResource)], and a controller reconciling its objects.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Gizmo::crd())
        .await
        .expect("create the CRD");
    let gizmos: Api<Gizmo> = Api::namespaced(client.clone(), "default");
    let created = timeout(async {
        loop {
            let g = Gizmo::new("g1", GizmoSpec { size: 21 });
            match gizmos.create(&PostParams::default(), &g).await {
                Ok(g) => return g,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert_eq!(created.spec.size, 21);

    async fn reconcile(g: Arc<Gizmo>, api: Arc<Api<Gizmo>>) -> Result<Action, kube::Error> {
        let status = json!({"status": {"doubled": g.spec.size * 2}});
        api.patch_status(
            &g.name_any(),
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await?;
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<Gizmo>, _: &kube::Error, _: Arc<Api<Gizmo>>) -> Action {
        Action::requeue(Duration::from_millis(200))
    }
    let controller = Controller::new(gizmos.clone(), watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(gizmos.clone()))
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);
    timeout(async {
        loop {
            let g = gizmos.get("g1").await.expect("get");
            if g.status.as_ref().map(|s| s.doubled) == Some(42) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    gizmos
        .create(
            &PostParams::default(),
            &Gizmo::new("g2", GizmoSpec { size: 5 }),
        )
        .await
        .expect("create g2");
    timeout(async {
        loop {
            let g = gizmos.get("g2").await.expect("get");
            if g.status.as_ref().map(|s| s.doubled) == Some(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    handle.abort();
}
