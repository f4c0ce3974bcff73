//! Service account tokens: the `serviceaccounts/token` subresource (TokenRequest, what
//! `kubectl create token` asks for) and the authentication of the tokens it issues.
//!
//! A token is a JWT signed with the cluster's service-account key (ECDSA P-256, `ES256`;
//! Kubernetes accepts RSA or ECDSA keys for this). Its claims are the ones Kubernetes puts
//! in a bound token: `iss`, `sub` (`system:serviceaccount:<namespace>:<name>`), `aud`,
//! `exp`, `iat`, `nbf`, `jti`, and `kubernetes.io` with the namespace, the account's name
//! and uid, and the pod the token is bound to, if any. A request bearing one is
//! authenticated as the account (groups `system:serviceaccounts`,
//! `system:serviceaccounts:<namespace>`, `system:authenticated`) while the token has not
//! expired, its audience includes the API server's, and the account (and the bound pod)
//! still exist with the uid the token names.
//!
//! Legacy tokens, those the `serviceaccount-token` controller puts into Secrets of type
//! `kubernetes.io/service-account-token` ([`ServiceAccountTokens::issue_legacy`]), have
//! Kubernetes' legacy claims (issuer `kubernetes/serviceaccount`, the
//! `kubernetes.io/serviceaccount/...` claims, no audience, no expiry) and authenticate
//! as the account only while their Secret exists, is not being deleted and still holds
//! that very token, and the account exists with its uid.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde::Deserialize;
use serde_json::{json, Value};

/// The issuer and default audience of the tokens, as Kubernetes' default
/// `--service-account-issuer`.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The issuer of legacy tokens (those kept in Secrets), as Kubernetes'.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// The shortest lifetime a TokenRequest may ask for, in seconds (as Kubernetes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

/// The lifetime a TokenRequest gets when it does not ask for one.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// The longest lifetime a TokenRequest may ask for (2^32 seconds, as Kubernetes).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// The lifetime the token volume of a pod asks for (3607 s). A token bound to a pod and
/// meant for the API server that asks for exactly this is valid for
/// [`EXTENDED_EXPIRATION_SECONDS`] instead, and says when the hour is up in its
/// `kubernetes.io.warnafter` claim, as Kubernetes' `--service-account-extend-token-expiration`
/// (on by default) does: clients that do not re-read their token keep working while their
/// node refreshes it.
pub const WARN_ONLY_EXPIRATION_SECONDS: i64 = 3607;

/// How long an extended token is valid (one year).
pub const EXTENDED_EXPIRATION_SECONDS: i64 = 365 * 24 * 60 * 60;

/// The service-account signing key: issues tokens and verifies them.
pub struct ServiceAccountTokens {
    key: EcdsaKeyPair,
    key_id: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountTokens")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("service-account key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold a PKCS#8 ECDSA P-256 key.
    #[error("service-account key {path} is not a PKCS#8 ECDSA P-256 key")]
    Invalid {
        /// The file.
        path: String,
    },
}

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    /// The account's namespace.
    pub namespace: String,
    /// The account's name.
    pub name: String,
    /// The account's uid.
    pub uid: String,
    /// The pod the token is bound to: its name and uid.
    pub pod: Option<(String, String)>,
}

/// What a legacy token (one kept in a Secret) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyClaims {
    /// The account's namespace.
    pub namespace: String,
    /// The account's name.
    pub name: String,
    /// The account's uid.
    pub uid: String,
    /// The Secret that holds the token.
    pub secret: String,
}

/// What a token is issued for.
#[derive(Clone, Debug)]
pub struct TokenSpec<'a> {
    /// The account's namespace.
    pub namespace: &'a str,
    /// The account's name.
    pub name: &'a str,
    /// The account's uid.
    pub uid: &'a str,
    /// Who the token is for.
    pub audiences: &'a [String],
    /// Seconds from `now` until it expires.
    pub expiration_seconds: i64,
    /// Seconds from `now` after which its use should be warned about (the
    /// `kubernetes.io.warnafter` claim of an extended token), if any.
    pub warn_after_seconds: Option<i64>,
    /// The pod it is bound to (name, uid).
    pub pod: Option<(&'a str, &'a str)>,
    /// Seconds since the epoch.
    pub now: i64,
}

impl ServiceAccountTokens {
    /// A new random key (tokens die with it: for in-process clusters and tests).
    ///
    /// # Panics
    /// Never in practice: generating a P-256 key fails only when the system has no
    /// randomness.
    pub fn generate() -> ServiceAccountTokens {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("the system's random source works");
        Self::from_pkcs8(pkcs8.as_ref()).expect("a key just generated parses")
    }

