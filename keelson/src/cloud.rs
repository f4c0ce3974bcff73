//! [`LocalCloud`]: the cloud provider of the all-in-one cluster.
//!
//! The "cloud" is the host the cluster runs on:
//!
//! - **Instances** are the cluster's nodes. The [`Cluster`](crate::Cluster) registers
//!   each node it runs ([`LocalCloud::add_instance`]: instance type `process` for local
//!   nodes, `simulated` for simulated ones) and says when one is stopped
//!   ([`LocalCloud::set_running`]: the machine is then *shut down*) or removed for good
//!   ([`LocalCloud::remove_instance`]: the machine no longer exists). A node nobody
//!   registered (a Node made by hand, an agent of another process) is taken as a
//!   running machine of type `local`: the host has no inventory to deny it. Every
//!   instance has provider id `keelson://local/<node>`, the configured region and zone,
//!   and the addresses its agent reports (all machines are this host).
//! - **Routes** are an in-memory table. Every pod address is a loopback address of this
//!   host, so nothing needs routing; the table records what a real cloud would program,
//!   for the route controller to keep and for tests to inspect ([`LocalCloud::route_table`]).
//! - **Load balancers** are real: each `type: LoadBalancer` Service gets an address of the
//!   configured loopback pool (by default `127.0.0.2`–`127.0.255.254`; `127.0.0.1` is
//!   the host's own and the node pods use `127.N.x.x` for N ≥ 1), and
//!   `address:port` is served, for every TCP port of the Service, by a
//!   [`UserspaceProxy`] that forwards each connection to the Service's ready endpoints
//!   (round robin). The endpoints come from the Service's EndpointSlices (label
//!   `kubernetes.io/service-name`), the Service port matched to the slice port by name;
//!   when no endpoint is ready, the serving ones that are terminating are used, as
//!   kube-proxy does. Changes to the slices reach the proxy as they happen. The nodes
//!   the service controller passes are recorded, not used: traffic goes straight to the
//!   endpoints, as kube-proxy would send it behind a real load balancer.
//!
//!   The address is the Service's `spec.loadBalancerIP` when it asks for one (it must
//!   be in the pool and not another load balancer's; changing it moves the load
//!   balancer), else the load balancer's current one, else the one the Service has in
//!   `status.loadBalancer` (so it survives a restart), else the first free address of
//!   the pool where every port can be listened on. UDP and SCTP ports are refused
//!   (`CloudError::Invalid`).
//!
//! [`LocalCloud::shutdown`] (the cluster calls it when it stops) closes every load
//! balancer; deleting one closes its listeners and cuts its connections.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use keelson_controllers::cloud::{
    CloudError, CloudProvider, InstanceMetadata, Instances, LoadBalancers, Route, Routes,
};
use keelson_controllers::{watcher, Change, Informer, Reader};
use keelson_core::client::{Api, Client};
use keelson_core::k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Node, Service,
};
use keelson_core::k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_proxy::{Frontend, Protocol, Proxy, UserspaceProxy};
use tokio::task::JoinHandle;

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// How long a load balancer waits for the EndpointSlice cache the first time.
const SLICES_SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// An inclusive range of IPv4 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    first: Ipv4Addr,
    last: Ipv4Addr,
}

/// A range that could not be parsed or is empty.
#[derive(Debug, thiserror::Error)]
#[error("invalid address range {0:?}: expected FIRST-LAST or ADDRESS/PREFIX of IPv4 addresses, first ≤ last")]
pub struct InvalidRange(String);

impl AddressRange {
    /// The addresses from `first` to `last`.
    ///
    /// # Errors
    /// [`InvalidRange`] when `first` is after `last`.
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Result<AddressRange, InvalidRange> {
        if first > last {
            return Err(InvalidRange(format!("{first}-{last}")));
        }
        Ok(AddressRange { first, last })
    }

