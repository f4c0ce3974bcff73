//! The shared Runtime conformance suite, run against every runtime Keelson ships.

use std::sync::{Arc, Mutex};

use keelson_node::conformance::{ProcessFixture, SimFixture, Suite};
use keelson_node::{ProcessRuntime, Runtime, SimProfile, SimRuntime};

#[tokio::test]
async fn sim_runtime_passes_the_conformance_suite() {
    Suite::run(
        || Arc::new(SimRuntime::new(SimProfile::default())) as Arc<dyn Runtime>,
        &SimFixture,
    )
    .await;
}

/// Kills every process the runtimes started, even when a check fails.
struct Cleanup(Mutex<Vec<Arc<ProcessRuntime>>>, tempfile::TempDir);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for rt in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            rt.kill_all();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_runtime_passes_the_conformance_suite() {
    let cleanup = Arc::new(Cleanup(
        Mutex::new(Vec::new()),
        tempfile::tempdir().expect("tempdir"),
    ));
    let c = cleanup.clone();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    Suite::run(
        move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let rt = Arc::new(
                ProcessRuntime::open(c.1.path().join(n.to_string())).expect("open runtime"),
            );
            c.0.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(rt.clone());
            rt as Arc<dyn Runtime>
        },
        &ProcessFixture,
    )
    .await;
    for rt in cleanup.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        assert!(
            rt.running_pids().is_empty(),
            "the suite left processes running"
        );
    }
}
