//! The legacy token controller (kube-controller-manager's `serviceaccount-token`): a
//! Secret of type `kubernetes.io/service-account-token` annotated
//! `kubernetes.io/service-account.name` gets a token of that account, the cluster's CA
//! and the namespace (`token`, `ca.crt`, `namespace`), and the annotation
//! `kubernetes.io/service-account.uid`; such a Secret whose account is gone (or has
//! another uid than the annotation says) is deleted, so deleting an account deletes its
//! token Secrets.
//!
//! As in Kubernetes since 1.24, no Secret is made for an account on its own: users create
//! the Secret (`kubectl apply` of an empty one with the annotation) and this controller
//! fills it in. A `token`, `ca.crt` or `namespace` already there is kept, except a
//! `ca.crt` that differs from the CA.
//!
//! The tokens are signed by the API server's key, which this crate does not hold: a
//! [`TokenSigner`] is given to the controller (see
//! [`ControllerManagerConfig::token_signer`]); without one the controller does not run,
//! as kube-controller-manager skips it without `--service-account-private-key-file`.
//!
//! [`ControllerManagerConfig::token_signer`]: crate::ControllerManagerConfig::token_signer

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use keelson_core::client::{Api, Client, DeleteOptions};
use keelson_core::k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use keelson_core::k8s_openapi::ByteString;

use crate::controller::{Action, Context, Controller, Reconciler};
use crate::informer::InformerFactory;
use crate::object::ObjectRef;
use crate::reflector::Reader;
use crate::watcher;

/// The type of the Secrets this controller fills in.
pub const SECRET_TYPE: &str = "kubernetes.io/service-account-token";

/// The annotation naming the account of a token Secret.
pub const ACCOUNT_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";

/// The annotation with the uid of the account of a token Secret.
pub const ACCOUNT_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

/// What a legacy token says: the account and the Secret that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyTokenClaims {
    /// The account's namespace.
    pub namespace: String,
    /// The account's name.
    pub name: String,
    /// The account's uid.
    pub uid: String,
    /// The Secret the token is kept in.
    pub secret: String,
}

/// Signs legacy service account tokens with the API server's service account key (the
/// API server checks them with the same key).
pub trait TokenSigner: Send + Sync + std::fmt::Debug + 'static {
    /// A token saying `claims`.
    ///
    /// # Errors
    /// When the token cannot be signed.
    fn sign(&self, claims: &LegacyTokenClaims) -> Result<String, keelson_core::Error>;
}

/// The legacy token controller's reconciler.
pub struct ServiceAccountTokenController {
    client: Client,
    accounts: Reader<ServiceAccount>,
    signer: Arc<dyn TokenSigner>,
    root_ca: Arc<str>,
}

impl std::fmt::Debug for ServiceAccountTokenController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountTokenController")
            .finish_non_exhaustive()
    }
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn token_secrets() -> watcher::Config {
    watcher::Config::default()
        .fields(&format!("type={SECRET_TYPE}"))
        .unwrap_or_default()
}

