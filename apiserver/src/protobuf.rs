//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), for the kinds kubectl
//! sends that way: `kubectl create namespace|configmap|secret|deployment|service|job|cronjob`.
//!
//! The body is Kubernetes' envelope — the magic `k8s\0`, then a `runtime.Unknown` whose
//! `raw` field holds the object — decoded with the `k8s-pb` crate (Kubernetes' protobuf
//! definitions built with prost) and turned into the object's JSON. Nothing is dropped
//! silently: the conversion moves each field it knows out of the decoded message, and if
//! anything is left (a field set that this server does not convert), the request is
//! refused with 415, asking for JSON, rather than stored without it.

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::batch::v1 as batch;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use keelson_core::Error;
use prost::Message;
use serde_json::{json, Map, Value};

/// The media type of protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// The JSON of a protobuf request body.
///
/// # Errors
/// 400 for a body that is not Kubernetes protobuf; 415 for a kind this server does not
/// decode from protobuf, or a body that sets fields it does not convert.
pub fn decode(body: &[u8]) -> Result<Value, Error> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| Error::bad_request("a protobuf body must start with the k8s\\0 magic"))?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(rest)
        .map_err(|e| Error::bad_request(format!("error decoding the protobuf envelope: {e}")))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let mut left = Vec::new();
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace(decode_as(&raw)?, &mut left),
        ("v1", "ConfigMap") => config_map(decode_as(&raw)?, &mut left),
        ("v1", "ServiceAccount") => service_account(decode_as(&raw)?, &mut left),
        ("v1", "Secret") => secret(decode_as(&raw)?, &mut left),
        ("v1", "Service") => service(decode_as(&raw)?, &mut left),
        ("apps/v1", "Deployment") => deployment(decode_as(&raw)?, &mut left),
        ("batch/v1", "Job") => job(decode_as(&raw)?, &mut left),
        ("batch/v1", "CronJob") => cron_job(decode_as(&raw)?, &mut left),
        ("authentication.k8s.io/v1", "TokenRequest") => token_request(decode_as(&raw)?, &mut left),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            access_review(decode_as(&raw)?, &mut left)
        }
        _ => return Err(unsupported(&format!("{api_version} {kind} bodies"))),
    };
    if !left.is_empty() {
        return Err(unsupported(&format!(
            "{kind} bodies that set {}",
            left.join(", ")
        )));
    }
    if let Some(m) = object.as_object_mut() {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
    Ok(object)
}

fn unsupported(what: &str) -> Error {
    Error::UnsupportedMediaType {
        message: format!(
            "this server does not decode protobuf {what}; send the object as application/json"
        ),
    }
}

fn decode_as<M: Message + Default>(raw: &[u8]) -> Result<M, Error> {
    M::decode(raw)
        .map_err(|e| Error::bad_request(format!("error decoding the protobuf object: {e}")))
}

/// Records, under `path`, that a message still holds fields after conversion.
fn leftover<M: Message>(m: &M, path: &str, left: &mut Vec<String>) {
    if m.encoded_len() > 0 {
        left.push(format!("fields of {path} this server does not convert"));
    }
}

/// A field Go marshals even when unset (not a pointer): its zero value means unset.
fn nz<T: Default + PartialEq>(v: Option<T>) -> Option<T> {
    v.filter(|x| *x != T::default())
}

/// Clears a field Go marshals even when unset, when it holds its zero value.
fn clear_if_zero<T: Default + PartialEq>(field: &mut Option<T>) {
    if field.as_ref().is_some_and(|v| *v == T::default()) {
        *field = None;
    }
}

/// Clears fields Go marshals even when unset, when they hold their zero value.
macro_rules! clear_zero {
    ($($field:expr),* $(,)?) => {
        $(clear_if_zero(&mut $field);)*
    };
}

