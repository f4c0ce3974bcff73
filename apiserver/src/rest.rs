//! The REST front: the Kubernetes HTTP API on axum, over the [`Registry`].
//!
//! Resource paths are parsed by hand rather than by route patterns, because Kubernetes'
//! paths overlap (`/api/v1/namespaces/x` is a namespace, `/api/v1/namespaces/x/pods` a
//! collection in it, `/api/v1/namespaces/x/status` a subresource of the namespace):
//!
//! ```text
//! /api/v1/<plural>[/<name>[/<subresource>]]
//! /api/v1/namespaces/<ns>/<plural>[/<name>[/<subresource>]]
//! /apis/<group>/<version>/... the same
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use keelson_core::{Error, FieldSelector, LabelSelector};
use serde_json::{json, Value};

use crate::catalog::Catalog;
use crate::discovery;
use crate::patch::PatchType;
use crate::registry::{now, DeleteOptions, ListParams, Registry, Selection, WatchEventType};
use crate::resources::ServedResource;
use crate::table::{self, IncludeObject};
use crate::validation::{self, FieldValidation};
use keelson_core::client::PropagationPolicy;

/// How often a watch that allows bookmarks gets one (Kubernetes sends about one a minute).
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// The media type of server-side apply.
const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// The largest request body accepted (as Kubernetes: 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The state the handlers share: the registry and what it serves.
pub struct ApiServer {
    registry: Registry,
    catalog: parking_lot::RwLock<Arc<Catalog>>,
    /// The JSON of objects being sent to watchers, by object: every watcher of an event
    /// gets the same shared object, so it is encoded once, not once per watcher.
    encoded: parking_lot::Mutex<HashMap<usize, (std::sync::Weak<Value>, Bytes)>>,
}

/// How many encoded objects the watch memo keeps before starting afresh.
const ENCODED_MEMO: usize = 4096;

