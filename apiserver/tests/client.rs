//! The client of `keelson_core`: one suite, run over every transport — in-process, plain
//! HTTP/1.1, HTTP/2 without TLS (h2c), and HTTPS (HTTP/2 by ALPN) with a bearer token from
//! a kubeconfig and with a client certificate.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use keelson_apiserver::admission::{
    AdmissionChain, AdmissionRequest, MutatingAdmission, Operation,
};
use keelson_apiserver::auth::{Authenticator, User};
use keelson_apiserver::tls::Pki;
use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_core::client::{
    Api, Client, Config, DeleteOptions, Event, ListParams, Patch, WatchParams,
};
use keelson_core::k8s_openapi::api::apps::v1::Deployment;
use keelson_core::k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Pod, PodSpec};
use keelson_core::k8s_openapi::api::policy::v1::PodDisruptionBudget;
use keelson_core::{DynamicObject, Error, Resource};
use keelson_store::MemStore;
use serde_json::json;

/// Records who created each object, as an annotation.
struct CreatedBy;

#[async_trait::async_trait]
impl MutatingAdmission for CreatedBy {
    fn name(&self) -> &str {
        "CreatedBy"
    }

    async fn admit(
        &self,
        req: &AdmissionRequest<'_>,
        object: &mut serde_json::Value,
    ) -> keelson_core::Result<()> {
        if req.operation == Operation::Create {
            object["metadata"]["annotations"]["example.com/created-by"] = json!(req.user.name);
        }
        Ok(())
    }
}

fn server() -> Arc<ApiServer> {
    let registry = Registry::new(Arc::new(MemStore::ephemeral()))
        .with_admission(AdmissionChain::default().mutate(CreatedBy));
    ApiServer::new(registry, resources::builtin())
}

async fn created_by(client: Client) -> String {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut n = Namespace::default();
    n.metadata.name = Some("who".into());
    let created = namespaces.create(&n).await.expect("create");
    created
        .metadata
        .annotations
        .and_then(|a| a.get("example.com/created-by").cloned())
        .unwrap_or_default()
}

/// Serves `server` over plain HTTP (HTTP/1.1 and h2c) on a loopback port.
async fn serve_plain(server: Arc<ApiServer>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, keelson_apiserver::router(server)).await;
    });
    format!("http://{addr}")
}

