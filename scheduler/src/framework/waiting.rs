//! Pods that Permit plugins hold before binding.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Status;
use crate::pod_info::PodInfo;

/// A pod held by one or more Permit plugins.
pub struct WaitingPod {
    pod: Arc<PodInfo>,
    node: String,
    inner: Mutex<WaitingInner>,
}

struct WaitingInner {
    pending: BTreeMap<String, Instant>,
    done: Option<oneshot::Sender<Result<(), Status>>>,
}

impl std::fmt::Debug for WaitingPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitingPod")
            .field("pod", &self.pod.key)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl WaitingPod {
    /// The pod.
    pub fn pod(&self) -> &Arc<PodInfo> {
        &self.pod
    }

    /// The node it was assigned.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The plugins still holding it.
    pub fn pending_plugins(&self) -> Vec<String> {
        self.inner.lock().pending.keys().cloned().collect()
    }

    /// `plugin` lets the pod go; it proceeds once no plugin holds it.
    pub fn allow(&self, plugin: &str) {
        let mut inner = self.inner.lock();
        inner.pending.remove(plugin);
        if inner.pending.is_empty() {
            if let Some(tx) = inner.done.take() {
                let _ = tx.send(Ok(()));
            }
        }
    }

    /// `plugin` rejects the pod: it is unreserved and requeued.
    pub fn reject(&self, plugin: &str, reason: &str) {
        if let Some(tx) = self.inner.lock().done.take() {
            let _ = tx.send(Err(
                Status::unschedulable(reason.to_owned()).with_plugin(plugin)
            ));
        }
    }

    fn earliest_deadline(&self) -> Option<(String, Instant)> {
        self.inner
            .lock()
            .pending
            .iter()
            .min_by_key(|(_, d)| **d)
            .map(|(p, d)| (p.clone(), *d))
    }
}

/// The pods Permit plugins hold, by uid. Cloning shares the set.
#[derive(Clone, Default)]
pub struct WaitingPods {
    pods: Arc<Mutex<HashMap<String, Arc<WaitingPod>>>>,
}

impl std::fmt::Debug for WaitingPods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitingPods")
            .field("len", &self.pods.lock().len())
            .finish()
    }
}

impl WaitingPods {
    /// The waiting pod with this uid.
    pub fn get(&self, uid: &str) -> Option<Arc<WaitingPod>> {
        self.pods.lock().get(uid).cloned()
    }

    /// Every waiting pod.
    pub fn all(&self) -> Vec<Arc<WaitingPod>> {
        self.pods.lock().values().cloned().collect()
    }

    /// Holds a pod for `pending` plugins (each with its deadline); returns the receiver
    /// the binding cycle waits on.
    pub(crate) fn hold(
        &self,
        pod: Arc<PodInfo>,
        node: &str,
        pending: BTreeMap<String, Instant>,
    ) -> (Arc<WaitingPod>, oneshot::Receiver<Result<(), Status>>) {
        let (tx, rx) = oneshot::channel();
        let w = Arc::new(WaitingPod {
            pod: pod.clone(),
            node: node.to_owned(),
            inner: Mutex::new(WaitingInner {
                pending,
                done: Some(tx),
            }),
        });
        self.pods.lock().insert(pod.uid.clone(), w.clone());
        (w, rx)
    }

    /// Waits until the pod is allowed, rejected, or its earliest deadline passes.
    pub(crate) async fn wait(
        &self,
        w: &Arc<WaitingPod>,
        rx: oneshot::Receiver<Result<(), Status>>,
    ) -> Result<(), Status> {
        let result = match w.earliest_deadline() {
            None => Ok(()),
            Some((plugin, deadline)) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(Status::error("the waiting pod was dropped")),
                Err(_) => Err(Status::unschedulable(format!(
                    "rejected due to timeout after waiting at plugin {plugin}"
                ))
                .with_plugin(&plugin)),
            },
        };
        self.pods.lock().remove(&w.pod.uid);
        result
    }
}