impl ApiServer {
    /// A server for `served` resources over `registry`. When CustomResourceDefinitions
    /// are among them and a tokio runtime is running, the controller that serves what
    /// CRDs define starts with it (see [`crate::crd`]).
    pub fn new(registry: Registry, served: Vec<ServedResource>) -> Arc<ApiServer> {
        let server = Arc::new(ApiServer {
            registry,
            catalog: parking_lot::RwLock::new(Arc::new(Catalog::new(served))),
            encoded: parking_lot::Mutex::default(),
        });
        crate::crd::start(&server);
        server
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// What is served now (a snapshot: resources installed later are not in it).
    pub fn served(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    /// Serves `resources` from now on, each replacing any served at its group, version
    /// and plural: discovery, OpenAPI, and the REST paths and in-process client see them
    /// at once.
    pub fn install(&self, resources: Vec<ServedResource>) {
        let mut catalog = self.catalog.write();
        *catalog = Arc::new(catalog.with_changes(resources, |_| false));
    }

    /// Serves exactly `resources` (any number of versions) for `plural` in `group`,
    /// replacing whatever was served for them, in one step.
    pub fn install_kind(&self, group: &str, plural: &str, resources: Vec<ServedResource>) {
        let mut catalog = self.catalog.write();
        *catalog = Arc::new(
            catalog.with_changes(resources, |s| s.rt.group == group && s.rt.plural == plural),
        );
    }

    /// The JSON of a shared object, encoded once for all the watchers it goes to.
    fn encoded(&self, object: &Arc<Value>) -> Bytes {
        let key = Arc::as_ptr(object) as usize;
        if let Some((weak, bytes)) = self.encoded.lock().get(&key) {
            if weak.upgrade().is_some_and(|o| Arc::ptr_eq(&o, object)) {
                return bytes.clone();
            }
        }
        let bytes = Bytes::from(serde_json::to_vec(object.as_ref()).unwrap_or_default());
        let mut memo = self.encoded.lock();
        if memo.len() >= ENCODED_MEMO {
            memo.retain(|_, (weak, _)| weak.strong_count() > 0);
            if memo.len() >= ENCODED_MEMO {
                memo.clear();
            }
        }
        memo.insert(key, (Arc::downgrade(object), bytes.clone()));
        bytes
    }

    /// Stops serving every version of `plural` in `group` (its objects stay in the store).
    pub fn uninstall(&self, group: &str, plural: &str) {
        let mut catalog = self.catalog.write();
        *catalog = Arc::new(
            catalog.with_changes(Vec::new(), |s| s.rt.group == group && s.rt.plural == plural),
        );
    }
}

/// The router: discovery, OpenAPI, health and every served resource.
pub fn router(server: Arc<ApiServer>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/version/", get(version))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route("/openapi/v3", get(openapi_root))
        .route("/openapi/v3/{*path}", get(openapi_doc))
        .route("/api", get(api_root))
        .route("/api/", get(api_root))
        .route("/apis", get(apis_root))
        .route("/apis/", get(apis_root))
        .route("/api/{*rest}", axum::routing::any(resource))
        .route("/apis/{*rest}", axum::routing::any(resource))
        .fallback(not_found)
        .with_state(server)
}

type Shared = State<Arc<ApiServer>>;

fn json_response(status: StatusCode, body: &Value) -> Response {
    bytes_response(status, serde_json::to_vec(body).unwrap_or_default())
}

/// A `<Kind>List` around `items`: the items' JSON, separated by commas.
fn list_response(rt: &keelson_core::ResourceType, metadata: &Value, items: &[u8]) -> Response {
    let head =
        json!({ "kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": metadata });
    let head = serde_json::to_vec(&head).unwrap_or_default();
    let mut buf = Vec::with_capacity(head.len() + items.len() + 16);
    // `{"apiVersion":..,"kind":..,"metadata":..}` without its closing brace, then the items.
    buf.extend_from_slice(&head[..head.len().saturating_sub(1)]);
    buf.extend_from_slice(b",\"items\":[");
    buf.extend_from_slice(items);
    buf.extend_from_slice(b"]}");
    bytes_response(StatusCode::OK, buf)
}

/// A JSON body already encoded.
fn bytes_response(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut resp = (status, body.into()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &Error) -> Response {
    let mut status = serde_json::to_value(e.to_status()).unwrap_or_else(|_| json!({}));
    if let Some(map) = status.as_object_mut() {
        map.insert("kind".into(), json!("Status"));
        map.insert("apiVersion".into(), json!("v1"));
        map.entry("metadata").or_insert_with(|| json!({}));
    }
    json_response(
        StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status,
    )
}

async fn version() -> Response {
    json_response(StatusCode::OK, &discovery::version())
}

async fn health() -> &'static str {
    "ok"
}

async fn not_found() -> Response {
    error_response(&not_found_error())
}

fn accept(headers: &HeaderMap) -> &str {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn discovery_response(
    headers: &HeaderMap,
    aggregated: impl FnOnce() -> Value,
    legacy: impl FnOnce() -> Value,
) -> Response {
    if discovery::wants_aggregated(accept(headers)) {
        let mut resp = json_response(StatusCode::OK, &aggregated());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE),
        );
        resp
    } else {
        json_response(StatusCode::OK, &legacy())
    }
}

async fn api_root(State(s): Shared, headers: HeaderMap) -> Response {
    let served = s.served();
    discovery_response(
        &headers,
        || discovery::aggregated_core(&served),
        discovery::legacy_api_versions,
    )
}

async fn apis_root(State(s): Shared, headers: HeaderMap) -> Response {
    let served = s.served();
    discovery_response(
        &headers,
        || discovery::aggregated_groups(&served),
        || discovery::legacy_group_list(&served),
    )
}

async fn openapi_root(State(s): Shared) -> Response {
    bytes_response(StatusCode::OK, s.served().openapi_root().clone())
}

async fn openapi_doc(
    State(s): Shared,
    axum::extract::Path(path): axum::extract::Path<String>,
) -> Response {
    match s.served().openapi(path.trim_end_matches('/')) {
        Some(doc) => bytes_response(StatusCode::OK, doc.clone()),
        None => not_found().await,
    }
}

/// Where a resource request points.
struct Target<'a> {
    res: &'a ServedResource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// Parses `/api/...` or `/apis/...` into a target, or answers discovery for a group or
/// group-version path.
fn parse_target<'a>(s: &'a Catalog, path: &str) -> Result<Result<Target<'a>, Value>, Error> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group] => {
            return discovery::group(s, group)
                .map(Err)
                .ok_or_else(not_found_error);
        }
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found_error()),
    };
    if rest.is_empty() {
        return discovery::resource_list(s, group, version)
            .map(Err)
            .ok_or_else(not_found_error);
    }
    let find = |plural: &str| s.find(group, version, plural).ok_or_else(not_found_error);
    let target = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if s.find(group, version, plural)
                .is_some_and(|r| r.rt.is_namespaced()) =>
        {
            let res = find(plural)?;
            match tail {
                [] => Target {
                    res,
                    namespace: Some((*ns).to_owned()),
                    name: None,
                    subresource: None,
                },
                [name] => Target {
                    res,
                    namespace: Some((*ns).to_owned()),
                    name: Some((*name).to_owned()),
                    subresource: None,
                },
                [name, sub] => Target {
                    res,
                    namespace: Some((*ns).to_owned()),
                    name: Some((*name).to_owned()),
                    subresource: Some((*sub).to_owned()),
                },
                _ => return Err(not_found_error()),
            }
        }
        [plural] => Target {
            res: find(plural)?,
            namespace: None,
            name: None,
            subresource: None,
        },
        [plural, name] => Target {
            res: find(plural)?,
            namespace: None,
            name: Some((*name).to_owned()),
            subresource: None,
        },
        [plural, name, sub] => Target {
            res: find(plural)?,
            namespace: None,
            name: Some((*name).to_owned()),
            subresource: Some((*sub).to_owned()),
        },
        _ => return Err(not_found_error()),
    };
    if target.name.is_some() && target.res.rt.is_namespaced() && target.namespace.is_none() {
        return Err(not_found_error());
    }
    Ok(Ok(target))
}