    /// The first address.
    pub fn first(&self) -> Ipv4Addr {
        self.first
    }

    /// The last address.
    pub fn last(&self) -> Ipv4Addr {
        self.last
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }

    /// The range's addresses, in order.
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.first)..=u32::from(self.last)).map(Ipv4Addr::from)
    }
}

impl Default for AddressRange {
    /// `127.0.0.2`–`127.0.255.254`.
    fn default() -> Self {
        AddressRange {
            first: Ipv4Addr::new(127, 0, 0, 2),
            last: Ipv4Addr::new(127, 0, 255, 254),
        }
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for AddressRange {
    type Err = InvalidRange;

    /// `FIRST-LAST` (`127.0.1.1-127.0.1.254`), or a CIDR (`127.0.1.0/24`: its addresses
    /// but the network and broadcast ones, when it has more than two).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidRange(s.to_owned());
        if let Some((first, last)) = s.split_once('-') {
            let first = first.trim().parse().map_err(|_| bad())?;
            let last = last.trim().parse().map_err(|_| bad())?;
            return AddressRange::new(first, last).map_err(|_| bad());
        }
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.trim().parse().map_err(|_| bad())?;
        let prefix: u32 = prefix
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(bad)?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let network = u32::from(addr) & mask;
        let broadcast = network | !mask;
        let (first, last) = if broadcast - network >= 2 {
            (network + 1, broadcast - 1)
        } else {
            (network, broadcast)
        };
        AddressRange::new(first.into(), last.into())
    }
}

/// What a [`LocalCloud`] offers.
#[derive(Clone, Debug)]
pub struct LocalCloudConfig {
    /// Where load balancer addresses come from (default `127.0.0.2`–`127.0.255.254`).
    pub load_balancer_pool: AddressRange,
    /// The instances' region (`topology.kubernetes.io/region`, default `local`).
    pub region: String,
    /// The instances' zone (`topology.kubernetes.io/zone`, default `local-1`).
    pub zone: String,
}

impl Default for LocalCloudConfig {
    fn default() -> Self {
        LocalCloudConfig {
            load_balancer_pool: AddressRange::default(),
            region: "local".into(),
            zone: "local-1".into(),
        }
    }
}

/// A machine of the local cloud.
#[derive(Clone, Debug)]
struct Instance {
    instance_type: String,
    running: bool,
}

/// One port of a load balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LbPort {
    /// The Service port's name (empty when unnamed).
    name: String,
    frontend: Frontend,
}

/// A load balancer: its Service, address and ports.
#[derive(Clone, Debug)]
struct Balancer {
    namespace: String,
    service: String,
    ip: Ipv4Addr,
    ports: Vec<LbPort>,
    nodes: Vec<String>,
}

/// The EndpointSlice cache and the task that follows it, started with the first load
/// balancer.
struct Slices {
    informer: Informer<EndpointSlice>,
    reader: Reader<EndpointSlice>,
    task: JoinHandle<()>,
}

/// The load balancers' state, shared with the task that follows the slices.
struct Balancers {
    proxy: UserspaceProxy,
    /// By load balancer name. An async lock: it is held while the proxy is told.
    lbs: tokio::sync::Mutex<HashMap<String, Balancer>>,
    slices: OnceLock<Slices>,
}

/// The all-in-one cluster's cloud provider (see the [module docs](self)).
pub struct LocalCloud {
    client: Client,
    config: LocalCloudConfig,
    instances: Mutex<HashMap<String, Instance>>,
    removed: Mutex<HashSet<String>>,
    routes: Mutex<BTreeMap<String, Route>>,
    balancers: Arc<Balancers>,
    closed: AtomicBool,
}

impl fmt::Debug for LocalCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCloud")
            .field("config", &self.config)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

