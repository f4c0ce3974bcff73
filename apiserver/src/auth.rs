//! Authentication: bearer tokens from a token file, client certificates signed by the
//! cluster's CA, and (only when enabled) anonymous access.
//!
//! The token file has kube-apiserver's `--token-auth-file` format: one CSV line per token,
//! `token,user,uid,"group1,group2"` (groups optional). A request whose token is unknown,
//! or that has neither a token nor a verified client certificate while anonymous access is
//! off, gets 401 with a `Status` (`Unauthorized`), which kubectl reports as "You must be
//! logged in to the server".

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user name (`system:anonymous` for anonymous requests).
    pub name: String,
    /// The user's uid, when known.
    pub uid: String,
    /// The groups the user is in.
    pub groups: Vec<String>,
}

impl User {
    /// The identity of the server's own in-process clients (as Kubernetes' loopback
    /// client): `system:apiserver`, in `system:masters`.
    pub fn loopback() -> User {
        User {
            name: "system:apiserver".into(),
            uid: String::new(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    /// The identity of requests without credentials, when anonymous access is on.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// The identity a verified client certificate gave its connection: the certificate's
/// common name and organizations, as Kubernetes reads them. Put into each request's
/// extensions by the TLS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertIdentity(pub User);

/// How requests are authenticated.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<String, User>,
    /// Let requests without credentials through as `system:anonymous`.
    pub anonymous: bool,
    /// Where service account tokens are checked (their key, and the accounts they name).
    service_accounts: Option<ServiceAccounts>,
}

/// The registry service account tokens are checked against.
#[derive(Clone)]
struct ServiceAccounts(crate::Registry);

impl std::fmt::Debug for ServiceAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceAccounts")
    }
}

impl Authenticator {
    /// An authenticator that lets everyone in (plain HTTP on loopback, tests).
    pub fn allow_all() -> Authenticator {
        Authenticator {
            tokens: HashMap::new(),
            anonymous: true,
            service_accounts: None,
        }
    }

    /// The same authenticator, also accepting the service account tokens `registry`
    /// issues (`serviceaccounts/token`), while the account they name still exists.
    #[must_use]
    pub fn with_service_accounts(mut self, registry: crate::Registry) -> Authenticator {
        self.service_accounts = Some(ServiceAccounts(registry));
        self
    }

    /// The service account a bearer token is a valid token of, as a [`User`]:
    /// `system:serviceaccount:<namespace>:<name>`, in `system:serviceaccounts`,
    /// `system:serviceaccounts:<namespace>` and `system:authenticated`. `None` when it is
    /// not one, has expired, or names an account (or a bound pod) that is gone; a legacy
    /// token also when its Secret is gone or no longer holds it.
    pub async fn service_account(&self, authorization: Option<&str>) -> Option<User> {
        let ServiceAccounts(registry) = self.service_accounts.as_ref()?;
        let token = bearer(authorization?)?;
        if !crate::satoken::looks_like_jwt(token) {
            return None;
        }
        let now = crate::registry::now().as_second();
        let keys = registry.service_account_tokens();
        let Some(claims) = keys.verify(token, crate::satoken::ISSUER, now) else {
            return legacy_service_account(registry, token).await;
        };
        let accounts = crate::ServedResource::of::<k8s_openapi::api::core::v1::ServiceAccount>();
        let account = registry
            .get_shared(&accounts, Some(&claims.namespace), &claims.name)
            .await
            .ok()?;
        if uid_of(&account)? != claims.uid {
            return None;
        }
        if let Some((pod, uid)) = &claims.pod {
            let pods = crate::ServedResource::of::<k8s_openapi::api::core::v1::Pod>();
            let found = registry
                .get_shared(&pods, Some(&claims.namespace), pod)
                .await
                .ok()?;
            if uid_of(&found)? != *uid {
                return None;
            }
        }
        Some(service_account_user(
            &claims.namespace,
            &claims.name,
            claims.uid,
        ))
    }

    /// Reads a token file.
    ///
    /// # Errors
    /// When the file cannot be read, or a line has fewer than three fields.
    pub fn from_token_file(path: &Path) -> std::io::Result<Authenticator> {
        let text = std::fs::read_to_string(path)?;
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            if fields.len() < 3 || fields[0].is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} line {}: expected token,user,uid[,\"groups\"]",
                        path.display(),
                        i + 1
                    ),
                ));
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            tokens.insert(
                fields[0].clone(),
                User {
                    name: fields[1].clone(),
                    uid: fields[2].clone(),
                    groups,
                },
            );
        }
        Ok(Authenticator {
            tokens,
            anonymous: false,
            service_accounts: None,
        })
    }

    /// Who a request is, or `None` when it must be refused.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        cert: Option<&ClientCertIdentity>,
    ) -> Option<User> {
        if let Some(value) = authorization {
            return self.tokens.get(bearer(value)?).cloned();
        }
        if let Some(ClientCertIdentity(user)) = cert {
            return Some(user.clone());
        }
        self.anonymous.then(User::anonymous)
    }
}

