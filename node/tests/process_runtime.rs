//! ProcessRuntime beyond the shared suite: graceful stop, re-adoption by a new runtime on
//! the same state directory, log rotation, stats, environment and paths.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use keelson_node::{
    ContainerConfig, ContainerState, LogOptions, Mount, ProcessRuntime, Runtime, SandboxConfig,
};

struct Killer(Vec<std::sync::Arc<ProcessRuntime>>);
impl Drop for Killer {
    fn drop(&mut self) {
        for r in &self.0 {
            r.kill_all();
        }
    }
}

fn sh(script: &str) -> ContainerConfig {
    ContainerConfig {
        name: "c".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        labels: BTreeMap::new(),
        ..ContainerConfig::default()
    }
}

async fn sandbox(rt: &ProcessRuntime) -> String {
    rt.run_sandbox(&SandboxConfig {
        uid: "u".into(),
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox")
}

async fn logs(rt: &dyn Runtime, id: &str, o: LogOptions) -> String {
    let mut s = rt.logs(id, &o).await.expect("logs");
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend(c.expect("chunk"));
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_ignoring_sigterm_is_killed_after_the_grace_period_with_its_children() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = std::sync::Arc::new(ProcessRuntime::open(dir.path()).expect("open"));
    let _k = Killer(vec![rt.clone()]);
    let sb = sandbox(&rt).await;
    let id = rt
        .create_container(&sb, &sh("trap '' TERM; sleep 600 & echo $! > child; wait"))
        .await
        .expect("create");
    rt.start_container(&id).await.expect("start");
    let root = dir.path().join("containers").join(&id).join("root");
    let child_file = root.join("child");
    wait_for("the child", || {
        std::fs::read_to_string(&child_file).is_ok_and(|s| !s.trim().is_empty())
    })
    .await;
    let child: i32 = std::fs::read_to_string(&child_file)
        .expect("child")
        .trim()
        .parse()
        .expect("pid");
    let stats = rt.stats(&id).await.expect("stats");
    assert!(stats.processes >= 2, "{stats:?}");
    assert!(stats.memory_bytes > 0);
    let t = Instant::now();
    rt.stop_container(&id, Duration::from_millis(500))
        .await
        .expect("stop");
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "it waited for the grace period"
    );
    let s = rt.container_status(&id).await.expect("status");
    assert_eq!(s.state, ContainerState::Exited);
    assert_eq!(s.exit_code, Some(137), "SIGKILL after the grace period");
    wait_for("the child to die", || {
        std::fs::read_to_string(format!("/proc/{child}/stat")).map_or(true, |s| s.contains(") Z"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_runtime_on_the_same_directory_adopts_running_containers_and_their_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = std::sync::Arc::new(ProcessRuntime::open(dir.path()).expect("open"));
    let mut killer = Killer(vec![first.clone()]);
    let sb = sandbox(&first).await;
    let id = first
        .create_container(
            &sb,
            &sh("i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done"),
        )
        .await
        .expect("create");
    first.start_container(&id).await.expect("start");
    let pid = first.running_pids()[0];
    wait_for("a line", || {
        std::fs::read_to_string(
            dir.path()
                .join("containers")
                .join(&id)
                .join("container.log"),
        )
        .is_ok_and(|s| s.contains("tick 2"))
    })
    .await;
    drop(killer.0.pop());
    drop(first);
    // The process keeps running and writing while no runtime reads.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = std::sync::Arc::new(ProcessRuntime::open(dir.path()).expect("reopen"));
    killer.0.push(second.clone());
    assert_eq!(second.running_pids(), vec![pid], "adopted, not restarted");
    let s = second.container_status(&id).await.expect("status");
    assert_eq!(s.state, ContainerState::Running);
    assert_eq!(second.list_sandboxes().await.expect("list").len(), 1);
    let before = logs(second.as_ref(), &id, LogOptions::default())
        .await
        .lines()
        .count();
    wait_for("more lines through the new runtime", || {
        std::fs::read_to_string(
            dir.path()
                .join("containers")
                .join(&id)
                .join("container.log"),
        )
        .is_ok_and(|s| s.lines().count() > before + 3)
    })
    .await;
    let text = logs(second.as_ref(), &id, LogOptions::default()).await;
    let numbers: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "no line lost or repeated across the restart: {numbers:?}"
    );
    second
        .stop_container(&id, Duration::from_secs(5))
        .await
        .expect("stop");
    let s = second.container_status(&id).await.expect("status");
    assert_eq!(s.state, ContainerState::Exited);
    assert_eq!(
        s.exit_code,
        Some(143),
        "SIGTERM ended it; the old runtime's reaper recorded the code"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_rotate_by_size_and_tail_reads_across_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = std::sync::Arc::new(
        ProcessRuntime::open(dir.path())
            .expect("open")
            .with_log_limits(4096, 2),
    );
    let _k = Killer(vec![rt.clone()]);
    let sb = sandbox(&rt).await;
    let id = rt
        .create_container(
            &sb,
            &sh("i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo \"line $i of the log\"; done"),
        )
        .await
        .expect("create");
    rt.start_container(&id).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.container_status(&id).await.expect("status").state != ContainerState::Exited {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cdir = dir.path().join("containers").join(&id);
    wait_for("the log copier", || {
        std::fs::read_to_string(cdir.join("container.log")).is_ok_and(|s| s.contains("line 400 "))
    })
    .await;
    assert!(cdir.join("container.log.1").exists() && cdir.join("container.log.2").exists());
    assert!(
        !cdir.join("container.log.3").exists(),
        "only 2 rotated files are kept"
    );
    for f in ["container.log", "container.log.1", "container.log.2"] {
        assert!(std::fs::metadata(cdir.join(f)).expect("file").len() < 4096 + 100);
    }
    let tail = logs(
        rt.as_ref(),
        &id,
        LogOptions {
            tail_lines: Some(3),
            ..LogOptions::default()
        },
    )
    .await;
    assert_eq!(
        tail,
        "line 398 of the log\nline 399 of the log\nline 400 of the log\n"
    );
    let limited = logs(
        rt.as_ref(),
        &id,
        LogOptions {
            limit_bytes: Some(5),
            ..LogOptions::default()
        },
    )
    .await;
    assert_eq!(limited.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_the_containers_own_and_mounts_appear_under_its_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = std::sync::Arc::new(ProcessRuntime::open(dir.path().join("rt")).expect("open"));
    let _k = Killer(vec![rt.clone()]);
    let vol = dir.path().join("vol");
    std::fs::create_dir_all(&vol).expect("vol");
    std::fs::write(vol.join("key"), "value").expect("write");
    let sb = sandbox(&rt).await;
    std::env::set_var("KEELSON_AGENT_ONLY", "leak");
    let mut cfg = sh(
        "echo \"$(cat conf/key) $FOO ${KEELSON_AGENT_ONLY:-none} $KEELSON_VOLUME_MY_VOL $(pwd)\"",
    );
    cfg.env = vec![("FOO".into(), "bar".into())];
    cfg.working_dir = Some("/data".into());
    cfg.mounts = vec![Mount {
        volume: "my-vol".into(),
        container_path: "/data/conf".into(),
        host_path: vol.clone(),
        read_only: false,
    }];
    let id = rt.create_container(&sb, &cfg).await.expect("create");
    rt.start_container(&id).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = logs(rt.as_ref(), &id, LogOptions::default()).await;
        if !text.is_empty() {
            let root = dir
                .path()
                .join("rt")
                .join("containers")
                .join(&id)
                .join("root");
            assert_eq!(
                text,
                format!(
                    "value bar none {} {}\n",
                    vol.display(),
                    root.join("data").display()
                )
            );
            break;
        }
        assert!(Instant::now() < deadline, "no output");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // With neither command nor args, the image names the program.
    let cfg = ContainerConfig {
        name: "img".into(),
        image: "docker.io/library/true:latest".into(),
        ..ContainerConfig::default()
    };
    let id = rt.create_container(&sb, &cfg).await.expect("create");
    rt.start_container(&id)
        .await
        .expect("the image names a host program");
    // With only args, the first is the program.
    let cfg = ContainerConfig {
        name: "args".into(),
        image: "busybox".into(),
        args: vec!["sh".into(), "-c".into(), "exit 7".into()],
        ..ContainerConfig::default()
    };
    let id = rt.create_container(&sb, &cfg).await.expect("create");
    rt.start_container(&id).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.container_status(&id).await.expect("status").exit_code != Some(7) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_written_to_the_containers_cgroup_and_reported_as_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A plain directory stands in for a writable cgroup v2 parent.
    let cgroups = dir.path().join("cgroup");
    std::fs::create_dir_all(&cgroups).expect("dir");
    let rt = std::sync::Arc::new(
        ProcessRuntime::open(dir.path().join("rt"))
            .expect("open")
            .with_cgroup_parent(Some(cgroups.clone())),
    );
    let plain = std::sync::Arc::new(
        ProcessRuntime::open(dir.path().join("plain"))
            .expect("open")
            .with_cgroup_parent(None),
    );
    let _k = Killer(vec![rt.clone(), plain.clone()]);
    let mut cfg = ContainerConfig {
        name: "c".into(),
        command: vec!["sleep".into(), "600".into()],
        ..ContainerConfig::default()
    };
    cfg.limits.memory_bytes = Some(64 << 20);
    cfg.limits.cpu_millis = Some(500);
    let sb = sandbox(&rt).await;
    let id = rt.create_container(&sb, &cfg).await.expect("create");
    rt.start_container(&id).await.expect("start");
    let cg = cgroups.join(&id);
    assert_eq!(
        std::fs::read_to_string(cg.join("memory.max")).expect("memory.max"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.max")).expect("cpu.max"),
        "50000 100000"
    );
    assert_eq!(
        std::fs::read_to_string(cg.join("cgroup.procs")).expect("procs"),
        rt.running_pids()[0].to_string()
    );
    assert!(
        rt.container_status(&id)
            .await
            .expect("status")
            .limits_enforced
    );
    let sb = sandbox(&plain).await;
    let id = plain.create_container(&sb, &cfg).await.expect("create");
    plain.start_container(&id).await.expect("start");
    assert!(
        !plain
            .container_status(&id)
            .await
            .expect("status")
            .limits_enforced,
        "no cgroup: not enforced, and said so"
    );
}

/// The first half of the test below, run in a child process (this test binary again): a
/// runtime starts a container that ends with code 7 a little later, and the process exits
/// leaving it running, as an agent that stops or crashes does.
#[tokio::test]
#[ignore = "run by a_container_that_ends_after_its_runtime_is_gone_reports_its_exit_code"]
async fn child_starts_a_container_and_exits() {
    let Some(dir) = std::env::var_os("KEELSON_ADOPT_DIR") else {
        return;
    };
    let rt = ProcessRuntime::open(&dir).expect("open");
    let sb = sandbox(&rt).await;
    let id = rt
        .create_container(&sb, &sh("sleep 1; exit 7"))
        .await
        .expect("create");
    rt.start_container(&id).await.expect("start");
    println!("CONTAINER {id}");
}

/// A container whose runtime process is gone is not the next runtime's child, so that one
/// cannot wait for it: its exit code still comes through (recorded by the shell it runs
/// under), not 255.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_ends_after_its_runtime_is_gone_reports_its_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_starts_a_container_and_exits",
            "--ignored",
            "--nocapture",
        ])
        .env("KEELSON_ADOPT_DIR", dir.path())
        .output()
        .expect("run the child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child: {text}");
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("CONTAINER "))
        .expect("the child started a container")
        .trim()
        .to_owned();
    let rt = std::sync::Arc::new(ProcessRuntime::open(dir.path()).expect("reopen"));
    let _killer = Killer(vec![rt.clone()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = rt.container_status(&id).await.expect("status");
        if s.state == ContainerState::Exited {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the container never ended: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.exit_code, Some(7), "{status:?}");
    assert_eq!(status.reason.as_deref(), Some("Error"), "{status:?}");
}
