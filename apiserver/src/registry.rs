//! The registry: Kubernetes object semantics over a [`Store`], for any served kind, shared
//! by every transport (HTTP and in-process).
//!
//! Objects travel as JSON values in the kind's wire form. In the store, an object is kept
//! without `metadata.resourceVersion`; on the way out, `resourceVersion` is the store
//! revision of the key's version, so it changes with every write, as in Kubernetes.
//!
//! What it does today: names and `generateName`, `uid`, `creationTimestamp`,
//! `resourceVersion`, `generation` (bumped when anything but metadata and status changes),
//! namespaces that must exist and must not be terminating, optimistic concurrency on
//! update, status kept apart for kinds with a `status` subresource, finalizers with
//! `deletionTimestamp`, label and field selectors, pagination, resource-version semantics
//! of get and list, and watches with selector transitions.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use keelson_core::{Error, FieldError, ResourceType};
use keelson_store::{KeyValue, ListOptions, Revision, Store, StoreError};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::admission::{AdmissionChain, AdmissionRequest, Operation};
use crate::allocator::{Allocator, ServiceRanges};
use crate::auth::User;
use crate::cache::{Cache, CachedEvent, Delivery};
use crate::resources::ServedResource;

/// The registry over one store.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    allocator: Allocator,
    caches: Arc<parking_lot::Mutex<std::collections::HashMap<CacheKey, Arc<Cache>>>>,
    admission: Arc<AdmissionChain>,
    /// Who the writes are made for (admission plugins see it).
    user: Arc<User>,
    /// `dryRun=All`: every step of a write but storing it.
    dry_run: bool,
    /// The `fieldManager` writes are recorded for in `managedFields`.
    field_manager: Option<Arc<str>>,
    /// The key service account tokens are signed with (see [`crate::satoken`]).
    sa_tokens: Arc<crate::satoken::ServiceAccountTokens>,
}

pub use keelson_core::client::{
    DeleteOptions, ListParams, ObjectList, PropagationPolicy, Selection, WatchEvent, WatchEventType,
};

/// The grace period a pod's deletion waits, or `None` when it is deleted at once: pods
/// not bound to a node, finished pods, and a grace period of 0 go at once.
fn pod_grace(rt: &ResourceType, obj: &Value, requested: Option<i64>) -> Option<i64> {
    if !(rt.group.is_empty() && rt.kind == "Pod") {
        return None;
    }
    let bound = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        obj.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    let grace = requested
        .or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30)
        .max(0);
    (bound && !finished && grace > 0).then_some(grace)
}

fn store_error(rt: &ResourceType, name: &str, e: StoreError) -> Error {
    match e {
        StoreError::NotFound { .. } => Error::not_found(rt, name),
        StoreError::AlreadyExists { .. } => Error::already_exists(rt, name),
        StoreError::Conflict { .. } => Error::conflict_modified(rt, name),
        StoreError::Compacted {
            requested,
            compacted,
        } => Error::expired(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        StoreError::FutureRevision { requested, current } => Error::timeout(
            format!("Too large resource version: {requested}, current: {current}"),
            Some(1),
        ),
        StoreError::InvalidContinue { reason } => {
            Error::bad_request(format!("invalid continue token: {reason}"))
        }
        StoreError::ValueTooLarge { .. } => Error::request_entity_too_large(e),
        StoreError::InvalidKey { .. } => Error::bad_request(e.to_string()),
        StoreError::Unavailable { .. } => Error::service_unavailable(e.to_string()),
        other => Error::internal(other),
    }
}

fn decode(rt: &ResourceType, kv: &KeyValue) -> Result<Value, Error> {
    decode_stored(rt, &kv.key, &kv.value, kv.mod_revision)
}

/// The object as clients see it: the stored JSON of `key` with its `resourceVersion`.
pub(crate) fn decode_stored(
    rt: &ResourceType,
    key: &str,
    value: &[u8],
    revision: Revision,
) -> Result<Value, Error> {
    let mut obj: Value = serde_json::from_slice(value).map_err(|e| {
        Error::internal(format!(
            "stored {} at {key} does not decode: {e}",
            rt.plural
        ))
    })?;
    set_resource_version(&mut obj, revision);
    // Every version of a kind stores under one key; each reads it as its own version
    // (a CRD's conversion strategy `None`).
    if let Some(map) = obj.as_object_mut() {
        let same = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_some_and(|a| is_api_version(a, rt));
        if !same {
            map.insert("apiVersion".into(), Value::String(rt.api_version()));
        }
    }
    Ok(obj)
}

/// What the namespace check reads of a Namespace (the rest is skipped, not decoded).
#[derive(Deserialize)]
struct NamespaceView {
    #[serde(default)]
    metadata: NamespaceMeta,
    #[serde(default)]
    status: Option<NamespaceStatus>,
}

#[derive(Default, Deserialize)]
struct NamespaceMeta {
    #[serde(default, rename = "deletionTimestamp")]
    deletion_timestamp: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct NamespaceStatus {
    #[serde(default)]
    phase: Option<String>,
}

impl NamespaceView {
    fn terminating(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
            || self.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
    }
}

/// Whether `api_version` is `rt`'s (`v1`, `apps/v1`), without building the string.
pub(crate) fn is_api_version(api_version: &str, rt: &ResourceType) -> bool {
    if rt.group.is_empty() {
        return api_version == rt.version;
    }
    api_version
        .strip_prefix(&*rt.group)
        .and_then(|rest| rest.strip_prefix('/'))
        == Some(&*rt.version)
}

fn set_resource_version(obj: &mut Value, revision: Revision) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

fn encode(obj: &mut Value) -> Result<Bytes, Error> {
    // The version is the store's to say: it is never stored. Every caller sets it again
    // from the write's revision.
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(obj)
        .map(Bytes::from)
        .map_err(Error::internal)
}

fn meta(obj: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    obj.get("metadata")
        .and_then(Value::as_object)
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj)
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, Error> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| Error::bad_request("the object must be a JSON object"))?;
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        return Err(Error::bad_request("metadata must be an object"));
    }
    meta.as_object_mut()
        .ok_or_else(|| Error::bad_request("metadata must be an object"))
}

/// Checks a DNS-1123 subdomain (most object names), with Kubernetes' messages.
pub fn validate_subdomain(value: &str) -> Option<String> {
    const MAX: usize = 253;
    if value.len() > MAX {
        return Some(format!("must be no more than {MAX} characters"));
    }
    let ok = !value.is_empty()
        && value.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
        });
    (!ok).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_owned()
    })
}

/// Checks a DNS-1123 label (namespace names), with Kubernetes' messages.
pub fn validate_label(value: &str) -> Option<String> {
    if value.len() > 63 {
        return Some("must be no more than 63 characters".to_owned());
    }
    let b = value.as_bytes();
    let ok = !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric();
    (!ok).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".to_owned()
    })
}

