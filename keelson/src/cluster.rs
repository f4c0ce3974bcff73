//! [`Cluster`]: a whole cluster in one process, assembled in one call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keelson::ClusterError> {
//! use keelson::Cluster;
//! use keelson::core::client::Api;
//! use keelson::core::k8s_openapi::api::core::v1::Node;
//!
//! let cluster = Cluster::builder().sim_nodes(3).build().await?;
//! let nodes = Api::<Node>::all(cluster.client()).list(&Default::default()).await?;
//! assert_eq!(nodes.items.len(), 3);
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! What [`ClusterBuilder::build`] starts, in this order:
//!
//! 1. **The store**: by default an in-memory [`MemStore`] with no disk at all
//!    ([`MemStore::ephemeral`]); with [`ClusterBuilder::data_dir`] or
//!    [`ClusterBuilder::temp_dir`], a durable one (its log and snapshots under `DIR/store`);
//!    or any [`Store`] given to [`ClusterBuilder::store`].
//! 2. **The API server** ([`ApiServer`]), reached in-process by [`Cluster::client`], with
//!    the system namespaces (`default`, `kube-system`, `kube-public`, `kube-node-lease`)
//!    and a compactor keeping five minutes of history. Optionally it also serves plain
//!    HTTP on a local address ([`ClusterBuilder::http`]), for kubectl or any Kubernetes
//!    client. Its admission has kube-apiserver's `ServiceAccount` plugin
//!    ([`ServiceAccountAdmission`]: pods run as an account that exists, with a token
//!    volume), unless [`ClusterBuilder::disable_admission_plugins`] turns it off — and
//!    unless the controller manager does not run the `serviceaccount` controller, since
//!    then nothing creates the `default` accounts pods need (Kubernetes' own test
//!    harnesses turn the plugin off in that case too).
//! 3. **The scheduler**, with the default profile (or the profiles of a
//!    [`SchedulerConfig`]).
//! 4. **The controller manager** with every built-in controller (or the ones a
//!    [`ControllerManagerConfig`] names, optionally under leader election), and the cloud
//!    controllers on a cloud provider: by default a [`LocalCloud`] whose instances are
//!    the cluster's nodes and whose load balancers are served on loopback addresses
//!    ([`ClusterBuilder::local_cloud`], [`ClusterBuilder::cloud_provider`],
//!    [`ClusterBuilder::without_cloud_provider`]). While the `cloud-node` controller
//!    runs, the nodes register tainted `node.cloudprovider.kubernetes.io/uninitialized`
//!    (the first time only, as kubelet with an external cloud provider does), and the
//!    cloud initialises them. Its
//!    `root-ca-cert-publisher` publishes the CA given to [`ClusterBuilder::root_ca`] (or
//!    an empty one) in every namespace; its `serviceaccount-token` signs the tokens it
//!    puts into Secrets with the API server's service account key.
//! 5. **The nodes**: simulated nodes `sim-0`, `sim-1`, ... (a node agent each, on one
//!    shared [`SimRuntime`]; [`Cluster::stop_node`] and [`Cluster::start_node`] take one
//!    down and bring it back), a [`SimFleet`] for thousands of simulated nodes on one
//!    pod watch, and local nodes `node-1`, `node-2`, ... running pods as host processes
//!    ([`ProcessRuntime`], state under `DIR/nodes/NAME`).
//!
//! `build` returns once every node (other than the fleet's) has registered, is Ready and
//! (with the `cloud-node` controller) has been initialised by the cloud, which takes
//! milliseconds with simulated nodes.
//!
//! # Paused time
//!
//! Everything here times itself with `tokio::time`, so a cluster runs under
//! `#[tokio::test(start_paused = true)]`: grace periods of minutes pass in milliseconds
//! and the same test takes the same steps every run. Use the default in-memory store
//! there. A durable store answers a write only after its committer thread has called
//! `fdatasync`; tokio does not know about that thread, so while a test waits for the
//! write with nothing else to do, paused time jumps to the next timer — it works, but
//! time is no longer still while the disk works. (tokio holds the clock only while a
//! `spawn_blocking` task runs, on the current-thread runtime.)

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keelson_apiserver::admission::{AdmissionChain, ServiceAccountAdmission};
use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_controllers::builtin::serviceaccount_token::{LegacyTokenClaims, TokenSigner};
use keelson_controllers::cloud::{has_taint, CloudProvider, TAINT_UNINITIALIZED};
use keelson_controllers::{ControllerManager, ControllerManagerConfig};
use keelson_core::client::{Api, Client, ListParams};
use keelson_core::k8s_openapi::api::core::v1::{Node, Taint};
use keelson_node::{
    Agent, AgentConfig, LoopbackNetwork, NetworkPlugin, NetworkStatus, NodeResources, PodNetwork,
    PodNetworkRef, ProcessRuntime, SimFleet, SimRuntime,
};
use keelson_scheduler::{Scheduler, SchedulerConfig};
use keelson_store::{MemStore, RecoveryReport, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cloud::{LocalCloud, LocalCloudConfig};
/// The admission plugins of kube-apiserver the cluster runs by default, by the names
/// [`ClusterBuilder::disable_admission_plugins`] takes.
pub const ADMISSION_PLUGINS: [&str; 1] = [keelson_apiserver::admission::SERVICE_ACCOUNT_PLUGIN];

/// The namespaces every cluster has.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Why a [`Cluster`] could not be built or a node could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The store could not be opened.
    #[error("failed to open the store in {dir}: {source}")]
    Store {
        /// The store's directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: keelson_store::StoreError,
    },
    /// A temporary or data directory could not be made.
    #[error("failed to make the directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The API server refused a request made while assembling the cluster.
    #[error("failed to {what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: Box<keelson_core::Error>,
    },
    /// The service account signing key could not be read or made.
    #[error("failed to load the service account signing key: {0}")]
    ServiceAccountKey(#[source] keelson_apiserver::satoken::KeyError),
    /// The scheduler's configuration is invalid.
    #[error("failed to configure the scheduler: {0}")]
    Scheduler(#[source] keelson_scheduler::ConfigError),
    /// A node agent could not be configured.
    #[error("failed to configure node {node}: {source}")]
    Node {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: keelson_node::Error,
    },
    /// No node of that name belongs to the cluster (or it is part of a [`SimFleet`]).
    #[error("no node {0:?} in this cluster that can be stopped and started")]
    UnknownNode(String),
    /// The HTTP listener could not be bound.
    #[error("failed to listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An admission plugin to disable is not one the cluster has.
    #[error("unknown admission plugin {0:?}; known: {known}", known = ADMISSION_PLUGINS.join(", "))]
    UnknownAdmissionPlugin(String),
    /// The nodes did not register and become Ready in time.
    #[error("nodes not Ready after {0:?}: {1}")]
    NodesNotReady(Duration, String),
}

impl From<keelson_core::Error> for ClusterError {
    fn from(source: keelson_core::Error) -> Self {
        ClusterError::Api {
            what: "call the API server".into(),
            source: Box::new(source),
        }
    }
}

enum StoreChoice {
    Ephemeral,
    Dir(PathBuf),
    Temp,
    Given(Arc<dyn Store>),
}

/// Which cloud provider the cloud controllers drive.
enum CloudChoice {
    Local(LocalCloudConfig),
    Given(Arc<dyn CloudProvider>),
    Off,
}

/// Builds a [`Cluster`] (see the [module docs](self)).
pub struct ClusterBuilder {
    cloud: CloudChoice,
    store: StoreChoice,
    http: Option<SocketAddr>,
    scheduler: Option<Option<SchedulerConfig>>,
    controllers: Option<ControllerManagerConfig>,
    sim_nodes: usize,
    sim_config: AgentConfig,
    sim_fleet: Option<(usize, String)>,
    process_nodes: u8,
    manifests: Option<PathBuf>,
    compaction: Option<Duration>,
    ready_timeout: Option<Duration>,
    disabled_admission: Vec<String>,
    root_ca: Option<String>,
    pod_api_endpoint: Option<SocketAddr>,
}

impl std::fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("http", &self.http)
            .field("sim_nodes", &self.sim_nodes)
            .field("sim_fleet", &self.sim_fleet)
            .field("process_nodes", &self.process_nodes)
            .finish_non_exhaustive()
    }
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            cloud: CloudChoice::Local(LocalCloudConfig::default()),
            store: StoreChoice::Ephemeral,
            http: None,
            scheduler: Some(None),
            controllers: Some(ControllerManagerConfig::default()),
            sim_nodes: 0,
            sim_config: AgentConfig {
                resources: NodeResources::fixed("32", "256Gi", 110),
                host_conditions: false,
                ..AgentConfig::default()
            },
            sim_fleet: None,
            process_nodes: 0,
            manifests: None,
            compaction: Some(Duration::from_secs(300)),
            ready_timeout: Some(Duration::from_secs(60)),
            disabled_admission: Vec::new(),
            root_ca: None,
            pod_api_endpoint: None,
        }
    }
}

