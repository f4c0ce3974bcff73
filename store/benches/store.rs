//! The store benchmark: MemStore (durable, on local disk) side by side with a real etcd
//! started by the benchmark on the same disk, through the same `Store` trait.
//!
//! ```sh
//! cargo bench -p keelson-store --bench store              # everything, 3 rounds
//! cargo bench -p keelson-store --bench store -- --quick   # short runs, for a smoke test
//! cargo bench -p keelson-store --bench store -- --only writes,reads,watch,recovery --rounds 5 --keys 1000000
//! cargo bench -p keelson-store --bench store -- --no-etcd --only watch --watchers 300
//! ```
//!
//! Workloads (each run A, B, A, B ... and the median reported):
//! - **writes**: 1 / 16 / 256 concurrent writers, each doing compare-and-swap updates of its
//!   own 100 keys with 256-byte values; throughput and latency percentiles.
//! - **reads**: `get` of random keys out of 10,000 from 16 tasks; `list` of all 10,000 keys.
//! - **watch**: 1,000 watchers of one prefix while writers aim at 10,000 writes/s; delivery
//!   latency from the write's acknowledgement time to each watcher's receipt.
//! - **recovery** (MemStore only): N keys of 256 bytes written, the store closed, then
//!   reopened in a fresh process that reports the time to open and its peak RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use keelson_store::{EtcdOptions, EtcdStore, ListOptions, MemStore, Store, StoreError};

struct Args {
    quick: bool,
    rounds: usize,
    only: Vec<String>,
    keys: usize,
    watchers: usize,
    no_etcd: bool,
    data_dir: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args {
        quick: false,
        rounds: 3,
        only: Vec::new(),
        keys: 1_000_000,
        watchers: 1000,
        no_etcd: false,
        data_dir: PathBuf::from("/var/tmp"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--no-etcd" => args.no_etcd = true,
            "--watchers" => args.watchers = it.next().and_then(|v| v.parse().ok()).unwrap_or(1000),
            "--rounds" => args.rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(3),
            "--only" => {
                args.only = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            }
            "--keys" => args.keys = it.next().and_then(|v| v.parse().ok()).unwrap_or(1_000_000),
            "--data-dir" => args.data_dir = it.next().map(PathBuf::from).unwrap_or(args.data_dir),
            "--recover-child" => {
                let dir = it.next().expect("--recover-child DIR");
                recover_child(Path::new(&dir));
                std::process::exit(0);
            }
            _ => {} // cargo passes --bench
        }
    }
    if args.quick {
        args.rounds = 1;
        args.keys = args.keys.min(100_000);
    }
    args
}

fn wants(args: &Args, what: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|o| o == what)
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(args));
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    let etcd = Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "etcd not found".into());
    format!(
        "{cores} cores, {:.1} GiB RAM; {etcd}",
        mem_kb as f64 / (1 << 20) as f64
    )
}

/// An etcd server for the benchmark, on its own ports and data directory.
struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    endpoint: String,
}

impl Etcd {
    async fn start(data_root: &Path) -> Etcd {
        let dir = tempfile::tempdir_in(data_root).expect("etcd data dir");
        let endpoint = "http://127.0.0.1:23791".to_owned();
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
                "--listen-peer-urls",
                "http://127.0.0.1:23801",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:23801",
                "--initial-cluster",
                "bench=http://127.0.0.1:23801",
                "--quota-backend-bytes",
                "8589934592",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (apt-get install -y etcd-server)");
        let etcd = Etcd {
            child,
            _dir: dir,
            endpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while etcd.connect("/warmup").await.is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        etcd
    }

    async fn connect(&self, prefix: &str) -> Result<EtcdStore, StoreError> {
        let store = EtcdStore::connect(EtcdOptions {
            endpoints: vec![self.endpoint.clone()],
            key_prefix: prefix.to_owned(),
            ..Default::default()
        })
        .await?;
        store.current_revision().await?;
        Ok(store)
    }

    /// Several connections, as etcd's own benchmark uses, shared round-robin by the tasks.
    async fn pool(&self, prefix: &str, n: usize) -> Vec<EtcdStore> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.connect(prefix).await.expect("connect to etcd"));
        }
        out
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(tag: u64) -> Bytes {
    let mut v = vec![b'v'; 256];
    v[..8].copy_from_slice(&tag.to_le_bytes());
    Bytes::from(v)
}

