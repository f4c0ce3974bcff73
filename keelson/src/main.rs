//! The `keelson` command.
//!
//! - `keelson up`: the all-in-one cluster. It serves the Kubernetes API from a durable
//!   store under the data directory — over HTTPS with a generated CA and an admin token by
//!   default, or plain HTTP with `--insecure-http` — writes a kubeconfig for kubectl, and
//!   runs the controllers (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob,
//!   EndpointSlice, Endpoints, garbage collector, Namespace, ServiceAccount), the scheduler (default profile, or the profiles of
//!   `--scheduler-config`) and node agents on the in-process client: `--nodes N` local nodes running real processes
//!   (default 1), `--sim-nodes N` simulated ones, static pods from `--manifests DIR`.
//!   Stopping it (Ctrl-C, SIGTERM) stops the pods' processes; after a crash they keep
//!   running and the next start adopts them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keelson_apiserver::auth::Authenticator;
use keelson_apiserver::tls::{self, Pki};
use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_store::{MemStore, Store};

#[derive(Parser)]
#[command(
    name = "keelson",
    version,
    about = "Kubernetes' cluster architecture as Rust crates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the all-in-one cluster.
    Up {
        /// Where the cluster keeps its state.
        #[arg(long, default_value = ".keelson")]
        data_dir: PathBuf,
        /// Where the API server listens.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// Where to write the kubeconfig for kubectl (default: DATA_DIR/kubeconfig).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Serve plain HTTP without authentication instead of HTTPS with a token.
        #[arg(long)]
        insecure_http: bool,
        /// The scheduler's profiles, as a KubeSchedulerConfiguration (YAML or JSON).
        #[arg(long)]
        scheduler_config: Option<PathBuf>,
        /// How many local nodes run pods as host processes (node-1, node-2, ...).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=200))]
        nodes: u8,
        /// How many simulated nodes to add (sim-0, sim-1, ...; no processes).
        #[arg(long, default_value_t = 0)]
        sim_nodes: usize,
        /// A directory of static pod manifests for node-1.
        #[arg(long)]
        manifests: Option<PathBuf>,
    },
}

/// mimalloc: the API server's many small JSON allocations across threads run about twice
/// as fast as on glibc's allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    match cli.command {
        Command::Up {
            data_dir,
            listen,
            kubeconfig,
            insecure_http,
            scheduler_config,
            nodes,
            sim_nodes,
            manifests,
        } => {
            let kubeconfig = kubeconfig.unwrap_or_else(|| data_dir.join("kubeconfig"));
            let scheduler_config = scheduler_config
                .map(|path| {
                    keelson_scheduler::SchedulerConfig::from_file(&path)
                        .with_context(|| format!("reading {}", path.display()))
                })
                .transpose()?;
            let nodes = Nodes {
                local: nodes,
                simulated: sim_nodes,
                manifests,
            };
            rt.block_on(up(
                data_dir,
                listen,
                kubeconfig,
                insecure_http,
                scheduler_config,
                nodes,
            ))
        }
    }
}

/// The namespaces every cluster has.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

