//! A node as the scheduler holds it: the object, the pods on it, and the totals the
//! plugins read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use keelson_core::k8s_openapi::api::core::v1::{Node, Taint};

use crate::pod_info::PodInfo;
use crate::pod_list::PodList;
use crate::resources::Resources;

/// A node and the pods the scheduler counts on it (bound, and assumed: chosen but not
/// yet bound). Cheap to clone (the pods are shared).
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    node: Option<Arc<Node>>,
    name: Arc<str>,
    /// The pods on the node.
    pub pods: PodList,
    /// The pods on the node with any pod affinity or anti-affinity term.
    pub pods_with_affinity: PodList,
    /// The pods on the node with a required anti-affinity term.
    pub pods_with_required_anti_affinity: PodList,
    /// What the pods on it request.
    pub requested: Resources,
    /// What the pods on it request, with scoring's defaults for unset CPU and memory.
    pub non_zero_requested: Resources,
    /// What the node offers to pods (`status.allocatable`).
    pub allocatable: Resources,
    /// Image sizes by name, from `status.images`.
    pub images: HashMap<String, i64>,
    /// Bumped on every change.
    pub generation: u64,
    /// The labels as shared strings, so per-cycle maps keyed by them copy no text
    /// (shared between copies of the node).
    interned_labels: Arc<BTreeMap<Arc<str>, Arc<str>>>,
}

static EMPTY_LABELS: std::sync::LazyLock<BTreeMap<String, String>> =
    std::sync::LazyLock::new(BTreeMap::new);

impl NodeInfo {
    /// A node with no pods.
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let mut info = NodeInfo {
            name: Arc::from(node.metadata.name.as_deref().unwrap_or_default()),
            ..NodeInfo::default()
        };
        info.set_node(node);
        info
    }

    /// Pods known on a node the scheduler has not seen yet.
    pub(crate) fn placeholder(name: &str) -> NodeInfo {
        NodeInfo {
            name: Arc::from(name),
            ..NodeInfo::default()
        }
    }

    /// Replaces the node object (its pods stay).
    pub fn set_node(&mut self, node: Arc<Node>) {
        let status = node.status.as_ref();
        self.allocatable = status
            .and_then(|s| s.allocatable.as_ref())
            .map(Resources::from_list)
            .unwrap_or_default();
        self.images = status
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|i| {
                let size = i.size_bytes.unwrap_or(0);
                i.names
                    .iter()
                    .flatten()
                    .map(move |n| (normalize_image(n), size))
            })
            .collect();
        self.interned_labels = Arc::new(
            node.metadata
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| (Arc::from(k.as_str()), Arc::from(v.as_str())))
                .collect(),
        );
        self.node = Some(node);
        self.generation += 1;
    }

    /// A label as shared strings (key, value).
    pub fn label_arc(&self, key: &str) -> Option<(&Arc<str>, &Arc<str>)> {
        self.interned_labels.get_key_value(key)
    }

    /// Forgets the node object (its pods stay until they go).
    pub(crate) fn clear_node(&mut self) {
        self.node = None;
        self.generation += 1;
    }

    /// The node object (`None` for pods on a node not seen yet).
    pub fn node(&self) -> Option<&Arc<Node>> {
        self.node.as_ref()
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's name, shared.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// The node's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.node
            .as_ref()
            .and_then(|n| n.metadata.labels.as_ref())
            .unwrap_or(&EMPTY_LABELS)
    }

    /// The node's taints.
    pub fn taints(&self) -> &[Taint] {
        self.node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.taints.as_deref())
            .unwrap_or(&[])
    }

    /// `spec.unschedulable`.
    pub fn unschedulable(&self) -> bool {
        self.node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    }

    /// Counts a pod on the node.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_requested.milli_cpu += pod.non_zero_requests.milli_cpu;
        self.non_zero_requested.memory += pod.non_zero_requests.memory;
        if pod.has_affinity() {
            self.pods_with_affinity.push(pod.clone());
        }
        if !pod.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity.push(pod.clone());
        }
        self.pods.push(pod);
        self.generation += 1;
    }

    /// Stops counting a pod (by uid); whether it was there.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(pod) = self.pods.remove(uid) else {
            return false;
        };
        if pod.has_affinity() {
            self.pods_with_affinity.remove(uid);
        }
        if !pod.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity.remove(uid);
        }
        self.requested.sub(&pod.requests);
        self.non_zero_requested.milli_cpu -= pod.non_zero_requests.milli_cpu;
        self.non_zero_requested.memory -= pod.non_zero_requests.memory;
        self.generation += 1;
        true
    }
}

/// An image name as ImageLocality compares them: `:latest` added when neither a tag
/// nor a digest is given.
pub fn normalize_image(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}
