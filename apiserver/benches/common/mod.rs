//! What the API server benches share: flags, latency histograms, and the CPU each
//! group of threads used (to tell a clean run from one another process disturbed).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The value after `name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A histogram of nanoseconds, from 1 µs to 120 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("histogram")
}

/// Records a duration.
pub fn record(hist: &mut Histogram<u64>, d: Duration) {
    hist.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
}

/// Nanoseconds as milliseconds.
pub fn ms(ns: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let ns = ns as f64;
    ns / 1e6
}

/// CPU seconds used so far by this process's threads, by thread name (digits and a
/// trailing `-` dropped, so a runtime's workers add up).
pub fn cpu_by_thread() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: utime and stime are the 12th and 13th fields after comm.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close]
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
            .to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // Linux's USER_HZ is 100.
        *out.entry(name).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    // The whole machine's busy time (`cpu` line of /proc/stat: all but idle and iowait),
    // to see what other processes and the kernel's softirq threads took meanwhile.
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        if let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) {
            let busy: f64 = line
                .split_whitespace()
                .skip(1)
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4)
                .filter_map(|(_, v)| v.parse::<f64>().ok())
                .sum();
            out.insert(MACHINE.to_owned(), busy / 100.0);
        }
    }
    out
}

/// The key of the machine's busy time in [`cpu_by_thread`].
pub const MACHINE: &str = "(whole machine)";

/// Prints the CPU time of each group of this process's threads and the rest of the
/// machine's, out of `wall` on every core.
pub fn print_cpu(cpu: &BTreeMap<String, f64>, wall: Duration) {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    #[allow(clippy::cast_precision_loss)]
    let available = wall.as_secs_f64() * cores as f64;
    println!(
        "\nCPU seconds during the run ({:.2} s on {cores} cores: {available:.2} CPU-s):",
        wall.as_secs_f64()
    );
    let ours: f64 = cpu
        .iter()
        .filter(|(k, _)| *k != MACHINE)
        .map(|(_, v)| v)
        .sum();
    for (name, secs) in cpu {
        if name != MACHINE && *secs >= 0.01 {
            println!("  {name}: {secs:.2}");
        }
    }
    if let Some(machine) = cpu.get(MACHINE) {
        println!(
            "  rest of the machine (other processes, kernel threads): {:.2}",
            (machine - ours).max(0.0)
        );
    }
}
