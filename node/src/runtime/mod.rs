//! The container runtime interface: CRI-shaped, object-safe.

pub(crate) mod logs;
pub mod process;
pub mod sim;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;

/// Label on sandboxes and containers: the pod's uid.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Label on sandboxes and containers: the pod's name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Label on sandboxes and containers: the pod's namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label on containers: the container's name in the pod spec.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Label on containers: the attempt (0 for the first run, then one more per restart).
pub const LABEL_ATTEMPT: &str = "io.kubernetes.container.attempt";

/// What a pod sandbox is made from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SandboxConfig {
    /// The pod's name.
    pub name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's uid.
    pub uid: String,
    /// Sandboxes made for this pod before (0 for the first).
    pub attempt: u32,
    /// The pod's hostname.
    pub hostname: String,
    /// The pod's address, from the network plugin.
    pub ip: Option<IpAddr>,
    /// Labels (at least [`LABEL_POD_UID`], [`LABEL_POD_NAME`], [`LABEL_POD_NAMESPACE`]).
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Whether a sandbox is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// Running: containers may be created in it.
    Ready,
    /// Stopped.
    NotReady,
}

/// A sandbox as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxStatus {
    /// Its id.
    pub id: String,
    /// What it was made from.
    pub config: SandboxConfig,
    /// Its state.
    pub state: SandboxState,
    /// When it was made.
    pub created_at: SystemTime,
}

/// A volume directory made visible to a container.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mount {
    /// The volume's name.
    pub volume: String,
    /// Where the container expects it (`mountPath`).
    pub container_path: String,
    /// The directory (or file) on the host.
    pub host_path: PathBuf,
    /// `readOnly` (advisory: there is no mount to make read-only).
    pub read_only: bool,
}

/// Resource limits for a container.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResourceLimits {
    /// CPU limit in millicores.
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU request in millicores (cgroup weight).
    pub cpu_request_millis: Option<u64>,
}

/// What a container is made from: the pod spec's container, resolved by the agent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerConfig {
    /// The container's name.
    pub name: String,
    /// Its image (see each runtime for what it means).
    pub image: String,
    /// `command` (the entrypoint), with `$(VAR)` references already expanded.
    pub command: Vec<String>,
    /// `args`, expanded.
    pub args: Vec<String>,
    /// The environment, in order (later entries win).
    pub env: Vec<(String, String)>,
    /// `workingDir`.
    pub working_dir: Option<String>,
    /// The volumes it sees.
    pub mounts: Vec<Mount>,
    /// Limits.
    pub limits: ResourceLimits,
    /// Labels (at least the pod's and [`LABEL_CONTAINER_NAME`], [`LABEL_ATTEMPT`]).
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Restarts before this one (also in [`LABEL_ATTEMPT`]).
    pub attempt: u32,
}

impl ContainerConfig {
    /// The program and its arguments: `command` + `args`; with no `command`, the first
    /// of `args` is the program (an image without an entrypoint, like busybox); with
    /// neither, `None` (each runtime decides).
    pub fn argv(&self) -> Option<Vec<String>> {
        if !self.command.is_empty() {
            Some(self.command.iter().chain(&self.args).cloned().collect())
        } else if !self.args.is_empty() {
            Some(self.args.clone())
        } else {
            None
        }
    }
}

/// A container's state, CRI's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Ended (its exit code in [`ContainerStatus::exit_code`]).
    Exited,
    /// The runtime cannot tell.
    Unknown,
}

/// A container as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Its id.
    pub id: String,
    /// Its sandbox's id.
    pub sandbox_id: String,
    /// The container's name.
    pub name: String,
    /// Its attempt.
    pub attempt: u32,
    /// Its image.
    pub image: String,
    /// Its state.
    pub state: ContainerState,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it started.
    pub started_at: Option<SystemTime>,
    /// When it ended.
    pub finished_at: Option<SystemTime>,
    /// Its exit code once ended (128 + signal number when a signal ended it).
    pub exit_code: Option<i32>,
    /// Why it ended: `Completed`, `Error`, `OOMKilled`, `Unknown`.
    pub reason: Option<String>,
    /// More words on it.
    pub message: Option<String>,
    /// Labels it was created with.
    pub labels: BTreeMap<String, String>,
    /// Annotations it was created with.
    pub annotations: BTreeMap<String, String>,
    /// Whether its resource limits are enforced by the runtime.
    pub limits_enforced: bool,
}

/// Which containers [`Runtime::list_containers`] returns.
#[derive(Clone, Debug, Default)]
pub struct ContainerFilter {
    /// Only those in this sandbox.
    pub sandbox_id: Option<String>,
    /// Only those in this state.
    pub state: Option<ContainerState>,
    /// Only those with all these labels.
    pub labels: BTreeMap<String, String>,
}

impl ContainerFilter {
    /// Whether a container passes.
    pub fn matches(&self, c: &ContainerStatus) -> bool {
        self.sandbox_id.as_ref().is_none_or(|s| *s == c.sandbox_id)
            && self.state.is_none_or(|s| s == c.state)
            && self
                .labels
                .iter()
                .all(|(k, v)| c.labels.get(k).is_some_and(|x| x == v))
    }
}

