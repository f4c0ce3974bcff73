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
}

impl Authenticator {
    /// An authenticator that lets everyone in (plain HTTP on loopback, tests).
    pub fn allow_all() -> Authenticator {
        Authenticator {
            tokens: HashMap::new(),
            anonymous: true,
        }
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
        })
    }

    /// Who a request is, or `None` when it must be refused.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        cert: Option<&ClientCertIdentity>,
    ) -> Option<User> {
        if let Some(value) = authorization {
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))?
                .trim();
            return self.tokens.get(token).cloned();
        }
        if let Some(ClientCertIdentity(user)) = cert {
            return Some(user.clone());
        }
        self.anonymous.then(User::anonymous)
    }
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
    match auth.authenticate(authorization, cert) {
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
