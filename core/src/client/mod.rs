//! The client: how every Keelson component, and your own code, reads and writes a cluster.
//!
//! One interface, two transports:
//!
//! - **In-process**: the API server's registry called directly — no sockets, no HTTP, no
//!   JSON text; reads come from the watch cache and share its decoded objects. `keelson-apiserver` provides
//!   it (`ApiServer::client`), because `core` does not depend on the server.
//! - **HTTP** (feature `http`): any Kubernetes-compatible API server, Keelson's included,
//!   configured from a kubeconfig ([`Config`]).
//!
//! Both implement [`Transport`], the object-safe trait a [`Client`] wraps; a component
//! written against [`Client`] runs unchanged in one process or across machines. Writes
//! through either go through the same defaulting, validation and admission.
//!
//! On top, [`Api<K>`] is a typed handle on one kind in one namespace (or all of them), and
//! [`Api<DynamicObject>`](crate::DynamicObject) the same for kinds known only at run time:
//!
//! ```no_run
//! # async fn demo(client: keelson_core::client::Client) -> keelson_core::Result<()> {
//! use keelson_core::client::{Api, ListParams, Patch};
//! use keelson_core::k8s_openapi::api::core::v1::ConfigMap;
//! use serde_json::json;
//!
//! let cms: Api<ConfigMap> = Api::namespaced(client, "default");
//! let mut cm = ConfigMap::default();
//! cm.metadata.name = Some("settings".into());
//! cms.create(&cm).await?;
//! cms.patch("settings", &Patch::Merge(json!({"data": {"mode": "fast"}}))).await?;
//! let list = cms.list(&ListParams::default().labels("app=web")?).await?;
//! # let _ = list;
//! # Ok(()) }
//! ```
//!
//! Watches ([`Api::watch`]) yield [`Event`]s; a watch that can no longer continue (its
//! version was compacted, or the server's cache was reset) ends with an
//! [`Error::Expired`] item, after which the caller lists again.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use k8s_openapi::api::autoscaling::v1::Scale;

use crate::{DynamicObject, Error, FieldSelector, LabelSelector, Resource, ResourceType, Result};

#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
pub use http::{Config, HttpTransport};

/// What a list or a watch selects.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only objects in this namespace (`None`: every namespace). An [`Api`] fills it in
    /// from its own namespace.
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: Option<LabelSelector>,
    /// `fieldSelector`.
    pub fields: Option<FieldSelector>,
}

impl Selection {
    /// Whether the selection has no label or field requirement.
    pub fn is_everything(&self) -> bool {
        self.labels.as_ref().is_none_or(LabelSelector::is_empty)
            && self.fields.as_ref().is_none_or(FieldSelector::is_empty)
    }

    /// Whether an object (of kind `rt`, as JSON) is selected by the label and field
    /// selectors. The namespace is the caller's to check.
    pub fn matches(&self, rt: &ResourceType, obj: &Value) -> bool {
        self.labels.as_ref().is_none_or(|l| {
            let labels = obj
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            l.matches(&labels)
        }) && self.fields.as_ref().is_none_or(|f| f.matches(rt, obj))
    }
}

/// How a list reads.
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    /// What to select.
    pub selection: Selection,
    /// `limit`: the page size (0: everything in one answer).
    pub limit: usize,
    /// `continue`: where the previous page ended.
    pub continue_token: Option<String>,
    /// `resourceVersion`: `None` reads the latest state (a consistent read); `"0"` any
    /// recent state (served from the cache); with [`ListParams::exact`], this version.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch=Exact`.
    pub exact: bool,
}

impl ListParams {
    /// Selects by labels (`app=web,tier!=db`).
    ///
    /// # Errors
    /// 400 for a malformed selector.
    pub fn labels(mut self, selector: &str) -> Result<Self> {
        self.selection.labels = Some(LabelSelector::parse(selector)?);
        Ok(self)
    }

    /// Selects by fields (`spec.nodeName=n1`).
    ///
    /// # Errors
    /// 400 for a malformed selector.
    pub fn fields(mut self, selector: &str) -> Result<Self> {
        self.selection.fields = Some(FieldSelector::parse(selector)?);
        Ok(self)
    }

