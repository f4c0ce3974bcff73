//! The scheduler's view of the cluster: nodes and the pods on them (bound and assumed),
//! fed by watches, and the per-cycle [`Snapshot`] the plugins read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use keelson_core::LabelSelector;
use parking_lot::Mutex;

use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;

/// A PodDisruptionBudget as preemption reads it.
#[derive(Clone, Debug)]
pub struct PdbInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The pods it covers (`nothing` for a budget without a selector).
    pub selector: LabelSelector,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: i32,
    /// `status.disruptedPods`: pods already being evicted, no longer counted.
    pub disrupted_pods: HashSet<String>,
}

/// What the cache knows about a pod.
#[derive(Clone, Debug)]
struct PodState {
    node: String,
    assumed: bool,
    binding_finished: bool,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<String, Arc<NodeInfo>>,
    pods: HashMap<String, PodState>,
    dirty: HashSet<String>,
    node_set_changed: bool,
    namespaces: Arc<HashMap<String, BTreeMap<String, String>>>,
    image_nodes: Arc<HashMap<String, usize>>,
    pdbs: Arc<Vec<PdbInfo>>,
}

/// Nodes and the pods on them. Writers: the watches, the scheduling cycle (assume) and
/// the binding cycle (finish, forget). Readers take a [`Snapshot`]; reads may be stale.
#[derive(Default)]
pub struct Cache {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("Cache")
            .field("nodes", &inner.nodes.len())
            .field("pods", &inner.pods.len())
            .finish()
    }
}

impl Inner {
    fn node_mut(&mut self, name: &str) -> &mut NodeInfo {
        self.dirty.insert(name.to_owned());
        Arc::make_mut(
            self.nodes
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(NodeInfo::placeholder(name))),
        )
    }

    fn add_pod_to_node(&mut self, info: &Arc<PodInfo>, node: &str) {
        self.node_mut(node).add_pod(info.clone());
    }

    fn remove_pod_from_node(&mut self, uid: &str, node: &str) {
        if !self.nodes.contains_key(node) {
            return;
        }
        let info = self.node_mut(node);
        info.remove_pod(uid);
        if info.node().is_none() && info.pods.is_empty() {
            self.nodes.remove(node);
        }
    }

    fn count_images(&mut self, images: &HashMap<String, i64>, delta: isize) {
        if images.is_empty() {
            return;
        }
        let counts = Arc::make_mut(&mut self.image_nodes);
        for name in images.keys() {
            let c = counts.entry(name.clone()).or_insert(0);
            *c = c.saturating_add_signed(delta);
            if *c == 0 {
                counts.remove(name);
            }
        }
    }
}

