//! The Namespace controller: empties a namespace being deleted, then lets it go.
//!
//! A namespace with a `deletionTimestamp` and the `kubernetes` finalizer has every object
//! of every namespaced kind the server serves deleted (each delete guarded by the
//! object's uid); objects that stay (finalizers, graceful pod deletion) are waited for,
//! rechecking every few seconds. Each pass records Kubernetes' five deletion conditions
//! on the namespace — `NamespaceDeletionDiscoveryFailure`,
//! `NamespaceDeletionGroupVersionParsingFailure`, `NamespaceDeletionContentFailure`,
//! `NamespaceContentRemaining`, `NamespaceFinalizersRemaining` — with Kubernetes'
//! reasons and messages, so `kubectl describe namespace` explains a stuck deletion. When
//! nothing is left, `kubernetes` is removed from `spec.finalizers` (through the
//! `finalize` subresource, or a patch where the server has none) and from
//! `metadata.finalizers` where a server holds namespaces that way, so the namespace goes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keelson_core::client::{Api, Client, DeleteOptions, ListParams, Patch};
use keelson_core::k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use keelson_core::{builtin_resource_types, Resource, ResourceType};
use serde_json::json;

use crate::controller::{Action, Context, Controller, Reconciler};
use crate::informer::InformerFactory;
use crate::object::PartialObjectMeta;
use crate::{clock, watcher};

/// The finalizer the namespace controller owns.
pub const FINALIZER: &str = "kubernetes";

/// How often a namespace whose content is still going is checked again.
const RECHECK: Duration = Duration::from_secs(2);

/// A namespace deletion step failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} failed: {source}")]
pub struct Error {
    action: String,
    #[source]
    source: keelson_core::Error,
}

/// The Namespace reconciler.
pub struct NamespaceController {
    client: Client,
    kinds: Vec<ResourceType>,
}

impl std::fmt::Debug for NamespaceController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceController")
            .field("kinds", &self.kinds.len())
            .finish()
    }
}

/// The namespaced kinds whose objects a namespace deletion removes: every built-in one
/// (events.k8s.io Events are the core Events under another name).
pub fn default_kinds() -> Vec<ResourceType> {
    builtin_resource_types()
        .into_iter()
        .filter(|rt| rt.is_namespaced() && (rt.kind != "Event" || rt.group.is_empty()))
        .collect()
}

fn condition(t: &str, status: bool, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: t.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(clock::now_time()),
    }
}

fn has(list: Option<&Vec<String>>) -> bool {
    list.is_some_and(|l| l.iter().any(|f| f == FINALIZER))
}

