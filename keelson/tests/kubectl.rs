//! End to end: `keelson up` driven by the real kubectl.
//!
//! Needs `/usr/bin/kubectl` (the machine's dispatcher, which runs the kubectl matching the
//! server's minor version). Without it the tests say so loudly and pass, except under CI,
//! where they fail.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{kubectl_available, up, up_in, up_with, Cluster};
use serde_json::json;

#[test]
fn kubectl_gets_creates_and_deletes_against_keelson_up() {
    if !kubectl_available() {
        return;
    }
    let c = up(true);
    let version = c.ok(&["version", "-o", "json"]);
    assert!(version.contains("\"minor\": \"33\""), "{version}");

    let namespaces = c.ok(&["get", "namespaces"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(namespaces.contains(ns), "{namespaces}");
    }
    assert!(namespaces.starts_with("NAME"), "a table: {namespaces}");
    assert!(namespaces.contains("Active"), "{namespaces}");

    let manifest = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"web","labels":{"app":"web"}},"data":{"a":"1","b":"2"}}"#;
    let created = c.kubectl_stdin(&["create", "-f", "-"], Some(manifest));
    assert!(
        created.status.success(),
        "create: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(String::from_utf8_lossy(&created.stdout).contains("configmap/web created"));

    let got = c.ok(&["get", "configmaps"]);
    assert!(got.contains("DATA") && got.contains("web"), "{got}");
    let yaml = c.ok(&["get", "cm", "web", "-o", "yaml"]);
    assert!(
        yaml.contains("resourceVersion:") && yaml.contains("uid:"),
        "{yaml}"
    );
    assert!(c
        .ok(&["get", "cm", "-l", "app=web", "-o", "name"])
        .contains("configmap/web"));
    assert!(c
        .ok(&[
            "get",
            "cm",
            "--field-selector",
            "metadata.name=web",
            "-o",
            "name"
        ])
        .contains("configmap/web"));
    assert!(!c
        .ok(&["get", "cm", "-l", "app=other", "-o", "name"])
        .contains("web"));
    let all = c.ok(&["get", "cm", "-A", "--show-labels"]);
    assert!(
        all.contains("NAMESPACE") && all.contains("app=web"),
        "{all}"
    );

    let err = c.fails(&["get", "cm", "nope"]);
    assert!(
        err.contains(r#"Error from server (NotFound): configmaps "nope" not found"#),
        "{err}"
    );

    assert!(c
        .ok(&["label", "cm", "web", "tier=fe"])
        .contains("configmap/web labeled"));
    assert!(c
        .ok(&["annotate", "cm", "web", "note=hi"])
        .contains("configmap/web annotated"));
    assert!(c
        .ok(&["get", "cm", "-l", "tier=fe", "-o", "name"])
        .contains("configmap/web"));
    let patched = c.ok(&[
        "patch",
        "cm",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/data/a","value":"9"}]"#,
    ]);
    assert!(patched.contains("configmap/web patched"), "{patched}");
    assert_eq!(c.ok(&["get", "cm", "web", "-o", "jsonpath={.data.a}"]), "9");
    assert!(c
        .ok(&["delete", "cm", "web"])
        .contains(r#"configmap "web" deleted"#));
    let err = c.fails(&["get", "cm", "web"]);
    assert!(err.contains("NotFound"), "{err}");
}

#[test]
fn keelson_up_serves_https_with_a_token_by_default() {
    if !kubectl_available() {
        return;
    }
    let c = up(false);
    let kubeconfig = std::fs::read_to_string(&c.kubeconfig).expect("kubeconfig");
    assert!(
        kubeconfig.contains("server: https://127.0.0.1:"),
        "{kubeconfig}"
    );
    assert!(
        kubeconfig.contains("certificate-authority-data:") && kubeconfig.contains("token:"),
        "{kubeconfig}"
    );
    let namespaces = c.ok(&["get", "namespaces", "-o", "name"]);
    assert!(namespaces.contains("namespace/default"), "{namespaces}");
    let err = c.fails(&["get", "namespaces", "--token", "wrong"]);
    assert!(err.contains("You must be logged in to the server"), "{err}");
}

#[test]
fn kubectl_create_token_gives_a_service_account_token_the_server_accepts() {
    if !kubectl_available() {
        return;
    }
    let c = up(false);
    eventually(&c, &["get", "serviceaccounts", "-n", "default"], |out| {
        out.contains("default")
    });
    c.ok(&["create", "serviceaccount", "builder"]);
    let token = c.ok(&["create", "token", "builder"]).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    // The token alone authenticates as the account.
    let pods = c.ok(&["get", "pods", "--token", &token]);
    assert!(pods.contains("No resources") || pods.is_empty(), "{pods}");
    // Altered, it does not.
    let mut altered = token.clone();
    altered.pop();
    altered.push(if token.ends_with('A') { 'B' } else { 'A' });
    let err = c.fails(&["get", "pods", "--token", &altered]);
    assert!(err.contains("You must be logged in to the server"), "{err}");
    // Too short a lifetime is refused as Kubernetes refuses it.
    let err = c.fails(&["create", "token", "builder", "--duration", "1m"]);
    assert!(
        err.contains("may not specify a duration less than 10 minutes"),
        "{err}"
    );
    let err = c.fails(&["create", "token", "nobody"]);
    assert!(
        err.contains(r#"serviceaccounts "nobody" not found"#),
        "{err}"
    );
    // A legacy token: an empty Secret of the token type, filled in by the controllers.
    let secret = r#"{"apiVersion":"v1","kind":"Secret","type":"kubernetes.io/service-account-token",
      "metadata":{"name":"builder-token","annotations":{"kubernetes.io/service-account.name":"builder"}}}"#;
    let applied = c.kubectl_stdin(&["apply", "-f", "-"], Some(secret));
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let data = |key: &str| {
        use base64::Engine as _;
        let b64 = eventually(
            &c,
            &[
                "get",
                "secret",
                "builder-token",
                "-o",
                &format!("jsonpath={{.data.{}}}", key.replace('.', r"\.")),
            ],
            |v| !v.is_empty(),
        );
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .expect("base64");
        String::from_utf8(bytes).expect("utf-8")
    };
    let legacy = data("token");
    assert_eq!(data("namespace"), "default");
    assert!(data("ca.crt").starts_with("-----BEGIN CERTIFICATE-----"));
    let described = c.ok(&["describe", "secret", "builder-token"]);
    assert!(
        described.contains("kubernetes.io/service-account.uid"),
        "{described}"
    );
    let pods = c.ok(&["get", "pods", "--token", &legacy]);
    assert!(pods.contains("No resources") || pods.is_empty(), "{pods}");
    // Deleting the account ends its tokens, and deletes its token Secrets.
    c.ok(&["delete", "serviceaccount", "builder"]);
    let err = c.fails(&["get", "pods", "--token", &token]);
    assert!(err.contains("You must be logged in to the server"), "{err}");
    let err = c.fails(&["get", "pods", "--token", &legacy]);
    assert!(err.contains("You must be logged in to the server"), "{err}");
    eventually(&c, &["get", "secrets", "-o", "name"], |s| {
        !s.contains("builder-token")
    });
}

#[test]
fn kubectl_apply_describe_explain_watch_and_discovery_work() {
    if !kubectl_available() {
        return;
    }
    // No nodes: the pods below stay Pending.
    let c = up_with(
        tempfile::tempdir().expect("temp dir"),
        true,
        &["--nodes".as_ref(), "0".as_ref()],
    );
    let deployment = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"app":"web"}},
      "spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},
      "template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"nginx","image":"nginx:1.27"}]}}}}"#;
    let applied = c.kubectl_stdin(&["apply", "-f", "-"], Some(deployment));
    assert!(
        applied.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(String::from_utf8_lossy(&applied.stdout).contains("deployment.apps/web created"));
    let wide = c.ok(&["get", "deployments", "-o", "wide"]);
    for column in [
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "AGE",
        "CONTAINERS",
        "IMAGES",
        "SELECTOR",
    ] {
        assert!(wide.contains(column), "{column}: {wide}");
    }
    assert!(
        wide.contains("0/2") && wide.contains("nginx:1.27") && wide.contains("app=web"),
        "{wide}"
    );
    let yaml = c.ok(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(
        yaml.contains("maxSurge: 25%") && yaml.contains("revisionHistoryLimit: 10"),
        "defaulted: {yaml}"
    );

    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p1"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;
    assert!(c
        .kubectl_stdin(&["create", "-f", "-"], Some(pod))
        .status
        .success());
    let pods = c.ok(&["get", "pods", "-o", "wide"]);
    for column in ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"] {
        assert!(pods.contains(column), "{column}: {pods}");
    }
    assert!(pods.contains("Pending"), "{pods}");
    let described = c.ok(&["describe", "pod", "p1"]);
    assert!(
        described.contains("Name:") && described.contains("p1") && described.contains("busybox"),
        "{described}"
    );

    // describe lists the pod's events (a field selector on involvedObject).
    let uid = c.ok(&["get", "pod", "p1", "-o", "jsonpath={.metadata.uid}"]);
    let event = format!(
        r#"{{"apiVersion":"v1","kind":"Event","metadata":{{"name":"p1.1"}},"type":"Warning","reason":"FailedScheduling",
          "message":"0/0 nodes are available","count":1,"source":{{"component":"default-scheduler"}},
          "involvedObject":{{"apiVersion":"v1","kind":"Pod","name":"p1","namespace":"default","uid":"{uid}"}}}}"#
    );
    assert!(c
        .kubectl_stdin(&["create", "-f", "-"], Some(&event))
        .status
        .success());
    let described = c.ok(&["describe", "pod", "p1"]);
    assert!(
        described.contains("FailedScheduling") && described.contains("0/0 nodes are available"),
        "{described}"
    );

    let explained = c.ok(&["explain", "pods.spec.containers"]);
    assert!(explained.contains("FIELD: containers"), "{explained}");
    let resources = c.ok(&["api-resources"]);
    assert!(
        resources.contains("deployments")
            && resources.contains("deploy")
            && resources.contains("apps/v1"),
        "{resources}"
    );
    let all = c.ok(&["get", "all"]);
    assert!(
        all.contains("deployment.apps/web") && all.contains("pod/p1"),
        "{all}"
    );

    // A watch sees a change made while it runs, then ends at its timeout.
    let mut watch = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .env("KUBECACHEDIR", c._dir.path().join("kube-cache"))
        .args(["get", "configmaps", "-w", "--request-timeout", "5s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    std::thread::sleep(Duration::from_millis(700));
    let cm =
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"watched"},"data":{"a":"1"}}"#;
    assert!(c
        .kubectl_stdin(&["create", "-f", "-"], Some(cm))
        .status
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while watch.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = watch.kill();
    let out = watch.wait_with_output().expect("output");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("watched"),
        "the watch saw the new configmap: {seen}"
    );

    // Unknown fields are refused under Strict (kubectl's default), invalid objects get 422.
    let typo =
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"typo"},"dta":{"a":"1"}}"#;
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(typo));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(r#"unknown field "dta""#),
        "{err}"
    );
    let bad =
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"bad"},"spec":{"containers":[]}}"#;
    let out = c.kubectl_stdin(&["create", "-f", "-"], Some(bad));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"The Pod "bad" is invalid: spec.containers: Required value"#),
        "{err}"
    );
    let err = c.fails(&["get", "widgets"]);
    assert!(
        err.contains(r#"the server doesn't have a resource type "widgets""#),
        "{err}"
    );
    let deleted = c.kubectl_stdin(&["delete", "-f", "-"], Some(deployment));
    assert!(String::from_utf8_lossy(&deleted.stdout).contains(r#"deployment.apps "web" deleted"#));
}

#[test]
fn kubectl_changes_objects_with_strategic_merge_patches() {
    if !kubectl_available() {
        return;
    }
    let c = up(true);
    let v1 = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
      "spec":{"selector":{"matchLabels":{"app":"web"}},
      "template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[
        {"name":"nginx","image":"nginx:1.27","ports":[{"containerPort":80}]},
        {"name":"sidecar","image":"busybox"}]}}}}"#;
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(v1));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Re-applying a changed manifest: kubectl computes a three-way strategic merge patch
    // (with $setElementOrder and a deleted container) from the last-applied annotation.
    let v2 = v1.replace("nginx:1.27", "nginx:1.28").replace(
        r#",
        {"name":"sidecar","image":"busybox"}"#,
        "",
    );
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(&v2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("deployment.apps/web configured"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let containers = |c: &Cluster| {
        c.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={range .spec.template.spec.containers[*]}{.name}={.image};{end}",
        ])
    };
    assert_eq!(containers(&c), "nginx=nginx:1.28;");

    let out = c.ok(&["set", "image", "deployment/web", "nginx=nginx:1.29"]);
    assert!(out.contains("image updated"), "{out}");
    assert_eq!(containers(&c), "nginx=nginx:1.29;");

    // `kubectl patch` sends a strategic merge patch by default: the container merges by name.
    c.ok(&[
        "patch", "deployment", "web", "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","env":[{"name":"MODE","value":"fast"}]}]}}}}"#,
    ]);
    let env = c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].env[0].value} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"]);
    assert_eq!(env, "fast nginx:1.29 80");

    let out = c.ok(&["rollout", "restart", "deployment/web"]);
    assert!(out.contains("deployment.apps/web restarted"), "{out}");
    let restarted = c.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        r#"jsonpath={.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}"#,
    ]);
    assert!(!restarted.trim().is_empty(), "restartedAt is set");
    let generation = c.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.generation}",
    ]);
    assert_eq!(generation, "5", "each spec change bumped the generation");

    let out = c.ok(&["scale", "deployment", "web", "--replicas=4"]);
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    assert_eq!(
        c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
    let err = c.fails(&["scale", "configmap", "x", "--replicas=2"]);
    assert!(!err.is_empty());

    // drain: cordon (a strategic merge patch of the node), then evict its pods.
    let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}"#;
    assert!(c
        .kubectl_stdin(&["create", "-f", "-"], Some(node))
        .status
        .success());
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"on-n1"},
      "spec":{"nodeName":"n1","containers":[{"name":"c","image":"busybox"}]}}"#;
    assert!(c
        .kubectl_stdin(&["create", "-f", "-"], Some(pod))
        .status
        .success());
    let out = c.ok(&[
        "drain",
        "n1",
        "--force",
        "--grace-period=0",
        "--timeout=30s",
    ]);
    assert!(
        out.contains("node/n1 drained") || out.contains("node/n1 cordoned"),
        "{out}"
    );
    assert_eq!(
        c.ok(&["get", "node", "n1", "-o", "jsonpath={.spec.unschedulable}"]),
        "true"
    );
    let err = c.fails(&["get", "pod", "on-n1"]);
    assert!(err.contains("not found"), "evicted: {err}");

    // A merging list element without its merge key is a 400 naming the key.
    let err = c.fails(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}"#,
    ]);
    assert!(
        err.contains("does not contain declared merge key: name"),
        "{err}"
    );
}