impl ServiceAccountTokenController {
    /// Builds the controller on `factory`'s informers, signing with `signer` and putting
    /// `root_ca` (PEM; nothing when empty) into the Secrets.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn controller(
        client: &Client,
        factory: &InformerFactory,
        signer: Arc<dyn TokenSigner>,
        root_ca: &str,
    ) -> (Controller<Secret>, Arc<Self>) {
        let sa_api = Api::<ServiceAccount>::all(client.clone());
        let secret_api = Api::<Secret>::all(client.clone());
        let accounts = factory
            .informer(sa_api.clone(), watcher::Config::default())
            .reader();
        let secrets = factory
            .informer(secret_api.clone(), token_secrets())
            .reader();
        let controller = Controller::with_factory(factory, secret_api, token_secrets())
            .name("serviceaccount-token")
            // An account that changes or goes: its token Secrets.
            .watches(
                sa_api,
                watcher::Config::default(),
                move |sa: &ServiceAccount| {
                    let (Some(ns), Some(name)) = (&sa.metadata.namespace, &sa.metadata.name) else {
                        return Vec::new();
                    };
                    secrets
                        .list_namespace(ns)
                        .into_iter()
                        .filter(|s| annotation(s, ACCOUNT_NAME_ANNOTATION) == Some(name))
                        .filter_map(|s| {
                            s.metadata
                                .name
                                .as_deref()
                                .map(|n| ObjectRef::new(Some(ns), n))
                        })
                        .collect()
                },
            );
        (
            controller,
            Arc::new(ServiceAccountTokenController {
                client: client.clone(),
                accounts,
                signer,
                root_ca: Arc::from(root_ca),
            }),
        )
    }

    /// The account `namespace/name` with uid `uid` (any uid when `None`): from the cache,
    /// else from the API server (an account just created may not be cached yet).
    async fn account(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Result<Option<Arc<ServiceAccount>>, keelson_core::Error> {
        let matches =
            |sa: &ServiceAccount| uid.is_none_or(|u| sa.metadata.uid.as_deref() == Some(u));
        if let Some(sa) = self.accounts.get(&ObjectRef::new(Some(namespace), name)) {
            if matches(&sa) {
                return Ok(Some(sa));
            }
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        Ok(api
            .get_opt(name)
            .await?
            .filter(|sa| matches(sa))
            .map(Arc::new))
    }
}

/// What a token Secret lacks, given the CA: `(ca, namespace, token)`.
fn needs(secret: &Secret, root_ca: &str) -> (bool, bool, bool) {
    let data = secret.data.as_ref();
    let value = |key: &str| data.and_then(|d| d.get(key)).map(|b| b.0.as_slice());
    let ca = !root_ca.is_empty() && value("ca.crt") != Some(root_ca.as_bytes());
    let namespace = value("namespace").is_none_or(<[u8]>::is_empty);
    let token = value("token").is_none_or(<[u8]>::is_empty);
    (ca, namespace, token)
}

#[async_trait]
impl Reconciler<Secret> for ServiceAccountTokenController {
    type Error = keelson_core::Error;

    async fn reconcile(&self, secret: Arc<Secret>, ctx: &Context) -> Result<Action, Self::Error> {
        if secret.type_.as_deref() != Some(SECRET_TYPE)
            || secret.metadata.deletion_timestamp.is_some()
        {
            return Ok(Action::await_change());
        }
        let namespace = ctx.key.namespace.as_deref().unwrap_or_default().to_owned();
        let name = ctx.key.name.to_string();
        let Some(account_name) = annotation(&secret, ACCOUNT_NAME_ANNOTATION) else {
            return Ok(Action::await_change());
        };
        let wanted_uid = annotation(&secret, ACCOUNT_UID_ANNOTATION);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let Some(account) = self.account(&namespace, account_name, wanted_uid).await? else {
            // Its account is gone: so is the token.
            let options = DeleteOptions {
                uid: secret.metadata.uid.clone(),
                ..DeleteOptions::default()
            };
            return match api.delete(&name, &options).await {
                Ok(_) => {
                    tracing::debug!(secret = %format!("{namespace}/{name}"), account = account_name, "deleted the token of an account that is gone");
                    Ok(Action::await_change())
                }
                Err(e) if e.is_not_found() || e.is_conflict() => Ok(Action::await_change()),
                Err(e) => Err(e),
            };
        };
        let (ca, ns, token) = needs(&secret, &self.root_ca);
        if !(ca || ns || token) {
            return Ok(Action::await_change());
        }
        let account_uid = account.metadata.uid.clone().unwrap_or_default();
        let mut next = (*secret).clone();
        let data = next.data.get_or_insert_with(BTreeMap::new);
        if ca {
            data.insert(
                "ca.crt".into(),
                ByteString(self.root_ca.as_bytes().to_vec()),
            );
        }
        if ns {
            data.insert(
                "namespace".into(),
                ByteString(namespace.clone().into_bytes()),
            );
        }
        if token {
            let signed = self.signer.sign(&LegacyTokenClaims {
                namespace: namespace.clone(),
                name: account_name.to_owned(),
                uid: account_uid.clone(),
                secret: name.clone(),
            })?;
            data.insert("token".into(), ByteString(signed.into_bytes()));
        }
        let annotations = next.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(ACCOUNT_NAME_ANNOTATION.into(), account_name.to_owned());
        annotations.insert(ACCOUNT_UID_ANNOTATION.into(), account_uid);
        next.metadata.managed_fields = None;
        match api.replace(&name, &next).await {
            Ok(_) => {
                tracing::debug!(secret = %format!("{namespace}/{name}"), "filled in a service account token");
                Ok(Action::await_change())
            }
            // A newer version is on its way to the cache; its event brings it back here.
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(Action::await_change()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_secret_needs_what_it_lacks_and_a_ca_that_differs() {
        assert_eq!(needs(&secret(&[]), "CA"), (true, true, true));
        assert_eq!(needs(&secret(&[]), ""), (false, true, true), "no CA to put");
        let full = secret(&[("ca.crt", "CA"), ("namespace", "ns"), ("token", "t")]);
        assert_eq!(needs(&full, "CA"), (false, false, false));
        assert_eq!(needs(&full, "NEW"), (true, false, false));
        let empty = secret(&[("ca.crt", "CA"), ("namespace", ""), ("token", "")]);
        assert_eq!(needs(&empty, "CA"), (false, true, true));
    }
}
