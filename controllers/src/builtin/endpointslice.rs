//! The EndpointSlice controller: the pods behind each Service, as discovery.k8s.io/v1
//! EndpointSlices.
//!
//! As Kubernetes' EndpointSlice controller, for every Service with a `selector` (and not
//! `ExternalName`):
//! - an endpoint for each matching pod that has an IP and has not finished: its address,
//!   `nodeName`, a `targetRef` to the pod, `hostname` when the pod's `subdomain` is the
//!   Service's name, and the conditions `ready` (ready and not terminating, or always
//!   with `publishNotReadyAddresses`), `serving` (ready, even while terminating) and
//!   `terminating`;
//! - ports: the Service's ports, with `targetPort` resolved per pod (a named port
//!   through the pod's container ports; a pod without it is left out of that port);
//!   endpoints are grouped by address type (IPv4/IPv6) and resolved ports;
//! - at most 100 endpoints per slice; slices are named `<service>-<random>`, labelled
//!   `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by:
//!   endpointslice-controller.k8s.io` (plus the Service's labels, and
//!   `service.kubernetes.io/headless` for headless Services) and owned by the Service;
//! - a Service without endpoints keeps one empty placeholder slice.
//!
//! Unlike Kubernetes, endpoints are packed in pod-name order rather than kept in the
//! slice they were in, so adding a pod can rewrite the slices after it; topology hints
//! and zones are not set.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use keelson_core::client::{Api, Client, DeleteOptions};
use keelson_core::k8s_openapi::api::core::v1::ObjectReference;
use keelson_core::k8s_openapi::api::core::v1::{Pod, Service};
use keelson_core::k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use keelson_core::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::common::controller_ref;
use crate::controller::{Action, Context, Controller, Reconciler};
use crate::informer::InformerFactory;
use crate::object::ObjectRef;
use crate::reflector::{Change, Reader};
use crate::watcher;

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's `managed-by` value.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// The most endpoints in one slice (Kubernetes' `--max-endpoints-per-slice` default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

use super::common::api_err;
pub use super::common::Error;

/// The EndpointSlice reconciler.
pub struct EndpointSliceController {
    client: Client,
    pods: Reader<Pod>,
    slices: Reader<EndpointSlice>,
}

impl std::fmt::Debug for EndpointSliceController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSliceController")
            .finish_non_exhaustive()
    }
}

/// Whether `service`'s selector selects `pod` (a Service without a selector selects
/// nothing).
pub fn selects(service: &Service, pod: &Pod) -> bool {
    let Some(sel) = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return false;
    };
    let labels = pod.metadata.labels.as_ref();
    sel.iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn managed(service: &Service) -> bool {
    let spec = service.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) != Some("ExternalName")
        && spec
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|s| !s.is_empty())
}

/// The pod's port for a Service `targetPort`.
fn resolve_port(pod: &Pod, target: Option<&IntOrString>, port: i32, protocol: &str) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => {
            if let Ok(p) = name.parse::<i32>() {
                return Some(p);
            }
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
        }
    }
}

fn pod_ready(p: &Pod) -> bool {
    super::common::is_pod_ready(p)
}

/// One group of endpoints sharing an address type and ports.
type GroupKey = (String, Vec<(Option<String>, String, i32)>);

/// The slices `service` should have, without names: (address type, ports, endpoints).
fn desired(
    service: &Service,
    pods: &[Arc<Pod>],
) -> Vec<(String, Option<Vec<EndpointPort>>, Vec<Endpoint>)> {
    let spec = service.spec.clone().unwrap_or_default();
    let svc_name = service.metadata.name.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut groups: BTreeMap<GroupKey, Vec<Endpoint>> = BTreeMap::new();
    let mut sorted: Vec<&Arc<Pod>> = pods.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in sorted {
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(ip) = status
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let address_type = if ip.contains(':') { "IPv6" } else { "IPv4" };
        let mut ports = Vec::new();
        for sp in spec.ports.iter().flatten() {
            let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            if let Some(p) = resolve_port(pod, sp.target_port.as_ref(), sp.port, &protocol) {
                ports.push((sp.name.clone(), protocol, p));
            }
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = pod_ready(pod);
        let pspec = pod.spec.as_ref();
        let hostname = pspec
            .and_then(|s| s.hostname.clone())
            .filter(|_| pspec.and_then(|s| s.subdomain.as_deref()) == Some(svc_name.as_str()));
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish_not_ready || (ready && !terminating)),
                serving: Some(publish_not_ready || ready),
                terminating: Some(terminating),
            }),
            hostname,
            node_name: pspec.and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        };
        groups
            .entry((address_type.to_owned(), ports))
            .or_default()
            .push(endpoint);
    }
    let mut out = Vec::new();
    for ((address_type, ports), endpoints) in groups {
        let ports: Vec<EndpointPort> = ports
            .into_iter()
            .map(|(name, protocol, port)| EndpointPort {
                // An unnamed port is named "" (not absent), as Kubernetes writes it:
                // clients such as `kubectl describe service` rely on it.
                name: Some(name.unwrap_or_default()),
                protocol: Some(protocol),
                port: Some(port),
                app_protocol: None,
            })
            .collect();
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push((address_type.clone(), Some(ports.clone()), chunk.to_vec()));
        }
    }
    if out.is_empty() {
        // The placeholder: no endpoints, no ports.
        out.push(("IPv4".to_owned(), None, Vec::new()));
    }
    out
}