#[test]
fn kubectl_dry_run_server_and_diff_store_nothing() {
    if !kubectl_available() {
        return;
    }
    let c = up(true);
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"settings"},"data":{"mode":"slow"}}"#;
    let out = c.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(cm));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("configmap/settings created (server dry run)"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = c.fails(&["get", "configmap", "settings"]);
    assert!(err.contains(r#"configmaps "settings" not found"#), "{err}");

    // `kubectl diff` of a new object, then of a changed one, asks the server (dry run).
    let out = c.kubectl_stdin(&["diff", "-f", "-"], Some(cm));
    assert_eq!(out.status.code(), Some(1), "differences found: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("+  mode: slow"));
    assert!(c
        .kubectl_stdin(&["apply", "-f", "-"], Some(cm))
        .status
        .success());
    let out = c.kubectl_stdin(&["diff", "-f", "-"], Some(cm));
    assert_eq!(out.status.code(), Some(0), "no differences: {out:?}");
    let changed = cm.replace("slow", "fast");
    let out = c.kubectl_stdin(&["diff", "-f", "-"], Some(&changed));
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.code() == Some(1)
            && diff.contains("-  mode: slow")
            && diff.contains("+  mode: fast"),
        "{diff}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.ok(&[
            "get",
            "configmap",
            "settings",
            "-o",
            "jsonpath={.data.mode}"
        ]),
        "slow"
    );

    let out = c.ok(&["delete", "configmap", "settings", "--dry-run=server"]);
    assert!(out.contains("(server dry run)"), "{out}");
    assert_eq!(
        c.ok(&[
            "get",
            "configmap",
            "settings",
            "-o",
            "jsonpath={.data.mode}"
        ]),
        "slow"
    );
}

