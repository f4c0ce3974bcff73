//! The API server over HTTP/1.1 keep-alive on 127.0.0.1, on a durable MemStore, loaded by
//! `wrk` from a second process (Debian's `wrk`: `apt-get install -y wrk`).
//!
//! ```sh
//! cargo bench -p keelson-apiserver --bench http            # 3 rounds of 5 s per workload
//! cargo bench -p keelson-apiserver --bench http -- --quick
//! ```
//!
//! Workloads: GET of one pod (32 connections); create of pods with `generateName`
//! (32 connections, every create durable); LIST of a namespace holding 10,000 pods (one
//! connection, full JSON list).

use std::process::Command;
use std::sync::Arc;

use keelson_apiserver::{resources, ApiServer, Registry, ServedResource};
use keelson_store::MemStore;
use serde_json::json;

/// The allocator `keelson up` runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn pod(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench"}},
           "spec": {"containers": [{"name": "c", "image": "registry.example/app:1.0", "ports": [{"containerPort": 8080}]}]}})
}

struct Wrk {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Parses wrk's `--latency` output.
fn parse_wrk(out: &str) -> Wrk {
    let ms = |s: &str| -> f64 {
        let s = s.trim();
        if let Some(v) = s.strip_suffix("us") {
            v.parse::<f64>().unwrap_or(0.0) / 1000.0
        } else if let Some(v) = s.strip_suffix("ms") {
            v.parse().unwrap_or(0.0)
        } else if let Some(v) = s.strip_suffix('s') {
            v.parse::<f64>().unwrap_or(0.0) * 1000.0
        } else {
            0.0
        }
    };
    let mut w = Wrk {
        requests_per_sec: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
    };
    for line in out.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            w.requests_per_sec = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("50%") {
            w.p50_ms = ms(v);
        } else if let Some(v) = line.strip_prefix("99%") {
            w.p99_ms = ms(v);
        }
    }
    w
}

fn wrk(url: &str, connections: u32, secs: u64, script: Option<&std::path::Path>) -> Wrk {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        if connections > 1 { "2" } else { "1" },
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{secs}s"),
        "--latency",
    ]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("run wrk (apt-get install -y wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("Non-2xx"), "wrk saw errors: {text}");
    parse_wrk(&text)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, secs) = if quick { (1, 1) } else { (3, 5) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir_in("/var/tmp").expect("dir");
    let store = MemStore::open(dir.path()).expect("store");
    let registry = Registry::new(Arc::new(store));
    let server = ApiServer::new(registry.clone(), resources::builtin());
    let find = |plural: &str| -> ServedResource {
        server
            .served()
            .iter()
            .find(|s| s.rt.plural == plural)
            .cloned()
            .expect("served")
    };
    let (namespaces, pods) = (find("namespaces"), find("pods"));
    let addr = rt.block_on(async {
        for ns in ["default", "list", "bench"] {
            registry
                .create(&namespaces, None, json!({"metadata": {"name": ns}}))
                .await
                .expect("namespace");
        }
        registry
            .create(&pods, Some("default"), pod("p1"))
            .await
            .expect("pod");
        for i in 0..10_000 {
            registry
                .create(&pods, Some("list"), pod(&format!("p{i:05}")))
                .await
                .expect("pod");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, keelson_apiserver::router(server)).await });
        addr
    });
    let script = dir.path().join("create.lua");
    let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "b-"},
                      "spec": {"containers": [{"name": "c", "image": "registry.example/app:1.0"}]}});
    std::fs::write(
        &script,
        format!("wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = '{body}'\n"),
    )
    .expect("script");
    let base = format!("http://{addr}");
    let (mut get, mut create, mut list) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        get.push(wrk(
            &format!("{base}/api/v1/namespaces/default/pods/p1"),
            32,
            secs,
            None,
        ));
        create.push(wrk(
            &format!("{base}/api/v1/namespaces/bench/pods"),
            32,
            secs,
            Some(&script),
        ));
        list.push(wrk(
            &format!("{base}/api/v1/namespaces/list/pods"),
            1,
            secs,
            None,
        ));
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# keelson-apiserver over HTTP/1.1 keep-alive, MemStore on disk, wrk 4.1 on the same {cores}-core machine");
    println!(
        "command: cargo bench -p keelson-apiserver --bench http{}",
        if quick { " -- --quick" } else { "" }
    );
    println!("median of {rounds} rounds of {secs} s\n");
    println!("| request | connections | requests/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|");
    for (name, conns, runs) in [
        ("GET one pod", 32, get),
        ("create pod (durable)", 32, create),
        ("LIST 10,000 pods", 1, list),
    ] {
        let rps = median(runs.iter().map(|w| w.requests_per_sec).collect());
        let p50 = median(runs.iter().map(|w| w.p50_ms).collect());
        let p99 = median(runs.iter().map(|w| w.p99_ms).collect());
        println!("| {name} | {conns} | {rps:.0} | {p50:.2} | {p99:.2} |");
    }
}
