//! CustomResourceDefinitions: a CRD serves its kind within a second, its schema validates
//! and defaults objects, its versions share storage, and deleting it removes its objects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_core::client::{Api, Client, DeleteOptions, ListParams, Patch};
use keelson_core::k8s_openapi::api::core::v1::Namespace;
use keelson_core::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keelson_core::{DynamicObject, ResourceType, Scope};
use keelson_store::MemStore;
use serde_json::json;

fn widget_crd() -> CustomResourceDefinition {
    let schema = json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"type": "integer", "minimum": 1, "maximum": 10},
                    "color": {"type": "string", "enum": ["red", "green"], "default": "red"},
                    "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"},
                    "replicas": {"type": "integer", "default": 1},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }
            },
            "status": {"type": "object", "properties": {
                "replicas": {"type": "integer"}, "selector": {"type": "string"}}}
        }
    });
    let version = |name: &str, storage: bool| {
        json!({
            "name": name, "served": true, "storage": storage,
            "schema": {"openAPIV3Schema": schema},
            "subresources": {"status": {}, "scale": {
                "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector"}},
            "additionalPrinterColumns": [
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
            ]
        })
    };
    serde_json::from_value(json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "scope": "Namespaced",
            "versions": [version("v1", true), version("v1beta1", false)]
        }
    }))
    .expect("a CRD")
}

fn widgets_rt(version: &'static str) -> ResourceType {
    ResourceType::new(
        "example.com",
        version,
        "Widget",
        "widgets",
        Scope::Namespaced,
    )
}

async fn setup() -> (Arc<ApiServer>, Client) {
    let server = ApiServer::new(
        Registry::new(Arc::new(MemStore::ephemeral())),
        resources::builtin(),
    );
    let client = server.client();
    let mut ns = Namespace::default();
    ns.metadata.name = Some("default".into());
    Api::<Namespace>::all(client.clone())
        .create(&ns)
        .await
        .expect("namespace");
    (server, client)
}