    /// Reads pages of at most `limit` objects.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Continues a paginated list.
    pub fn continue_from(mut self, token: impl Into<String>) -> Self {
        self.continue_token = Some(token.into());
        self
    }
}

/// How a watch starts and what it carries.
#[derive(Clone, Debug, Default)]
pub struct WatchParams {
    /// What to select.
    pub selection: Selection,
    /// Watch changes after this version. `None` or `"0"`: first an ADDED event for every
    /// selected object, then the changes.
    pub resource_version: Option<String>,
    /// `sendInitialEvents`: ADDED events for the current objects, then a BOOKMARK marking
    /// their end (the streaming list), then changes.
    pub send_initial_events: bool,
    /// `allowWatchBookmarks`: periodic BOOKMARK events carrying the latest version.
    pub bookmarks: bool,
    /// `timeoutSeconds`: the server ends the watch after this long.
    pub timeout: Option<Duration>,
}

impl WatchParams {
    /// Selects by labels.
    ///
    /// # Errors
    /// 400 for a malformed selector.
    pub fn labels(mut self, selector: &str) -> Result<Self> {
        self.selection.labels = Some(LabelSelector::parse(selector)?);
        Ok(self)
    }

    /// Selects by fields.
    ///
    /// # Errors
    /// 400 for a malformed selector.
    pub fn fields(mut self, selector: &str) -> Result<Self> {
        self.selection.fields = Some(FieldSelector::parse(selector)?);
        Ok(self)
    }

    /// Watches changes after `resource_version`.
    pub fn after(mut self, resource_version: impl Into<String>) -> Self {
        self.resource_version = Some(resource_version.into());
        self
    }
}

/// DeleteOptions: preconditions and the grace period.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// `preconditions.uid`: delete only this incarnation of the name.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`: delete only this version.
    pub resource_version: Option<String>,
    /// `gracePeriodSeconds` (pods; 0 deletes at once).
    pub grace_period_seconds: Option<i64>,
    /// `dryRun: ["All"]`: check everything, delete nothing.
    pub dry_run: bool,
    /// `propagationPolicy`: what happens to the objects this one owns (`None`: the
    /// kind's default, background).
    pub propagation_policy: Option<PropagationPolicy>,
}

/// What deleting an object does to the objects it owns (through their
/// `ownerReferences`), carried out by the garbage collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropagationPolicy {
    /// The owner goes at once; the garbage collector deletes its dependents afterwards.
    Background,
    /// The owner stays (with the `foregroundDeletion` finalizer) until the garbage
    /// collector has deleted its blocking dependents.
    Foreground,
    /// The owner stays (with the `orphan` finalizer) until the garbage collector has
    /// removed it from its dependents' `ownerReferences`; the dependents stay.
    Orphan,
}

impl PropagationPolicy {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PropagationPolicy::Background => "Background",
            PropagationPolicy::Foreground => "Foreground",
            PropagationPolicy::Orphan => "Orphan",
        }
    }

    /// The policy of a wire name.
    pub fn parse(name: &str) -> Option<PropagationPolicy> {
        match name {
            "Background" => Some(PropagationPolicy::Background),
            "Foreground" => Some(PropagationPolicy::Foreground),
            "Orphan" => Some(PropagationPolicy::Orphan),
            _ => None,
        }
    }
}

/// A change to apply to an object.
#[derive(Clone, Debug)]
pub enum Patch {
    /// A JSON merge patch (RFC 7386): objects merge, `null` removes, lists are replaced.
    Merge(Value),
    /// A JSON patch (RFC 6902): a list of operations.
    Json(Value),
    /// A strategic merge patch (built-in kinds): lists merge by their merge keys
    /// (`containers` by `name`), with the `$patch`, `$retainKeys`, `$setElementOrder` and
    /// `$deleteFromPrimitiveList` directives.
    Strategic(Value),
    /// Server-side apply: `config` is `field_manager`'s whole intent for the object; the
    /// server merges it, removes what the manager no longer sets, and refuses (409)
    /// changes to fields other managers own unless `force`. Creates a missing object.
    Apply {
        /// The configuration (with `apiVersion`, `kind` and `metadata.name`).
        config: Value,
        /// Who applies (`fieldManager`).
        field_manager: String,
        /// Take over fields other managers own.
        force: bool,
    },
}