/// Serves `server` over HTTPS with the token `secret-token` for `admin`, and client
/// certificates from `pki`.
async fn serve_tls(server: Arc<ApiServer>, dir: &Path) -> (String, Pki) {
    let pki = Pki::load_or_create(&dir.join("pki")).expect("pki");
    let tokens = dir.join("tokens.csv");
    std::fs::write(&tokens, "secret-token,admin,admin-uid,system:masters\n").expect("tokens");
    let auth = Authenticator::from_token_file(&tokens).expect("token file");
    let router = keelson_apiserver::router(server).layer(axum::middleware::from_fn_with_state(
        Arc::new(auth),
        keelson_apiserver::auth::middleware,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = pki.server_config().expect("server config");
    tokio::spawn(keelson_apiserver::tls::serve(
        listener,
        config,
        router,
        futures::future::pending(),
    ));
    (format!("https://{addr}"), pki)
}

async fn next<S, T>(stream: &mut S) -> T
where
    S: Stream<Item = keelson_core::Result<T>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream goes on")
        .expect("not an error")
}

fn configmap(name: &str, app: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.metadata.labels = Some([("app".to_owned(), app.to_owned())].into());
    cm.data = Some([("k".to_owned(), "v".to_owned())].into());
    cm
}

/// What every transport must do alike.
async fn suite(client: Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in ["default", "suite"] {
        let mut n = Namespace::default();
        n.metadata.name = Some(ns.into());
        match namespaces.create(&n).await {
            Ok(created) => assert_eq!(
                created.status.and_then(|s| s.phase).as_deref(),
                Some("Active")
            ),
            Err(e) if e.is_already_exists() => {}
            Err(e) => panic!("create namespace {ns}: {e}"),
        }
    }

    // Create, read, list.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "suite");
    let created = cms.create(&configmap("one", "web")).await.expect("create");
    let meta = &created.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("suite"));
    assert!(
        meta.uid.is_some() && meta.resource_version.is_some() && meta.creation_timestamp.is_some()
    );
    let got = cms.get("one").await.expect("get");
    assert_eq!(got, created);
    assert!(cms.get_opt("absent").await.expect("get_opt").is_none());
    let e = cms.get("absent").await.expect_err("absent");
    assert!(e.is_not_found(), "{e:?}");
    assert_eq!(e.to_string(), r#"configmaps "absent" not found"#);
    let e = cms
        .create(&configmap("one", "web"))
        .await
        .expect_err("taken");
    assert!(e.is_already_exists(), "{e:?}");
    cms.create(&configmap("two", "db"))
        .await
        .expect("create two");
    let web = cms
        .list(&ListParams::default().labels("app=web").expect("selector"))
        .await
        .expect("list");
    assert_eq!(web.items.len(), 1);
    assert_eq!(web.items[0].metadata.name.as_deref(), Some("one"));
    assert!(!web.resource_version.is_empty());
    let by_name = cms
        .list(
            &ListParams::default()
                .fields("metadata.name=two")
                .expect("selector"),
        )
        .await
        .expect("list by field");
    assert_eq!(by_name.items.len(), 1);
    let everywhere: Api<ConfigMap> = Api::all(client.clone());
    let all = everywhere
        .list(&ListParams::default())
        .await
        .expect("list all");
    assert!(all.items.len() >= 2);

    // Pagination.
    for i in 0..5 {
        cms.create(&configmap(&format!("page-{i}"), "paged"))
            .await
            .expect("create page");
    }
    let mut seen = Vec::new();
    let mut params = ListParams::default()
        .labels("app=paged")
        .expect("selector")
        .limit(2);
    loop {
        let page = cms.list(&params).await.expect("page");
        assert!(page.items.len() <= 2);
        seen.extend(page.items.into_iter().filter_map(|c| c.metadata.name));
        match page.continue_token {
            Some(t) => params = params.continue_from(t),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..5).map(|i| format!("page-{i}")).collect::<Vec<_>>()
    );

    // Replace, stale replace, patches.
    let mut changed = got.clone();
    changed.data = Some([("k".to_owned(), "changed".to_owned())].into());
    let replaced = cms.replace("one", &changed).await.expect("replace");
    assert_ne!(
        replaced.metadata.resource_version,
        got.metadata.resource_version
    );
    let e = cms.replace("one", &changed).await.expect_err("stale");
    assert!(e.is_conflict(), "{e:?}");
    assert_eq!(e.code(), 409);
    let merged = cms
        .patch("one", &Patch::Merge(json!({"data": {"extra": "1"}})))
        .await
        .expect("merge patch");
    assert_eq!(merged.data.as_ref().map(|d| d.len()), Some(2));
    let patched = cms
        .patch(
            "one",
            &Patch::Json(json!([{"op": "replace", "path": "/data/k", "value": "json"}])),
        )
        .await
        .expect("json patch");
    assert_eq!(patched.data.expect("data")["k"], "json");

    // Server-side apply: create, conflict, force, and removal of what a manager drops.
    let apply = |manager: &str, data: serde_json::Value, force: bool| Patch::Apply {
        config: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": data}),
        field_manager: manager.to_owned(),
        force,
    };
    let created = cms
        .patch(
            "applied",
            &apply("alice", json!({"a": "1", "b": "2"}), false),
        )
        .await
        .expect("apply creates");
    assert_eq!(created.data.as_ref().map(|d| d.len()), Some(2));
    let managers = created.metadata.managed_fields.clone().unwrap_or_default();
    assert_eq!(managers.len(), 1);
    assert_eq!(
        (
            managers[0].manager.as_deref(),
            managers[0].operation.as_deref()
        ),
        (Some("alice"), Some("Apply"))
    );
    let e = cms
        .patch("applied", &apply("bob", json!({"a": "9"}), false))
        .await
        .expect_err("conflict");
    assert_eq!(e.code(), 409, "{e:?}");
    assert!(
        e.to_string().contains(r#"conflict with "alice""#) && e.to_string().contains(".data.a"),
        "{e}"
    );
    let forced = cms
        .patch("applied", &apply("bob", json!({"a": "9"}), true))
        .await
        .expect("forced");
    assert_eq!(forced.data.as_ref().map(|d| d["a"].as_str()), Some("9"));
    // Alice stops applying b (and no longer owns a): b goes, a stays bob's.
    let after = cms
        .patch("applied", &apply("alice", json!({}), false))
        .await
        .expect("apply less");
    let data = after.data.unwrap_or_default();
    assert_eq!(data.get("a").map(String::as_str), Some("9"));
    assert!(!data.contains_key("b"), "{data:?}");

    // Validation errors keep their causes.
    let e = cms
        .create(&configmap("Not_A_Name", "x"))
        .await
        .expect_err("invalid");
    match &e {
        Error::Invalid { causes, .. } => assert_eq!(causes[0].field, "metadata.name"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(e.code(), 422);

    // Watch: after the list's version, with a label selector.
    let start = cms
        .list(
            &ListParams::default()
                .labels("app=watched")
                .expect("selector"),
        )
        .await
        .expect("list");
    let mut events = cms
        .watch(
            &WatchParams::default()
                .labels("app=watched")
                .expect("selector")
                .after(start.resource_version.clone()),
        )
        .await
        .expect("watch");
    cms.create(&configmap("w", "watched"))
        .await
        .expect("create w");
    cms.create(&configmap("unwatched", "other"))
        .await
        .expect("create other");
    match next(&mut events).await {
        Event::Added(c) => assert_eq!(c.metadata.name.as_deref(), Some("w")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    cms.patch("w", &Patch::Merge(json!({"data": {"n": "2"}})))
        .await
        .expect("patch w");
    match next(&mut events).await {
        Event::Modified(c) => assert_eq!(c.data.expect("data")["n"], "2"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    let gone = cms
        .delete("w", &DeleteOptions::default())
        .await
        .expect("delete");
    if let Some(gone) = gone {
        assert_eq!(gone.metadata.name.as_deref(), Some("w"));
    }
    match next(&mut events).await {
        Event::Deleted(c) => assert_eq!(c.metadata.name.as_deref(), Some("w")),
        other => panic!("expected DELETED, got {other:?}"),
    }
    assert!(cms.get("w").await.expect_err("deleted").is_not_found());

    // A streaming list: the current objects, then a bookmark that ends them.
    let mut stream = cms
        .watch(&WatchParams {
            send_initial_events: true,
            ..WatchParams::default()
                .labels("app=paged")
                .expect("selector")
        })
        .await
        .expect("streaming list");
    let mut initial = 0;
    loop {
        match next(&mut stream).await {
            Event::Added(_) => initial += 1,
            Event::Bookmark {
                initial_events_end: true,
                resource_version,
            } => {
                assert!(!resource_version.is_empty());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, 5);

    // A watch with a timeout ends by itself.
    let mut short = cms
        .watch(&WatchParams {
            timeout: Some(Duration::from_secs(1)),
            ..WatchParams::default().after(start.resource_version)
        })
        .await
        .expect("watch with timeout");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while short.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the watch should end after its timeout");

    // Deleting with a failing precondition.
    let e = cms
        .delete(
            "one",
            &DeleteOptions {
                uid: Some("not-the-uid".into()),
                ..DeleteOptions::default()
            },
        )
        .await
        .expect_err("precondition");
    assert!(e.is_conflict(), "{e:?}");

    // The dynamic form, and the status subresource.
    let pods = Api::dynamic(client.clone(), &Pod::resource_type(), Some("suite"));
    let mut pod = DynamicObject::new(&Pod::resource_type(), "p");
    pod.data = json!({"spec": {"containers": [{"name": "c", "image": "busybox"}]}, "status": {"phase": "Running"}});
    let created = pods.create(&pod).await.expect("create pod");
    assert_eq!(created.data["spec"]["restartPolicy"], "Always", "defaulted");
    assert_eq!(
        created.data["status"]["phase"], "Pending",
        "status set by the server"
    );
    let mut running = created.clone();
    running.data["status"]["phase"] = json!("Running");
    running.data["spec"]["activeDeadlineSeconds"] = json!(5);
    let updated = pods.replace_status("p", &running).await.expect("status");
    assert_eq!(updated.data["status"]["phase"], "Running");
    assert!(
        updated.data["spec"].get("activeDeadlineSeconds").is_none(),
        "only status changes"
    );
    let patched = pods
        .patch_status(
            "p",
            &Patch::Merge(json!({"status": {"podIP": "127.1.0.5"}})),
        )
        .await
        .expect("patch status");
    assert_eq!(patched.data["status"]["podIP"], "127.1.0.5");
    let typed: Api<Pod> = Api::namespaced(client.clone(), "suite");
    let p = typed.get("p").await.expect("typed get");
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    // A pod not bound to a node goes at once.
    typed
        .delete("p", &DeleteOptions::default())
        .await
        .expect("delete pod");
    assert!(typed.get_opt("p").await.expect("get").is_none());

    // Immutable fields: a pod's spec (but images), a workload's selector.
    let mut pod = Pod::default();
    pod.metadata.name = Some("fixed".into());
    pod.spec = Some(PodSpec {
        containers: vec![Container {
            name: "c".into(),
            image: Some("busybox:1".into()),
            ..Container::default()
        }],
        ..PodSpec::default()
    });
    let created = typed.create(&pod).await.expect("create fixed");
    let mut new_image = created.clone();
    new_image.spec.as_mut().expect("spec").containers[0].image = Some("busybox:2".into());
    let updated = typed
        .replace("fixed", &new_image)
        .await
        .expect("an image may change");
    let mut new_command = updated.clone();
    new_command.spec.as_mut().expect("spec").containers[0].command = Some(vec!["sh".into()]);
    let e = typed
        .replace("fixed", &new_command)
        .await
        .expect_err("immutable");
    assert_eq!(e.code(), 422, "{e:?}");
    assert!(
        e.to_string()
            .contains("pod updates may not change fields other than"),
        "{e}"
    );

    // Scale.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "suite");
    let web: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}))
    .expect("deployment");
    deployments.create(&web).await.expect("create deployment");
    let scale = deployments.get_scale("web").await.expect("scale");
    assert_eq!(scale.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert_eq!(
        scale.status.as_ref().and_then(|s| s.selector.as_deref()),
        Some("app=web")
    );
    let scale = deployments
        .patch_scale("web", &Patch::Merge(json!({"spec": {"replicas": 5}})))
        .await
        .expect("patch scale");
    assert_eq!(scale.spec.as_ref().and_then(|s| s.replicas), Some(5));
    let d = deployments.get("web").await.expect("deployment");
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(5));
    assert_eq!(d.metadata.generation, Some(2));
    let mut negative = scale.clone();
    negative.spec.as_mut().expect("spec").replicas = Some(-1);
    let e = deployments
        .replace_scale("web", &negative)
        .await
        .expect_err("negative");
    assert_eq!(e.code(), 422, "{e:?}");
    let mut moved = d.clone();
    moved.spec.as_mut().expect("spec").selector.match_labels =
        Some([("app".to_owned(), "other".to_owned())].into());
    let e = deployments
        .replace("web", &moved)
        .await
        .expect_err("selector is immutable");
    assert!(e.to_string().contains("spec.selector"), "{e}");
    let e = typed
        .get_scale("fixed")
        .await
        .expect_err("pods do not scale");
    assert!(e.is_not_found(), "{e:?}");

    // Binding: a pod placed on a node, once.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "fixed"},
                         "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}});
    let status: serde_json::Value = typed
        .create_subresource("binding", "fixed", &binding)
        .await
        .expect("bind");
    assert_eq!(status["status"], "Success");
    let bound = typed.get("fixed").await.expect("pod");
    assert_eq!(
        bound.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("n1")
    );
    let scheduled = bound.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(scheduled
        .iter()
        .any(|c| c.type_ == "PodScheduled" && c.status == "True"));
    let e = typed
        .create_subresource::<_, serde_json::Value>("binding", "fixed", &binding)
        .await
        .expect_err("bound already");
    assert!(
        e.is_conflict() && e.to_string().contains("already assigned to node"),
        "{e}"
    );

    // Eviction: refused while the disruption budget allows none, then allowed once.
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "suite");
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "guard"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}}))
    .expect("pdb");
    let pdb = budgets.create(&pdb).await.expect("create pdb");
    let mut guarded = pod.clone();
    guarded.metadata.name = Some("guarded".into());
    guarded.metadata.labels = Some([("app".to_owned(), "guarded".to_owned())].into());
    typed.create(&guarded).await.expect("create guarded");
    let set_allowed = |allowed: i32| {
        let budgets = budgets.clone();
        async move {
            let mut current = budgets.get("guard").await.expect("pdb");
            current.status = Some(
                serde_json::from_value(json!({
                "observedGeneration": 1, "disruptionsAllowed": allowed,
                "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}))
                .expect("status"),
            );
            budgets
                .replace_status("guard", &current)
                .await
                .expect("pdb status");
        }
    };
    set_allowed(0).await;
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
                          "metadata": {"name": "guarded", "namespace": "suite"}, "deleteOptions": {}});
    let e = typed
        .create_subresource::<_, serde_json::Value>("eviction", "guarded", &eviction)
        .await
        .expect_err("budget allows none");
    assert_eq!(e.code(), 429, "{e:?}");
    assert!(e.to_string().contains("disruption budget"), "{e}");
    set_allowed(1).await;
    let _: serde_json::Value = typed
        .create_subresource("eviction", "guarded", &eviction)
        .await
        .expect("evicted");
    assert!(typed.get_opt("guarded").await.expect("get").is_none());
    let after = budgets
        .get("guard")
        .await
        .expect("pdb")
        .status
        .expect("status");
    assert_eq!(after.disruptions_allowed, 0);
    assert!(after
        .disrupted_pods
        .unwrap_or_default()
        .contains_key("guarded"));
    drop(pdb);

    // events.k8s.io/v1 Events are core/v1 Events underneath, as in Kubernetes.
    let new_events = Api::dynamic(
        client.clone(),
        &keelson_core::k8s_openapi::api::events::v1::Event::resource_type(),
        Some("suite"),
    );
    let core_events = Api::dynamic(
        client.clone(),
        &keelson_core::k8s_openapi::api::core::v1::Event::resource_type(),
        Some("suite"),
    );
    let mut ev = DynamicObject::new(
        &keelson_core::k8s_openapi::api::events::v1::Event::resource_type(),
        "e1",
    );
    ev.data = json!({"eventTime": "2026-11-25T10:00:00.000000Z", "reason": "Scheduled",
        "note": "assigned suite/p to n1", "type": "Normal", "action": "Binding",
        "reportingController": "default-scheduler", "reportingInstance": "s1",
        "regarding": {"kind": "Pod", "name": "p", "namespace": "suite"}});
    let created = new_events
        .create(&ev)
        .await
        .expect("create an events.k8s.io event");
    assert_eq!(created.data["note"], "assigned suite/p to n1");
    let as_core = core_events.get("e1").await.expect("read as core/v1");
    assert_eq!(as_core.api_version, "v1");
    assert_eq!(as_core.data["message"], "assigned suite/p to n1");
    assert_eq!(as_core.data["involvedObject"]["name"], "p");
    assert_eq!(as_core.data["reportingComponent"], "default-scheduler");
    let listed = new_events.list(&ListParams::default()).await.expect("list");
    assert!(listed
        .items
        .iter()
        .any(|e| e.data["regarding"]["name"] == "p"));
    new_events
        .delete("e1", &DeleteOptions::default())
        .await
        .expect("delete");
    assert!(core_events.get_opt("e1").await.expect("get").is_none());

    // A resource the server does not serve.
    let rt = keelson_core::ResourceType::new(
        "example.com",
        "v1",
        "Widget",
        "widgets",
        keelson_core::Scope::Namespaced,
    );
    let widgets = Api::dynamic(client.clone(), &rt, Some("suite"));
    let e = widgets
        .list(&ListParams::default())
        .await
        .expect_err("not served");
    assert!(e.is_not_found(), "{e:?}");

    // Writing into a namespace that does not exist.
    let nowhere: Api<ConfigMap> = Api::namespaced(client, "nowhere");
    let e = nowhere
        .create(&configmap("x", "y"))
        .await
        .expect_err("no namespace");
    assert!(e.is_not_found(), "{e:?}");
}

#[tokio::test]
async fn in_process() {
    suite(server().client()).await;
}

#[tokio::test]
async fn admission_sees_the_in_process_client_s_user() {
    let server = server();
    assert_eq!(created_by(server.client()).await, "system:apiserver");
    let scheduler = User {
        name: "system:kube-scheduler".into(),
        uid: String::new(),
        groups: vec!["system:authenticated".into()],
    };
    let mut other = Namespace::default();
    other.metadata.name = Some("by-scheduler".into());
    let created = Api::<Namespace>::all(server.client_as(scheduler))
        .create(&other)
        .await
        .expect("create");
    assert_eq!(
        created.metadata.annotations.expect("annotations")["example.com/created-by"],
        "system:kube-scheduler"
    );
}

#[tokio::test]
async fn over_http1() {
    let url = serve_plain(server()).await;
    suite(Client::from_config(Config::new(url)).expect("client")).await;
}

#[tokio::test]
async fn over_https_with_a_token_from_a_kubeconfig() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, pki) = serve_tls(server(), dir.path()).await;
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(&pki.ca_cert);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: secret-token\ncontexts:\n- name: ctx\n  context:\n    cluster: c\n    user: u\n    namespace: suite\ncurrent-context: ctx\n"
    );
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig).expect("write kubeconfig");
    let config = Config::from_kubeconfig(&path, None).expect("kubeconfig");
    let client = Client::from_config(config).expect("client");
    assert_eq!(client.default_namespace(), "suite");
    suite(client.clone()).await;
    assert_eq!(
        created_by(client).await,
        "admin",
        "admission sees the token's user"
    );

    // Without the token: 401 as a Status.
    let mut anonymous = Config::new(url.clone());
    anonymous.certificate_authority = Some(pki.ca_cert.clone().into_bytes());
    let cms: Api<ConfigMap> =
        Api::namespaced(Client::from_config(anonymous).expect("client"), "suite");
    let e = cms
        .list(&ListParams::default())
        .await
        .expect_err("anonymous");
    assert_eq!(e.code(), 401, "{e:?}");

    // Without the CA: the server's certificate is not trusted.
    let untrusted: Api<ConfigMap> = Api::namespaced(
        Client::from_config(Config::new(url)).expect("client"),
        "suite",
    );
    let e = untrusted
        .list(&ListParams::default())
        .await
        .expect_err("untrusted");
    assert_eq!(e.code(), 503, "{e:?}");
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[tokio::test]
async fn over_https_with_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, pki) = serve_tls(server(), dir.path()).await;
    let (cert, key) = pki
        .issue_client("alice", &["system:masters"])
        .expect("client cert");
    let mut config = Config::new(url);
    config.certificate_authority = Some(pki.ca_cert.clone().into_bytes());
    config.client_certificate = Some((cert.into_bytes(), key.into_bytes()));
    let client = Client::from_config(config).expect("client");
    suite(client.clone()).await;
    assert_eq!(
        created_by(client).await,
        "alice",
        "admission sees the certificate's user"
    );
}