fn uid_of(obj: &serde_json::Value) -> Option<String> {
    obj.pointer("/metadata/uid")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
}

fn being_deleted(obj: &serde_json::Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// The user a service account's token authenticates as.
fn service_account_user(namespace: &str, name: &str, uid: String) -> User {
    User {
        name: format!("system:serviceaccount:{namespace}:{name}"),
        uid,
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".into(),
        ],
    }
}

/// The account a legacy token (kept in a Secret) authenticates as: only while its Secret
/// exists, is not being deleted and holds this very token, and its account exists with
/// the uid the token names and is not being deleted — as Kubernetes' legacy validator.
async fn legacy_service_account(registry: &crate::Registry, token: &str) -> Option<User> {
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    let claims = registry.service_account_tokens().verify_legacy(token)?;
    let secrets = crate::ServedResource::of::<Secret>();
    let secret = registry
        .get_shared(&secrets, Some(&claims.namespace), &claims.secret)
        .await
        .ok()?;
    let held = secret
        .pointer("/data/token")
        .and_then(serde_json::Value::as_str)
        .and_then(|b64| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(b64).ok()
        })?;
    // Compared in constant time, as Kubernetes compares them.
    let same = held.len() == token.len()
        && held
            .iter()
            .zip(token.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same || being_deleted(&secret) {
        return None;
    }
    let accounts = crate::ServedResource::of::<ServiceAccount>();
    let account = registry
        .get_shared(&accounts, Some(&claims.namespace), &claims.name)
        .await
        .ok()?;
    if uid_of(&account)? != claims.uid || being_deleted(&account) {
        return None;
    }
    Some(service_account_user(
        &claims.namespace,
        &claims.name,
        claims.uid,
    ))
}

/// The token of an `Authorization: Bearer ...` header.
fn bearer(value: &str) -> Option<&str> {
    Some(
        value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?
            .trim(),
    )
}

/// Splits one CSV line, honouring double quotes.
fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().map(|f| f.push(c)).unwrap_or(()),
        }
    }
    out.into_iter().map(|f| f.trim().to_owned()).collect()
}

/// The axum middleware: authenticates every request and puts its [`User`] into the
/// request's extensions, or answers 401.
pub async fn middleware(
    State(auth): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let cert = req.extensions().get::<ClientCertIdentity>();
    let mut user = auth.authenticate(authorization, cert);
    if user.is_none() {
        user = auth.service_account(authorization).await;
    }
    match user {
        Some(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        None => {
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401,
            });
            let mut resp = (StatusCode::UNAUTHORIZED, status.to_string()).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_lines_give_users_with_groups() {
        let dir = std::env::temp_dir().join(format!("keelson-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("tokens.csv");
        std::fs::write(
            &path,
            "# admin\ns3cr3t,admin,1,\"system:masters,dev\"\nother,bob,2\n",
        )
        .expect("write");
        let auth = Authenticator::from_token_file(&path).expect("read");
        let admin = auth
            .authenticate(Some("Bearer s3cr3t"), None)
            .expect("admin");
        assert_eq!(admin.name, "admin");
        assert_eq!(admin.groups, ["system:masters", "dev"]);
        assert_eq!(
            auth.authenticate(Some("Bearer other"), None)
                .map(|u| u.name),
            Some("bob".into())
        );
        assert_eq!(auth.authenticate(Some("Bearer wrong"), None), None);
        assert_eq!(auth.authenticate(None, None), None, "anonymous is off");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_certificate_identifies_and_anonymous_needs_enabling() {
        let cert = ClientCertIdentity(User {
            name: "node-1".into(),
            uid: String::new(),
            groups: vec!["system:nodes".into()],
        });
        let auth = Authenticator::default();
        assert_eq!(
            auth.authenticate(None, Some(&cert)).map(|u| u.name),
            Some("node-1".into())
        );
        assert_eq!(
            Authenticator::allow_all()
                .authenticate(None, None)
                .map(|u| u.name),
            Some("system:anonymous".into())
        );
    }
}