#[test]
fn kubectl_works_with_a_custom_resource_definition() {
    if !kubectl_available() {
        return;
    }
    let c = up(true);
    let crd = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
      "metadata":{"name":"widgets.example.com"},
      "spec":{"group":"example.com","scope":"Namespaced",
        "names":{"plural":"widgets","singular":"widget","kind":"Widget","shortNames":["wd"]},
        "versions":[{"name":"v1","served":true,"storage":true,
          "schema":{"openAPIV3Schema":{"type":"object","properties":{"spec":{"type":"object",
            "properties":{"size":{"type":"integer","maximum":10,"description":"How big the widget is."},
                          "color":{"type":"string","enum":["red","green"],"default":"red"}}}}}},
          "subresources":{"status":{}},
          "additionalPrinterColumns":[{"name":"Size","type":"integer","jsonPath":".spec.size"},
                                      {"name":"Color","type":"string","jsonPath":".spec.color"}]}]}}"#;
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(crd));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=10s",
        "crd/widgets.example.com",
    ]);
    let widget = r#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w1"},"spec":{"size":3}}"#;
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(widget));
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("widget.example.com/w1 created"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let table = c.ok(&["get", "wd"]);
    assert!(
        table.contains("SIZE")
            && table.contains("COLOR")
            && table.contains("w1")
            && table.contains("red"),
        "{table}"
    );
    let explained = c.ok(&["explain", "widget.spec.size"]);
    assert!(explained.contains("How big the widget is."), "{explained}");
    let too_big = widget
        .replace(r#""size":3"#, r#""size":30"#)
        .replace("w1", "w2");
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(&too_big));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("spec.size in body should be less than or equal to 10"),
        "{err}"
    );
    // A strategic merge patch of a custom resource is refused, as on Kubernetes; merge works.
    let err = c.fails(&["patch", "widget", "w1", "-p", r#"{"spec":{"size":4}}"#]);
    assert!(
        err.contains("application/strategic-merge-patch+json is not supported by example.com/v1, Kind=Widget"),
        "{err}"
    );
    c.ok(&[
        "patch",
        "widget",
        "w1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"size":4}}"#,
    ]);
    assert_eq!(
        c.ok(&["get", "widget", "w1", "-o", "jsonpath={.spec.size}"]),
        "4"
    );
    let out = c.ok(&["delete", "crd", "widgets.example.com", "--timeout=20s"]);
    assert!(out.contains("deleted"), "{out}");
    // (kubectl's discovery cache may still name the kind; the server no longer serves it.)
    let err = c.fails(&["get", "widgets"]);
    assert!(
        err.contains("the server doesn't have a resource type")
            || err.contains("the server could not find the requested resource"),
        "{err}"
    );
}

#[test]
fn kubectl_apply_server_side_tracks_owners_and_reports_conflicts() {
    if !kubectl_available() {
        return;
    }
    let c = up(true);
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"owned"},"data":{"a":"1","b":"2"}}"#;
    let out = c.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(cm));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("configmap/owned serverside-applied"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = c.ok(&[
        "get",
        "configmap",
        "owned",
        "-o",
        "yaml",
        "--show-managed-fields",
    ]);
    assert!(
        yaml.contains("manager: kubectl") && yaml.contains("operation: Apply"),
        "{yaml}"
    );
    // Another manager changes a field the applier owns...
    c.ok(&[
        "patch",
        "configmap",
        "owned",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"a":"changed"}}"#,
    ]);
    // ...so applying the old value again is a conflict, until forced.
    let out = c.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(cm));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("conflict") && err.contains(".data.a"),
        "{err}"
    );
    let out = c.kubectl_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(cm),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.ok(&["get", "configmap", "owned", "-o", "jsonpath={.data.a}"]),
        "1"
    );
    // Dropping a field from the configuration removes it.
    let less = cm.replace(r#","b":"2""#, "");
    assert!(c
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&less))
        .status
        .success());
    assert_eq!(
        c.ok(&["get", "configmap", "owned", "-o", "jsonpath={.data}"]),
        r#"{"a":"1"}"#
    );
}

