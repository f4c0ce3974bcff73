//! Controller metrics: queue depth, adds and retries, reconcile count and duration by
//! result, rendered in the Prometheus text format.
//!
//! One [`Metrics`] registry per process (cheap to clone); each controller gets its own
//! [`ControllerMetrics`] from it by name.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// The upper bounds (seconds) of the reconcile duration histogram.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// How a reconcile ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReconcileResult {
    /// It succeeded.
    Success,
    /// It failed.
    Error,
}

impl ReconcileResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileResult::Success => "success",
            ReconcileResult::Error => "error",
        }
    }

    fn index(self) -> usize {
        match self {
            ReconcileResult::Success => 0,
            ReconcileResult::Error => 1,
        }
    }
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// The metrics of one controller.
#[derive(Debug, Default)]
pub struct ControllerMetrics {
    queue_depth: AtomicI64,
    adds: AtomicU64,
    retries: AtomicU64,
    reconciles: [Histogram; 2],
}

impl ControllerMetrics {
    pub(crate) fn set_queue_depth(&self, depth: usize) {
        self.queue_depth
            .store(i64::try_from(depth).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn record_add(&self) {
        self.adds.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one reconcile.
    pub fn record_reconcile(&self, result: ReconcileResult, took: Duration) {
        let h = &self.reconciles[result.index()];
        let secs = took.as_secs_f64();
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The current queue depth.
    pub fn queue_depth(&self) -> i64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// How many keys were added to the queue.
    pub fn adds(&self) -> u64 {
        self.adds.load(Ordering::Relaxed)
    }

    /// How many reconciles ended with `result`.
    pub fn reconciles(&self, result: ReconcileResult) -> u64 {
        self.reconciles[result.index()]
            .count
            .load(Ordering::Relaxed)
    }
}

/// The metrics of every controller of a process.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    controllers: Arc<Mutex<BTreeMap<String, Arc<ControllerMetrics>>>>,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// The metrics of controller `name` (created on first use).
    pub fn controller(&self, name: &str) -> Arc<ControllerMetrics> {
        self.controllers
            .lock()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let controllers = self.controllers.lock();
        let mut out = String::new();
        out.push_str("# HELP workqueue_depth Keys waiting in the controller's queue.\n# TYPE workqueue_depth gauge\n");
        for (name, m) in controllers.iter() {
            let _ = writeln!(
                out,
                "workqueue_depth{{name=\"{name}\"}} {}",
                m.queue_depth()
            );
        }
        out.push_str("# HELP workqueue_adds_total Keys added to the controller's queue.\n# TYPE workqueue_adds_total counter\n");
        for (name, m) in controllers.iter() {
            let _ = writeln!(out, "workqueue_adds_total{{name=\"{name}\"}} {}", m.adds());
        }
        out.push_str("# HELP workqueue_retries_total Rate-limited re-adds.\n# TYPE workqueue_retries_total counter\n");
        for (name, m) in controllers.iter() {
            let _ = writeln!(
                out,
                "workqueue_retries_total{{name=\"{name}\"}} {}",
                m.retries.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP controller_reconcile_duration_seconds Reconciles by result.\n# TYPE controller_reconcile_duration_seconds histogram\n");
        for (name, m) in controllers.iter() {
            for result in [ReconcileResult::Success, ReconcileResult::Error] {
                let h = &m.reconciles[result.index()];
                let r = result.as_str();
                for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "controller_reconcile_duration_seconds_bucket{{controller=\"{name}\",result=\"{r}\",le=\"{bound}\"}} {}",
                        h.buckets[i].load(Ordering::Relaxed)
                    );
                }
                let count = h.count.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "controller_reconcile_duration_seconds_bucket{{controller=\"{name}\",result=\"{r}\",le=\"+Inf\"}} {count}"
                );
                let _ = writeln!(
                    out,
                    "controller_reconcile_duration_seconds_sum{{controller=\"{name}\",result=\"{r}\"}} {}",
                    h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
                );
                let _ = writeln!(
                    out,
                    "controller_reconcile_duration_seconds_count{{controller=\"{name}\",result=\"{r}\"}} {count}"
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_by_result_in_cumulative_buckets() {
        let m = Metrics::new();
        let c = m.controller("replicaset");
        c.record_reconcile(ReconcileResult::Success, Duration::from_millis(3));
        c.record_reconcile(ReconcileResult::Error, Duration::from_millis(300));
        c.set_queue_depth(4);
        let text = m.render();
        assert!(
            text.contains("workqueue_depth{name=\"replicaset\"} 4"),
            "{text}"
        );
        assert!(text.contains("controller_reconcile_duration_seconds_bucket{controller=\"replicaset\",result=\"success\",le=\"0.005\"} 1"));
        assert!(text.contains("controller_reconcile_duration_seconds_bucket{controller=\"replicaset\",result=\"success\",le=\"0.001\"} 0"));
        assert!(text.contains("controller_reconcile_duration_seconds_count{controller=\"replicaset\",result=\"error\"} 1"));
        assert_eq!(c.reconciles(ReconcileResult::Success), 1);
    }
}
