//! The conformance suite every [`Runtime`] runs.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use keelson_node::conformance::{SimFixture, Suite};
//! use keelson_node::{Runtime, SimProfile, SimRuntime};
//!
//! Suite::run(|| Arc::new(SimRuntime::new(SimProfile::default())) as Arc<dyn Runtime>, &SimFixture).await;
//! # }
//! ```
//!
//! Each check gets a fresh runtime from the factory and panics with a message naming
//! the contract it broke. A [`Fixture`] says how to make containers that behave a given
//! way on the runtime under test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::error::RuntimeError;
use crate::runtime::sim::SIM_ANNOTATION;
use crate::runtime::{
    ContainerConfig, ContainerFilter, ContainerState, ExecRequest, LogOptions, Runtime,
    SandboxConfig, SandboxState, LABEL_ATTEMPT, LABEL_CONTAINER_NAME, LABEL_POD_UID,
};

/// How to make containers with a given behaviour on the runtime under test.
pub trait Fixture: Send + Sync {
    /// A container that runs until it is stopped (and ends on SIGTERM or its equivalent).
    fn long_running(&self) -> ContainerConfig;
    /// A container that exits by itself with `code`, within a second.
    fn exits_with(&self, code: i32) -> ContainerConfig;
    /// A container that writes `line` to its output, then runs until stopped; `None`
    /// when the runtime's logs do not carry what containers write.
    fn prints(&self, line: &str) -> Option<ContainerConfig>;
    /// A container whose program does not exist.
    fn missing_program(&self) -> ContainerConfig;
}

/// The fixture for [`ProcessRuntime`](crate::ProcessRuntime): `sleep`, `sh -c`, a
/// program that does not exist.
pub struct ProcessFixture;

impl Fixture for ProcessFixture {
    fn long_running(&self) -> ContainerConfig {
        ContainerConfig {
            command: vec!["sleep".into(), "600".into()],
            ..ContainerConfig::default()
        }
    }
    fn exits_with(&self, code: i32) -> ContainerConfig {
        ContainerConfig {
            command: vec!["sh".into(), "-c".into(), format!("exit {code}")],
            ..ContainerConfig::default()
        }
    }
    fn prints(&self, line: &str) -> Option<ContainerConfig> {
        Some(ContainerConfig {
            command: vec![
                "sh".into(),
                "-c".into(),
                "echo \"$LINE\"; exec sleep 600".into(),
            ],
            env: vec![("LINE".into(), line.into())],
            ..ContainerConfig::default()
        })
    }
    fn missing_program(&self) -> ContainerConfig {
        ContainerConfig {
            command: vec!["keelson-no-such-program".into()],
            ..ContainerConfig::default()
        }
    }
}

/// The fixture for [`SimRuntime`](crate::SimRuntime): behaviours in annotations.
pub struct SimFixture;

fn sim(behaviour: &str) -> ContainerConfig {
    let mut c = ContainerConfig::default();
    c.annotations
        .insert(SIM_ANNOTATION.into(), behaviour.to_owned());
    c
}

impl Fixture for SimFixture {
    fn long_running(&self) -> ContainerConfig {
        sim("start=5ms")
    }
    fn exits_with(&self, code: i32) -> ContainerConfig {
        sim(&format!("run=100ms,exit={code}"))
    }
    fn prints(&self, _line: &str) -> Option<ContainerConfig> {
        None
    }
    fn missing_program(&self) -> ContainerConfig {
        sim("missing=keelson-no-such-program")
    }
}

/// The suite.
pub struct Suite;

fn sandbox(uid: &str) -> SandboxConfig {
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_POD_UID.to_owned(), uid.to_owned());
    SandboxConfig {
        name: format!("pod-{uid}"),
        namespace: "conformance".into(),
        uid: uid.into(),
        hostname: format!("pod-{uid}"),
        labels,
        ..SandboxConfig::default()
    }
}

