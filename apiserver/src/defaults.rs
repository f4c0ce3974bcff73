//! Defaulting: the fields Kubernetes fills in when a client leaves them out, for the
//! built-in kinds whose defaults clients and controllers rely on. Applied on every create
//! and update, as Kubernetes applies defaults whenever it decodes an object.
//!
//! Pods (and every pod template): `restartPolicy: Always`, `terminationGracePeriodSeconds:
//! 30`, `dnsPolicy: ClusterFirst`, `schedulerName: default-scheduler`,
//! `securityContext: {}`, and per container `terminationMessagePath`,
//! `terminationMessagePolicy`, `imagePullPolicy` (`Always` for `:latest` or an untagged
//! image, else `IfNotPresent`) and port protocols. Deployments: `replicas: 1`, the
//! `RollingUpdate` strategy with 25%/25%, `revisionHistoryLimit: 10`,
//! `progressDeadlineSeconds: 600`. ReplicaSets, StatefulSets, DaemonSets and Jobs: their
//! counters and strategies. Services: `type: ClusterIP`, `sessionAffinity: None`, port
//! protocols and `targetPort`.
//!
//! On create only, pods also get what Kubernetes' DefaultTolerationSeconds admission
//! adds ([`on_create`]): tolerations of the `node.kubernetes.io/not-ready` and
//! `node.kubernetes.io/unreachable` `NoExecute` taints for 300 s, unless the pod already
//! tolerates them — so its pods leave a lost node five minutes after the node lifecycle
//! controller taints it.

use serde_json::{json, Map, Value};

fn obj(v: &mut Value) -> Option<&mut Map<String, Value>> {
    v.as_object_mut()
}

/// Sets `field` to `value` when it is absent or null.
fn default(map: &mut Map<String, Value>, field: &str, value: Value) {
    match map.get(field) {
        Some(v) if !v.is_null() => {}
        _ => {
            map.insert(field.to_owned(), value);
        }
    }
}

/// The object at `field`, created empty when absent.
fn child<'a>(map: &'a mut Map<String, Value>, field: &str) -> Option<&'a mut Map<String, Value>> {
    if !map.get(field).is_some_and(Value::is_object) {
        map.insert(field.to_owned(), json!({}));
    }
    map.get_mut(field).and_then(Value::as_object_mut)
}

/// Applies the defaults of `group`/`kind` to `object` in place.
pub fn apply(group: &str, kind: &str, object: &mut Value) {
    let Some(root) = obj(object) else { return };
    match (group, kind) {
        ("", "Pod") => {
            if let Some(spec) = child(root, "spec") {
                pod_spec(spec);
            }
        }
        ("", "Service") => {
            if let Some(spec) = child(root, "spec") {
                service_spec(spec);
            }
        }
        ("", "ReplicationController") | ("apps", "ReplicaSet") => {
            if let Some(spec) = child(root, "spec") {
                default(spec, "replicas", json!(1));
                template(spec);
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = child(root, "spec") {
                default(spec, "replicas", json!(1));
                default(spec, "revisionHistoryLimit", json!(10));
                default(spec, "progressDeadlineSeconds", json!(600));
                if let Some(strategy) = child(spec, "strategy") {
                    default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        if let Some(ru) = child(strategy, "rollingUpdate") {
                            default(ru, "maxSurge", json!("25%"));
                            default(ru, "maxUnavailable", json!("25%"));
                        }
                    }
                }
                template(spec);
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(spec) = child(root, "spec") {
                default(spec, "replicas", json!(1));
                default(spec, "podManagementPolicy", json!("OrderedReady"));
                default(spec, "revisionHistoryLimit", json!(10));
                if let Some(strategy) = child(spec, "updateStrategy") {
                    default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        if let Some(ru) = child(strategy, "rollingUpdate") {
                            default(ru, "partition", json!(0));
                        }
                    }
                }
                template(spec);
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = child(root, "spec") {
                default(spec, "revisionHistoryLimit", json!(10));
                if let Some(strategy) = child(spec, "updateStrategy") {
                    default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        if let Some(ru) = child(strategy, "rollingUpdate") {
                            default(ru, "maxUnavailable", json!(1));
                            default(ru, "maxSurge", json!(0));
                        }
                    }
                }
                template(spec);
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = child(root, "spec") {
                job_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = child(root, "spec") {
                default(spec, "concurrencyPolicy", json!("Allow"));
                default(spec, "suspend", json!(false));
                default(spec, "successfulJobsHistoryLimit", json!(3));
                default(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(job) = child(spec, "jobTemplate").and_then(|t| child(t, "spec")) {
                    job_spec(job);
                }
            }
        }
        _ => {}
    }
}

/// What Kubernetes' Job strategy sets on create once the uid is known: unless
/// `spec.manualSelector` is true, the selector `batch.kubernetes.io/controller-uid: <uid>`
/// and, on the pod template, the labels `batch.kubernetes.io/controller-uid`,
/// `batch.kubernetes.io/job-name` and their legacy forms `controller-uid`, `job-name`.
pub fn job_selector(object: &mut Value) {
    let uid = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (Some(uid), Some(name)) = (uid, name) else {
        return;
    };
    let Some(spec) = obj(object).and_then(|root| child(root, "spec")) else {
        return;
    };
    if spec.get("manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    let Some(meta) = child(spec, "template").and_then(|t| child(t, "metadata")) else {
        return;
    };
    if let Some(labels) = child(meta, "labels") {
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", &uid),
            ("batch.kubernetes.io/job-name", &name),
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            labels.insert(k.into(), json!(v));
        }
    }
}

/// How long pods tolerate a not-ready or unreachable node by default
/// (`--default-not-ready-toleration-seconds`, `--default-unreachable-toleration-seconds`).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// What only a create defaults: the DefaultTolerationSeconds tolerations of pods.
pub fn on_create(group: &str, kind: &str, object: &mut Value) {
    if (group, kind) != ("", "Pod") {
        return;
    }
    let Some(spec) = obj(object).and_then(|root| child(root, "spec")) else {
        return;
    };
    if !spec.get("tolerations").is_some_and(Value::is_array) {
        spec.insert("tolerations".into(), json!([]));
    }
    let Some(tolerations) = spec.get_mut("tolerations").and_then(Value::as_array_mut) else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        // Tolerated already when a toleration matches the key (or every key) with the
        // NoExecute effect (or every effect).
        let tolerated = tolerations.iter().any(|t| {
            let t_key = t.get("key").and_then(Value::as_str).unwrap_or_default();
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
            let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
            (t_key == key || (t_key.is_empty() && exists))
                && (effect.is_empty() || effect == "NoExecute")
        });
        if !tolerated {
            tolerations.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
            }));
        }
    }
}

