//! Work queue throughput: producers add keys (many repeats, so de-duplication works),
//! workers `get` and `done` them, on a 2-worker tokio runtime.
//!
//! ```sh
//! cargo bench -p keelson-controllers --bench workqueue              # 3 rounds of 2,000,000 adds
//! cargo bench -p keelson-controllers --bench workqueue -- --quick   # 1 round
//! cargo bench -p keelson-controllers --bench workqueue -- --keys 1000 --workers 8
//! ```
//!
//! Reported per round: adds/s, gets/s (each get followed by done), and their sum as
//! queue operations/s; how many adds were absorbed by de-duplication.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::{arg, flag, machine};
use keelson_controllers::WorkQueue;

/// The allocator `keelson up` runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rounds = if flag("--quick") { 1 } else { 3 };
    let keys: u64 = arg("--keys").and_then(|k| k.parse().ok()).unwrap_or(10_000);
    let adds: u64 = arg("--adds")
        .and_then(|k| k.parse().ok())
        .unwrap_or(2_000_000);
    let workers: usize = arg("--workers").and_then(|k| k.parse().ok()).unwrap_or(4);
    let producers: u64 = 2;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("work queue: {adds} adds over {keys} keys from {producers} producers, {workers} workers, 2 runtime threads");
    println!("machine: {}", machine());
    println!(
        "{:>5} {:>12} {:>12} {:>14} {:>10}",
        "round", "adds/s", "gets/s", "queue ops/s", "dedup %"
    );
    for round in 1..=rounds {
        let (a, g, ops, dedup) = runtime.block_on(run(keys, adds, producers, workers));
        println!("{round:>5} {a:>12.0} {g:>12.0} {ops:>14.0} {dedup:>10.1}");
    }
}

async fn run(keys: u64, adds: u64, producers: u64, workers: usize) -> (f64, f64, f64, f64) {
    let queue: WorkQueue<String> = WorkQueue::new();
    let names: Arc<Vec<String>> = Arc::new((0..keys).map(|k| format!("default/pod-{k}")).collect());
    let gets = Arc::new(AtomicU64::new(0));
    let producing = Arc::new(AtomicBool::new(true));
    let start = Instant::now();
    let mut worker_tasks = Vec::new();
    for _ in 0..workers {
        let (queue, gets) = (queue.clone(), gets.clone());
        worker_tasks.push(tokio::spawn(async move {
            while let Some(k) = queue.get().await {
                gets.fetch_add(1, Ordering::Relaxed);
                queue.done(&k);
            }
        }));
    }
    let mut producer_tasks = Vec::new();
    for p in 0..producers {
        let (queue, names) = (queue.clone(), names.clone());
        producer_tasks.push(tokio::spawn(async move {
            let per = adds / producers;
            let mut x = p.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for i in 0..per {
                // xorshift: keys in a random order, with repeats.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                queue.add(names[usize::try_from(x % keys).unwrap_or(0)].clone());
                if i % 256 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in producer_tasks {
        t.await.expect("producer");
    }
    producing.store(false, Ordering::Relaxed);
    while !queue.is_empty() {
        tokio::task::yield_now().await;
    }
    let took = start.elapsed().as_secs_f64();
    queue.shut_down();
    for t in worker_tasks {
        t.await.expect("worker");
    }
    #[allow(clippy::cast_precision_loss)]
    let (a, g) = (adds as f64, gets.load(Ordering::Relaxed) as f64);
    (a / took, g / took, (a + g) / took, 100.0 * (1.0 - g / a))
}