fn put(out: &mut Map<String, Value>, key: &str, v: Value) {
    let empty = match &v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if !empty {
        out.insert(key.into(), v);
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn object_meta(mut m: meta::ObjectMeta, path: &str, left: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    put(&mut out, "name", json!(nz(m.name.take())));
    put(&mut out, "generateName", json!(nz(m.generate_name.take())));
    put(&mut out, "namespace", json!(nz(m.namespace.take())));
    put(&mut out, "labels", json!(std::mem::take(&mut m.labels)));
    put(
        &mut out,
        "annotations",
        json!(std::mem::take(&mut m.annotations)),
    );
    put(
        &mut out,
        "finalizers",
        json!(std::mem::take(&mut m.finalizers)),
    );
    let owners: Vec<Value> = std::mem::take(&mut m.owner_references)
        .into_iter()
        .map(|mut o| {
            let v = json!({
                "apiVersion": nz(o.api_version.take()), "kind": nz(o.kind.take()), "name": nz(o.name.take()),
                "uid": nz(o.uid.take()), "controller": o.controller.take(),
                "blockOwnerDeletion": o.block_owner_deletion.take(),
            });
            leftover(&o, &format!("{path}.ownerReferences"), left);
            v
        })
        .collect();
    put(&mut out, "ownerReferences", json!(owners));
    // Set by the server; a client's values are ignored on create anyway.
    m.creation_timestamp = None;
    m.resource_version = None;
    m.uid = None;
    m.self_link = None;
    m.generation = None;
    m.managed_fields.clear();
    leftover(&m, path, left);
    Value::Object(out)
}

fn metadata(m: Option<meta::ObjectMeta>, path: &str, left: &mut Vec<String>) -> Value {
    m.map_or_else(|| json!({}), |m| object_meta(m, path, left))
}

fn int_or_string(v: Option<IntOrString>) -> Value {
    match v {
        Some(IntOrString {
            r#type: Some(1),
            str_val,
            ..
        }) => json!(str_val.unwrap_or_default()),
        Some(IntOrString { int_val, .. }) => json!(int_val.unwrap_or(0)),
        None => Value::Null,
    }
}

fn namespace(mut ns: core::Namespace, left: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(ns.metadata.take(), "metadata", left),
    );
    if let Some(mut spec) = ns.spec.take() {
        put(
            &mut out,
            "spec",
            json!({"finalizers": std::mem::take(&mut spec.finalizers)}),
        );
        leftover(&spec, "spec", left);
    }
    // Status is the server's.
    ns.status = None;
    leftover(&ns, "Namespace", left);
    Value::Object(out)
}

fn service_account(mut sa: core::ServiceAccount, left: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(sa.metadata.take(), "metadata", left),
    );
    put(
        &mut out,
        "automountServiceAccountToken",
        json!(sa.automount_service_account_token.take()),
    );
    let mut pull = Vec::new();
    for mut r in std::mem::take(&mut sa.image_pull_secrets) {
        pull.push(json!({"name": r.name.take()}));
        leftover(&r, "imagePullSecrets", left);
    }
    if !pull.is_empty() {
        out.insert("imagePullSecrets".into(), Value::Array(pull));
    }
    leftover(&sa, "ServiceAccount", left);
    Value::Object(out)
}

fn config_map(mut cm: core::ConfigMap, left: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(cm.metadata.take(), "metadata", left),
    );
    put(&mut out, "data", json!(std::mem::take(&mut cm.data)));
    let binary: Map<String, Value> = std::mem::take(&mut cm.binary_data)
        .into_iter()
        .map(|(k, v)| (k, json!(base64(&v))))
        .collect();
    put(&mut out, "binaryData", Value::Object(binary));
    put(&mut out, "immutable", json!(cm.immutable.take()));
    leftover(&cm, "ConfigMap", left);
    Value::Object(out)
}