#[test]
fn kubectl_create_generators_send_protobuf_and_work() {
    if !kubectl_available() {
        return;
    }
    let c = up(true);
    let out = c.ok(&["create", "namespace", "dev"]);
    assert!(out.contains("namespace/dev created"), "{out}");
    let out = c.ok(&[
        "-n",
        "dev",
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
    ]);
    assert!(out.contains("configmap/settings created"), "{out}");
    let out = c.ok(&[
        "-n",
        "dev",
        "create",
        "secret",
        "generic",
        "token",
        "--from-literal=key=s3cr3t",
    ]);
    assert!(out.contains("secret/token created"), "{out}");
    let out = c.ok(&[
        "-n",
        "dev",
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=2",
        "--port=80",
    ]);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let out = c.ok(&[
        "-n",
        "dev",
        "create",
        "service",
        "clusterip",
        "web",
        "--tcp=80:8080",
    ]);
    assert!(out.contains("service/web created"), "{out}");
    assert_eq!(
        c.ok(&[
            "-n",
            "dev",
            "get",
            "configmap",
            "settings",
            "-o",
            "jsonpath={.data.mode}"
        ]),
        "fast"
    );
    assert_eq!(
        c.ok(&[
            "-n",
            "dev",
            "get",
            "secret",
            "token",
            "-o",
            "jsonpath={.data.key}"
        ]),
        "czNjcjN0"
    );
    assert_eq!(
        c.ok(&["-n", "dev", "get", "deploy", "web", "-o",
               "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"]),
        "2 nginx:1.27 80"
    );
    assert_eq!(
        c.ok(&[
            "-n",
            "dev",
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.spec.ports[0].port} {.spec.ports[0].targetPort}"
        ]),
        "80 8080"
    );
    // `auth can-i` posts a SelfSubjectAccessReview (as protobuf); with no authorizer
    // configured, an authenticated user may do anything.
    assert_eq!(c.ok(&["auth", "can-i", "create", "pods"]).trim(), "yes");
    assert_eq!(
        c.ok(&["auth", "can-i", "delete", "deployments", "-n", "dev"])
            .trim(),
        "yes"
    );
}

#[test]
fn keelson_up_comes_back_with_the_same_objects_after_a_kill() {
    if !kubectl_available() {
        return;
    }
    let mut c = up(false);
    let cm =
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"kept"},"data":{"a":"1"}}"#;
    assert!(c
        .kubectl_stdin(&["create", "-f", "-"], Some(cm))
        .status
        .success());
    let before = c.ok(&["get", "cm", "kept", "-o", "jsonpath={.metadata.uid}"]);
    // SIGKILL: no clean shutdown, only what the store acknowledged.
    let _ = c.child.kill();
    let _ = c.child.wait();
    let dir = std::mem::replace(&mut c._dir, tempfile::tempdir().expect("placeholder"));
    drop(c);
    let c = up_in(dir, false);
    assert_eq!(
        c.ok(&["get", "cm", "kept", "-o", "jsonpath={.metadata.uid}"]),
        before
    );
}

