//! What the runtime caches and watches: [`Object`]s, named by [`ObjectRef`]s, read through
//! a [`ListWatch`] source (a typed [`Api`], or [`MetadataApi`] for metadata only).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use keelson_core::client::{Api, Client, Event, List, ListParams, WatchEventType, WatchParams};
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keelson_core::{Error, ObjectMeta, Resource, ResourceType, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An object the runtime can cache: anything with an [`ObjectMeta`] that decodes from
/// JSON. Every [`Resource`] is one; so is [`PartialObjectMeta`].
pub trait Object: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The object's metadata.
    fn metadata(&self) -> &ObjectMeta;

    /// The object's metadata, mutably (informers use it to drop `managedFields`).
    fn metadata_mut(&mut self) -> &mut ObjectMeta;

    /// The reference naming this object (namespace and name).
    fn object_ref(&self) -> ObjectRef {
        ObjectRef::from_meta(self.metadata())
    }
}

impl<K: Resource> Object for K {
    fn metadata(&self) -> &ObjectMeta {
        self.meta()
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        self.meta_mut()
    }
}

/// The namespace and name of an object: the key of caches and work queues.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The namespace (`None` for cluster-scoped objects).
    pub namespace: Option<Arc<str>>,
    /// The name.
    pub name: Arc<str>,
}

impl ObjectRef {
    /// A reference to `name` in `namespace`.
    pub fn new(namespace: Option<&str>, name: &str) -> ObjectRef {
        ObjectRef {
            namespace: namespace.filter(|n| !n.is_empty()).map(Arc::from),
            name: Arc::from(name),
        }
    }

    /// The reference an object's metadata names.
    pub fn from_meta(meta: &ObjectMeta) -> ObjectRef {
        ObjectRef::new(
            meta.namespace.as_deref(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }

    /// The namespace as a `&str`, if any.
    pub fn ns(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

impl fmt::Display for ObjectRef {
    /// `namespace/name`, or `name` for a cluster-scoped object (as client-go's keys).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl fmt::Debug for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An object reduced to its kind and metadata: what the garbage collector and the
/// namespace controller cache for every kind (as Kubernetes' metadata-only informers).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialObjectMeta {
    /// `apiVersion`.
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    /// `kind`.
    #[serde(default)]
    pub kind: String,
    /// The metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
}

impl Object for PartialObjectMeta {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The owner reference that is the object's managing controller (`controller: true`).
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A source of objects for a watcher: list and watch one kind, in one namespace or all.
///
/// Implemented for every typed [`Api<K>`] and for [`MetadataApi`].
#[async_trait]
pub trait ListWatch<K>: Send + Sync + 'static {
    /// The kind listed and watched.
    fn resource_type(&self) -> &ResourceType;

    /// The namespace, if the source is scoped to one.
    fn namespace(&self) -> Option<&str>;

    /// Lists objects.
    async fn list(&self, params: &ListParams) -> Result<List<K>>;

    /// Watches objects.
    async fn watch(&self, params: &WatchParams) -> Result<BoxStream<'static, Result<Event<K>>>>;
}

#[async_trait]
impl<K> ListWatch<K> for Api<K>
where
    K: Object,
{
    fn resource_type(&self) -> &ResourceType {
        Api::resource_type(self)
    }

    fn namespace(&self) -> Option<&str> {
        Api::namespace(self)
    }

    async fn list(&self, params: &ListParams) -> Result<List<K>> {
        Api::list(self, params).await
    }

    async fn watch(&self, params: &WatchParams) -> Result<BoxStream<'static, Result<Event<K>>>> {
        Api::watch(self, params).await
    }
}

/// Lists and watches any kind as [`PartialObjectMeta`], decoding only the metadata of
/// each object.
#[derive(Clone)]
pub struct MetadataApi {
    client: Client,
    rt: ResourceType,
    namespace: Option<String>,
}

impl fmt::Debug for MetadataApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetadataApi")
            .field("resource", &self.rt.to_string())
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl MetadataApi {
    /// Objects of `rt` in `namespace` (`None`: every namespace, or a cluster-scoped kind).
    pub fn new(client: Client, rt: ResourceType, namespace: Option<&str>) -> MetadataApi {
        let namespace = namespace.filter(|_| rt.is_namespaced()).map(str::to_owned);
        MetadataApi {
            client,
            rt,
            namespace,
        }
    }

    /// The metadata of every object of a typed kind.
    pub fn of<K: Resource>(client: Client) -> MetadataApi {
        MetadataApi::new(client, K::resource_type(), None)
    }
}

fn decode_meta(v: &Value) -> Result<PartialObjectMeta> {
    PartialObjectMeta::deserialize(v)
        .map_err(|e| Error::internal(format!("an object's metadata does not decode: {e}")))
}

#[async_trait]
impl ListWatch<PartialObjectMeta> for MetadataApi {
    fn resource_type(&self) -> &ResourceType {
        &self.rt
    }

    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    async fn list(&self, params: &ListParams) -> Result<List<PartialObjectMeta>> {
        let mut params = params.clone();
        params.selection.namespace = self.namespace.clone();
        let list = self.client.transport().list(&self.rt, &params).await?;
        let kind = self.rt.kind.to_string();
        let api_version = self.rt.api_version();
        Ok(List {
            items: list
                .items
                .iter()
                .map(|v| {
                    decode_meta(v).map(|mut m| {
                        m.kind.clone_from(&kind);
                        m.api_version.clone_from(&api_version);
                        m
                    })
                })
                .collect::<Result<_>>()?,
            resource_version: list.resource_version,
            continue_token: list.continue_token,
            remaining: list.remaining,
        })
    }

    async fn watch(
        &self,
        params: &WatchParams,
    ) -> Result<BoxStream<'static, Result<Event<PartialObjectMeta>>>> {
        let mut params = params.clone();
        params.selection.namespace = self.namespace.clone();
        let stream = self.client.transport().watch(&self.rt, &params).await?;
        let kind = self.rt.kind.to_string();
        let api_version = self.rt.api_version();
        Ok(stream
            .map(move |e| {
                let e = e?;
                let fill = |v: &Value| {
                    decode_meta(v).map(|mut m| {
                        m.kind.clone_from(&kind);
                        m.api_version.clone_from(&api_version);
                        m
                    })
                };
                Ok(match e.kind {
                    WatchEventType::Added => Event::Added(fill(&e.object)?),
                    WatchEventType::Modified => Event::Modified(fill(&e.object)?),
                    WatchEventType::Deleted => Event::Deleted(fill(&e.object)?),
                    WatchEventType::Bookmark | WatchEventType::Error => {
                        match Event::<PartialObjectMeta>::from_watch_event(e)? {
                            Event::Added(_) | Event::Modified(_) | Event::Deleted(_) => {
                                return Err(Error::internal("unexpected watch event"))
                            }
                            b => b,
                        }
                    }
                })
            })
            .boxed())
    }
}
