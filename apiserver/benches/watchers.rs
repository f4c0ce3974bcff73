//! 1,000 concurrent HTTP watchers of pods: delivery latency from a pod's create to every
//! watcher, and the number of store watches behind them.
//!
//! ```sh
//! cargo bench -p keelson-apiserver --bench watchers            # 1,000 watchers, 200 pods/s for 10 s
//! cargo bench -p keelson-apiserver --bench watchers -- --quick # 100 watchers, 2 s
//! cargo bench -p keelson-apiserver --bench watchers -- --watchers 1000 --rate 50 --secs 10
//! ```
//!
//! The API server runs in this process on a runtime of 2 tokio workers (threads `server`),
//! plain HTTP/1.1 on 127.0.0.1, over a durable `MemStore` under `/var/tmp` wrapped in a store
//! that counts the watches opened on the pods' prefix. The load runs in the same process on
//! a second runtime (threads `client`, 2 by default, `--client-threads`): this machine has
//! only 2 cores, so the server's 2 workers, the clients and the store's commit thread share
//! them, and the figures include the clients' cost.
//!
//! Each watcher is its own TCP connection (a minimal HTTP/1.1 client on a tokio
//! `TcpStream`): `GET /api/v1/namespaces/bench/pods?watch=1&resourceVersion=<rv>` with the
//! resource version of a LIST made just before, then it decodes the chunked body and splits
//! it into the newline-delimited JSON events. When every watcher has its response head, a
//! writer creates pods with `generateName` at a fixed rate (open loop, each create at its
//! planned time, over 4 keep-alive connections); each pod carries in an annotation the
//! time (nanoseconds since an `Instant` shared by the process) taken just before its POST
//! was written. A watcher that reads the pod's ADDED event records `now - that time`: the
//! delivery latency includes the create itself (a durable write), the store watch, the
//! watch cache and the fan-out to the HTTP streams. The figures: p50/p99/max over every
//! (event, watcher) pair, the same over each event's first and last watcher (the fan-out
//! spread), deliveries per second, and the CPU time of each group of threads.
//!
//! Goal (issue 3): 1,000 concurrent watchers of pods cost one store watch, and p99
//! delivery ≤ 20 ms.

mod common;