impl ClusterBuilder {
    /// Keeps the state durably under `dir` (the store in `dir/store`, local nodes in
    /// `dir/nodes`); a cluster started again on the same directory finds it.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store = StoreChoice::Dir(dir.into());
        self
    }

    /// Keeps the state durably in a temporary directory, removed when the cluster is
    /// dropped.
    pub fn temp_dir(mut self) -> Self {
        self.store = StoreChoice::Temp;
        self
    }

    /// Uses `store` (any [`Store`], e.g. an `EtcdStore`); local nodes then keep their
    /// state in a temporary directory.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = StoreChoice::Given(store);
        self
    }

    /// Also serves the API over plain HTTP, without authentication, on `addr` (port 0:
    /// any free port; see [`Cluster::http_addr`]).
    pub fn http(mut self, addr: SocketAddr) -> Self {
        self.http = Some(addr);
        self
    }

    /// Runs the scheduler with the profiles of `config` instead of the default profile.
    pub fn scheduler_config(mut self, config: SchedulerConfig) -> Self {
        self.scheduler = Some(Some(config));
        self
    }

    /// Runs no scheduler (pods stay pending unless something else binds them).
    pub fn without_scheduler(mut self) -> Self {
        self.scheduler = None;
        self
    }

    /// Runs the controller manager as `config` says (which controllers, leader election).
    pub fn controllers(mut self, config: ControllerManagerConfig) -> Self {
        self.controllers = Some(config);
        self
    }

    /// Runs no controller manager.
    pub fn without_controllers(mut self) -> Self {
        self.controllers = None;
        self
    }

    /// Drives the cloud controllers with a [`LocalCloud`] configured so (the default, with
    /// [`LocalCloudConfig::default`]).
    pub fn local_cloud(mut self, config: LocalCloudConfig) -> Self {
        self.cloud = CloudChoice::Local(config);
        self
    }

    /// Drives the cloud controllers with `provider` instead of a [`LocalCloud`].
    pub fn cloud_provider(mut self, provider: Arc<dyn CloudProvider>) -> Self {
        self.cloud = CloudChoice::Given(provider);
        self
    }

    /// Runs no cloud controllers (and nodes register without the cloud's taint).
    pub fn without_cloud_provider(mut self) -> Self {
        self.cloud = CloudChoice::Off;
        self
    }

    /// Adds `count` simulated nodes, `sim-0` to `sim-{count-1}`, each with its own agent
    /// on one shared [`SimRuntime`] (32 CPUs, 256 GiB, 110 pods each by default).
    pub fn sim_nodes(mut self, count: usize) -> Self {
        self.sim_nodes = count;
        self
    }

    /// The settings of the simulated nodes' agents (heartbeat periods, capacity, labels,
    /// taints). Host conditions are always off for simulated nodes.
    pub fn sim_node_config(mut self, config: AgentConfig) -> Self {
        self.sim_config = config;
        self
    }

    /// Adds a [`SimFleet`] of `count` simulated nodes named `<prefix>0`, `<prefix>1`, ...:
    /// one pod watch and one heartbeat loop for all of them, for thousands of nodes.
    /// Fleet nodes cannot be stopped one by one, and `build` does not wait for them.
    pub fn sim_fleet(mut self, count: usize, prefix: impl Into<String>) -> Self {
        self.sim_fleet = (count > 0).then(|| (count, prefix.into()));
        self
    }

    /// Adds `count` local nodes, `node-1` to `node-{count}`, running pods as host
    /// processes ([`ProcessRuntime`]), each serving its kubelet-like endpoint on a free
    /// port.
    pub fn process_nodes(mut self, count: u8) -> Self {
        self.process_nodes = count;
        self
    }

    /// A directory of static pod manifests for `node-1`.
    pub fn manifests(mut self, dir: impl Into<PathBuf>) -> Self {
        self.manifests = Some(dir.into());
        self
    }

    /// How often the store is compacted (keeping one interval of history; default
    /// 5 min); `None` never compacts.
    pub fn compaction(mut self, interval: Option<Duration>) -> Self {
        self.compaction = interval;
        self
    }

    /// How long `build` waits for the nodes to be Ready (default 60 s of tokio time);
    /// `None`: `build` returns without waiting for them.
    pub fn ready_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Turns off admission plugins the API server runs by default (kube-apiserver's
    /// `--disable-admission-plugins`), by name: `["ServiceAccount"]` lets pods be created
    /// without service accounts and without token volumes. See [`ADMISSION_PLUGINS`];
    /// `build` fails on other names.
    pub fn disable_admission_plugins<S: AsRef<str>>(mut self, names: &[S]) -> Self {
        self.disabled_admission
            .extend(names.iter().map(|n| n.as_ref().to_owned()));
        self
    }

    /// The cluster's CA (PEM), published as `ca.crt` of the `kube-root-ca.crt` ConfigMap in
    /// every namespace, for pods to check the API server with (kube-controller-manager's
    /// `--root-ca-file`). Without it, `ca.crt` is empty. `keelson up` passes the CA of its
    /// HTTPS server.
    pub fn root_ca(mut self, pem: impl Into<String>) -> Self {
        self.root_ca = Some(pem.into());
        self
    }

    /// Where the pods of local nodes reach the API server over HTTPS: their containers
    /// get it as `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`, which in-cluster
    /// clients read with the token and CA of their token volume (see
    /// [`AgentConfig::api_server`]). `keelson up` passes the address it serves HTTPS on.
    pub fn pod_api_endpoint(mut self, addr: SocketAddr) -> Self {
        self.pod_api_endpoint = Some(addr);
        self
    }

    /// Starts the cluster.
    ///
    /// # Errors
    /// When the store cannot be opened, a directory cannot be made, the scheduler's
    /// configuration is invalid, an admission plugin to disable is unknown, the HTTP
    /// address cannot be bound, or the nodes do not become Ready within the ready timeout.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn build(mut self) -> Result<Cluster, ClusterError> {
        if let Some(unknown) = self
            .disabled_admission
            .iter()
            .find(|n| !ADMISSION_PLUGINS.contains(&n.as_str()))
        {
            return Err(ClusterError::UnknownAdmissionPlugin(unknown.clone()));
        }
        let mut temp = None;
        let mut temp_dir = || -> Result<PathBuf, ClusterError> {
            if temp.is_none() {
                temp = Some(tempfile::tempdir().map_err(|source| ClusterError::Dir {
                    dir: std::env::temp_dir(),
                    source,
                })?);
            }
            Ok(temp
                .as_ref()
                .map(|t| t.path().to_path_buf())
                .unwrap_or_default())
        };
        let durable = |dir: PathBuf| -> Result<_, ClusterError> {
            let store = open_store(&dir)?;
            let report = store.recovery_report().cloned();
            Ok((Arc::new(store) as Arc<dyn Store>, Some(dir), report))
        };
        let (store, state_dir, recovery) = match self.store {
            StoreChoice::Ephemeral => (
                Arc::new(MemStore::ephemeral()) as Arc<dyn Store>,
                None,
                None,
            ),
            StoreChoice::Given(s) => (s, None, None),
            StoreChoice::Dir(dir) => durable(dir)?,
            StoreChoice::Temp => durable(temp_dir()?)?,
        };
        let mut registry = Registry::new(store);
        // With a data directory, service account tokens outlive the process: their
        // signing key is kept there.
        if let Some(dir) = &state_dir {
            let pki = dir.join("pki");
            std::fs::create_dir_all(&pki).map_err(|source| ClusterError::Dir {
                dir: pki.clone(),
                source,
            })?;
            let keys = keelson_apiserver::satoken::ServiceAccountTokens::load_or_create(
                &pki.join("service-account.key"),
            )
            .map_err(ClusterError::ServiceAccountKey)?;
            registry = registry.with_service_account_tokens(Arc::new(keys));
        }
        let accounts_made = self
            .controllers
            .as_ref()
            .is_some_and(|c| c.enabled.iter().any(|n| n == "serviceaccount"));
        let service_account_admission = accounts_made
            && !self
                .disabled_admission
                .iter()
                .any(|n| n == keelson_apiserver::admission::SERVICE_ACCOUNT_PLUGIN);
        if service_account_admission {
            let plugin = ServiceAccountAdmission::new(&registry);
            registry = registry.with_admission(AdmissionChain::default().plugin(plugin));
        }
        if let Some(config) = self.controllers.as_mut() {
            if let Some(ca) = self.root_ca.take() {
                config.root_ca = ca;
            }
            // The legacy tokens the controllers put into Secrets are signed with the API
            // server's key, which checks them.
            config.token_signer.get_or_insert_with(|| {
                Arc::new(ApiServerKey(registry.service_account_tokens().clone()))
            });
        }
        let compactor = self.compaction.map(|i| registry.start_compactor(i));
        let server = ApiServer::new(registry, resources::builtin());
        create_namespaces(&server).await?;
        let client = server.client();
        let (stop, _) = watch::channel(false);
        let mut cluster = Cluster {
            server: server.clone(),
            client: client.clone(),
            http_addr: None,
            stop,
            tasks: Vec::new(),
            compactor,
            nodes: Mutex::new(Vec::new()),
            runtimes: Vec::new(),
            scheduler_names: Vec::new(),
            sim_runtime: Arc::new(SimRuntime::new(Default::default())),
            recovery,
            local_cloud: None,
            cloud_init: false,
            _temp: None,
        };
        let provider: Option<Arc<dyn CloudProvider>> = match self.cloud {
            CloudChoice::Local(config) => {
                let cloud = Arc::new(LocalCloud::new(client.clone(), config));
                cluster.local_cloud = Some(cloud.clone());
                Some(cloud)
            }
            CloudChoice::Given(p) => Some(p),
            CloudChoice::Off => None,
        };
        if let Some(config) = self.scheduler {
            let mut scheduler = Scheduler::builder(client.clone());
            if let Some(config) = config {
                scheduler = scheduler.config(config);
            }
            let scheduler = scheduler.build().map_err(ClusterError::Scheduler)?;
            cluster.scheduler_names = scheduler.scheduler_names();
            let stop = cluster.stop_signal();
            cluster.tasks.push(tokio::spawn(async move {
                if let Err(e) = scheduler.run(stop).await {
                    tracing::error!(error = %e, "the scheduler stopped");
                }
            }));
        }
        if let Some(config) = self.controllers {
            let mut manager = ControllerManager::with_config(client.clone(), config.clone());
            if let Some(p) = provider {
                // Nodes wait for the cloud only when something initialises them.
                cluster.cloud_init =
                    p.instances().is_some() && config.enabled.iter().any(|c| c == "cloud-node");
                manager = manager.cloud_provider(p);
            }
            let stop = cluster.stop_signal();
            cluster.tasks.push(tokio::spawn(manager.run(stop)));
        }
        let mut waiting = Vec::new();
        let mut sim_config = self.sim_config;
        sim_config.host_conditions = false;
        for i in 0..self.sim_nodes {
            let name = format!("sim-{i}");
            let runtime = cluster.sim_runtime.clone();
            let network: Arc<dyn NetworkPlugin> = Arc::new(SimNetwork::new(i));
            let config = sim_config.clone();
            let c = client.clone();
            let n = name.clone();
            let cloud_taint = cluster.register_instance(&name, "simulated").await?;
            let make: MakeAgent = Box::new(move || {
                let mut config = config.clone();
                config.taints.extend(cloud_taint.take());
                Agent::builder(c.clone(), n.clone())
                    .runtime(runtime.clone())
                    .network(network.clone())
                    .config(config)
                    .build()
            });
            cluster.add_node(name.clone(), make)?;
            waiting.push(name);
        }
        if self.process_nodes > 0 {
            let dir = match &state_dir {
                Some(d) => d.clone(),
                None => temp_dir()?,
            };
            for i in 1..=self.process_nodes {
                let name = format!("node-{i}");
                let state = dir.join("nodes").join(&name);
                let node_err = |source| ClusterError::Node {
                    node: name.clone(),
                    source,
                };
                let runtime = Arc::new(
                    ProcessRuntime::open(state.join("runtime")).map_err(|e| node_err(e.into()))?,
                );
                let network: Arc<dyn NetworkPlugin> =
                    Arc::new(LoopbackNetwork::open(state.join("network"), i).map_err(node_err)?);
                cluster.runtimes.push(runtime.clone());
                let manifests = if i == 1 { self.manifests.clone() } else { None };
                let c = client.clone();
                let n = name.clone();
                let cloud_taint = cluster.register_instance(&name, "process").await?;
                let config = AgentConfig {
                    api_server: self.pod_api_endpoint,
                    ..AgentConfig::default()
                };
                let make: MakeAgent = Box::new(move || {
                    let mut agent = Agent::builder(c.clone(), n.clone())
                        .runtime(runtime.clone())
                        .network(network.clone())
                        .state_dir(&state)
                        .serve(0);
                    let mut config = config.clone();
                    config.taints.extend(cloud_taint.take());
                    agent = agent.config(config);
                    if let Some(dir) = &manifests {
                        agent = agent.manifests(dir);
                    }
                    agent.build()
                });
                cluster.add_node(name.clone(), make)?;
                waiting.push(name);
            }
        }
        if let Some((count, prefix)) = self.sim_fleet {
            if let Some(cloud) = &cluster.local_cloud {
                for i in 0..count {
                    cloud.add_instance(&format!("{prefix}{i}"), "simulated");
                }
            }
            let fleet = SimFleet::builder(client.clone())
                .nodes(count)
                .prefix(prefix)
                .build();
            let stop = cluster.stop_signal();
            cluster.tasks.push(tokio::spawn(async move {
                if let Err(e) = fleet.run(stop).await {
                    tracing::error!(error = %e, "the simulated fleet stopped");
                }
            }));
        }
        if let Some(addr) = self.http {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ClusterError::Listen { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| ClusterError::Listen { addr, source })?;
            cluster.http_addr = Some(bound);
            let router = keelson_apiserver::router(server.clone());
            let stop = cluster.stop_signal();
            cluster.tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::error!(error = %e, "the HTTP server stopped");
                }
            }));
        }
        cluster._temp = temp;
        if let Some(timeout) = self.ready_timeout {
            cluster.wait_ready(&waiting, timeout).await?;
        }
        Ok(cluster)
    }
}