impl LocalCloud {
    /// A local cloud reading EndpointSlices through `client`.
    pub fn new(client: Client, config: LocalCloudConfig) -> LocalCloud {
        LocalCloud {
            client,
            config,
            instances: Mutex::new(HashMap::new()),
            removed: Mutex::new(HashSet::new()),
            routes: Mutex::new(BTreeMap::new()),
            balancers: Arc::new(Balancers {
                proxy: UserspaceProxy::new(),
                lbs: tokio::sync::Mutex::new(HashMap::new()),
                slices: OnceLock::new(),
            }),
            closed: AtomicBool::new(false),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LocalCloudConfig {
        &self.config
    }

    /// Registers the machine of node `node`, running.
    pub fn add_instance(&self, node: &str, instance_type: &str) {
        lock(&self.removed).remove(node);
        lock(&self.instances).insert(
            node.to_owned(),
            Instance {
                instance_type: instance_type.to_owned(),
                running: true,
            },
        );
    }

    /// Says that the machine of `node` is running (`true`) or shut down (`false`).
    pub fn set_running(&self, node: &str, running: bool) {
        let mut instances = lock(&self.instances);
        let instance = instances
            .entry(node.to_owned())
            .or_insert_with(|| Instance {
                instance_type: "local".into(),
                running,
            });
        instance.running = running;
    }

    /// Says that the machine of `node` is gone for good (its Node, once not Ready, is
    /// deleted by the cloud node lifecycle controller).
    pub fn remove_instance(&self, node: &str) {
        lock(&self.instances).remove(node);
        lock(&self.removed).insert(node.to_owned());
    }

    /// The routes the route controller made, by name.
    pub fn route_table(&self) -> Vec<Route> {
        lock(&self.routes).values().cloned().collect()
    }

    /// The load balancers: `namespace/name` of the Service, and its address.
    pub async fn load_balancer_addresses(&self) -> BTreeMap<String, Ipv4Addr> {
        self.balancers
            .lbs
            .lock()
            .await
            .values()
            .map(|b| (format!("{}/{}", b.namespace, b.service), b.ip))
            .collect()
    }

    /// Closes every load balancer (listeners and connections) and refuses to make new
    /// ones. Does not wait: the sockets close as the runtime cancels their tasks.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.balancers.proxy.shutdown();
        if let Some(slices) = self.balancers.slices.get() {
            slices.task.abort();
            slices.informer.stop();
        }
    }

    /// Serves every port of a load balancer (those it already had get their current
    /// backends); when one cannot be served, stops the ones this call started.
    async fn serve_ports(
        &self,
        wanted: &[LbPort],
        old: Option<&Balancer>,
        slices: &Reader<EndpointSlice>,
        namespace: &str,
        service: &str,
    ) -> Result<(), keelson_proxy::ProxyError> {
        let proxy = &self.balancers.proxy;
        let mut started = Vec::new();
        for port in wanted {
            let had = old.is_some_and(|o| o.ports.iter().any(|p| p.frontend == port.frontend));
            let backends = backends(slices, namespace, service, &port.name);
            if let Err(e) = proxy.serve(port.frontend, backends).await {
                for f in &started {
                    proxy.stop(f).await;
                }
                return Err(e);
            }
            if !had {
                started.push(port.frontend);
            }
        }
        Ok(())
    }

    /// The EndpointSlice cache, started on first use and ready.
    async fn slices(&self) -> Result<Reader<EndpointSlice>, CloudError> {
        let slices = self.balancers.slices.get_or_init(|| {
            let config = watcher::Config::default()
                .labels(SERVICE_NAME_LABEL)
                .unwrap_or_default();
            let informer = Informer::new(Api::<EndpointSlice>::all(self.client.clone()), config);
            let reader = informer.reader();
            let changes = informer.subscribe();
            let task = tokio::spawn(follow_slices(self.balancers.clone(), changes));
            Slices {
                informer,
                reader,
                task,
            }
        });
        let reader = slices.reader.clone();
        match tokio::time::timeout(SLICES_SYNC_TIMEOUT, reader.wait_until_ready()).await {
            Ok(Ok(())) => Ok(reader),
            _ => Err(CloudError::Unavailable(
                "the EndpointSlice cache is not synced yet".into(),
            )),
        }
    }
}

/// Keeps the load balancers' backends in step with the EndpointSlices.
async fn follow_slices(
    balancers: Arc<Balancers>,
    mut changes: keelson_controllers::Subscription<EndpointSlice>,
) {
    while let Some(change) = changes.next().await {
        let slice = match &change {
            Change::Applied { new, .. } => new.clone(),
            Change::Deleted(old) => old.clone(),
        };
        let Some(reader) = balancers.slices.get().map(|s| s.reader.clone()) else {
            continue;
        };
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned()
        else {
            continue;
        };
        let lbs = balancers.lbs.lock().await;
        for lb in lbs
            .values()
            .filter(|b| b.namespace == ns && b.service == service)
        {
            for port in &lb.ports {
                let backends = backends(&reader, &ns, &service, &port.name);
                if let Err(e) = balancers.proxy.serve(port.frontend, backends).await {
                    tracing::warn!(frontend = %port.frontend, error = %e, "could not update a load balancer's backends");
                }
            }
        }
    }
}

/// The addresses behind the Service port named `port` (empty: unnamed): ready
/// endpoints, or (when none is ready) serving terminating ones.
fn backends(
    slices: &Reader<EndpointSlice>,
    namespace: &str,
    service: &str,
    port: &str,
) -> Vec<SocketAddr> {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices.list_namespace(namespace) {
        let ours = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .is_some_and(|s| s == service);
        if !ours {
            continue;
        }
        let target = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == port
                && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
        });
        let Some(target) = target
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let c = endpoint.conditions.clone().unwrap_or_default();
            let list = if c.ready != Some(false) {
                &mut ready
            } else if c.serving == Some(true) && c.terminating == Some(true) {
                &mut terminating
            } else {
                continue;
            };
            for a in &endpoint.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    list.push(SocketAddr::new(ip, target));
                }
            }
        }
    }
    let mut out = if ready.is_empty() { terminating } else { ready };
    out.sort();
    out.dedup();
    out
}