#[tokio::test]
async fn over_h2c() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client as HyperClient;
    let url = serve_plain(server()).await;
    // HTTP/2 with prior knowledge, as `curl --http2-prior-knowledge` does.
    let h2 = HyperClient::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let resp = h2
        .get(format!("{url}/api/v1/namespaces").parse().expect("uri"))
        .await
        .expect("h2c request");
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let list: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(list["kind"], "NamespaceList");
}

#[test]
fn kubeconfig_errors_say_what_is_wrong() {
    let base = Path::new("/nonexistent");
    let e = Config::from_kubeconfig_text("clusters: [", None, base).expect_err("bad yaml");
    assert!(e.to_string().contains("does not parse"), "{e}");
    let e =
        Config::from_kubeconfig_text("current-context: x\n", None, base).expect_err("no context");
    assert!(e.to_string().contains(r#"context "x" not found"#), "{e}");
    let text = "clusters:\n- name: c\n  cluster: {server: 'https://x'}\nusers:\n- name: u\n  user:\n    exec: {command: aws}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n";
    let e = Config::from_kubeconfig_text(text, None, base).expect_err("exec plugin");
    assert!(e.to_string().contains("exec"), "{e}");
    let text = "clusters:\n- name: c\n  cluster: {server: 'https://x', certificate-authority: ca.crt}\ncontexts:\n- name: x\n  context: {cluster: c}\ncurrent-context: x\n";
    let e = Config::from_kubeconfig_text(text, None, base).expect_err("missing CA file");
    assert!(e.to_string().contains("/nonexistent/ca.crt"), "{e}");
    let e = Client::from_config(Config::new("127.0.0.1:6443")).expect_err("not a URL");
    assert!(e.to_string().contains("not an http"), "{e}");
}

#[tokio::test]
async fn a_dry_run_value_other_than_all_is_refused_with_422() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client as HyperClient;
    let url = serve_plain(server()).await;
    let http = HyperClient::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let req = hyper::Request::post(format!("{url}/api/v1/namespaces?dryRun=Some"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from_static(
            br#"{"metadata":{"name":"x"}}"#,
        )))
        .expect("request");
    let resp = http.request(req).await.expect("response");
    assert_eq!(resp.status(), 422);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        status["message"],
        r#"CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: "Some": supported values: "All""#
    );
}