/// Polls `kubectl args` until its output satisfies `done` (at most 20 s).
fn eventually(c: &Cluster, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    // Generous: this file's tests each run a whole cluster, all at once on a 2-core machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = c.kubectl(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {args:?} never got there: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn keelson_up_schedules_pods_and_says_why_one_cannot_fit() {
    if !kubectl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("scheduler.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: default-scheduler\n- schedulerName: bin-packing\n  pluginConfig:\n  - name: NodeResourcesFit\n    args:\n      scoringStrategy:\n        type: MostAllocated\n",
    )
    .expect("write the scheduler config");
    let c = up_with(
        dir,
        true,
        &[
            "--scheduler-config".as_ref(),
            config.as_os_str(),
            // Only the two Nodes below, which no agent runs.
            "--nodes".as_ref(),
            "0".as_ref(),
        ],
    );
    let manifest = r#"
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {kubernetes.io/hostname: n1}}
status:
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
---
apiVersion: v1
kind: Node
metadata: {name: n2, labels: {kubernetes.io/hostname: n2}}
spec:
  taints: [{key: dedicated, value: gpu, effect: NoSchedule}]
status:
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
---
apiVersion: v1
kind: Pod
metadata: {name: small}
spec:
  containers: [{name: c, image: busybox, resources: {requests: {cpu: "1"}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: packed}
spec:
  schedulerName: bin-packing
  containers: [{name: c, image: busybox, resources: {requests: {cpu: "1"}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: huge}
spec:
  containers: [{name: c, image: busybox, resources: {requests: {cpu: "40"}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere}
spec:
  schedulerName: someone-else
  containers: [{name: c, image: busybox}]
"#;
    let applied = c.kubectl_stdin(&["apply", "-f", "-"], Some(manifest));
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    // Both profiles bind, and only to the node without the taint.
    for pod in ["small", "packed"] {
        let node = eventually(
            &c,
            &["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"],
            |n| !n.is_empty(),
        );
        assert_eq!(node, "n1", "{pod}");
    }
    let wide = c.ok(&["get", "pods", "-o", "wide"]);
    assert!(
        wide.lines()
            .any(|l| l.starts_with("small") && l.contains("n1")),
        "{wide}"
    );
    // The pod that fits nowhere waits, and `kubectl describe` says why, as Kubernetes does.
    let described = eventually(&c, &["describe", "pod", "huge"], |d| {
        d.contains("FailedScheduling")
    });
    assert!(
        described.contains("0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}."),
        "{described}"
    );
    let condition = c.ok(&[
        "get",
        "pod",
        "huge",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}",
    ]);
    assert_eq!(condition, "Unschedulable");
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=small",
    ]);
    assert!(
        events.contains("Successfully assigned default/small to n1"),
        "{events}"
    );
    // A pod for a scheduler that is not running is left alone.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.ok(&["get", "pod", "elsewhere", "-o", "jsonpath={.spec.nodeName}"]),
        ""
    );
    assert!(!c
        .ok(&["describe", "pod", "elsewhere"])
        .contains("FailedScheduling"));
}

#[test]
fn kubectl_run_starts_a_real_process_whose_logs_kubectl_reads() {
    if !kubectl_available() {
        return;
    }
    let c = up(true);
    let node = eventually(&c, &["get", "nodes"], |n| {
        n.contains("node-1") && n.contains("Ready")
    });
    assert!(node.contains("node-1"), "{node}");

    // A process that prints and stays up: scheduled onto node-1, Running, with an address.
    c.ok(&[
        "run",
        "hello",
        "--image=busybox",
        "--command",
        "--",
        "sh",
        "-c",
        "echo started; while true; do echo tick; sleep 0.2; done",
    ]);
    eventually(
        &c,
        &["get", "pod", "hello", "-o", "jsonpath={.status.phase}"],
        |p| p == "Running",
    );
    let wide = c.ok(&["get", "pod", "hello", "-o", "wide"]);
    assert!(
        wide.contains("1/1") && wide.contains("node-1") && wide.contains("127."),
        "{wide}"
    );
    let logs = eventually(&c, &["logs", "hello"], |l| l.contains("tick"));
    assert!(logs.starts_with("started\n"), "{logs}");
    assert_eq!(c.ok(&["logs", "hello", "--tail=1"]), "tick\n");
    let stamped = c.ok(&["logs", "hello", "--tail=1", "--timestamps"]);
    assert!(
        stamped.ends_with("Z tick\n") && stamped.starts_with("20"),
        "{stamped}"
    );

    // `logs -f` follows until the container ends.
    c.ok(&[
        "run",
        "counter",
        "--image=busybox",
        "--restart=Never",
        "--command",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3; do echo line $i; sleep 0.3; done",
    ]);
    eventually(
        &c,
        &["get", "pod", "counter", "-o", "jsonpath={.status.phase}"],
        |p| p == "Running" || p == "Succeeded",
    );
    assert_eq!(c.ok(&["logs", "-f", "counter"]), "line 1\nline 2\nline 3\n");
    eventually(
        &c,
        &["get", "pod", "counter", "-o", "jsonpath={.status.phase}"],
        |p| p == "Succeeded",
    );

    // A crash loop shows in `get pods`, a command that does not exist as Kubernetes says.
    c.ok(&[
        "run",
        "crash",
        "--image=busybox",
        "--command",
        "--",
        "sh",
        "-c",
        "echo boom; exit 3",
    ]);
    let pods = eventually(&c, &["get", "pod", "crash"], |p| {
        p.contains("CrashLoopBackOff")
    });
    assert!(pods.contains("0/1"), "{pods}");
    assert_eq!(c.ok(&["logs", "crash", "--previous"]), "boom\n");
    c.ok(&[
        "run",
        "nope",
        "--image=busybox",
        "--command",
        "--",
        "/no/such/binary",
    ]);
    let described = eventually(&c, &["describe", "pod", "nope"], |d| {
        d.contains("RunContainerError")
    });
    assert!(described.contains("/no/such/binary"), "{described}");
    let err = c.fails(&["logs", "hello", "-c", "other"]);
    assert!(
        err.contains("container other is not valid for pod hello"),
        "{err}"
    );
}

#[test]
fn deployments_roll_out_undo_scale_and_namespaces_delete_their_contents() {
    if !kubectl_available() {
        return;
    }
    let c = up(true);
    eventually(&c, &["get", "nodes"], |n| {
        n.contains("node-1") && n.contains("Ready")
    });
    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=3",
        "--",
        "sh",
        "-c",
        "while true; do sleep 1; done",
    ]);
    let status = c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let deploy = c.ok(&["get", "deployment", "web"]);
    assert!(deploy.contains("3/3"), "{deploy}");
    assert_eq!(
        c.ok(&["get", "pods", "-l", "app=web", "-o", "name"])
            .lines()
            .count(),
        3
    );
    // A new template rolls out as a second ReplicaSet; undo goes back to the first.
    c.ok(&["set", "env", "deployment/web", "VERSION=2"]);
    let status = c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let rs = c.ok(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.spec.replicas} {end}",
    ]);
    let mut counts: Vec<&str> = rs.split_whitespace().collect();
    counts.sort_unstable();
    assert_eq!(counts, ["0", "3"], "{rs}");
    c.ok(&["rollout", "undo", "deployment/web"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let env = c.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env}",
    ]);
    assert!(!env.contains("VERSION"), "{env}");
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('2') && history.contains('3'), "{history}");
    // Scale down: the ReplicaSet deletes pods until one is left.
    c.ok(&["scale", "deployment", "web", "--replicas=1"]);
    eventually(&c, &["get", "pods", "-l", "app=web", "-o", "name"], |p| {
        p.lines().count() == 1
    });
    // Deleting a namespace deletes what is in it (pods stopped), then the namespace.
    c.ok(&["create", "namespace", "scratch"]);
    c.ok(&[
        "-n",
        "scratch",
        "create",
        "deployment",
        "x",
        "--image=busybox",
        "--",
        "sleep",
        "1000",
    ]);
    c.ok(&[
        "-n",
        "scratch",
        "create",
        "configmap",
        "c",
        "--from-literal=a=b",
    ]);
    eventually(&c, &["-n", "scratch", "get", "pods"], |p| {
        p.contains("Running")
    });
    let deleted = c.ok(&["delete", "namespace", "scratch", "--timeout=60s"]);
    assert!(deleted.contains("deleted"), "{deleted}");
    let err = c.fails(&["get", "namespace", "scratch"]);
    assert!(err.contains("not found"), "{err}");
    assert!(c
        .ok(&["get", "pods", "-A", "-o", "name"])
        .lines()
        .all(|l| !l.contains("x-")));
}