/// The Service's ports as load balancer ports on `ip`.
fn ports_on(ports: &[(String, u16)], ip: Ipv4Addr) -> Vec<LbPort> {
    ports
        .iter()
        .map(|(name, port)| LbPort {
            name: name.clone(),
            frontend: Frontend::new(SocketAddr::new(IpAddr::V4(ip), *port), Protocol::Tcp),
        })
        .collect()
}

fn status_of(ip: Ipv4Addr) -> LoadBalancerStatus {
    LoadBalancerStatus {
        ingress: Some(vec![LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: Some("VIP".into()),
            ..LoadBalancerIngress::default()
        }]),
    }
}

#[async_trait]
impl Instances for LocalCloud {
    async fn instance_exists(&self, node: &Node) -> Result<bool, CloudError> {
        Ok(!lock(&self.removed).contains(node_name(node)))
    }

    async fn instance_shutdown(&self, node: &Node) -> Result<bool, CloudError> {
        Ok(lock(&self.instances)
            .get(node_name(node))
            .is_some_and(|i| !i.running))
    }

    async fn instance_metadata(&self, node: &Node) -> Result<InstanceMetadata, CloudError> {
        let name = node_name(node);
        if lock(&self.removed).contains(name) {
            return Err(CloudError::InstanceNotFound);
        }
        let instance_type = lock(&self.instances)
            .get(name)
            .map_or_else(|| "local".to_owned(), |i| i.instance_type.clone());
        Ok(InstanceMetadata {
            provider_id: format!("keelson://local/{name}"),
            instance_type,
            node_addresses: node
                .status
                .as_ref()
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default(),
            zone: self.config.zone.clone(),
            region: self.config.region.clone(),
            additional_labels: BTreeMap::new(),
        })
    }
}