/// Kubernetes' answer for a path it does not serve.
fn not_found_error() -> Error {
    Error::NotFound {
        resource: keelson_core::GroupResource::new("", ""),
        name: String::new(),
        message: "the server could not find the requested resource".into(),
    }
}

/// Query parameters, tolerant of the odd forms real clients send (`?&limit=500`).
fn query(req: &Request) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn selection(q: &HashMap<String, String>, target: &Target<'_>) -> Result<Selection, Error> {
    let labels = q
        .get("labelSelector")
        .filter(|s| !s.is_empty())
        .map(|s| LabelSelector::parse(s))
        .transpose()?;
    let fields = match q.get("fieldSelector").filter(|s| !s.is_empty()) {
        Some(s) => {
            let f = FieldSelector::parse(s)?;
            f.check_supported(&target.res.rt)?;
            Some(f)
        }
        None => None,
    };
    Ok(Selection {
        namespace: target.namespace.clone(),
        labels,
        fields,
    })
}

fn include_object(q: &HashMap<String, String>) -> Result<IncludeObject, Error> {
    q.get("includeObject")
        .map_or(Ok(IncludeObject::Metadata), |v| {
            v.parse::<IncludeObject>()
                .map_err(|e| Error::bad_request(e.to_string()))
        })
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn wants_table(headers: &HeaderMap) -> bool {
    accept(headers)
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

async fn body_json(req: Request) -> Result<Value, Error> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| Error::request_entity_too_large(format!("limit is {MAX_BODY_BYTES}")))?;
    if ct.starts_with(crate::protobuf::MEDIA_TYPE) {
        return crate::protobuf::decode(&bytes);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_request(format!("error decoding the request body: {e}")))
}

/// Where `kubectl auth can-i` asks whether it may do something.
const SELF_SUBJECT_ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// Answers a SelfSubjectAccessReview. Keelson has no authorizer yet (RBAC comes with the
/// controllers), so every authenticated request is allowed, and the review says so.
async fn self_subject_access_review(req: Request) -> Result<Response, Error> {
    if req.method() != Method::POST {
        return Err(Error::MethodNotAllowed {
            resource: keelson_core::GroupResource::new(
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
            ),
            message: format!(
                "{} is not supported on selfsubjectaccessreviews.authorization.k8s.io: only create is",
                req.method()
            ),
        });
    }
    let mut review = body_json(req).await?;
    if !review.get("spec").is_some_and(Value::is_object) {
        return Err(Error::invalid(
            ("authorization.k8s.io", "SelfSubjectAccessReview"),
            "",
            vec![keelson_core::FieldError::required(
                "spec.resourceAttributes",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        ));
    }
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!("SelfSubjectAccessReview");
    review["status"] = json!({
        "allowed": true,
        "reason": "no authorizer is configured: every authenticated request is allowed",
    });
    Ok(json_response(StatusCode::CREATED, &review))
}

/// An apply body: YAML (JSON is YAML too).
async fn body_yaml_or_json(req: Request) -> Result<Value, Error> {
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| Error::request_entity_too_large(format!("limit is {MAX_BODY_BYTES}")))?;
    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
        return Ok(v);
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::bad_request("error decoding the request body: not UTF-8"))?;
    let v: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| Error::bad_request(format!("error decoding YAML: {e}")))?;
    if !v.is_object() {
        return Err(Error::bad_request(
            "error decoding YAML: the apply configuration must be an object",
        ));
    }
    Ok(v)
}

