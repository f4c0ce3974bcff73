//! Admission: the user-extensible checks every write passes, as in Kubernetes — first the
//! mutating plugins (in order; each may change the object), then the kind's own validation,
//! then the validating plugins (each may refuse). Plugins are Rust types implementing
//! [`MutatingAdmission`] or [`ValidatingAdmission`], added with [`AdmissionChain::mutate`]
//! and [`AdmissionChain::validate`] and given to [`Registry::with_admission`].
//!
//! A plugin refuses with the [`Error`] the client should see; Kubernetes' admission
//! plugins mostly answer 403 Forbidden ([`Error::forbidden`]).
//!
//! Kubernetes' own plugins that Keelson has are here too, off until added to a chain:
//! [`ServiceAccountAdmission`] (kube-apiserver's `ServiceAccount`). `keelson::Cluster`
//! and `keelson up` add it, as kube-apiserver enables it by default. (NamespaceLifecycle
//! is built into the registry: writes into a namespace that does not exist or is being
//! deleted are refused before any plugin runs.)
//!
//! ```
//! use async_trait::async_trait;
//! use keelson_apiserver::admission::{AdmissionChain, AdmissionRequest, MutatingAdmission};
//! use serde_json::{Value, json};
//!
//! /// Labels every object with the team that owns the cluster.
//! struct TeamLabel;
//!
//! #[async_trait]
//! impl MutatingAdmission for TeamLabel {
//!     fn name(&self) -> &str {
//!         "TeamLabel"
//!     }
//!     async fn admit(&self, _req: &AdmissionRequest<'_>, object: &mut Value) -> Result<(), keelson_core::Error> {
//!         object["metadata"]["labels"]["team"] = json!("infra");
//!         Ok(())
//!     }
//! }
//!
//! let chain = AdmissionChain::default().mutate(TeamLabel);
//! # let _ = chain;
//! ```
//!
//! [`Registry::with_admission`]: crate::Registry::with_admission

use std::sync::Arc;

use async_trait::async_trait;
use keelson_core::{Error, ResourceType};
use serde_json::Value;

use crate::auth::User;

mod service_account;

pub use service_account::{
    token_volume_source, ServiceAccountAdmission, DEFAULT_SERVICE_ACCOUNT,
    ENFORCE_MOUNTABLE_SECRETS_ANNOTATION, PLUGIN_NAME as SERVICE_ACCOUNT_PLUGIN,
    ROOT_CA_CONFIG_MAP, TOKEN_EXPIRATION_SECONDS, TOKEN_MOUNT_PATH, TOKEN_VOLUME_PREFIX,
};

/// What a write does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A create.
    Create,
    /// An update, patch or status update.
    Update,
    /// A delete.
    Delete,
}

/// The write being admitted.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionRequest<'a> {
    /// Create, update or delete.
    pub operation: Operation,
    /// Who asks: the authenticated user of an HTTP request, or the identity of an
    /// in-process client.
    pub user: &'a User,
    /// The kind.
    pub resource: &'a ResourceType,
    /// The namespace, for namespaced kinds.
    pub namespace: Option<&'a str>,
    /// The object's name.
    pub name: &'a str,
    /// The object as stored before the write (updates and deletes).
    pub old: Option<&'a Value>,
    /// Whether this is a write of the status subresource.
    pub status_only: bool,
}

/// A plugin that may change objects before they are validated and stored.
#[async_trait]
pub trait MutatingAdmission: Send + Sync + 'static {
    /// The plugin's name, for errors and traces.
    fn name(&self) -> &str;

    /// Changes `object` as the plugin wants, or refuses the write. Not called for deletes.
    ///
    /// # Errors
    /// The error the client gets; the write does not happen.
    async fn admit(&self, request: &AdmissionRequest<'_>, object: &mut Value) -> Result<(), Error>;
}

/// A plugin that may refuse writes after the object is complete and valid.
#[async_trait]
pub trait ValidatingAdmission: Send + Sync + 'static {
    /// The plugin's name, for errors and traces.
    fn name(&self) -> &str;

    /// Accepts or refuses the write. For a delete, `object` is the object being deleted.
    ///
    /// # Errors
    /// The error the client gets; the write does not happen.
    async fn validate(&self, request: &AdmissionRequest<'_>, object: &Value) -> Result<(), Error>;
}

/// The plugins every write passes, in order.
#[derive(Clone, Default)]
pub struct AdmissionChain {
    mutating: Vec<Arc<dyn MutatingAdmission>>,
    validating: Vec<Arc<dyn ValidatingAdmission>>,
}

impl AdmissionChain {
    /// Adds a mutating plugin after those already added.
    #[must_use]
    pub fn mutate(mut self, plugin: impl MutatingAdmission) -> Self {
        self.mutating.push(Arc::new(plugin));
        self
    }

    /// Adds a validating plugin after those already added.
    #[must_use]
    pub fn validate(mut self, plugin: impl ValidatingAdmission) -> Self {
        self.validating.push(Arc::new(plugin));
        self
    }

    /// Adds a plugin that both mutates and validates (as most of Kubernetes' own do),
    /// after those already added in each phase.
    #[must_use]
    pub fn plugin<P: MutatingAdmission + ValidatingAdmission>(mut self, plugin: P) -> Self {
        let plugin = Arc::new(plugin);
        self.mutating.push(plugin.clone());
        self.validating.push(plugin);
        self
    }

    /// Whether there are no plugins.
    pub fn is_empty(&self) -> bool {
        self.mutating.is_empty() && self.validating.is_empty()
    }

    /// Runs the mutating plugins.
    ///
    /// # Errors
    /// The first refusal.
    pub async fn run_mutating(
        &self,
        request: &AdmissionRequest<'_>,
        object: &mut Value,
    ) -> Result<(), Error> {
        for plugin in &self.mutating {
            plugin.admit(request, object).await.inspect_err(|e| {
                tracing::debug!(plugin = plugin.name(), error = %e, "mutating admission refused a write");
            })?;
        }
        Ok(())
    }

    /// Runs the validating plugins.
    ///
    /// # Errors
    /// The first refusal.
    pub async fn run_validating(
        &self,
        request: &AdmissionRequest<'_>,
        object: &Value,
    ) -> Result<(), Error> {
        for plugin in &self.validating {
            plugin.validate(request, object).await.inspect_err(|e| {
                tracing::debug!(plugin = plugin.name(), error = %e, "validating admission refused a write");
            })?;
        }
        Ok(())
    }
}