#[async_trait]
impl Routes for LocalCloud {
    async fn list_routes(&self, cluster_name: &str) -> Result<Vec<Route>, CloudError> {
        let prefix = format!("{cluster_name}-");
        Ok(lock(&self.routes)
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn create_route(
        &self,
        cluster_name: &str,
        name_hint: &str,
        route: &Route,
    ) -> Result<(), CloudError> {
        let name = format!("{cluster_name}-{name_hint}-{}", route.destination_cidr);
        let route = Route {
            name: name.clone(),
            blackhole: false,
            ..route.clone()
        };
        lock(&self.routes).insert(name, route);
        Ok(())
    }

    async fn delete_route(&self, _cluster_name: &str, route: &Route) -> Result<(), CloudError> {
        lock(&self.routes).remove(&route.name);
        Ok(())
    }
}

#[async_trait]
impl LoadBalancers for LocalCloud {
    async fn get_load_balancer(
        &self,
        cluster_name: &str,
        service: &Service,
    ) -> Result<Option<LoadBalancerStatus>, CloudError> {
        let name = self.load_balancer_name(cluster_name, service);
        Ok(self
            .balancers
            .lbs
            .lock()
            .await
            .get(&name)
            .map(|b| status_of(b.ip)))
    }

    async fn ensure_load_balancer(
        &self,
        cluster_name: &str,
        service: &Service,
        nodes: &[Arc<Node>],
    ) -> Result<LoadBalancerStatus, CloudError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(CloudError::Unavailable(
                "the local cloud is shut down".into(),
            ));
        }
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let svc = service.metadata.name.clone().unwrap_or_default();
        let spec = service.spec.clone().unwrap_or_default();
        let mut ports = Vec::new();
        for p in spec.ports.iter().flatten() {
            let name = p.name.clone().unwrap_or_default();
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            if Protocol::from_k8s(Some(protocol)).is_none() {
                return Err(CloudError::Invalid(format!(
                    "the local load balancer serves TCP only; port {} ({}) is {protocol}",
                    p.port,
                    if name.is_empty() { "unnamed" } else { &name }
                )));
            }
            let port = u16::try_from(p.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| CloudError::Invalid(format!("invalid port {}", p.port)))?;
            ports.push((name, port));
        }
        if ports.is_empty() {
            return Err(CloudError::Invalid("the Service has no ports".into()));
        }
        let slices = self.slices().await?;
        let lb_name = self.load_balancer_name(cluster_name, service);
        let mut lbs = self.balancers.lbs.lock().await;
        let taken: HashSet<Ipv4Addr> = lbs
            .iter()
            .filter(|(n, _)| **n != lb_name)
            .map(|(_, b)| b.ip)
            .collect();
        let pool = self.config.load_balancer_pool;
        let free = |ip: &Ipv4Addr| pool.contains(*ip) && !taken.contains(ip);
        let old = lbs.get(&lb_name).cloned();
        // A Service may ask for an address; otherwise a load balancer keeps its own, or
        // takes the one the Service had (before a restart), or the first free one.
        let fixed = if let Some(asked) = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty())
        {
            let ip: Ipv4Addr = asked.parse().map_err(|_| {
                CloudError::Invalid(format!("loadBalancerIP {asked:?} is not an IPv4 address"))
            })?;
            if !free(&ip) {
                return Err(CloudError::Invalid(format!(
                    "loadBalancerIP {ip} is not a free address of the pool {pool}"
                )));
            }
            Some(ip)
        } else {
            old.as_ref().map(|o| o.ip)
        };
        let previous = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .and_then(|i| i.first())
            .and_then(|i| i.ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| free(ip));
        let candidates = fixed.into_iter().chain(
            previous
                .into_iter()
                .chain(pool.iter().filter(|ip| free(ip) && Some(*ip) != previous))
                .filter(|_| fixed.is_none()),
        );
        let mut chosen = None;
        for ip in candidates {
            match self
                .serve_ports(
                    &ports_on(&ports, ip),
                    old.as_ref(),
                    &slices,
                    &namespace,
                    &svc,
                )
                .await
            {
                Ok(()) => {
                    chosen = Some(ip);
                    break;
                }
                Err(e) if fixed.is_none() && e.is_addr_in_use() => {
                    tracing::debug!(%ip, error = %e, "address in use; trying the next one");
                }
                Err(e) => return Err(CloudError::Other(Box::new(e))),
            }
        }
        let Some(ip) = chosen else {
            return Err(CloudError::Unavailable(format!(
                "no free address left in the load balancer pool {pool}"
            )));
        };
        let wanted = ports_on(&ports, ip);
        if let Some(old) = &old {
            for p in &old.ports {
                if !wanted.iter().any(|w| w.frontend == p.frontend) {
                    self.balancers.proxy.stop(&p.frontend).await;
                }
            }
        }
        tracing::info!(service = %format!("{namespace}/{svc}"), %ip, "load balancer ready");
        lbs.insert(
            lb_name,
            Balancer {
                namespace,
                service: svc,
                ip,
                ports: wanted,
                nodes: nodes.iter().map(|n| node_name(n).to_owned()).collect(),
            },
        );
        Ok(status_of(ip))
    }

    async fn update_load_balancer(
        &self,
        cluster_name: &str,
        service: &Service,
        nodes: &[Arc<Node>],
    ) -> Result<(), CloudError> {
        let name = self.load_balancer_name(cluster_name, service);
        if let Some(b) = self.balancers.lbs.lock().await.get_mut(&name) {
            b.nodes = nodes.iter().map(|n| node_name(n).to_owned()).collect();
        }
        Ok(())
    }

    async fn ensure_load_balancer_deleted(
        &self,
        cluster_name: &str,
        service: &Service,
    ) -> Result<(), CloudError> {
        let name = self.load_balancer_name(cluster_name, service);
        let removed = self.balancers.lbs.lock().await.remove(&name);
        if let Some(b) = removed {
            for p in &b.ports {
                self.balancers.proxy.stop(&p.frontend).await;
            }
            tracing::info!(service = %format!("{}/{}", b.namespace, b.service), ip = %b.ip, "load balancer deleted");
        }
        Ok(())
    }
}