/// How to read a container's log.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<SystemTime>,
    /// Prefix each line with its RFC 3339 time and a space.
    pub timestamps: bool,
    /// Keep the stream open and send new lines until the container ends.
    pub follow: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

/// A log read: chunks of bytes.
pub type LogStream = BoxStream<'static, Result<Vec<u8>, RuntimeError>>;

/// What [`Runtime::exec`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// The command's exit code (128 + signal when a signal ended it).
    pub exit_code: i32,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

/// What [`Runtime::exec_stream`] runs: CRI's `ExecRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Whether the caller sends standard input (otherwise it reads as empty).
    pub stdin: bool,
    /// Whether the command wants a terminal (standard error then goes to standard output).
    pub tty: bool,
}

/// A byte source of a streaming exec.
pub type ExecReader = std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>;
/// A byte sink of a streaming exec.
pub type ExecWriter = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// A running [`Runtime::exec_stream`] command: its standard streams and its end.
///
/// Dropping the session (the caller went away) ends the command.
pub struct ExecSession {
    /// Its standard input (`None` unless [`ExecRequest::stdin`]); shutting it down closes
    /// the command's input.
    pub stdin: Option<ExecWriter>,
    /// Its standard output.
    pub stdout: ExecReader,
    /// Its standard error (`None` with a terminal: it goes to `stdout`).
    pub stderr: Option<ExecReader>,
    /// Resolves to the exit code (128 + signal when a signal ended it).
    pub exit: BoxFuture<'static, Result<i32, RuntimeError>>,
    /// Sets the terminal's size (columns, rows); `None` without a terminal.
    pub resize: Option<Box<dyn Fn(u16, u16) + Send + Sync>>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("stdin", &self.stdin.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("tty", &self.resize.is_some())
            .finish_non_exhaustive()
    }
}

/// A container's resource usage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerStats {
    /// CPU time used, in nanoseconds.
    pub cpu_usage_nanos: u64,
    /// Memory in use (resident set), in bytes.
    pub memory_bytes: u64,
    /// Processes.
    pub processes: u32,
    /// Bytes of its log files.
    pub log_bytes: u64,
    /// When it was measured.
    pub timestamp: Option<SystemTime>,
}

/// A container runtime: sandboxes (one per pod) holding containers, shaped like the CRI.
///
/// Contracts every implementation keeps (checked by [`crate::conformance`]):
/// - `run_sandbox` for a uid and attempt that already has a ready sandbox returns it.
/// - `stop_*` on something already stopped and `remove_*` on something already removed
///   succeed; status reads of removed things are [`RuntimeError::NotFound`].
/// - `stop_sandbox` stops its containers at once (no grace; the agent stops them
///   gracefully first); `remove_sandbox` removes them.
/// - `stop_container(timeout)` asks the container to end (SIGTERM for processes), waits
///   at most `timeout`, then ends it by force; when it returns, the container is
///   [`ContainerState::Exited`].
/// - `create_container` in a sandbox that is not ready is [`RuntimeError::InvalidState`].
/// - A program that cannot be found fails `start_container` (or `create_container`)
///   with [`RuntimeError::CommandNotFound`].
/// - Reads may lag writes by nothing: a status read after `start_container` returns shows
///   the container running (or already exited).
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// The runtime's name and version, as in `containerRuntimeVersion` (`process://0.1.0`).
    fn version(&self) -> String;

    /// Makes (or finds) the sandbox for a pod; returns its id.
    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<String, RuntimeError>;

    /// Stops a sandbox and every container in it.
    async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError>;

    /// Removes a sandbox and its containers.
    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError>;

    /// A sandbox's status.
    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, RuntimeError>;

    /// Every sandbox.
    async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, RuntimeError>;

    /// Creates a container in a sandbox; returns its id.
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError>;

    /// Starts a created container.
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;

    /// Stops a container: a polite request, `timeout` to comply, then force.
    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError>;

    /// Removes a container (stopping it at once if it runs) and its logs.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;

    /// A container's status.
    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;

    /// The containers a filter selects.
    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerStatus>, RuntimeError>;

    /// Reads a container's log.
    async fn logs(&self, id: &str, options: &LogOptions) -> Result<LogStream, RuntimeError>;

    /// Runs a command in a running container's environment and collects its output.
    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError>;

    /// Starts a command in a running container's environment and hands back its standard
    /// streams, as CRI's `Exec` does through its streaming server (`kubectl exec`).
    ///
    /// The default refuses: a runtime that cannot stream says so with
    /// [`RuntimeError::Unsupported`].
    ///
    /// # Errors
    /// [`RuntimeError::NotFound`] for an unknown container, [`RuntimeError::InvalidState`]
    /// when it is not running, [`RuntimeError::CommandNotFound`] for a program that is not
    /// there, [`RuntimeError::Unsupported`] for what the runtime cannot do (a terminal).
    async fn exec_stream(
        &self,
        id: &str,
        request: &ExecRequest,
    ) -> Result<ExecSession, RuntimeError> {
        let _ = (id, request);
        Err(RuntimeError::Unsupported(format!(
            "streaming exec is not supported by the {} runtime",
            self.version()
        )))
    }

    /// A container's resource usage.
    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError>;
}
