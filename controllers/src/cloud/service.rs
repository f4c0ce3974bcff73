//! The service controller (`service`, Kubernetes' `service-lb-controller`): a cloud load
//! balancer for every `type: LoadBalancer` Service.
//!
//! For a Service of type `LoadBalancer` whose `spec.loadBalancerClass` is unset (or is
//! the class configured as ours, [`CloudConfig::load_balancer_class`]; any other class
//! belongs to another controller and the Service is left alone), as Kubernetes does:
//! - **ensure**: records `EnsuringLoadBalancer`, adds the
//!   [`LOAD_BALANCER_CLEANUP_FINALIZER`] before anything is made, asks the provider to
//!   ensure the load balancer with the current nodes, writes the returned ingress points
//!   to `status.loadBalancer`, and records `EnsuredLoadBalancer`. This happens when the
//!   Service is new to the controller or a field a load balancer depends on changed
//!   (type, ports, `loadBalancerIP`, source ranges, session affinity, external IPs,
//!   traffic policy, health check port, IP families, annotations, uid);
//! - **nodes**: when only the set of nodes changed, the provider updates the load
//!   balancer's hosts (`UpdatedLoadBalancer`, or `UpdateLoadBalancerFailed`). The nodes
//!   are those that are Ready, not being deleted, not labelled
//!   `node.kubernetes.io/exclude-from-external-load-balancers` and not tainted
//!   `ToBeDeletedByClusterAutoscaler`; with none, a Warning `UnAvailableLoadBalancer`;
//! - **delete**: when the Service is being deleted, or no longer wants a load balancer
//!   (another type, another class) but still carries the finalizer, records
//!   `DeletingLoadBalancer` (when the provider has one), deletes it, removes the
//!   finalizer, clears `status.loadBalancer` and records `DeletedLoadBalancer`.
//!
//! Any failure is a Warning `SyncLoadBalancerFailed` ("Error syncing load balancer:
//! ...") and a retry with the per-key back-off; other Services are served meanwhile. A
//! provider answering [`CloudError::ImplementedElsewhere`] leaves the Service to
//! whoever implements it.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use keelson_core::client::{Api, Client, Patch};
use keelson_core::k8s_openapi::api::core::v1::{LoadBalancerStatus, Node, Service};
use parking_lot::Mutex;
use serde_json::json;

use super::provider::{CloudError, CloudProvider, LoadBalancers};
use super::{has_taint, CloudConfig, Error};
use crate::controller::{Action, Context, Controller, Reconciler};
use crate::events::{object_reference, EventType, Recorder};
use crate::finalizer::{add_finalizer, has_finalizer, remove_finalizer};
use crate::informer::InformerFactory;
use crate::object::ObjectRef;
use crate::reflector::{Change, Reader};
use crate::watcher;

/// The finalizer that keeps a Service until its load balancer is deleted.
pub const LOAD_BALANCER_CLEANUP_FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";
/// The label that keeps a node out of load balancers.
pub const LABEL_EXCLUDE_FROM_LOAD_BALANCERS: &str =
    "node.kubernetes.io/exclude-from-external-load-balancers";
/// The taint of a node the cluster autoscaler is about to remove.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// What the controller last did for a Service.
struct Synced {
    fingerprint: serde_json::Value,
    nodes: Vec<String>,
}

/// The service reconciler (see the [module docs](self)).
pub struct ServiceController {
    client: Client,
    cloud: Arc<dyn CloudProvider>,
    nodes: Reader<Node>,
    recorder: Recorder,
    cluster_name: String,
    class: Option<String>,
    synced: Mutex<HashMap<ObjectRef, Synced>>,
}

impl std::fmt::Debug for ServiceController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceController")
            .field("cloud", &self.cloud.name())
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

/// Whether `node` carries traffic of load balancers (see the [module docs](self)).
pub fn load_balancer_node(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let excluded = node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_EXCLUDE_FROM_LOAD_BALANCERS));
    ready
        && !excluded
        && node.metadata.deletion_timestamp.is_none()
        && !has_taint(node, TAINT_TO_BE_DELETED)
}