fn slice_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        service.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    if service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

/// A controller of Services that keeps `C` objects (slices, Endpoints) for the pods they
/// select: reconciles a Service when it, a `C` it owns, or a pod it selects (before or
/// after the change) changes. Returns the controller and readers of the pods and of `C`.
pub(crate) fn service_controller<C: crate::object::Object + keelson_core::Resource>(
    client: &Client,
    factory: &InformerFactory,
    name: &str,
) -> (Controller<Service>, Reader<Pod>, Reader<C>) {
    let cfg = watcher::Config::default;
    let pods_api = Api::<Pod>::all(client.clone());
    let pods = factory.informer(pods_api.clone(), cfg().compact()).reader();
    let owned_api = Api::<C>::all(client.clone());
    let owned = factory.informer(owned_api.clone(), cfg()).reader();
    let controller =
        Controller::with_factory(factory, Api::<Service>::all(client.clone()), cfg()).name(name);
    let services = controller.store();
    let controller = controller.owns(owned_api, cfg()).watches_changes(
        pods_api,
        cfg().compact(),
        move |change: &Change<Pod>| {
            let (old, new) = match change {
                Change::Applied { old, new } => (old.as_deref(), new.as_ref()),
                Change::Deleted(p) => (None, p.as_ref()),
            };
            let ns = new.metadata.namespace.as_deref().unwrap_or_default();
            services
                .list_namespace(ns)
                .iter()
                .filter(|s| selects(s, new) || old.is_some_and(|o| selects(s, o)))
                .map(|s| ObjectRef::from_meta(&s.metadata))
                .collect()
        },
    );
    (controller, pods, owned)
}

impl EndpointSliceController {
    /// Builds the controller on `factory`'s informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
    ) -> (Controller<Service>, Arc<Self>) {
        let (controller, pods, slices) = service_controller(client, factory, "endpointslice");
        let reconciler = Arc::new(EndpointSliceController {
            client: client.clone(),
            pods,
            slices,
        });
        (controller, reconciler)
    }
}

#[async_trait]
impl Reconciler<Service> for EndpointSliceController {
    type Error = Error;

    async fn reconcile(&self, service: Arc<Service>, ctx: &Context) -> Result<Action, Error> {
        let key = &ctx.key;
        let ns = key.ns().unwrap_or_default();
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let uid = service.metadata.uid.clone().unwrap_or_default();
        let mut existing: Vec<Arc<EndpointSlice>> = self
            .slices
            .owned_by(&uid)
            .into_iter()
            .filter(|s| {
                s.metadata.deletion_timestamp.is_none()
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(MANAGED_BY_LABEL))
                        .is_some_and(|m| m == MANAGED_BY)
            })
            .collect();
        existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let want = if managed(&service) && service.metadata.deletion_timestamp.is_none() {
            let pods: Vec<Arc<Pod>> = self
                .pods
                .list_namespace(ns)
                .into_iter()
                .filter(|p| selects(&service, p))
                .collect();
            desired(&service, &pods)
        } else {
            Vec::new()
        };
        let labels = slice_labels(&service);
        // Pair wanted slices with existing ones of the same address type, in order.
        let mut unused: Vec<Arc<EndpointSlice>> = existing;
        for (address_type, ports, endpoints) in want {
            let pos = unused.iter().position(|s| s.address_type == address_type);
            let mut slice = match pos {
                Some(i) => (*unused.remove(i)).clone(),
                None => {
                    let mut s = EndpointSlice::default();
                    s.metadata.generate_name = Some(format!("{}-", key.name));
                    s.metadata.namespace = Some(ns.to_owned());
                    s.metadata.owner_references = Some(vec![controller_ref(service.as_ref())]);
                    s.address_type.clone_from(&address_type);
                    s
                }
            };
            let before = slice.clone();
            slice.metadata.labels = Some(labels.clone());
            slice.ports = ports;
            slice.endpoints = endpoints;
            if slice.metadata.name.is_none() {
                api.create(&slice)
                    .await
                    .map_err(api_err(format!("creating an EndpointSlice for {key}")))?;
            } else if slice != before {
                let name = slice.metadata.name.clone().unwrap_or_default();
                match api.replace(&name, &slice).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(api_err(format!("updating EndpointSlice {name}"))(e)),
                }
            }
        }
        for s in unused {
            let name = s.metadata.name.clone().unwrap_or_default();
            let opts = DeleteOptions {
                uid: s.metadata.uid.clone(),
                ..DeleteOptions::default()
            };
            match api.delete(&name, &opts).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(api_err(format!("deleting EndpointSlice {name}"))(e)),
            }
        }
        Ok(Action::await_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unnamed_service_port_gives_a_slice_port_named_empty() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }))
        .unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"podIP": "127.1.0.2"},
        }))
        .unwrap();
        let slices = desired(&service, &[Arc::new(pod)]);
        let ports = slices[0].1.clone().unwrap();
        assert_eq!(ports[0].name.as_deref(), Some(""));
        assert_eq!(ports[0].port, Some(8080));
    }
}