    /// The key in `path` (PKCS#8 DER), made and written there (mode 0600) when the file
    /// does not exist, so tokens stay valid across restarts.
    ///
    /// # Errors
    /// When the file cannot be read or written, or does not hold a P-256 key.
    pub fn load_or_create(path: &Path) -> Result<ServiceAccountTokens, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(der) => Self::from_pkcs8(&der).ok_or_else(|| KeyError::Invalid {
                path: path.display().to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = SystemRandom::new();
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                        .map_err(|_| io(std::io::Error::other("no randomness for a new key")))?;
                crate::tls::write_secret(path, pkcs8.as_ref()).map_err(io)?;
                Self::from_pkcs8(pkcs8.as_ref()).ok_or_else(|| KeyError::Invalid {
                    path: path.display().to_string(),
                })
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_pkcs8(der: &[u8]) -> Option<ServiceAccountTokens> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .ok()?;
        // The key id: a digest of the public key, as Kubernetes derives its `kid`.
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let key_id = URL_SAFE_NO_PAD.encode(digest.as_ref());
        Some(ServiceAccountTokens { key, key_id, rng })
    }

    /// Issues a token.
    ///
    /// # Errors
    /// Only when signing fails (no randomness).
    pub fn issue(&self, spec: &TokenSpec<'_>) -> Result<String, keelson_core::Error> {
        let mut kubernetes = json!({
            "namespace": spec.namespace,
            "serviceaccount": {"name": spec.name, "uid": spec.uid},
        });
        if let Some((pod, uid)) = spec.pod {
            kubernetes["pod"] = json!({"name": pod, "uid": uid});
        }
        if let Some(after) = spec.warn_after_seconds {
            kubernetes["warnafter"] = json!(spec.now + after);
        }
        let claims = json!({
            "aud": spec.audiences,
            "exp": spec.now + spec.expiration_seconds,
            "iat": spec.now,
            "iss": ISSUER,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": kubernetes,
            "nbf": spec.now,
            "sub": format!("system:serviceaccount:{}:{}", spec.namespace, spec.name),
        });
        self.sign(&claims)
    }

    /// Issues a legacy token, the kind kept in a Secret of type
    /// `kubernetes.io/service-account-token`: issuer `kubernetes/serviceaccount`, no
    /// audience, no expiry; valid while that Secret (holding this very token) and the
    /// account exist.
    ///
    /// # Errors
    /// Only when signing fails (no randomness).
    pub fn issue_legacy(&self, claims: &LegacyClaims) -> Result<String, keelson_core::Error> {
        self.sign(&json!({
            "iss": LEGACY_ISSUER,
            "kubernetes.io/serviceaccount/namespace": claims.namespace,
            "kubernetes.io/serviceaccount/secret.name": claims.secret,
            "kubernetes.io/serviceaccount/service-account.name": claims.name,
            "kubernetes.io/serviceaccount/service-account.uid": claims.uid,
            "sub": format!("system:serviceaccount:{}:{}", claims.namespace, claims.name),
        }))
    }

    /// A JWT of `claims`, signed.
    fn sign(&self, claims: &Value) -> Result<String, keelson_core::Error> {
        let header = json!({"alg": "ES256", "kid": self.key_id, "typ": "JWT"});
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self
            .key
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| keelson_core::Error::internal("signing a service account token failed"))?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        Ok(token)
    }

    /// The claims of a token signed by this key (ES256), undecided whether they are valid.
    fn signed_claims<T: serde::de::DeserializeOwned>(&self, token: &str) -> Option<T> {
        let mut parts = token.split('.');
        let (header, claims, sig) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let signed_len = header.len() + 1 + claims.len();
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        public
            .verify(token.as_bytes().get(..signed_len)?, &sig)
            .ok()?;
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()
    }

    /// Checks a legacy token's signature and issuer. `None` when it is not a legacy
    /// token of this key; whether its Secret still holds it and its account still exists
    /// is the caller's question.
    pub fn verify_legacy(&self, token: &str) -> Option<LegacyClaims> {
        let c: RawLegacyClaims = self.signed_claims(token)?;
        let sub = format!("system:serviceaccount:{}:{}", c.namespace, c.name);
        (c.iss == LEGACY_ISSUER && c.sub == sub).then_some(LegacyClaims {
            namespace: c.namespace,
            name: c.name,
            uid: c.uid,
            secret: c.secret,
        })
    }