async fn resource(State(s): Shared, req: Request) -> Response {
    match handle(&s, req).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

async fn handle(s: &Arc<ApiServer>, req: Request) -> Result<Response, Error> {
    let path = req.uri().path().to_owned();
    if path.trim_end_matches('/') == SELF_SUBJECT_ACCESS_REVIEWS {
        return self_subject_access_review(req).await;
    }
    let catalog = s.served();
    let target = match parse_target(&catalog, &path)? {
        Ok(t) => t,
        Err(doc) => return Ok(json_response(StatusCode::OK, &doc)),
    };
    let q = query(&req);
    let headers = req.headers().clone();
    let method = req.method().clone();
    // Writes are made for the authenticated user (plain HTTP without authentication:
    // the server's own identity).
    let registry = match req.extensions().get::<crate::auth::User>() {
        Some(user) => s.registry.as_user(user.clone()),
        None => s.registry.clone(),
    };
    let registry = registry.with_field_manager(q.get("fieldManager").map(String::as_str));
    let registry = &match q.get("dryRun").map(String::as_str) {
        None | Some("") => registry,
        Some("All") => registry.with_dry_run(true),
        Some(other) => {
            let options = match method {
                Method::POST => "CreateOptions",
                Method::DELETE => "DeleteOptions",
                Method::PATCH => "PatchOptions",
                _ => "UpdateOptions",
            };
            return Err(Error::invalid(
                ("meta.k8s.io", options),
                "",
                vec![keelson_core::FieldError::not_supported(
                    "dryRun",
                    other,
                    &["All"],
                )],
            ));
        }
    };
    let res = target.res;
    let ns = target.namespace.as_deref();
    let include = include_object(&q)?;
    let obj_response = |status: StatusCode, obj: &Value| -> Response {
        if wants_table(&headers) {
            let t = table::table(
                &res.rt,
                std::slice::from_ref(obj),
                "",
                None,
                None,
                include,
                now(),
            );
            json_response(status, &t)
        } else {
            json_response(status, obj)
        }
    };
    match (
        method,
        target.name.as_deref(),
        target.subresource.as_deref(),
    ) {
        (Method::GET, None, None) => {
            let sel = selection(&q, &target)?;
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch(s, res, sel, &q, &headers).await;
            }
            let params = ListParams {
                selection: sel,
                limit: q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0),
                continue_token: q.get("continue").cloned(),
                resource_version: q.get("resourceVersion").cloned(),
                exact: q.get("resourceVersionMatch").is_some_and(|m| m == "Exact"),
            };
            if !wants_table(&headers) {
                if let Some((items, rv)) = registry.list_json(res, &params).await? {
                    let metadata = json!({ "resourceVersion": rv });
                    return Ok(list_response(&res.rt, &metadata, &items));
                }
            }
            let list = registry.list(res, &params).await?;
            if wants_table(&headers) {
                let t = table::table(
                    &res.rt,
                    &list.items,
                    &list.resource_version.to_string(),
                    list.continue_token.as_deref(),
                    list.remaining,
                    include_object(&q)?,
                    now(),
                );
                return Ok(json_response(StatusCode::OK, &t));
            }
            let mut metadata = json!({ "resourceVersion": list.resource_version.to_string() });
            if let Some(c) = &list.continue_token {
                metadata["continue"] = json!(c);
            }
            if let Some(r) = list.remaining {
                metadata["remainingItemCount"] = json!(r);
            }
            let mut items = Vec::with_capacity(list.items.len() * 1024);
            for (i, item) in list.items.iter().enumerate() {
                if i > 0 {
                    items.push(b',');
                }
                serde_json::to_writer(&mut items, item.as_ref()).map_err(Error::internal)?;
            }
            Ok(list_response(&res.rt, &metadata, &items))
        }
        (Method::GET, Some(name), None | Some("status")) => {
            if !wants_table(&headers) {
                let body = registry.get_json(res, ns, name).await?;
                return Ok(bytes_response(StatusCode::OK, body));
            }
            let obj = registry.get_shared(res, ns, name).await?;
            Ok(obj_response(StatusCode::OK, &obj))
        }
        (Method::POST, None, None) => {
            let validation = FieldValidation::from_query(
                q.get("fieldValidation").map(String::as_str),
                "CreateOptions",
            )?;
            let body = body_json(req).await?;
            let warnings = unknown_fields(res, validation, &body)?;
            let obj = registry.create(res, ns, body).await?;
            Ok(with_warnings(
                obj_response(StatusCode::CREATED, &obj),
                &warnings,
            ))
        }
        (Method::PUT, Some(name), sub @ (None | Some("status"))) => {
            let validation = FieldValidation::from_query(
                q.get("fieldValidation").map(String::as_str),
                "UpdateOptions",
            )?;
            let body = body_json(req).await?;
            let warnings = unknown_fields(res, validation, &body)?;
            let obj = registry.update(res, ns, name, body, sub.is_some()).await?;
            Ok(with_warnings(obj_response(StatusCode::OK, &obj), &warnings))
        }
        (Method::DELETE, Some(name), None) => {
            let options = delete_options(&q, req).await?;
            let obj = registry.delete(res, ns, name, &options).await?;
            let pending = obj.pointer("/metadata/deletionTimestamp").is_some();
            Ok(obj_response(
                if pending {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::OK
                },
                &obj,
            ))
        }
        (Method::DELETE, None, None) => {
            let sel = selection(&q, &target)?;
            let options = delete_options(&q, req).await?;
            let list = registry
                .list(
                    res,
                    &ListParams {
                        selection: sel,
                        ..ListParams::default()
                    },
                )
                .await?;
            let mut deleted = Vec::new();
            for obj in list.items {
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let objns = obj
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                match registry
                    .delete(res, objns.as_deref(), &name, &options)
                    .await
                {
                    Ok(o) => deleted.push(o),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            let body = json!({
                "kind": res.rt.list_kind(),
                "apiVersion": res.rt.api_version(),
                "metadata": {},
                "items": deleted,
            });
            Ok(json_response(StatusCode::OK, &body))
        }
        (Method::PATCH, Some(name), None) if content_type(&headers).starts_with(APPLY_PATCH) => {
            let manager = q
                .get("fieldManager")
                .filter(|m| !m.is_empty())
                .ok_or_else(|| {
                    Error::invalid(
                        ("meta.k8s.io", "PatchOptions"),
                        "",
                        vec![keelson_core::FieldError::required(
                            "fieldManager",
                            "is required for apply patch",
                        )],
                    )
                })?
                .clone();
            let force = q.get("force").is_some_and(|f| f == "true");
            let validation = FieldValidation::from_query(
                q.get("fieldValidation").map(String::as_str),
                "PatchOptions",
            )?;
            let body = body_yaml_or_json(req).await?;
            let warnings = unknown_fields(res, validation, &body)?;
            let (obj, created) = registry
                .with_field_manager(None)
                .apply(res, ns, name, body, &manager, force)
                .await?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(with_warnings(obj_response(status, &obj), &warnings))
        }
        (Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
            if q.get("force").is_some_and(|f| f == "true") {
                return Err(Error::invalid(
                    ("meta.k8s.io", "PatchOptions"),
                    "",
                    vec![keelson_core::FieldError::forbidden(
                        "force",
                        "may not be specified for non-apply patch",
                    )],
                ));
            }
            let patch_type = PatchType::from_content_type(content_type(&headers))?;
            let validation = FieldValidation::from_query(
                q.get("fieldValidation").map(String::as_str),
                "PatchOptions",
            )?;
            let body = body_json(req).await?;
            let warnings = match patch_type {
                PatchType::Merge => unknown_fields(res, validation, &body)?,
                PatchType::Strategic => unknown_fields(
                    res,
                    validation,
                    &crate::strategic::without_directives(&body),
                )?,
                PatchType::Json => Vec::new(),
            };
            let obj = registry
                .patch(res, ns, name, patch_type, &body, sub.is_some())
                .await?;
            Ok(with_warnings(obj_response(StatusCode::OK, &obj), &warnings))
        }
        (_, _, Some(sub)) if !res.subresources.iter().any(|x| x.name == sub) => {
            Err(not_found_error())
        }
        (Method::GET, Some(name), Some("scale")) => {
            let scale = registry.get_scale(res, ns, name).await?;
            Ok(json_response(StatusCode::OK, &scale))
        }
        (Method::PUT, Some(name), Some("scale")) => {
            let body = body_json(req).await?;
            let scale = registry.update_scale(res, ns, name, &body).await?;
            Ok(json_response(StatusCode::OK, &scale))
        }
        (Method::PATCH, Some(name), Some("scale")) => {
            let patch_type = PatchType::from_content_type(content_type(&headers))?;
            let body = body_json(req).await?;
            let scale = registry
                .patch_scale(res, ns, name, patch_type, &body)
                .await?;
            Ok(json_response(StatusCode::OK, &scale))
        }
        (Method::POST, Some(name), Some("binding")) => {
            let body = body_json(req).await?;
            let status = registry.bind(res, ns, name, &body).await?;
            Ok(json_response(StatusCode::CREATED, &status))
        }
        (Method::PUT, Some(name), Some("finalize")) => {
            let body = body_json(req).await?;
            let obj = registry.finalize(res, name, &body).await?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::GET, Some(name), Some("log")) => {
            crate::nodeproxy::pod_log(registry, res, ns, name, &q).await
        }
        (Method::POST, Some(name), Some("token")) => {
            let body = body_json(req).await?;
            let answer = registry.create_token(res, ns, name, &body).await?;
            Ok(json_response(StatusCode::CREATED, &answer))
        }
        (
            Method::GET | Method::POST,
            Some(name),
            Some(sub @ ("exec" | "attach" | "portforward")),
        ) => crate::nodeproxy::pod_stream(registry, res, ns, name, sub, &q, req).await,
        (Method::POST, Some(name), Some("eviction")) => {
            let body = body_json(req).await?;
            let status = registry.evict(res, ns, name, &body).await?;
            Ok(json_response(StatusCode::CREATED, &status))
        }
        (method, _, _) => Err(Error::method_not_allowed(&res.rt, method.as_str())),
    }
}

/// Checks a body for fields its kind does not have: Strict refuses (400, worded as
/// Kubernetes words it), Warn returns warnings for the response, Ignore does nothing.
fn unknown_fields(
    res: &ServedResource,
    validation: FieldValidation,
    body: &Value,
) -> Result<Vec<String>, Error> {
    validation::check_unknown(validation, &res.rt.kind, res.validator(), body).map_err(
        |e| match e {
            Error::BadRequest { message } => Error::BadRequest {
                message: format!(
                    "{kind} in version \"{version}\" cannot be handled as a {kind}: {message}",
                    kind = res.rt.kind,
                    version = res.rt.version
                ),
            },
            other => other,
        },
    )
}

/// Adds `Warning: 299 - "..."` headers, which kubectl prints as `Warning: ...`.
fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// DeleteOptions from the body (kubectl sends one) and the query (Python sends none).
async fn delete_options(q: &HashMap<String, String>, req: Request) -> Result<DeleteOptions, Error> {
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| Error::request_entity_too_large(format!("limit is {MAX_BODY_BYTES}")))?;
    let mut options = DeleteOptions {
        grace_period_seconds: q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()),
        propagation_policy: q
            .get("propagationPolicy")
            .and_then(|p| PropagationPolicy::parse(p)),
        ..DeleteOptions::default()
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(options);
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_request(format!("error decoding DeleteOptions: {e}")))?;
    delete_options_from_json(&v, &mut options)?;
    Ok(options)
}

