//! Every example runs to completion and prints what it promises.

use std::process::Command;

#[test]
fn store_watch_example_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_store_watch"))
        .output()
        .expect("run store_watch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "store_watch failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stale update refused"), "{stdout}");
    assert!(
        stdout.contains("event at revision 4: delete /demo/b = second"),
        "{stdout}"
    );
    assert!(
        stdout.contains("after reopening at revision 4: 1 key(s)"),
        "{stdout}"
    );
}

#[test]
fn embedded_apiserver_example_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_embedded_apiserver"))
        .output()
        .expect("run embedded_apiserver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "embedded_apiserver failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("refused: pods \"web\" is forbidden"),
        "{stdout}"
    );
    assert!(stdout.contains("(403 Forbidden)"), "{stdout}");
    assert!(
        stdout.contains(r#"created pod "web" with status "Pending""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"GET over HTTP: HTTP/1.1 200 OK; pod "web" in "default""#),
        "{stdout}"
    );
}

#[test]
fn client_example_runs_over_both_transports() {
    let out = Command::new(env!("CARGO_BIN_EXE_client"))
        .output()
        .expect("run client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for transport in ["in-process", "http"] {
        assert!(
            stdout.contains(&format!(
                "{transport}: watched settings-{transport} change to mode=fast"
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                r#"{transport}: get missing: configmaps "missing" not found (404)"#
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("http: configmaps in demo: settings-http, settings-in-process"),
        "{stdout}"
    );
}

#[test]
fn custom_scheduler_example_places_pods_by_its_own_plugin() {
    let out = Command::new(env!("CARGO_BIN_EXE_custom_scheduler"))
        .output()
        .expect("run custom_scheduler");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "custom_scheduler failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for pod in ["tiered-1", "tiered-2"] {
        assert!(
            stdout.contains(&format!("pod {pod} (tiered-scheduler) -> node-gold")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("pod greedy is pending: 0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."),
        "{stdout}"
    );
}

#[test]
fn cluster_controller_example_tests_a_controller_on_a_whole_cluster() {
    let out = Command::new(env!("CARGO_BIN_EXE_cluster_controller"))
        .output()
        .expect("run cluster_controller");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cluster_controller failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "cluster up with 3 nodes",
        "web: 3 ready pods counted",
        "web: scaled, 5 ready pods counted",
        "web: scaled to zero, 0 ready pods counted",
    ] {
        assert!(stdout.contains(line), "{stdout}");
    }
}