/// Whether `service` wants a load balancer from a controller whose class is `class`.
fn wants_load_balancer(service: &Service, class: Option<&str>) -> bool {
    let spec = service.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && match spec.and_then(|s| s.load_balancer_class.as_deref()) {
            None => true,
            Some(c) => Some(c) == class,
        }
}

/// The fields a load balancer depends on (Kubernetes' `needsUpdate`).
fn fingerprint(service: &Service) -> serde_json::Value {
    let spec = service.spec.clone().unwrap_or_default();
    let ports: Vec<_> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| json!([p.name, p.protocol, p.port, p.node_port]))
        .collect();
    json!({
        "uid": service.metadata.uid,
        "annotations": service.metadata.annotations,
        "type": spec.type_,
        "ports": ports,
        "loadBalancerIP": spec.load_balancer_ip,
        "loadBalancerSourceRanges": spec.load_balancer_source_ranges,
        "sessionAffinity": spec.session_affinity,
        "externalIPs": spec.external_ips,
        "externalTrafficPolicy": spec.external_traffic_policy,
        "healthCheckNodePort": spec.health_check_node_port,
        "ipFamilies": spec.ip_families,
    })
}

fn ingress_of(status: Option<&LoadBalancerStatus>) -> Vec<serde_json::Value> {
    status
        .and_then(|s| s.ingress.as_ref())
        .map(|i| {
            i.iter()
                .map(|x| serde_json::to_value(x).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

impl ServiceController {
    /// Builds the controller on `factory`'s Service and Node informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
        cloud: Arc<dyn CloudProvider>,
        config: &CloudConfig,
    ) -> (Controller<Service>, Arc<Self>) {
        let cfg = watcher::Config::default;
        let nodes_api = Api::<Node>::all(client.clone());
        let nodes = factory.informer(nodes_api.clone(), cfg()).reader();
        let controller =
            Controller::with_factory(factory, Api::<Service>::all(client.clone()), cfg())
                .name("service");
        let services = controller.store();
        let class = config.load_balancer_class.clone();
        let mapper_class = class.clone();
        let controller =
            controller.watches_changes(nodes_api, cfg(), move |change: &Change<Node>| {
                let (before, after) = match change {
                    Change::Applied { old, new } => (
                        old.as_deref().is_some_and(load_balancer_node),
                        load_balancer_node(new),
                    ),
                    Change::Deleted(n) => (load_balancer_node(n), false),
                };
                if before == after {
                    return Vec::new();
                }
                services
                    .list()
                    .iter()
                    .filter(|s| wants_load_balancer(s, mapper_class.as_deref()))
                    .map(|s| ObjectRef::from_meta(&s.metadata))
                    .collect()
            });
        let reconciler = Arc::new(ServiceController {
            client: client.clone(),
            cloud,
            nodes,
            recorder: Recorder::new(client.clone(), "service-controller", "keelson"),
            cluster_name: config.cluster_name.clone(),
            class,
            synced: Mutex::new(HashMap::new()),
        });
        (controller, reconciler)
    }

    async fn event(&self, service: &Service, type_: EventType, reason: &str, message: &str) {
        self.recorder
            .emit(&object_reference(service), type_, reason, message)
            .await;
    }

    /// Records `SyncLoadBalancerFailed` when `result` is an error.
    async fn sync_failed<T>(
        &self,
        service: &Service,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        if let Err(e) = &result {
            self.event(
                service,
                EventType::Warning,
                "SyncLoadBalancerFailed",
                &format!("Error syncing load balancer: {e}"),
            )
            .await;
        }
        result
    }

    /// The nodes load balancers send traffic through, by name.
    fn current_nodes(&self) -> Vec<Arc<Node>> {
        let mut nodes: Vec<Arc<Node>> = self
            .nodes
            .list()
            .into_iter()
            .filter(|n| load_balancer_node(n))
            .collect();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        nodes
    }

    /// Writes `status.loadBalancer` when it differs from `new`.
    async fn patch_status(
        &self,
        service: &Service,
        new: Option<&LoadBalancerStatus>,
    ) -> Result<(), Error> {
        let old = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref());
        let (before, after) = (ingress_of(old), ingress_of(new));
        if before == after {
            return Ok(());
        }
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let ns = service.metadata.namespace.as_deref().unwrap_or_default();
        let ingress = if after.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::Array(after)
        };
        let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
        match Api::<Service>::namespaced(self.client.clone(), ns)
            .patch_status(name, &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            // The Service went right after its finalizer was removed.
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::Api {
                action: "updating the load balancer status".into(),
                source,
            }),
        }
    }

    /// Deletes the load balancer, removes the finalizer, clears the status.
    async fn delete(
        &self,
        lbs: &dyn LoadBalancers,
        service: &Service,
        api: &Api<Service>,
    ) -> Result<(), Error> {
        let exists = lbs
            .get_load_balancer(&self.cluster_name, service)
            .await
            .map_err(|source| Error::Cloud {
                action: "failed to check if load balancer exists before cleanup".into(),
                source,
            })?;
        if exists.is_some() {
            self.event(
                service,
                EventType::Normal,
                "DeletingLoadBalancer",
                "Deleting load balancer",
            )
            .await;
            match lbs
                .ensure_load_balancer_deleted(&self.cluster_name, service)
                .await
            {
                Ok(()) | Err(CloudError::ImplementedElsewhere) => {}
                Err(source) => {
                    return Err(Error::Cloud {
                        action: "failed to delete load balancer".into(),
                        source,
                    })
                }
            }
        }
        remove_finalizer(api, service, LOAD_BALANCER_CLEANUP_FINALIZER)
            .await
            .map_err(|source| Error::Api {
                action: "removing the load balancer cleanup finalizer".into(),
                source,
            })?;
        self.event(
            service,
            EventType::Normal,
            "DeletedLoadBalancer",
            "Deleted load balancer",
        )
        .await;
        self.patch_status(service, None).await
    }

    /// Ensures the load balancer (no more than the finalizer when another controller
    /// implements it).
    async fn ensure(
        &self,
        lbs: &dyn LoadBalancers,
        service: &Service,
        api: &Api<Service>,
        nodes: &[Arc<Node>],
    ) -> Result<(), Error> {
        self.event(
            service,
            EventType::Normal,
            "EnsuringLoadBalancer",
            "Ensuring load balancer",
        )
        .await;
        add_finalizer(api, service, LOAD_BALANCER_CLEANUP_FINALIZER)
            .await
            .map_err(|source| Error::Api {
                action: "adding the load balancer cleanup finalizer".into(),
                source,
            })?;
        if nodes.is_empty() {
            self.event(
                service,
                EventType::Warning,
                "UnAvailableLoadBalancer",
                "There are no available nodes for LoadBalancer",
            )
            .await;
        }
        let status = match lbs
            .ensure_load_balancer(&self.cluster_name, service, nodes)
            .await
        {
            Ok(status) => status,
            Err(CloudError::ImplementedElsewhere) => return Ok(()),
            Err(source) => {
                return Err(Error::Cloud {
                    action: "failed to ensure load balancer".into(),
                    source,
                })
            }
        };
        self.event(
            service,
            EventType::Normal,
            "EnsuredLoadBalancer",
            "Ensured load balancer",
        )
        .await;
        self.patch_status(service, Some(&status)).await
    }

    async fn sync(&self, service: &Service, key: &ObjectRef) -> Result<(), Error> {
        let Some(lbs) = self.cloud.load_balancers() else {
            return Ok(());
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), key.ns().unwrap_or_default());
        let has = has_finalizer(service, LOAD_BALANCER_CLEANUP_FINALIZER);
        let wants = wants_load_balancer(service, self.class.as_deref())
            && service.metadata.deletion_timestamp.is_none();
        if !wants {
            if has {
                tracing::info!(service = %key, "deleting the load balancer");
                let deleted = self.delete(lbs, service, &api).await;
                self.sync_failed(service, deleted).await?;
            }
            self.synced.lock().remove(key);
            return Ok(());
        }
        let nodes = self.current_nodes();
        let names: Vec<String> = nodes
            .iter()
            .map(|n| n.metadata.name.clone().unwrap_or_default())
            .collect();
        let print = fingerprint(service);
        let (ensure, update) = match self.synced.lock().get(key) {
            Some(s) if has && s.fingerprint == print => (false, s.nodes != names),
            _ => (true, false),
        };
        if ensure {
            tracing::info!(service = %key, "ensuring the load balancer");
            let ensured = self.ensure(lbs, service, &api, &nodes).await;
            self.sync_failed(service, ensured).await?;
        } else if update {
            tracing::info!(service = %key, nodes = names.len(), "updating the load balancer's hosts");
            match lbs
                .update_load_balancer(&self.cluster_name, service, &nodes)
                .await
            {
                Ok(()) | Err(CloudError::ImplementedElsewhere) => {
                    self.event(
                        service,
                        EventType::Normal,
                        "UpdatedLoadBalancer",
                        "Updated load balancer with new hosts",
                    )
                    .await;
                }
                Err(source) => {
                    let shown: Vec<&String> = names.iter().take(5).collect();
                    let message = format!(
                        "Error updating load balancer with new hosts {shown:?} [node names limited, total number of nodes: {}], error: {source}",
                        names.len()
                    );
                    self.event(
                        service,
                        EventType::Warning,
                        "UpdateLoadBalancerFailed",
                        &message,
                    )
                    .await;
                    return Err(Error::Cloud {
                        action: "failed to update load balancer hosts".into(),
                        source,
                    });
                }
            }
        }
        if ensure || update {
            self.synced.lock().insert(
                key.clone(),
                Synced {
                    fingerprint: print,
                    nodes: names,
                },
            );
        }
        Ok(())
    }
}