fn named(mut c: ContainerConfig, name: &str, uid: &str) -> ContainerConfig {
    c.name = name.into();
    c.labels.insert(LABEL_POD_UID.into(), uid.into());
    c.labels.insert(LABEL_CONTAINER_NAME.into(), name.into());
    c.labels.insert(LABEL_ATTEMPT.into(), c.attempt.to_string());
    c
}

async fn wait_state(rt: &dyn Runtime, id: &str, state: ContainerState) -> crate::ContainerStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = rt.container_status(id).await.expect("container status");
        if s.state == state {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "container {id} did not reach {state:?} (it is {:?})",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_all(rt: &dyn Runtime, id: &str, options: &LogOptions) -> String {
    let mut s = rt.logs(id, options).await.expect("logs");
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend(chunk.expect("log chunk"));
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Suite {
    /// Runs every check, each on a fresh runtime from `make`.
    pub async fn run<F>(make: F, fixture: &dyn Fixture)
    where
        F: Fn() -> Arc<dyn Runtime>,
    {
        Self::sandboxes_are_idempotent(make().as_ref()).await;
        Self::containers_go_through_their_lifecycle(make().as_ref(), fixture).await;
        Self::exit_codes_are_reported(make().as_ref(), fixture).await;
        Self::invalid_states_are_refused(make().as_ref(), fixture).await;
        Self::stopping_a_sandbox_stops_its_containers(make().as_ref(), fixture).await;
        Self::removing_a_sandbox_removes_its_containers(make().as_ref(), fixture).await;
        Self::a_missing_program_fails_the_start(make().as_ref(), fixture).await;
        Self::logs_exec_and_stats_work_on_running_containers(make().as_ref(), fixture).await;
        Self::exec_streams_input_and_output_and_reports_the_exit_code(make().as_ref(), fixture)
            .await;
        Self::filters_select_by_sandbox_state_and_labels(make().as_ref(), fixture).await;
    }

    /// `run_sandbox` twice gives one sandbox; stop and remove are idempotent.
    pub async fn sandboxes_are_idempotent(rt: &dyn Runtime) {
        let a = rt.run_sandbox(&sandbox("u1")).await.expect("run sandbox");
        let again = rt
            .run_sandbox(&sandbox("u1"))
            .await
            .expect("run sandbox again");
        assert_eq!(
            a, again,
            "run_sandbox for the same pod and attempt gives one sandbox"
        );
        let b = rt.run_sandbox(&sandbox("u2")).await.expect("run another");
        assert_ne!(a, b, "two pods get two sandboxes");
        let s = rt.sandbox_status(&a).await.expect("sandbox status");
        assert_eq!(s.state, SandboxState::Ready);
        assert_eq!(s.config.uid, "u1");
        assert_eq!(rt.list_sandboxes().await.expect("list").len(), 2);
        rt.stop_sandbox(&a).await.expect("stop");
        rt.stop_sandbox(&a).await.expect("stop is idempotent");
        assert_eq!(
            rt.sandbox_status(&a).await.expect("status").state,
            SandboxState::NotReady
        );
        let mut next = sandbox("u1");
        next.attempt = 1;
        let c = rt.run_sandbox(&next).await.expect("next attempt");
        assert_ne!(a, c, "a new attempt gets a new sandbox");
        rt.remove_sandbox(&a).await.expect("remove");
        rt.remove_sandbox(&a).await.expect("remove is idempotent");
        let e = rt.sandbox_status(&a).await.expect_err("removed");
        assert!(
            e.is_not_found(),
            "status of a removed sandbox is NotFound: {e}"
        );
        rt.remove_sandbox(&b).await.expect("remove b");
        rt.remove_sandbox(&c).await.expect("remove c");
    }

    /// create → Created, start → Running, stop → Exited, remove → NotFound.
    pub async fn containers_go_through_their_lifecycle(rt: &dyn Runtime, f: &dyn Fixture) {
        let sb = rt.run_sandbox(&sandbox("u1")).await.expect("sandbox");
        let mut cfg = named(f.long_running(), "main", "u1");
        cfg.attempt = 2;
        cfg.labels.insert(LABEL_ATTEMPT.into(), "2".into());
        cfg.labels.insert("extra".into(), "kept".into());
        let id = rt.create_container(&sb, &cfg).await.expect("create");
        let s = rt.container_status(&id).await.expect("status");
        assert_eq!(s.state, ContainerState::Created);
        assert_eq!(s.sandbox_id, sb);
        assert_eq!(s.name, "main");
        assert_eq!(s.attempt, 2);
        assert_eq!(s.labels, cfg.labels, "labels are kept as given");
        rt.start_container(&id).await.expect("start");
        let s = rt.container_status(&id).await.expect("status");
        assert_eq!(
            s.state,
            ContainerState::Running,
            "a started container shows running at once"
        );
        assert!(s.started_at.is_some());
        rt.stop_container(&id, Duration::from_secs(5))
            .await
            .expect("stop");
        let s = rt.container_status(&id).await.expect("status");
        assert_eq!(
            s.state,
            ContainerState::Exited,
            "stop returns once it ended"
        );
        assert!(s.exit_code.is_some() && s.finished_at.is_some());
        rt.stop_container(&id, Duration::from_secs(5))
            .await
            .expect("stop is idempotent");
        rt.remove_container(&id).await.expect("remove");
        rt.remove_container(&id)
            .await
            .expect("remove is idempotent");
        let e = rt.container_status(&id).await.expect_err("removed");
        assert!(e.is_not_found(), "{e}");
        rt.remove_sandbox(&sb).await.expect("remove sandbox");
    }

    /// A container that exits by itself reports its code and a reason.
    pub async fn exit_codes_are_reported(rt: &dyn Runtime, f: &dyn Fixture) {
        let sb = rt.run_sandbox(&sandbox("u1")).await.expect("sandbox");
        let bad = rt
            .create_container(&sb, &named(f.exits_with(3), "bad", "u1"))
            .await
            .expect("create");
        let good = rt
            .create_container(&sb, &named(f.exits_with(0), "good", "u1"))
            .await
            .expect("create");
        rt.start_container(&bad).await.expect("start");
        rt.start_container(&good).await.expect("start");
        let s = wait_state(rt, &bad, ContainerState::Exited).await;
        assert_eq!(s.exit_code, Some(3));
        assert_eq!(s.reason.as_deref(), Some("Error"));
        let s = wait_state(rt, &good, ContainerState::Exited).await;
        assert_eq!(s.exit_code, Some(0));
        assert_eq!(s.reason.as_deref(), Some("Completed"));
        rt.remove_sandbox(&sb).await.expect("remove sandbox");
    }

    /// Starting twice, creating in a stopped or unknown sandbox are refused.
    pub async fn invalid_states_are_refused(rt: &dyn Runtime, f: &dyn Fixture) {
        let sb = rt.run_sandbox(&sandbox("u1")).await.expect("sandbox");
        let id = rt
            .create_container(&sb, &named(f.long_running(), "main", "u1"))
            .await
            .expect("create");
        rt.start_container(&id).await.expect("start");
        let e = rt.start_container(&id).await.expect_err("second start");
        assert!(matches!(e, RuntimeError::InvalidState(_)), "{e}");
        let e = rt
            .create_container("no-such-sandbox", &named(f.long_running(), "x", "u1"))
            .await
            .expect_err("unknown sandbox");
        assert!(e.is_not_found(), "{e}");
        rt.stop_sandbox(&sb).await.expect("stop sandbox");
        let e = rt
            .create_container(&sb, &named(f.long_running(), "late", "u1"))
            .await
            .expect_err("stopped sandbox");
        assert!(matches!(e, RuntimeError::InvalidState(_)), "{e}");
        let e = rt
            .container_status("no-such-container")
            .await
            .expect_err("unknown");
        assert!(e.is_not_found(), "{e}");
        rt.remove_sandbox(&sb).await.expect("remove sandbox");
    }

    /// `stop_sandbox` ends the containers in it.
    pub async fn stopping_a_sandbox_stops_its_containers(rt: &dyn Runtime, f: &dyn Fixture) {
        let sb = rt.run_sandbox(&sandbox("u1")).await.expect("sandbox");
        let other = rt.run_sandbox(&sandbox("u2")).await.expect("sandbox");
        let id = rt
            .create_container(&sb, &named(f.long_running(), "main", "u1"))
            .await
            .expect("create");
        let keep = rt
            .create_container(&other, &named(f.long_running(), "main", "u2"))
            .await
            .expect("create");
        rt.start_container(&id).await.expect("start");
        rt.start_container(&keep).await.expect("start");
        rt.stop_sandbox(&sb).await.expect("stop sandbox");
        let s = rt.container_status(&id).await.expect("status");
        assert_eq!(s.state, ContainerState::Exited);
        let s = rt.container_status(&keep).await.expect("status");
        assert_eq!(
            s.state,
            ContainerState::Running,
            "other sandboxes are untouched"
        );
        rt.remove_sandbox(&sb).await.expect("remove");
        rt.remove_sandbox(&other).await.expect("remove");
    }

    /// `remove_sandbox` removes its containers.
    pub async fn removing_a_sandbox_removes_its_containers(rt: &dyn Runtime, f: &dyn Fixture) {
        let sb = rt.run_sandbox(&sandbox("u1")).await.expect("sandbox");
        let id = rt
            .create_container(&sb, &named(f.long_running(), "main", "u1"))
            .await
            .expect("create");
        rt.start_container(&id).await.expect("start");
        rt.remove_sandbox(&sb).await.expect("remove sandbox");
        let e = rt.container_status(&id).await.expect_err("gone");
        assert!(e.is_not_found(), "{e}");
        assert!(rt
            .list_containers(&ContainerFilter::default())
            .await
            .expect("list")
            .is_empty());
    }

    /// A program that does not exist is [`RuntimeError::CommandNotFound`].
    pub async fn a_missing_program_fails_the_start(rt: &dyn Runtime, f: &dyn Fixture) {
        let sb = rt.run_sandbox(&sandbox("u1")).await.expect("sandbox");
        let e = match rt
            .create_container(&sb, &named(f.missing_program(), "main", "u1"))
            .await
        {
            Err(e) => e,
            Ok(id) => {
                let e = rt.start_container(&id).await.expect_err("start must fail");
                let s = rt.container_status(&id).await.expect("status");
                assert_ne!(s.state, ContainerState::Running);
                e
            }
        };
        assert!(matches!(e, RuntimeError::CommandNotFound(_)), "{e}");
        rt.remove_sandbox(&sb).await.expect("remove sandbox");
    }

    /// Logs, exec and stats of a running container; NotFound once removed.
    pub async fn logs_exec_and_stats_work_on_running_containers(rt: &dyn Runtime, f: &dyn Fixture) {
        let sb = rt.run_sandbox(&sandbox("u1")).await.expect("sandbox");
        let cfg = f
            .prints("hello from conformance")
            .unwrap_or_else(|| f.long_running());
        let id = rt
            .create_container(&sb, &named(cfg, "main", "u1"))
            .await
            .expect("create");
        rt.start_container(&id).await.expect("start");
        if f.prints("x").is_some() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let text = read_all(rt, &id, &LogOptions::default()).await;
                if text.contains("hello from conformance\n") {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the line never showed: {text:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let tail = read_all(
                rt,
                &id,
                &LogOptions {
                    tail_lines: Some(1),
                    timestamps: true,
                    ..LogOptions::default()
                },
            )
            .await;
            assert!(tail.ends_with(" hello from conformance\n"), "{tail:?}");
        } else {
            read_all(rt, &id, &LogOptions::default()).await;
        }
        let out = rt
            .exec(
                &id,
                &["sh".into(), "-c".into(), "exit 0".into()],
                Some(Duration::from_secs(10)),
            )
            .await
            .expect("exec");
        assert_eq!(out.exit_code, 0);
        let stats = rt.stats(&id).await.expect("stats");
        assert!(stats.timestamp.is_some());
        rt.remove_container(&id).await.expect("remove");
        assert!(rt
            .exec(&id, &["true".into()], None)
            .await
            .expect_err("gone")
            .is_not_found());
        assert!(rt.stats(&id).await.expect_err("gone").is_not_found());
        assert!(rt
            .logs(&id, &LogOptions::default())
            .await
            .err()
            .is_some_and(|e| e.is_not_found()));
        rt.remove_sandbox(&sb).await.expect("remove sandbox");
    }

    /// `exec_stream` (unless the runtime says [`RuntimeError::Unsupported`]): the command
    /// reads the input it is given to its end, its output comes back (on runtimes whose
    /// containers really print, see [`Fixture::prints`]), its exit code is reported; a
    /// removed container is NotFound.
    pub async fn exec_streams_input_and_output_and_reports_the_exit_code(
        rt: &dyn Runtime,
        f: &dyn Fixture,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sb = rt.run_sandbox(&sandbox("u1")).await.expect("sandbox");
        let id = rt
            .create_container(&sb, &named(f.long_running(), "main", "u1"))
            .await
            .expect("create");
        rt.start_container(&id).await.expect("start");
        wait_state(rt, &id, ContainerState::Running).await;
        let request = ExecRequest {
            command: vec!["sh".into(), "-c".into(), "cat; exit 0".into()],
            stdin: true,
            tty: false,
        };
        let supported = match rt.exec_stream(&id, &request).await {
            Err(RuntimeError::Unsupported(_)) => false,
            Err(e) => panic!("exec_stream: {e}"),
            Ok(mut session) => {
                let mut stdin = session.stdin.take().expect("stdin was asked for");
                stdin.write_all(b"ping\n").await.expect("write stdin");
                stdin.shutdown().await.expect("close stdin");
                let mut out = Vec::new();
                tokio::time::timeout(
                    Duration::from_secs(10),
                    session.stdout.read_to_end(&mut out),
                )
                .await
                .expect("the output ends once the input has")
                .expect("read stdout");
                let code = tokio::time::timeout(Duration::from_secs(10), session.exit)
                    .await
                    .expect("the command ends")
                    .expect("exit code");
                assert_eq!(code, 0);
                if f.prints("x").is_some() {
                    assert_eq!(out, b"ping\n", "the input comes back");
                }
                true
            }
        };
        rt.remove_container(&id).await.expect("remove");
        if supported {
            assert!(rt
                .exec_stream(&id, &request)
                .await
                .expect_err("gone")
                .is_not_found());
        }
        rt.remove_sandbox(&sb).await.expect("remove sandbox");
    }

    /// `list_containers` filters by sandbox, state and labels.
    pub async fn filters_select_by_sandbox_state_and_labels(rt: &dyn Runtime, f: &dyn Fixture) {
        let a = rt.run_sandbox(&sandbox("u1")).await.expect("sandbox");
        let b = rt.run_sandbox(&sandbox("u2")).await.expect("sandbox");
        let a1 = rt
            .create_container(&a, &named(f.long_running(), "one", "u1"))
            .await
            .expect("create");
        let _a2 = rt
            .create_container(&a, &named(f.long_running(), "two", "u1"))
            .await
            .expect("create");
        let _b1 = rt
            .create_container(&b, &named(f.long_running(), "one", "u2"))
            .await
            .expect("create");
        rt.start_container(&a1).await.expect("start");
        let in_a = rt
            .list_containers(&ContainerFilter {
                sandbox_id: Some(a.clone()),
                ..ContainerFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(in_a.len(), 2);
        let running = rt
            .list_containers(&ContainerFilter {
                state: Some(ContainerState::Running),
                ..ContainerFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].id, a1);
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_CONTAINER_NAME.to_owned(), "one".to_owned());
        let ones = rt
            .list_containers(&ContainerFilter {
                labels,
                ..ContainerFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(ones.len(), 2);
        rt.remove_sandbox(&a).await.expect("remove");
        rt.remove_sandbox(&b).await.expect("remove");
    }
}