/// The API server's service account key, signing the legacy tokens of the
/// `serviceaccount-token` controller.
#[derive(Debug)]
struct ApiServerKey(Arc<keelson_apiserver::satoken::ServiceAccountTokens>);

impl TokenSigner for ApiServerKey {
    fn sign(&self, c: &LegacyTokenClaims) -> Result<String, keelson_core::Error> {
        self.0
            .issue_legacy(&keelson_apiserver::satoken::LegacyClaims {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                uid: c.uid.clone(),
                secret: c.secret.clone(),
            })
    }
}

fn open_store(dir: &Path) -> Result<MemStore, ClusterError> {
    let dir = dir.join("store");
    MemStore::open(&dir).map_err(|source| ClusterError::Store { dir, source })
}

async fn create_namespaces(server: &Arc<ApiServer>) -> Result<(), ClusterError> {
    let namespaces = server
        .served()
        .iter()
        .find(|s| s.rt.plural == "namespaces")
        .cloned();
    let Some(namespaces) = namespaces else {
        return Ok(());
    };
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
            Err(source) => {
                return Err(ClusterError::Api {
                    what: format!("create namespace {ns}"),
                    source: Box::new(source),
                })
            }
        }
    }
    Ok(())
}

type MakeAgent = Box<dyn Fn() -> Result<Agent, keelson_node::Error> + Send + Sync>;