#[test]
fn jobs_run_to_completion_and_stateful_and_daemon_sets_roll_out() {
    if !kubectl_available() {
        return;
    }
    let c = up(true);
    eventually(&c, &["get", "nodes"], |n| {
        n.contains("node-1") && n.contains("Ready")
    });
    // A Job whose process really runs and exits 0 completes; its logs are the pod's.
    c.ok(&[
        "create",
        "job",
        "once",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "echo done",
    ]);
    let waited = c.ok(&[
        "wait",
        "--for=condition=complete",
        "job/once",
        "--timeout=60s",
    ]);
    assert!(waited.contains("condition met"), "{waited}");
    let job = c.ok(&["get", "job", "once"]);
    assert!(job.contains("Complete") && job.contains("1/1"), "{job}");
    assert_eq!(c.ok(&["logs", "job/once"]), "done\n");
    // A CronJob, and a Job made from it by hand.
    c.ok(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=*/5 * * * *",
        "--",
        "sh",
        "-c",
        "exit 0",
    ]);
    c.ok(&["create", "job", "manual", "--from=cronjob/tick"]);
    c.ok(&[
        "wait",
        "--for=condition=complete",
        "job/manual",
        "--timeout=60s",
    ]);
    let cron = c.ok(&["get", "cronjob", "tick"]);
    assert!(cron.contains("*/5 * * * *"), "{cron}");

    let set = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: busybox
        command: ["sh", "-c", "while true; do sleep 1; done"]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
      - name: app
        image: busybox
        command: ["sh", "-c", "while true; do sleep 1; done"]
"#;
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(set));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With the defaulted `partition: 0`, kubectl reports a partitioned roll out.
    let status = c.ok(&["rollout", "status", "statefulset/web", "--timeout=90s"]);
    assert!(status.contains("roll out complete: 2 new pods"), "{status}");
    let pods = c.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    assert_eq!(pods, "pod/web-0\npod/web-1\n");
    c.ok(&["set", "env", "statefulset/web", "VERSION=2"]);
    let status = c.ok(&["rollout", "status", "statefulset/web", "--timeout=90s"]);
    assert!(status.contains("roll out complete"), "{status}");
    let env = c.ok(&[
        "get",
        "pod",
        "web-0",
        "-o",
        "jsonpath={.spec.containers[0].env[0].value}",
    ]);
    assert_eq!(env, "2");
    let revisions = c.ok(&[
        "get",
        "statefulset",
        "web",
        "-o",
        "jsonpath={.status.currentRevision}={.status.updateRevision}",
    ]);
    let (current, update) = revisions.split_once('=').unwrap_or_default();
    assert_eq!(current, update, "{revisions}");
    let status = c.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let ds = c.ok(&[
        "get",
        "daemonset",
        "agent",
        "-o",
        "jsonpath={.status.desiredNumberScheduled}/{.status.numberAvailable}",
    ]);
    assert_eq!(ds, "1/1");
}