/// Why the cache refused a change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    /// The pod is already in the cache (bound or assumed).
    #[error("pod {0} is already in the cache")]
    AlreadyPresent(String),
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Cache {
        Cache::default()
    }

    /// Counts a pod on `node` before it is bound, so the next cycles see its resources
    /// taken.
    ///
    /// # Errors
    /// [`CacheError::AlreadyPresent`] when the pod is already counted.
    pub fn assume_pod(&self, info: Arc<PodInfo>, node: &str) -> Result<(), CacheError> {
        let mut inner = self.inner.lock();
        if inner.pods.contains_key(&info.uid) {
            return Err(CacheError::AlreadyPresent(info.key.clone()));
        }
        inner.add_pod_to_node(&info, node);
        inner.pods.insert(
            info.uid.clone(),
            PodState {
                node: node.to_owned(),
                assumed: true,
                binding_finished: false,
            },
        );
        Ok(())
    }

    /// Notes that an assumed pod's binding succeeded (the watch will confirm it).
    pub fn finish_binding(&self, uid: &str) {
        if let Some(state) = self.inner.lock().pods.get_mut(uid) {
            state.binding_finished = true;
        }
    }

    /// Forgets an assumed pod (its binding failed). A pod the watch confirmed stays.
    pub fn forget_pod(&self, uid: &str) {
        let mut inner = self.inner.lock();
        if inner.pods.get(uid).is_some_and(|s| s.assumed) {
            if let Some(state) = inner.pods.remove(uid) {
                inner.remove_pod_from_node(uid, &state.node);
            }
        }
    }

    /// Whether the pod is assumed (chosen, not yet confirmed by the watch).
    pub fn is_assumed(&self, uid: &str) -> bool {
        self.inner.lock().pods.get(uid).is_some_and(|s| s.assumed)
    }

    /// Whether the pod is counted on a node.
    pub fn contains(&self, uid: &str) -> bool {
        self.inner.lock().pods.contains_key(uid)
    }

    /// A bound pod seen by the watch (added or changed): confirms an assumed one.
    pub fn add_or_update_pod(&self, info: Arc<PodInfo>) {
        let Some(node) = info.node_name().map(str::to_owned) else {
            return;
        };
        let mut inner = self.inner.lock();
        if let Some(old) = inner.pods.remove(&info.uid) {
            inner.remove_pod_from_node(&info.uid, &old.node);
        }
        inner.add_pod_to_node(&info, &node);
        inner.pods.insert(
            info.uid.clone(),
            PodState {
                node,
                assumed: false,
                binding_finished: true,
            },
        );
    }

    /// A pod deleted (or finished): frees what it held.
    pub fn remove_pod(&self, uid: &str) {
        let mut inner = self.inner.lock();
        if let Some(state) = inner.pods.remove(uid) {
            inner.remove_pod_from_node(uid, &state.node);
        }
    }

    /// A node added or changed.
    pub fn add_or_update_node(&self, node: Arc<keelson_core::k8s_openapi::api::core::v1::Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut inner = self.inner.lock();
        let (old_images, had_node) = inner
            .nodes
            .get(&name)
            .map(|n| (n.images.clone(), n.node().is_some()))
            .unwrap_or_default();
        inner.count_images(&old_images, -1);
        let info = inner.node_mut(&name);
        info.set_node(node);
        let new_images = info.images.clone();
        inner.count_images(&new_images, 1);
        if !had_node {
            inner.node_set_changed = true;
        }
    }

    /// A node deleted. Pods still bound to it stay counted until they go.
    pub fn remove_node(&self, name: &str) {
        let mut inner = self.inner.lock();
        let Some(old_images) = inner.nodes.get(name).map(|n| n.images.clone()) else {
            return;
        };
        inner.count_images(&old_images, -1);
        let info = inner.node_mut(name);
        info.clear_node();
        if info.pods.is_empty() {
            inner.nodes.remove(name);
        }
        inner.node_set_changed = true;
    }

    /// Replaces the namespaces' labels (for namespaceSelector).
    pub fn set_namespace(&self, name: &str, labels: Option<BTreeMap<String, String>>) {
        let mut inner = self.inner.lock();
        let ns = Arc::make_mut(&mut inner.namespaces);
        match labels {
            Some(l) => {
                ns.insert(name.to_owned(), l);
            }
            None => {
                ns.remove(name);
            }
        }
    }

    /// Replaces the PodDisruptionBudgets.
    pub fn set_pdbs(&self, pdbs: Vec<PdbInfo>) {
        self.inner.lock().pdbs = Arc::new(pdbs);
    }

    /// The number of nodes and pods known.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (
            inner.nodes.values().filter(|n| n.node().is_some()).count(),
            inner.pods.len(),
        )
    }

    /// Whether the cache knows no node and no pod.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// Brings `snapshot` up to date, copying only the nodes that changed.
    pub fn update_snapshot(&self, snapshot: &mut Snapshot) {
        let mut inner = self.inner.lock();
        snapshot.namespaces = inner.namespaces.clone();
        snapshot.image_nodes = inner.image_nodes.clone();
        snapshot.pdbs = inner.pdbs.clone();
        if inner.node_set_changed || snapshot.nodes.is_empty() && !inner.nodes.is_empty() {
            inner.node_set_changed = false;
            inner.dirty.clear();
            let mut nodes: Vec<Arc<NodeInfo>> = inner
                .nodes
                .values()
                .filter(|n| n.node().is_some())
                .cloned()
                .collect();
            nodes.sort_by(|a, b| a.name().cmp(b.name()));
            snapshot.set_nodes(nodes);
            return;
        }
        let mut lists_changed = false;
        let dirty: Vec<String> = inner.dirty.drain().collect();
        for name in dirty {
            let (Some(&i), Some(new)) = (snapshot.index.get(&name), inner.nodes.get(&name)) else {
                continue;
            };
            if let Some(slot) = snapshot.nodes.get_mut(i) {
                if slot.labels() != new.labels() {
                    snapshot.topology = TopologyIndexes::default();
                }
                lists_changed |= slot.pods_with_affinity.is_empty()
                    != new.pods_with_affinity.is_empty()
                    || slot.pods_with_required_anti_affinity.is_empty()
                        != new.pods_with_required_anti_affinity.is_empty();
                *slot = new.clone();
            }
        }
        if lists_changed {
            snapshot.index_affinity();
        }
    }
}