/// A random suffix for `generateName`, from Kubernetes' alphabet (no vowels, no
/// look-alike characters).
pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The current time, to the second (Kubernetes' timestamps have second precision).
pub fn now() -> k8s_openapi::jiff::Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

fn now_rfc3339() -> String {
    now().to_string()
}

/// Whether anything but metadata and status differs (what bumps `generation`).
fn spec_changed(old: &Value, new: &Value) -> bool {
    const NOT_SPEC: [&str; 4] = ["metadata", "status", "apiVersion", "kind"];
    let empty = Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let differs = |a: &Map<String, Value>, b: &Map<String, Value>| {
        a.iter()
            .filter(|(k, _)| !NOT_SPEC.contains(&k.as_str()))
            .any(|(k, v)| b.get(k) != Some(v))
    };
    differs(old, new) || differs(new, old)
}

/// Whether an update leaves the object as it was, but for its resourceVersion and the
/// managedFields' timestamps: Kubernetes then writes nothing, keeps the version and sends
/// no watch event, so controllers that re-apply what is there do not wake each other up.
/// A change of field ownership alone (another manager applying the same values) is a
/// change.
fn unchanged(old: &Value, new: &Value) -> bool {
    /// Objects alike but for the keys in `ignore`, values compared with `==` or, for
    /// those that differ, with `alike`.
    fn same(
        a: &Value,
        b: &Value,
        ignore: &[&str],
        alike: &dyn Fn(&str, &Value, &Value) -> bool,
    ) -> bool {
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return a == b;
        };
        let kept = |k: &String| !ignore.contains(&k.as_str());
        a.iter()
            .filter(|(k, _)| kept(k))
            .all(|(k, v)| b.get(k).is_some_and(|w| v == w || alike(k, v, w)))
            && b.keys().filter(|k| kept(k)).all(|k| a.contains_key(k))
    }
    let never = |_: &str, _: &Value, _: &Value| false;
    // managedFields entries alike but for their times.
    let same_managed = |a: &Value, b: &Value| match (a.as_array(), b.as_array()) {
        (Some(a), Some(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y, &["time"], &never))
        }
        _ => a == b,
    };
    let same_meta = |a: &Value, b: &Value| {
        same(a, b, &["resourceVersion"], &|k, v, w| {
            k == "managedFields" && same_managed(v, w)
        })
    };
    same(old, new, &[], &|k, v, w| k == "metadata" && same_meta(v, w))
}

fn has_status(res: &ServedResource) -> bool {
    res.subresources.iter().any(|s| s.name == "status")
}

impl Registry {
    /// A registry over `store`.
    pub fn new(store: Arc<dyn Store>) -> Registry {
        Registry::with_service_ranges(store, ServiceRanges::default())
    }

    /// A registry whose Services get cluster IPs and node ports from `ranges`.
    pub fn with_service_ranges(store: Arc<dyn Store>, ranges: ServiceRanges) -> Registry {
        Registry {
            allocator: Allocator::new(store.clone(), ranges),
            store,
            caches: Arc::default(),
            admission: Arc::default(),
            user: Arc::new(User::loopback()),
            dry_run: false,
            field_manager: None,
            sa_tokens: Arc::new(crate::satoken::ServiceAccountTokens::generate()),
        }
    }

    /// The same registry, issuing service account tokens with `keys` (by default a key
    /// made when the registry is, so tokens do not outlive the process).
    #[must_use]
    pub fn with_service_account_tokens(
        mut self,
        keys: Arc<crate::satoken::ServiceAccountTokens>,
    ) -> Registry {
        self.sa_tokens = keys;
        self
    }

    /// The key service account tokens are signed and checked with.
    pub fn service_account_tokens(&self) -> &Arc<crate::satoken::ServiceAccountTokens> {
        &self.sa_tokens
    }

    /// The same registry, recording the fields its writes change as `manager`'s in
    /// `metadata.managedFields` (see [`crate::apply`]).
    #[must_use]
    pub fn with_field_manager(&self, manager: Option<&str>) -> Registry {
        Registry {
            field_manager: manager.filter(|m| !m.is_empty()).map(Arc::from),
            ..self.clone()
        }
    }

