//! The ServiceAccount controller: every active namespace has a `default` ServiceAccount.
//!
//! It reconciles namespaces, and a namespace again when its `default` account is
//! deleted, creating the account when it is missing (namespaces being deleted are left
//! alone). Tokens for the accounts are issued by the API server (`serviceaccounts/token`)
//! and projected into pods by the node agent.

use std::sync::Arc;

use async_trait::async_trait;
use keelson_core::client::{Api, Client};
use keelson_core::k8s_openapi::api::core::v1::{Namespace, ServiceAccount};

use crate::controller::{Action, Context, Controller, Reconciler};
use crate::informer::InformerFactory;
use crate::object::ObjectRef;
use crate::reflector::Reader;
use crate::watcher;

/// The accounts every namespace gets.
pub const DEFAULT_ACCOUNTS: [&str; 1] = ["default"];

/// The ServiceAccount reconciler.
pub struct ServiceAccountController {
    client: Client,
    accounts: Reader<ServiceAccount>,
}

impl std::fmt::Debug for ServiceAccountController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountController")
            .finish_non_exhaustive()
    }
}

impl ServiceAccountController {
    /// Builds the controller on `factory`'s informers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
    ) -> (Controller<Namespace>, Arc<Self>) {
        let sa_api = Api::<ServiceAccount>::all(client.clone());
        let accounts = factory
            .informer(sa_api.clone(), watcher::Config::default())
            .reader();
        let controller = Controller::with_factory(
            factory,
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        )
        .name("serviceaccount")
        .watches(sa_api, watcher::Config::default(), |sa: &ServiceAccount| {
            let name = sa.metadata.name.as_deref().unwrap_or_default();
            match (&sa.metadata.namespace, DEFAULT_ACCOUNTS.contains(&name)) {
                (Some(ns), true) => vec![ObjectRef::new(None, ns)],
                _ => Vec::new(),
            }
        });
        (
            controller,
            Arc::new(ServiceAccountController {
                client: client.clone(),
                accounts,
            }),
        )
    }
}

#[async_trait]
impl Reconciler<Namespace> for ServiceAccountController {
    type Error = keelson_core::Error;

    async fn reconcile(&self, ns: Arc<Namespace>, ctx: &Context) -> Result<Action, Self::Error> {
        let terminating = ns.metadata.deletion_timestamp.is_some()
            || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        if terminating {
            return Ok(Action::await_change());
        }
        let name = ctx.key.name.to_string();
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        for account in DEFAULT_ACCOUNTS {
            if self
                .accounts
                .get(&ObjectRef::new(Some(&name), account))
                .is_some()
            {
                continue;
            }
            let mut sa = ServiceAccount::default();
            sa.metadata.name = Some(account.to_owned());
            match api.create(&sa).await {
                Ok(_) => tracing::debug!(namespace = %name, account, "created service account"),
                Err(e) if e.is_already_exists() => {}
                Err(e) if e.is_not_found() || e.code() == 403 => return Ok(Action::await_change()),
                Err(e) => return Err(e),
            }
        }
        Ok(Action::await_change())
    }
}
