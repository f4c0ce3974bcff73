//! End to end: the official Python client (`kubernetes` on PyPI) against `keelson up`,
//! running `tests/python/client_check.py`. Skipped, loudly, when the module is not
//! installed, except under CI (`.ci/run` installs it), where that fails.

mod common;

use std::process::Command;

#[test]
fn the_python_client_works_against_keelson_up() {
    let present = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have the Python kubernetes client (pip install kubernetes)"
        );
        eprintln!("SKIPPED: the Python kubernetes client is not installed");
        return;
    }
    let cluster = common::up(false);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_check.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&cluster.kubeconfig)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