impl Patch {
    /// The media type the patch travels as.
    pub fn content_type(&self) -> &'static str {
        match self {
            Patch::Merge(_) => "application/merge-patch+json",
            Patch::Json(_) => "application/json-patch+json",
            Patch::Strategic(_) => "application/strategic-merge-patch+json",
            Patch::Apply { .. } => "application/apply-patch+yaml",
        }
    }

    /// The patch document.
    pub fn body(&self) -> &Value {
        match self {
            Patch::Merge(v) | Patch::Json(v) | Patch::Strategic(v) => v,
            Patch::Apply { config, .. } => config,
        }
    }
}

/// A page of objects as JSON.
#[derive(Clone, Debug, Default)]
pub struct ObjectList {
    /// The objects, each with its `resourceVersion` (in-process: shared with the watch
    /// cache, not copied).
    pub items: Vec<Arc<Value>>,
    /// The version the list was read at; watch from here to see every later change.
    pub resource_version: String,
    /// Where the next page starts.
    pub continue_token: Option<String>,
    /// How many objects follow, when known.
    pub remaining: Option<i64>,
}

/// The type of a watch event, as Kubernetes names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventType {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
    /// `BOOKMARK`.
    Bookmark,
    /// `ERROR`.
    Error,
}

impl WatchEventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchEventType::Added => "ADDED",
            WatchEventType::Modified => "MODIFIED",
            WatchEventType::Deleted => "DELETED",
            WatchEventType::Bookmark => "BOOKMARK",
            WatchEventType::Error => "ERROR",
        }
    }

    /// The type for a wire name.
    pub fn parse(name: &str) -> Option<WatchEventType> {
        Some(match name {
            "ADDED" => WatchEventType::Added,
            "MODIFIED" => WatchEventType::Modified,
            "DELETED" => WatchEventType::Deleted,
            "BOOKMARK" => WatchEventType::Bookmark,
            "ERROR" => WatchEventType::Error,
            _ => return None,
        })
    }
}

impl fmt::Display for WatchEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One watch event as JSON: its type and the object (a `Status` for `ERROR`), shared with
/// every other watcher that receives it.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    /// The type.
    pub kind: WatchEventType,
    /// The object, with its `resourceVersion`.
    pub object: Arc<Value>,
}

/// A stream of watch events as JSON.
pub type WatchStream = BoxStream<'static, Result<WatchEvent>>;

