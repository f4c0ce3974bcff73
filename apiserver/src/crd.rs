//! CustomResourceDefinitions: new resource types defined at run time.
//!
//! ```text
//!  CRD written ─▶ registry (validate: names, versions, structural schema)
//!                    │ watch
//!                    ▼
//!  controller ─▶ served_resources(crd) ─▶ ApiServer::install ─▶ discovery, OpenAPI, REST,
//!       │                                                       in-process client
//!       └─▶ status: NamesAccepted, Established, acceptedNames, storedVersions
//!  CRD deleted ─▶ (finalizer) delete every object ─▶ remove finalizer ─▶ uninstall
//! ```
//!
//! Each served version of a CRD becomes a [`ServedResource`] with the version's
//! `openAPIV3Schema` (unknown and required fields, types, enums, ranges, patterns,
//! `x-kubernetes-preserve-unknown-fields`, defaults), its `status` and `scale`
//! subresources and its `additionalPrinterColumns`. Every version stores under the same
//! key (`/registry/<group>/<plural>/...`) and reads back with its own `apiVersion`
//! (conversion strategy `None`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use keelson_core::{Error, FieldError, ResourceType};
use serde_json::{json, Value};

use keelson_core::client::error_from_status_json;

use crate::registry::{DeleteOptions, ListParams, Selection, UpdateMode, WatchEventType};
use crate::resources::{ScalePaths, ServedResource};
use crate::rest::ApiServer;

/// The finalizer that holds a deleted CRD until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn strings(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A `.spec.replicas` path as a JSON pointer (`/spec/replicas`).
fn pointer_of(json_path: &str) -> String {
    json_path
        .trim_start_matches('.')
        .split('.')
        .fold(String::new(), |mut p, seg| {
            p.push('/');
            p.push_str(&seg.replace('~', "~0").replace('/', "~1"));
            p
        })
}

/// The resources a CRD serves, one per served version.
pub fn served_resources(crd: &Value) -> Vec<ServedResource> {
    let mut out = Vec::new();
    for (rt, v) in ResourceType::served_by_crd(crd) {
        let schema = v
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        let mut res = ServedResource::new(rt, schema);
        res.validate_values = true;
        if v.pointer("/subresources/status").is_some() {
            res = res.with_status();
        }
        if let Some(scale) = v.pointer("/subresources/scale") {
            let label = text(scale, "/labelSelectorPath");
            res = res.with_scale(ScalePaths {
                spec_replicas: pointer_of(text(scale, "/specReplicasPath")),
                status_replicas: pointer_of(text(scale, "/statusReplicasPath")),
                label_selector: (!label.is_empty()).then(|| pointer_of(label)),
            });
        }
        out.push(res);
    }
    out
}