    /// Checks a token's signature, lifetime, issuer and audience (`audience` must be one
    /// of its audiences) at `now` (seconds since the epoch). `None` when it is not a valid
    /// token of this key; whether the account still exists is the caller's question.
    pub fn verify(&self, token: &str, audience: &str, now: i64) -> Option<TokenClaims> {
        let claims: Claims = self.signed_claims(token)?;
        let fresh = claims.nbf.unwrap_or(claims.iat) <= now && now < claims.exp;
        let for_us = claims.aud.iter().any(|a| a == audience);
        if !(fresh && for_us && claims.iss == ISSUER) {
            return None;
        }
        let k = claims.kubernetes;
        if claims.sub
            != format!(
                "system:serviceaccount:{}:{}",
                k.namespace, k.serviceaccount.name
            )
        {
            return None;
        }
        Some(TokenClaims {
            namespace: k.namespace,
            name: k.serviceaccount.name,
            uid: k.serviceaccount.uid,
            pod: k.pod.map(|p| (p.name, p.uid)),
        })
    }
}

impl crate::Registry {
    /// Issues a token for a service account (`POST .../serviceaccounts/NAME/token`, a
    /// `TokenRequest`), answering the request with its `status` filled in.
    ///
    /// # Errors
    /// 404 when the account (or the pod the token is to be bound to) does not exist; 422
    /// for a lifetime under 10 minutes or over 2^32 seconds, or a bound object that is not
    /// a Pod; 400 for a body that is not a TokenRequest, or a pod that runs as another
    /// account.
    pub async fn create_token(
        &self,
        res: &crate::ServedResource,
        namespace: Option<&str>,
        name: &str,
        request: &Value,
    ) -> Result<Value, keelson_core::Error> {
        use keelson_core::Error;
        use keelson_core::FieldError;
        const KIND: (&str, &str) = ("authentication.k8s.io", "TokenRequest");
        let Some(namespace) = namespace else {
            return Err(Error::bad_request("Namespace parameter required."));
        };
        if let Some(kind) = request.get("kind").and_then(Value::as_str) {
            if kind != "TokenRequest" {
                return Err(Error::bad_request(format!(
                    "the body of the request was not a TokenRequest: got kind {kind:?}"
                )));
            }
        }
        let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
        let expiration = match spec.get("expirationSeconds") {
            None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| Error::bad_request("spec.expirationSeconds must be an integer"))?,
        };
        let mut causes = Vec::new();
        if expiration < MIN_EXPIRATION_SECONDS {
            causes.push(FieldError::invalid(
                "spec.expirationSeconds",
                expiration,
                "may not specify a duration less than 10 minutes",
            ));
        } else if expiration > MAX_EXPIRATION_SECONDS {
            causes.push(FieldError::invalid(
                "spec.expirationSeconds",
                expiration,
                "may not specify a duration larger than 2^32 seconds",
            ));
        }
        let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => vec![ISSUER.to_owned()],
        };
        let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
        let bound_pod = match bound {
            None => None,
            Some(b) => {
                let kind = b.get("kind").and_then(Value::as_str).unwrap_or_default();
                let pod = b.get("name").and_then(Value::as_str).unwrap_or_default();
                if kind != "Pod" {
                    causes.push(FieldError::not_supported(
                        "spec.boundObjectRef.kind",
                        kind,
                        &["Pod"],
                    ));
                    None
                } else {
                    Some((
                        pod.to_owned(),
                        b.get("uid").and_then(Value::as_str).map(str::to_owned),
                    ))
                }
            }
        };
        if !causes.is_empty() {
            return Err(Error::invalid(KIND, name, causes));
        }
        let account = self.get(res, Some(namespace), name).await?;
        let uid = account
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let pod = match bound_pod {
            None => None,
            Some((pod, wanted_uid)) => {
                let pods = crate::ServedResource::of::<k8s_openapi::api::core::v1::Pod>();
                let found = self.get(&pods, Some(namespace), &pod).await?;
                let uid = found
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if wanted_uid
                    .as_deref()
                    .is_some_and(|w| !w.is_empty() && w != uid)
                {
                    return Err(Error::conflict(
                        &pods.rt,
                        pod.as_str(),
                        format!(
                            "the UID in the bound object reference ({}) does not match the UID in record ({uid}). The object might have been deleted and then recreated",
                            wanted_uid.unwrap_or_default()
                        ),
                    ));
                }
                // A pod's token is for the account it runs as, and no other.
                let runs_as = found
                    .pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if runs_as != name {
                    return Err(Error::bad_request(format!(
                        "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
                    )));
                }
                Some((pod, uid))
            }
        };
        let now = crate::registry::now().as_second();
        // A pod's token volume asks for 3607 s: it gets a year, with a warning after the
        // hour (the status still says 3607 s, so its node refreshes it in time).
        let extended = pod.is_some()
            && expiration == WARN_ONLY_EXPIRATION_SECONDS
            && audiences.iter().all(|a| a == ISSUER);
        let token = self.service_account_tokens().issue(&TokenSpec {
            namespace,
            name,
            uid: &uid,
            audiences: &audiences,
            expiration_seconds: if extended {
                EXTENDED_EXPIRATION_SECONDS
            } else {
                expiration
            },
            warn_after_seconds: extended.then_some(expiration),
            pod: pod.as_ref().map(|(n, u)| (n.as_str(), u.as_str())),
            now,
        })?;
        let expires =
            k8s_openapi::jiff::Timestamp::from_second(now + expiration).map_err(Error::internal)?;
        let mut spec = spec;
        spec["audiences"] = json!(audiences);
        spec["expirationSeconds"] = json!(expiration);
        if spec.get("boundObjectRef").is_none() {
            spec["boundObjectRef"] = Value::Null;
        }
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": expires.to_string()},
        }))
    }
}

