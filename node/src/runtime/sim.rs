//! [`SimRuntime`]: simulated containers, no processes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};
use tokio::time::Instant;

use super::logs::now_rfc3339;
use super::{
    ContainerConfig, ContainerFilter, ContainerState, ContainerStats, ContainerStatus, ExecOutput,
    LogOptions, LogStream, Runtime, SandboxConfig, SandboxState, SandboxStatus,
};
use crate::error::RuntimeError;

/// The container annotation a [`SimBehaviour`] is read from (the agent copies the pod
/// annotation `sim.keelson.dev/<container name>` there, or `sim.keelson.dev/all`).
pub const SIM_ANNOTATION: &str = "sim.keelson.dev/behaviour";

/// What a simulated container does: its stages and their delays, like kwok's stages.
///
/// Written as `key=value` pairs separated by commas in the pod annotation
/// `sim.keelson.dev/<container>` (or `sim.keelson.dev/all`):
/// `start=200ms` (start-up takes this long), `run=5s` (then it exits), `exit=3` (with
/// this code; default 0), `fail-create=msg` or `fail-start=msg` (that step fails),
/// `stop=1s` (it takes this long to end after SIGTERM, up to the grace period),
/// `exec-exit=N` (what exec and exec probes return), `memory=64Mi` (reported usage),
/// `missing=prog` (start fails as for a program that is not there).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimBehaviour {
    /// How long `start_container` takes.
    pub start_delay: Duration,
    /// How long it runs before it exits by itself (`None`: until stopped).
    pub run_for: Option<Duration>,
    /// The exit code when it exits by itself.
    pub exit_code: i32,
    /// `create_container` fails with this message.
    pub fail_create: Option<String>,
    /// `start_container` fails with this message.
    pub fail_start: Option<String>,
    /// How long it takes to end after a polite stop.
    pub stop_delay: Duration,
    /// What exec returns.
    pub exec_exit_code: i32,
    /// Reported memory use in bytes.
    pub memory_bytes: u64,
    /// `start_container` fails as for a program that does not exist.
    pub missing_program: Option<String>,
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

impl SimBehaviour {
    /// Parses the annotation syntax, starting from `self`.
    ///
    /// # Errors
    /// A message naming the first pair that does not parse.
    pub fn parse(mut self, text: &str) -> Result<SimBehaviour, String> {
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = || format!("bad simulation setting {pair:?}");
            match k.trim() {
                "start" => self.start_delay = parse_duration(v).ok_or_else(bad)?,
                "run" => self.run_for = Some(parse_duration(v).ok_or_else(bad)?),
                "exit" => self.exit_code = v.trim().parse().map_err(|_| bad())?,
                "fail-create" => self.fail_create = Some(v.to_owned()),
                "fail-start" => self.fail_start = Some(v.to_owned()),
                "stop" => self.stop_delay = parse_duration(v).ok_or_else(bad)?,
                "missing" => self.missing_program = Some(v.to_owned()),
                "exec-exit" => self.exec_exit_code = v.trim().parse().map_err(|_| bad())?,
                "memory" => self.memory_bytes = crate::quantity::parse_bytes(v).ok_or_else(bad)?,
                _ => return Err(bad()),
            }
        }
        Ok(self)
    }
}

/// The defaults of a [`SimRuntime`].
#[derive(Clone, Debug, Default)]
pub struct SimProfile {
    /// The behaviour of containers without an annotation.
    pub default: SimBehaviour,
}

struct SimSandbox {
    config: SandboxConfig,
    ready: bool,
    created_at: SystemTime,
}

struct SimContainer {
    sandbox_id: String,
    config: Arc<ContainerConfig>,
    behaviour: Arc<SimBehaviour>,
    created: Instant,
    started: Option<Instant>,
    /// Ended by a stop: when, and the code.
    stopped: Option<(Instant, i32)>,
    start_error: Option<String>,
}