    /// Server-side apply: merges `config` into the object as `manager`'s configuration
    /// (creating the object when it does not exist), or refuses with a 409 naming the
    /// fields another manager owns, unless `force`. Returns the object and whether it was
    /// created.
    ///
    /// # Errors
    /// 409 for conflicts; 400 when the configuration names another object; as
    /// [`Registry::create`] and [`Registry::update`].
    pub async fn apply(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
        mut config: Value,
        manager: &str,
        force: bool,
    ) -> Result<(Arc<Value>, bool), Error> {
        let rt = &res.rt;
        check_type(rt, &mut config)?;
        let meta = meta_mut(&mut config)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(Error::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            Some(_) => {}
            None => {
                meta.insert("name".into(), Value::String(name.to_owned()));
            }
        }
        let plain = self.with_field_manager(None);
        for attempt in 0.. {
            let current = match self.get(res, namespace, name).await {
                Ok(c) => Some(c),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            };
            let mut next = crate::apply::apply(res, current.as_ref(), &config, manager, force)?;
            let written = match &current {
                None => plain.create(res, namespace, next).await.map(|o| (o, true)),
                Some(current) => {
                    if let (Some(rv), Some(m)) = (
                        current.pointer("/metadata/resourceVersion").cloned(),
                        next.get_mut("metadata").and_then(Value::as_object_mut),
                    ) {
                        m.insert("resourceVersion".into(), rv);
                    }
                    plain
                        .update_in_mode(res, namespace, name, next, UpdateMode::Object)
                        .await
                        .map(|o| (o, false))
                }
            };
            match written {
                Err(e) if (e.is_conflict() || e.is_already_exists()) && attempt < 5 => continue,
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    /// The same registry, with writes that do everything (defaulting, admission,
    /// validation, conflict checks) but store nothing (`dryRun=All`): each returns the
    /// object it would have written, without a new `resourceVersion`.
    #[must_use]
    pub fn with_dry_run(&self, dry_run: bool) -> Registry {
        Registry {
            dry_run,
            ..self.clone()
        }
    }

    /// The same registry (sharing its store, caches and plugins), writing on behalf of
    /// `user`: admission plugins see who asks. A registry made by [`Registry::new`] writes
    /// as [`User::loopback`].
    #[must_use]
    pub fn as_user(&self, user: User) -> Registry {
        Registry {
            user: Arc::new(user),
            ..self.clone()
        }
    }

    /// Who this registry writes for.
    pub fn user(&self) -> &User {
        &self.user
    }

    /// The same registry, with every write passing `chain` (see [`crate::admission`]).
    #[must_use]
    pub fn with_admission(mut self, chain: AdmissionChain) -> Registry {
        self.admission = Arc::new(chain);
        self
    }

    /// Compacts the store's history every `interval`, to the revision it had one interval
    /// before — so watchers and paginated lists keep at least one interval of history,
    /// and memory does not grow with every write ever made. Kubernetes' apiserver does the
    /// same every 5 minutes. The task stops when the returned handle is aborted or the
    /// store fails.
    pub fn start_compactor(&self, interval: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut previous: Option<Revision> = None;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let current = match store.current_revision().await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "the compactor stops: the store is unavailable");
                        return;
                    }
                };
                if let Some(target) = previous.filter(|r| *r > 0) {
                    match store.compact(target).await {
                        Ok(()) => {
                            tracing::debug!(revision = target, "compacted the store's history")
                        }
                        Err(e) => tracing::warn!(error = %e, "could not compact the store"),
                    }
                }
                previous = Some(current);
            }
        })
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Refuses writes into a namespace that does not exist or is being deleted.
    async fn check_namespace(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
    ) -> Result<(), Error> {
        let Some(ns) = namespace.filter(|_| res.rt.is_namespaced()) else {
            return Ok(());
        };
        // As Kubernetes' NamespaceLifecycle admission: the namespace as the cache has it,
        // and a read of the store only when the cache does not have it (yet).
        static NAMESPACES: std::sync::OnceLock<ResourceType> = std::sync::OnceLock::new();
        let ns_rt =
            NAMESPACES.get_or_init(ResourceType::of::<k8s_openapi::api::core::v1::Namespace>);
        let key = ns_rt.key(None, ns)?;
        let cached = self.cache_for(ns_rt)?.lookup_as::<NamespaceView>(&key);
        let view = match cached {
            Some(view) => view,
            None => {
                let obj = self.get_shared_rt(ns_rt, None, ns).await?;
                NamespaceView::deserialize(&*obj)
                    .map_err(|e| Error::internal(format!("namespace {ns} does not decode: {e}")))?
            }
        };
        if view.terminating() {
            return Err(Error::forbidden(
                &res.rt,
                ns,
                format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            ));
        }
        Ok(())
    }

    /// Creates an object (POST). `namespace` comes from the URL.
    ///
    /// # Errors
    /// 400 for a malformed object or a namespace that does not match the URL; 404 when
    /// the namespace does not exist; 403 when it is terminating; 409 when the name is
    /// taken; 422 for an invalid name.
    pub async fn create(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        mut obj: Value,
    ) -> Result<Arc<Value>, Error> {
        if let Some(view) = &res.view {
            let stored =
                Box::pin(self.create(&view.storage, namespace, (view.to_storage)(obj))).await?;
            return Ok(Arc::new((view.from_storage)((*stored).clone())));
        }
        let rt = &res.rt;
        check_type(rt, &mut obj)?;
        crate::defaults::apply(&rt.group, &rt.kind, &mut obj);
        crate::defaults::on_create(&rt.group, &rt.kind, &mut obj);
        if is_namespace(&obj) {
            add_namespace_finalizer(&mut obj);
        }
        if res.validate_values {
            res.validator().apply_defaults(&mut obj);
        }
        let meta = meta_mut(&mut obj)?;
        let body_ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let namespace = match (rt.is_namespaced(), namespace, body_ns) {
            (false, _, _) => {
                meta.remove("namespace");
                None
            }
            (true, Some(url), Some(body)) if url != body => {
                return Err(Error::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            (true, Some(url), _) => Some(url.to_owned()),
            (true, None, Some(body)) => Some(body),
            (true, None, None) => Some("default".to_owned()),
        };
        if let Some(ns) = &namespace {
            meta.insert("namespace".into(), Value::String(ns.clone()));
        }
        let mut generated_name = false;
        let name = match meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(name) => name.to_owned(),
            None => match meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                Some(prefix) => {
                    generated_name = true;
                    format!("{prefix}{}", random_suffix())
                }
                None => {
                    return Err(Error::invalid(
                        rt,
                        "",
                        vec![FieldError::required(
                            "metadata.name",
                            "name or generateName is required",
                        )],
                    ));
                }
            },
        };
        let problem = if rt.plural == "namespaces" {
            validate_label(&name)
        } else {
            validate_subdomain(&name)
        };
        if let Some(detail) = problem {
            return Err(Error::invalid(
                rt,
                name.as_str(),
                vec![FieldError::invalid("metadata.name", name.as_str(), &detail)],
            ));
        }
        meta.insert("name".into(), Value::String(name.clone()));
        meta.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(field);
        }
        initial_status(res, &mut obj);
        if rt.group == "batch" && rt.kind == "Job" {
            crate::defaults::job_selector(&mut obj);
        }
        if let Some(manager) = &self.field_manager {
            crate::apply::record_update(res, None, &mut obj, manager, "");
        }
        let request = AdmissionRequest {
            operation: Operation::Create,
            user: &self.user,
            resource: rt,
            namespace: namespace.as_deref(),
            name: &name,
            old: None,
            status_only: false,
        };
        // As kube-apiserver's NamespaceLifecycle, the first of its admission plugins.
        self.check_namespace(res, namespace.as_deref()).await?;
        self.admission.run_mutating(&request, &mut obj).await?;
        check_required(res, &name, &obj)?;
        self.admission.run_validating(&request, &obj).await?;
        let key = rt.key(namespace.as_deref(), &name)?;
        if self.dry_run {
            // Nothing is stored or allocated; a taken name is still refused.
            let taken = self
                .store
                .get(&key)
                .await
                .map_err(|e| store_error(rt, &name, e))?;
            if taken.is_some() {
                return Err(Error::already_exists(rt, name.as_str()));
            }
            return Ok(Arc::new(obj));
        }
        let service = is_service(rt);
        if service {
            self.allocator.allocate(rt, &mut obj).await?;
        }
        let generated = meta_str(&obj, "generateName")
            .map(str::to_owned)
            .filter(|_| generated_name);
        let mut key = key;
        let mut name = name;
        let mut attempts = 0;
        let created = loop {
            let result = match encode(&mut obj) {
                Ok(value) => self
                    .store
                    .create(&key, value)
                    .await
                    .map_err(|e| store_error(rt, &name, e)),
                Err(e) => Err(e),
            };
            // A generated name that is taken gets another try with a new suffix, as
            // Kubernetes does.
            match (&result, &generated) {
                (Err(e), Some(prefix)) if e.is_already_exists() && attempts < 8 => {
                    attempts += 1;
                    name = format!("{prefix}{}", random_suffix());
                    key = rt.key(namespace.as_deref(), &name)?;
                    meta_mut(&mut obj)?.insert("name".into(), Value::String(name.clone()));
                }
                _ => break result,
            }
        };
        let kv = match created {
            Ok(kv) => kv,
            Err(e) => {
                if service {
                    let _ = self.allocator.release(&obj).await;
                }
                return Err(e);
            }
        };
        set_resource_version(&mut obj, kv.mod_revision);
        Ok(self.offer(rt, kv.mod_revision, obj))
    }

    /// Hands a just-written object to the kind's watch cache, so that its event needs no
    /// decoding, and returns it shared.
    fn offer(&self, rt: &ResourceType, revision: Revision, obj: Value) -> Arc<Value> {
        let obj = Arc::new(obj);
        let running = self.caches.lock().get(&cache_key(rt)).cloned();
        if let Some(cache) = running {
            cache.offer(revision, &obj);
        }
        obj
    }

    /// Reads one object.
    ///
    /// # Errors
    /// 404 when it does not exist.
    pub async fn get(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, Error> {
        if let Some(view) = &res.view {
            let stored = Box::pin(self.get(&view.storage, namespace, name)).await?;
            return Ok((view.from_storage)(stored));
        }
        let rt = &res.rt;
        let key = rt.key(namespace, name)?;
        let kv = self
            .store
            .get(&key)
            .await
            .map_err(|e| store_error(rt, name, e))?;
        decode(rt, &kv.ok_or_else(|| Error::not_found(rt, name))?)
    }

    /// Reads one object, from the watch cache when it has caught up with the store (no
    /// decoding, the object shared), else from the store.
    ///
    /// # Errors
    /// 404 when it does not exist.
    pub async fn get_shared(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, Error> {
        if let Some(view) = &res.view {
            let stored = self
                .get_shared_rt(&view.storage.rt, namespace, name)
                .await?;
            return Ok(Arc::new((view.from_storage)((*stored).clone())));
        }
        self.get_shared_rt(&res.rt, namespace, name).await
    }

    /// As [`Registry::get_shared`], the object's JSON, copied from the watch cache's stored
    /// bytes when the cache has caught up with the store.
    ///
    /// # Errors
    /// 404 when it does not exist.
    pub async fn get_json(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Vec<u8>, Error> {
        let rt = &res.rt;
        if res.view.is_none() {
            let key = rt.key(namespace, name)?;
            let cache = self.cache_for(rt)?;
            let current = self
                .store
                .current_revision()
                .await
                .map_err(|e| store_error(rt, name, e))?;
            if let Some(found) = cache.lookup_json_if_current(&key, current) {
                return found.ok_or_else(|| Error::not_found(rt, name));
            }
            // The cache is behind: the store's version, without asking the cache again.
            let obj = decode(rt, &self.get_kv(rt, &key, name).await?)?;
            return serde_json::to_vec(&obj).map_err(Error::internal);
        }
        let obj = self.get_shared(res, namespace, name).await?;
        serde_json::to_vec(&*obj).map_err(Error::internal)
    }

    async fn get_shared_rt(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, Error> {
        let key = rt.key(namespace, name)?;
        let cache = self.cache_for(rt)?;
        let current = self
            .store
            .current_revision()
            .await
            .map_err(|e| store_error(rt, name, e))?;
        match cache.lookup_if_current(&key, current) {
            Some(found) => found.ok_or_else(|| Error::not_found(rt, name)),
            None => {
                let kv = self.get_kv(rt, &key, name).await?;
                decode(rt, &kv).map(Arc::new)
            }
        }
    }

    /// The fields `T` reads of an object, from the kind's watch cache as it is now (no
    /// store read; possibly a little behind). `None` when the cache does not have it
    /// (absent, or the cache not ready yet).
    pub(crate) fn cached_as<T: serde::de::DeserializeOwned>(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Option<T>, Error> {
        let key = rt.key(Some(namespace).filter(|_| rt.is_namespaced()), name)?;
        Ok(self.cache_for(rt)?.lookup_as::<T>(&key))
    }

    /// The fields `T` reads of an object, from the store; `None` when it does not exist.
    pub(crate) async fn read_as<T: serde::de::DeserializeOwned>(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Option<T>, Error> {
        let key = rt.key(Some(namespace).filter(|_| rt.is_namespaced()), name)?;
        let Some(kv) = self
            .store
            .get(&key)
            .await
            .map_err(|e| store_error(rt, name, e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&kv.value).map(Some).map_err(|e| {
            Error::internal(format!(
                "stored {} at {key} does not decode: {e}",
                rt.plural
            ))
        })
    }

    async fn get_kv(&self, rt: &ResourceType, key: &str, name: &str) -> Result<KeyValue, Error> {
        self.store
            .get(key)
            .await
            .map_err(|e| store_error(rt, name, e))?
            .ok_or_else(|| Error::not_found(rt, name))
    }

    /// Replaces an object (PUT), or only its status (`status_only`, the `/status`
    /// subresource). A `resourceVersion` in the body must be the current one.
    ///
    /// # Errors
    /// 404, 409 on a stale `resourceVersion`, 400 when the body names another object.
    pub async fn update(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
        status_only: bool,
    ) -> Result<Arc<Value>, Error> {
        let mode = if status_only {
            UpdateMode::Status
        } else {
            UpdateMode::Object
        };
        self.update_in_mode(res, namespace, name, obj, mode).await
    }

    /// [`Registry::update`] in any [`UpdateMode`].
    pub(crate) async fn update_in_mode(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
        mode: UpdateMode,
    ) -> Result<Arc<Value>, Error> {
        self.update_after_read(res, namespace, name, obj, mode, None)
            .await
    }

    /// [`Registry::update_in_mode`], given the stored version already read (and decoded)
    /// by the caller, as a patch has it.
    async fn update_after_read(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
        mut obj: Value,
        mode: UpdateMode,
        read: Option<(KeyValue, Value)>,
    ) -> Result<Arc<Value>, Error> {
        if let Some(view) = &res.view {
            let stored = Box::pin(self.update_in_mode(
                &view.storage,
                namespace,
                name,
                (view.to_storage)(obj),
                mode,
            ))
            .await?;
            return Ok(Arc::new((view.from_storage)((*stored).clone())));
        }
        let status_only = mode == UpdateMode::Status;
        let rt = &res.rt;
        check_type(rt, &mut obj)?;
        let key = rt.key(namespace, name)?;
        let (current_kv, current) = match read {
            Some(read) => read,
            None => {
                let kv = self.get_kv(rt, &key, name).await?;
                let current = decode(rt, &kv)?;
                (kv, current)
            }
        };
        let body_meta = meta_mut(&mut obj)?;
        if let Some(body_name) = body_meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            if body_name != name {
                return Err(Error::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
        }
        let expected = match body_meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(rv) => rv
                .parse::<Revision>()
                .map_err(|_| Error::bad_request(format!("invalid resourceVersion {rv:?}")))?,
            None => current_kv.mod_revision,
        };
        if expected != current_kv.mod_revision {
            return Err(Error::conflict_modified(rt, name));
        }
        let next = if status_only {
            // Only the status changes.
            let mut next = current.clone();
            if let (Some(map), Some(status)) = (next.as_object_mut(), obj.get("status")) {
                map.insert("status".into(), status.clone());
            }
            next
        } else {
            let mut next = obj;
            crate::defaults::apply(&rt.group, &rt.kind, &mut next);
            if res.validate_values {
                res.validator().apply_defaults(&mut next);
            }
            if is_service(rt) {
                keep_service_allocations(rt, &current, &mut next)?;
            }
            // What the server owns stays as it was.
            let old_meta = meta(&current).clone();
            let new_meta = meta_mut(&mut next)?;
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_meta.get(field) {
                    Some(v) => new_meta.insert(field.into(), v.clone()),
                    None => new_meta.remove(field),
                };
            }
            if has_status(res) && mode == UpdateMode::Object {
                if let Some(map) = next.as_object_mut() {
                    match current.get("status") {
                        Some(status) => map.insert("status".into(), status.clone()),
                        None => map.remove("status"),
                    };
                }
            }
            if mode == UpdateMode::Object {
                let causes = crate::validation::immutable_fields(rt, &current, &next);
                if !causes.is_empty() {
                    return Err(Error::invalid(rt, name, causes));
                }
            }
            if spec_changed(&current, &next) {
                let generation = old_meta
                    .get("generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    + 1;
                meta_mut(&mut next)?.insert("generation".into(), json!(generation));
            }
            next
        };
        let mut next = next;
        if let Some(manager) = &self.field_manager {
            let subresource = if status_only { "status" } else { "" };
            crate::apply::record_update(res, Some(&current), &mut next, manager, subresource);
        }
        let request = AdmissionRequest {
            operation: Operation::Update,
            user: &self.user,
            resource: rt,
            namespace,
            name,
            old: Some(&current),
            status_only,
        };
        self.admission.run_mutating(&request, &mut next).await?;
        if !status_only {
            check_required(res, name, &next)?;
        }
        self.admission.run_validating(&request, &next).await?;
        if self.dry_run {
            set_resource_version(&mut next, current_kv.mod_revision);
            return Ok(Arc::new(next));
        }
        if unchanged(&current, &next) {
            let mut current = current;
            set_resource_version(&mut current, current_kv.mod_revision);
            return Ok(Arc::new(current));
        }
        let kv = self
            .store
            .update(&key, encode(&mut next)?, current_kv.mod_revision)
            .await
            .map_err(|e| store_error(rt, name, e))?;
        set_resource_version(&mut next, kv.mod_revision);
        // An object whose deletion waits only on finalizers goes once they are gone.
        if meta_str(&next, "deletionTimestamp").is_some() && finalizers(&next).is_empty() {
            return self.remove(rt, &key, name, kv.mod_revision).await;
        }
        Ok(self.offer(rt, kv.mod_revision, next))
    }

    /// Writes `next` over version `revision` of an object, for a subresource whose change
    /// the server itself makes (a pod's binding): admission sees the update, but the
    /// object is not defaulted or validated again, as Kubernetes' binding storage writes
    /// it. 409 when the object changed after `revision`.
    pub(crate) async fn replace_as_server(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
        current: &Value,
        mut next: Value,
        revision: Revision,
    ) -> Result<Arc<Value>, Error> {
        let rt = &res.rt;
        let key = rt.key(namespace, name)?;
        let request = AdmissionRequest {
            operation: Operation::Update,
            user: &self.user,
            resource: rt,
            namespace,
            name,
            old: Some(current),
            status_only: false,
        };
        self.admission.run_mutating(&request, &mut next).await?;
        self.admission.run_validating(&request, &next).await?;
        if self.dry_run {
            set_resource_version(&mut next, revision);
            return Ok(Arc::new(next));
        }
        let kv = self
            .store
            .update(&key, encode(&mut next)?, revision)
            .await
            .map_err(|e| store_error(rt, name, e))?;
        set_resource_version(&mut next, kv.mod_revision);
        Ok(self.offer(rt, kv.mod_revision, next))
    }

    async fn remove(
        &self,
        rt: &ResourceType,
        key: &str,
        name: &str,
        expected: Revision,
    ) -> Result<Arc<Value>, Error> {
        let d = self
            .store
            .delete(key, Some(expected))
            .await
            .map_err(|e| store_error(rt, name, e))?;
        let mut obj = decode(rt, &d.prev)?;
        set_resource_version(&mut obj, d.revision);
        if is_service(rt) {
            if let Err(e) = self.allocator.release(&obj).await {
                tracing::warn!(service = name, error = %e, "could not release the service's address and ports");
            }
        }
        Ok(Arc::new(obj))
    }

    /// Deletes an object. With finalizers, it only gets its `deletionTimestamp` and goes
    /// when the last finalizer is removed. A pod bound to a node is deleted gracefully: it
    /// gets a `deletionTimestamp` its grace period ahead, and its node agent removes it
    /// (or a delete with a grace period of 0 does).
    ///
    /// # Errors
    /// 404; 409 when a precondition fails.
    pub async fn delete(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Arc<Value>, Error> {
        if let Some(view) = &res.view {
            let stored = Box::pin(self.delete(&view.storage, namespace, name, options)).await?;
            return Ok(Arc::new((view.from_storage)((*stored).clone())));
        }
        let rt = &res.rt;
        let key = rt.key(namespace, name)?;
        let kv = self.get_kv(rt, &key, name).await?;
        let mut obj = decode(rt, &kv)?;
        if let Some(uid) = &options.uid {
            let actual = meta_str(&obj, "uid").unwrap_or_default();
            if actual != uid {
                let detail = format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                );
                return Err(Error::conflict(rt, name, detail));
            }
        }
        if let Some(rv) = &options.resource_version {
            if *rv != kv.mod_revision.to_string() {
                let detail = format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    kv.mod_revision
                );
                return Err(Error::conflict(rt, name, detail));
            }
        }
        let request = AdmissionRequest {
            operation: Operation::Delete,
            user: &self.user,
            resource: rt,
            namespace,
            name,
            old: Some(&obj),
            status_only: false,
        };
        self.admission.run_validating(&request, &obj).await?;
        let grace = pod_grace(rt, &obj, options.grace_period_seconds);
        let dry_run = self.dry_run || options.dry_run;
        // Foreground and orphan deletion are the garbage collector's to finish: the
        // object stays, marked, until it removes the finalizer.
        let finalizer = match options.propagation_policy {
            Some(PropagationPolicy::Foreground) => Some("foregroundDeletion"),
            Some(PropagationPolicy::Orphan) => Some("orphan"),
            _ => None,
        };
        let mut marked = false;
        if let Some(f) = finalizer {
            if !finalizers(&obj).iter().any(|x| x == f) {
                let m = meta_mut(&mut obj)?;
                let list = m.entry("finalizers").or_insert_with(|| json!([]));
                if let Value::Array(list) = list {
                    list.push(json!(f));
                } else {
                    *list = json!([f]);
                }
                marked = true;
            }
        }
        if finalizers(&obj).is_empty() && grace.is_none() {
            if dry_run {
                return Ok(Arc::new(obj));
            }
            return self.remove(rt, &key, name, kv.mod_revision).await;
        }
        let grace = grace.unwrap_or(0);
        let current = meta(&obj)
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        // A deletion already under way only ever gets shorter.
        let starts_or_shortens =
            meta_str(&obj, "deletionTimestamp").is_none() || current.is_some_and(|c| grace < c);
        if starts_or_shortens || marked {
            if starts_or_shortens {
                let at = now().as_second().saturating_add(grace);
                let at = k8s_openapi::jiff::Timestamp::from_second(at)
                    .unwrap_or_else(|_| now())
                    .to_string();
                let m = meta_mut(&mut obj)?;
                m.insert("deletionTimestamp".into(), Value::String(at));
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                if is_namespace(&obj) {
                    obj["status"]["phase"] = json!("Terminating");
                }
            }
            if dry_run {
                return Ok(Arc::new(obj));
            }
            let kv = self
                .store
                .update(&key, encode(&mut obj)?, kv.mod_revision)
                .await
                .map_err(|e| store_error(rt, name, e))?;
            set_resource_version(&mut obj, kv.mod_revision);
            return Ok(self.offer(rt, kv.mod_revision, obj));
        }
        Ok(Arc::new(obj))
    }

    /// A Namespace's `finalize` subresource: sets its `spec.finalizers` from `body` and
    /// nothing else. The namespace controller removes `kubernetes` this way once the
    /// namespace is empty; a deleted namespace with no finalizer left goes.
    ///
    /// # Errors
    /// 404; 400 when `spec.finalizers` is not a list of strings.
    pub async fn finalize(
        &self,
        res: &ServedResource,
        name: &str,
        body: &Value,
    ) -> Result<Arc<Value>, Error> {
        let finalizers = body
            .pointer("/spec/finalizers")
            .cloned()
            .unwrap_or_else(|| json!([]));
        let strings = finalizers
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string));
        if !strings {
            return Err(Error::bad_request(
                "spec.finalizers must be a list of strings",
            ));
        }
        let patch = json!({ "spec": { "finalizers": finalizers } });
        self.patch(
            res,
            None,
            name,
            crate::patch::PatchType::Merge,
            &patch,
            false,
        )
        .await
    }

    /// Patches an object (or, with `status_only`, its status), retrying when another
    /// writer gets in between, unless the patch itself names a `resourceVersion`.
    ///
    /// # Errors
    /// As [`Registry::update`], plus the patch's own errors (400, 422).
    pub async fn patch(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        name: &str,
        patch_type: crate::patch::PatchType,
        patch: &Value,
        status_only: bool,
    ) -> Result<Arc<Value>, Error> {
        let pinned = patch.pointer("/metadata/resourceVersion").is_some();
        let mode = if status_only {
            UpdateMode::Status
        } else {
            UpdateMode::Object
        };
        let mut attempts = 0;
        loop {
            let written = if res.view.is_some() {
                let mut object = self.get(res, namespace, name).await?;
                patch_type.apply(res, &mut object, patch)?;
                self.update_in_mode(res, namespace, name, object, mode)
                    .await
            } else {
                // The version read is the one the update checks against: read and
                // decode it once.
                let rt = &res.rt;
                let kv = self.get_kv(rt, &rt.key(namespace, name)?, name).await?;
                let current = decode(rt, &kv)?;
                let mut object = current.clone();
                patch_type.apply(res, &mut object, patch)?;
                self.update_after_read(res, namespace, name, object, mode, Some((kv, current)))
                    .await
            };
            match written {
                Err(e) if e.is_conflict() && !pinned && attempts < 5 => attempts += 1,
                other => return other,
            }
        }
    }

    /// Lists objects.
    ///
    /// # Errors
    /// 410 for a compacted or expired continue token or resource version; 400 for a bad
    /// token.
    pub async fn list(
        &self,
        res: &ServedResource,
        params: &ListParams,
    ) -> Result<ObjectList, Error> {
        if let Some(view) = &res.view {
            let mut list = Box::pin(self.list(&view.storage, params)).await?;
            list.items = list
                .items
                .into_iter()
                .map(|o| Arc::new((view.from_storage)((*o).clone())))
                .collect();
            return Ok(list);
        }
        let rt = &res.rt;
        if from_cache(params) {
            let cache = self
                .cache_at(res, params.resource_version.as_deref())
                .await?;
            let snapshot = cache.snapshot(params.selection.namespace.as_deref())?;
            let resource_version = snapshot.revision.to_string();
            return Ok(ObjectList {
                items: snapshot
                    .objects()
                    .filter(|o| params.selection.matches(rt, o))
                    .collect(),
                resource_version,
                continue_token: None,
                remaining: None,
            });
        }
        let prefix = rt.prefix(params.selection.namespace.as_deref())?;
        let mut revision = match (&params.resource_version, params.exact) {
            (Some(rv), true) => Some(parse_rv(rv)?),
            _ => None,
        };
        let mut token = params.continue_token.clone().filter(|t| !t.is_empty());
        let mut out = ObjectList {
            items: Vec::new(),
            resource_version: String::new(),
            continue_token: None,
            remaining: None,
        };
        loop {
            let want = if params.limit == 0 {
                None
            } else {
                Some(params.limit - out.items.len())
            };
            let page = self
                .store
                .list(&prefix, ListOptions { revision, limit: want, continue_token: token.take() })
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } if params.continue_token.is_some() => Error::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                    ),
                    other => store_error(rt, "", other),
                })?;
            out.resource_version = page.revision.to_string();
            revision = Some(page.revision);
            let filtered = page.remaining.is_some() && !params.selection.is_everything();
            for kv in &page.items {
                let obj = decode(rt, kv)?;
                if params.selection.matches(rt, &obj) {
                    out.items.push(Arc::new(obj));
                }
            }
            match page.continue_token {
                Some(t) if params.limit > 0 && out.items.len() < params.limit => token = Some(t),
                Some(t) => {
                    out.continue_token = Some(t);
                    out.remaining = if filtered {
                        None
                    } else {
                        page.remaining.map(|r| r as i64)
                    };
                    break;
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// A whole list as JSON, copied from the watch cache's stored bytes: the items of a
    /// `<Kind>List`, separated by commas, and the list's resource version. `None` when the
    /// list is not served from the cache (pages, exact versions, kinds stored as another).
    ///
    /// # Errors
    /// As [`Registry::list`].
    pub async fn list_json(
        &self,
        res: &ServedResource,
        params: &ListParams,
    ) -> Result<Option<(Vec<u8>, String)>, Error> {
        if res.view.is_some() || !from_cache(params) {
            return Ok(None);
        }
        let cache = self
            .cache_at(res, params.resource_version.as_deref())
            .await?;
        let snapshot = cache.snapshot(params.selection.namespace.as_deref())?;
        let mut items = Vec::with_capacity(snapshot.len() * 1024);
        let select = |o: &Value| params.selection.matches(&res.rt, o);
        let select: Option<&dyn Fn(&Value) -> bool> =
            (!params.selection.is_everything()).then_some(&select);
        snapshot.write_json(select, &mut items);
        Ok(Some((items, snapshot.revision.to_string())))
    }

    /// The watch cache of a resource type, started on first use.
    fn cache(&self, res: &ServedResource) -> Result<Arc<Cache>, Error> {
        self.cache_for(&res.rt)
    }

    fn cache_for(&self, rt: &ResourceType) -> Result<Arc<Cache>, Error> {
        let mut caches = self.caches.lock();
        let key = cache_key(rt);
        if let Some(c) = caches.get(&key) {
            return Ok(c.clone());
        }
        let cache = Cache::start(self.store.clone(), rt.clone())?;
        caches.insert(key, cache.clone());
        Ok(cache)
    }

    /// Waits until the cache has caught up with `resource_version` (`None`: with the
    /// store's current revision, for a consistent read; `"0"`: any state).
    async fn cache_at(
        &self,
        res: &ServedResource,
        resource_version: Option<&str>,
    ) -> Result<Arc<Cache>, Error> {
        let cache = self.cache(res)?;
        let target = match resource_version {
            None | Some("") => self
                .store
                .current_revision()
                .await
                .map_err(|e| store_error(&res.rt, "", e))?,
            Some("0") => 0,
            Some(rv) => parse_rv(rv)?,
        };
        if cache.wait_for(target, CATCH_UP).await.is_ok() {
            return Ok(cache);
        }
        // The cache is behind the store; often only because nothing under its prefix has
        // changed since its last event (writes went to other kinds). Ask the store what
        // changed after what the cache has seen: events up to the target must reach the
        // cache first; if there are none, the cache is current as of the target.
        let prefix = res.rt.prefix(None)?;
        let deadline = tokio::time::Instant::now() + CACHE_WAIT;
        loop {
            let seen = cache.revision();
            if seen >= target {
                return Ok(cache);
            }
            let mut changes = self
                .store
                .watch(&prefix, seen)
                .await
                .map_err(|e| store_error(&res.rt, "", e))?;
            let first = tokio::time::timeout(PROBE, changes.next()).await;
            match first {
                Ok(Some(Ok(e))) if e.revision() <= target => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    cache.wait_for(e.revision(), left).await?;
                }
                Ok(Some(Err(e))) => return Err(store_error(&res.rt, "", e)),
                _ => {
                    cache.advance(target);
                    return Ok(cache);
                }
            }
        }
    }

    /// Watches objects after `resource_version` (`None` or `"0"`: first an ADDED event for
    /// every existing object, then changes), from the resource's watch cache. Ends with an
    /// in-stream `ERROR` event (410 Expired) when the version is too old or the cache had to
    /// re-list.
    ///
    /// # Errors
    /// 400 for a malformed resource version; 504 when the cache does not reach it in time.
    pub async fn watch(
        &self,
        res: &ServedResource,
        selection: Selection,
        resource_version: Option<&str>,
        send_initial_events: bool,
    ) -> Result<impl Stream<Item = WatchEvent> + Send + 'static, Error> {
        self.watch_with_bookmarks(res, selection, resource_version, send_initial_events, None)
            .await
    }

    /// [`Registry::watch`], sending a BOOKMARK with the latest revision the watcher has
    /// been through every `bookmark_every` when there has been a change since the last one
    /// (`allowWatchBookmarks`).
    ///
    /// # Errors
    /// As [`Registry::watch`].
    pub async fn watch_with_bookmarks(
        &self,
        res: &ServedResource,
        selection: Selection,
        resource_version: Option<&str>,
        send_initial_events: bool,
        bookmark_every: Option<std::time::Duration>,
    ) -> Result<impl Stream<Item = WatchEvent> + Send + 'static, Error> {
        let Some(view) = res.view.clone() else {
            return self
                .watch_stored(
                    res,
                    selection,
                    resource_version,
                    send_initial_events,
                    bookmark_every,
                )
                .await;
        };
        let events = self
            .watch_stored(
                &view.storage,
                selection,
                resource_version,
                send_initial_events,
                bookmark_every,
            )
            .await?;
        Ok(events
            .map(move |e| match e.kind {
                WatchEventType::Error => e,
                kind => WatchEvent {
                    kind,
                    object: Arc::new((view.from_storage)((*e.object).clone())),
                },
            })
            .boxed())
    }

    async fn watch_stored(
        &self,
        res: &ServedResource,
        selection: Selection,
        resource_version: Option<&str>,
        send_initial_events: bool,
        bookmark_every: Option<std::time::Duration>,
    ) -> Result<futures::stream::BoxStream<'static, WatchEvent>, Error> {
        let rt = res.rt.clone();
        let rv = resource_version.filter(|rv| !rv.is_empty() && *rv != "0");
        let mut head: Vec<WatchEvent> = Vec::new();
        let sub = if rv.is_none() || send_initial_events {
            let cache = self.cache_at(res, resource_version).await?;
            let (snapshot, sub) = cache.snapshot_and_subscribe(selection.namespace.as_deref())?;
            head.extend(
                snapshot
                    .objects()
                    .filter(|o| selection.matches(&rt, o))
                    .map(|object| WatchEvent {
                        kind: WatchEventType::Added,
                        object,
                    }),
            );
            if send_initial_events {
                head.push(bookmark(&rt, sub.revision, true));
            }
            sub
        } else {
            let cache = self.cache_at(res, rv).await?;
            let after = parse_rv(rv.unwrap_or("0"))?;
            // A cache started after `after` (the client listed pages from the store before
            // anyone watched this kind) takes the missing events from the store's history.
            let subscribed = match cache.backfill(&self.store, after).await {
                Ok(_) => cache.subscribe(after),
                Err(e) => Err(e),
            };
            match subscribed {
                Ok(sub) => sub,
                Err(e) if e.is_expired() => {
                    let events = vec![error_event(&e)];
                    return Ok(futures::stream::iter(events).boxed());
                }
                Err(e) => return Err(e),
            }
        };
        let backlog_rt = rt.clone();
        let backlog_sel = selection.clone();
        head.extend(
            sub.backlog
                .iter()
                .filter_map(|e| cached_to_watch(&backlog_rt, &backlog_sel, e)),
        );
        let seen = sub
            .backlog
            .last()
            .map_or(sub.revision, |e| e.revision.max(sub.revision));
        let deadline = bookmark_every.map(|every| tokio::time::Instant::now() + every);
        let state = Live {
            rx: sub.live,
            done: false,
            seen,
            bookmarked: seen,
            every: bookmark_every,
            deadline,
        };
        let live = futures::stream::unfold(state, move |mut s| {
            let (rt, selection) = (rt.clone(), selection.clone());
            async move {
                if s.done {
                    return None;
                }
                loop {
                    let tick = async {
                        match s.deadline {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => futures::future::pending().await,
                        }
                    };
                    let delivery = tokio::select! {
                        d = s.rx.recv() => d,
                        () = tick => {
                            s.deadline = s.every.map(|every| tokio::time::Instant::now() + every);
                            // Everything up to `seen` has been handed out (or filtered out).
                            if s.seen > s.bookmarked {
                                s.bookmarked = s.seen;
                                return Some((bookmark(&rt, s.seen, false), s));
                            }
                            continue;
                        }
                    };
                    match delivery {
                        Ok(Delivery::Event(e)) => {
                            s.seen = e.revision;
                            if let Some(w) = cached_to_watch(&rt, &selection, &e) {
                                return Some((w, s));
                            }
                        }
                        Ok(Delivery::Reset) => {
                            s.done = true;
                            let e = Error::expired(
                                "the watch cache was reset; re-list and watch again",
                            );
                            return Some((error_event(&e), s));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            // As kube-apiserver does with a watcher too slow for its
                            // buffer: close the watch. The client watches again from the
                            // last version it saw, which the cache's history still holds
                            // (else that watch answers 410): no re-list for a burst.
                            tracing::debug!(resource = %rt.plural, seen = s.seen, "closing a watch that fell behind");
                            return None;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(futures::stream::iter(head).chain(live.boxed()).boxed())
    }
}

/// A live watch's state.
struct Live {
    rx: tokio::sync::broadcast::Receiver<Delivery>,
    done: bool,
    /// The revision of the last change this watcher has been through.
    seen: Revision,
    /// The revision of the last bookmark sent.
    bookmarked: Revision,
    /// How often to send a bookmark when there is news.
    every: Option<std::time::Duration>,
    /// When the next bookmark is due.
    deadline: Option<tokio::time::Instant>,
}

/// Whether a list is served from the watch cache: whole lists (no page size, or any
/// version will do), not at an exact version.
fn from_cache(params: &ListParams) -> bool {
    params.continue_token.as_deref().is_none_or(str::is_empty)
        && !params.exact
        && (params.limit == 0 || params.resource_version.as_deref() == Some("0"))
}

/// The key of a resource type's watch cache: group, version and plural (for built-in
/// kinds, static strings: making a key allocates nothing).
type CacheKey = (Cow<'static, str>, Cow<'static, str>, Cow<'static, str>);

fn cache_key(rt: &ResourceType) -> CacheKey {
    (rt.group.clone(), rt.version.clone(), rt.plural.clone())
}

/// How long a consistent read waits for the watch cache before asking the store whether
/// the cache's kind changed at all.
const CATCH_UP: std::time::Duration = std::time::Duration::from_millis(5);

/// How long the store gets to show a change the watch cache has not seen (MemStore shows
/// them at once; etcd within a round trip).
const PROBE: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a read waits for the watch cache to catch up before giving up.
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Turns a cached change into the watch event a selecting watcher sees: an object that
/// moves into the selection is ADDED, one that moves out is DELETED.
fn cached_to_watch(
    rt: &ResourceType,
    selection: &Selection,
    e: &CachedEvent,
) -> Option<WatchEvent> {
    let object = e.object()?;
    // The object before the change has the same key, so the same namespace.
    if selection
        .namespace
        .as_deref()
        .is_some_and(|ns| meta_str(&object, "namespace") != Some(ns))
    {
        return None;
    }
    let everything = selection.is_everything();
    let now = everything || selection.matches(rt, &object);
    let before = e.existed().then(|| {
        // Only a selector needs the object before the change decoded.
        everything || e.prev().is_some_and(|p| selection.matches(rt, &p))
    });
    let kind = match e.kind {
        WatchEventType::Deleted if now => WatchEventType::Deleted,
        WatchEventType::Deleted => return None,
        _ => match (before, now) {
            (None | Some(false), true) => WatchEventType::Added,
            (Some(true), true) => WatchEventType::Modified,
            (Some(true), false) => WatchEventType::Deleted,
            (None | Some(false), false) => return None,
        },
    };
    Some(WatchEvent { kind, object })
}

/// What an update may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpdateMode {
    /// The object through its main resource: its status is kept (for kinds with a status
    /// subresource) and immutable fields are checked.
    Object,
    /// Only the status (the `status` subresource).
    Status,
}

/// The status an object starts with. For kinds with a status subresource the client's
/// status is dropped (only the status subresource writes it), except for Nodes, whose
/// agents register them with their status; then Pods start Pending with their QoS class
/// (and, with scheduling gates, PodScheduled=False for reason SchedulingGated),
/// Namespaces Active and claims Pending, as Kubernetes' create strategies do.
fn initial_status(res: &ServedResource, obj: &mut Value) {
    let rt = &res.rt;
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    if has_status(res) && !(rt.group.is_empty() && rt.kind == "Node") {
        map.remove("status");
    }
    let initial = match (rt.group.as_ref(), rt.kind.as_ref()) {
        ("", "Pod") => {
            let mut status = json!({ "phase": "Pending", "qosClass": qos_class(map.get("spec")) });
            let gated = map
                .get("spec")
                .and_then(|s| s.get("schedulingGates"))
                .and_then(Value::as_array)
                .is_some_and(|g| !g.is_empty());
            if gated {
                // As Kubernetes' pod strategy: a gated pod says why it is not scheduled.
                status["conditions"] = json!([{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "SchedulingGated",
                    "message": "Scheduling is blocked due to non-empty scheduling gates",
                    "lastProbeTime": null,
                    "lastTransitionTime": now_rfc3339(),
                }]);
            }
            Some(status)
        }
        ("", "Namespace") => Some(json!({ "phase": "Active" })),
        ("", "PersistentVolumeClaim") => Some(json!({ "phase": "Pending" })),
        _ => None,
    };
    if let Some(initial) = initial {
        map.insert("status".into(), initial);
    }
}

/// A pod's QoS class: Guaranteed when every container has CPU and memory limits equal to
/// its requests, BestEffort when none has any, Burstable otherwise.
fn qos_class(spec: Option<&Value>) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|l| spec.and_then(|s| s.get(*l)).and_then(Value::as_array))
        .flatten()
        .collect();
    let res = |c: &Value, kind: &str, r: &str| -> Option<Value> {
        c.get("resources")?.get(kind)?.get(r).cloned()
    };
    let any = containers.iter().any(|c| {
        ["requests", "limits"].iter().any(|k| {
            c.get("resources")
                .and_then(|r| r.get(*k))
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
        })
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = res(c, "limits", r);
            let request = res(c, "requests", r).or_else(|| limit.clone());
            limit.is_some() && request == limit
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Refuses an object that lacks what Kubernetes requires, naming every missing field.
fn check_required(res: &ServedResource, name: &str, obj: &Value) -> Result<(), Error> {
    let mut causes = crate::validation::required_fields(&res.rt, res.validator(), obj);
    if res.validate_values {
        causes.extend(res.validator().check_values(obj));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(&res.rt, name, causes))
    }
}

fn is_service(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.kind == "Service"
}

/// Keeps a Service's allocated address and ports across an update that leaves them out,
/// and refuses one that changes the address.
fn keep_service_allocations(rt: &ResourceType, old: &Value, new: &mut Value) -> Result<(), Error> {
    let name = meta_str(old, "name").unwrap_or_default().to_owned();
    let old_ip = old.pointer("/spec/clusterIP").cloned();
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    match (
        spec.get("clusterIP")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty()),
        &old_ip,
    ) {
        (None, Some(ip)) => {
            spec.insert("clusterIP".into(), ip.clone());
            for f in ["clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if let Some(v) = old.pointer(&format!("/spec/{f}")) {
                    spec.entry(f).or_insert_with(|| v.clone());
                }
            }
        }
        (Some(new_ip), Some(Value::String(old_ip))) if new_ip != old_ip => {
            return Err(Error::invalid(
                rt,
                name.as_str(),
                vec![FieldError::invalid(
                    "spec.clusterIPs[0]",
                    new_ip,
                    "may not change once set",
                )],
            ));
        }
        _ => {}
    }
    if let (Some(ports), Some(old_ports)) = (
        spec.get_mut("ports").and_then(Value::as_array_mut),
        old.pointer("/spec/ports").and_then(Value::as_array),
    ) {
        for (p, o) in ports.iter_mut().zip(old_ports) {
            if let (Some(p), Some(np)) = (p.as_object_mut(), o.get("nodePort")) {
                p.entry("nodePort").or_insert_with(|| np.clone());
            }
        }
    }
    Ok(())
}

/// What holds an object's deletion: its `metadata.finalizers`, and for a Namespace also
/// `spec.finalizers` (`kubernetes`: the namespace controller deletes the contents first).
fn finalizers(obj: &Value) -> Vec<String> {
    let strings = |list: Option<&Value>| -> Vec<String> {
        list.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut all = strings(meta(obj).get("finalizers"));
    if is_namespace(obj) {
        all.extend(strings(obj.pointer("/spec/finalizers")));
    }
    all
}

/// As Kubernetes' namespace strategy on create: the namespace controller's finalizer in
/// `spec.finalizers`, so that deleting a namespace deletes its contents before it goes.
fn add_namespace_finalizer(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let spec = root.entry("spec").or_insert_with(|| json!({}));
    if !spec.is_object() {
        *spec = json!({});
    }
    let list = &mut spec["finalizers"];
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(list) = list.as_array_mut() {
        if !list.iter().any(|f| f == "kubernetes") {
            list.push(json!("kubernetes"));
        }
    }
}

fn is_namespace(obj: &Value) -> bool {
    obj.get("kind").and_then(Value::as_str) == Some("Namespace")
        && obj.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

fn parse_rv(rv: &str) -> Result<Revision, Error> {
    rv.parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| Error::bad_request(format!("invalid resource version: {rv:?}")))
}

/// Fills in `apiVersion` and `kind` from the URL, or checks the ones given.
fn check_type(rt: &ResourceType, obj: &mut Value) -> Result<(), Error> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| Error::bad_request("the object must be a JSON object"))?;
    let api_version = rt.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() && v != api_version => {
            return Err(Error::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
        _ => {}
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != rt.kind => {
            return Err(Error::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        _ => {}
    }
    map.insert("apiVersion".into(), Value::String(api_version));
    map.insert("kind".into(), Value::String(rt.kind.to_string()));
    Ok(())
}

/// A BOOKMARK event at `revision` (with the initial-events-end annotation when `end`).
pub fn bookmark(rt: &ResourceType, revision: Revision, end: bool) -> WatchEvent {
    let mut metadata = json!({ "resourceVersion": revision.to_string() });
    if end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    WatchEvent {
        kind: WatchEventType::Bookmark,
        object: Arc::new(
            json!({ "kind": rt.kind.as_ref(), "apiVersion": rt.api_version(), "metadata": metadata }),
        ),
    }
}

/// An ERROR event carrying the error's `Status`.
pub fn error_event(e: &Error) -> WatchEvent {
    let mut status = serde_json::to_value(e.to_status()).unwrap_or_else(|_| json!({}));
    if let Some(map) = status.as_object_mut() {
        map.insert("kind".into(), json!("Status"));
        map.insert("apiVersion".into(), json!("v1"));
    }
    WatchEvent {
        kind: WatchEventType::Error,
        object: Arc::new(status),
    }
}

#[cfg(test)]
mod tests {
    use super::unchanged;
    use serde_json::json;

    #[test]
    fn only_the_version_and_ownership_times_may_differ_for_an_update_to_be_no_change() {
        let entry = |manager: &str, time: &str| {
            json!({"manager": manager, "operation": "Apply", "time": time,
                   "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:k": {}}}})
        };
        let obj = |rv: &str, managers: Vec<serde_json::Value>, k: &str| {
            json!({"metadata": {"name": "a", "resourceVersion": rv, "managedFields": managers},
                   "data": {"k": k}})
        };
        let base = obj("5", vec![entry("kubectl", "2026-01-01T00:00:00Z")], "v");
        let later = obj("7", vec![entry("kubectl", "2026-02-01T00:00:00Z")], "v");
        assert!(unchanged(&base, &later));
        let mut unversioned = later.clone();
        unversioned["metadata"]
            .as_object_mut()
            .map(|m| m.remove("resourceVersion"));
        assert!(unchanged(&base, &unversioned));
        let other_owner = obj(
            "5",
            vec![
                entry("kubectl", "2026-01-01T00:00:00Z"),
                entry("helm", "2026-01-01T00:00:00Z"),
            ],
            "v",
        );
        assert!(
            !unchanged(&base, &other_owner),
            "a new co-owner is a change"
        );
        let new_value = obj("5", vec![entry("kubectl", "2026-01-01T00:00:00Z")], "w");
        assert!(!unchanged(&base, &new_value));
        let mut labelled = base.clone();
        labelled["metadata"]["labels"] = json!({"x": "y"});
        assert!(!unchanged(&base, &labelled));
        assert!(!unchanged(&labelled, &base));
    }
}