/// Whether a bearer token looks like a JWT (three dot-separated parts), so that only
/// those are tried as service account tokens.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

#[derive(Deserialize)]
struct Claims {
    aud: Vec<String>,
    exp: i64,
    iat: i64,
    nbf: Option<i64>,
    iss: String,
    sub: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

#[derive(Deserialize)]
struct RawLegacyClaims {
    iss: String,
    sub: String,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    namespace: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    uid: String,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    secret: String,
}

#[derive(Deserialize)]
struct KubernetesClaims {
    namespace: String,
    serviceaccount: NamedUid,
    pod: Option<NamedUid>,
}

#[derive(Deserialize)]
struct NamedUid {
    name: String,
    uid: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(now: i64) -> TokenSpec<'static> {
        static AUD: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec![ISSUER.to_owned()]);
        TokenSpec {
            namespace: "default",
            name: "builder",
            uid: "u-1",
            audiences: &AUD,
            expiration_seconds: 3600,
            warn_after_seconds: None,
            pod: None,
            now,
        }
    }

    #[test]
    fn an_issued_token_verifies_until_it_expires() {
        let keys = ServiceAccountTokens::generate();
        let token = keys.issue(&spec(1_000)).expect("issue");
        let claims = keys.verify(&token, ISSUER, 1_500).expect("valid");
        assert_eq!(
            (
                claims.namespace.as_str(),
                claims.name.as_str(),
                claims.uid.as_str()
            ),
            ("default", "builder", "u-1")
        );
        assert_eq!(keys.verify(&token, ISSUER, 4_600), None, "expired");
        assert_eq!(keys.verify(&token, ISSUER, 999), None, "not yet valid");
        assert_eq!(keys.verify(&token, "other-audience", 1_500), None);
    }

    #[test]
    fn a_token_of_another_key_or_altered_is_refused() {
        let keys = ServiceAccountTokens::generate();
        let other = ServiceAccountTokens::generate();
        let token = other.issue(&spec(1_000)).expect("issue");
        assert_eq!(keys.verify(&token, ISSUER, 1_500), None);
        let mine = keys.issue(&spec(1_000)).expect("issue");
        let mut parts: Vec<String> = mine.split('.').map(str::to_owned).collect();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).expect("b64")).expect("json");
        claims["kubernetes.io"]["serviceaccount"]["name"] = json!("admin");
        claims["sub"] = json!("system:serviceaccount:default:admin");
        parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        assert_eq!(keys.verify(&parts.join("."), ISSUER, 1_500), None);
        assert_eq!(keys.verify("a.b", ISSUER, 1_500), None);
        assert_eq!(keys.verify("not a token", ISSUER, 1_500), None);
    }

    #[test]
    fn a_legacy_token_verifies_as_legacy_only() {
        let keys = ServiceAccountTokens::generate();
        let claims = LegacyClaims {
            namespace: "default".into(),
            name: "builder".into(),
            uid: "u-1".into(),
            secret: "builder-token".into(),
        };
        let token = keys.issue_legacy(&claims).expect("issue");
        assert_eq!(keys.verify_legacy(&token), Some(claims));
        assert_eq!(
            keys.verify(&token, ISSUER, 1_500),
            None,
            "not a bound token"
        );
        let bound = keys.issue(&spec(1_000)).expect("issue");
        assert_eq!(keys.verify_legacy(&bound), None, "not a legacy token");
        let other = ServiceAccountTokens::generate();
        assert_eq!(other.verify_legacy(&token), None, "another key's");
    }

    #[test]
    fn the_key_file_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sa.key");
        let first = ServiceAccountTokens::load_or_create(&path).expect("create");
        let token = first.issue(&spec(1_000)).expect("issue");
        let again = ServiceAccountTokens::load_or_create(&path).expect("load");
        assert!(again.verify(&token, ISSUER, 1_500).is_some());
        std::fs::write(&path, b"garbage").expect("write");
        assert!(matches!(
            ServiceAccountTokens::load_or_create(&path),
            Err(KeyError::Invalid { .. })
        ));
    }
}