/// Reads a DeleteOptions object (a DELETE's body, an Eviction's `deleteOptions`) into
/// `options`.
///
/// # Errors
/// 422 for values Kubernetes refuses (an unknown `propagationPolicy` or `dryRun`, both
/// `propagationPolicy` and `orphanDependents`); 400 for a malformed `dryRun`.
pub(crate) fn delete_options_from_json(
    v: &Value,
    options: &mut DeleteOptions,
) -> Result<(), Error> {
    let pre = v.get("preconditions");
    options.uid = pre
        .and_then(|p| p.get("uid"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    options.resource_version = pre
        .and_then(|p| p.get("resourceVersion"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
        options.grace_period_seconds = Some(g);
    }
    let policy = v.get("propagationPolicy").filter(|p| !p.is_null());
    let orphan = v.get("orphanDependents").and_then(Value::as_bool);
    options.propagation_policy = match (policy, orphan) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                ("meta.k8s.io", "DeleteOptions"),
                "",
                vec![keelson_core::FieldError::invalid(
                    "propagationPolicy",
                    policy.cloned().unwrap_or(Value::Null),
                    "orphanDependents and deletionPropagation cannot be both set",
                )],
            ))
        }
        (Some(p), None) => Some(p.as_str().and_then(PropagationPolicy::parse).ok_or_else(
            || {
                Error::invalid(
                    ("meta.k8s.io", "DeleteOptions"),
                    "",
                    vec![keelson_core::FieldError::not_supported(
                        "propagationPolicy",
                        p.clone(),
                        &["Foreground", "Background", "Orphan"],
                    )],
                )
            },
        )?),
        (None, Some(true)) => Some(PropagationPolicy::Orphan),
        (None, Some(false)) => Some(PropagationPolicy::Background),
        (None, None) => None,
    };
    match v.get("dryRun") {
        None | Some(Value::Null) => {}
        Some(Value::Array(values)) => {
            for value in values {
                match value.as_str() {
                    Some("All") => options.dry_run = true,
                    _ => {
                        return Err(Error::invalid(
                            ("meta.k8s.io", "DeleteOptions"),
                            "",
                            vec![keelson_core::FieldError::not_supported(
                                "dryRun",
                                value.clone(),
                                &["All"],
                            )],
                        ))
                    }
                }
            }
        }
        Some(other) => {
            return Err(Error::bad_request(format!(
                "error decoding DeleteOptions: dryRun must be a list, not {other}"
            )))
        }
    }
    Ok(())
}