/// Waits until listing widgets works; returns how long it took.
async fn served_after(client: &Client, started: Instant) -> Duration {
    let widgets = Api::dynamic(client.clone(), &widgets_rt("v1"), Some("default"));
    loop {
        if widgets.list(&ListParams::default()).await.is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not served in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn widget(name: &str, spec: serde_json::Value) -> DynamicObject {
    DynamicObject::new(&widgets_rt("v1"), name).with_data(json!({ "spec": spec }))
}

#[tokio::test]
async fn a_crd_serves_its_kind_validates_defaults_and_cleans_up() {
    let (server, client) = setup().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let started = Instant::now();
    crds.create(&widget_crd()).await.expect("create the CRD");
    // The figure (within a second; about 50 ms in release builds) is measured by
    // `cargo bench --bench patch_crd`; here, on a debug build sharing the machine with
    // other tests, it only has to come.
    let took = served_after(&client, started).await;
    assert!(took < Duration::from_secs(10), "served after {took:?}");
    // Discovery knows it, and the CRD says so.
    assert!(server
        .served()
        .find("example.com", "v1beta1", "widgets")
        .is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let crd = crds.get("widgets.example.com").await.expect("crd");
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            break;
        }
        assert!(Instant::now() < deadline, "never established");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let widgets = Api::dynamic(client.clone(), &widgets_rt("v1"), Some("default"));
    let created = widgets
        .create(&widget(
            "w1",
            json!({"size": 3, "free": {"any": ["thing"]}}),
        ))
        .await
        .expect("create a widget");
    assert_eq!(created.data["spec"]["color"], "red", "defaulted");
    assert_eq!(created.data["spec"]["replicas"], 1, "defaulted");
    assert_eq!(created.data["spec"]["free"]["any"][0], "thing", "preserved");

    for (spec, message) in [
        (
            json!({"size": 20}),
            "spec.size: Invalid value: 20: spec.size in body should be less than or equal to 10",
        ),
        (
            json!({"size": 0}),
            "spec.size in body should be greater than or equal to 1",
        ),
        (
            json!({"size": 2, "color": "purple"}),
            r#"spec.color: Unsupported value: "purple": supported values: "red", "green""#,
        ),
        (
            json!({"size": "big"}),
            r#"spec.size: Invalid value: "string": spec.size in body must be of type integer: "string""#,
        ),
        (json!({"size": 2, "name": "toolong"}), "spec.name: Too long"),
        (
            json!({"size": 2, "name": "AB"}),
            "spec.name in body should match '^[a-z]+$'",
        ),
        (json!({"color": "red"}), "spec.size: Required value"),
    ] {
        let e = widgets
            .create(&widget("bad", spec.clone()))
            .await
            .expect_err("invalid");
        assert_eq!(e.code(), 422, "{spec}: {e}");
        assert!(e.to_string().contains(message), "{spec}: {e}");
    }

    // Another version reads the same object as its own.
    let beta = Api::dynamic(client.clone(), &widgets_rt("v1beta1"), Some("default"));
    let w1 = beta.get("w1").await.expect("read as v1beta1");
    assert_eq!(w1.api_version, "example.com/v1beta1");
    assert_eq!(w1.data["spec"]["size"], 3);

    // Status and scale subresources.
    let scale = widgets
        .patch_scale("w1", &Patch::Merge(json!({"spec": {"replicas": 4}})))
        .await
        .expect("scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(4));
    let mut with_status = widgets.get("w1").await.expect("get");
    with_status.data["status"] = json!({"replicas": 4, "selector": "app=w1"});
    widgets
        .replace_status("w1", &with_status)
        .await
        .expect("status");
    let scale = widgets.get_scale("w1").await.expect("scale");
    assert_eq!(
        scale.status.and_then(|s| s.selector).as_deref(),
        Some("app=w1")
    );

    // Deleting the CRD deletes its objects, then stops serving the kind.
    crds.delete("widgets.example.com", &DeleteOptions::default())
        .await
        .expect("delete the CRD");
    let deadline = Instant::now() + Duration::from_secs(5);
    while crds
        .get_opt("widgets.example.com")
        .await
        .expect("get")
        .is_some()
    {
        assert!(Instant::now() < deadline, "the CRD never went");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = widgets
        .list(&ListParams::default())
        .await
        .expect_err("no longer served");
    assert!(e.is_not_found(), "{e:?}");
    // Created again, the kind starts empty.
    crds.create(&widget_crd()).await.expect("create again");
    served_after(&client, Instant::now()).await;
    let list = widgets.list(&ListParams::default()).await.expect("list");
    assert!(list.items.is_empty(), "the old objects are gone");
}

#[tokio::test]
async fn a_crd_that_is_not_structural_is_refused() {
    let (_server, client) = setup().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let mut crd = widget_crd();
    let mut v = serde_json::to_value(&crd).expect("json");
    v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["size"] = json!({"minimum": 1});
    v["spec"]["versions"][1]["storage"] = json!(true);
    v["metadata"]["name"] = json!("gadgets.example.com");
    v["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] = json!("replicas");
    crd = serde_json::from_value(v).expect("crd");
    let e = crds.create(&crd).await.expect_err("not structural");
    assert_eq!(e.code(), 422, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("properties[size].type: Required value"),
        "{text}"
    );
    assert!(
        text.contains("must have exactly one version marked as storage version"),
        "{text}"
    );
    assert!(text.contains("metadata.name"), "{text}");
    assert!(
        text.contains("subresources.scale.specReplicasPath"),
        "{text}"
    );
}

mod rust_kind {
    use super::*;
    use keelson_apiserver::ServedResource;
    use keelson_core::schemars::{self, JsonSchema};
    use keelson_core::{impl_resource, ObjectMeta};
    use serde::{Deserialize, Serialize};

    /// A custom kind defined in Rust.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct Gizmo {
        pub metadata: ObjectMeta,
        pub spec: GizmoSpec,
    }

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct GizmoSpec {
        pub size: u32,
        #[serde(default)]
        pub label: Option<String>,
    }

    impl_resource!(
        Gizmo,
        group = "example.com",
        version = "v1",
        kind = "Gizmo",
        plural = "gizmos",
        scope = Namespaced,
        short_names = ["gz"]
    );

    #[tokio::test]
    async fn a_rust_kind_installed_at_run_time_is_served_and_validated() {
        let (server, client) = setup().await;
        let gizmos: Api<Gizmo> = Api::namespaced(client.clone(), "default");
        assert!(gizmos
            .list(&ListParams::default())
            .await
            .expect_err("not yet")
            .is_not_found());
        server.install(vec![ServedResource::of::<Gizmo>()]);
        assert!(server
            .served()
            .find("example.com", "v1", "gizmos")
            .is_some());
        let mut g = Gizmo::default();
        g.metadata.name = Some("g1".into());
        g.spec.size = 7;
        let created = gizmos.create(&g).await.expect("create");
        assert_eq!(created.spec.size, 7);
        assert_eq!(gizmos.get("g1").await.expect("get").spec, g.spec);
        // The schema holds for objects that do not come from the Rust type.
        let raw = Api::dynamic(
            client,
            &<Gizmo as keelson_core::Resource>::resource_type(),
            Some("default"),
        );
        let bad = DynamicObject::new(&<Gizmo as keelson_core::Resource>::resource_type(), "g2")
            .with_data(json!({"spec": {"size": -1}}));
        let e = raw.create(&bad).await.expect_err("negative size");
        assert_eq!(e.code(), 422, "{e}");
        assert!(e.to_string().contains("spec.size"), "{e}");
    }
}
