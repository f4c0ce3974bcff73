//! Pods nominated to nodes by preemption: their resources are held there for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::pod_info::PodInfo;

/// Which pods wait for which node (`status.nominatedNodeName`).
#[derive(Default, Debug)]
pub struct Nominator {
    inner: RwLock<Inner>,
    len: AtomicUsize,
}

#[derive(Default, Debug)]
struct Inner {
    by_node: HashMap<String, Vec<Arc<PodInfo>>>,
    by_uid: HashMap<String, String>,
}

impl Nominator {
    /// Nominates `pod` to `node` (replacing an earlier nomination).
    pub fn add(&self, pod: Arc<PodInfo>, node: &str) {
        let mut inner = self.inner.write();
        Self::remove_locked(&mut inner, &pod.uid);
        inner.by_uid.insert(pod.uid.clone(), node.to_owned());
        inner.by_node.entry(node.to_owned()).or_default().push(pod);
        self.len.store(inner.by_uid.len(), Ordering::Relaxed);
    }

    fn remove_locked(inner: &mut Inner, uid: &str) {
        if let Some(node) = inner.by_uid.remove(uid) {
            if let Some(pods) = inner.by_node.get_mut(&node) {
                pods.retain(|p| p.uid != uid);
                if pods.is_empty() {
                    inner.by_node.remove(&node);
                }
            }
        }
    }

    /// Drops a pod's nomination.
    pub fn remove(&self, uid: &str) {
        if self.is_empty() {
            return;
        }
        let mut inner = self.inner.write();
        Self::remove_locked(&mut inner, uid);
        self.len.store(inner.by_uid.len(), Ordering::Relaxed);
    }

    /// Whether no pod is nominated anywhere.
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }

    /// The pods nominated to `node`.
    pub fn pods_on(&self, node: &str) -> Vec<Arc<PodInfo>> {
        if self.is_empty() {
            return Vec::new();
        }
        self.inner
            .read()
            .by_node
            .get(node)
            .cloned()
            .unwrap_or_default()
    }

    /// The node a pod is nominated to.
    pub fn node_of(&self, uid: &str) -> Option<String> {
        self.inner.read().by_uid.get(uid).cloned()
    }
}