/// A node whose agent the cluster can stop and start.
struct NodeSlot {
    name: String,
    make: MakeAgent,
    running: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

/// A running cluster (see the [module docs](self)). Dropping it stops every component
/// (and the processes of local nodes) without waiting; [`Cluster::shutdown`] waits.
pub struct Cluster {
    server: Arc<ApiServer>,
    client: Client,
    http_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    compactor: Option<JoinHandle<()>>,
    nodes: Mutex<Vec<NodeSlot>>,
    runtimes: Vec<Arc<ProcessRuntime>>,
    scheduler_names: Vec<String>,
    sim_runtime: Arc<SimRuntime>,
    recovery: Option<RecoveryReport>,
    local_cloud: Option<Arc<LocalCloud>>,
    /// Whether nodes register with the cloud's taint, for the cloud to initialise.
    cloud_init: bool,
    _temp: Option<tempfile::TempDir>,
}

/// The taint a node registers with the first time, until the cloud has initialised it.
/// Taken by the first agent made for the node: a restarted agent does not put it back,
/// as kubelet applies its registration taints only when it creates its Node.
struct CloudTaint(Mutex<Option<Taint>>);

impl CloudTaint {
    fn take(&self) -> Option<Taint> {
        lock(&self.0).take()
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("http_addr", &self.http_addr)
            .field("nodes", &self.node_names())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    /// Starts building a cluster: by default an in-memory store, the API server, the
    /// scheduler and the controller manager, and no nodes.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// A client on the API server, in-process (no sockets), as the server's own
    /// (all-powerful) identity.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The API server (for clients as other users, its registry, or an HTTP front of
    /// your own).
    pub fn server(&self) -> &Arc<ApiServer> {
        &self.server
    }

    /// Where the API is served over HTTP, with [`ClusterBuilder::http`].
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The scheduler's profile names (empty without a scheduler).
    pub fn scheduler_names(&self) -> &[String] {
        &self.scheduler_names
    }

    /// What recovery found when a durable `MemStore` was opened.
    pub fn recovery_report(&self) -> Option<&RecoveryReport> {
        self.recovery.as_ref()
    }

    /// The local cloud the cloud controllers drive (its load balancers, routes and
    /// instances), unless another provider or none was chosen.
    pub fn local_cloud(&self) -> Option<&Arc<LocalCloud>> {
        self.local_cloud.as_ref()
    }

    /// Registers a node's machine with the local cloud, and says which taint its agent
    /// registers with: the cloud's, when the cloud initialises nodes and the Node does not
    /// exist yet.
    async fn register_instance(
        &self,
        name: &str,
        instance_type: &str,
    ) -> Result<CloudTaint, ClusterError> {
        if let Some(cloud) = &self.local_cloud {
            cloud.add_instance(name, instance_type);
        }
        let fresh = self.cloud_init
            && Api::<Node>::all(self.client.clone())
                .get_opt(name)
                .await?
                .is_none();
        Ok(CloudTaint(Mutex::new(fresh.then(|| Taint {
            key: TAINT_UNINITIALIZED.into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }))))
    }

    /// The runtime every `sim-N` node shares (to inspect simulated containers).
    pub fn sim_runtime(&self) -> &Arc<SimRuntime> {
        &self.sim_runtime
    }

    /// The nodes that can be stopped and started (simulated `sim-N` and local
    /// `node-N`; not the fleet's).
    pub fn node_names(&self) -> Vec<String> {
        lock(&self.nodes).iter().map(|n| n.name.clone()).collect()
    }

    /// A future that completes when the cluster is told to stop.
    pub fn stop_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    fn add_node(&mut self, name: String, make: MakeAgent) -> Result<(), ClusterError> {
        let mut slot = NodeSlot {
            name,
            make,
            running: None,
        };
        start_slot(&mut slot, &self.stop)?;
        lock(&self.nodes).push(slot);
        Ok(())
    }

    /// Stops a node's agent, as if its machine had stopped: no more heartbeats or
    /// status, its pods stay in the API as they were (and simulated containers stay in
    /// the runtime, to be adopted by [`Cluster::start_node`]). Stopping a stopped node
    /// does nothing.
    ///
    /// # Errors
    /// [`ClusterError::UnknownNode`] for a node that is not one of [`Cluster::node_names`].
    pub async fn stop_node(&self, name: &str) -> Result<(), ClusterError> {
        let running = {
            let mut nodes = lock(&self.nodes);
            let slot = nodes
                .iter_mut()
                .find(|n| n.name == name)
                .ok_or_else(|| ClusterError::UnknownNode(name.to_owned()))?;
            slot.running.take()
        };
        if let Some((stop, task)) = running {
            let _ = stop.send(true);
            let _ = task.await;
        }
        if let Some(cloud) = &self.local_cloud {
            cloud.set_running(name, false);
        }
        Ok(())
    }

    /// Starts a stopped node's agent again: it registers (status Ready, Lease renewed)
    /// and adopts its pods. Starting a running node does nothing.
    ///
    /// # Errors
    /// [`ClusterError::UnknownNode`]; [`ClusterError::Node`] when its agent cannot be
    /// configured.
    pub fn start_node(&self, name: &str) -> Result<(), ClusterError> {
        let mut nodes = lock(&self.nodes);
        let slot = nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| ClusterError::UnknownNode(name.to_owned()))?;
        start_slot(slot, &self.stop)?;
        if let Some(cloud) = &self.local_cloud {
            cloud.set_running(name, true);
        }
        Ok(())
    }

