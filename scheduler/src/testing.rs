//! Builders for nodes and pods, for tests, examples and benchmarks.
//!
//! ```
//! use keelson_scheduler::testing::{node, pod};
//! let n = node("n1").cpu("4").memory("8Gi").label("zone", "a").obj();
//! let p = pod("web").cpu("500m").label("app", "web").obj();
//! assert_eq!(n.metadata.name.as_deref(), Some("n1"));
//! assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
//! ```

use std::collections::BTreeMap;

use keelson_core::k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerImage, Node, NodeSpec, NodeStatus, Pod, PodAffinityTerm,
    PodAntiAffinity, PodSpec, PodStatus, ResourceRequirements, Taint, Toleration,
    TopologySpreadConstraint,
};
use keelson_core::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A node under construction.
#[derive(Clone, Debug)]
pub struct NodeBuilder(Node);

/// Starts a node named `name` that allows 110 pods.
pub fn node(name: &str) -> NodeBuilder {
    let mut n = Node::default();
    n.metadata.name = Some(name.to_owned());
    n.metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/hostname".to_owned(),
        name.to_owned(),
    )]));
    n.spec = Some(NodeSpec::default());
    n.status = Some(NodeStatus {
        allocatable: Some(BTreeMap::from([(
            "pods".to_owned(),
            Quantity("110".into()),
        )])),
        ..NodeStatus::default()
    });
    NodeBuilder(n)
}

impl NodeBuilder {
    /// Sets an allocatable resource.
    pub fn resource(mut self, name: &str, quantity: &str) -> Self {
        if let Some(s) = self.0.status.as_mut() {
            s.allocatable
                .get_or_insert_with(BTreeMap::new)
                .insert(name.to_owned(), Quantity(quantity.into()));
        }
        self
    }
    /// Allocatable CPU.
    pub fn cpu(self, q: &str) -> Self {
        self.resource("cpu", q)
    }
    /// Allocatable memory.
    pub fn memory(self, q: &str) -> Self {
        self.resource("memory", q)
    }
    /// Allocatable pod count.
    pub fn pods(self, q: &str) -> Self {
        self.resource("pods", q)
    }
    /// Adds a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.to_owned(), v.to_owned());
        self
    }
    /// Adds a taint.
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        if let Some(s) = self.0.spec.as_mut() {
            s.taints.get_or_insert_with(Vec::new).push(Taint {
                key: key.to_owned(),
                value: (!value.is_empty()).then(|| value.to_owned()),
                effect: effect.to_owned(),
                time_added: None,
            });
        }
        self
    }
    /// Marks it unschedulable (cordoned).
    pub fn unschedulable(mut self) -> Self {
        if let Some(s) = self.0.spec.as_mut() {
            s.unschedulable = Some(true);
        }
        self
    }
    /// Adds an image present on the node.
    pub fn image(mut self, name: &str, size_bytes: i64) -> Self {
        if let Some(s) = self.0.status.as_mut() {
            s.images.get_or_insert_with(Vec::new).push(ContainerImage {
                names: Some(vec![name.to_owned()]),
                size_bytes: Some(size_bytes),
            });
        }
        self
    }
    /// The node.
    pub fn obj(self) -> Node {
        self.0
    }
}

/// A pod under construction.
#[derive(Clone, Debug)]
pub struct PodBuilder(Pod);

/// Starts a pod named `name` in `default`, with uid `uid-NAME` and one container.
pub fn pod(name: &str) -> PodBuilder {
    let mut p = Pod::default();
    p.metadata.name = Some(name.to_owned());
    p.metadata.namespace = Some("default".to_owned());
    p.metadata.uid = Some(format!("uid-{name}"));
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: "c".into(),
            image: Some("registry.example/app:1.0".into()),
            ..Container::default()
        }],
        ..PodSpec::default()
    });
    PodBuilder(p)
}

/// A label selector requiring `k=v` for each pair.
pub fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        match_expressions: None,
    }
}

