//! Events the agent reports about its pods (source `kubelet`), as `kubectl describe pod`
//! shows them. A failure that repeats (a volume retried every sync) is one Event whose
//! `count` and `lastTimestamp` are brought up to date at most every 10 seconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use keelson_core::client::{Api, Client, Patch};
use keelson_core::k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::json;
use tokio::time::Instant;

use super::lock;
use super::node::{micro_time, time};

/// How often a repeated event's count is written.
const REPEAT_WRITE: Duration = Duration::from_secs(10);

/// At most this many distinct events are remembered for aggregation.
const REMEMBERED: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    pod_uid: String,
    reason: String,
    message: String,
}

#[derive(Debug)]
struct Seen {
    name: String,
    count: u32,
    written_at: Instant,
}

/// The events of one node's pods.
#[derive(Debug)]
pub(crate) struct Events {
    client: Client,
    node: String,
    seen: Mutex<HashMap<Key, Seen>>,
}

impl Events {
    pub(crate) fn new(client: Client, node: String) -> Events {
        Events {
            client,
            node,
            seen: Mutex::default(),
        }
    }

    /// Reports a `Warning` about `pod`. Failures to write it are logged, not returned.
    pub(crate) async fn warning(&self, pod: &Pod, reason: &str, message: &str) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let key = Key {
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        let now = SystemTime::now();
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let repeat = {
            let mut seen = lock(&self.seen);
            match seen.get_mut(&key) {
                Some(s) => {
                    s.count += 1;
                    if s.written_at.elapsed() < REPEAT_WRITE {
                        return;
                    }
                    s.written_at = Instant::now();
                    Some((s.name.clone(), s.count))
                }
                None => None,
            }
        };
        if let Some((name, count)) = repeat {
            let patch = json!({"count": count, "lastTimestamp": time(now)});
            match api.patch(&name, &Patch::Merge(patch)).await {
                Ok(_) => return,
                // Expired on the server: report it afresh.
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::debug!(event = %name, error = %e, "failed to update an event");
                    return;
                }
            }
        }
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let name = format!(
            "{pod_name}.{:x}",
            uuid::Uuid::new_v4().as_u64_pair().0 & 0xffff_ffff_ffff
        );
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod_name,
                "namespace": namespace,
                "uid": pod.metadata.uid,
                "resourceVersion": pod.metadata.resource_version,
            },
            "reason": reason,
            "message": message,
            "type": "Warning",
            "count": 1,
            "firstTimestamp": time(now),
            "lastTimestamp": time(now),
            "eventTime": micro_time(now),
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
        });
        let created = match serde_json::from_value::<Event>(event) {
            Ok(event) => api.create(&event).await,
            Err(e) => {
                tracing::debug!(error = %e, "an event that does not encode");
                return;
            }
        };
        match created {
            Ok(_) => {
                let mut seen = lock(&self.seen);
                if seen.len() >= REMEMBERED {
                    seen.clear();
                }
                seen.insert(
                    key,
                    Seen {
                        name,
                        count: 1,
                        written_at: Instant::now(),
                    },
                );
            }
            Err(e) => tracing::debug!(pod = %pod_name, error = %e, "failed to record an event"),
        }
    }

    /// Forgets the events of a pod that is gone.
    pub(crate) fn forget(&self, pod_uid: &str) {
        lock(&self.seen).retain(|k, _| k.pod_uid != pod_uid);
    }
}
