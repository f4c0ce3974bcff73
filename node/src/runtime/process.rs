//! [`ProcessRuntime`]: each container is a host process group.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::logs::{read_log, LogWriter, Stream};
use super::{
    ContainerConfig, ContainerFilter, ContainerState, ContainerStats, ContainerStatus, ExecOutput,
    ExecRequest, ExecSession, LogOptions, LogStream, Runtime, SandboxConfig, SandboxState,
    SandboxStatus,
};
use crate::error::RuntimeError;

/// A command's standard input whose shutdown closes the pipe (tokio's keeps it open
/// until it is dropped), so that the command reads its end.
struct ClosingStdin(Option<tokio::process::ChildStdin>);

impl tokio::io::AsyncWrite for ClosingStdin {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.0.as_mut() {
            Some(w) => std::pin::Pin::new(w).poll_write(cx, buf),
            None => std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.0.as_mut() {
            Some(w) => std::pin::Pin::new(w).poll_flush(cx),
            None => std::task::Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(w) = self.0.as_mut() {
            std::task::ready!(std::pin::Pin::new(w).poll_flush(cx))?;
        }
        self.0 = None;
        std::task::Poll::Ready(Ok(()))
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const LOG_FILE: &str = "container.log";

/// A runtime that runs each container as a host process group.
///
/// - **Program.** `command` + `args` is the program and its arguments; with no `command`,
///   the first of `args` is the program (as for an image without an entrypoint, like
///   busybox); with neither, the image's name without registry and tag (`busybox:1.36` →
///   `busybox`) is looked up as a host program. The image is never pulled: it only names
///   a host program in that last case. A program is looked up in the container's `PATH`
///   (or a default one); one that is missing fails `start_container` with
///   [`RuntimeError::CommandNotFound`].
/// - **Environment.** Exactly the container's `env` (not the agent's), plus `PATH` and
///   `HOME` when it sets none, `KEELSON_ROOT` and `KEELSON_VOLUME_<NAME>` (see the crate
///   docs on paths instead of mounts). The process starts in its own process group, with
///   stdin from `/dev/null`.
/// - **Logs.** stdout and stderr go through two FIFOs in the container's directory, which
///   the process holds open for reading and writing too: the runtime copies them into a
///   CRI-format log file rotated by size ([`ProcessRuntime::with_log_limits`]). A new
///   runtime on the same directory reopens the FIFOs, so the process never sees a broken
///   pipe; while no runtime reads, a process that fills the pipe (64 KiB) waits.
/// - **Stop.** SIGTERM to the process group, the grace period, then SIGKILL to the group;
///   when the group's leader ends on its own, the rest of its group is killed too, so no
///   process outlives its container.
/// - **Restart of the agent.** Metadata, pid and process start time live under the state
///   directory; [`ProcessRuntime::open`] on the same directory adopts the processes still
///   running (matched by pid *and* start time, so a reused pid is never taken for them).
///   An adopted process is not this process's child, so it cannot be waited for: each
///   container's command runs under a `/bin/sh` that writes the command's exit code into
///   the container's directory when it ends, and the adopting runtime reads it there. Only
///   a group killed outright (SIGKILL) while no runtime was its parent ends with its code
///   unknown (reported as 255, reason `Unknown`).
/// - **Limits.** With a writable cgroup v2 hierarchy (see
///   [`ProcessRuntime::with_cgroup_parent`]; by default `/sys/fs/cgroup` is used when it
///   is cgroup v2 and writable), each container gets a cgroup with `cpu.max` and
///   `memory.max`; the process joins it right after it starts. Otherwise limits are not
///   enforced, and [`ContainerStatus::limits_enforced`] says so.
/// - **Stats.** CPU time, resident memory and process count of the process group, from
///   `/proc`.
///
/// Dropping the runtime leaves the processes running (a later runtime adopts them); call
/// [`ProcessRuntime::kill_all`] to end them all.
pub struct ProcessRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    log_max_size: u64,
    log_keep: usize,
    cgroup_parent: Option<PathBuf>,
    sandboxes: Mutex<HashMap<String, SandboxStatus>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Tells the log copiers that this runtime is gone.
    closed: watch::Sender<bool>,
    /// Set by `kill_all`: nothing starts any more.
    killed: std::sync::atomic::AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.send_replace(true);
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ContainerMeta {
    id: String,
    sandbox_id: String,
    config: ContainerConfig,
    created_at: SystemTime,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ProcState {
    state: ContainerState,
    pid: Option<i32>,
    start_ticks: Option<u64>,
    started_at: Option<SystemTime>,
    finished_at: Option<SystemTime>,
    exit_code: Option<i32>,
    reason: Option<String>,
    message: Option<String>,
    limits_enforced: bool,
    cgroup: Option<PathBuf>,
    cwd: Option<PathBuf>,
}

struct Container {
    meta: ContainerMeta,
    dir: PathBuf,
    state: Mutex<ProcState>,
    /// `true` once the process has ended and its state is recorded.
    exited: watch::Sender<bool>,
    /// `true` once the log copier has written everything.
    logs_done: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Container {
    fn status(&self) -> ContainerStatus {
        let s = lock(&self.state);
        ContainerStatus {
            id: self.meta.id.clone(),
            sandbox_id: self.meta.sandbox_id.clone(),
            name: self.meta.config.name.clone(),
            attempt: self.meta.config.attempt,
            image: self.meta.config.image.clone(),
            state: s.state,
            created_at: self.meta.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            exit_code: s.exit_code,
            reason: s.reason.clone(),
            message: s.message.clone(),
            labels: self.meta.config.labels.clone(),
            annotations: self.meta.config.annotations.clone(),
            limits_enforced: s.limits_enforced,
        }
    }

    fn persist(&self) {
        let s = lock(&self.state).clone();
        write_json(&self.dir.join("state.json"), &s);
    }

    fn pgid(&self) -> Option<Pid> {
        let s = lock(&self.state);
        if s.state == ContainerState::Running {
            s.pid.and_then(Pid::from_raw)
        } else {
            None
        }
    }

    /// Records the end of the process (once).
    fn finish(&self, exit_code: Option<i32>, message: Option<String>) {
        {
            let mut s = lock(&self.state);
            if s.state == ContainerState::Exited {
                return;
            }
            s.state = ContainerState::Exited;
            s.finished_at = Some(SystemTime::now());
            let code = exit_code.unwrap_or(255);
            s.exit_code = Some(code);
            s.reason = Some(
                match exit_code {
                    None => "Unknown",
                    Some(0) => "Completed",
                    Some(_) => "Error",
                }
                .to_owned(),
            );
            s.message = message;
            if let Some(cg) = s.cgroup.take() {
                let _ = std::fs::remove_dir(cg);
            }
        }
        self.persist();
        self.exited.send_replace(true);
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) {
    let tmp = path.with_extension("tmp");
    let result = serde_json::to_vec(value)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "failed to write runtime state");
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Fields of `/proc/<pid>/stat` after the command name: (pgrp, utime, stime, starttime,
/// rss pages).
fn proc_stat(pid: i32) -> Option<(i32, u64, u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state).
    if f.first() == Some(&"Z") || f.first() == Some(&"X") {
        // A zombie has ended; only its parent's wait is missing.
        return None;
    }
    Some((
        f.get(2)?.parse().ok()?,
        f.get(11)?.parse().ok()?,
        f.get(12)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
        f.get(21)?.parse().ok()?,
    ))
}

fn alive(pid: i32, start_ticks: Option<u64>) -> bool {
    match proc_stat(pid) {
        Some((_, _, _, start, _)) => start_ticks.is_none_or(|t| t == start),
        None => false,
    }
}

fn kill_group(pgid: Pid, signal: Signal) {
    if let Err(e) = rustix::process::kill_process_group(pgid, signal) {
        if e != rustix::io::Errno::SRCH {
            tracing::debug!(pgid = pgid.as_raw_nonzero().get(), error = %e, "kill failed");
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds a program as `execvp` would.
fn find_program(program: &str, path_env: &str, cwd: &Path) -> Result<PathBuf, RuntimeError> {
    if program.is_empty() {
        return Err(RuntimeError::CommandNotFound(
            "exec: no command given".to_owned(),
        ));
    }
    if program.contains('/') {
        let p = cwd.join(program);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(RuntimeError::CommandNotFound(format!(
                "exec: \"{program}\": stat {program}: no such file or directory"
            )))
        };
    }
    path_env
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            RuntimeError::CommandNotFound(format!(
                "exec: \"{program}\": executable file not found in $PATH"
            ))
        })
}

/// `busybox:1.36` → `busybox`; `registry.example/team/app@sha256:..` → `app`.
fn image_program(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

fn env_name(volume: &str) -> String {
    volume
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn mkfifo(path: &Path) -> Result<(), RuntimeError> {
    match rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    ) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::EXIST => Ok(()),
        Err(e) => Err(RuntimeError::io("make the FIFO", path, e.into())),
    }
}

impl ProcessRuntime {
    /// Opens (creating) a runtime whose state lives under `root`, and adopts the
    /// containers a previous runtime on it left running.
    ///
    /// # Errors
    /// When `root` cannot be created or read.
    pub fn open(root: impl Into<PathBuf>) -> Result<ProcessRuntime, RuntimeError> {
        let root = root.into();
        for sub in ["sandboxes", "containers"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| RuntimeError::io("create", &p, e))?;
        }
        let (closed, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            cgroup_parent: detect_cgroup(),
            root,
            log_max_size: 10 << 20,
            log_keep: 3,
            sandboxes: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
            closed,
            killed: std::sync::atomic::AtomicBool::new(false),
        });
        let rt = ProcessRuntime { inner };
        rt.load()?;
        Ok(rt)
    }

    /// Sets the size at which a log file rotates and how many rotated files are kept
    /// (default 10 MiB, 3).
    pub fn with_log_limits(mut self, max_size: u64, keep: usize) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.log_max_size = max_size.max(1024);
            inner.log_keep = keep.max(1);
        }
        self
    }

    /// Puts containers' cgroups under this cgroup v2 directory (`None`: enforce no
    /// limits).
    pub fn with_cgroup_parent(mut self, parent: Option<PathBuf>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.cgroup_parent = parent;
        }
        self
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Kills every running container's process group with SIGKILL and refuses to start
    /// any container afterwards (for tests, and for taking a node down for good). A start
    /// racing with it kills what it started. Does not wait.
    pub fn kill_all(&self) {
        self.inner
            .killed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for c in lock(&self.inner.containers).values() {
            if let Some(pgid) = c.pgid() {
                kill_group(pgid, Signal::KILL);
            }
        }
    }

    /// The pids of the running containers' group leaders.
    pub fn running_pids(&self) -> Vec<i32> {
        lock(&self.inner.containers)
            .values()
            .filter_map(|c| c.pgid().map(|p| p.as_raw_nonzero().get()))
            .collect()
    }

    fn load(&self) -> Result<(), RuntimeError> {
        let sdir = self.inner.root.join("sandboxes");
        let entries = std::fs::read_dir(&sdir).map_err(|e| RuntimeError::io("read", &sdir, e))?;
        for entry in entries.flatten() {
            if let Some(s) = read_json::<SandboxStatus>(&entry.path()) {
                lock(&self.inner.sandboxes).insert(s.id.clone(), s);
            }
        }
        let cdir = self.inner.root.join("containers");
        let entries = std::fs::read_dir(&cdir).map_err(|e| RuntimeError::io("read", &cdir, e))?;
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(meta) = read_json::<ContainerMeta>(&dir.join("container.json")) else {
                continue;
            };
            let Some(state) = read_json::<ProcState>(&dir.join("state.json")) else {
                continue;
            };
            let running = state.state == ContainerState::Running;
            let (pid, ticks) = (state.pid, state.start_ticks);
            let c = Arc::new(Container {
                meta,
                dir,
                state: Mutex::new(state),
                exited: watch::channel(!running).0,
                logs_done: watch::channel(!running).0,
            });
            lock(&self.inner.containers).insert(c.meta.id.clone(), c.clone());
            if running {
                match pid {
                    Some(pid) if alive(pid, ticks) => {
                        tracing::info!(container = %c.meta.id, pid, "adopted a running container");
                        self.spawn_log_copier(&c);
                        tokio::spawn(watch_adopted(c, pid, ticks));
                    }
                    _ => {
                        let code = std::fs::read_to_string(c.dir.join("exit"))
                            .ok()
                            .and_then(|s| s.trim().parse().ok());
                        c.finish(
                            code,
                            code.is_none().then(|| {
                                "the container ended while no runtime watched it".to_owned()
                            }),
                        );
                        c.logs_done.send_replace(true);
                    }
                }
            }
        }
        Ok(())
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, RuntimeError> {
        lock(&self.inner.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::container_not_found(id))
    }

    fn spawn_log_copier(&self, c: &Arc<Container>) {
        let open = |name: &str| {
            tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(c.dir.join(name))
        };
        let (out, err) = match (open("stdout.fifo"), open("stderr.fifo")) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(container = %c.meta.id, error = %e, "cannot read the container's output");
                c.logs_done.send_replace(true);
                return;
            }
        };
        let writer = match LogWriter::open(
            &c.dir.join(LOG_FILE),
            self.inner.log_max_size,
            self.inner.log_keep,
        ) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(container = %c.meta.id, error = %e, "cannot write the container's log");
                c.logs_done.send_replace(true);
                return;
            }
        };
        let c = c.clone();
        let closed = self.inner.closed.subscribe();
        tokio::spawn(copy_logs(c, out, err, writer, closed));
    }

    fn build_root(&self, c: &Container) -> Result<(PathBuf, PathBuf), RuntimeError> {
        let root = c.dir.join("root");
        std::fs::create_dir_all(&root).map_err(|e| RuntimeError::io("create", &root, e))?;
        for m in &c.meta.config.mounts {
            let rel = m.container_path.trim_start_matches('/');
            if rel.is_empty() || rel.split('/').any(|p| p == "..") {
                return Err(RuntimeError::InvalidConfig(format!(
                    "mount path {:?} of volume {:?} is not usable",
                    m.container_path, m.volume
                )));
            }
            let link = root.join(rel);
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| RuntimeError::io("create", parent, e))?;
            }
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&m.host_path, &link)
                .map_err(|e| RuntimeError::io("link the volume at", &link, e))?;
        }
        let cwd = match c.meta.config.working_dir.as_deref() {
            Some(w) if Path::new(w).is_absolute() && Path::new(w).is_dir() => PathBuf::from(w),
            Some(w) => {
                let p = root.join(w.trim_start_matches('/'));
                std::fs::create_dir_all(&p).map_err(|e| RuntimeError::io("create", &p, e))?;
                p
            }
            None => root.clone(),
        };
        Ok((root, cwd))
    }

    /// An exec on a new pseudo-terminal: the command's standard streams are the terminal,
    /// the caller reads and writes its other side. The command gets no controlling terminal
    /// (that needs `setsid` between fork and exec, which this crate does not do without
    /// `unsafe`): programs work, job control in shells does not.
    fn exec_with_terminal(
        &self,
        id: &str,
        command: &[String],
    ) -> Result<ExecSession, RuntimeError> {
        use rustix::pty::{grantpt, ioctl_tiocgptpeer, openpt, unlockpt, OpenptFlags};
        let (mut cmd, program) = self.exec_command(id, command)?;
        let terminal = |e: std::io::Error| {
            RuntimeError::Other(format!("exec {program}: cannot make a terminal: {e}"))
        };
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = openpt(flags).map_err(|e| terminal(e.into()))?;
        grantpt(&master).map_err(|e| terminal(e.into()))?;
        unlockpt(&master).map_err(|e| terminal(e.into()))?;
        let side = ioctl_tiocgptpeer(&master, flags).map_err(|e| terminal(e.into()))?;
        cmd.stdin(side.try_clone().map_err(terminal)?)
            .stdout(side.try_clone().map_err(terminal)?)
            .stderr(side);
        let mut child = cmd
            .spawn()
            .map_err(|e| RuntimeError::StartFailed(format!("exec {program}: {e}")))?;
        // The command's side must be closed here, so that reads see its end.
        drop(cmd);
        let reader = std::fs::File::from(master.try_clone().map_err(terminal)?);
        let writer = std::fs::File::from(master.try_clone().map_err(terminal)?);
        let exit = Box::pin(async move {
            let status = child
                .wait()
                .await
                .map_err(|e| RuntimeError::Other(format!("exec {program}: {e}")))?;
            Ok(status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(255))
        });
        Ok(ExecSession {
            stdin: Some(Box::pin(tokio::fs::File::from_std(writer))),
            // A read of a terminal whose other side is closed fails (EIO): the end.
            stdout: Box::pin(tokio::fs::File::from_std(reader)),
            stderr: None,
            exit,
            resize: Some(Box::new(move |width, height| {
                let size = rustix::termios::Winsize {
                    ws_col: width,
                    ws_row: height,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                let _ = rustix::termios::tcsetwinsize(&master, size);
            })),
        })
    }

    /// The command of an exec in container `id`: its environment and working directory, in
    /// its process group (so that stopping the container ends it too), ended when dropped.
    fn exec_command(
        &self,
        id: &str,
        command: &[String],
    ) -> Result<(tokio::process::Command, String), RuntimeError> {
        let c = self.container(id)?;
        let Some(pgid) = c.pgid() else {
            return Err(RuntimeError::InvalidState(format!(
                "container {id} is not running"
            )));
        };
        let Some(program) = command.first() else {
            return Err(RuntimeError::InvalidConfig("exec: no command given".into()));
        };
        let root = c.dir.join("root");
        let cwd = lock(&c.state).cwd.clone().unwrap_or_else(|| root.clone());
        let env = self.environment(&c, &root);
        let path_env = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        let path = find_program(program, path_env, &cwd)?;
        let mut cmd = tokio::process::Command::new(path);
        cmd.arg0(program)
            .args(&command[1..])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&cwd)
            .process_group(pgid.as_raw_nonzero().get())
            .kill_on_drop(true);
        Ok((cmd, program.clone()))
    }

    fn environment(&self, c: &Container, root: &Path) -> Vec<(String, String)> {
        let cfg = &c.meta.config;
        let mut env: Vec<(String, String)> = Vec::new();
        if !cfg.env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        if !cfg.env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), root.display().to_string()));
        }
        env.push(("KEELSON_ROOT".into(), root.display().to_string()));
        for m in &cfg.mounts {
            env.push((
                format!("KEELSON_VOLUME_{}", env_name(&m.volume)),
                m.host_path.display().to_string(),
            ));
        }
        env.extend(cfg.env.iter().cloned());
        env
    }

    fn make_cgroup(&self, id: &str, cfg: &ContainerConfig) -> Option<PathBuf> {
        let parent = self.inner.cgroup_parent.as_ref()?;
        let dir = parent.join(id);
        std::fs::create_dir_all(&dir).ok()?;
        let mut ok = true;
        if let Some(mem) = cfg.limits.memory_bytes {
            ok &= std::fs::write(dir.join("memory.max"), mem.to_string()).is_ok();
        }
        if let Some(cpu) = cfg.limits.cpu_millis {
            let quota = (cpu * 100).max(1000);
            ok &= std::fs::write(dir.join("cpu.max"), format!("{quota} 100000")).is_ok();
        }
        if ok {
            Some(dir)
        } else {
            let _ = std::fs::remove_dir(&dir);
            None
        }
    }
}