fn job_spec(spec: &mut Map<String, Value>) {
    default(spec, "parallelism", json!(1));
    // With a limit per index, the Job-wide limit is off unless given.
    let per_index = spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null());
    default(
        spec,
        "backoffLimit",
        json!(if per_index { i32::MAX } else { 6 }),
    );
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism") == Some(&json!(1))
    {
        spec.insert("completions".into(), json!(1));
    }
    if let Some(pod) = child(spec, "template").and_then(|t| child(t, "spec")) {
        // A Job's pods must not restart forever; Kubernetes requires Never or OnFailure
        // and does not default it, so nothing is set here beyond the pod defaults.
        let had_policy = pod.get("restartPolicy").is_some_and(|v| !v.is_null());
        pod_spec(pod);
        if !had_policy {
            pod.remove("restartPolicy");
        }
    }
}

fn template(spec: &mut Map<String, Value>) {
    if let Some(pod) = child(spec, "template").and_then(|t| child(t, "spec")) {
        pod_spec(pod);
    }
}

fn pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    // `serviceAccount` is the deprecated alias of `serviceAccountName`: a name given only
    // there is taken, and the alias always shows the name (Kubernetes' conversion).
    let account = [("serviceAccountName"), ("serviceAccount")]
        .into_iter()
        .find_map(|f| {
            spec.get(f)
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
        })
        .map(str::to_owned);
    if let Some(account) = account {
        spec.insert("serviceAccountName".into(), json!(account));
        spec.insert("serviceAccount".into(), json!(account));
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes.iter_mut().filter_map(Value::as_object_mut) {
            volume(v);
        }
    }
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
}

/// The file mode of volumes made from objects, unless they say otherwise (0644).
const VOLUME_DEFAULT_MODE: i64 = 0o644;

/// The lifetime of a projected service account token that does not say (one hour).
const TOKEN_DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

fn volume(v: &mut Map<String, Value>) {
    for source in ["configMap", "secret", "downwardAPI"] {
        if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
            default(s, "defaultMode", json!(VOLUME_DEFAULT_MODE));
            downward_items(s);
        }
    }
    if let Some(p) = v.get_mut("projected").and_then(Value::as_object_mut) {
        default(p, "defaultMode", json!(VOLUME_DEFAULT_MODE));
        for source in p
            .get_mut("sources")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            if let Some(t) = source
                .get_mut("serviceAccountToken")
                .and_then(Value::as_object_mut)
            {
                default(
                    t,
                    "expirationSeconds",
                    json!(TOKEN_DEFAULT_EXPIRATION_SECONDS),
                );
            }
            if let Some(d) = source.get_mut("downwardAPI").and_then(Value::as_object_mut) {
                downward_items(d);
            }
        }
    }
}

/// A downward API item's `fieldRef` reads `v1` fields unless it says otherwise.
fn downward_items(source: &mut Map<String, Value>) {
    for item in source
        .get_mut("items")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        if let Some(f) = item.get_mut("fieldRef").and_then(Value::as_object_mut) {
            default(f, "apiVersion", json!("v1"));
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    // The tag is what follows the last ':' after the last '/' (a registry port is not a tag).
    let last = image.rsplit('/').next().unwrap_or(image);
    let name = last.split('@').next().unwrap_or(last);
    let pull = match name.rsplit_once(':') {
        Some((_, "latest")) | None if !image.contains('@') => "Always",
        _ => "IfNotPresent",
    };
    default(c, "imagePullPolicy", json!(pull));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default(p, "protocol", json!("TCP"));
        }
    }
}