impl PodBuilder {
    fn spec(&mut self) -> &mut PodSpec {
        self.0.spec.get_or_insert_with(PodSpec::default)
    }
    /// Sets the namespace (and keeps the uid unique).
    pub fn namespace(mut self, ns: &str) -> Self {
        let name = self.0.metadata.name.clone().unwrap_or_default();
        self.0.metadata.namespace = Some(ns.to_owned());
        self.0.metadata.uid = Some(format!("uid-{ns}-{name}"));
        self
    }
    /// Requests a resource (in the first container).
    pub fn request(mut self, name: &str, quantity: &str) -> Self {
        if let Some(c) = self.spec().containers.first_mut() {
            c.resources
                .get_or_insert_with(ResourceRequirements::default)
                .requests
                .get_or_insert_with(BTreeMap::new)
                .insert(name.to_owned(), Quantity(quantity.into()));
        }
        self
    }
    /// Requests CPU.
    pub fn cpu(self, q: &str) -> Self {
        self.request("cpu", q)
    }
    /// Requests memory.
    pub fn memory(self, q: &str) -> Self {
        self.request("memory", q)
    }
    /// Sets the image of the first container.
    pub fn image(mut self, image: &str) -> Self {
        if let Some(c) = self.spec().containers.first_mut() {
            c.image = Some(image.to_owned());
        }
        self
    }
    /// Adds a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.to_owned(), v.to_owned());
        self
    }
    /// Binds it to a node (`spec.nodeName`).
    pub fn node(mut self, node: &str) -> Self {
        self.spec().node_name = Some(node.to_owned());
        self
    }
    /// Sets `spec.priority`.
    pub fn priority(mut self, p: i32) -> Self {
        self.spec().priority = Some(p);
        self
    }
    /// Sets `spec.schedulerName`.
    pub fn scheduler_name(mut self, name: &str) -> Self {
        self.spec().scheduler_name = Some(name.to_owned());
        self
    }
    /// Adds a nodeSelector entry.
    pub fn node_selector(mut self, k: &str, v: &str) -> Self {
        self.spec()
            .node_selector
            .get_or_insert_with(BTreeMap::new)
            .insert(k.to_owned(), v.to_owned());
        self
    }
    /// Adds a toleration.
    pub fn toleration(mut self, t: Toleration) -> Self {
        self.spec().tolerations.get_or_insert_with(Vec::new).push(t);
        self
    }
    /// Sets the affinity.
    pub fn affinity(mut self, a: Affinity) -> Self {
        self.spec().affinity = Some(a);
        self
    }
    /// Adds a required anti-affinity term against pods with these labels.
    pub fn anti_affinity(mut self, labels: &[(&str, &str)], topology_key: &str) -> Self {
        let term = PodAffinityTerm {
            label_selector: Some(selector(labels)),
            topology_key: topology_key.to_owned(),
            ..PodAffinityTerm::default()
        };
        let a = self.spec().affinity.get_or_insert_with(Affinity::default);
        a.pod_anti_affinity
            .get_or_insert_with(PodAntiAffinity::default)
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(term);
        self
    }
    /// Adds a topology spread constraint.
    pub fn spread(mut self, c: TopologySpreadConstraint) -> Self {
        self.spec()
            .topology_spread_constraints
            .get_or_insert_with(Vec::new)
            .push(c);
        self
    }
    /// Sets `status.nominatedNodeName`.
    pub fn nominated(mut self, node: &str) -> Self {
        self.0
            .status
            .get_or_insert_with(PodStatus::default)
            .nominated_node_name = Some(node.to_owned());
        self
    }
    /// Sets `spec.preemptionPolicy`.
    pub fn preemption_policy(mut self, policy: &str) -> Self {
        self.spec().preemption_policy = Some(policy.to_owned());
        self
    }
    /// The pod.
    pub fn obj(self) -> Pod {
        self.0
    }
}