/// The nodes that have one label, grouped by its value (a topology key's domains).
#[derive(Debug, Default)]
pub struct TopologyIndex {
    /// The distinct values (domains).
    pub domains: Vec<Arc<str>>,
    /// Each node with the label: its index in [`Snapshot::nodes`] and its domain's
    /// index in `domains`.
    pub nodes: Vec<(usize, usize)>,
}

type TopologyIndexes = Arc<Mutex<HashMap<String, Arc<TopologyIndex>>>>;

/// The cluster as one scheduling cycle sees it: an immutable list of nodes (with their
/// pods), namespaces' labels, image spread and disruption budgets.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Replaced whenever the list of nodes is rebuilt: per-cycle memos keyed by node
    /// position check it.
    layout: Arc<()>,
    /// Domains per topology key, built on first use and dropped when nodes or their
    /// labels change.
    topology: TopologyIndexes,
    nodes: Vec<Arc<NodeInfo>>,
    index: HashMap<String, usize>,
    with_affinity: Vec<usize>,
    with_required_anti_affinity: Vec<usize>,
    namespaces: Arc<HashMap<String, BTreeMap<String, String>>>,
    image_nodes: Arc<HashMap<String, usize>>,
    pdbs: Arc<Vec<PdbInfo>>,
}

impl Snapshot {
    /// A snapshot of these nodes (for tests and tools).
    pub fn from_nodes(nodes: Vec<NodeInfo>) -> Snapshot {
        let mut s = Snapshot::default();
        let mut images: HashMap<String, usize> = HashMap::new();
        for n in &nodes {
            for i in n.images.keys() {
                *images.entry(i.clone()).or_default() += 1;
            }
        }
        s.image_nodes = Arc::new(images);
        s.set_nodes(nodes.into_iter().map(Arc::new).collect());
        s
    }

    /// The same snapshot with these namespaces' labels.
    pub fn with_namespaces(
        mut self,
        namespaces: HashMap<String, BTreeMap<String, String>>,
    ) -> Self {
        self.namespaces = Arc::new(namespaces);
        self
    }

    /// The same snapshot with these disruption budgets.
    pub fn with_pdbs(mut self, pdbs: Vec<PdbInfo>) -> Self {
        self.pdbs = Arc::new(pdbs);
        self
    }

    /// The nodes with label `key`, by value; computed once per set of nodes.
    pub fn topology_index(&self, key: &str) -> Arc<TopologyIndex> {
        let mut memo = self.topology.lock();
        if let Some(i) = memo.get(key) {
            return i.clone();
        }
        let mut index = TopologyIndex::default();
        let mut by_value: HashMap<&str, usize> = HashMap::new();
        for (ni, n) in self.nodes.iter().enumerate() {
            if let Some((_, v)) = n.label_arc(key) {
                let di = *by_value.entry(v).or_insert_with(|| {
                    index.domains.push(v.clone());
                    index.domains.len() - 1
                });
                index.nodes.push((ni, di));
            }
        }
        let index = Arc::new(index);
        memo.insert(key.to_owned(), index.clone());
        index
    }

    /// A token that changes whenever node positions in [`Snapshot::nodes`] change.
    pub fn layout(&self) -> &Arc<()> {
        &self.layout
    }

