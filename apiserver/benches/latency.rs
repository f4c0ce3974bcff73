//! Mutating latency at a fixed offered load: pod creates over HTTP/1.1, open loop.
//!
//! ```sh
//! cargo bench -p keelson-apiserver --bench latency            # 2,000 creates/s for 20 s
//! cargo bench -p keelson-apiserver --bench latency -- --quick # 2 s
//! cargo bench -p keelson-apiserver --bench latency -- --rate 4000 --secs 20 --connections 64
//! ```
//!
//! The API server runs in this process on a runtime of 2 tokio workers (threads `server`),
//! plain HTTP/1.1 on 127.0.0.1, over a durable `MemStore` under `/var/tmp`. The load runs in
//! the same process on a second runtime (threads `client`, 2 by default,
//! `--client-threads`): this machine has only 2 cores, so the server's 2 workers, the
//! client and the store's commit thread share them, and the figures include the client's
//! cost.
//!
//! The client is a minimal HTTP/1.1 client on tokio `TcpStream`s: a pool of 64 keep-alive
//! connections (`--connections`), each a task that takes the next request number `i`,
//! waits until its planned time `t0 + i / rate`, POSTs a pod with `generateName` (every
//! create a durable write) and reads the `201`. The latency of a request is measured from
//! its planned time, not from when it was written, so a server that falls behind is
//! charged for the requests that wait for a free connection (no coordinated omission, as
//! wrk2 does). tokio's timer has a 1 ms resolution, so a request may be written up to about
//! 1 ms after its planned time; that wait is in the figures too. The service time (from
//! the write of the request to its response) is reported beside it, and so is when the
//! requests slower than 20 ms were due (a stall of the write path shows as one burst).
//!
//! Goal (issue 3): p99 ≤ 50 ms at 2,000 creates/s (the Kubernetes SLO for mutating calls
//! is 1 s at p99).

mod common;

use common::{cpu_by_thread, histogram, ms, print_cpu, record};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use keelson_apiserver::{resources, ApiServer, Registry, ServedResource};
use keelson_store::MemStore;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Requests slower than this (from their planned time) are listed by when they were due.
const SLOW: Duration = Duration::from_millis(20);

struct Args {
    quick: bool,
    rate: f64,
    secs: f64,
    connections: usize,
    client_threads: usize,
}

fn parse_args() -> Args {
    let mut quick = false;
    let (mut rate, mut secs, mut connections, mut client_threads) = (None, None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value =
            |name: &str| -> String { it.next().unwrap_or_else(|| panic!("{name} needs a value")) };
        match a.as_str() {
            "--quick" => quick = true,
            "--rate" => rate = Some(value(&a).parse().expect("--rate <creates per second>")),
            "--secs" => secs = Some(value(&a).parse().expect("--secs <seconds>")),
            "--connections" => {
                connections = Some(value(&a).parse().expect("--connections <count>"));
            }
            "--client-threads" => {
                client_threads = Some(value(&a).parse().expect("--client-threads <count>"));
            }
            "--bench" => {} // passed by `cargo bench`
            other => panic!(
                "unknown argument {other}; use --quick, --rate N, --secs N, --connections N, \
                 --client-threads N"
            ),
        }
    }
    Args {
        quick,
        rate: rate.unwrap_or(2000.0),
        secs: secs.unwrap_or(if quick { 2.0 } else { 20.0 }),
        connections: connections.unwrap_or(64),
        client_threads: client_threads.unwrap_or(2),
    }
}

/// A minimal HTTP/1.1 client connection (keep-alive; Content-Length bodies).
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
            io: BufReader::with_capacity(16 * 1024, stream),
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

    /// Reads a response with a Content-Length body (into `buf`); returns its status.
    async fn response(&mut self, buf: &mut Vec<u8>) -> u16 {
        let status = self.read_line().await;
        let status = status
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status line, got {status:?}"));
        let mut length = None;
        loop {
            let line = self.read_line().await;
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>().expect("a Content-Length"));
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    panic!("this client reads Content-Length bodies only");
                }
            }
        }
        buf.resize(length.unwrap_or(0), 0);
        self.io.read_exact(buf).await.expect("read a body");
        status
    }
}

struct Report {
    /// From the planned time.
    latency: Histogram<u64>,
    /// From the write of the request.
    service: Histogram<u64>,
    failures: u64,
    /// From `t0` to the last response.
    span: Duration,
    /// When the requests slower than [`SLOW`] were planned, from `t0`, in order.
    slow: Vec<Duration>,
    /// CPU seconds by thread name during the run.
    cpu: BTreeMap<String, f64>,
    /// The wall time `cpu` is measured over.
    wall: Duration,
}