use common::{cpu_by_thread, histogram, ms, print_cpu, record};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use hdrhistogram::Histogram;
use keelson_apiserver::{resources, ApiServer, Registry, ServedResource};
use keelson_store::{
    Deleted, KeyValue, ListOptions, ListPage, MemStore, Revision, Store, WatchStream,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The annotation that carries a pod's send time.
const SENT: &str = "bench.keelson.dev/sent-ns";
/// The store prefix of pods.
const PODS_PREFIX: &str = "/registry/core/pods/";

/// A store that counts the watches opened on the pods' prefix.
struct Counting {
    inner: MemStore,
    pod_watches: AtomicUsize,
}

#[async_trait]
impl Store for Counting {
    async fn get(&self, key: &str) -> keelson_store::Result<Option<KeyValue>> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str, options: ListOptions) -> keelson_store::Result<ListPage> {
        self.inner.list(prefix, options).await
    }
    async fn create(&self, key: &str, value: Bytes) -> keelson_store::Result<KeyValue> {
        self.inner.create(key, value).await
    }
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> keelson_store::Result<KeyValue> {
        self.inner.update(key, value, expected).await
    }
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> keelson_store::Result<Deleted> {
        self.inner.delete(key, expected).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> keelson_store::Result<WatchStream> {
        if prefix.starts_with(PODS_PREFIX) {
            self.pod_watches.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.watch(prefix, after).await
    }
    async fn compact(&self, revision: Revision) -> keelson_store::Result<()> {
        self.inner.compact(revision).await
    }
    async fn current_revision(&self) -> keelson_store::Result<Revision> {
        self.inner.current_revision().await
    }
}

/// Nanoseconds since the process's shared epoch.
fn nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

struct Args {
    quick: bool,
    watchers: usize,
    rate: f64,
    secs: f64,
    client_threads: usize,
    writers: usize,
}

fn parse_args() -> Args {
    let mut quick = false;
    let (mut watchers, mut rate, mut secs, mut client_threads, mut writers) =
        (None, None, None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value =
            |name: &str| -> String { it.next().unwrap_or_else(|| panic!("{name} needs a value")) };
        match a.as_str() {
            "--quick" => quick = true,
            "--watchers" => watchers = Some(value(&a).parse().expect("--watchers <count>")),
            "--rate" => rate = Some(value(&a).parse().expect("--rate <pods per second>")),
            "--secs" => secs = Some(value(&a).parse().expect("--secs <seconds>")),
            "--client-threads" => {
                client_threads = Some(value(&a).parse().expect("--client-threads <count>"));
            }
            "--writers" => writers = Some(value(&a).parse().expect("--writers <connections>")),
            "--bench" => {} // passed by `cargo bench`
            other => panic!(
                "unknown argument {other}; use --quick, --watchers N, --rate N, --secs N, \
                 --client-threads N, --writers N"
            ),
        }
    }
    Args {
        quick,
        watchers: watchers.unwrap_or(if quick { 100 } else { 1000 }),
        rate: rate.unwrap_or(200.0),
        secs: secs.unwrap_or(if quick { 2.0 } else { 10.0 }),
        client_threads: client_threads.unwrap_or(2),
        writers: writers.unwrap_or(4),
    }
}

/// A response head.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
}

/// A minimal HTTP/1.1 client connection (keep-alive; Content-Length and chunked bodies).
struct Conn {
    io: BufReader<TcpStream>,
    line: String,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the server");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Conn {
            io: BufReader::with_capacity(64 * 1024, stream),
            line: String::new(),
        }
    }

    async fn send(&mut self, request: &[u8]) {
        self.io
            .get_mut()
            .write_all(request)
            .await
            .expect("write a request");
    }

    async fn read_line(&mut self) -> &str {
        self.line.clear();
        let n = self
            .io
            .read_line(&mut self.line)
            .await
            .expect("read from the server");
        assert!(n > 0, "the server closed the connection");
        self.line.trim_end()
    }

    async fn head(&mut self) -> Head {
        let status = self.read_line().await;
        let status = status
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status line, got {status:?}"));
        let mut head = Head {
            status,
            content_length: None,
            chunked: false,
        };
        loop {
            let line = self.read_line().await;
            if line.is_empty() {
                return head;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                head.content_length = Some(value.parse().expect("a Content-Length"));
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }

    /// Appends the next chunk of a chunked body to `buf`; false after the last chunk.
    async fn chunk(&mut self, buf: &mut Vec<u8>) -> bool {
        let size = self.read_line().await;
        let size = size.split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).expect("a chunk size");
        if size == 0 {
            self.read_line().await; // the empty trailer
            return false;
        }
        let start = buf.len();
        buf.resize(start + size, 0);
        self.io
            .read_exact(&mut buf[start..])
            .await
            .expect("read a chunk");
        let mut crlf = [0; 2];
        self.io.read_exact(&mut crlf).await.expect("a chunk's CRLF");
        true
    }

    /// Reads a whole response; its body into `buf`.
    async fn response(&mut self, buf: &mut Vec<u8>) -> u16 {
        let head = self.head().await;
        buf.clear();
        if head.chunked {
            while self.chunk(buf).await {}
        } else if let Some(n) = head.content_length {
            buf.resize(n, 0);
            self.io.read_exact(buf).await.expect("read a body");
        }
        head.status
    }
}

/// What a watcher saw.
struct Seen {
    /// The latency of each event received, in order, in nanoseconds.
    latencies: Vec<u64>,
    /// When the last one arrived (`nanos()`).
    last_at: u64,
    /// ERROR events (410 when the watcher fell behind the cache's broadcast).
    errors: u64,
}

