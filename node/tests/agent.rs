//! The node agent end to end: an in-process API server, a ProcessRuntime running real
//! processes (`sh`, `sleep`), the loopback network.

mod common;

use std::time::Duration;

use common::*;
use keelson_core::client::{Api, DeleteOptions, Patch};
use keelson_core::k8s_openapi::api::coordination::v1::Lease;
use keelson_core::k8s_openapi::api::core::v1::{ConfigMap, Node as K8sNode, Pod, Secret, Service};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registers_with_conditions_capacity_and_a_renewed_lease() {
    let c = cluster().await;
    let node = Node::start(&c.client, "n1").await;
    let nodes: Api<K8sNode> = Api::all(c.client.clone());
    let n = eventually(10, "the node with its status", || async {
        let n = nodes.get_opt("n1").await.ok().flatten()?;
        n.status.as_ref()?.conditions.as_ref()?;
        Some(n)
    })
    .await;
    let status = n.status.expect("status");
    let conds: Vec<(String, String)> = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    assert!(
        conds.contains(&("Ready".into(), "True".into())),
        "{conds:?}"
    );
    for kind in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(
            conds.iter().any(|(k, _)| k == kind),
            "{kind} missing: {conds:?}"
        );
    }
    assert_eq!(status.capacity.expect("capacity")["cpu"].0, "4");
    assert_eq!(status.addresses.expect("addresses")[0].address, "127.0.0.1");
    assert_eq!(
        status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port),
        node.port.map(i32::from)
    );
    assert_eq!(
        n.spec.and_then(|s| s.pod_cidr).as_deref(),
        Some("127.9.0.0/16")
    );
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    let first = eventually(10, "the lease", || async {
        leases.get("n1").await.ok()?.spec?.renew_time
    })
    .await;
    eventually(10, "a renewal", || async {
        let l = leases.get("n1").await.ok()?;
        let t = l.spec?.renew_time?;
        (t != first).then_some(())
    })
    .await;
    let (code, body) = node.get("/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_with_its_address_environment_volumes_and_logs_and_stops_when_deleted() {
    let c = cluster().await;
    let node = Node::start(&c.client, "n1").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), NS);
    cms.create(&serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"mode": "fast", "file.txt": "from a volume"}})).expect("cm"))
        .await
        .expect("create cm");
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), NS);
    secrets
        .create(
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}),
            )
            .expect("secret"),
        )
        .await
        .expect("create secret");
    let svcs: Api<Service> = Api::namespaced(c.client.clone(), NS);
    svcs.create(&serde_json::from_value(json!({"metadata": {"name": "web-front"}, "spec": {"ports": [{"port": 8080, "name": "http"}]}})).expect("svc"))
        .await
        .expect("create service");
    let script = r#"echo "ip=$POD_IP mode=$MODE token=$TOKEN name=$MY_NAME mem=$MEM svc=$WEB_FRONT_SERVICE_PORT ref=$GREETING"; cat etc/config/file.txt; echo; cat "$KEELSON_ROOT/info/labels"; echo; exec sleep 600"#;
    let p = pod(
        "web",
        "n1",
        json!({
            "containers": [{
                "name": "main", "image": "busybox",
                "command": ["sh", "-c", script],
                "env": [
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                    {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "GREETING", "value": "hello $(MY_NAME)"},
                ],
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/config"}, {"name": "info", "mountPath": "/info"}],
            }],
            "volumes": [
                {"name": "config", "configMap": {"name": "settings"}},
                {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            ],
        }),
    );
    let mut p = p;
    p.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    pods.create(&p).await.expect("create pod");
    let running = eventually(20, "the pod to be ready", || async {
        let p = get_pod(&c.client, "web").await?;
        (phase(&p) == "Running" && condition(&p, "Ready").as_deref() == Some("True")).then_some(p)
    })
    .await;
    let status = running.status.clone().expect("status");
    let ip = status.pod_ip.clone().expect("podIP");
    assert!(ip.starts_with("127.9."), "{ip}");
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        status.qos_class.as_deref(),
        Some("Guaranteed"),
        "limits alone make requests too"
    );
    assert!(status.start_time.is_some());
    for kind in [
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodReadyToStartContainers",
    ] {
        assert_eq!(condition(&running, kind).as_deref(), Some("True"), "{kind}");
    }
    let cs = container_status(&running, "main").expect("container status");
    assert!(
        cs.ready
            && cs.restart_count == 0
            && cs
                .container_id
                .as_deref()
                .is_some_and(|i| i.starts_with("process://"))
    );
    let expected = format!("ip={ip} mode=fast token=s3cret name=web mem=64 svc=8080 ref=hello web\nfrom a volume\napp=\"web\"\n");
    let body = eventually(10, "the log lines", || async {
        let (code, body) = node.get(&format!("/containerLogs/{NS}/web/main")).await;
        (code == 200 && body == expected).then_some(body)
    })
    .await;
    assert_eq!(body, expected);
    let (_, tail) = node
        .get(&format!(
            "/containerLogs/{NS}/web/main?tailLines=1&timestamps=true"
        ))
        .await;
    assert!(
        tail.ends_with(" app=\"web\"\n") && tail.lines().count() == 1,
        "{tail:?}"
    );
    let (code, _) = node.get(&format!("/containerLogs/{NS}/web/nope")).await;
    assert_eq!(code, 404);
    let (code, _) = node
        .get(&format!("/containerLogs/{NS}/web/main?previous=true"))
        .await;
    assert_eq!(code, 400, "no previous instance yet");
    let (code, out) = node
        .request(
            "POST",
            &format!("/exec/{NS}/web/main?command=sh&command=-c&command=echo%20$MODE"),
        )
        .await;
    assert_eq!(code, 200, "{out}");
    let out: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(out["stdout"], "fast\n");
    assert_eq!(out["exitCode"], 0);
    // The streaming endpoints want their upgrades (kubectl's, through the API server, in
    // keelson's kubectl tests) and say so.
    let (code, body) = node
        .get(&format!("/exec/{NS}/web/main?command=true&stdout=true"))
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("v5.channel.k8s.io"), "{body}");
    let (code, body) = node.get(&format!("/exec/{NS}/web/main?stdout=true")).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("at least 1 command"), "{body}");
    let (code, body) = node
        .request("POST", &format!("/portforward/{NS}/web"))
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("SPDY/3.1"), "{body}");
    let (code, _) = node.get(&format!("/portforward/{NS}/nope")).await;
    assert_eq!(code, 404);
    let pids = node.runtime.running_pids();
    assert_eq!(pids.len(), 1);
    pods.delete("web", &DeleteOptions::default())
        .await
        .expect("delete");
    eventually(20, "the pod object to go", || async {
        get_pod(&c.client, "web").await.is_none().then_some(())
    })
    .await;
    assert!(!alive(pids[0]), "the process ended");
    assert!(node.runtime.running_pids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_before_the_containers_and_the_pod_succeeds() {
    let c = cluster().await;
    let _node = Node::start(&c.client, "n1").await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    pods.create(&pod("job", "n1", json!({
        "restartPolicy": "Never",
        "initContainers": [
            {"name": "first", "image": "sh", "command": ["sh", "-c", "echo one > work/order"], "volumeMounts": [{"name": "w", "mountPath": "/work"}]},
            {"name": "second", "image": "sh", "command": ["sh", "-c", "echo two >> work/order"], "volumeMounts": [{"name": "w", "mountPath": "/work"}]},
        ],
        "containers": [{"name": "main", "image": "sh", "command": ["sh", "-c", "test \"$(cat work/order)\" = \"$(printf 'one\\ntwo')\""], "volumeMounts": [{"name": "w", "mountPath": "/work"}]}],
        "volumes": [{"name": "w", "emptyDir": {}}],
    })))
    .await
    .expect("create");
    let done = eventually(20, "the pod to finish", || async {
        let p = get_pod(&c.client, "job").await?;
        matches!(phase(&p).as_str(), "Succeeded" | "Failed").then_some(p)
    })
    .await;
    assert_eq!(phase(&done), "Succeeded", "{:?}", done.status);
    let status = done.status.expect("status");
    let inits = status.init_container_statuses.expect("init statuses");
    for s in &inits {
        let t = s
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("terminated");
        assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    }
    let main = &status.container_statuses.expect("statuses")[0];
    assert_eq!(
        main.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code),
        Some(0)
    );
    assert_eq!(
        status
            .conditions
            .expect("conditions")
            .iter()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.reason.clone())
            .as_deref(),
        Some("PodCompleted")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_container_goes_into_crash_loop_back_off_with_its_last_state() {
    let c = cluster().await;
    let node = Node::start(&c.client, "n1").await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    pods.create(&pod("crash", "n1", json!({
        "containers": [{"name": "main", "image": "sh", "command": ["sh", "-c", "echo attempt; exit 3"]}],
    })))
    .await
    .expect("create");
    let p = eventually(20, "a crash loop", || async {
        let p = get_pod(&c.client, "crash").await?;
        let cs = container_status(&p, "main")?;
        (cs.restart_count >= 2 && waiting_reason(&p, "main").as_deref() == Some("CrashLoopBackOff"))
            .then_some(p)
    })
    .await;
    assert_eq!(phase(&p), "Running");
    let cs = container_status(&p, "main").expect("status");
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    let msg = cs
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains("back-off") && msg.contains("container=main"),
        "{msg}"
    );
    let (code, body) = node
        .get(&format!("/containerLogs/{NS}/crash/main?previous=true"))
        .await;
    assert_eq!((code, body.as_str()), (200, "attempt\n"));
    assert_eq!(condition(&p, "Ready").as_deref(), Some("False"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pods_show_kubernetes_reasons_and_do_not_stop_the_others() {
    let c = cluster().await;
    let _node = Node::start(&c.client, "n1").await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), NS);
    cms.create(
        &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"other": "x"}}))
            .expect("cm"),
    )
    .await
    .expect("cm");
    pods.create(&pod("nokey", "n1", json!({"containers": [{"name": "main", "image": "sh", "command": ["sleep", "600"],
        "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "wanted"}}}]}]})))
        .await
        .expect("create");
    pods.create(&pod("nocmd", "n1", json!({"restartPolicy": "Never", "containers": [{"name": "main", "image": "x", "command": ["keelson-no-such-binary"]}]})))
        .await
        .expect("create");
    pods.create(&pod("novol", "n1", json!({"containers": [{"name": "main", "image": "sh", "command": ["sleep", "600"], "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
        "volumes": [{"name": "v", "secret": {"secretName": "missing"}}]})))
        .await
        .expect("create");
    pods.create(&pod(
        "good",
        "n1",
        json!({"containers": [{"name": "main", "image": "sh", "command": ["sleep", "600"]}]}),
    ))
    .await
    .expect("create");
    let p = eventually(20, "CreateContainerConfigError", || async {
        let p = get_pod(&c.client, "nokey").await?;
        (waiting_reason(&p, "main").as_deref() == Some("CreateContainerConfigError")).then_some(p)
    })
    .await;
    let msg = container_status(&p, "main")
        .and_then(|s| s.state.clone())
        .and_then(|s| s.waiting)
        .and_then(|w| w.message)
        .unwrap_or_default();
    assert_eq!(
        msg,
        format!("couldn't find key wanted in ConfigMap {NS}/cfg")
    );
    assert_eq!(phase(&p), "Pending");
    let p = eventually(20, "the failed start", || async {
        let p = get_pod(&c.client, "nocmd").await?;
        (phase(&p) == "Failed").then_some(p)
    })
    .await;
    let t = container_status(&p, "main")
        .and_then(|s| s.state.clone())
        .and_then(|s| s.terminated)
        .unwrap_or_else(|| panic!("terminated: {:?}", p.status));
    assert_eq!(
        (t.exit_code, t.reason.as_deref()),
        (128, Some("StartError"))
    );
    assert!(t
        .message
        .unwrap_or_default()
        .contains("executable file not found in $PATH"));
    let p = eventually(20, "a failed mount", || async {
        let p = get_pod(&c.client, "novol").await?;
        let w = container_status(&p, "main")?.state.clone()?.waiting?;
        (w.reason.as_deref() == Some("ContainerCreating")
            && w.message
                .unwrap_or_default()
                .contains("secret \"missing\" not found"))
        .then_some(p)
    })
    .await;
    assert_eq!(phase(&p), "Pending");
    eventually(20, "the good pod to run", || async {
        let p = get_pod(&c.client, "good").await?;
        (phase(&p) == "Running").then_some(())
    })
    .await;
    // Fixing the config map lets the waiting pod start.
    cms.patch("cfg", &Patch::Merge(json!({"data": {"wanted": "yes"}})))
        .await
        .expect("patch");
    eventually(20, "the fixed pod to run", || async {
        let p = get_pod(&c.client, "nokey").await?;
        (phase(&p) == "Running").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_gate_readiness_and_a_failing_liveness_probe_restarts_the_container() {
    let c = cluster().await;
    let _node = Node::start(&c.client, "n1").await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    pods.create(&pod("probed", "n1", json!({"containers": [{
        "name": "main", "image": "sh",
        "command": ["sh", "-c", "rm -f ready; sleep 1; touch ready; exec sleep 600"],
        "readinessProbe": {"exec": {"command": ["test", "-f", "ready"]}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": 1}, "initialDelaySeconds": 3, "periodSeconds": 1, "failureThreshold": 2},
    }]})))
    .await
    .expect("create");
    let p = eventually(10, "running but not ready", || async {
        let p = get_pod(&c.client, "probed").await?;
        (phase(&p) == "Running").then_some(p)
    })
    .await;
    assert_eq!(
        condition(&p, "Ready").as_deref(),
        Some("False"),
        "not ready before the probe passes"
    );
    eventually(10, "ready", || async {
        let p = get_pod(&c.client, "probed").await?;
        (condition(&p, "Ready").as_deref() == Some("True")).then_some(())
    })
    .await;
    let p = eventually(20, "a liveness restart", || async {
        let p = get_pod(&c.client, "probed").await?;
        (container_status(&p, "main")?.restart_count >= 1).then_some(p)
    })
    .await;
    let last = container_status(&p, "main")
        .and_then(|s| s.last_state.clone())
        .and_then(|s| s.terminated)
        .expect("lastState");
    assert_ne!(last.exit_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_runs_pre_stop_then_sigterm_within_the_grace_period() {
    let c = cluster().await;
    let node = Node::start(&c.client, "n1").await;
    let marks = node.dir.join("marks");
    std::fs::create_dir_all(&marks).expect("dir");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let script = "trap 'echo term > m/term; exit 0' TERM; while true; do sleep 0.1; done";
    pods.create(&pod("graceful", "n1", json!({
        "terminationGracePeriodSeconds": 10,
        "containers": [{"name": "main", "image": "sh", "command": ["sh", "-c", script],
            "volumeMounts": [{"name": "m", "mountPath": "/m"}],
            "lifecycle": {
                "postStart": {"exec": {"command": ["sh", "-c", "echo started > m/post"]}},
                "preStop": {"exec": {"command": ["sh", "-c", "echo stopping > m/pre"]}},
            }}],
        "volumes": [{"name": "m", "hostPath": {"path": marks.to_str().expect("utf8"), "type": "Directory"}}],
    })))
    .await
    .expect("create");
    eventually(20, "running", || async {
        let p = get_pod(&c.client, "graceful").await?;
        (phase(&p) == "Running").then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(marks.join("post")).expect("postStart ran"),
        "started\n"
    );
    pods.delete("graceful", &DeleteOptions::default())
        .await
        .expect("delete");
    eventually(20, "the pod object to go", || async {
        get_pod(&c.client, "graceful").await.is_none().then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(marks.join("pre")).expect("preStop ran"),
        "stopping\n"
    );
    assert_eq!(
        std::fs::read_to_string(marks.join("term")).expect("SIGTERM handled"),
        "term\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_deadline_fails_the_pod() {
    let c = cluster().await;
    let node = Node::start(&c.client, "n1").await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    pods.create(&pod("deadline", "n1", json!({"activeDeadlineSeconds": 1, "containers": [{"name": "main", "image": "sh", "command": ["sleep", "600"]}]})))
        .await
        .expect("create");
    let p = eventually(20, "the deadline", || async {
        let p = get_pod(&c.client, "deadline").await?;
        (phase(&p) == "Failed").then_some(p)
    })
    .await;
    assert_eq!(
        p.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("DeadlineExceeded")
    );
    assert!(
        node.runtime.running_pids().is_empty(),
        "its process was stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_its_containers_without_duplicates_and_removes_orphans() {
    let c = cluster().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_in(&c.client, "n1", tmp.path().to_owned(), fast_config(), None).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    pods.create(&pod(
        "keep",
        "n1",
        json!({"containers": [{"name": "main", "image": "sh", "command": ["sleep", "600"]}]}),
    ))
    .await
    .expect("create");
    pods.create(&pod(
        "gone",
        "n1",
        json!({"containers": [{"name": "main", "image": "sh", "command": ["sleep", "600"]}]}),
    ))
    .await
    .expect("create");
    let before = eventually(20, "both running", || async {
        let a = get_pod(&c.client, "keep").await?;
        let b = get_pod(&c.client, "gone").await?;
        (phase(&a) == "Running" && phase(&b) == "Running").then_some(a)
    })
    .await;
    let id_before = container_status(&before, "main").and_then(|s| s.container_id.clone());
    let pids = node.runtime.running_pids();
    assert_eq!(pids.len(), 2);
    node.stop().await;
    // While no agent runs, one pod is deleted for good.
    pods.delete(
        "gone",
        &DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        },
    )
    .await
    .expect("delete");
    let node = Node::start_in(&c.client, "n1", tmp.path().to_owned(), fast_config(), None).await;
    eventually(20, "the orphan to be stopped", || async {
        (node.runtime.running_pids().len() == 1).then_some(())
    })
    .await;
    let after = get_pod(&c.client, "keep").await.expect("pod");
    let cs = container_status(&after, "main").expect("status");
    assert_eq!(cs.container_id, id_before, "the same container, adopted");
    assert_eq!(cs.restart_count, 0);
    let remaining = node.runtime.running_pids();
    assert!(pids.contains(&remaining[0]), "no duplicate was started");
    assert_eq!(
        pids.iter().filter(|p| alive(**p)).count(),
        1,
        "the orphan's process ended"
    );
    // The adopted container is still managed: deleting its pod stops it.
    pods.delete("keep", &DeleteOptions::default())
        .await
        .expect("delete");
    eventually(20, "the pod object to go", || async {
        get_pod(&c.client, "keep").await.is_none().then_some(())
    })
    .await;
    assert!(!alive(remaining[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pods_follow_their_manifests_and_show_as_mirror_pods() {
    let c = cluster().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    let manifest = |cmd: &str| {
        format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: static-web\n  namespace: {NS}\nspec:\n  containers:\n  - name: main\n    image: sh\n    command: [\"sh\", \"-c\", \"{cmd}\"]\n"
    )
    };
    std::fs::write(manifests.join("web.yaml"), manifest("exec sleep 600")).expect("write");
    let node = Node::start_in(
        &c.client,
        "n1",
        tmp.path().join("node"),
        fast_config(),
        Some(manifests.clone()),
    )
    .await;
    let mirror = eventually(20, "the mirror pod to run", || async {
        let p = get_pod(&c.client, "static-web-n1").await?;
        (phase(&p) == "Running").then_some(p)
    })
    .await;
    let ann = mirror.metadata.annotations.clone().unwrap_or_default();
    let hash = ann
        .get("kubernetes.io/config.mirror")
        .cloned()
        .expect("mirror annotation");
    assert_eq!(
        mirror.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("n1")
    );
    assert_eq!(node.runtime.running_pids().len(), 1);
    // Deleting the mirror pod does not stop the static pod; the mirror comes back.
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    pods.delete("static-web-n1", &DeleteOptions::default())
        .await
        .expect("delete mirror");
    eventually(20, "the mirror pod to come back", || async {
        let p = get_pod(&c.client, "static-web-n1").await?;
        (p.metadata.deletion_timestamp.is_none()
            && phase(&p) == "Running"
            && p.metadata.uid != mirror.metadata.uid)
            .then_some(())
    })
    .await;
    assert_eq!(node.runtime.running_pids().len(), 1);
    // A changed manifest restarts the pod.
    let old_pid = node.runtime.running_pids()[0];
    std::fs::write(
        manifests.join("web.yaml"),
        manifest("echo v2; exec sleep 600"),
    )
    .expect("write");
    eventually(20, "the new pod", || async {
        let p = get_pod(&c.client, "static-web-n1").await?;
        let h = p
            .metadata
            .annotations
            .clone()?
            .get("kubernetes.io/config.mirror")
            .cloned()?;
        (h != hash && phase(&p) == "Running").then_some(())
    })
    .await;
    eventually(20, "one process, the new one", || async {
        let pids = node.runtime.running_pids();
        (pids.len() == 1 && pids[0] != old_pid).then_some(())
    })
    .await;
    assert!(!alive(old_pid));
    // A removed manifest stops the pod and deletes its mirror.
    std::fs::remove_file(manifests.join("web.yaml")).expect("remove");
    eventually(20, "the mirror pod to go", || async {
        get_pod(&c.client, "static-web-n1")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    eventually(20, "the process to stop", || async {
        node.runtime.running_pids().is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_until_the_container_ends() {
    let c = cluster().await;
    let node = Node::start(&c.client, "n1").await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    pods.create(&pod(
        "counter",
        "n1",
        json!({"restartPolicy": "Never", "containers": [{"name": "main", "image": "sh",
        "command": ["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.5; done"]}]}),
    ))
    .await
    .expect("create");
    eventually(20, "running", || async {
        let p = get_pod(&c.client, "counter").await?;
        (phase(&p) != "Pending").then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let (code, body) = tokio::time::timeout(
        Duration::from_secs(20),
        node.get(&format!("/containerLogs/{NS}/counter/main?follow=true")),
    )
    .await
    .expect("the follow ends with the container");
    assert_eq!(code, 200);
    assert_eq!(body, "line 1\nline 2\nline 3\n");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it followed rather than returned at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_image_restarts_the_container_and_on_failure_restarts_only_failures() {
    let c = cluster().await;
    let _node = Node::start(&c.client, "n1").await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    pods.create(&pod(
        "img",
        "n1",
        json!({"containers": [{"name": "main", "image": "v1", "command": ["sleep", "600"]}]}),
    ))
    .await
    .expect("create");
    let before = eventually(20, "running", || async {
        let p = get_pod(&c.client, "img").await?;
        (phase(&p) == "Running")
            .then(|| container_status(&p, "main").and_then(|s| s.container_id.clone()))?
    })
    .await;
    pods.patch(
        "img",
        &Patch::Strategic(json!({"spec": {"containers": [{"name": "main", "image": "v2"}]}})),
    )
    .await
    .expect("set image");
    let p = eventually(20, "the restart with the new image", || async {
        let p = get_pod(&c.client, "img").await?;
        let cs = container_status(&p, "main")?;
        (cs.image == "v2"
            && cs.restart_count == 1
            && cs.container_id.as_ref() != Some(&before)
            && phase(&p) == "Running")
            .then_some(p)
    })
    .await;
    assert!(container_status(&p, "main")
        .and_then(|s| s.state.clone())
        .and_then(|s| s.running)
        .is_some());
    pods.create(&pod("once", "n1", json!({"restartPolicy": "OnFailure", "containers": [
        {"name": "ok", "image": "sh", "command": ["true"]},
        {"name": "flaky", "image": "sh", "command": ["sh", "-c", "if [ -f w/done ]; then exit 0; fi; touch w/done; exit 1"],
         "volumeMounts": [{"name": "w", "mountPath": "/w"}]},
    ], "volumes": [{"name": "w", "emptyDir": {}}]})))
    .await
    .expect("create");
    let p = eventually(20, "the pod to succeed", || async {
        let p = get_pod(&c.client, "once").await?;
        (phase(&p) == "Succeeded").then_some(p)
    })
    .await;
    assert_eq!(container_status(&p, "ok").map(|s| s.restart_count), Some(0));
    assert_eq!(
        container_status(&p, "flaky").map(|s| s.restart_count),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_get_probes_pass_on_2xx_and_fail_on_404() {
    let c = cluster().await;
    let node = Node::start(&c.client, "n1").await;
    // The agent's own endpoint serves as the probed HTTP server.
    let port = node.port.expect("port");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    for (name, path) in [("good", "/healthz"), ("bad", "/no-such-path")] {
        pods.create(&pod(name, "n1", json!({"containers": [{"name": "main", "image": "sh", "command": ["sleep", "600"],
            "readinessProbe": {"httpGet": {"host": "127.0.0.1", "port": port, "path": path}, "periodSeconds": 1, "failureThreshold": 1}}]})))
            .await
            .expect("create");
    }
    eventually(20, "the good pod to be ready", || async {
        let p = get_pod(&c.client, "good").await?;
        (condition(&p, "Ready").as_deref() == Some("True")).then_some(())
    })
    .await;
    // For two more probe periods, the other pod never becomes ready.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        let bad = get_pod(&c.client, "bad").await.expect("pod");
        assert_eq!(phase(&bad), "Running");
        assert_eq!(
            condition(&bad, "Ready").as_deref(),
            Some("False"),
            "a 404 is a failed probe"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_another_component_changed_are_put_right_before_the_next_report() {
    let c = cluster().await;
    let _node = Node::start(&c.client, "n1").await;
    let nodes: Api<K8sNode> = Api::all(c.client.clone());
    let ready = |n: &K8sNode| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone())
    };
    eventually(10, "Ready", || async {
        let n = nodes.get_opt("n1").await.ok().flatten()?;
        (ready(&n)? == "True").then_some(())
    })
    .await;
    // What the node lifecycle controller writes after a partition; the periodic report
    // is minutes away (fast_config keeps the 5 min default).
    let unknown = json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown",
        "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status."}]}});
    nodes
        .patch_status("n1", &Patch::Strategic(unknown))
        .await
        .expect("mark Unknown");
    eventually(10, "Ready again", || async {
        let n = nodes.get_opt("n1").await.ok().flatten()?;
        (ready(&n)? == "True").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_keeps_the_taints_and_cordon_others_set() {
    let c = cluster().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config();
    config.taints = vec![serde_json::from_value(
        json!({"key": "dedicated", "value": "ci", "effect": "NoSchedule"}),
    )
    .expect("taint")];
    let node = Node::start_in(&c.client, "n1", tmp.path().to_owned(), config.clone(), None).await;
    let nodes: Api<K8sNode> = Api::all(c.client.clone());
    eventually(10, "registered with its taint", || async {
        let n = nodes.get_opt("n1").await.ok().flatten()?;
        (n.spec?.taints?.len() == 1).then_some(())
    })
    .await;
    // An administrator cordons the node and lifts the agent's taint.
    nodes
        .patch(
            "n1",
            &Patch::Merge(json!({"spec": {"unschedulable": true, "taints": [
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}})),
        )
        .await
        .expect("cordon");
    drop(node);
    let _node = Node::start_in(&c.client, "n1", tmp.path().to_owned(), config, None).await;
    eventually(10, "re-registered", || async {
        let n = nodes.get_opt("n1").await.ok().flatten()?;
        let ready = n
            .status?
            .conditions?
            .into_iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spec = nodes.get("n1").await.expect("node").spec.expect("spec");
    assert_eq!(spec.unschedulable, Some(true), "still cordoned");
    let taints: Vec<String> = spec
        .taints
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert_eq!(
        taints,
        ["node.kubernetes.io/unschedulable"],
        "the agent's taint is not put back"
    );
}
