//! A bounded fuzz run over the REST front: random request bodies (JSON of random shape,
//! mutated valid objects, broken text), random patches of every type with random
//! directives, random query parameters, on built-in and custom kinds. Whatever the input,
//! the server must answer — never panic, never a 500.
//!
//! `KEELSON_FUZZ_SEED` picks the seed (printed on failure), `KEELSON_FUZZ_CASES` the number
//! of requests (default 3000).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_store::MemStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tower::ServiceExt;

const WORDS: &[&str] = &[
    "metadata",
    "name",
    "namespace",
    "labels",
    "spec",
    "status",
    "containers",
    "image",
    "replicas",
    "selector",
    "matchLabels",
    "template",
    "data",
    "ports",
    "containerPort",
    "$patch",
    "$retainKeys",
    "$setElementOrder/containers",
    "$deleteFromPrimitiveList/finalizers",
    "finalizers",
    "resourceVersion",
    "uid",
    "generateName",
    "apiVersion",
    "kind",
    "type",
    "clusterIP",
    "nodeName",
    "size",
    "op",
    "path",
    "value",
    "from",
    "replace",
    "delete",
    "merge",
    "add",
    "remove",
    "test",
    "move",
    "copy",
    "x",
    "",
    "a/b",
    "~",
    "-",
    "0",
];

const PATHS: &[&str] = &[
    "/api/v1/namespaces/default/pods",
    "/api/v1/namespaces/default/pods/p",
    "/api/v1/namespaces/default/pods/p/status",
    "/api/v1/namespaces/default/pods/p/binding",
    "/api/v1/namespaces/default/pods/p/eviction",
    "/api/v1/namespaces/default/configmaps",
    "/api/v1/namespaces/default/configmaps/c",
    "/api/v1/namespaces/default/services",
    "/api/v1/namespaces/default/services/s",
    "/api/v1/namespaces",
    "/api/v1/namespaces/default",
    "/apis/apps/v1/namespaces/default/deployments",
    "/apis/apps/v1/namespaces/default/deployments/d",
    "/apis/apps/v1/namespaces/default/deployments/d/scale",
    "/apis/apps/v1/namespaces/default/deployments/d/status",
    "/apis/example.com/v1/namespaces/default/widgets",
    "/apis/example.com/v1/namespaces/default/widgets/w",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    "/apis/nope/v1/things",
    "/api/v1/namespaces/default/pods/p/x/y/z",
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
    "application/vnd.kubernetes.protobuf",
    "text/plain",
    "",
];

const QUERIES: &[&str] = &[
    "",
    "labelSelector=",
    "labelSelector=a%3Db,c!%3Dd",
    "labelSelector=in(",
    "labelSelector=a+in+(x,y)",
    "fieldSelector=metadata.name%3Dx",
    "fieldSelector=spec.nope%3D1",
    "fieldSelector=%3D%3D",
    "limit=2",
    "limit=-1",
    "limit=abc",
    "continue=garbage",
    "continue=eyJ2IjoxfQ",
    "resourceVersion=0",
    "resourceVersion=999999999",
    "resourceVersion=abc",
    "resourceVersionMatch=Exact&resourceVersion=1",
    "fieldValidation=Strict",
    "fieldValidation=Nope",
    "dryRun=All",
    "dryRun=x",
    "gracePeriodSeconds=0",
    "propagationPolicy=Foreground",
    "includeObject=Object",
    "includeObject=bogus",
];

fn word(rng: &mut StdRng) -> String {
    if rng.random_bool(0.1) {
        let n = rng.random_range(0..12);
        (0..n)
            .map(|_| char::from(rng.random_range(0x20u8..0x7f)))
            .collect()
    } else {
        WORDS[rng.random_range(0..WORDS.len())].to_owned()
    }
}

fn value(rng: &mut StdRng, depth: u32) -> Value {
    let leaf = depth > 4 || rng.random_bool(0.4);
    if leaf {
        return match rng.random_range(0..7) {
            0 => Value::Null,
            1 => json!(rng.random_bool(0.5)),
            2 => json!(rng.random_range(-3i64..100_000)),
            3 => json!(rng.random::<f64>() * 1e6),
            4 => json!(i64::MAX),
            _ => json!(word(rng)),
        };
    }
    if rng.random_bool(0.5) {
        let n = rng.random_range(0..5);
        Value::Array((0..n).map(|_| value(rng, depth + 1)).collect())
    } else {
        let n = rng.random_range(0..6);
        let mut m = Map::new();
        for _ in 0..n {
            m.insert(word(rng), value(rng, depth + 1));
        }
        Value::Object(m)
    }
}