/// `kubectl port-forward` running in the background, stopped when dropped.
struct PortForward(std::process::Child);

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP/1.0 GET of `/` on 127.0.0.1:`port`: the whole answer, or why there is none.
fn http_get(port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

#[test]
fn kubectl_exec_and_port_forward_reach_a_pod_through_the_api_server() {
    if !kubectl_available() {
        return;
    }
    // HTTPS with a token: the upgrades go through TLS and authentication.
    let c = up(false);
    eventually(&c, &["get", "nodes"], |n| {
        n.contains("node-1") && n.contains("Ready")
    });
    let port = common::free_port();
    c.ok(&[
        "run",
        "web",
        "--image=python",
        "--command",
        "--",
        "sh",
        "-c",
        &format!("echo hello-from-pod > index.html; exec python3 -u -m http.server {port} --bind \"$POD_IP\""),
    ]);
    eventually(
        &c,
        &["get", "pod", "web", "-o", "jsonpath={.status.phase}"],
        |p| p == "Running",
    );

    // Output on both streams, kept apart; the pod's environment and working directory.
    let out = c.kubectl(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; cat index.html; echo \"$POD_IP\"",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exec: {stdout}{stderr}");
    assert!(stdout.starts_with("out\nhello-from-pod\n127."), "{stdout}");
    assert_eq!(stderr, "err\n");

    // The exit code comes back as kubectl's own.
    let out = c.kubectl(&["exec", "web", "--", "sh", "-c", "echo partial; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "partial\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("command terminated with exit code 3"),
        "{out:?}"
    );

    // Standard input, to its end.
    let out = c.kubectl_stdin(
        &[
            "exec",
            "-i",
            "web",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ],
        Some("hello\nworld\n"),
    );
    assert!(out.status.success(), "exec -i: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\nWORLD\ndone\n");

    // A terminal (`-t`): kubectl wants one of its own, which `script` gives it; the
    // command sees a terminal of kubectl's size.
    if std::path::Path::new("/usr/bin/script").exists() {
        let inner = format!(
            "stty cols 100 rows 40; /usr/bin/kubectl --kubeconfig {} exec -it web -- sh -c 'tty; stty size; exit 4'",
            c.kubeconfig.display()
        );
        let out = Command::new("/usr/bin/script")
            .args(["-qec", &inner, "/dev/null"])
            .env("KUBECACHEDIR", c._dir.path().join("kube-cache"))
            .stdin(Stdio::null())
            .output()
            .expect("run script");
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        assert_eq!(out.status.code(), Some(4), "{text}");
        // (script may pass on an end-of-input byte of its own, which the terminal echoes.)
        assert!(text.contains("/dev/pts/"), "{text}");
        assert!(text.contains("40 100\n"), "{text}");
        assert!(
            text.contains("command terminated with exit code 4"),
            "{text}"
        );
    } else {
        eprintln!("SKIPPED the `exec -t` check: /usr/bin/script (util-linux) is not installed");
    }

    // Errors as Kubernetes words them.
    let err = c.fails(&["exec", "web", "-c", "other", "--", "true"]);
    assert!(
        err.contains("container other is not valid for pod web"),
        "{err}"
    );
    let err = c.fails(&["exec", "missing", "--", "true"]);
    assert!(err.contains(r#"pods "missing" not found"#), "{err}");
    let err = c.fails(&["exec", "web", "--", "/no/such/program"]);
    assert!(err.contains("/no/such/program"), "{err}");

    // attach: the container's output from now on, until it ends; not its input.
    c.ok(&[
        "run",
        "ticker",
        "--image=busybox",
        "--restart=Never",
        "--command",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 40 ]; do echo tick $i; i=$((i+1)); sleep 0.2; done; echo bye",
    ]);
    eventually(
        &c,
        &["get", "pod", "ticker", "-o", "jsonpath={.status.phase}"],
        |p| p == "Running",
    );
    let err = c.fails(&["attach", "-i", "ticker"]);
    assert!(err.contains("standard input is not supported"), "{err}");
    let attached = c.ok(&["attach", "ticker"]);
    assert!(
        attached.contains("tick ") && attached.ends_with("bye\n"),
        "{attached}"
    );

    // port-forward: a local port to the pod's port, one connection after another.
    let served = eventually(&c, &["logs", "web"], |l| l.contains("Serving HTTP"));
    assert!(served.contains(&port.to_string()), "{served}");
    // First as kubectl 1.33 does it (SPDY tunnelled in a WebSocket), then its fallback,
    // plain SPDY/3.1 (what `KUBECTL_PORT_FORWARD_WEBSOCKETS=false` asks for).
    for websockets in ["true", "false"] {
        let local = common::free_port();
        let forward = PortForward(
            Command::new("/usr/bin/kubectl")
                .arg("--kubeconfig")
                .arg(&c.kubeconfig)
                .env("KUBECACHEDIR", c._dir.path().join("kube-cache"))
                .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
                .args(["port-forward", "pod/web", &format!("{local}:{port}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start kubectl port-forward"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let answer = loop {
            match http_get(local) {
                Ok(a) if a.contains("hello-from-pod") => break a,
                other => assert!(
                    Instant::now() < deadline,
                    "no answer through port-forward (websockets={websockets}): {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        for _ in 0..3 {
            let again = http_get(local).expect("another connection");
            assert!(again.contains("hello-from-pod"), "{again}");
        }
        drop(forward);
    }
}

#[test]
fn a_failing_liveness_probe_restarts_and_a_static_pod_shows_as_its_mirror() {
    if !kubectl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("manifest dir");
    std::fs::write(
        manifests.join("static-web.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: static-web\n  namespace: default\nspec:\n  containers:\n  - name: main\n    image: busybox\n    command: [sleep, \"3600\"]\n",
    )
    .expect("manifest");
    let c = up_with(dir, true, &["--manifests".as_ref(), manifests.as_os_str()]);

    // The static pod runs on node-1 and its mirror pod is in the API.
    let pods = eventually(&c, &["get", "pods"], |p| {
        p.lines()
            .any(|l| l.starts_with("static-web-node-1 ") && l.contains("Running"))
    });
    assert!(pods.contains("1/1"), "{pods}");
    let mirror = c.ok(&[
        "get",
        "pod",
        "static-web-node-1",
        "-o",
        "jsonpath={.metadata.annotations.kubernetes\\.io/config\\.mirror}",
    ]);
    assert!(!mirror.is_empty(), "a mirror pod: {pods}");

    // A container whose liveness probe fails is restarted.
    let probed = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"sick"},
      "spec":{"containers":[{"name":"main","image":"busybox","command":["sleep","3600"],
        "livenessProbe":{"exec":{"command":["sh","-c","exit 1"]},
          "periodSeconds":1,"failureThreshold":1}}]}}"#;
    let created = c.kubectl_stdin(&["create", "-f", "-"], Some(probed));
    assert!(created.status.success(), "{created:?}");
    eventually(
        &c,
        &[
            "get",
            "pod",
            "sick",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ],
        |n| n.parse::<u32>().is_ok_and(|n| n >= 1),
    );
    let row = c.ok(&["get", "pod", "sick", "--no-headers"]);
    let restarts = row.split_whitespace().nth(3).unwrap_or_default();
    assert!(
        restarts.parse::<u32>().is_ok_and(|n| n >= 1),
        "the RESTARTS column: {row}"
    );
}

/// The Python interpreter that has the `kubernetes` client, if any.
fn python_with_kubernetes_client() -> Option<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys, kubernetes; print(sys.executable)"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn a_pod_calls_the_api_server_with_its_mounted_token_and_ca() {
    if !kubectl_available() {
        return;
    }
    let c = up(false);
    eventually(&c, &["get", "nodes"], |n| {
        n.contains("node-1") && n.contains(" Ready")
    });
    eventually(&c, &["get", "serviceaccounts"], |out| {
        out.contains("default")
    });
    // The cluster's CA is published in every namespace.
    let kubeconfig = std::fs::read_to_string(&c.kubeconfig).expect("kubeconfig");
    let published = eventually(
        &c,
        &[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-o",
            r"jsonpath={.data.ca\.crt}",
        ],
        |ca| ca.starts_with("-----BEGIN CERTIFICATE-----"),
    );
    {
        use base64::Engine as _;
        let ca_data = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
            .expect("the kubeconfig's CA");
        let ca = base64::engine::general_purpose::STANDARD
            .decode(ca_data)
            .expect("base64");
        assert_eq!(published.as_bytes(), ca, "the CA kubectl trusts");
    }

    // As the Kubernetes docs' "access the API from a pod": the mounted token and CA, and
    // the address in KUBERNETES_SERVICE_HOST/PORT. (No mount namespace: the token volume
    // is under $KEELSON_ROOT.)
    let script = r#"d=$KEELSON_ROOT/var/run/secrets/kubernetes.io/serviceaccount
url=https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/$(cat $d/namespace)/pods
curl -s -o /dev/null -w "token %{http_code}\n" --cacert $d/ca.crt -H "Authorization: Bearer $(cat $d/token)" $url
forged=$(sed 's/[^.]*$/AAAA/' $d/token)
curl -s -o /dev/null -w "forged %{http_code}\n" --cacert $d/ca.crt -H "Authorization: Bearer $forged" $url
"#;
    let python = python_with_kubernetes_client();
    let in_cluster = python.as_ref().map(|exe| {
        // The official client's in-cluster configuration, pointed at the volume's files.
        let code = r#"import os
from kubernetes import client
from kubernetes.config.incluster_config import InClusterConfigLoader
d = os.environ["KEELSON_ROOT"] + "/var/run/secrets/kubernetes.io/serviceaccount/"
InClusterConfigLoader(d + "token", d + "ca.crt").load_and_set()
pods = client.CoreV1Api().list_namespaced_pod(open(d + "namespace").read())
print("python", [p.metadata.name for p in pods.items])"#;
        json!({"name": "python", "image": "python", "command": [exe, "-c", code]})
    });
    let mut containers =
        vec![json!({"name": "curl", "image": "curl", "command": ["sh", "-c", script]})];
    containers.extend(in_cluster);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "caller"},
        "spec": {"restartPolicy": "Never", "containers": containers}});
    let created = c.kubectl_stdin(&["create", "-f", "-"], Some(&pod.to_string()));
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let yaml = c.ok(&["get", "pod", "caller", "-o", "yaml"]);
    assert!(
        yaml.contains("serviceAccountName: default")
            && yaml.contains("name: kube-api-access-")
            && yaml.contains("mountPath: /var/run/secrets/kubernetes.io/serviceaccount")
            && yaml.contains("expirationSeconds: 3607"),
        "{yaml}"
    );
    let phase = eventually(
        &c,
        &["get", "pod", "caller", "-o", "jsonpath={.status.phase}"],
        |p| p == "Succeeded" || p == "Failed",
    );
    let logs = c.ok(&["logs", "caller", "-c", "curl"]);
    assert_eq!(logs, "token 200\nforged 401\n", "phase {phase}");
    match python {
        Some(_) => {
            let logs = c.ok(&["logs", "caller", "-c", "python"]);
            assert_eq!(logs, "python ['caller']\n");
        }
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have the Python kubernetes client"
            );
            eprintln!("SKIPPED (in part): the Python kubernetes client is not installed");
        }
    }
    assert_eq!(phase, "Succeeded");

    // An account that does not exist is refused as Kubernetes refuses it.
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"stranger"},
      "spec":{"serviceAccountName":"nobody","containers":[{"name":"c","image":"busybox"}]}}"#;
    let out = c.kubectl_stdin(&["create", "-f", "-"], Some(pod));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"Error from server (Forbidden): error when creating "STDIN": pods "stranger" is forbidden: error looking up service account default/nobody: serviceaccount "nobody" not found"#),
        "{err}"
    );
}