fn secret(mut s: core::Secret, left: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(s.metadata.take(), "metadata", left),
    );
    let data: Map<String, Value> = std::mem::take(&mut s.data)
        .into_iter()
        .map(|(k, v)| (k, json!(base64(&v))))
        .collect();
    put(&mut out, "data", Value::Object(data));
    put(
        &mut out,
        "stringData",
        json!(std::mem::take(&mut s.string_data)),
    );
    put(&mut out, "type", json!(nz(s.r#type.take())));
    put(&mut out, "immutable", json!(s.immutable.take()));
    leftover(&s, "Secret", left);
    Value::Object(out)
}

fn service(mut svc: core::Service, left: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(svc.metadata.take(), "metadata", left),
    );
    if let Some(mut spec) = svc.spec.take() {
        let mut s = Map::new();
        let ports: Vec<Value> = std::mem::take(&mut spec.ports)
            .into_iter()
            .map(|mut p| {
                let mut o = Map::new();
                put(&mut o, "name", json!(nz(p.name.take())));
                put(&mut o, "protocol", json!(nz(p.protocol.take())));
                put(&mut o, "appProtocol", json!(p.app_protocol.take()));
                put(&mut o, "port", json!(nz(p.port.take())));
                put(&mut o, "targetPort", int_or_string(p.target_port.take()));
                put(&mut o, "nodePort", json!(nz(p.node_port.take())));
                leftover(&p, "spec.ports", left);
                Value::Object(o)
            })
            .collect();
        put(&mut s, "ports", json!(ports));
        put(
            &mut s,
            "selector",
            json!(std::mem::take(&mut spec.selector)),
        );
        put(&mut s, "clusterIP", json!(nz(spec.cluster_ip.take())));
        put(
            &mut s,
            "clusterIPs",
            json!(std::mem::take(&mut spec.cluster_ips)),
        );
        put(&mut s, "type", json!(nz(spec.r#type.take())));
        put(&mut s, "externalName", json!(nz(spec.external_name.take())));
        put(
            &mut s,
            "externalIPs",
            json!(std::mem::take(&mut spec.external_ips)),
        );
        put(
            &mut s,
            "sessionAffinity",
            json!(nz(spec.session_affinity.take())),
        );
        put(
            &mut s,
            "externalTrafficPolicy",
            json!(nz(spec.external_traffic_policy.take())),
        );
        put(
            &mut s,
            "internalTrafficPolicy",
            json!(spec.internal_traffic_policy.take()),
        );
        put(
            &mut s,
            "ipFamilies",
            json!(std::mem::take(&mut spec.ip_families)),
        );
        put(
            &mut s,
            "ipFamilyPolicy",
            json!(spec.ip_family_policy.take()),
        );
        clear_zero!(
            spec.load_balancer_ip,
            spec.publish_not_ready_addresses,
            spec.health_check_node_port,
        );
        leftover(&spec, "spec", left);
        out.insert("spec".into(), Value::Object(s));
    }
    svc.status = None;
    leftover(&svc, "Service", left);
    Value::Object(out)
}

fn label_selector(mut sel: meta::LabelSelector, path: &str, left: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    put(
        &mut out,
        "matchLabels",
        json!(std::mem::take(&mut sel.match_labels)),
    );
    let exprs: Vec<Value> = std::mem::take(&mut sel.match_expressions)
        .into_iter()
        .map(|mut r| {
            let v = json!({"key": nz(r.key.take()), "operator": nz(r.operator.take()),
                           "values": std::mem::take(&mut r.values)});
            leftover(&r, path, left);
            v
        })
        .collect();
    put(&mut out, "matchExpressions", json!(exprs));
    leftover(&sel, path, left);
    Value::Object(out)
}

fn container(mut c: core::Container, path: &str, left: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    put(&mut out, "name", json!(nz(c.name.take())));
    put(&mut out, "image", json!(nz(c.image.take())));
    put(&mut out, "command", json!(std::mem::take(&mut c.command)));
    put(&mut out, "args", json!(std::mem::take(&mut c.args)));
    put(&mut out, "workingDir", json!(nz(c.working_dir.take())));
    let ports: Vec<Value> = std::mem::take(&mut c.ports)
        .into_iter()
        .map(|mut p| {
            let mut o = Map::new();
            put(&mut o, "name", json!(nz(p.name.take())));
            put(&mut o, "containerPort", json!(nz(p.container_port.take())));
            put(&mut o, "hostPort", json!(nz(p.host_port.take())));
            put(&mut o, "protocol", json!(nz(p.protocol.take())));
            put(&mut o, "hostIP", json!(nz(p.host_ip.take())));
            leftover(&p, &format!("{path}.ports"), left);
            Value::Object(o)
        })
        .collect();
    put(&mut out, "ports", json!(ports));
    let env: Vec<Value> = std::mem::take(&mut c.env)
        .into_iter()
        .map(|mut e| {
            let v = json!({"name": nz(e.name.take()), "value": nz(e.value.take())});
            leftover(&e, &format!("{path}.env"), left);
            v
        })
        .collect();
    put(&mut out, "env", json!(env));
    if let Some(mut r) = c.resources.take() {
        let quantities = |m: std::collections::BTreeMap<
            String,
            k8s_pb::apimachinery::pkg::api::resource::Quantity,
        >|
         -> Value {
            Value::Object(
                m.into_iter()
                    .map(|(k, q)| (k, json!(q.string.unwrap_or_default())))
                    .collect(),
            )
        };
        let mut o = Map::new();
        put(&mut o, "limits", quantities(std::mem::take(&mut r.limits)));
        put(
            &mut o,
            "requests",
            quantities(std::mem::take(&mut r.requests)),
        );
        leftover(&r, &format!("{path}.resources"), left);
        out.insert("resources".into(), Value::Object(o));
    }
    put(
        &mut out,
        "imagePullPolicy",
        json!(nz(c.image_pull_policy.take())),
    );
    put(
        &mut out,
        "terminationMessagePath",
        json!(nz(c.termination_message_path.take())),
    );
    put(
        &mut out,
        "terminationMessagePolicy",
        json!(nz(c.termination_message_policy.take())),
    );
    put(&mut out, "stdin", json!(nz(c.stdin.take())));
    put(&mut out, "stdinOnce", json!(nz(c.stdin_once.take())));
    put(&mut out, "tty", json!(nz(c.tty.take())));
    leftover(&c, path, left);
    Value::Object(out)
}

fn pod_spec(mut p: core::PodSpec, left: &mut Vec<String>) -> Value {
    let path = "spec.template.spec";
    let mut out = Map::new();
    let containers: Vec<Value> = std::mem::take(&mut p.containers)
        .into_iter()
        .map(|c| container(c, &format!("{path}.containers"), left))
        .collect();
    put(&mut out, "containers", json!(containers));
    put(
        &mut out,
        "restartPolicy",
        json!(nz(p.restart_policy.take())),
    );
    put(
        &mut out,
        "terminationGracePeriodSeconds",
        json!(p.termination_grace_period_seconds.take()),
    );
    put(&mut out, "dnsPolicy", json!(nz(p.dns_policy.take())));
    put(
        &mut out,
        "schedulerName",
        json!(nz(p.scheduler_name.take())),
    );
    put(
        &mut out,
        "serviceAccountName",
        json!(nz(p.service_account_name.take())),
    );
    clear_zero!(
        p.service_account,
        p.node_name,
        p.host_network,
        p.host_pid,
        p.host_ipc,
        p.hostname,
        p.subdomain,
        p.priority_class_name,
    );
    put(
        &mut out,
        "nodeSelector",
        json!(std::mem::take(&mut p.node_selector)),
    );
    // An empty security context is what the generators send.
    if p.security_context
        .as_ref()
        .is_some_and(|s| s.encoded_len() == 0)
    {
        p.security_context = None;
        out.insert("securityContext".into(), json!({}));
    }
    leftover(&p, path, left);
    Value::Object(out)
}

fn deployment(mut d: apps::Deployment, left: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(d.metadata.take(), "metadata", left),
    );
    if let Some(mut spec) = d.spec.take() {
        let mut s = Map::new();
        put(&mut s, "replicas", json!(spec.replicas.take()));
        if let Some(sel) = spec.selector.take() {
            s.insert(
                "selector".into(),
                label_selector(sel, "spec.selector", left),
            );
        }
        if let Some(mut t) = spec.template.take() {
            let mut tmpl = Map::new();
            tmpl.insert(
                "metadata".into(),
                metadata(t.metadata.take(), "spec.template.metadata", left),
            );
            if let Some(ps) = t.spec.take() {
                tmpl.insert("spec".into(), pod_spec(ps, left));
            }
            leftover(&t, "spec.template", left);
            s.insert("template".into(), Value::Object(tmpl));
        }
        if let Some(mut st) = spec.strategy.take() {
            let mut o = Map::new();
            put(&mut o, "type", json!(nz(st.r#type.take())));
            if let Some(mut ru) = st.rolling_update.take() {
                let mut r = Map::new();
                put(
                    &mut r,
                    "maxUnavailable",
                    int_or_string(ru.max_unavailable.take()),
                );
                put(&mut r, "maxSurge", int_or_string(ru.max_surge.take()));
                leftover(&ru, "spec.strategy.rollingUpdate", left);
                o.insert("rollingUpdate".into(), Value::Object(r));
            }
            leftover(&st, "spec.strategy", left);
            s.insert("strategy".into(), Value::Object(o));
        }
        put(
            &mut s,
            "minReadySeconds",
            json!(nz(spec.min_ready_seconds.take())),
        );
        put(
            &mut s,
            "revisionHistoryLimit",
            json!(spec.revision_history_limit.take()),
        );
        put(&mut s, "paused", json!(nz(spec.paused.take())));
        put(
            &mut s,
            "progressDeadlineSeconds",
            json!(spec.progress_deadline_seconds.take()),
        );
        leftover(&spec, "spec", left);
        out.insert("spec".into(), Value::Object(s));
    }
    d.status = None;
    leftover(&d, "Deployment", left);
    Value::Object(out)
}

fn pod_template(mut t: core::PodTemplateSpec, path: &str, left: &mut Vec<String>) -> Value {
    let mut tmpl = Map::new();
    tmpl.insert(
        "metadata".into(),
        metadata(t.metadata.take(), &format!("{path}.metadata"), left),
    );
    if let Some(ps) = t.spec.take() {
        tmpl.insert("spec".into(), pod_spec(ps, left));
    }
    leftover(&t, path, left);
    Value::Object(tmpl)
}

fn job_spec(mut spec: batch::JobSpec, path: &str, left: &mut Vec<String>) -> Value {
    let mut s = Map::new();
    put(&mut s, "parallelism", json!(spec.parallelism.take()));
    put(&mut s, "completions", json!(spec.completions.take()));
    put(
        &mut s,
        "activeDeadlineSeconds",
        json!(spec.active_deadline_seconds.take()),
    );
    put(&mut s, "backoffLimit", json!(spec.backoff_limit.take()));
    if let Some(sel) = spec.selector.take() {
        s.insert(
            "selector".into(),
            label_selector(sel, &format!("{path}.selector"), left),
        );
    }
    put(&mut s, "manualSelector", json!(spec.manual_selector.take()));
    if let Some(t) = spec.template.take() {
        s.insert(
            "template".into(),
            pod_template(t, &format!("{path}.template"), left),
        );
    }
    put(
        &mut s,
        "ttlSecondsAfterFinished",
        json!(spec.ttl_seconds_after_finished.take()),
    );
    put(
        &mut s,
        "completionMode",
        json!(nz(spec.completion_mode.take())),
    );
    put(&mut s, "suspend", json!(spec.suspend.take()));
    put(
        &mut s,
        "podReplacementPolicy",
        json!(nz(spec.pod_replacement_policy.take())),
    );
    put(&mut s, "managedBy", json!(nz(spec.managed_by.take())));
    leftover(&spec, path, left);
    Value::Object(s)
}

fn job(mut j: batch::Job, left: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(j.metadata.take(), "metadata", left),
    );
    if let Some(spec) = j.spec.take() {
        out.insert("spec".into(), job_spec(spec, "spec", left));
    }
    j.status = None;
    leftover(&j, "Job", left);
    Value::Object(out)
}

fn cron_job(mut c: batch::CronJob, left: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(c.metadata.take(), "metadata", left),
    );
    if let Some(mut spec) = c.spec.take() {
        let mut s = Map::new();
        put(&mut s, "schedule", json!(nz(spec.schedule.take())));
        put(&mut s, "timeZone", json!(spec.time_zone.take()));
        put(
            &mut s,
            "startingDeadlineSeconds",
            json!(spec.starting_deadline_seconds.take()),
        );
        put(
            &mut s,
            "concurrencyPolicy",
            json!(nz(spec.concurrency_policy.take())),
        );
        put(&mut s, "suspend", json!(spec.suspend.take()));
        if let Some(mut t) = spec.job_template.take() {
            let mut o = Map::new();
            o.insert(
                "metadata".into(),
                metadata(t.metadata.take(), "spec.jobTemplate.metadata", left),
            );
            if let Some(js) = t.spec.take() {
                o.insert("spec".into(), job_spec(js, "spec.jobTemplate.spec", left));
            }
            leftover(&t, "spec.jobTemplate", left);
            s.insert("jobTemplate".into(), Value::Object(o));
        }
        put(
            &mut s,
            "successfulJobsHistoryLimit",
            json!(spec.successful_jobs_history_limit.take()),
        );
        put(
            &mut s,
            "failedJobsHistoryLimit",
            json!(spec.failed_jobs_history_limit.take()),
        );
        leftover(&spec, "spec", left);
        out.insert("spec".into(), Value::Object(s));
    }
    c.status = None;
    leftover(&c, "CronJob", left);
    Value::Object(out)
}

fn token_request(
    mut r: k8s_pb::api::authentication::v1::TokenRequest,
    left: &mut Vec<String>,
) -> Value {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(r.metadata.take(), "metadata", left),
    );
    let mut spec = Map::new();
    if let Some(mut s) = r.spec.take() {
        put(
            &mut spec,
            "audiences",
            json!(std::mem::take(&mut s.audiences)),
        );
        put(
            &mut spec,
            "expirationSeconds",
            json!(s.expiration_seconds.take()),
        );
        if let Some(mut b) = s.bound_object_ref.take() {
            let mut o = Map::new();
            put(&mut o, "kind", json!(nz(b.kind.take())));
            put(&mut o, "apiVersion", json!(nz(b.api_version.take())));
            put(&mut o, "name", json!(nz(b.name.take())));
            put(&mut o, "uid", json!(nz(b.u_id.take())));
            leftover(&b, "spec.boundObjectRef", left);
            spec.insert("boundObjectRef".into(), Value::Object(o));
        }
        leftover(&s, "spec", left);
    }
    out.insert("spec".into(), Value::Object(spec));
    // Status is the server's answer.
    r.status = None;
    leftover(&r, "TokenRequest", left);
    Value::Object(out)
}

fn access_review(
    mut r: k8s_pb::api::authorization::v1::SelfSubjectAccessReview,
    left: &mut Vec<String>,
) -> Value {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(r.metadata.take(), "metadata", left),
    );
    let mut spec = Map::new();
    if let Some(mut s) = r.spec.take() {
        if let Some(mut a) = s.resource_attributes.take() {
            let mut o = Map::new();
            put(&mut o, "namespace", json!(nz(a.namespace.take())));
            put(&mut o, "verb", json!(nz(a.verb.take())));
            put(&mut o, "group", json!(nz(a.group.take())));
            put(&mut o, "version", json!(nz(a.version.take())));
            put(&mut o, "resource", json!(nz(a.resource.take())));
            put(&mut o, "subresource", json!(nz(a.subresource.take())));
            put(&mut o, "name", json!(nz(a.name.take())));
            leftover(&a, "spec.resourceAttributes", left);
            spec.insert("resourceAttributes".into(), Value::Object(o));
        }
        if let Some(mut a) = s.non_resource_attributes.take() {
            let o = json!({"path": nz(a.path.take()), "verb": nz(a.verb.take())});
            leftover(&a, "spec.nonResourceAttributes", left);
            spec.insert("nonResourceAttributes".into(), o);
        }
        leftover(&s, "spec", left);
    }
    out.insert("spec".into(), Value::Object(spec));
    r.status = None;
    leftover(&r, "SelfSubjectAccessReview", left);
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    fn meta(name: &str) -> Option<meta::ObjectMeta> {
        Some(meta::ObjectMeta {
            name: Some(name.into()),
            creation_timestamp: Some(meta::Time::default()),
            ..meta::ObjectMeta::default()
        })
    }

    #[test]
    fn a_secret_and_a_deployment_decode_to_their_json() {
        let secret = core::Secret {
            metadata: meta("s"),
            data: [("k".to_owned(), b"v".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..core::Secret::default()
        };
        let v = decode(&envelope("v1", "Secret", secret.encode_to_vec())).expect("decode");
        assert_eq!(
            v,
            json!({"metadata": {"name": "s"}, "data": {"k": "dg=="}, "type": "Opaque",
                             "apiVersion": "v1", "kind": "Secret"})
        );

        let d = apps::Deployment {
            metadata: meta("web"),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(2),
                selector: Some(meta::LabelSelector {
                    match_labels: [("app".to_owned(), "web".to_owned())].into(),
                    ..meta::LabelSelector::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels: [("app".to_owned(), "web".to_owned())].into(),
                        ..meta::ObjectMeta::default()
                    }),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: Some("nginx".into()),
                            image: Some("nginx".into()),
                            resources: Some(core::ResourceRequirements::default()),
                            ..core::Container::default()
                        }],
                        ..core::PodSpec::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy::default()),
                ..apps::DeploymentSpec::default()
            }),
            status: Some(apps::DeploymentStatus::default()),
        };
        let v = decode(&envelope("apps/v1", "Deployment", d.encode_to_vec())).expect("decode");
        assert_eq!(v["spec"]["replicas"], 2);
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx"
        );
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
    }

    #[test]
    fn fields_that_are_not_converted_are_refused_not_dropped() {
        let d = apps::Deployment {
            metadata: meta("web"),
            spec: Some(apps::DeploymentSpec {
                template: Some(core::PodTemplateSpec {
                    metadata: None,
                    spec: Some(core::PodSpec {
                        host_network: Some(true),
                        ..core::PodSpec::default()
                    }),
                }),
                ..apps::DeploymentSpec::default()
            }),
            status: None,
        };
        let e = decode(&envelope("apps/v1", "Deployment", d.encode_to_vec())).expect_err("refused");
        assert_eq!(e.code(), 415, "{e}");
        assert!(e.to_string().contains("spec.template.spec"), "{e}");
        let e = decode(&envelope("v1", "Pod", Vec::new())).expect_err("kind");
        assert_eq!(e.code(), 415);
        assert_eq!(decode(b"nope").expect_err("magic").code(), 400);
        assert_eq!(decode(b"k8s\0\xff\xff").expect_err("garbage").code(), 400);
    }
    #[test]
    fn a_job_and_a_cron_job_decode_to_their_json() {
        let spec = batch::JobSpec {
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta::default()),
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: Some("once".into()),
                        image: Some("busybox".into()),
                        command: vec!["sh".into(), "-c".into(), "exit 0".into()],
                        resources: Some(core::ResourceRequirements::default()),
                        ..core::Container::default()
                    }],
                    restart_policy: Some("Never".into()),
                    ..core::PodSpec::default()
                }),
            }),
            ..batch::JobSpec::default()
        };
        let j = batch::Job {
            metadata: meta("once"),
            spec: Some(spec.clone()),
            status: Some(batch::JobStatus::default()),
        };
        let v = decode(&envelope("batch/v1", "Job", j.encode_to_vec())).expect("decode");
        assert_eq!(v["kind"], "Job");
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(
            pod["containers"][0]["command"],
            json!(["sh", "-c", "exit 0"])
        );
        let c = batch::CronJob {
            metadata: meta("tick"),
            spec: Some(batch::CronJobSpec {
                schedule: Some("*/5 * * * *".into()),
                job_template: Some(batch::JobTemplateSpec {
                    metadata: meta("tick"),
                    spec: Some(spec),
                }),
                ..batch::CronJobSpec::default()
            }),
            status: Some(batch::CronJobStatus::default()),
        };
        let v = decode(&envelope("batch/v1", "CronJob", c.encode_to_vec())).expect("decode");
        assert_eq!(v["spec"]["schedule"], "*/5 * * * *");
        assert_eq!(
            v["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"],
            "busybox"
        );
    }
}