#[derive(Clone, Copy, Default)]
struct Figures {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn figures(ops: u64, elapsed: Duration, h: &Histogram<u64>) -> Figures {
    Figures {
        ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
        p50_ms: h.value_at_quantile(0.5) as f64 / 1e6,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1e6,
        max_ms: h.max() as f64 / 1e6,
    }
}

fn median(mut v: Vec<Figures>) -> Figures {
    v.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    let ops = v[v.len() / 2].ops_per_sec;
    let p = |f: fn(&Figures) -> f64| {
        let mut xs: Vec<f64> = v.iter().map(f).collect();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    Figures {
        ops_per_sec: ops,
        p50_ms: p(|f| f.p50_ms),
        p99_ms: p(|f| f.p99_ms),
        max_ms: p(|f| f.max_ms),
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram")
}

/// `writers` tasks doing compare-and-swap updates of their own keys for `duration`.
async fn writes<S: Store + Clone>(stores: &[S], writers: usize, duration: Duration) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = stores[w % stores.len()].clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut revs = vec![0i64; 100];
            let mut ops = 0u64;
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let k = i % revs.len();
                let key = format!("/bench/w/{w}/{k}");
                let t = Instant::now();
                let res = if revs[k] == 0 {
                    s.create(&key, value(i as u64)).await
                } else {
                    s.update(&key, value(i as u64), revs[k]).await
                };
                match res {
                    Ok(kv) => revs[k] = kv.mod_revision,
                    Err(StoreError::AlreadyExists { .. }) => {
                        revs[k] = s
                            .get(&key)
                            .await
                            .ok()
                            .flatten()
                            .map_or(0, |kv| kv.mod_revision)
                    }
                    Err(e) => panic!("write failed: {e}"),
                }
                let _ = h.record(t.elapsed().as_nanos() as u64);
                ops += 1;
                i += 1;
            }
            (ops, h)
        }));
    }
    run_for(duration, &stop, tasks).await
}

/// Lets `tasks` run for `duration`, stops them, and merges their counts and latencies.
async fn run_for(
    duration: Duration,
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<(u64, Histogram<u64>)>>,
) -> Figures {
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = hist();
    let mut ops = 0;
    for t in tasks {
        let (n, h) = t.await.expect("load task");
        ops += n;
        total.add(h).expect("merge");
    }
    figures(ops, started.elapsed(), &total)
}

async fn load_keys<S: Store + Clone>(s: &S, prefix: &str, n: usize) {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let s = s.clone();
        let next = next.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n as u64 {
                    break;
                }
                let key = format!("{prefix}{i:08}");
                match s.create(&key, value(i)).await {
                    Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => panic!("load failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("loader");
    }
}

async fn gets<S: Store + Clone>(stores: &[S], keys: usize, duration: Duration) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for r in 0..16 {
        let s = stores[r % stores.len()].clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut ops = 0u64;
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ r as u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("/bench/r/{:08}", x % keys as u64);
                let t = Instant::now();
                let kv = s.get(&key).await.expect("get");
                assert!(kv.is_some());
                let _ = h.record(t.elapsed().as_nanos() as u64);
                ops += 1;
                // Let other tasks (and the timer) run: MemStore's get never waits.
                if ops.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            (ops, h)
        }));
    }
    run_for(duration, &stop, tasks).await
}

async fn lists<S: Store>(s: &S, keys: usize, duration: Duration) -> Figures {
    let mut h = hist();
    let mut ops = 0;
    let started = Instant::now();
    while started.elapsed() < duration {
        let t = Instant::now();
        let page = s
            .list("/bench/r/", ListOptions::default())
            .await
            .expect("list");
        assert_eq!(page.items.len(), keys);
        let _ = h.record(t.elapsed().as_nanos() as u64);
        ops += 1;
    }
    figures(ops, started.elapsed(), &h)
}