fn detect_cgroup() -> Option<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(base.join("cgroup.controllers")).ok()?;
    if !(controllers.contains("memory") && controllers.contains("cpu")) {
        return None;
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let parent = base.join(rel.trim_start_matches('/')).join("keelson");
    std::fs::create_dir_all(&parent).ok()?;
    let sub = std::fs::read_to_string(parent.join("cgroup.controllers")).ok()?;
    if !(sub.contains("memory") && sub.contains("cpu")) {
        return None;
    }
    if std::fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory").is_err() {
        return None;
    }
    Some(parent)
}

async fn copy_logs(
    c: Arc<Container>,
    out: tokio::net::unix::pipe::Receiver,
    err: tokio::net::unix::pipe::Receiver,
    mut writer: LogWriter,
    mut closed: watch::Receiver<bool>,
) {
    let mut exited = c.exited.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    let drain = |rx: &tokio::net::unix::pipe::Receiver,
                 stream: Stream,
                 writer: &mut LogWriter,
                 buf: &mut [u8]| {
        while let Ok(n) = rx.try_read(buf) {
            if n == 0 {
                break;
            }
            writer.write(stream, &buf[..n]);
        }
    };
    loop {
        if *exited.borrow() {
            break;
        }
        tokio::select! {
            r = out.readable() => {
                if r.is_err() { break; }
                drain(&out, Stream::Stdout, &mut writer, &mut buf);
            }
            r = err.readable() => {
                if r.is_err() { break; }
                drain(&err, Stream::Stderr, &mut writer, &mut buf);
            }
            _ = exited.changed() => {}
            _ = closed.changed() => {
                // The runtime is gone: a new one takes over the FIFOs.
                if *closed.borrow() { return; }
            }
        }
    }
    drain(&out, Stream::Stdout, &mut writer, &mut buf);
    drain(&err, Stream::Stderr, &mut writer, &mut buf);
    writer.flush(Stream::Stdout);
    writer.flush(Stream::Stderr);
    c.logs_done.send_replace(true);
}