/// One watcher: a watch request, then events until `expected` pods were seen or `stop`.
async fn watcher(
    addr: SocketAddr,
    request: Arc<[u8]>,
    expected: usize,
    connecting: Arc<tokio::sync::Semaphore>,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Seen {
    let mut conn = {
        let _permit = connecting.acquire().await.expect("semaphore");
        let mut conn = Conn::connect(addr).await;
        conn.send(&request).await;
        let head = conn.head().await;
        assert!(
            head.status == 200 && head.chunked,
            "a watch answers 200 with a chunked body, got {}",
            head.status
        );
        conn
    };
    let _ = ready.send(());
    let marker = format!("\"{SENT}\":\"");
    let mut seen = Seen {
        latencies: Vec::with_capacity(expected),
        last_at: 0,
        errors: 0,
    };
    let mut pending: Vec<u8> = Vec::with_capacity(16 * 1024);
    while seen.latencies.len() < expected && seen.errors == 0 {
        let more = tokio::select! {
            biased;
            _ = stop.changed() => break,
            more = conn.chunk(&mut pending) => more,
        };
        if !more {
            break;
        }
        let now = nanos();
        let text = std::str::from_utf8(&pending).expect("UTF-8 events");
        let mut consumed = 0;
        while let Some(end) = text[consumed..].find('\n') {
            let line = &text[consumed..consumed + end];
            consumed += end + 1;
            match event_type(line) {
                "ADDED" => {
                    let sent = line
                        .find(&marker)
                        .and_then(|at| {
                            let rest = &line[at + marker.len()..];
                            rest[..rest.find('"')?].parse::<u64>().ok()
                        })
                        .expect("each pod carries its send time");
                    seen.latencies.push(now.saturating_sub(sent));
                    seen.last_at = now;
                }
                "ERROR" => {
                    eprintln!("watcher got an ERROR event: {line}");
                    seen.errors += 1;
                }
                _ => {}
            }
        }
        pending.drain(..consumed);
    }
    seen
}

/// The `type` of a watch event line (`serde_json` writes `object` before `type` unless its
/// map preserves insertion order).
fn event_type(line: &str) -> &str {
    const TYPE: &str = "\"type\":\"";
    let at = if line.starts_with("{\"type\":\"") {
        1
    } else {
        line.rfind(TYPE).unwrap_or(line.len())
    };
    let rest = line.get(at + TYPE.len()..).unwrap_or("");
    &rest[..rest.find('"').unwrap_or(0)]
}

/// Creates `count` pods at `rate` per second from `t0`, each POST at its planned time, over
/// `connections` keep-alive connections. Returns the create latencies (from the planned
/// time) and the failures.
async fn writer(
    addr: SocketAddr,
    rate: f64,
    count: usize,
    connections: usize,
    t0: Instant,
) -> (Histogram<u64>, u64) {
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (next, failures) = (next.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await;
            let mut hist = histogram();
            let mut body = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return hist;
                }
                #[allow(clippy::cast_precision_loss)]
                let planned = t0 + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(planned.into()).await;
                let pod = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"generateName": "w-", "labels": {"app": "bench"},
                                 "annotations": {SENT: nanos().to_string()}},
                    "spec": {"containers": [{"name": "c", "image": "registry.example/app:1.0"}]}})
                .to_string();
                let request = format!(
                    "POST /api/v1/namespaces/bench/pods HTTP/1.1\r\nHost: bench\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{pod}",
                    pod.len()
                );
                conn.send(request.as_bytes()).await;
                let status = conn.response(&mut body).await;
                if status == 201 {
                    record(&mut hist, planned.elapsed());
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("create failed: {status} {}", String::from_utf8_lossy(&body));
                }
            }
        }));
    }
    let mut hist = histogram();
    for t in tasks {
        hist.add(t.await.expect("writer task"))
            .expect("merge histograms");
    }
    (hist, failures.load(Ordering::Relaxed))
}

fn main() {
    let args = parse_args();
    nanos(); // start the epoch
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()
        .expect("server runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name("client")
        .enable_all()
        .build()
        .expect("client runtime");
    let dir = tempfile::tempdir_in("/var/tmp").expect("a temporary directory in /var/tmp");
    let store = Arc::new(Counting {
        inner: MemStore::open(dir.path()).expect("open the MemStore"),
        pod_watches: AtomicUsize::new(0),
    });
    let registry = Registry::new(store.clone());
    let server = ApiServer::new(registry.clone(), resources::builtin());
    let namespaces: ServedResource = server
        .served()
        .iter()
        .find(|s| s.rt.plural == "namespaces")
        .cloned()
        .expect("namespaces are served");
    let addr = server_rt.block_on(async {
        registry
            .create(&namespaces, None, json!({"metadata": {"name": "bench"}}))
            .await
            .expect("create the namespace");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, keelson_apiserver::router(server)).await });
        addr
    });
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let count = (args.rate * args.secs).round() as usize;
    let report = client_rt.block_on(run(addr, &args, count));
    let pod_watches = store.pod_watches.load(Ordering::SeqCst);
    print_report(&args, count, &report, pod_watches);
    assert_eq!(
        pod_watches, 1,
        "{} HTTP watchers of pods share one store watch",
        args.watchers
    );
    drop(client_rt);
    drop(server_rt);
}

struct Report {
    all: Histogram<u64>,
    first: Histogram<u64>,
    last: Histogram<u64>,
    creates: Histogram<u64>,
    create_failures: u64,
    deliveries: u64,
    missing: u64,
    errors: u64,
    /// From the first planned send to the last delivery.
    span: Duration,
    setup: Duration,
    cpu: BTreeMap<String, f64>,
    /// The wall time `cpu` is measured over.
    wall: Duration,
}

