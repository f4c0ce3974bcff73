//! The harness the end-to-end tests share: `keelson up` in a temporary directory, and
//! kubectl against it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `keelson up`, stopped when dropped.
pub struct Cluster {
    /// The process.
    pub child: Child,
    /// The kubeconfig it wrote.
    pub kubeconfig: PathBuf,
    /// Its directory (data, kubeconfig, kubectl's cache).
    pub _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    /// Stops `keelson up` as a user would (SIGTERM: it stops its pods' processes too), and
    /// kills it if it has not stopped in 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn kubectl_available() -> bool {
    let found = Path::new("/usr/bin/kubectl").exists();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have /usr/bin/kubectl"
        );
        eprintln!("SKIPPED: /usr/bin/kubectl is not installed");
    }
    found
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn up(insecure_http: bool) -> Cluster {
    up_in(tempfile::tempdir().expect("temp dir"), insecure_http)
}

/// Starts `keelson up` on `dir` (an earlier cluster's, to restart it).
pub fn up_in(dir: tempfile::TempDir, insecure_http: bool) -> Cluster {
    up_with(dir, insecure_http, &[])
}

/// Starts `keelson up` on `dir` with more arguments.
#[allow(dead_code)]
pub fn up_with(dir: tempfile::TempDir, insecure_http: bool, extra: &[&std::ffi::OsStr]) -> Cluster {
    let port = free_port();
    let kubeconfig = dir.path().join("kubeconfig");
    // A restart writes it again; until then, an earlier run's must not pass for ready.
    let _ = std::fs::remove_file(&kubeconfig);
    let child = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(insecure_http.then_some("--insecure-http"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start keelson up");
    let cluster = Cluster {
        child,
        kubeconfig,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The kubeconfig is written once the listener is bound, just before serving.
        if cluster.kubeconfig.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return cluster;
        }
        assert!(Instant::now() < deadline, "keelson up did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Cluster {
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("/usr/bin/kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        // A cache of its own, so discovery is fetched from this server.
        cmd.env("KUBECACHEDIR", self._dir.path().join("kube-cache"));
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(!out.status.success(), "kubectl {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}