/// A runtime that simulates containers: nothing runs; a container's state follows from
/// its [`SimBehaviour`] and the time (`tokio::time`, so paused time drives it). A
/// container costs one small map entry and no task, so one `SimRuntime` can serve
/// thousands of simulated nodes.
///
/// Logs hold two lines the runtime writes itself (started, exited); exec runs nothing and
/// returns the behaviour's `exec_exit_code` with no output.
pub struct SimRuntime {
    profile: SimProfile,
    next_id: AtomicU64,
    base: (Instant, SystemTime),
    sandboxes: Mutex<HashMap<String, SimSandbox>>,
    containers: Mutex<HashMap<String, SimContainer>>,
    default_behaviour: Arc<SimBehaviour>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimRuntime {
    /// A simulated runtime.
    pub fn new(profile: SimProfile) -> SimRuntime {
        SimRuntime {
            default_behaviour: Arc::new(profile.default.clone()),
            profile,
            next_id: AtomicU64::new(1),
            base: (Instant::now(), SystemTime::now()),
            sandboxes: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
        }
    }

    fn wall(&self, at: Instant) -> SystemTime {
        self.base.1 + at.saturating_duration_since(self.base.0)
    }

    fn id(&self, prefix: char) -> String {
        format!("{prefix}{:x}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// How many sandboxes and containers it holds.
    pub fn counts(&self) -> (usize, usize) {
        (lock(&self.sandboxes).len(), lock(&self.containers).len())
    }

    /// (state, finished at, exit code)
    fn state_of(c: &SimContainer, now: Instant) -> (ContainerState, Option<Instant>, Option<i32>) {
        if c.start_error.is_some() {
            return (ContainerState::Exited, c.started, Some(128));
        }
        let Some(started) = c.started else {
            return match c.stopped {
                Some((at, code)) => (ContainerState::Exited, Some(at), Some(code)),
                None => (ContainerState::Created, None, None),
            };
        };
        let natural = c.behaviour.run_for.map(|d| started + d);
        let end = match (natural, c.stopped) {
            (Some(n), Some((s, code))) => Some(if n <= s {
                (n, c.behaviour.exit_code)
            } else {
                (s, code)
            }),
            (Some(n), None) => Some((n, c.behaviour.exit_code)),
            (None, Some(s)) => Some(s),
            (None, None) => None,
        };
        match end {
            Some((at, code)) if at <= now => (ContainerState::Exited, Some(at), Some(code)),
            _ => (ContainerState::Running, None, None),
        }
    }

    fn status_of(&self, id: &str, c: &SimContainer) -> ContainerStatus {
        let (state, finished, code) = Self::state_of(c, Instant::now());
        ContainerStatus {
            id: id.to_owned(),
            sandbox_id: c.sandbox_id.clone(),
            name: c.config.name.clone(),
            attempt: c.config.attempt,
            image: c.config.image.clone(),
            state,
            created_at: self.wall(c.created),
            started_at: c.started.map(|s| self.wall(s)),
            finished_at: finished.map(|f| self.wall(f)),
            exit_code: code,
            reason: match (&c.start_error, code) {
                (Some(_), _) => Some("StartError".into()),
                (None, Some(0)) => Some("Completed".into()),
                (None, Some(_)) => Some("Error".into()),
                (None, None) => None,
            },
            message: c.start_error.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            limits_enforced: false,
        }
    }

    fn with_container<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut SimContainer) -> T,
    ) -> Result<T, RuntimeError> {
        let mut cs = lock(&self.containers);
        cs.get_mut(id)
            .map(f)
            .ok_or_else(|| RuntimeError::container_not_found(id))
    }
}

#[async_trait::async_trait]
impl Runtime for SimRuntime {
    fn version(&self) -> String {
        format!("sim://{}", env!("CARGO_PKG_VERSION"))
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<String, RuntimeError> {
        let mut sandboxes = lock(&self.sandboxes);
        if let Some((id, _)) = sandboxes.iter().find(|(_, s)| {
            s.ready && s.config.uid == config.uid && s.config.attempt == config.attempt
        }) {
            return Ok(id.clone());
        }
        let id = self.id('s');
        sandboxes.insert(
            id.clone(),
            SimSandbox {
                config: config.clone(),
                ready: true,
                created_at: self.wall(Instant::now()),
            },
        );
        Ok(id)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let now = Instant::now();
        let mut cs = lock(&self.containers);
        for c in cs.values_mut().filter(|c| c.sandbox_id == id) {
            if Self::state_of(c, now).0 != ContainerState::Exited {
                c.stopped = Some((now, 137));
            }
        }
        drop(cs);
        if let Some(s) = lock(&self.sandboxes).get_mut(id) {
            s.ready = false;
        }
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        lock(&self.containers).retain(|_, c| c.sandbox_id != id);
        lock(&self.sandboxes).remove(id);
        Ok(())
    }

    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, RuntimeError> {
        lock(&self.sandboxes)
            .get(id)
            .map(|s| SandboxStatus {
                id: id.to_owned(),
                config: s.config.clone(),
                state: if s.ready {
                    SandboxState::Ready
                } else {
                    SandboxState::NotReady
                },
                created_at: s.created_at,
            })
            .ok_or_else(|| RuntimeError::sandbox_not_found(id))
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, RuntimeError> {
        let ids: Vec<String> = lock(&self.sandboxes).keys().cloned().collect();
        let mut out = Vec::new();
        for id in ids {
            if let Ok(s) = self.sandbox_status(&id).await {
                out.push(s);
            }
        }
        Ok(out)
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        match lock(&self.sandboxes).get(sandbox_id) {
            None => return Err(RuntimeError::sandbox_not_found(sandbox_id)),
            Some(s) if !s.ready => {
                return Err(RuntimeError::InvalidState(format!(
                    "sandbox {sandbox_id} is not ready"
                )))
            }
            Some(_) => {}
        }
        let behaviour = match config.annotations.get(SIM_ANNOTATION) {
            Some(text) => Arc::new(
                self.profile
                    .default
                    .clone()
                    .parse(text)
                    .map_err(RuntimeError::InvalidConfig)?,
            ),
            None => self.default_behaviour.clone(),
        };
        if let Some(msg) = &behaviour.fail_create {
            return Err(RuntimeError::InvalidConfig(msg.clone()));
        }
        let id = self.id('c');
        lock(&self.containers).insert(
            id.clone(),
            SimContainer {
                sandbox_id: sandbox_id.to_owned(),
                config: Arc::new(config.clone()),
                behaviour,
                created: Instant::now(),
                started: None,
                stopped: None,
                start_error: None,
            },
        );
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let (delay, fail, missing) = self.with_container(id, |c| {
            (
                c.behaviour.start_delay,
                c.behaviour.fail_start.clone(),
                c.behaviour.missing_program.clone(),
            )
        })?;
        let state = self.with_container(id, |c| Self::state_of(c, Instant::now()).0)?;
        if state != ContainerState::Created {
            return Err(RuntimeError::InvalidState(format!(
                "container {id} is not in the created state"
            )));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let failure = match (fail, missing) {
            (_, Some(prog)) => Some(RuntimeError::CommandNotFound(format!(
                "exec: \"{prog}\": executable file not found in $PATH"
            ))),
            (Some(msg), None) => Some(RuntimeError::StartFailed(msg)),
            (None, None) => None,
        };
        if let Some(e) = failure {
            let msg = e.to_string();
            self.with_container(id, |c| {
                c.started = Some(Instant::now());
                c.start_error = Some(msg);
            })?;
            return Err(e);
        }
        self.with_container(id, |c| {
            if c.stopped.is_none() {
                c.started = Some(Instant::now());
            }
        })
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let now = Instant::now();
        let wait = self.with_container(id, |c| {
            let (state, _, _) = Self::state_of(c, now);
            match state {
                ContainerState::Exited => None,
                ContainerState::Created => {
                    c.stopped = Some((now, 0));
                    None
                }
                _ => {
                    let polite = c.behaviour.stop_delay;
                    let (after, code) = if timeout.is_zero() || polite > timeout {
                        (timeout, 137)
                    } else {
                        (polite, 143)
                    };
                    c.stopped = Some((now + after, code));
                    Some(after)
                }
            }
        })?;
        if let Some(d) = wait.filter(|d| !d.is_zero()) {
            tokio::time::sleep(d).await;
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        lock(&self.containers).remove(id);
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let cs = lock(&self.containers);
        let c = cs
            .get(id)
            .ok_or_else(|| RuntimeError::container_not_found(id))?;
        Ok(self.status_of(id, c))
    }

    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerStatus>, RuntimeError> {
        let cs = lock(&self.containers);
        Ok(cs
            .iter()
            .filter(|(_, c)| {
                filter
                    .sandbox_id
                    .as_ref()
                    .is_none_or(|s| *s == c.sandbox_id)
            })
            .map(|(id, c)| self.status_of(id, c))
            .filter(|s| filter.matches(s))
            .collect())
    }

    async fn logs(&self, id: &str, options: &LogOptions) -> Result<LogStream, RuntimeError> {
        let status = self.container_status(id).await?;
        let mut lines: Vec<(SystemTime, String)> = Vec::new();
        if let Some(s) = status.started_at {
            lines.push((s, format!("simulated container {} started", status.name)));
        }
        if let (Some(f), Some(code)) = (status.finished_at, status.exit_code) {
            lines.push((
                f,
                format!(
                    "simulated container {} exited with code {code}",
                    status.name
                ),
            ));
        }
        lines.retain(|(t, _)| options.since.is_none_or(|s| *t >= s));
        if let Some(n) = options.tail_lines {
            let skip = lines.len().saturating_sub(n);
            lines.drain(..skip);
        }
        let mut out = Vec::new();
        for (t, l) in &lines {
            if options.timestamps {
                out.extend_from_slice(now_rfc3339(*t).as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
        if let Some(limit) = options.limit_bytes {
            out.truncate(limit);
        }
        Ok(stream::iter((!out.is_empty()).then_some(Ok(out))).boxed())
    }

    async fn exec(
        &self,
        id: &str,
        _command: &[String],
        _timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        let status = self.container_status(id).await?;
        if status.state != ContainerState::Running {
            return Err(RuntimeError::InvalidState(format!(
                "container {id} is not running"
            )));
        }
        let code = self.with_container(id, |c| c.behaviour.exec_exit_code)?;
        Ok(ExecOutput {
            exit_code: code,
            ..ExecOutput::default()
        })
    }

    /// Runs nothing, as [`Runtime::exec`] here: no output, standard input read and
    /// dropped, and the exit code of the container's [`SimBehaviour`] (`exec-exit=N`).
    async fn exec_stream(
        &self,
        id: &str,
        request: &super::ExecRequest,
    ) -> Result<super::ExecSession, RuntimeError> {
        let out = self.exec(id, &request.command, None).await?;
        Ok(super::ExecSession {
            stdin: request
                .stdin
                .then(|| -> super::ExecWriter { Box::pin(tokio::io::sink()) }),
            stdout: Box::pin(tokio::io::empty()),
            stderr: (!request.tty).then(|| -> super::ExecReader { Box::pin(tokio::io::empty()) }),
            exit: Box::pin(std::future::ready(Ok(out.exit_code))),
            resize: None,
        })
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let (running, mem) = self.with_container(id, |c| {
            (
                Self::state_of(c, Instant::now()).0 == ContainerState::Running,
                c.behaviour.memory_bytes,
            )
        })?;
        Ok(ContainerStats {
            memory_bytes: if running { mem } else { 0 },
            processes: u32::from(running),
            timestamp: Some(SystemTime::now()),
            ..ContainerStats::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviours_parse_from_annotations() {
        let b = SimBehaviour::default()
            .parse("start=200ms, run=2s,exit=3,stop=1.5s,memory=64Mi")
            .expect("parses");
        assert_eq!(b.start_delay, Duration::from_millis(200));
        assert_eq!(b.run_for, Some(Duration::from_secs(2)));
        assert_eq!(b.exit_code, 3);
        assert_eq!(b.stop_delay, Duration::from_millis(1500));
        assert_eq!(b.memory_bytes, 64 << 20);
        assert!(SimBehaviour::default().parse("run=soon").is_err());
        assert!(SimBehaviour::default().parse("colour=blue").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn containers_exit_on_schedule_in_paused_time() {
        let rt = SimRuntime::new(SimProfile::default());
        let sb = rt
            .run_sandbox(&SandboxConfig {
                uid: "u".into(),
                ..SandboxConfig::default()
            })
            .await
            .expect("sandbox");
        let mut cfg = ContainerConfig {
            name: "c".into(),
            ..ContainerConfig::default()
        };
        cfg.annotations
            .insert(SIM_ANNOTATION.into(), "start=1s,run=10s,exit=4".into());
        let id = rt.create_container(&sb, &cfg).await.expect("create");
        rt.start_container(&id).await.expect("start");
        let s = rt.container_status(&id).await.expect("status");
        assert_eq!(s.state, ContainerState::Running);
        tokio::time::advance(Duration::from_secs(11)).await;
        let s = rt.container_status(&id).await.expect("status");
        assert_eq!(s.state, ContainerState::Exited);
        assert_eq!(s.exit_code, Some(4));
    }
}