async fn run(addr: SocketAddr, args: &Args, count: usize) -> Report {
    // The resource version to watch from: a LIST's.
    let mut conn = Conn::connect(addr).await;
    conn.send(b"GET /api/v1/namespaces/bench/pods HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await;
    let mut body = Vec::new();
    assert_eq!(conn.response(&mut body).await, 200, "list pods");
    let list: serde_json::Value = serde_json::from_slice(&body).expect("a PodList");
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("the list's resourceVersion")
        .to_owned();
    drop(conn);

    let started = Instant::now();
    let request: Arc<[u8]> = format!(
        "GET /api/v1/namespaces/bench/pods?watch=1&resourceVersion={rv} HTTP/1.1\r\nHost: bench\r\n\r\n"
    )
    .into_bytes()
    .into();
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watchers: Vec<_> = (0..args.watchers)
        .map(|_| {
            tokio::spawn(watcher(
                addr,
                request.clone(),
                count,
                connecting.clone(),
                ready_tx.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    for _ in 0..args.watchers {
        ready_rx
            .recv()
            .await
            .expect("every watcher gets its response head");
    }
    let setup = started.elapsed();

    let cpu_before = cpu_by_thread();
    let cpu_started = Instant::now();
    let t0 = Instant::now() + Duration::from_millis(50);
    let t0_nanos = nanos() + 50_000_000;
    let (creates, create_failures) = writer(addr, args.rate, count, args.writers, t0).await;
    // Give the watchers time to drain, then stop the stragglers.
    let grace = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(grace);
    let all_done = async {
        for w in &watchers {
            while !w.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    tokio::select! {
        () = all_done => {}
        () = &mut grace => eprintln!("some watchers had not seen every pod 30 s after the last create"),
    }
    let _ = stop_tx.send(true);
    let mut seen = Vec::with_capacity(watchers.len());
    for w in watchers {
        seen.push(w.await.expect("watcher task"));
    }
    let cpu_after = cpu_by_thread();
    let wall = cpu_started.elapsed();
    let cpu = cpu_after
        .into_iter()
        .map(|(k, v)| {
            let before = cpu_before.get(&k).copied().unwrap_or(0.0);
            (k, v - before)
        })
        .collect();

    let (mut all, mut first, mut last) = (histogram(), histogram(), histogram());
    let (mut deliveries, mut missing, mut errors, mut last_at) = (0, 0, 0, 0);
    for s in &seen {
        for &l in &s.latencies {
            all.saturating_record(l);
        }
        deliveries += s.latencies.len() as u64;
        missing += (count - s.latencies.len().min(count)) as u64;
        errors += s.errors;
        last_at = last_at.max(s.last_at);
    }
    // Every watcher sees the pods in the same (revision) order: event i is the i-th line.
    for i in 0..count {
        let of_event = seen.iter().filter_map(|s| s.latencies.get(i).copied());
        if let (Some(lo), Some(hi)) = (of_event.clone().min(), of_event.max()) {
            first.saturating_record(lo);
            last.saturating_record(hi);
        }
    }
    Report {
        all,
        first,
        last,
        creates,
        create_failures,
        deliveries,
        missing,
        errors,
        span: Duration::from_nanos(last_at.saturating_sub(t0_nanos)),
        setup,
        cpu,
        wall,
    }
}

fn print_report(args: &Args, count: usize, r: &Report, pod_watches: usize) {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let shown: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    println!(
        "# keelson-apiserver: {} HTTP/1.1 watchers of pods, MemStore on disk, server on 2 tokio \
         workers, clients on {} more threads in the same process, {cores} cores",
        args.watchers, args.client_threads
    );
    println!(
        "command: cargo bench -p keelson-apiserver --bench watchers{}{}",
        if shown.is_empty() { "" } else { " -- " },
        shown.join(" ")
    );
    println!(
        "{count} pods created at {} pods/s for {} s over {} connections ({} failed); \
         {} watchers connected in {:.2} s{}",
        args.rate,
        args.secs,
        args.writers,
        r.create_failures,
        args.watchers,
        r.setup.as_secs_f64(),
        if args.quick { " (quick)" } else { "" }
    );
    println!(
        "store watches on {PODS_PREFIX}: {pod_watches} (goal: 1 for all {} watchers)",
        args.watchers
    );
    #[allow(clippy::cast_precision_loss)]
    let rate = r.deliveries as f64 / r.span.as_secs_f64().max(1e-9);
    println!(
        "deliveries: {} of {} ({} missing, {} ERROR events), {rate:.0}/s over {:.2} s \
         (first planned create to last delivery)\n",
        r.deliveries,
        count * args.watchers,
        r.missing,
        r.errors,
        r.span.as_secs_f64()
    );
    println!("| latency | samples | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for (name, h) in [
        ("delivery, every (event, watcher)", &r.all),
        ("delivery, each event's first watcher", &r.first),
        ("delivery, each event's last watcher", &r.last),
        ("create (POST → 201, from planned time)", &r.creates),
    ] {
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max())
        );
    }
    let p99 = ms(r.all.value_at_quantile(0.99));
    println!(
        "\ngoal p99 delivery ≤ 20 ms: {} (p99 {p99:.2} ms)",
        if p99 <= 20.0 && r.missing == 0 {
            "met"
        } else {
            "not met"
        }
    );
    print_cpu(&r.cpu, r.wall);
}
