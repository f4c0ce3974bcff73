//! The in-process transport of the client: the registry called directly.
//!
//! [`ApiServer::client`] gives a [`Client`] whose calls go straight to the [`Registry`](crate::Registry)
//! — no sockets, no HTTP, no JSON text. Writes get the same defaulting, validation and
//! admission as writes over HTTP; reads and watches come from the watch cache and share
//! one decoded object per version for as long as any reader holds it (each watch event is
//! decoded once for all its watchers).

use std::sync::Arc;

use futures::StreamExt;
use keelson_core::client::{
    Client, DeleteOptions, ListParams, ObjectList, Patch, Transport, WatchParams, WatchStream,
};
use keelson_core::{Error, ResourceType, Result};
use serde_json::Value;

use crate::auth::User;
use crate::catalog::Entry;
use crate::patch::PatchType;
use crate::registry::Registry;
use crate::resources::ServedResource;
use crate::rest::{ApiServer, BOOKMARK_EVERY};

/// The transport over an [`ApiServer`]'s registry.
struct InProcess {
    server: Arc<ApiServer>,
    /// The registry, writing as the client's user.
    registry: Registry,
}

impl ApiServer {
    /// A client that calls this server's registry in-process, as the server's own
    /// identity ([`User::loopback`]).
    pub fn client(self: &Arc<Self>) -> Client {
        self.client_as(User::loopback())
    }

    /// A client that calls this server's registry in-process on behalf of `user`, whom
    /// admission plugins see (a component's own identity, such as
    /// `system:kube-scheduler`).
    pub fn client_as(self: &Arc<Self>, user: User) -> Client {
        Client::new(Arc::new(InProcess {
            registry: self.registry().as_user(user),
            server: self.clone(),
        }))
    }
}

impl InProcess {
    fn served(&self, rt: &ResourceType) -> Result<Entry> {
        Entry::find(self.server.served(), &rt.group, &rt.version, &rt.plural).ok_or_else(|| {
            Error::NotFound {
                resource: rt.group_resource(),
                name: String::new(),
                message: format!("the server could not find the requested resource ({rt})"),
            }
        })
    }

    /// The subresource named, if the kind serves it (`None`: the object itself).
    fn subresource<'a>(
        res: &ServedResource,
        subresource: Option<&'a str>,
    ) -> Result<Option<&'a str>> {
        match subresource {
            None => Ok(None),
            Some(name) if res.subresources.iter().any(|s| s.name == name) => Ok(Some(name)),
            Some(other) => Err(Error::NotFound {
                resource: res.rt.group_resource(),
                name: String::new(),
                message: format!(
                    "the server could not find the requested resource ({}/{other})",
                    res.rt.plural
                ),
            }),
        }
    }
}

#[async_trait::async_trait]
impl Transport for InProcess {
    async fn get(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>> {
        let entry = self.served(rt)?;
        let res: &ServedResource = &entry;
        self.registry.get_shared(res, namespace, name).await
    }

    async fn get_subresource(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
    ) -> Result<Arc<Value>> {
        let entry = self.served(rt)?;
        let res: &ServedResource = &entry;
        match Self::subresource(res, Some(subresource))? {
            Some("scale") => self
                .registry
                .get_scale(res, namespace, name)
                .await
                .map(Arc::new),
            _ => self.registry.get_shared(res, namespace, name).await,
        }
    }

    async fn create_subresource(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
        body: Value,
    ) -> Result<Arc<Value>> {
        let entry = self.served(rt)?;
        let res: &ServedResource = &entry;
        let answer = match Self::subresource(res, Some(subresource))? {
            Some("binding") => self.registry.bind(res, namespace, name, &body).await?,
            Some("eviction") => self.registry.evict(res, namespace, name, &body).await?,
            Some("token") => {
                self.registry
                    .create_token(res, namespace, name, &body)
                    .await?
            }
            _ => return Err(Error::method_not_allowed(&res.rt, "create")),
        };
        Ok(Arc::new(answer))
    }

    async fn list(&self, rt: &ResourceType, params: &ListParams) -> Result<ObjectList> {
        let entry = self.served(rt)?;
        let res: &ServedResource = &entry;
        if let Some(f) = &params.selection.fields {
            f.check_supported(rt)?;
        }
        self.registry.list(res, params).await
    }

    async fn create(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Arc<Value>> {
        let entry = self.served(rt)?;
        let res: &ServedResource = &entry;
        self.registry.create(res, namespace, object).await
    }

    async fn replace(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        object: Value,
    ) -> Result<Arc<Value>> {
        let entry = self.served(rt)?;
        let res: &ServedResource = &entry;
        match Self::subresource(res, subresource)? {
            Some("scale") => self
                .registry
                .update_scale(res, namespace, name, &object)
                .await
                .map(Arc::new),
            Some("status") => {
                self.registry
                    .update(res, namespace, name, object, true)
                    .await
            }
            Some("finalize") => self.registry.finalize(res, name, &object).await,
            Some(_) => Err(Error::method_not_allowed(&res.rt, "update")),
            None => {
                self.registry
                    .update(res, namespace, name, object, false)
                    .await
            }
        }
    }

    async fn patch(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        patch: &Patch,
    ) -> Result<Arc<Value>> {
        let entry = self.served(rt)?;
        let res: &ServedResource = &entry;
        let patch_type = match patch {
            Patch::Merge(_) => PatchType::Merge,
            Patch::Json(_) => PatchType::Json,
            Patch::Strategic(_) => PatchType::Strategic,
            Patch::Apply {
                config,
                field_manager,
                force,
            } => {
                if subresource.is_some() {
                    return Err(Error::method_not_allowed(&res.rt, "apply"));
                }
                return self
                    .registry
                    .apply(res, namespace, name, config.clone(), field_manager, *force)
                    .await
                    .map(|(obj, _)| obj);
            }
        };
        match Self::subresource(res, subresource)? {
            Some("scale") => self
                .registry
                .patch_scale(res, namespace, name, patch_type, patch.body())
                .await
                .map(Arc::new),
            Some("status") => {
                self.registry
                    .patch(res, namespace, name, patch_type, patch.body(), true)
                    .await
            }
            Some(_) => Err(Error::method_not_allowed(&res.rt, "patch")),
            None => {
                self.registry
                    .patch(res, namespace, name, patch_type, patch.body(), false)
                    .await
            }
        }
    }

    async fn delete(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Option<Arc<Value>>> {
        let entry = self.served(rt)?;
        let res: &ServedResource = &entry;
        self.registry
            .delete(res, namespace, name, options)
            .await
            .map(Some)
    }

    async fn watch(&self, rt: &ResourceType, params: &WatchParams) -> Result<WatchStream> {
        let entry = self.served(rt)?;
        let res: &ServedResource = &entry;
        if let Some(f) = &params.selection.fields {
            f.check_supported(rt)?;
        }
        let events = self
            .server
            .registry()
            .watch_with_bookmarks(
                res,
                params.selection.clone(),
                params.resource_version.as_deref(),
                params.send_initial_events,
                params.bookmarks.then_some(BOOKMARK_EVERY),
            )
            .await?
            .map(Ok);
        Ok(match params.timeout {
            Some(t) => events.take_until(tokio::time::sleep(t)).boxed(),
            None => events.boxed(),
        })
    }
}