fn service_spec(spec: &mut Map<String, Value>) {
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                default(p, "targetPort", port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_pod_tolerates_not_ready_and_unreachable_nodes_for_five_minutes() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}]}});
        on_create("", "Pod", &mut pod);
        assert_eq!(
            pod["spec"]["tolerations"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ])
        );
        // Its own tolerations of those taints are kept as they are.
        let mut pod = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
        ]}});
        on_create("", "Pod", &mut pod);
        let tolerations = pod["spec"]["tolerations"].as_array().expect("tolerations");
        assert_eq!(tolerations.len(), 2);
        assert_eq!(tolerations[0]["tolerationSeconds"], json!(5));
        assert_eq!(tolerations[1]["key"], json!("node.kubernetes.io/not-ready"));
        // A pod tolerating every taint gets nothing more; other kinds are left alone.
        let mut pod = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        on_create("", "Pod", &mut pod);
        assert_eq!(
            pod["spec"]["tolerations"]
                .as_array()
                .expect("tolerations")
                .len(),
            1
        );
        let mut rs = json!({"spec": {}});
        on_create("apps", "ReplicaSet", &mut rs);
        assert_eq!(rs, json!({"spec": {}}));
    }

    #[test]
    fn a_bare_pod_gets_kubernetes_defaults() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]}});
        apply("", "Pod", &mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(spec["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(spec["containers"][1]["ports"][0]["protocol"], "TCP");
        assert_eq!(
            spec["containers"][0]["terminationMessagePath"],
            "/dev/termination-log"
        );
    }

    #[test]
    fn the_deprecated_service_account_field_follows_the_name() {
        for (spec, name) in [
            (json!({"serviceAccount": "old"}), Some("old")),
            (
                json!({"serviceAccountName": "new", "serviceAccount": "old"}),
                Some("new"),
            ),
            (json!({"serviceAccountName": "new"}), Some("new")),
            (json!({}), None),
        ] {
            let mut pod = json!({ "spec": spec });
            apply("", "Pod", &mut pod);
            let spec = &pod["spec"];
            assert_eq!(spec["serviceAccountName"].as_str(), name, "{spec}");
            assert_eq!(spec["serviceAccount"].as_str(), name, "{spec}");
        }
    }

    #[test]
    fn volumes_get_their_file_modes_and_a_projected_token_its_lifetime() {
        let mut pod = json!({"spec": {"volumes": [
            {"name": "c", "configMap": {"name": "c"}},
            {"name": "s", "secret": {"secretName": "s", "defaultMode": 256}},
            {"name": "d", "downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"name": "p", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
        ]}});
        apply("", "Pod", &mut pod);
        let v = &pod["spec"]["volumes"];
        assert_eq!(v[0]["configMap"]["defaultMode"], 420);
        assert_eq!(v[1]["secret"]["defaultMode"], 256, "an explicit mode stays");
        assert_eq!(v[2]["downwardAPI"]["defaultMode"], 420);
        assert_eq!(
            v[2]["downwardAPI"]["items"][0]["fieldRef"]["apiVersion"],
            "v1"
        );
        assert_eq!(v[3]["projected"]["defaultMode"], 420);
        assert_eq!(
            v[3]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3600
        );
    }

    #[test]
    fn image_pull_policy_reads_the_tag_not_a_registry_port() {
        for (image, policy) in [
            ("registry:5000/app", "Always"),
            ("registry:5000/app:v1", "IfNotPresent"),
            ("app:latest", "Always"),
            ("app@sha256:abc", "IfNotPresent"),
        ] {
            let mut c = Map::new();
            c.insert("image".into(), json!(image));
            container(&mut c);
            assert_eq!(c["imagePullPolicy"], policy, "{image}");
        }
    }

    #[test]
    fn a_deployment_gets_its_strategy_and_limits() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        apply("apps", "Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn set_fields_are_kept_and_recreate_gets_no_rolling_update() {
        let mut d = json!({"spec": {"replicas": 3, "strategy": {"type": "Recreate"}}});
        apply("apps", "Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn a_service_gets_its_type_and_target_ports() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply("", "Service", &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
    }

    #[test]
    fn a_job_pod_keeps_no_defaulted_restart_policy() {
        let mut j = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        apply("batch", "Job", &mut j);
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert!(j["spec"]["template"]["spec"].get("restartPolicy").is_none());
    }
    #[test]
    fn a_job_without_a_manual_selector_gets_one_on_its_uid() {
        let mut j = json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {}}}});
        job_selector(&mut j);
        assert_eq!(
            j["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        let labels = &j["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["a"], "b");
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["controller-uid"], "u-1");
        let mut manual = json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"manualSelector": true, "selector": {"matchLabels": {"x": "y"}}}});
        job_selector(&mut manual);
        assert_eq!(
            manual["spec"]["selector"],
            json!({"matchLabels": {"x": "y"}})
        );
    }
}
