//! The controller manager: every built-in controller in one process, optionally under
//! leader election.

use std::future::Future;
use std::sync::Arc;

use keelson_core::client::Client;
use tokio::sync::watch;

use crate::builtin::cronjob::CronJobController;
use crate::builtin::daemonset::DaemonSetController;
use crate::builtin::deployment::DeploymentController;
use crate::builtin::endpoints::EndpointsController;
use crate::builtin::endpointslice::EndpointSliceController;
use crate::builtin::gc::{self, GarbageCollector};
use crate::builtin::job::JobController;
use crate::builtin::namespace::{self, NamespaceController};
use crate::builtin::nodelifecycle::{NodeLifecycleConfig, NodeLifecycleController};
use crate::builtin::podgc::{PodGarbageCollector, PodGcConfig};
use crate::builtin::replicaset::ReplicaSetController;
use crate::builtin::rootcacert::RootCaCertPublisher;
use crate::builtin::serviceaccount::ServiceAccountController;
use crate::builtin::serviceaccount_token::{ServiceAccountTokenController, TokenSigner};
use crate::builtin::statefulset::StatefulSetController;
use crate::cloud::{CloudConfig, CloudProvider};
use crate::informer::InformerFactory;
use crate::leader::{LeaderElectionConfig, LeaderElector};
use crate::metrics::Metrics;

/// The controllers [`ControllerManager`] runs, by kube-controller-manager's (and, for the
/// last four, cloud-controller-manager's) short names.
pub const CONTROLLERS: [&str; 19] = [
    "deployment",
    "replicaset",
    "statefulset",
    "daemonset",
    "job",
    "cronjob",
    "endpoint",
    "endpointslice",
    "garbagecollector",
    "namespace",
    "serviceaccount",
    "nodelifecycle",
    "podgc",
    "root-ca-cert-publisher",
    "serviceaccount-token",
    "cloud-node",
    "cloud-node-lifecycle",
    "route",
    "service",
];

/// Kubernetes' full controller names (1.28 on), which `--controllers` accepts too, with
/// the short names of [`CONTROLLERS`] they stand for.
pub const CONTROLLER_ALIASES: [(&str, &str); 19] = [
    ("deployment-controller", "deployment"),
    ("replicaset-controller", "replicaset"),
    ("statefulset-controller", "statefulset"),
    ("daemonset-controller", "daemonset"),
    ("job-controller", "job"),
    ("cronjob-controller", "cronjob"),
    ("endpoints-controller", "endpoint"),
    ("endpointslice-controller", "endpointslice"),
    ("garbage-collector-controller", "garbagecollector"),
    ("namespace-controller", "namespace"),
    ("serviceaccount-controller", "serviceaccount"),
    ("node-lifecycle-controller", "nodelifecycle"),
    ("pod-garbage-collector-controller", "podgc"),
    (
        "root-ca-certificate-publisher-controller",
        "root-ca-cert-publisher",
    ),
    ("serviceaccount-token-controller", "serviceaccount-token"),
    ("cloud-node-controller", "cloud-node"),
    ("cloud-node-lifecycle-controller", "cloud-node-lifecycle"),
    ("node-route-controller", "route"),
    ("service-lb-controller", "service"),
];

/// The short name `name` stands for (itself, or the one its full name maps to).
fn short_name(name: &str) -> &str {
    CONTROLLER_ALIASES
        .iter()
        .find(|(full, _)| *full == name)
        .map_or(name, |(_, short)| short)
}