/// How a [`Client`] reaches a cluster: the verbs of the Kubernetes API on objects as JSON.
///
/// Implemented by the in-process transport of `keelson-apiserver` and by
/// [`HttpTransport`] (feature `http`); implement it to put something in between (a
/// recorder, a fault injector). `subresource` is `None` for the object itself, or names
/// one (`status`, `scale`).
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Reads one object.
    async fn get(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>>;

    /// Reads a subresource of an object (`status`, `scale`).
    async fn get_subresource(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
    ) -> Result<Arc<Value>>;

    /// Creates a subresource of an object (`binding` and `eviction` of a pod): returns the
    /// server's answer, often a `Status`.
    async fn create_subresource(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
        body: Value,
    ) -> Result<Arc<Value>>;

    /// Lists objects (`params.selection.namespace` scopes it).
    async fn list(&self, rt: &ResourceType, params: &ListParams) -> Result<ObjectList>;

    /// Creates an object and returns it as stored.
    async fn create(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Arc<Value>>;

    /// Replaces an object (or its status) and returns it as stored.
    async fn replace(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        object: Value,
    ) -> Result<Arc<Value>>;

    /// Patches an object (or its status) and returns it as stored.
    async fn patch(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        patch: &Patch,
    ) -> Result<Arc<Value>>;

    /// Deletes an object. Returns the object (gone, or still there with its
    /// `deletionTimestamp` while finalizers or a grace period hold it), or `None` when
    /// the server answered with a bare `Status`.
    async fn delete(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Option<Arc<Value>>>;

    /// Watches objects (`params.selection.namespace` scopes it).
    async fn watch(&self, rt: &ResourceType, params: &WatchParams) -> Result<WatchStream>;
}

/// A handle on a cluster, cheap to clone; make [`Api`]s from it.
#[derive(Clone)]
pub struct Client {
    transport: Arc<dyn Transport>,
    default_namespace: Arc<str>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("default_namespace", &self.default_namespace)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client over a transport, with `default` as its default namespace.
    pub fn new(transport: Arc<dyn Transport>) -> Client {
        Client {
            transport,
            default_namespace: Arc::from("default"),
        }
    }

    /// The same client with another default namespace.
    pub fn with_default_namespace(mut self, namespace: &str) -> Client {
        self.default_namespace = Arc::from(namespace);
        self
    }

    /// The namespace [`Api::default_namespaced`] uses.
    pub fn default_namespace(&self) -> &str {
        &self.default_namespace
    }

    /// The transport, for calls on JSON objects.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// A client for the server a kubeconfig names: `$KUBECONFIG`, else `~/.kube/config`
    /// (feature `http`).
    ///
    /// # Errors
    /// When no kubeconfig is found or it cannot be used.
    #[cfg(feature = "http")]
    pub fn try_default() -> Result<Client> {
        Config::infer().and_then(Client::from_config)
    }

    /// A client over HTTP(S) for `config` (feature `http`).
    ///
    /// # Errors
    /// When the TLS settings cannot be used.
    #[cfg(feature = "http")]
    pub fn from_config(config: Config) -> Result<Client> {
        let namespace = config.namespace.clone();
        let client = Client::new(Arc::new(HttpTransport::new(config)?));
        Ok(match namespace {
            Some(ns) => client.with_default_namespace(&ns),
            None => client,
        })
    }
}

/// A typed handle on one kind, in one namespace or across all of them.
///
/// `K` is a [`Resource`] (a built-in kind, or your own through
/// [`impl_resource!`](crate::impl_resource)), or [`DynamicObject`] with the
/// [`ResourceType`] given at run time ([`Api::dynamic`]).
pub struct Api<K> {
    client: Client,
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Api {
            client: self.client.clone(),
            rt: self.rt.clone(),
            namespace: self.namespace.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Api<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("resource", &self.rt.to_string())
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl<K: Resource> Api<K> {
    /// Objects of a namespaced kind in one namespace.
    pub fn namespaced(client: Client, namespace: &str) -> Api<K> {
        Api::with_type(client, Arc::new(K::resource_type()), Some(namespace))
    }

    /// Objects in the client's default namespace.
    pub fn default_namespaced(client: Client) -> Api<K> {
        let ns = client.default_namespace.clone();
        Api::namespaced(client, &ns)
    }

    /// Every object of the kind: a cluster-scoped kind, or a namespaced kind across all
    /// namespaces (reads and watches; creating a namespaced object through it uses the
    /// object's own `metadata.namespace`).
    pub fn all(client: Client) -> Api<K> {
        Api::with_type(client, Arc::new(K::resource_type()), None)
    }
}

impl Api<DynamicObject> {
    /// Objects of a kind known only at run time, in `namespace` (`None`: all namespaces,
    /// or a cluster-scoped kind).
    pub fn dynamic(client: Client, rt: &ResourceType, namespace: Option<&str>) -> Self {
        Api::with_type(client, Arc::new(rt.clone()), namespace)
    }
}

impl<K> Api<K> {
    fn with_type(client: Client, rt: Arc<ResourceType>, namespace: Option<&str>) -> Api<K> {
        let namespace = namespace.filter(|_| rt.is_namespaced()).map(str::to_owned);
        Api {
            client,
            rt,
            namespace,
            _kind: PhantomData,
        }
    }

    /// The kind this handle serves.
    pub fn resource_type(&self) -> &ResourceType {
        &self.rt
    }

    /// The namespace, if the handle is scoped to one.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    fn transport(&self) -> &dyn Transport {
        self.client.transport.as_ref()
    }

    fn ns(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

impl<K> Api<K>
where
    K: Serialize + DeserializeOwned + Send + 'static,
{
    /// Reads one object.
    ///
    /// # Errors
    /// [`Error::NotFound`] when it does not exist.
    pub async fn get(&self, name: &str) -> Result<K> {
        let v = self.transport().get(&self.rt, self.ns(), name).await?;
        from_json(&v)
    }

    /// Reads one object, or `None` when it does not exist.
    ///
    /// # Errors
    /// Any error but not-found.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>> {
        match self.get(name).await {
            Ok(k) => Ok(Some(k)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists objects (one page when `params.limit` is set).
    ///
    /// # Errors
    /// [`Error::Expired`] for a continue token that is too old; 400 for bad selectors.
    pub async fn list(&self, params: &ListParams) -> Result<List<K>> {
        let mut params = params.clone();
        params.selection.namespace = self.namespace.clone();
        let list = self.transport().list(&self.rt, &params).await?;
        Ok(List {
            items: list
                .items
                .iter()
                .map(|v| from_json(v))
                .collect::<Result<_>>()?,
            resource_version: list.resource_version,
            continue_token: list.continue_token,
            remaining: list.remaining,
        })
    }

    /// Creates an object; the handle's namespace wins over the object's.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::Invalid`], and what admission refuses.
    pub async fn create(&self, object: &K) -> Result<K> {
        let v = self
            .transport()
            .create(&self.rt, self.ns(), to_json(object)?)
            .await?;
        from_json(&v)
    }

    /// Replaces an object. A `metadata.resourceVersion` in it must be the current one.
    ///
    /// # Errors
    /// [`Error::Conflict`] for a stale `resourceVersion`; [`Error::NotFound`].
    pub async fn replace(&self, name: &str, object: &K) -> Result<K> {
        self.replace_at(name, None, object).await
    }

    /// Replaces only the status of an object (the `status` subresource).
    ///
    /// # Errors
    /// As [`Api::replace`].
    pub async fn replace_status(&self, name: &str, object: &K) -> Result<K> {
        self.replace_at(name, Some("status"), object).await
    }

    /// Patches an object, retried on the server when another writer gets in between
    /// (unless the patch pins a `resourceVersion`).
    ///
    /// # Errors
    /// [`Error::NotFound`]; 400 or 422 for a patch that does not apply.
    pub async fn patch(&self, name: &str, patch: &Patch) -> Result<K> {
        self.patch_at(name, None, patch).await
    }

    /// Patches only the status of an object.
    ///
    /// # Errors
    /// As [`Api::patch`].
    pub async fn patch_status(&self, name: &str, patch: &Patch) -> Result<K> {
        self.patch_at(name, Some("status"), patch).await
    }

    /// The `Scale` of a workload (`scale` subresource).
    ///
    /// # Errors
    /// [`Error::NotFound`] when the object or its kind's scale subresource does not exist.
    pub async fn get_scale(&self, name: &str) -> Result<Scale> {
        let v = self
            .transport()
            .get_subresource(&self.rt, self.ns(), name, "scale")
            .await?;
        from_json(&v)
    }

    /// Sets a workload's replicas through its `Scale`.
    ///
    /// # Errors
    /// As [`Api::replace`]; 422 for negative replicas.
    pub async fn replace_scale(&self, name: &str, scale: &Scale) -> Result<Scale> {
        self.replace_at(name, Some("scale"), scale).await
    }

    /// Patches a workload's `Scale` (`Patch::Merge(json!({"spec": {"replicas": 3}}))`).
    ///
    /// # Errors
    /// As [`Api::patch`].
    pub async fn patch_scale(&self, name: &str, patch: &Patch) -> Result<Scale> {
        self.patch_at(name, Some("scale"), patch).await
    }

    /// Creates a subresource of an object — a pod's `binding` (what a scheduler does) or
    /// `eviction` (what `kubectl drain` does) — and decodes the answer as `R` (a `Status`,
    /// or [`serde_json::Value`]).
    ///
    /// # Errors
    /// The subresource's own: 409 for a pod already bound, 429 for an eviction its
    /// disruption budget does not allow, 404.
    pub async fn create_subresource<T: Serialize, R: DeserializeOwned>(
        &self,
        subresource: &str,
        name: &str,
        body: &T,
    ) -> Result<R> {
        let v = self
            .transport()
            .create_subresource(&self.rt, self.ns(), name, subresource, to_json(body)?)
            .await?;
        from_json(&v)
    }

    /// Replaces an object or one of its subresources, and decodes the answer.
    async fn replace_at<T: Serialize, R: DeserializeOwned>(
        &self,
        name: &str,
        subresource: Option<&str>,
        body: &T,
    ) -> Result<R> {
        let v = self
            .transport()
            .replace(&self.rt, self.ns(), name, subresource, to_json(body)?)
            .await?;
        from_json(&v)
    }

    /// Patches an object or one of its subresources, and decodes the answer.
    async fn patch_at<R: DeserializeOwned>(
        &self,
        name: &str,
        subresource: Option<&str>,
        patch: &Patch,
    ) -> Result<R> {
        let v = self
            .transport()
            .patch(&self.rt, self.ns(), name, subresource, patch)
            .await?;
        from_json(&v)
    }

    /// Deletes an object. Returns it — gone, or still present with its
    /// `deletionTimestamp` while finalizers or a pod's grace period hold it — or `None`
    /// when the server answered with a bare `Status`.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Conflict`] when a precondition fails.
    pub async fn delete(&self, name: &str, options: &DeleteOptions) -> Result<Option<K>> {
        match self
            .transport()
            .delete(&self.rt, self.ns(), name, options)
            .await?
        {
            Some(v) => from_json(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Watches objects. The stream ends when the server ends the watch (its timeout) and
    /// yields [`Error::Expired`] when the watch cannot continue; list again then.
    ///
    /// # Errors
    /// 400 for a malformed version or selector.
    pub async fn watch(
        &self,
        params: &WatchParams,
    ) -> Result<BoxStream<'static, Result<Event<K>>>> {
        let mut params = params.clone();
        params.selection.namespace = self.namespace.clone();
        let stream = self.transport().watch(&self.rt, &params).await?;
        Ok(stream.map(|e| e.and_then(Event::from_watch_event)).boxed())
    }
}

/// A typed page of objects.
#[derive(Clone, Debug)]
pub struct List<K> {
    /// The objects.
    pub items: Vec<K>,
    /// The version the list was read at: watch after it to see every later change.
    pub resource_version: String,
    /// Where the next page starts ([`ListParams::continue_from`]).
    pub continue_token: Option<String>,
    /// How many objects follow, when known.
    pub remaining: Option<i64>,
}

/// A typed watch event.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<K> {
    /// The object was created, or entered the selection.
    Added(K),
    /// The object changed.
    Modified(K),
    /// The object was deleted (its last state), or left the selection.
    Deleted(K),
    /// The watch has been through every change up to `resource_version`.
    Bookmark {
        /// The version to resume from.
        resource_version: String,
        /// This bookmark ends the initial events of a streaming list
        /// ([`WatchParams::send_initial_events`]).
        initial_events_end: bool,
    },
}

impl<K: DeserializeOwned> Event<K> {
    /// The typed event for a JSON event; an `ERROR` event becomes the error its `Status`
    /// describes.
    ///
    /// # Errors
    /// The `ERROR` event's error, or a decoding error.
    pub fn from_watch_event(e: WatchEvent) -> Result<Event<K>> {
        Ok(match e.kind {
            WatchEventType::Added => Event::Added(from_json(&e.object)?),
            WatchEventType::Modified => Event::Modified(from_json(&e.object)?),
            WatchEventType::Deleted => Event::Deleted(from_json(&e.object)?),
            WatchEventType::Bookmark => Event::Bookmark {
                resource_version: e
                    .object
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                initial_events_end: e
                    .object
                    .pointer("/metadata/annotations/k8s.io~1initial-events-end")
                    .and_then(Value::as_str)
                    == Some("true"),
            },
            WatchEventType::Error => return Err(error_from_status_json(&e.object)),
        })
    }
}

/// The error a `Status` object (as JSON) describes.
pub fn error_from_status_json(status: &Value) -> Error {
    match serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>(
        status.clone(),
    ) {
        Ok(s) => Error::from_status(&s),
        Err(e) => Error::internal(format!("the server sent an undecodable Status: {e}")),
    }
}

fn to_json<K: Serialize>(object: &K) -> Result<Value> {
    serde_json::to_value(object)
        .map_err(|e| Error::bad_request(format!("the object does not encode: {e}")))
}

fn from_json<K: DeserializeOwned>(v: &Value) -> Result<K> {
    K::deserialize(v).map_err(|e| {
        Error::internal(format!(
            "the server's answer does not decode as the expected type: {e}"
        ))
    })
}
