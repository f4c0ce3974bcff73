//! The scheduler's metrics, in Prometheus' text format: attempts by result, the
//! latency of a scheduling attempt, preemptions, and the queue lengths.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::queue::QueueLengths;

/// Upper bounds of the latency histogram, in seconds (Kubernetes': 1 ms doubling, 15
/// buckets).
const BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];

/// The outcome of one scheduling attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// A node was chosen (and the binding started).
    Scheduled,
    /// No node fits.
    Unschedulable,
    /// Something failed.
    Error,
}

impl AttemptResult {
    fn index(self) -> usize {
        match self {
            AttemptResult::Scheduled => 0,
            AttemptResult::Unschedulable => 1,
            AttemptResult::Error => 2,
        }
    }
}

/// Counters and a histogram, updated without locks.
#[derive(Debug, Default)]
pub struct Metrics {
    attempts: [AtomicU64; 3],
    /// Per result: bucket counts (cumulative is computed when rendering), sum (µs).
    buckets: [[AtomicU64; 16]; 3],
    sum_micros: [AtomicU64; 3],
    preemption_attempts: AtomicU64,
    preemption_victims: AtomicU64,
    bindings: AtomicU64,
    binding_failures: AtomicU64,
}

/// A copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Attempts that chose a node.
    pub scheduled: u64,
    /// Attempts where no node fit.
    pub unschedulable: u64,
    /// Attempts that failed.
    pub errors: u64,
    /// Pods bound.
    pub bindings: u64,
    /// Bindings that failed.
    pub binding_failures: u64,
    /// Preemptions that nominated a node.
    pub preemption_attempts: u64,
}

impl Metrics {
    /// Records an attempt.
    pub fn attempt(&self, result: AttemptResult, took: Duration) {
        let i = result.index();
        self.attempts[i].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|&u| secs <= u)
            .unwrap_or(BUCKETS.len());
        self.buckets[i][b].fetch_add(1, Ordering::Relaxed);
        self.sum_micros[i].fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Records a preemption and its victims.
    pub fn preemption(&self, victims: usize) {
        self.preemption_attempts.fetch_add(1, Ordering::Relaxed);
        self.preemption_victims
            .fetch_add(victims as u64, Ordering::Relaxed);
    }

    /// Records a binding's outcome.
    pub fn binding(&self, ok: bool) {
        if ok {
            self.bindings.fetch_add(1, Ordering::Relaxed);
        } else {
            self.binding_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            scheduled: self.attempts[0].load(Ordering::Relaxed),
            unschedulable: self.attempts[1].load(Ordering::Relaxed),
            errors: self.attempts[2].load(Ordering::Relaxed),
            bindings: self.bindings.load(Ordering::Relaxed),
            binding_failures: self.binding_failures.load(Ordering::Relaxed),
            preemption_attempts: self.preemption_attempts.load(Ordering::Relaxed),
        }
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn render(&self, queue: QueueLengths) -> String {
        let mut out = String::new();
        let results = ["scheduled", "unschedulable", "error"];
        let _ = writeln!(out, "# HELP scheduler_schedule_attempts_total Number of attempts to schedule pods, by the result.");
        let _ = writeln!(out, "# TYPE scheduler_schedule_attempts_total counter");
        for (i, r) in results.iter().enumerate() {
            let _ = writeln!(
                out,
                "scheduler_schedule_attempts_total{{result=\"{r}\"}} {}",
                self.attempts[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP scheduler_scheduling_attempt_duration_seconds Scheduling attempt latency in seconds (scheduling algorithm + binding start).");
        let _ = writeln!(
            out,
            "# TYPE scheduler_scheduling_attempt_duration_seconds histogram"
        );
        for (i, r) in results.iter().enumerate() {
            let mut cumulative = 0u64;
            for (b, upper) in BUCKETS.iter().enumerate() {
                cumulative += self.buckets[i][b].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "scheduler_scheduling_attempt_duration_seconds_bucket{{result=\"{r}\",le=\"{upper}\"}} {cumulative}"
                );
            }
            cumulative += self.buckets[i][BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(out, "scheduler_scheduling_attempt_duration_seconds_bucket{{result=\"{r}\",le=\"+Inf\"}} {cumulative}");
            #[allow(clippy::cast_precision_loss)]
            let sum = self.sum_micros[i].load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "scheduler_scheduling_attempt_duration_seconds_sum{{result=\"{r}\"}} {sum}"
            );
            let _ = writeln!(out, "scheduler_scheduling_attempt_duration_seconds_count{{result=\"{r}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "# HELP scheduler_pending_pods Number of pending pods, by the queue type."
        );
        let _ = writeln!(out, "# TYPE scheduler_pending_pods gauge");
        for (q, n) in [
            ("active", queue.active),
            ("backoff", queue.backoff),
            ("unschedulable", queue.unschedulable),
        ] {
            let _ = writeln!(out, "scheduler_pending_pods{{queue=\"{q}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP scheduler_preemption_attempts_total Total preemption attempts that nominated a node.");
        let _ = writeln!(out, "# TYPE scheduler_preemption_attempts_total counter");
        let _ = writeln!(
            out,
            "scheduler_preemption_attempts_total {}",
            self.preemption_attempts.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP scheduler_preemption_victims_total Pods evicted by preemption."
        );
        let _ = writeln!(out, "# TYPE scheduler_preemption_victims_total counter");
        let _ = writeln!(
            out,
            "scheduler_preemption_victims_total {}",
            self.preemption_victims.load(Ordering::Relaxed)
        );
        out
    }
}