async fn watch(
    s: &Arc<ApiServer>,
    res: &ServedResource,
    sel: Selection,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, Error> {
    let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let bookmarks = q
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true")
        .then_some(BOOKMARK_EVERY);
    let rv = q.get("resourceVersion").map(String::as_str);
    let events = s
        .registry
        .watch_with_bookmarks(res, sel, rv, send_initial, bookmarks)
        .await?;
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let as_table = wants_table(headers);
    let include = include_object(q)?;
    let rt = res.rt.clone();
    let server = s.clone();
    let mut first = true;
    let lines = events.filter_map(move |e| {
        let object = if as_table {
            match e.kind {
                WatchEventType::Bookmark | WatchEventType::Error => e.object,
                _ => {
                    let t = table::watch_table(&rt, &e.object, include, now(), first);
                    first = false;
                    Arc::new(t)
                }
            }
        } else {
            e.object
        };
        let encoded = match e.kind {
            // The objects the cache shares: encoded once for every watcher.
            WatchEventType::Added | WatchEventType::Modified | WatchEventType::Deleted
                if !as_table =>
            {
                server.encoded(&object)
            }
            _ => Bytes::from(serde_json::to_vec(object.as_ref()).unwrap_or_default()),
        };
        let kind = e.kind.as_str();
        let mut line = Vec::with_capacity(encoded.len() + kind.len() + 24);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(&encoded);
        line.extend_from_slice(b"}\n");
        futures::future::ready(Some(line))
    });
    // Events that are ready together go out as one chunk: one write for a watcher that
    // has fallen a little behind, not one per event.
    let lines = lines
        .ready_chunks(64)
        .map(|chunk| Ok::<_, std::convert::Infallible>(Bytes::from(chunk.concat())));
    let body = match timeout {
        Some(t) => {
            let deadline = tokio::time::sleep(t);
            Body::from_stream(lines.take_until(deadline))
        }
        None => Body::from_stream(lines),
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
