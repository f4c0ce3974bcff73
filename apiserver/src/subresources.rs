//! The subresources that are not the object itself: `scale` (an `autoscaling/v1` `Scale`
//! view of a workload's replicas), `binding` (a pod placed on a node) and `eviction` (a pod
//! deleted only if its PodDisruptionBudgets allow it).
//!
//! Each reads the object, changes it as Kubernetes' registry does, and writes it back
//! through [`Registry::update_in_mode`] with the version it read, so a concurrent writer
//! gets a clean conflict (retried here, as Kubernetes retries it).

use std::sync::{Arc, OnceLock};

use keelson_core::k8s_openapi::api::policy::v1::PodDisruptionBudget;
use keelson_core::{Error, FieldError, LabelSelector};
use serde_json::{json, Map, Value};

use crate::patch::PatchType;
use crate::registry::{DeleteOptions, ListParams, Registry, Selection, UpdateMode};
use crate::resources::{ScalePaths, ServedResource};

/// How often a read-modify-write is retried when another writer gets in between.
const RETRIES: usize = 5;

fn no_scale(res: &ServedResource) -> Error {
    Error::NotFound {
        resource: res.rt.group_resource(),
        name: String::new(),
        message: "the server could not find the requested resource".into(),
    }
}

fn resource_version(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The label selector of a built-in workload's pods, as Kubernetes formats it for
/// `Scale.status.selector` (`app=web`, `tier in (a,b)`).
fn workload_selector(obj: &Value) -> String {
    let Some(selector) = obj.pointer("/spec/selector") else {
        return String::new();
    };
    // ReplicationControllers select by a plain map.
    if selector.get("matchLabels").is_none() && selector.get("matchExpressions").is_none() {
        let labels = selector
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        return LabelSelector::from_labels(&labels)
            .map(|s| s.to_string())
            .unwrap_or_default();
    }
    serde_json::from_value(selector.clone())
        .ok()
        .and_then(|s| LabelSelector::from_k8s(&s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// The `Scale` of an object.
fn scale_of(paths: &ScalePaths, obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut scale_meta = Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(field) {
            scale_meta.insert(field.into(), v.clone());
        }
    }
    let selector = match &paths.label_selector {
        Some(path) => obj
            .pointer(path)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        None => workload_selector(obj),
    };
    let mut status = json!({
        "replicas": obj.pointer(&paths.status_replicas).and_then(Value::as_i64).unwrap_or(0),
    });
    if !selector.is_empty() {
        status["selector"] = json!(selector);
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": obj.pointer(&paths.spec_replicas).and_then(Value::as_i64).unwrap_or(0)},
        "status": status,
    })
}

/// Writes `value` at a JSON pointer, making the objects on the way.
fn set_pointer(obj: &mut Value, pointer: &str, value: Value) {
    let mut cur = obj;
    let tokens: Vec<&str> = pointer.split('/').skip(1).collect();
    for (i, t) in tokens.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Some(map) = cur.as_object_mut() else {
            return;
        };
        if i + 1 == tokens.len() {
            map.insert((*t).to_owned(), value);
            return;
        }
        cur = map.entry(*t).or_insert_with(|| json!({}));
    }
}

fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

fn pdbs() -> &'static ServedResource {
    static PDBS: OnceLock<ServedResource> = OnceLock::new();
    PDBS.get_or_init(|| ServedResource::of::<PodDisruptionBudget>().with_status())
}