/// What a [`ControllerManager`] runs and how.
#[derive(Clone, Debug)]
pub struct ControllerManagerConfig {
    /// The controllers to run (names from [`CONTROLLERS`]).
    pub enabled: Vec<String>,
    /// Run only while leading this election (`None`: always run).
    pub leader_election: Option<LeaderElectionConfig>,
    /// Concurrent reconciles of the Deployment controller (5, as Kubernetes).
    pub deployment_workers: usize,
    /// Concurrent reconciles of the ReplicaSet controller (5).
    pub replicaset_workers: usize,
    /// Concurrent reconciles of the Namespace controller (10).
    pub namespace_workers: usize,
    /// Concurrent reconciles of the StatefulSet controller (5).
    pub statefulset_workers: usize,
    /// Concurrent reconciles of the DaemonSet controller (2).
    pub daemonset_workers: usize,
    /// Concurrent reconciles of the Job controller (5).
    pub job_workers: usize,
    /// Concurrent reconciles of the CronJob controller (5).
    pub cronjob_workers: usize,
    /// The node lifecycle controller's grace periods.
    pub node_lifecycle: NodeLifecycleConfig,
    /// The pod garbage collector's threshold and periods.
    pub pod_gc: PodGcConfig,
    /// The cloud controllers' settings (they run only with a
    /// [`ControllerManager::cloud_provider`]).
    pub cloud: CloudConfig,
    /// The cluster's CA (PEM), published in every namespace by `root-ca-cert-publisher`
    /// and put into token Secrets by `serviceaccount-token` (kube-controller-manager's
    /// `--root-ca-file`); empty when the cluster has none.
    pub root_ca: String,
    /// What signs the tokens `serviceaccount-token` puts into Secrets: the API server's
    /// service account key (kube-controller-manager's
    /// `--service-account-private-key-file`). Without it, that controller does not run.
    pub token_signer: Option<Arc<dyn TokenSigner>>,
}

impl Default for ControllerManagerConfig {
    fn default() -> Self {
        ControllerManagerConfig {
            enabled: CONTROLLERS.iter().map(|c| (*c).to_owned()).collect(),
            leader_election: None,
            deployment_workers: 5,
            replicaset_workers: 5,
            namespace_workers: 10,
            statefulset_workers: 5,
            daemonset_workers: 2,
            job_workers: 5,
            cronjob_workers: 5,
            node_lifecycle: NodeLifecycleConfig::default(),
            pod_gc: PodGcConfig::default(),
            cloud: CloudConfig::default(),
            root_ca: String::new(),
            token_signer: None,
        }
    }
}

/// A `--controllers` value named a controller that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("unknown controller {0:?}; known: {known}", known = CONTROLLERS.join(", "))]
pub struct UnknownController(pub String);

impl ControllerManagerConfig {
    /// Chooses controllers as kube-controller-manager's `--controllers` flag does: `*`
    /// for all, `name` to enable one, `-name` to disable one (`["*", "-namespace"]`).
    /// Names are the short ones of [`CONTROLLERS`] or Kubernetes' full ones
    /// ([`CONTROLLER_ALIASES`]: `-service-lb-controller` is `-service`).
    ///
    /// # Errors
    /// [`UnknownController`] for a name that is neither.
    pub fn controllers(mut self, spec: &[&str]) -> Result<Self, UnknownController> {
        let mut on = Vec::new();
        let mut off = Vec::new();
        let mut all = false;
        for s in spec {
            if *s == "*" {
                all = true;
                continue;
            }
            let (list, name) = match s.strip_prefix('-') {
                Some(n) => (&mut off, n),
                None => (&mut on, *s),
            };
            let short = short_name(name);
            if !CONTROLLERS.contains(&short) {
                return Err(UnknownController(name.to_owned()));
            }
            list.push(short);
        }
        self.enabled = CONTROLLERS
            .iter()
            .filter(|n| (all || on.contains(n)) && !off.contains(n))
            .map(|n| (*n).to_owned())
            .collect();
        Ok(self)
    }

    fn on(&self, name: &str) -> bool {
        self.enabled.iter().any(|e| e == name)
    }
}

/// Runs the built-in controllers on one set of shared informers.
///
/// ```no_run
/// # async fn demo(client: keelson_core::client::Client) {
/// use keelson_controllers::ControllerManager;
/// ControllerManager::new(client).run(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// # }
/// ```
#[derive(Debug)]
pub struct ControllerManager {
    client: Client,
    config: ControllerManagerConfig,
    metrics: Metrics,
    cloud: Option<Cloud>,
}