    async fn wait_ready(&self, names: &[String], timeout: Duration) -> Result<(), ClusterError> {
        if names.is_empty() {
            return Ok(());
        }
        let api: Api<Node> = Api::all(self.client.clone());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let list = api.list(&ListParams::default()).await?;
            let ready: HashMap<String, bool> = list
                .items
                .iter()
                .map(|n| {
                    let initialised = !self.cloud_init || !has_taint(n, TAINT_UNINITIALIZED);
                    (
                        n.metadata.name.clone().unwrap_or_default(),
                        is_ready(n) && initialised,
                    )
                })
                .collect();
            let missing: Vec<&str> = names
                .iter()
                .filter(|n| !ready.get(*n).copied().unwrap_or(false))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::NodesNotReady(timeout, missing.join(", ")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops every component and waits for them: the node agents, then the controllers,
    /// the scheduler and the HTTP server; then the processes of local nodes.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let running: Vec<_> = lock(&self.nodes)
            .iter_mut()
            .filter_map(|n| n.running.take())
            .collect();
        for (stop, task) in running {
            let _ = stop.send(true);
            let _ = task.await;
        }
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        if let Some(cloud) = &self.local_cloud {
            cloud.shutdown();
        }
        if let Some(c) = self.compactor.take() {
            c.abort();
        }
        for runtime in std::mem::take(&mut self.runtimes) {
            runtime.kill_all();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for slot in lock(&self.nodes).iter_mut() {
            if let Some((stop, _)) = slot.running.take() {
                let _ = stop.send(true);
            }
        }
        if let Some(c) = self.compactor.take() {
            c.abort();
        }
        if let Some(cloud) = &self.local_cloud {
            cloud.shutdown();
        }
        for runtime in &self.runtimes {
            runtime.kill_all();
        }
    }
}

fn start_slot(slot: &mut NodeSlot, cluster_stop: &watch::Sender<bool>) -> Result<(), ClusterError> {
    if slot.running.as_ref().is_some_and(|(_, t)| !t.is_finished()) {
        return Ok(());
    }
    let agent = (slot.make)().map_err(|source| ClusterError::Node {
        node: slot.name.clone(),
        source,
    })?;
    let (stop, mut stopped) = watch::channel(false);
    let mut all = cluster_stop.subscribe();
    let name = slot.name.clone();
    let task = tokio::spawn(async move {
        let signal = async move {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => {}
                _ = all.wait_for(|s| *s) => {}
            }
        };
        if let Err(e) = agent.run(signal).await {
            tracing::error!(node = %name, error = %e, "the node agent stopped");
        }
    });
    slot.running = Some((stop, task));
    Ok(())
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A simulated node's pod network: node `i` owns `10.<128 + i / 256>.<i % 256>.0/24`
/// (apart from the fleet's `10.0.0.0/9`), in memory.
struct SimNetwork {
    index: usize,
    used: Mutex<(HashMap<String, u8>, u8)>,
}

impl SimNetwork {
    fn new(index: usize) -> SimNetwork {
        SimNetwork {
            index,
            used: Mutex::new((HashMap::new(), 1)),
        }
    }

    fn octets(&self) -> (u8, u8) {
        (
            128u8.wrapping_add(((self.index >> 8) & 0x7f) as u8),
            (self.index & 0xff) as u8,
        )
    }
}

#[async_trait::async_trait]
impl NetworkPlugin for SimNetwork {
    async fn add(&self, pod: &PodNetworkRef) -> Result<PodNetwork, keelson_node::Error> {
        let (a, b) = self.octets();
        let mut g = lock(&self.used);
        let host = match g.0.get(&pod.uid) {
            Some(h) => *h,
            None => {
                let taken: std::collections::HashSet<u8> = g.0.values().copied().collect();
                let mut h = g.1;
                let mut found = None;
                for _ in 0..254 {
                    h = if h >= 254 { 2 } else { h + 1 };
                    if !taken.contains(&h) {
                        found = Some(h);
                        break;
                    }
                }
                let h = found.ok_or_else(|| {
                    keelson_node::Error::Network(format!("no free address left in 10.{a}.{b}.0/24"))
                })?;
                g.1 = h;
                g.0.insert(pod.uid.clone(), h);
                h
            }
        };
        Ok(PodNetwork {
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, a, b, host))],
        })
    }

    async fn remove(&self, pod: &PodNetworkRef) -> Result<(), keelson_node::Error> {
        lock(&self.used).0.remove(&pod.uid);
        Ok(())
    }

    async fn status(&self) -> Result<NetworkStatus, keelson_node::Error> {
        let (a, b) = self.octets();
        Ok(NetworkStatus {
            ready: true,
            pod_cidr: Some(format!("10.{a}.{b}.0/24")),
            message: None,
        })
    }
}