impl CloudProvider for LocalCloud {
    fn name(&self) -> &str {
        "local"
    }

    fn instances(&self) -> Option<&dyn Instances> {
        Some(self)
    }

    fn routes(&self) -> Option<&dyn Routes> {
        Some(self)
    }

    fn load_balancers(&self) -> Option<&dyn LoadBalancers> {
        Some(self)
    }
}

impl Drop for LocalCloud {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_first_last_or_cidr() {
        let r: AddressRange = "127.0.1.0/24".parse().unwrap();
        assert_eq!(
            (r.first(), r.last()),
            ("127.0.1.1".parse().unwrap(), "127.0.1.254".parse().unwrap())
        );
        let r: AddressRange = "127.0.0.5-127.0.0.7".parse().unwrap();
        assert_eq!(r.iter().count(), 3);
        assert!(r.contains("127.0.0.6".parse().unwrap()));
        assert!(!r.contains("127.0.0.8".parse().unwrap()));
        let r: AddressRange = "127.0.0.9/32".parse().unwrap();
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            ["127.0.0.9".parse::<Ipv4Addr>().unwrap()]
        );
        for bad in ["127.0.0.7-127.0.0.5", "nope", "127.0.0.1/33", "::1/128"] {
            assert!(bad.parse::<AddressRange>().is_err(), "{bad}");
        }
        assert_eq!(
            AddressRange::default().to_string(),
            "127.0.0.2-127.0.255.254"
        );
    }
}