/// The manager's cloud provider.
#[derive(Clone)]
struct Cloud(Arc<dyn CloudProvider>);

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

fn signal(rx: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

impl ControllerManager {
    /// Every built-in controller, no leader election.
    pub fn new(client: Client) -> ControllerManager {
        ControllerManager::with_config(client, ControllerManagerConfig::default())
    }

    /// The manager `config` describes.
    pub fn with_config(client: Client, config: ControllerManagerConfig) -> ControllerManager {
        ControllerManager {
            client,
            config,
            metrics: Metrics::new(),
            cloud: None,
        }
    }

    /// Runs the cloud controllers too (those of
    /// [`CLOUD_CONTROLLERS`](crate::cloud::CLOUD_CONTROLLERS) the configuration enables),
    /// on `provider`.
    pub fn cloud_provider(mut self, provider: Arc<dyn CloudProvider>) -> ControllerManager {
        self.cloud = Some(Cloud(provider));
        self
    }

    /// The controllers' metrics (render them for a `/metrics` endpoint).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Runs until `shutdown` completes; with leader election, the controllers run only
    /// while this process leads (writing through a fenced client), stop when it loses,
    /// and start again if it leads again.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Some(le) = self.config.leader_election.clone() else {
            self.run_controllers(self.client.clone(), shutdown).await;
            return;
        };
        let elector = Arc::new(LeaderElector::new(self.client.clone(), le));
        let (stop_tx, stop_rx) = watch::channel(false);
        let election = {
            let elector = elector.clone();
            let stop = signal(&stop_rx);
            tokio::spawn(async move { elector.run(stop).await })
        };
        let mut state = elector.subscribe();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                r = state.wait_for(|s| s.is_leader()) => if r.is_err() { break },
            }
            tracing::info!("leading: starting controllers");
            let fenced = elector.fenced_client(self.client.clone());
            let (term_tx, term_rx) = watch::channel(false);
            let term = {
                let this = ControllerManager {
                    client: self.client.clone(),
                    config: self.config.clone(),
                    metrics: self.metrics.clone(),
                    cloud: self.cloud.clone(),
                };
                let stop = signal(&term_rx);
                tokio::spawn(async move { this.run_controllers(fenced, stop).await })
            };
            let mut lost = elector.subscribe();
            let done = tokio::select! {
                _ = &mut shutdown => true,
                _ = lost.wait_for(|s| !s.is_leader()) => false,
            };
            let _ = term_tx.send(true);
            let _ = term.await;
            if done {
                break;
            }
            tracing::warn!("lost leadership: controllers stopped");
        }
        let _ = stop_tx.send(true);
        let _ = election.await;
    }

    async fn run_controllers(
        &self,
        client: Client,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let factory = InformerFactory::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let cfg = &self.config;
        if cfg.on("replicaset") {
            let (c, r) = ReplicaSetController::controller(&client, &factory);
            let c = c
                .concurrency(cfg.replicaset_workers)
                .metrics(&self.metrics)
                .graceful_shutdown_on(signal(&stop_rx));
            tasks.push(tokio::spawn(c.run(r)));
        }
        if cfg.on("deployment") {
            let (c, r) = DeploymentController::controller(&client, &factory);
            let c = c
                .concurrency(cfg.deployment_workers)
                .metrics(&self.metrics)
                .graceful_shutdown_on(signal(&stop_rx));
            tasks.push(tokio::spawn(c.run(r)));
        }
        if cfg.on("statefulset") {
            let (c, r) = StatefulSetController::controller(&client, &factory);
            let c = c
                .concurrency(cfg.statefulset_workers)
                .metrics(&self.metrics)
                .graceful_shutdown_on(signal(&stop_rx));
            tasks.push(tokio::spawn(c.run(r)));
        }
        if cfg.on("daemonset") {
            let (c, r) = DaemonSetController::controller(&client, &factory);
            let c = c
                .concurrency(cfg.daemonset_workers)
                .metrics(&self.metrics)
                .graceful_shutdown_on(signal(&stop_rx));
            tasks.push(tokio::spawn(c.run(r)));
        }
        if cfg.on("job") {
            let (c, r) = JobController::controller(&client, &factory);
            let c = c
                .concurrency(cfg.job_workers)
                .metrics(&self.metrics)
                .graceful_shutdown_on(signal(&stop_rx));
            tasks.push(tokio::spawn(c.run(r)));
        }
        if cfg.on("cronjob") {
            let (c, r) = CronJobController::controller(&client, &factory);
            let c = c
                .concurrency(cfg.cronjob_workers)
                .metrics(&self.metrics)
                .graceful_shutdown_on(signal(&stop_rx));
            tasks.push(tokio::spawn(c.run(r)));
        }
        if cfg.on("endpoint") {
            let (c, r) = EndpointsController::controller(&client, &factory);
            let c = c
                .concurrency(5)
                .metrics(&self.metrics)
                .graceful_shutdown_on(signal(&stop_rx));
            tasks.push(tokio::spawn(c.run(r)));
        }
        if cfg.on("endpointslice") {
            let (c, r) = EndpointSliceController::controller(&client, &factory);
            let c = c
                .concurrency(5)
                .metrics(&self.metrics)
                .graceful_shutdown_on(signal(&stop_rx));
            tasks.push(tokio::spawn(c.run(r)));
        }
        if cfg.on("serviceaccount") {
            let (c, r) = ServiceAccountController::controller(&client, &factory);
            let c = c
                .metrics(&self.metrics)
                .graceful_shutdown_on(signal(&stop_rx));
            tasks.push(tokio::spawn(c.run(r)));
        }
        if cfg.on("namespace") {
            let (c, r) =
                NamespaceController::controller(&client, &factory, namespace::default_kinds())
                    .await;
            let c = c
                .concurrency(cfg.namespace_workers)
                .metrics(&self.metrics)
                .graceful_shutdown_on(signal(&stop_rx));
            tasks.push(tokio::spawn(c.run(r)));
        }
        if cfg.on("garbagecollector") {
            let gc = GarbageCollector::new(&client, &factory, gc::default_kinds()).await;
            tasks.push(tokio::spawn(gc.run(signal(&stop_rx))));
        }
        if cfg.on("nodelifecycle") {
            let (c, r) =
                NodeLifecycleController::controller(&client, &factory, cfg.node_lifecycle.clone());
            let c = c
                .metrics(&self.metrics)
                .graceful_shutdown_on(signal(&stop_rx));
            tasks.push(tokio::spawn(c.run(r)));
        }
        if cfg.on("podgc") {
            let gc = PodGarbageCollector::new(&client, &factory, cfg.pod_gc.clone());
            tasks.push(tokio::spawn(gc.run(signal(&stop_rx))));
        }
        if cfg.on("root-ca-cert-publisher") {
            let (c, r) = RootCaCertPublisher::controller(&client, &factory, &cfg.root_ca);
            let c = c
                .metrics(&self.metrics)
                .graceful_shutdown_on(signal(&stop_rx));
            tasks.push(tokio::spawn(c.run(r)));
        }
        if cfg.on("serviceaccount-token") {
            match &cfg.token_signer {
                Some(signer) => {
                    let (c, r) = ServiceAccountTokenController::controller(
                        &client,
                        &factory,
                        signer.clone(),
                        &cfg.root_ca,
                    );
                    let c = c
                        .metrics(&self.metrics)
                        .graceful_shutdown_on(signal(&stop_rx));
                    tasks.push(tokio::spawn(c.run(r)));
                }
                None => tracing::info!(
                    "serviceaccount-token does not run: no token signer is configured"
                ),
            }
        }
        if let Some(Cloud(cloud)) = &self.cloud {
            tasks.extend(crate::cloud::start(
                &client,
                &factory,
                cloud,
                &cfg.cloud,
                |name| cfg.on(name),
                &self.metrics,
                || signal(&stop_rx),
            ));
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        factory.clear();
    }
}