#[async_trait]
impl Reconciler<Service> for ServiceController {
    type Error = Error;

    async fn reconcile(&self, service: Arc<Service>, ctx: &Context) -> Result<Action, Error> {
        self.sync(&service, &ctx.key).await?;
        Ok(Action::await_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_core::k8s_openapi::api::core::v1::{NodeCondition, NodeStatus, ServiceSpec};

    fn lb(class: Option<&str>) -> Service {
        Service {
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                load_balancer_class: class.map(Into::into),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    #[test]
    fn only_load_balancers_of_no_class_or_ours_are_wanted() {
        assert!(wants_load_balancer(&lb(None), None));
        assert!(!wants_load_balancer(&lb(Some("example.com/other")), None));
        assert!(wants_load_balancer(
            &lb(Some("keelson.dev/local")),
            Some("keelson.dev/local")
        ));
        assert!(!wants_load_balancer(
            &lb(Some("example.com/other")),
            Some("keelson.dev/local")
        ));
        let mut cluster_ip = lb(None);
        cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert!(!wants_load_balancer(&cluster_ip, None));
    }

    #[test]
    fn only_ready_included_nodes_carry_load_balancer_traffic() {
        let n = Node {
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        };
        assert!(load_balancer_node(&n));
        let mut excluded = n.clone();
        excluded.metadata.labels =
            Some([(LABEL_EXCLUDE_FROM_LOAD_BALANCERS.to_owned(), String::new())].into());
        assert!(!load_balancer_node(&excluded));
        let mut not_ready = n.clone();
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "Unknown".into();
        assert!(!load_balancer_node(&not_ready));
    }

    #[test]
    fn the_fingerprint_ignores_the_selector_and_target_ports() {
        let mut a = lb(None);
        a.spec.as_mut().unwrap().selector = Some([("app".to_owned(), "a".to_owned())].into());
        let mut b = lb(None);
        b.spec.as_mut().unwrap().selector = Some([("app".to_owned(), "b".to_owned())].into());
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.spec.as_mut().unwrap().load_balancer_ip = Some("127.0.0.9".into());
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