/// The shell a container's process runs under, when the host has it.
const RECORDER: Option<&str> = Some("/bin/sh");

/// Runs the command (`"$@"`) and writes its exit code (128 + the signal when a signal
/// ended it) to the file named by `$0`. The shell defers a TERM, INT or HUP sent to the
/// process group until the command has ended (the command gets the signal itself), so the
/// code it records is the command's.
const RECORD_EXIT: &str =
    r#"trap : TERM INT HUP; "$@"; code=$?; echo "$code" > "$0"; exit "$code""#;

/// Waits for our own child, records its exit and kills what is left of its group.
async fn reap(c: Arc<Container>, mut child: tokio::process::Child, pgid: Pid) {
    let status = child.wait().await;
    kill_group(pgid, Signal::KILL);
    let code = match status {
        Ok(s) => s.code().or_else(|| s.signal().map(|sig| 128 + sig)),
        Err(e) => {
            tracing::warn!(container = %c.meta.id, error = %e, "failed to wait for a container");
            None
        }
    };
    if let Some(code) = code {
        let _ = std::fs::write(c.dir.join("exit"), code.to_string());
    }
    c.finish(code, None);
}

/// Polls a process that is not our child until it ends.
async fn watch_adopted(c: Arc<Container>, pid: i32, ticks: Option<u64>) {
    let mut exited = c.exited.subscribe();
    loop {
        if *exited.borrow() {
            return;
        }
        if !alive(pid, ticks) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = exited.changed() => {}
        }
    }
    if let Some(pgid) = Pid::from_raw(pid) {
        kill_group(pgid, Signal::KILL);
    }
    // The runtime that started it may still be reaping it and writing its exit code.
    let mut code = None;
    for _ in 0..5 {
        code = std::fs::read_to_string(c.dir.join("exit"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if code.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.finish(
        code,
        code.is_none()
            .then(|| "the container ended while no runtime was its parent".to_owned()),
    );
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn version(&self) -> String {
        format!("process://{}", env!("CARGO_PKG_VERSION"))
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<String, RuntimeError> {
        let mut sandboxes = lock(&self.inner.sandboxes);
        if let Some(s) = sandboxes.values().find(|s| {
            s.config.uid == config.uid
                && s.config.attempt == config.attempt
                && s.state == SandboxState::Ready
        }) {
            return Ok(s.id.clone());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let status = SandboxStatus {
            id: id.clone(),
            config: config.clone(),
            state: SandboxState::Ready,
            created_at: SystemTime::now(),
        };
        write_json(
            &self.inner.root.join("sandboxes").join(format!("{id}.json")),
            &status,
        );
        sandboxes.insert(id.clone(), status);
        Ok(id)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        if !lock(&self.inner.sandboxes).contains_key(id) {
            return Ok(());
        }
        let members: Vec<String> = lock(&self.inner.containers)
            .values()
            .filter(|c| c.meta.sandbox_id == id)
            .map(|c| c.meta.id.clone())
            .collect();
        for c in members {
            self.stop_container(&c, Duration::ZERO).await?;
        }
        let mut sandboxes = lock(&self.inner.sandboxes);
        if let Some(s) = sandboxes.get_mut(id) {
            s.state = SandboxState::NotReady;
            write_json(
                &self.inner.root.join("sandboxes").join(format!("{id}.json")),
                &*s,
            );
        }
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop_sandbox(id).await?;
        let members: Vec<String> = lock(&self.inner.containers)
            .values()
            .filter(|c| c.meta.sandbox_id == id)
            .map(|c| c.meta.id.clone())
            .collect();
        for c in members {
            self.remove_container(&c).await?;
        }
        if lock(&self.inner.sandboxes).remove(id).is_some() {
            let _ =
                std::fs::remove_file(self.inner.root.join("sandboxes").join(format!("{id}.json")));
        }
        Ok(())
    }

    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, RuntimeError> {
        lock(&self.inner.sandboxes)
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::sandbox_not_found(id))
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, RuntimeError> {
        Ok(lock(&self.inner.sandboxes).values().cloned().collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        match lock(&self.inner.sandboxes).get(sandbox_id) {
            None => return Err(RuntimeError::sandbox_not_found(sandbox_id)),
            Some(s) if s.state != SandboxState::Ready => {
                return Err(RuntimeError::InvalidState(format!(
                    "sandbox {sandbox_id} is not ready"
                )))
            }
            Some(_) => {}
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.inner.root.join("containers").join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::io("create", &dir, e))?;
        let meta = ContainerMeta {
            id: id.clone(),
            sandbox_id: sandbox_id.to_owned(),
            config: config.clone(),
            created_at: SystemTime::now(),
        };
        write_json(&dir.join("container.json"), &meta);
        let c = Arc::new(Container {
            meta,
            dir,
            state: Mutex::new(ProcState {
                state: ContainerState::Created,
                pid: None,
                start_ticks: None,
                started_at: None,
                finished_at: None,
                exit_code: None,
                reason: None,
                message: None,
                limits_enforced: false,
                cgroup: None,
                cwd: None,
            }),
            exited: watch::channel(false).0,
            logs_done: watch::channel(false).0,
        });
        c.persist();
        lock(&self.inner.containers).insert(id.clone(), c);
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let c = self.container(id)?;
        if lock(&c.state).state != ContainerState::Created {
            return Err(RuntimeError::InvalidState(format!(
                "container {id} is not in the created state"
            )));
        }
        if self.inner.killed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RuntimeError::InvalidState(
                "the runtime was shut down with kill_all".into(),
            ));
        }
        let (root, cwd) = self.build_root(&c)?;
        let env = self.environment(&c, &root);
        let path_env = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        let argv = match c.meta.config.argv() {
            Some(a) => a,
            None => vec![image_program(&c.meta.config.image).to_owned()],
        };
        let fail = |e: RuntimeError| {
            {
                let mut s = lock(&c.state);
                s.state = ContainerState::Exited;
                s.exit_code = Some(128);
                s.reason = Some("StartError".into());
                s.message = Some(e.to_string());
                s.finished_at = Some(SystemTime::now());
            }
            c.persist();
            c.exited.send_replace(true);
            c.logs_done.send_replace(true);
            e
        };
        let program = find_program(&argv[0], path_env, &cwd).map_err(fail)?;
        let out_fifo = c.dir.join("stdout.fifo");
        let err_fifo = c.dir.join("stderr.fifo");
        mkfifo(&out_fifo).map_err(fail)?;
        mkfifo(&err_fifo).map_err(fail)?;
        // Our reading ends first, so the process's writes never meet a closed pipe.
        self.spawn_log_copier(&c);
        let open_rw = |p: &Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| RuntimeError::io("open the FIFO", p, e))
        };
        let stdout = open_rw(&out_fifo).map_err(fail)?;
        let stderr = open_rw(&err_fifo).map_err(fail)?;
        let mut cmd = match RECORDER.filter(|sh| Path::new(sh).exists()) {
            // Under a `sh` that records the exit code in the container's directory, so a
            // runtime that adopts the process after a restart (not its parent, so unable
            // to wait for it) still learns how it ended.
            Some(sh) => {
                let mut cmd = tokio::process::Command::new(sh);
                cmd.arg("-c")
                    .arg(RECORD_EXIT)
                    .arg(c.dir.join("exit"))
                    .arg(&program)
                    .args(&argv[1..]);
                cmd
            }
            None => {
                let mut cmd = tokio::process::Command::new(&program);
                cmd.arg0(&argv[0]).args(&argv[1..]);
                cmd
            }
        };
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&cwd)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd
            .spawn()
            .map_err(|e| fail(RuntimeError::StartFailed(format!("{}: {e}", argv[0]))))?;
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            return Err(fail(RuntimeError::StartFailed(
                "the process ended before it had a pid".into(),
            )));
        };
        let ticks = proc_stat(pid).map(|s| s.3);
        let cgroup = self.make_cgroup(id, &c.meta.config);
        let enforced = match &cgroup {
            Some(cg) => std::fs::write(cg.join("cgroup.procs"), pid.to_string()).is_ok(),
            None => false,
        };
        {
            let mut s = lock(&c.state);
            s.state = ContainerState::Running;
            s.pid = Some(pid);
            s.start_ticks = ticks;
            s.started_at = Some(SystemTime::now());
            s.limits_enforced = enforced;
            s.cgroup = cgroup;
            s.cwd = Some(cwd);
        }
        let pgid = Pid::from_raw(pid).ok_or_else(|| RuntimeError::Other("pid 0".into()))?;
        if self.inner.killed.load(std::sync::atomic::Ordering::SeqCst) {
            kill_group(pgid, Signal::KILL);
        }
        c.persist();
        tokio::spawn(reap(c, child, pgid));
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let c = self.container(id)?;
        let Some(pgid) = c.pgid() else {
            let created = lock(&c.state).state == ContainerState::Created;
            if created {
                c.finish(Some(0), Some("stopped before it started".into()));
                c.logs_done.send_replace(true);
            }
            return Ok(());
        };
        let mut exited = c.exited.subscribe();
        if !timeout.is_zero() {
            kill_group(pgid, Signal::TERM);
            let _ = tokio::time::timeout(timeout, exited.wait_for(|e| *e)).await;
        }
        if !*exited.borrow() {
            kill_group(pgid, Signal::KILL);
            if tokio::time::timeout(Duration::from_secs(10), exited.wait_for(|e| *e))
                .await
                .is_err()
            {
                return Err(RuntimeError::Timeout(format!("stopping container {id}")));
            }
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let Ok(c) = self.container(id) else {
            return Ok(());
        };
        self.stop_container(id, Duration::ZERO).await?;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            c.logs_done.subscribe().wait_for(|d| *d),
        )
        .await;
        lock(&self.inner.containers).remove(id);
        if let Err(e) = tokio::fs::remove_dir_all(&c.dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(RuntimeError::io("remove", &c.dir, e));
            }
        }
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        Ok(self.container(id)?.status())
    }

    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerStatus>, RuntimeError> {
        Ok(lock(&self.inner.containers)
            .values()
            .map(|c| c.status())
            .filter(|s| filter.matches(s))
            .collect())
    }

    async fn logs(&self, id: &str, options: &LogOptions) -> Result<LogStream, RuntimeError> {
        let c = self.container(id)?;
        let done = c.logs_done.subscribe();
        read_log(
            &c.dir.join(LOG_FILE),
            self.inner.log_keep,
            options,
            Arc::new(move || *done.borrow()),
        )
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        let (mut cmd, program) = self.exec_command(id, command)?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd
            .spawn()
            .map_err(|e| RuntimeError::StartFailed(format!("exec {program}: {e}")))?;
        let out = match timeout {
            Some(t) => tokio::time::timeout(t, child.wait_with_output())
                .await
                .map_err(|_| RuntimeError::Timeout(format!("exec {program}")))?,
            None => child.wait_with_output().await,
        }
        .map_err(|e| RuntimeError::Other(format!("exec {program}: {e}")))?;
        Ok(ExecOutput {
            exit_code: out
                .status
                .code()
                .or_else(|| out.status.signal().map(|s| 128 + s))
                .unwrap_or(255),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn exec_stream(
        &self,
        id: &str,
        request: &ExecRequest,
    ) -> Result<ExecSession, RuntimeError> {
        if request.tty {
            return self.exec_with_terminal(id, &request.command);
        }
        let (mut cmd, program) = self.exec_command(id, &request.command)?;
        let stdin = if request.stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        };
        cmd.stdin(stdin)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| RuntimeError::StartFailed(format!("exec {program}: {e}")))?;
        let taken = (child.stdout.take(), child.stderr.take());
        let (Some(stdout), Some(stderr)) = taken else {
            return Err(RuntimeError::Other(format!(
                "exec {program}: its output pipes are missing"
            )));
        };
        let stdin = child
            .stdin
            .take()
            .map(|w| -> super::ExecWriter { Box::pin(ClosingStdin(Some(w))) });
        let exit = Box::pin(async move {
            let status = child
                .wait()
                .await
                .map_err(|e| RuntimeError::Other(format!("exec {program}: {e}")))?;
            Ok(status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(255))
        });
        Ok(ExecSession {
            stdin,
            stdout: Box::pin(stdout),
            stderr: Some(Box::pin(stderr)),
            exit,
            resize: None,
        })
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let c = self.container(id)?;
        let log_bytes = std::fs::metadata(c.dir.join(LOG_FILE)).map_or(0, |m| m.len());
        let mut stats = ContainerStats {
            log_bytes,
            timestamp: Some(SystemTime::now()),
            ..ContainerStats::default()
        };
        let Some(pgid) = c.pgid() else {
            return Ok(stats);
        };
        let pgid = pgid.as_raw_nonzero().get();
        let tick_nanos = 1_000_000_000 / rustix::param::clock_ticks_per_second().max(1);
        let page = rustix::param::page_size() as u64;
        let entries =
            std::fs::read_dir("/proc").map_err(|e| RuntimeError::io("read", "/proc", e))?;
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some((pgrp, utime, stime, _, rss)) = proc_stat(pid) {
                if pgrp == pgid {
                    stats.processes += 1;
                    stats.cpu_usage_nanos += (utime + stime) * tick_nanos;
                    stats.memory_bytes += rss * page;
                }
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_give_programs() {
        assert_eq!(image_program("busybox:1.36"), "busybox");
        assert_eq!(
            image_program("registry.example:5000/team/app@sha256:abc"),
            "app"
        );
        assert_eq!(image_program("sleep"), "sleep");
    }

    #[test]
    fn programs_are_found_on_the_path_or_refused() {
        let cwd = std::env::temp_dir();
        assert!(find_program("sh", DEFAULT_PATH, &cwd).is_ok());
        let e = find_program("no-such-program-here", DEFAULT_PATH, &cwd).expect_err("missing");
        assert!(matches!(e, RuntimeError::CommandNotFound(_)));
        assert!(e.to_string().contains("executable file not found in $PATH"));
        assert!(find_program("/bin/sh", "", &cwd).is_ok());
    }
}
