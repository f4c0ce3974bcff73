//! The Endpoints controller: the legacy core/v1 Endpoints object of each Service.
//!
//! As Kubernetes' Endpoints controller, for every Service with a `selector` (and not
//! `ExternalName`), an Endpoints object of the Service's name: pods with an IP that have
//! not finished, ready ones under `addresses` and the others under `notReadyAddresses`
//! (terminating pods are left out, and with `publishNotReadyAddresses` every pod is
//! ready), grouped into subsets by their resolved ports; labelled with the Service's
//! labels and `endpointslice.kubernetes.io/skip-mirror: "true"`.
//!
//! Unlike Kubernetes, the object carries a controller reference to its Service, so the
//! garbage collector deletes it with the Service.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use keelson_core::client::{Api, Client};
use keelson_core::k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use keelson_core::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::common::{controller_ref, is_pod_ready};
use super::endpointslice::{selects, service_controller};
use crate::controller::{Action, Context, Controller, Reconciler};
use crate::informer::InformerFactory;
use crate::reflector::Reader;

/// The label that keeps the EndpointSlice mirroring controller away.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";

pub use super::common::Error;

/// The Endpoints reconciler.
pub struct EndpointsController {
    client: Client,
    pods: Reader<Pod>,
    endpoints: Reader<Endpoints>,
}

impl std::fmt::Debug for EndpointsController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointsController")
            .finish_non_exhaustive()
    }
}

type PortKey = Vec<(Option<String>, String, i32)>;

fn target_port(pod: &Pod, target: Option<&IntOrString>, port: i32, protocol: &str) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => name.parse().ok().or_else(|| {
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }),
    }
}

/// The subsets `service` should have.
fn subsets(service: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let spec = service.spec.clone().unwrap_or_default();
    let svc_name = service.metadata.name.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses == Some(true);
    let mut groups: BTreeMap<PortKey, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    let mut sorted: Vec<&Arc<Pod>> = pods.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in sorted {
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) || (pod.metadata.deletion_timestamp.is_some() && !publish)
        {
            continue;
        }
        let Some(ip) = status
            .and_then(|s| s.pod_ip.clone())
            .filter(|i| !i.is_empty())
        else {
            continue;
        };
        let ports: PortKey = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|sp| {
                let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
                target_port(pod, sp.target_port.as_ref(), sp.port, &protocol)
                    .map(|p| (sp.name.clone(), protocol, p))
            })
            .collect();
        let pspec = pod.spec.as_ref();
        let address = EndpointAddress {
            ip,
            hostname: pspec
                .and_then(|s| s.hostname.clone())
                .filter(|_| pspec.and_then(|s| s.subdomain.as_deref()) == Some(svc_name.as_str())),
            node_name: pspec.and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
        };
        let entry = groups.entry(ports).or_default();
        if publish || is_pod_ready(pod) {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then(|| {
                ports
                    .into_iter()
                    .map(|(name, protocol, port)| EndpointPort {
                        name,
                        port,
                        protocol: Some(protocol),
                        app_protocol: None,
                    })
                    .collect()
            }),
        })
        .collect()
}

impl EndpointsController {
    /// Builds the controller on `factory`'s informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
    ) -> (Controller<Service>, Arc<Self>) {
        let (controller, pods, endpoints) = service_controller(client, factory, "endpoints");
        let reconciler = Arc::new(EndpointsController {
            client: client.clone(),
            pods,
            endpoints,
        });
        (controller, reconciler)
    }
}

#[async_trait]
impl Reconciler<Service> for EndpointsController {
    type Error = Error;

    async fn reconcile(&self, service: Arc<Service>, ctx: &Context) -> Result<Action, Error> {
        let key = &ctx.key;
        let ns = key.ns().unwrap_or_default();
        let spec = service.spec.as_ref();
        let selector = spec
            .and_then(|s| s.selector.as_ref())
            .filter(|s| !s.is_empty());
        if selector.is_none()
            || spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName")
            || service.metadata.deletion_timestamp.is_some()
        {
            // Endpoints of selector-less Services are the user's to write.
            return Ok(Action::await_change());
        }
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list_namespace(ns)
            .into_iter()
            .filter(|p| selects(&service, p))
            .collect();
        let mut labels = service.metadata.labels.clone().unwrap_or_default();
        labels.insert(SKIP_MIRROR_LABEL.into(), "true".into());
        let want = subsets(&service, &pods);
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
        let current = self.endpoints.get(key);
        let mut ep = current.as_deref().cloned().unwrap_or_default();
        let before = ep.clone();
        ep.metadata.name = Some(key.name.to_string());
        ep.metadata.namespace = Some(ns.to_owned());
        ep.metadata.labels = Some(labels);
        if ep.metadata.owner_references.is_none() {
            ep.metadata.owner_references = Some(vec![controller_ref(service.as_ref())]);
        }
        ep.subsets = (!want.is_empty()).then_some(want);
        let result = match current {
            None => match api.create(&ep).await {
                Err(e) if e.is_already_exists() => Ok(()),
                r => r.map(|_| ()),
            },
            Some(_) if ep == before => Ok(()),
            Some(_) => api.replace(&key.name, &ep).await.map(|_| ()),
        };
        result.map_err(|source| Error::Api {
            action: format!("writing Endpoints {key}"),
            source,
        })?;
        Ok(Action::await_change())
    }
}
