//! The `keelson` command.
//!
//! - `keelson up`: the all-in-one cluster. It serves the Kubernetes API from a durable
//!   store under the data directory — over HTTPS with a generated CA and an admin token by
//!   default, or plain HTTP with `--insecure-http` — writes a kubeconfig for kubectl, and
//!   runs the controllers (every one of `keelson_controllers::CONTROLLERS`, or those
//!   `--controllers` chooses as kube-controller-manager's flag does), the cloud
//!   controllers on the local cloud (`type: LoadBalancer` Services get an address of
//!   `--load-balancer-pool`, served by the userspace proxy), the scheduler
//!   (default profile, or the profiles of `--scheduler-config`) and node agents on the
//!   in-process client: `--nodes N` local nodes running real processes (default 1),
//!   `--sim-nodes N` simulated ones (a `SimFleet`), static pods from `--manifests DIR`.
//!   All of it is assembled by [`keelson::Cluster`], as tests assemble their clusters.
//!   Stopping it (Ctrl-C, SIGTERM) stops the pods' processes; after a crash they keep
//!   running and the next start adopts them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keelson::{AddressRange, Cluster, LocalCloudConfig};
use keelson_apiserver::auth::Authenticator;
use keelson_apiserver::tls::{self, Pki};

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
        /// The controllers to run, as kube-controller-manager's flag: `*` for all,
        /// `name` to enable one, `-name` to disable one (`*,-route`). Names are the
        /// short ones (`deployment`, `service`) or Kubernetes' full ones
        /// (`service-lb-controller`).
        #[arg(long, value_delimiter = ',', default_value = "*")]
        controllers: Vec<String>,
        /// Where `type: LoadBalancer` Services get their addresses: `FIRST-LAST` or a
        /// CIDR of loopback addresses.
        #[arg(long, default_value_t = AddressRange::default())]
        load_balancer_pool: AddressRange,
        /// Admission plugins to turn off, comma-separated (as kube-apiserver's flag):
        /// `ServiceAccount` lets pods run without service accounts and token volumes.
        #[arg(long, value_delimiter = ',')]
        disable_admission_plugins: Vec<String>,
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
            controllers,
            load_balancer_pool,
            disable_admission_plugins,
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
            let names: Vec<&str> = controllers.iter().map(String::as_str).collect();
            let options = Options {
                insecure_http,
                scheduler_config,
                controllers: keelson_controllers::ControllerManagerConfig::default()
                    .controllers(&names)?,
                cloud: LocalCloudConfig {
                    load_balancer_pool,
                    ..LocalCloudConfig::default()
                },
                disable_admission_plugins,
            };
            rt.block_on(up(data_dir, listen, kubeconfig, options, nodes))
        }
    }
}

/// How `keelson up` runs its API server, scheduler, controllers and local cloud.
struct Options {
    insecure_http: bool,
    scheduler_config: Option<keelson_scheduler::SchedulerConfig>,
    controllers: keelson_controllers::ControllerManagerConfig,
    cloud: LocalCloudConfig,
    disable_admission_plugins: Vec<String>,
}

async fn up(
    data_dir: PathBuf,
    listen: SocketAddr,
    kubeconfig: PathBuf,
    options: Options,
    nodes: Nodes,
) -> anyhow::Result<()> {
    let Options {
        insecure_http,
        scheduler_config,
        controllers,
        cloud,
        disable_admission_plugins,
    } = options;
    let pool = cloud.load_balancer_pool;
    // The same assembly as every in-process cluster (tests, examples): keelson::Cluster.
    let mut builder = Cluster::builder()
        .data_dir(&data_dir)
        .process_nodes(nodes.local)
        .sim_fleet(nodes.simulated, "sim-")
        .disable_admission_plugins(&disable_admission_plugins)
        .controllers(controllers)
        .local_cloud(cloud)
        // Nodes come up while the API is served; the command does not wait for them.
        .ready_timeout(None);
    // Over HTTPS, the cluster's CA is published in every namespace (kube-root-ca.crt),
    // and pods are told the address: in-cluster clients reach the API server with the
    // token and CA of their token volume.
    let https = if insecure_http {
        None
    } else {
        let pki = Pki::load_or_create(&data_dir.join("pki"))
            .context("making the cluster's certificates")?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        builder = builder
            .root_ca(pki.ca_cert.clone())
            .pod_api_endpoint(listener.local_addr()?);
        Some((pki, listener))
    };
    if let Some(config) = scheduler_config {
        builder = builder.scheduler_config(config);
    }
    if let Some(dir) = nodes.manifests {
        builder = builder.manifests(dir);
    }
    if insecure_http {
        builder = builder.http(listen);
    }
    let cluster = builder
        .build()
        .await
        .with_context(|| format!("starting the cluster in {}", data_dir.display()))?;
    if let Some(report) = cluster.recovery_report() {
        let revision = cluster
            .server()
            .registry()
            .store()
            .current_revision()
            .await?;
        println!(
            "keelson: store open in {} at revision {revision} ({} log records replayed in {:?}{})",
            data_dir.join("store").display(),
            report.records,
            report.duration,
            if report.torn_tail.is_some() {
                "; cut an unfinished write off the log"
            } else {
                ""
            }
        );
    }
    println!(
        "keelson: scheduler running (profiles: {})",
        cluster.scheduler_names().join(", ")
    );
    println!(
        "keelson: {} local node(s) running processes, {} simulated",
        nodes.local, nodes.simulated
    );
    println!("keelson: controllers running; load balancer addresses from {pool}");
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
    match https {
        None => {
            let addr = cluster
                .http_addr()
                .context("the cluster serves no plain HTTP")?;
            write_kubeconfig(&kubeconfig, &format!("http://{addr}"), None)?;
            announce("http", addr, &kubeconfig);
            until_stopped().await;
        }
        Some((pki, listener)) => {
            serve_https(
                &cluster,
                &data_dir,
                &kubeconfig,
                pki,
                listener,
                until_stopped(),
            )
            .await?
        }
    }
    cluster.shutdown().await;
    println!("keelson: stopped");
    Ok(())
}

/// Serves the API over HTTPS with the admin's token (made on first start) and service
/// account tokens, until `stopped`.
async fn serve_https(
    cluster: &Cluster,
    data_dir: &Path,
    kubeconfig: &Path,
    pki: Pki,
    listener: tokio::net::TcpListener,
    stopped: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let tokens = data_dir.join("tokens.csv");
    let token = admin_token(&tokens)?;
    let auth = Authenticator::from_token_file(&tokens)
        .with_context(|| format!("reading {}", tokens.display()))?
        .with_service_accounts(cluster.server().registry().clone());
    write_kubeconfig(
        kubeconfig,
        &format!("https://{addr}"),
        Some((&pki.ca_cert, &token)),
    )?;
    let router = keelson_apiserver::router(cluster.server().clone()).layer(
        axum::middleware::from_fn_with_state(Arc::new(auth), keelson_apiserver::auth::middleware),
    );
    announce("https", addr, kubeconfig);
    tls::serve(listener, pki.server_config()?, router, stopped).await;
    Ok(())
}

/// The nodes `keelson up` runs.
struct Nodes {
    local: u8,
    simulated: usize,
    manifests: Option<PathBuf>,
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
    tls::write_secret(tokens, format!("{token},admin,admin,\"system:masters\"\n"))
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