impl Registry {
    /// The `Scale` of a workload (`GET .../scale`).
    ///
    /// # Errors
    /// 404 when the object, or the kind's scale subresource, does not exist.
    pub async fn get_scale(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, Error> {
        let paths = res.scale.as_ref().ok_or_else(|| no_scale(res))?;
        let obj = self.get_shared(res, namespace, name).await?;
        Ok(scale_of(paths, &obj))
    }

    /// Sets a workload's replicas from a `Scale` (`PUT .../scale`). A
    /// `metadata.resourceVersion` in the Scale must be the object's current one.
    ///
    /// # Errors
    /// 422 for replicas that are missing or negative; 409 on a stale version; 404.
    pub async fn update_scale(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
        scale: &Value,
    ) -> Result<Value, Error> {
        let paths = res.scale.as_ref().ok_or_else(|| no_scale(res))?;
        let invalid = |value: Value, detail: &str| {
            Error::invalid(
                ("autoscaling", "Scale"),
                name,
                vec![FieldError::invalid("spec.replicas", value, detail)],
            )
        };
        let replicas = match scale.pointer("/spec/replicas") {
            Some(v) => match v.as_i64() {
                Some(n) if n < 0 => {
                    return Err(invalid(v.clone(), "must be greater than or equal to 0"))
                }
                Some(n) if n > i64::from(i32::MAX) => {
                    return Err(invalid(v.clone(), "must be a 32-bit integer"))
                }
                Some(n) => n,
                None => return Err(invalid(v.clone(), "must be an integer")),
            },
            None => 0,
        };
        let pinned = resource_version(scale).map(str::to_owned);
        for attempt in 0.. {
            let mut obj = (*self.get_shared(res, namespace, name).await?).clone();
            if let Some(rv) = &pinned {
                if resource_version(&obj) != Some(rv) {
                    return Err(Error::conflict_modified(&res.rt, name));
                }
            }
            set_pointer(&mut obj, &paths.spec_replicas, json!(replicas));
            match self
                .update_in_mode(res, namespace, name, obj, UpdateMode::Object)
                .await
            {
                Ok(updated) => return Ok(scale_of(paths, &updated)),
                Err(e) if e.is_conflict() && pinned.is_none() && attempt < RETRIES => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    /// Patches a workload's `Scale` (`PATCH .../scale`; a strategic merge patch merges as
    /// a JSON merge patch, the Scale having no lists).
    ///
    /// # Errors
    /// As [`Registry::update_scale`], plus the patch's own errors.
    pub async fn patch_scale(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch: &Value,
    ) -> Result<Value, Error> {
        let patch_type = match patch_type {
            PatchType::Strategic => PatchType::Merge,
            other => other,
        };
        let pinned = patch.pointer("/metadata/resourceVersion").is_some();
        for attempt in 0.. {
            let mut scale = self.get_scale(res, namespace, name).await?;
            patch_type.apply(res, &mut scale, patch)?;
            match self.update_scale(res, namespace, name, &scale).await {
                Err(e) if e.is_conflict() && !pinned && attempt < RETRIES => continue,
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    /// Binds a pod to a node (`POST .../pods/NAME/binding`): sets `spec.nodeName` and
    /// the PodScheduled condition, as the scheduler's bind does. Answers a `Status` of
    /// success.
    ///
    /// # Errors
    /// 409 when the pod is already bound or being deleted; 400 when the Binding names
    /// another pod; 422 without a target node; 404.
    pub async fn bind(
        &self,
        pods: &ServedResource,
        namespace: Option<&str>,
        name: &str,
        binding: &Value,
    ) -> Result<Value, Error> {
        if let Some(other) = binding
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty() && *n != name)
        {
            return Err(Error::bad_request(format!(
                "name in URL ({name}) does not match name in Binding object ({other})"
            )));
        }
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                Error::invalid(
                    ("", "Binding"),
                    name,
                    vec![FieldError::required("target.name", "")],
                )
            })?;
        if let Some(kind) = binding
            .pointer("/target/kind")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty() && *k != "Node")
        {
            return Err(Error::invalid(
                ("", "Binding"),
                name,
                vec![FieldError::not_supported("target.kind", kind, &["Node"])],
            ));
        }
        for attempt in 0.. {
            let current = self.get_shared(pods, namespace, name).await?;
            let revision = current
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|rv| rv.parse().ok())
                .ok_or_else(|| Error::internal(format!("pod {name} has no resourceVersion")))?;
            let mut pod = (*current).clone();
            if pod.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(Error::conflict(
                    &pods.rt,
                    name,
                    format!("pod {name} is being deleted, cannot be assigned to a host"),
                ));
            }
            if let Some(bound) = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                return Err(Error::conflict(
                    &pods.rt,
                    name,
                    format!("pod {name} is already assigned to node \"{bound}\""),
                ));
            }
            set_pointer(&mut pod, "/spec/nodeName", json!(node));
            for (k, v) in binding
                .pointer("/metadata/annotations")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                set_pointer(
                    &mut pod,
                    &format!(
                        "/metadata/annotations/{}",
                        k.replace('~', "~0").replace('/', "~1")
                    ),
                    v.clone(),
                );
            }
            set_condition(
                &mut pod,
                json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                       "lastTransitionTime": crate::registry::now().to_string()}),
            );
            match self
                .replace_as_server(pods, namespace, name, &current, pod, revision)
                .await
            {
                Ok(_) => return Ok(success(201)),
                Err(e) if e.is_conflict() && attempt < RETRIES => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    /// Evicts a pod (`POST .../pods/NAME/eviction`): deletes it with the Eviction's
    /// delete options if every PodDisruptionBudget that selects it allows one more
    /// disruption, and records the disruption in the budget's status.
    ///
    /// # Errors
    /// 429 when a budget does not allow it (kubectl drain retries); 500 when more than
    /// one budget selects the pod (as Kubernetes); 404.
    pub async fn evict(
        &self,
        pods: &ServedResource,
        namespace: Option<&str>,
        name: &str,
        eviction: &Value,
    ) -> Result<Value, Error> {
        let options = delete_options(eviction.get("deleteOptions"))?;
        let pod = self.get_shared(pods, namespace, name).await?;
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        let terminal = matches!(phase, Some("Succeeded" | "Failed"));
        let deleting = pod.pointer("/metadata/deletionTimestamp").is_some();
        if !terminal && !deleting {
            self.charge_budget(namespace, name, &pod).await?;
        }
        self.delete(pods, namespace, name, &options).await?;
        Ok(success(201))
    }

    /// Takes one disruption from the budget that selects the pod, if any.
    async fn charge_budget(
        &self,
        namespace: Option<&str>,
        pod_name: &str,
        pod: &Value,
    ) -> Result<(), Error> {
        let labels = pod
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        for attempt in 0.. {
            let budgets = self
                .list(
                    pdbs(),
                    &ListParams {
                        selection: Selection {
                            namespace: namespace.map(str::to_owned),
                            ..Selection::default()
                        },
                        ..ListParams::default()
                    },
                )
                .await?;
            let matching: Vec<&Arc<Value>> = budgets
                .items
                .iter()
                .filter(|b| {
                    b.pointer("/spec/selector")
                        .and_then(|s| serde_json::from_value(s.clone()).ok())
                        .and_then(|s| LabelSelector::from_k8s(&s).ok())
                        .is_some_and(|s| !s.is_empty() && s.matches(&labels))
                })
                .collect();
            let budget = match matching.as_slice() {
                [] => return Ok(()),
                [one] => (***one).clone(),
                _ => {
                    return Err(Error::internal(
                        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                    ))
                }
            };
            let budget_name = budget
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let observed = budget
                .pointer("/status/observedGeneration")
                .and_then(Value::as_i64);
            let generation = budget
                .pointer("/metadata/generation")
                .and_then(Value::as_i64);
            let allowed = budget
                .pointer("/status/disruptionsAllowed")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if observed.is_none() || observed < generation || allowed < 1 {
                let why = if allowed < 1 {
                    format!(
                        "The disruption budget {budget_name} needs {} healthy pods and has {} currently",
                        budget.pointer("/status/desiredHealthy").and_then(Value::as_i64).unwrap_or(0),
                        budget.pointer("/status/currentHealthy").and_then(Value::as_i64).unwrap_or(0)
                    )
                } else {
                    format!("The disruption budget {budget_name} is still being processed by the server.")
                };
                return Err(Error::TooManyRequests {
                    message: format!(
                        "Cannot evict pod as it would violate the pod's disruption budget. {why}"
                    ),
                    retry_after_seconds: Some(10),
                });
            }
            let mut next = budget;
            set_pointer(&mut next, "/status/disruptionsAllowed", json!(allowed - 1));
            set_pointer(
                &mut next,
                &format!("/status/disruptedPods/{pod_name}"),
                json!(crate::registry::now().to_string()),
            );
            match self
                .update_in_mode(pdbs(), namespace, &budget_name, next, UpdateMode::Status)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() && attempt < RETRIES => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }
}

/// The DeleteOptions inside an Eviction.
fn delete_options(v: Option<&Value>) -> Result<DeleteOptions, Error> {
    let mut options = DeleteOptions::default();
    match v.filter(|v| !v.is_null()) {
        None => {}
        Some(v) if v.is_object() => crate::rest::delete_options_from_json(v, &mut options)?,
        Some(_) => return Err(Error::bad_request("deleteOptions must be an object")),
    }
    Ok(options)
}

/// Sets a pod condition, replacing one of the same type.
fn set_condition(pod: &mut Value, condition: Value) {
    let kind = condition.get("type").cloned();
    let Some(status) = pod
        .as_object_mut()
        .map(|m| m.entry("status").or_insert_with(|| json!({})))
    else {
        return;
    };
    let Some(status) = status.as_object_mut() else {
        return;
    };
    let conditions = status.entry("conditions").or_insert_with(|| json!([]));
    if let Value::Array(list) = conditions {
        list.retain(|c| c.get("type") != kind.as_ref());
        list.push(condition);
    }
}