/// `watchers` watchers of one prefix; writers paced to `rate` writes/s in total. Each value
/// carries its acknowledgement... its send time, in nanoseconds since `epoch`.
async fn watch_fanout<S: Store + Clone>(
    stores: &[S],
    write_stores: &[S],
    watchers: usize,
    rate: u64,
    duration: Duration,
) -> (Figures, f64) {
    let epoch = Instant::now();
    let start_rev = stores[0].current_revision().await.expect("rev");
    let mut watch_tasks = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    for i in 0..watchers {
        let mut w = stores[i % stores.len()]
            .watch("/bench/f/", start_rev)
            .await
            .expect("watch");
        let ready = ready.clone();
        watch_tasks.push(tokio::spawn(async move {
            ready.fetch_add(1, Ordering::Relaxed);
            // Samples go to a plain vector on the hot path and into a histogram at the end.
            let mut samples: Vec<u64> = Vec::with_capacity(1 << 16);
            let mut n = 0u64;
            while let Some(item) = w.next().await {
                let e = match item {
                    Ok(e) => e,
                    Err(err) => panic!("watch failed: {err}"),
                };
                if e.kv.value.len() < 8 {
                    break; // the end marker
                }
                // Latency is sampled on one delivery in eight per watcher (reading the clock
                // and recording cost as much as a delivery); every delivery is counted.
                if n.is_multiple_of(8) {
                    let sent = u64::from_le_bytes(e.kv.value[..8].try_into().expect("8 bytes"));
                    let now = epoch.elapsed().as_nanos() as u64;
                    samples.push(now.saturating_sub(sent).max(1_000));
                }
                n += 1;
            }
            let mut h = hist();
            for s in samples {
                let _ = h.record(s);
            }
            (n, h)
        }));
    }
    let writers = 64usize;
    let per_writer = Duration::from_secs_f64(writers as f64 / rate as f64);
    let mut write_tasks = Vec::new();
    let written = Arc::new(AtomicU64::new(0));
    for w in 0..writers {
        let s = write_stores[w % write_stores.len()].clone();
        let stop = stop.clone();
        let written = written.clone();
        write_tasks.push(tokio::spawn(async move {
            let mut next =
                tokio::time::Instant::now() + per_writer.mul_f64(w as f64 / writers as f64);
            let mut rev = 0;
            let key = format!("/bench/f/{w}");
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next).await;
                next += per_writer;
                let sent = epoch.elapsed().as_nanos() as u64;
                let res = if rev == 0 {
                    s.create(&key, value(sent)).await
                } else {
                    s.update(&key, value(sent), rev).await
                };
                rev = res.expect("write").mod_revision;
                written.fetch_add(1, Ordering::Relaxed);
            }
            rev
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in write_tasks {
        t.await.expect("writer");
    }
    let elapsed = started.elapsed();
    stores[0]
        .create("/bench/f/zz-end", Bytes::from_static(b"end"))
        .await
        .expect("end marker");
    let mut total = hist();
    let mut delivered = 0;
    for t in watch_tasks {
        let (n, h) = t.await.expect("watcher");
        delivered += n;
        total.add(h).expect("merge");
    }
    let writes = written.load(Ordering::Relaxed);
    assert_eq!(
        delivered,
        writes * watchers as u64,
        "every watcher saw every write"
    );
    (
        figures(delivered, elapsed, &total),
        writes as f64 / elapsed.as_secs_f64(),
    )
}

fn recover_child(dir: &Path) {
    let started = Instant::now();
    let store = MemStore::open(dir).expect("open");
    let elapsed = started.elapsed();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let report = store.recovery_report().expect("report");
    println!(
        "{} {} {} {} {}",
        elapsed.as_millis(),
        field("VmRSS:"),
        field("VmHWM:"),
        report.revision,
        report.snapshot_revision.unwrap_or(0)
    );
}

async fn recovery(args: &Args) {
    let dir = tempfile::tempdir_in(&args.data_dir).expect("dir");
    let keys = args.keys;
    let started = Instant::now();
    {
        let s = MemStore::open(dir.path()).expect("open");
        load_keys(&s, "/registry/bench/objects/", keys).await;
    }
    let load = started.elapsed();
    let raw: u64 = (0..keys)
        .map(|i| format!("/registry/bench/objects/{i:08}").len() as u64 + 256)
        .sum();
    let disk: u64 = std::fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("\n### Recovery (MemStore): {keys} keys, 256-byte values, loaded in {load:.1?}");
    println!(
        "raw data (keys + values): {:.1} MiB; on disk: {:.1} MiB",
        raw as f64 / 1048576.0,
        disk as f64 / 1048576.0
    );
    println!(
        "| round | reopen (ms) | RSS after open (MiB) | peak RSS (MiB) | peak RSS / raw data |"
    );
    println!("|---|---|---|---|---|");
    for round in 0..args.rounds.max(1) {
        let out = Command::new(std::env::current_exe().expect("exe"))
            .arg("--recover-child")
            .arg(dir.path())
            .output()
            .expect("recovery child");
        let text = String::from_utf8_lossy(&out.stdout);
        let nums: Vec<u64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let [ms, rss, hwm, _rev, _snap] = nums[..] else {
            panic!(
                "recovery child said: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        println!(
            "| {round} | {ms} | {:.0} | {:.0} | {:.2} |",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            (hwm * 1024) as f64 / raw as f64
        );
    }
}

fn row(name: &str, m: Figures, e: Option<Figures>) {
    let Some(e) = e else {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | — | — | — | — |",
            m.ops_per_sec, m.p50_ms, m.p99_ms
        );
        return;
    };
    println!(
        "| {name} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1}× |",
        m.ops_per_sec,
        m.p50_ms,
        m.p99_ms,
        e.ops_per_sec,
        e.p50_ms,
        e.p99_ms,
        m.ops_per_sec / e.ops_per_sec
    );
}

async fn run(args: Args) {
    println!("# keelson-store benchmark\nmachine: {}", machine());
    let shown: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    println!(
        "command: cargo bench -p keelson-store --bench store -- {}",
        shown.join(" ")
    );
    println!(
        "rounds: {} (medians shown; MemStore and etcd alternate within each round)",
        args.rounds
    );
    let secs = if args.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let need_etcd =
        !args.no_etcd && (wants(&args, "writes") || wants(&args, "reads") || wants(&args, "watch"));
    let etcd = if need_etcd {
        Some(Etcd::start(&args.data_dir).await)
    } else {
        None
    };

    if wants(&args, "writes") {
        println!("\n### Durable writes (compare-and-swap updates, 256-byte values)");
        println!(
            "| writers | MemStore ops/s | p50 ms | p99 ms | etcd ops/s | p50 ms | p99 ms | ratio |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for writers in [1usize, 16, 256] {
            let (mut m, mut e) = (Vec::new(), Vec::new());
            for round in 0..args.rounds {
                let dir = tempfile::tempdir_in(&args.data_dir).expect("dir");
                let mem = MemStore::open(dir.path()).expect("open");
                m.push(writes(&[mem], writers, secs).await);
                if let Some(etcd) = &etcd {
                    let pool = etcd.pool(&format!("/w{writers}-{round}"), 8).await;
                    e.push(writes(&pool, writers, secs).await);
                }
            }
            row(&writers.to_string(), median(m), median_opt(e));
        }
    }
    if wants(&args, "reads") {
        let keys = 10_000;
        let dir = tempfile::tempdir_in(&args.data_dir).expect("dir");
        let mem = MemStore::open(dir.path()).expect("open");
        load_keys(&mem, "/bench/r/", keys).await;
        let pool = match &etcd {
            Some(etcd) => {
                let pool = etcd.pool("/reads", 8).await;
                load_keys(&pool[0], "/bench/r/", keys).await;
                pool
            }
            None => Vec::new(),
        };
        let (mut mg, mut eg, mut ml, mut el) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            mg.push(gets(std::slice::from_ref(&mem), keys, secs).await);
            ml.push(lists(&mem, keys, secs).await);
            if !pool.is_empty() {
                eg.push(gets(&pool, keys, secs).await);
                el.push(lists(&pool[0], keys, secs).await);
            }
        }
        println!("\n### Reads ({keys} keys, 256-byte values)");
        println!(
            "| read | MemStore ops/s | p50 ms | p99 ms | etcd ops/s | p50 ms | p99 ms | ratio |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        row("get, 16 tasks", median(mg), median_opt(eg));
        row("list of 10,000 keys", median(ml), median_opt(el));
    }
    if wants(&args, "watch") {
        let watchers = args.watchers;
        let rate = 10_000;
        let (mut m, mut e) = (Vec::new(), Vec::new());
        let (mut mr, mut er) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            let dir = tempfile::tempdir_in(&args.data_dir).expect("dir");
            let mem = MemStore::open(dir.path()).expect("open");
            let (f, r) = watch_fanout(
                std::slice::from_ref(&mem),
                std::slice::from_ref(&mem),
                watchers,
                rate,
                secs,
            )
            .await;
            m.push(f);
            mr.push(r);
            if let Some(etcd) = &etcd {
                // Watchers and writers on separate connections, so that slow watch streams
                // do not hold up the writes on a shared HTTP/2 connection.
                let pool = etcd.pool(&format!("/watch-{round}"), 8).await;
                let writers = etcd.pool(&format!("/watch-{round}"), 8).await;
                let (f, r) = watch_fanout(&pool, &writers, watchers, rate, secs).await;
                e.push(f);
                er.push(r);
            }
        }
        println!("\n### Watch fan-out: {watchers} watchers of one prefix, writers aiming at {rate} writes/s");
        println!("| store | writes/s reached | deliveries/s | delivery p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|---|");
        for (name, f, r) in [("MemStore", m, mr), ("etcd", e, er)] {
            if f.is_empty() {
                continue;
            }
            let (f, r) = (median(f), median_f64(r));
            println!(
                "| {name} | {r:.0} | {:.0} | {:.2} | {:.2} | {:.1} |",
                f.ops_per_sec, f.p50_ms, f.p99_ms, f.max_ms
            );
        }
    }
    drop(etcd);
    if wants(&args, "recovery") {
        recovery(&args).await;
    }
}

fn median_opt(v: Vec<Figures>) -> Option<Figures> {
    (!v.is_empty()).then(|| median(v))
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
