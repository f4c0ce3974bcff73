//! The event recorder: core/v1 Events as `kubectl describe` shows them.
//!
//! Repeats of one event — same object, type, reason, message and reporter — are
//! aggregated into one Event object whose `count` and `lastTimestamp` are updated (a
//! merge patch), as Kubernetes' event correlator does, so `kubectl describe` prints
//! "(x4 over 2m)". The recorder remembers the last 4096 distinct events; an Event that
//! expired on the server (404 on the patch) is created afresh.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use keelson_core::client::{Api, Client, Patch};
use keelson_core::k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use keelson_core::Resource;
use parking_lot::Mutex;
use serde_json::json;

use crate::clock;

/// How many distinct events the recorder remembers for aggregation.
const CACHE_SIZE: usize = 4096;

/// The current time in nanoseconds, made unique within the process: an Event's name is
/// its object's name and this (as Kubernetes names them), and two events in the same
/// nanosecond — common under paused time — must not collide.
fn unique_nanos() -> i128 {
    static LAST: Mutex<i128> = Mutex::new(0);
    let mut last = LAST.lock();
    let now = clock::now().as_nanosecond().max(*last + 1);
    *last = now;
    now
}

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something that may need attention happened.
    Warning,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The `ObjectReference` of an object, for [`Recorder::publish`].
pub fn object_reference<K: Resource>(obj: &K) -> ObjectReference {
    let m = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version().into_owned()),
        kind: Some(K::KIND.to_owned()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        field_path: None,
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    kind: String,
    namespace: String,
    name: String,
    type_: EventType,
    reason: String,
    message: String,
}

#[derive(Default)]
struct Cache {
    seen: HashMap<Key, (String, i32)>,
    order: VecDeque<Key>,
}

/// Publishes Events for one reporting component. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: Arc<str>,
    instance: Arc<str>,
    cache: Arc<Mutex<Cache>>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder for `component` (`deployment-controller`), reporting as `instance`
    /// (a host or pod name).
    pub fn new(client: Client, component: &str, instance: &str) -> Recorder {
        Recorder {
            client,
            component: Arc::from(component),
            instance: Arc::from(instance),
            cache: Arc::new(Mutex::new(Cache::default())),
        }
    }

    /// Publishes an event about `regarding`, aggregated with its earlier repeats.
    ///
    /// # Errors
    /// When the Event can be neither created nor updated.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> keelson_core::Result<()> {
        let namespace = regarding
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_default(),
            kind: regarding.kind.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            name: regarding.name.clone().unwrap_or_default(),
            type_,
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let previous = self.cache.lock().seen.get(&key).cloned();
        let now = clock::now_time();
        if let Some((name, count)) = previous {
            let patch = json!({"count": count + 1, "lastTimestamp": now});
            match api.patch(&name, &Patch::Merge(patch)).await {
                Ok(_) => {
                    if let Some(e) = self.cache.lock().seen.get_mut(&key) {
                        e.1 = count + 1;
                    }
                    return Ok(());
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let name = format!("{}.{:x}", key.name, unique_nanos());
        let event = Event {
            metadata: keelson_core::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..Default::default()
            },
            involved_object: regarding.clone(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(type_.as_str().to_owned()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(self.component.to_string()),
                host: None,
            }),
            reporting_component: Some(self.component.to_string()),
            reporting_instance: Some(self.instance.to_string()),
            ..Default::default()
        };
        api.create(&event).await?;
        let mut cache = self.cache.lock();
        if cache.seen.insert(key.clone(), (name, 1)).is_none() {
            cache.order.push_back(key);
            while cache.order.len() > CACHE_SIZE {
                if let Some(old) = cache.order.pop_front() {
                    cache.seen.remove(&old);
                }
            }
        }
        Ok(())
    }

    /// [`Recorder::publish`] that logs a failure instead of returning it (events are
    /// best-effort for controllers).
    pub async fn emit(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        if let Err(e) = self.publish(regarding, type_, reason, message).await {
            tracing::debug!(reason, error = %e, "could not record an event");
        }
    }
}