async fn run(addr: SocketAddr, args: &Args, count: usize) -> Report {
    let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "lat-"},
                      "spec": {"containers": [{"name": "c", "image": "registry.example/app:1.0"}]}})
    .to_string();
    let request: Arc<[u8]> = format!(
        "POST /api/v1/namespaces/bench/pods HTTP/1.1\r\nHost: bench\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into();
    let mut conns = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        conns.push(Conn::connect(addr).await);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_by_thread();
    let cpu_started = Instant::now();
    let t0 = Instant::now() + Duration::from_millis(50);
    let rate = args.rate;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (next, failures, request) = (next.clone(), failures.clone(), request.clone());
            tokio::spawn(async move {
                let (mut latency, mut service) = (histogram(), histogram());
                let mut body = Vec::new();
                let mut last = t0;
                let mut slow = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return (latency, service, last, slow);
                    }
                    #[allow(clippy::cast_precision_loss)]
                    let planned = t0 + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(planned.into()).await;
                    let written = Instant::now();
                    conn.send(&request).await;
                    let status = conn.response(&mut body).await;
                    last = Instant::now();
                    if status == 201 {
                        record(&mut latency, last - planned);
                        record(&mut service, last - written);
                        if last - planned > SLOW {
                            slow.push(planned - t0);
                        }
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("create failed: {status} {}", String::from_utf8_lossy(&body));
                    }
                }
            })
        })
        .collect();
    let (mut latency, mut service, mut last) = (histogram(), histogram(), t0);
    let mut slow = Vec::new();
    for t in tasks {
        let (l, s, at, sl) = t.await.expect("client task");
        latency.add(l).expect("merge histograms");
        service.add(s).expect("merge histograms");
        last = last.max(at);
        slow.extend(sl);
    }
    slow.sort();
    let cpu_after = cpu_by_thread();
    let wall = cpu_started.elapsed();
    let cpu = cpu_after
        .into_iter()
        .map(|(k, v)| {
            let before = cpu_before.get(&k).copied().unwrap_or(0.0);
            (k, v - before)
        })
        .collect();
    Report {
        latency,
        service,
        failures: failures.load(Ordering::Relaxed),
        span: last.saturating_duration_since(t0),
        slow,
        cpu,
        wall,
    }
}

fn main() {
    let args = parse_args();
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
    let store = MemStore::open(dir.path()).expect("open the MemStore");
    let registry = Registry::new(Arc::new(store));
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
    let r = client_rt.block_on(run(addr, &args, count));

    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let shown: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    println!(
        "# keelson-apiserver: pod creates over HTTP/1.1 at a fixed rate (open loop), MemStore \
         on disk, server on 2 tokio workers, client on {} more threads in the same process, \
         {cores} cores",
        args.client_threads
    );
    println!(
        "command: cargo bench -p keelson-apiserver --bench latency{}{}",
        if shown.is_empty() { "" } else { " -- " },
        shown.join(" ")
    );
    #[allow(clippy::cast_precision_loss)]
    let achieved = r.latency.len() as f64 / r.span.as_secs_f64().max(1e-9);
    println!(
        "offered {} creates/s for {} s ({count} creates) over {} keep-alive connections{}; \
         {} created, {} failed, achieved {achieved:.0} creates/s\n",
        args.rate,
        args.secs,
        args.connections,
        if args.quick { " (quick)" } else { "" },
        r.latency.len(),
        r.failures
    );
    println!("| latency | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (name, h) in [
        ("from planned send time", &r.latency),
        ("service time (from write)", &r.service),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max())
        );
    }
    // When the slow requests were due: one stall shows as one burst.
    let mut bursts: Vec<(f64, f64, usize)> = Vec::new();
    for at in &r.slow {
        let at = at.as_secs_f64();
        match bursts.last_mut() {
            Some((_, end, n)) if at - *end < 0.1 => {
                *end = at;
                *n += 1;
            }
            _ => bursts.push((at, at, 1)),
        }
    }
    let shown: Vec<String> = bursts
        .iter()
        .take(10)
        .map(|(from, to, n)| format!("{n} at {from:.2}-{to:.2} s"))
        .collect();
    println!(
        "\nrequests over {} ms: {}{}{}",
        SLOW.as_millis(),
        r.slow.len(),
        if shown.is_empty() { "" } else { ": " },
        shown.join(", ")
    );
    let p99 = ms(r.latency.value_at_quantile(0.99));
    #[allow(clippy::cast_precision_loss)]
    let kept_up = achieved >= 0.98 * args.rate && r.failures == 0;
    println!(
        "\ngoal p99 ≤ 50 ms at {} creates/s: {} (p99 {p99:.2} ms{})",
        args.rate,
        if p99 <= 50.0 && kept_up {
            "met"
        } else {
            "not met"
        },
        if kept_up { "" } else { ", rate not achieved" }
    );
    print_cpu(&r.cpu, r.wall);
    drop(client_rt);
    drop(server_rt);
}