impl NamespaceController {
    /// Builds the controller over those of `kinds` the server serves.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn controller(
        client: &Client,
        factory: &InformerFactory,
        kinds: Vec<ResourceType>,
    ) -> (Controller<Namespace>, Arc<Self>) {
        let kinds = super::common::served_kinds(client, kinds).await;
        let controller = Controller::with_factory(
            factory,
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        )
        .name("namespace");
        (
            controller,
            Arc::new(NamespaceController {
                client: client.clone(),
                kinds,
            }),
        )
    }

    /// Deletes what is left; returns (remaining per resource, finalizers per name,
    /// deletion errors).
    async fn delete_content(
        &self,
        ns: &str,
    ) -> (
        BTreeMap<String, usize>,
        BTreeMap<String, usize>,
        Vec<String>,
    ) {
        let mut remaining = BTreeMap::new();
        let mut finalizers: BTreeMap<String, usize> = BTreeMap::new();
        let mut errors = Vec::new();
        for rt in &self.kinds {
            let mut params = ListParams::default();
            params.selection.namespace = Some(ns.to_owned());
            let list = match self.client.transport().list(rt, &params).await {
                Ok(l) => l,
                Err(e) => {
                    errors.push(format!("{}: {e}", rt.group_resource()));
                    continue;
                }
            };
            let mut left = 0;
            for v in &list.items {
                let Ok(m) = serde_json::from_value::<PartialObjectMeta>((**v).clone()) else {
                    continue;
                };
                let name = m.metadata.name.clone().unwrap_or_default();
                if m.metadata.deletion_timestamp.is_none() {
                    let opts = DeleteOptions {
                        uid: m.metadata.uid.clone(),
                        ..DeleteOptions::default()
                    };
                    match self
                        .client
                        .transport()
                        .delete(rt, Some(ns), &name, &opts)
                        .await
                    {
                        Ok(Some(after)) => {
                            // Still there (finalizers, a grace period).
                            if after.pointer("/metadata/deletionTimestamp").is_some() {
                                left += 1;
                                for f in after
                                    .pointer("/metadata/finalizers")
                                    .and_then(|f| f.as_array())
                                    .into_iter()
                                    .flatten()
                                {
                                    if let Some(f) = f.as_str() {
                                        *finalizers.entry(f.to_owned()).or_default() += 1;
                                    }
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(e) if e.is_not_found() || e.is_conflict() => {}
                        Err(e) => {
                            left += 1;
                            errors.push(format!("{} {name}: {e}", rt.group_resource()));
                        }
                    }
                } else {
                    left += 1;
                    for f in m.metadata.finalizers.iter().flatten() {
                        *finalizers.entry(f.clone()).or_default() += 1;
                    }
                }
            }
            if left > 0 {
                remaining.insert(rt.group_resource().to_string(), left);
            }
        }
        (remaining, finalizers, errors)
    }

    async fn set_conditions(
        &self,
        ns: &Namespace,
        remaining: &BTreeMap<String, usize>,
        finalizers: &BTreeMap<String, usize>,
        errors: &[String],
    ) -> Result<(), Error> {
        let mut status = ns.status.clone().unwrap_or_default();
        status.phase = Some("Terminating".into());
        let content_failure = if errors.is_empty() {
            condition(
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
            )
        } else {
            condition(
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    errors.len(),
                    errors.join(", ")
                ),
            )
        };
        let content_remaining = if remaining.is_empty() {
            condition(
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        } else {
            let items: Vec<String> = remaining
                .iter()
                .map(|(r, n)| format!("{r} has {n} resource instances"))
                .collect();
            condition(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", items.join(", ")),
            )
        };
        let finalizers_remaining = if finalizers.is_empty() {
            condition(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            let items: Vec<String> = finalizers
                .iter()
                .map(|(f, n)| format!("{f} in {n} resource instances"))
                .collect();
            condition(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    items.join(", ")
                ),
            )
        };
        let new = [
            condition(
                "NamespaceDeletionDiscoveryFailure",
                false,
                "ResourcesDiscovered",
                "All resources successfully discovered".into(),
            ),
            condition(
                "NamespaceDeletionGroupVersionParsingFailure",
                false,
                "ParsedGroupVersions",
                "All legacy kube types successfully parsed".into(),
            ),
            content_failure,
            content_remaining,
            finalizers_remaining,
        ];
        let mut conditions = status.conditions.take().unwrap_or_default();
        for c in new {
            match conditions.iter_mut().find(|x| x.type_ == c.type_) {
                Some(old) => {
                    if old.status != c.status || old.reason != c.reason || old.message != c.message
                    {
                        let keep = old.status == c.status;
                        let transition = old.last_transition_time.clone();
                        *old = c;
                        if keep {
                            old.last_transition_time = transition;
                        }
                    }
                }
                None => conditions.push(c),
            }
        }
        status.conditions = Some(conditions);
        if ns.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = ns.clone();
        updated.status = Some(status);
        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = ns.metadata.name.clone().unwrap_or_default();
        match api.replace_status(&name, &updated).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error {
                action: "updating the namespace's conditions".into(),
                source,
            }),
        }
    }

    async fn finalize(&self, ns: &Namespace) -> Result<(), Error> {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let api: Api<Namespace> = Api::all(self.client.clone());
        let err = |action: &str| {
            let action = action.to_owned();
            move |source| Error { action, source }
        };
        if has(ns.spec.as_ref().and_then(|s| s.finalizers.as_ref())) {
            let kept: Vec<String> = ns
                .spec
                .iter()
                .flat_map(|s| s.finalizers.iter().flatten())
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            let mut body = ns.clone();
            body.spec.get_or_insert_with(Default::default).finalizers = Some(kept.clone());
            let value = serde_json::to_value(&body).map_err(|e| Error {
                action: "encoding the namespace".into(),
                source: keelson_core::Error::internal(e),
            })?;
            let rt = Namespace::resource_type();
            match self
                .client
                .transport()
                .replace(&rt, None, &name, Some("finalize"), value)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() && api.get_opt(&name).await.ok().flatten().is_some() => {
                    // No `finalize` subresource here: edit the spec.
                    api.patch(&name, &Patch::Merge(json!({"spec": {"finalizers": kept}})))
                        .await
                        .map_err(err("removing the namespace's finalizer"))?;
                }
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(err("finalizing the namespace")(e)),
            }
        }
        let list = ns.metadata.finalizers.as_deref().unwrap_or_default();
        if let Some(i) = list.iter().position(|f| f == FINALIZER) {
            let path = format!("/metadata/finalizers/{i}");
            match api.patch(&name, &Patch::Json(json!([{"op": "test", "path": path, "value": FINALIZER}, {"op": "remove", "path": path}]))).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(err("removing the namespace's finalizer")(e)),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Reconciler<Namespace> for NamespaceController {
    type Error = Error;

    async fn reconcile(&self, ns: Arc<Namespace>, _ctx: &Context) -> Result<Action, Error> {
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(Action::await_change());
        }
        let ours = has(ns.spec.as_ref().and_then(|s| s.finalizers.as_ref()))
            || has(ns.metadata.finalizers.as_ref());
        if !ours {
            return Ok(Action::await_change());
        }
        let name = ns.metadata.name.clone().unwrap_or_default();
        let (remaining, finalizers, errors) = self.delete_content(&name).await;
        self.set_conditions(&ns, &remaining, &finalizers, &errors)
            .await?;
        if !remaining.is_empty() || !errors.is_empty() {
            tracing::debug!(namespace = %name, ?remaining, "namespace content still going");
            return Ok(Action::requeue(RECHECK));
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        let latest = match api.get_opt(&name).await {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(Action::await_change()),
            Err(source) => {
                return Err(Error {
                    action: "reading the namespace".into(),
                    source,
                })
            }
        };
        self.finalize(&latest).await?;
        Ok(Action::await_change())
    }
}