    fn set_nodes(&mut self, nodes: Vec<Arc<NodeInfo>>) {
        self.topology = TopologyIndexes::default();
        self.layout = Arc::new(());
        self.index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name().to_owned(), i))
            .collect();
        self.nodes = nodes;
        self.index_affinity();
    }

    fn index_affinity(&mut self) {
        self.with_affinity.clear();
        self.with_required_anti_affinity.clear();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.pods_with_affinity.is_empty() {
                self.with_affinity.push(i);
            }
            if !n.pods_with_required_anti_affinity.is_empty() {
                self.with_required_anti_affinity.push(i);
            }
        }
    }

    /// Every node, in a stable order.
    pub fn nodes(&self) -> &[Arc<NodeInfo>] {
        &self.nodes
    }

    /// A node by name.
    pub fn get(&self, name: &str) -> Option<&Arc<NodeInfo>> {
        self.index.get(name).and_then(|&i| self.nodes.get(i))
    }

    /// The nodes with a pod that has pod affinity or anti-affinity terms.
    pub fn nodes_with_affinity(&self) -> impl Iterator<Item = &Arc<NodeInfo>> {
        self.with_affinity.iter().filter_map(|&i| self.nodes.get(i))
    }

    /// The nodes with a pod that has required anti-affinity terms.
    pub fn nodes_with_required_anti_affinity(&self) -> impl Iterator<Item = &Arc<NodeInfo>> {
        self.with_required_anti_affinity
            .iter()
            .filter_map(|&i| self.nodes.get(i))
    }

    /// A namespace's labels (`None` for a namespace not seen).
    pub fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace)
    }

    /// Every namespace known, with its labels.
    pub fn namespaces(&self) -> &HashMap<String, BTreeMap<String, String>> {
        &self.namespaces
    }

    /// The namespaces, shared.
    pub fn namespaces_arc(&self) -> &Arc<HashMap<String, BTreeMap<String, String>>> {
        &self.namespaces
    }

    /// On how many nodes an image is present.
    pub fn image_node_count(&self, image: &str) -> usize {
        self.image_nodes.get(image).copied().unwrap_or(0)
    }

    /// The disruption budgets.
    pub fn pdbs(&self) -> &[PdbInfo] {
        &self.pdbs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};

    #[test]
    fn assumed_pods_count_until_forgotten_and_confirmations_replace_them() {
        let cache = Cache::new();
        cache.add_or_update_node(Arc::new(node("n1").cpu("4").obj()));
        let mut snap = Snapshot::default();
        cache.update_snapshot(&mut snap);
        assert_eq!(snap.nodes().len(), 1);

        let p = Arc::new(PodInfo::new(Arc::new(pod("p").cpu("1").obj())));
        cache.assume_pod(p.clone(), "n1").expect("assume");
        assert_eq!(
            cache.assume_pod(p.clone(), "n1"),
            Err(CacheError::AlreadyPresent("default/p".into()))
        );
        cache.update_snapshot(&mut snap);
        assert_eq!(snap.get("n1").map(|n| n.requested.milli_cpu), Some(1000));
        assert!(cache.is_assumed(&p.uid));

        cache.forget_pod(&p.uid);
        cache.update_snapshot(&mut snap);
        assert_eq!(snap.get("n1").map(|n| n.requested.milli_cpu), Some(0));

        // Confirmed by the watch: no longer assumed, and forgetting does nothing.
        let bound = Arc::new(PodInfo::new(Arc::new(pod("p").cpu("1").node("n1").obj())));
        cache.assume_pod(p.clone(), "n1").expect("assume again");
        cache.add_or_update_pod(bound.clone());
        assert!(!cache.is_assumed(&p.uid));
        cache.forget_pod(&p.uid);
        cache.update_snapshot(&mut snap);
        assert_eq!(snap.get("n1").map(|n| n.pods.len()), Some(1));
        cache.remove_pod(&p.uid);
        cache.update_snapshot(&mut snap);
        assert_eq!(snap.get("n1").map(|n| n.pods.len()), Some(0));
    }

    #[test]
    fn topology_domains_follow_node_label_changes() {
        let cache = Cache::new();
        cache.add_or_update_node(Arc::new(node("a").label("zone", "z1").obj()));
        cache.add_or_update_node(Arc::new(node("b").label("zone", "z1").obj()));
        cache.add_or_update_node(Arc::new(node("c").obj()));
        let mut snap = Snapshot::default();
        cache.update_snapshot(&mut snap);
        let index = snap.topology_index("zone");
        assert_eq!(index.domains.len(), 1);
        assert_eq!(index.nodes.len(), 2);
        cache.add_or_update_node(Arc::new(node("c").label("zone", "z2").obj()));
        cache.update_snapshot(&mut snap);
        let index = snap.topology_index("zone");
        assert_eq!(index.domains.len(), 2);
        assert_eq!(index.nodes.len(), 3);
    }

    #[test]
    fn pods_on_unknown_nodes_wait_for_the_node() {
        let cache = Cache::new();
        let bound = Arc::new(PodInfo::new(Arc::new(
            pod("p").cpu("1").node("later").obj(),
        )));
        cache.add_or_update_pod(bound);
        let mut snap = Snapshot::default();
        cache.update_snapshot(&mut snap);
        assert!(snap.nodes().is_empty(), "no node object yet");
        cache.add_or_update_node(Arc::new(node("later").cpu("2").obj()));
        cache.update_snapshot(&mut snap);
        assert_eq!(snap.get("later").map(|n| n.requested.milli_cpu), Some(1000));
        cache.remove_node("later");
        cache.update_snapshot(&mut snap);
        assert!(snap.get("later").is_none());
    }
}