async fn up(
    data_dir: PathBuf,
    listen: SocketAddr,
    kubeconfig: PathBuf,
    insecure_http: bool,
    scheduler_config: Option<keelson_scheduler::SchedulerConfig>,
    nodes: Nodes,
) -> anyhow::Result<()> {
    let store_dir = data_dir.join("store");
    let store = MemStore::open(&store_dir)
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let revision = store.current_revision().await?;
    if let Some(report) = store.recovery_report() {
        println!(
            "keelson: store open in {} at revision {revision} ({} log records replayed in {:?}{})",
            store_dir.display(),
            report.records,
            report.duration,
            if report.torn_tail.is_some() {
                "; cut an unfinished write off the log"
            } else {
                ""
            }
        );
    }
    // Service account tokens stay valid across restarts: their key is kept with the data.
    let sa_key = data_dir.join("pki").join("service-account.key");
    if let Some(dir) = sa_key.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let sa_tokens = keelson_apiserver::satoken::ServiceAccountTokens::load_or_create(&sa_key)
        .context("loading the service account signing key")?;
    let registry = Registry::new(Arc::new(store)).with_service_account_tokens(Arc::new(sa_tokens));
    // Keep five minutes of history, as Kubernetes' apiserver compacts etcd.
    let _compactor = registry.start_compactor(std::time::Duration::from_secs(300));
    let server = ApiServer::new(registry, resources::builtin());
    let namespaces = server
        .served()
        .iter()
        .find(|s| s.rt.plural == "namespaces")
        .cloned()
        .context("namespaces are served")?;
    for ns in SYSTEM_NAMESPACES {
        match server
            .registry()
            .create(
                &namespaces,
                None,
                serde_json::json!({ "metadata": { "name": ns } }),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(anyhow::anyhow!("creating namespace {ns}: {e}")),
        }
    }
    // One stop signal for every component.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut scheduler = keelson_scheduler::Scheduler::builder(server.client());
    if let Some(config) = scheduler_config {
        scheduler = scheduler.config(config);
    }
    let scheduler = scheduler.build().context("configuring the scheduler")?;
    let names = scheduler.scheduler_names().join(", ");
    let scheduling = tokio::spawn(scheduler.run(until_stopped()));
    println!("keelson: scheduler running (profiles: {names})");
    let running = start_nodes(&server, &data_dir, nodes, &until_stopped)?;
    let controllers = tokio::spawn(
        keelson_controllers::ControllerManager::new(server.client()).run(until_stopped()),
    );
    println!("keelson: controllers running");
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let sa_registry = server.registry().clone();
    let router = keelson_apiserver::router(server);
    if insecure_http {
        write_kubeconfig(&kubeconfig, &format!("http://{addr}"), None)?;
        announce("http", addr, &kubeconfig);
        axum::serve(listener, router)
            .with_graceful_shutdown(until_stopped())
            .await
            .context("serving the API")?;
    } else {
        let pki = Pki::load_or_create(&data_dir.join("pki"))
            .context("making the cluster's certificates")?;
        let tokens = data_dir.join("tokens.csv");
        let token = admin_token(&tokens)?;
        let auth = Authenticator::from_token_file(&tokens)
            .with_context(|| format!("reading {}", tokens.display()))?
            .with_service_accounts(sa_registry);
        write_kubeconfig(
            &kubeconfig,
            &format!("https://{addr}"),
            Some((&pki.ca_cert, &token)),
        )?;
        let router = router.layer(axum::middleware::from_fn_with_state(
            Arc::new(auth),
            keelson_apiserver::auth::middleware,
        ));
        announce("https", addr, &kubeconfig);
        tls::serve(listener, pki.server_config()?, router, until_stopped()).await;
    }
    match scheduling.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("keelson: the scheduler stopped with an error: {e}"),
        Err(e) => eprintln!("keelson: the scheduler task failed: {e}"),
    }
    let _ = controllers.await;
    running.stop().await;
    println!("keelson: stopped");
    Ok(())
}

/// The nodes `keelson up` runs.
struct Nodes {
    local: u8,
    simulated: usize,
    manifests: Option<PathBuf>,
}

/// The node agents running, and the runtimes whose processes stop with the cluster.
struct RunningNodes {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    runtimes: Vec<Arc<keelson_node::ProcessRuntime>>,
}

impl RunningNodes {
    /// Waits for the agents to stop (the stop signal has been given), then stops the
    /// pods' processes.
    async fn stop(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        for runtime in self.runtimes {
            runtime.kill_all();
        }
    }
}