fn valid_objects() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                        "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}),
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}}),
        json!([{"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}, {"op": "test", "path": "/spec", "value": 1}]),
    ]
}

/// Changes a value at a random place.
fn mutate(rng: &mut StdRng, v: &mut Value, depth: u32) {
    match v {
        Value::Object(m) if !m.is_empty() && depth < 6 && rng.random_bool(0.7) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[rng.random_range(0..keys.len())];
            if let Some(child) = m.get_mut(k) {
                mutate(rng, child, depth + 1);
            }
        }
        Value::Array(a) if !a.is_empty() && depth < 6 && rng.random_bool(0.7) => {
            let i = rng.random_range(0..a.len());
            mutate(rng, &mut a[i], depth + 1);
        }
        Value::Object(m) if rng.random_bool(0.5) => {
            m.insert(word(rng), value(rng, depth + 1));
        }
        other => *other = value(rng, depth),
    }
}

fn body(rng: &mut StdRng, objects: &[Value]) -> Vec<u8> {
    match rng.random_range(0..10) {
        0 => Vec::new(),
        1 => (0..rng.random_range(0..64))
            .map(|_| rng.random::<u8>())
            .collect(),
        2 => b"{\"metadata\": {\"name\": \"x\"".to_vec(),
        3 => b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\n".to_vec(),
        4 | 5 => serde_json::to_vec(&value(rng, 0)).unwrap_or_default(),
        _ => {
            let mut v = objects[rng.random_range(0..objects.len())].clone();
            for _ in 0..rng.random_range(1..4) {
                mutate(rng, &mut v, 0);
            }
            serde_json::to_vec(&v).unwrap_or_default()
        }
    }
}

fn widget_crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer", "maximum": 10},
                        "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "pattern": "^[a-z]+$"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}}}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_makes_the_server_panic_or_answer_500() {
    let seed: u64 = std::env::var("KEELSON_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let cases: usize = std::env::var("KEELSON_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let mut rng = StdRng::seed_from_u64(seed);
    let server = ApiServer::new(
        Registry::new(Arc::new(MemStore::ephemeral())),
        resources::builtin(),
    );
    let router = keelson_apiserver::router(server.clone());
    // A namespace, a CRD, and one object of each kind to patch.
    let setup = [
        (
            "/api/v1/namespaces",
            json!({"metadata": {"name": "default"}}),
        ),
        (
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            widget_crd(),
        ),
    ];
    for (path, obj) in setup {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(obj.to_string()))
            .expect("request");
        let resp = router.clone().oneshot(req).await.expect("response");
        assert!(
            resp.status().is_success(),
            "setup {path}: {}",
            resp.status()
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let objects = valid_objects();
    for obj in &objects[..5] {
        let path = match obj["kind"].as_str() {
            Some("Pod") => "/api/v1/namespaces/default/pods",
            Some("ConfigMap") => "/api/v1/namespaces/default/configmaps",
            Some("Deployment") => "/apis/apps/v1/namespaces/default/deployments",
            Some("Service") => "/api/v1/namespaces/default/services",
            _ => "/apis/example.com/v1/namespaces/default/widgets",
        };
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(obj.to_string()))
            .expect("request");
        let _ = router.clone().oneshot(req).await.expect("response");
    }

    for case in 0..cases {
        let method = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ][rng.random_range(0..5)]
        .clone();
        let path = PATHS[rng.random_range(0..PATHS.len())];
        let query = QUERIES[rng.random_range(0..QUERIES.len())];
        let content_type = CONTENT_TYPES[rng.random_range(0..CONTENT_TYPES.len())];
        let body = body(&mut rng, &objects);
        let uri = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let req = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header("content-type", content_type)
            .body(Body::from(body.clone()))
            .expect("request");
        let resp = router.clone().oneshot(req).await.expect("response");
        let status = resp.status();
        let text = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "seed {seed}, case {case}: {method} {uri} ({content_type}) with {:?} answered {text}",
            String::from_utf8_lossy(&body)
        );
    }
}