/// The checks a CRD must pass to be stored: its names, its versions (exactly one stored),
/// and structural schemas (every field with a type, an object at the root).
pub fn validate(crd: &Value, out: &mut Vec<FieldError>) {
    let group = text(crd, "/spec/group");
    let plural = text(crd, "/spec/names/plural");
    let name = text(crd, "/metadata/name");
    for (field, value) in [
        ("spec.group", group),
        ("spec.names.plural", plural),
        ("spec.names.kind", text(crd, "/spec/names/kind")),
    ] {
        if value.is_empty() {
            out.push(FieldError::required(field, ""));
        }
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        out.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if !group.is_empty() && !group.contains('.') {
        out.push(FieldError::invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    }
    match text(crd, "/spec/scope") {
        "Namespaced" | "Cluster" => {}
        other => out.push(FieldError::not_supported(
            "spec.scope",
            other,
            &["Cluster", "Namespaced"],
        )),
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if versions.is_empty() {
        out.push(FieldError::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
        return;
    }
    let stored = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if stored != 1 {
        out.push(FieldError::invalid(
            "spec.versions",
            json!(versions
                .iter()
                .map(|v| text(v, "/name"))
                .collect::<Vec<_>>()),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if let Some(scale) = v.pointer("/subresources/scale") {
            let at = format!("spec.versions[{i}].subresources.scale");
            for (field, prefix) in [
                ("specReplicasPath", ".spec."),
                ("statusReplicasPath", ".status."),
            ] {
                let value = text(scale, &format!("/{field}"));
                if value.is_empty() {
                    out.push(FieldError::required(format!("{at}.{field}"), ""));
                } else if !value.starts_with(prefix) || value.len() == prefix.len() {
                    out.push(FieldError::invalid(
                        format!("{at}.{field}"),
                        value,
                        &format!(
                            "should be a json path under {}",
                            prefix.trim_end_matches('.')
                        ),
                    ));
                }
            }
            let selector = text(scale, "/labelSelectorPath");
            let under = selector.starts_with(".spec.") || selector.starts_with(".status.");
            if !selector.is_empty() && !under {
                out.push(FieldError::invalid(
                    format!("{at}.labelSelectorPath"),
                    selector,
                    "should be a json path under either .spec or .status",
                ));
            }
        }
        let path = format!("spec.versions[{i}].schema.openAPIV3Schema");
        match v.pointer("/schema/openAPIV3Schema") {
            None => out.push(FieldError::required(path, "schemas are required")),
            Some(schema) => {
                if schema.get("type").and_then(Value::as_str) != Some("object") {
                    out.push(FieldError::invalid(
                        format!("{path}.type"),
                        schema.get("type").cloned().unwrap_or(Value::Null),
                        "must be object at the root",
                    ));
                }
                structural(schema, &path, out);
            }
        }
    }
}

/// Every node of a structural schema has a type, unless it preserves unknown fields or
/// is an int-or-string.
fn structural(schema: &Value, path: &str, out: &mut Vec<FieldError>) {
    let Some(map) = schema.as_object() else {
        return;
    };
    let typed = map
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    let exempt = [
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-int-or-string",
    ]
    .iter()
    .any(|k| map.get(*k).and_then(Value::as_bool) == Some(true));
    if !typed && !exempt {
        out.push(FieldError::required(
            format!("{path}.type"),
            "must not be empty for specified object fields",
        ));
    }
    if map.contains_key("properties")
        && map
            .get("additionalProperties")
            .is_some_and(|a| a != &Value::Bool(false))
    {
        out.push(FieldError::forbidden(
            format!("{path}.additionalProperties"),
            "additionalProperties and properties are mutual exclusive",
        ));
    }
    for (name, prop) in map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        structural(prop, &format!("{path}.properties[{name}]"), out);
    }
    if let Some(items) = map.get("items") {
        structural(items, &format!("{path}.items"), out);
    }
    if let Some(a) = map.get("additionalProperties").filter(|a| a.is_object()) {
        structural(a, &format!("{path}.additionalProperties"), out);
    }
}

/// Starts the controller that serves what CRDs define (when a tokio runtime is at hand and
/// the server serves CRDs).
pub(crate) fn start(server: &Arc<ApiServer>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    if crds(server).is_none() {
        return;
    }
    let weak = Arc::downgrade(server);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match run(&weak).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "the CRD controller restarts"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

fn crds(server: &ApiServer) -> Option<ServedResource> {
    server
        .served()
        .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .cloned()
}

/// What the controller has done so far.
#[derive(Default)]
struct State {
    /// The spec each CRD was last served with, by CRD name.
    installed: std::collections::HashMap<String, Value>,
    /// Clean-ups of deleted CRDs under way, by CRD name.
    cleaning: std::collections::HashMap<String, tokio::task::JoinHandle<()>>,
}

/// Lists the CRDs, serves them, then follows their changes; returns `Ok` when the server
/// is gone.
async fn run(weak: &Weak<ApiServer>) -> Result<(), Error> {
    let Some(server) = weak.upgrade() else {
        return Ok(());
    };
    let Some(res) = crds(&server) else {
        return Ok(());
    };
    let mut state = State::default();
    let list = server.registry().list(&res, &ListParams::default()).await?;
    for crd in &list.items {
        reconcile(&server, &res, crd, &mut state).await;
    }
    let mut events = server
        .registry()
        .watch(
            &res,
            Selection::default(),
            Some(&list.resource_version),
            false,
        )
        .await?;
    drop(server);
    while let Some(event) = events.next().await {
        let Some(server) = weak.upgrade() else {
            return Ok(());
        };
        match event.kind {
            WatchEventType::Added | WatchEventType::Modified => {
                reconcile(&server, &res, &event.object, &mut state).await;
            }
            WatchEventType::Deleted => {
                state
                    .installed
                    .remove(text(&event.object, "/metadata/name"));
                server.uninstall(
                    text(&event.object, "/spec/group"),
                    text(&event.object, "/spec/names/plural"),
                );
            }
            WatchEventType::Bookmark => {}
            WatchEventType::Error => return Err(error_from_status_json(&event.object)),
        }
    }
    Err(Error::service_unavailable("the CRD watch ended"))
}

/// Brings the served resources and the CRD's status in line with the CRD.
async fn reconcile(server: &Arc<ApiServer>, res: &ServedResource, crd: &Value, state: &mut State) {
    let name = text(crd, "/metadata/name").to_owned();
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        if !strings(crd, "/metadata/finalizers")
            .iter()
            .any(|f| f == CLEANUP_FINALIZER)
        {
            return;
        }
        let busy = state.cleaning.get(&name).is_some_and(|h| !h.is_finished());
        if !busy {
            let (server, res, crd) = (server.clone(), res.clone(), crd.clone());
            let task_name = name.clone();
            let handle = tokio::spawn(async move {
                if let Err(e) = clean_up(&server, &res, &crd).await {
                    if !e.is_not_found() {
                        tracing::warn!(crd = %task_name, error = %e, "could not clean up the CRD");
                    }
                }
            });
            state.cleaning.insert(name, handle);
        }
        return;
    }
    let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
    if state.installed.get(&name) != Some(&spec) {
        server.install_kind(
            text(crd, "/spec/group"),
            text(crd, "/spec/names/plural"),
            served_resources(crd),
        );
        state.installed.insert(name.clone(), spec);
    }
    if let Err(e) = establish(server, res, crd).await {
        if !e.is_not_found() && !e.is_conflict() {
            tracing::warn!(crd = %name, error = %e, "could not reconcile the CRD");
        }
    }
}

async fn establish(
    server: &Arc<ApiServer>,
    res: &ServedResource,
    crd: &Value,
) -> Result<(), Error> {
    let name = text(crd, "/metadata/name");
    let registry = server.registry();
    if !strings(crd, "/metadata/finalizers")
        .iter()
        .any(|f| f == CLEANUP_FINALIZER)
    {
        let mut next = crd.clone();
        let finalizers = next["metadata"]
            .as_object_mut()
            .map(|m| m.entry("finalizers").or_insert_with(|| json!([])));
        if let Some(Value::Array(list)) = finalizers {
            list.push(json!(CLEANUP_FINALIZER));
        }
        registry.update(res, None, name, next, false).await?;
        // The update's own event brings the status next.
        return Ok(());
    }
    let storage = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .map(|v| text(v, "/name").to_owned())
        .unwrap_or_default();
    let mut stored = strings(crd, "/status/storedVersions");
    if !storage.is_empty() && !stored.contains(&storage) {
        stored.push(storage);
    }
    let now = crate::registry::now().to_string();
    let condition = |kind: &str, reason: &str, message: &str| {
        let since = crd
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| text(c, "/type") == kind && text(c, "/status") == "True")
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        json!({"type": kind, "status": "True", "lastTransitionTime": since, "reason": reason, "message": message})
    };
    let status = json!({
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or_else(|| json!({})),
        "storedVersions": stored,
    });
    if crd.get("status") == Some(&status) {
        return Ok(());
    }
    let mut next = crd.clone();
    next["status"] = status;
    registry
        .update_in_mode(res, None, name, next, UpdateMode::Status)
        .await?;
    Ok(())
}

/// A deleted CRD: stop taking new objects, delete the existing ones, then let the CRD go.
async fn clean_up(server: &Arc<ApiServer>, res: &ServedResource, crd: &Value) -> Result<(), Error> {
    let name = text(crd, "/metadata/name");
    let group = text(crd, "/spec/group");
    let plural = text(crd, "/spec/names/plural");
    let registry = server.registry();
    if let Some(objects) = served_resources(crd).into_iter().next() {
        loop {
            let list = registry.list(&objects, &ListParams::default()).await?;
            if list.items.is_empty() {
                break;
            }
            let mut waiting = false;
            for obj in &list.items {
                let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
                let n = text(obj, "/metadata/name");
                match registry
                    .delete(&objects, ns, n, &DeleteOptions::default())
                    .await
                {
                    Ok(left) if left.pointer("/metadata/deletionTimestamp").is_some() => {
                        waiting = true
                    }
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            if waiting {
                // Objects held by their own finalizers: look again shortly.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // Only this incarnation of the CRD: a CRD of the same name created since is not ours.
    let uid = text(crd, "/metadata/uid");
    let same = |current: &Value| {
        text(current, "/metadata/uid") == uid
            && current.pointer("/metadata/deletionTimestamp").is_some()
    };
    if !same(&*registry.get_shared(res, None, name).await?) {
        return Ok(());
    }
    server.uninstall(group, plural);
    for attempt in 0.. {
        let mut next = (*registry.get_shared(res, None, name).await?).clone();
        if !same(&next) {
            return Ok(());
        }
        if let Some(Value::Array(list)) = next.pointer_mut("/metadata/finalizers") {
            list.retain(|f| f != CLEANUP_FINALIZER);
        }
        match registry.update(res, None, name, next, false).await {
            Err(e) if e.is_conflict() && attempt < 5 => continue,
            other => return other.map(|_| ()),
        }
    }
    Ok(())
}