/// Starts the local node agents (real processes, each with its state under
/// `DATA_DIR/nodes/NAME` and its endpoint on a free loopback port) and the simulated fleet.
fn start_nodes<F, Fut>(
    server: &Arc<ApiServer>,
    data_dir: &Path,
    nodes: Nodes,
    until_stopped: &F,
) -> anyhow::Result<RunningNodes>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut running = RunningNodes {
        tasks: Vec::new(),
        runtimes: Vec::new(),
    };
    for i in 1..=nodes.local {
        let name = format!("node-{i}");
        let state = data_dir.join("nodes").join(&name);
        let runtime = Arc::new(
            keelson_node::ProcessRuntime::open(state.join("runtime"))
                .with_context(|| format!("opening {name}'s runtime"))?,
        );
        let network = Arc::new(
            keelson_node::LoopbackNetwork::open(state.join("network"), i)
                .with_context(|| format!("opening {name}'s network"))?,
        );
        let mut agent = keelson_node::Agent::builder(server.client(), name.clone())
            .runtime(runtime.clone())
            .network(network)
            .state_dir(&state)
            .serve(0);
        if let (1, Some(dir)) = (i, &nodes.manifests) {
            agent = agent.manifests(dir);
        }
        let agent = agent
            .build()
            .with_context(|| format!("configuring {name}"))?;
        let stop = until_stopped();
        running.tasks.push(tokio::spawn(async move {
            if let Err(e) = agent.run(stop).await {
                eprintln!("keelson: the agent of {name} stopped: {e}");
            }
        }));
        running.runtimes.push(runtime);
    }
    if nodes.simulated > 0 {
        let fleet = keelson_node::SimFleet::builder(server.client())
            .nodes(nodes.simulated)
            .prefix("sim-")
            .build();
        let stop = until_stopped();
        running.tasks.push(tokio::spawn(async move {
            if let Err(e) = fleet.run(stop).await {
                eprintln!("keelson: the simulated nodes stopped: {e}");
            }
        }));
    }
    println!(
        "keelson: {} local node(s) running processes, {} simulated",
        nodes.local, nodes.simulated
    );
    Ok(running)
}

fn announce(scheme: &str, addr: SocketAddr, kubeconfig: &Path) {
    println!("keelson: API server listening on {scheme}://{addr}");
    println!("keelson: kubeconfig written to {}", kubeconfig.display());
    println!(
        "keelson: try `kubectl --kubeconfig {} get namespaces`",
        kubeconfig.display()
    );
    println!("keelson: ready; press Ctrl-C to stop");
}

/// The admin's token: made on first start, kept in the token file.
fn admin_token(tokens: &Path) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(tokens) {
        let admin = text.lines().find_map(|l| {
            let mut f = l.split(',');
            let token = f.next()?;
            (f.next()? == "admin").then(|| token.to_owned())
        });
        if let Some(token) = admin {
            return Ok(token);
        }
    }
    let token = format!("{}{}", uuid_hex(), uuid_hex());
    tls::write_secret(tokens, &format!("{token},admin,admin,\"system:masters\"\n"))
        .with_context(|| format!("writing {}", tokens.display()))?;
    Ok(token)
}

fn uuid_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Writes a kubeconfig for `server`, with the CA to trust and the token to send over HTTPS.
fn write_kubeconfig(path: &Path, server: &str, tls: Option<(&str, &str)>) -> anyhow::Result<()> {
    use base64::Engine;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (ca, user) = match tls {
        Some((ca, token)) => (
            format!(
                "\n    certificate-authority-data: {}",
                base64::engine::general_purpose::STANDARD.encode(ca)
            ),
            format!("\n    token: {token}"),
        ),
        None => (String::new(), " {}".to_owned()),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keelson\n  cluster:\n    server: {server}{ca}\nusers:\n- name: admin\n  user:{user}\ncontexts:\n- name: keelson\n  context:\n    cluster: keelson\n    user: admin\n    namespace: default\ncurrent-context: keelson\n"
    );
    tls::write_secret(path, &text).with_context(|| format!("writing {}", path.display()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
