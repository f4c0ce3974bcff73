//! Service account tokens for projected volumes, as kubelet's token manager gets them: a
//! TokenRequest (`serviceaccounts/<name>/token`) bound to the pod, cached, and asked for
//! again when 80% of its lifetime or 24 hours have passed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use keelson_core::client::{Api, Client};
use keelson_core::k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::lock;

/// The lifetime a projected token asks for when its source does not say (one hour).
pub(crate) const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// A token is asked for again after this long at the latest, whatever its lifetime.
const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// How long after it was issued a token of lifetime `ttl` is asked for again: when 80% of
/// its lifetime has passed, or 24 hours, whichever comes first (kubelet's rule, without
/// its jitter of up to 10 s).
pub(crate) fn refresh_after(ttl: Duration) -> Duration {
    (ttl * 4 / 5).min(MAX_AGE)
}

/// What a token is for: the same request gets the same (cached) token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    account: String,
    audience: Option<String>,
    expiration_seconds: i64,
    pod_uid: String,
}

#[derive(Debug)]
struct Cached {
    token: String,
    /// When it is asked for again.
    refresh_at: Instant,
    /// When it is no longer valid.
    expires_at: Instant,
}

/// A node's service account tokens, by what they were asked for.
#[derive(Debug, Default)]
pub(crate) struct TokenManager {
    tokens: Mutex<HashMap<Key, Cached>>,
}

/// Why a token could not be had.
#[derive(Debug)]
pub(crate) struct TokenError(pub String);

impl TokenManager {
    /// A token of `pod`'s service account for `audience` (the API server's own when
    /// `None`) lasting `expiration_seconds`, bound to the pod: the cached one while it
    /// is fresh, else a new one. A refresh that fails keeps giving the cached token
    /// while it is still valid, as kubelet does.
    pub(crate) async fn token(
        &self,
        client: &Client,
        pod: &Pod,
        audience: Option<&str>,
        expiration_seconds: i64,
    ) -> Result<String, TokenError> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let key = Key {
            namespace,
            account,
            audience: audience.filter(|a| !a.is_empty()).map(str::to_owned),
            expiration_seconds,
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        };
        let now = Instant::now();
        let still_valid = {
            let tokens = lock(&self.tokens);
            match tokens.get(&key) {
                Some(c) if now < c.refresh_at => return Ok(c.token.clone()),
                Some(c) if now < c.expires_at => Some(c.token.clone()),
                _ => None,
            }
        };
        match request(client, pod, &key).await {
            Ok((token, ttl)) => {
                let cached = Cached {
                    token: token.clone(),
                    refresh_at: now + refresh_after(ttl),
                    expires_at: now + ttl,
                };
                lock(&self.tokens).insert(key, cached);
                Ok(token)
            }
            Err(e) => match still_valid {
                Some(token) => {
                    tracing::warn!(pod = ?pod.metadata.name, account = %key.account, error = %e.0, "could not refresh a service account token; the current one is still valid");
                    Ok(token)
                }
                None => Err(e),
            },
        }
    }

    /// When the next of `pod_uid`'s tokens is due for a refresh.
    pub(crate) fn next_refresh(&self, pod_uid: &str) -> Option<Instant> {
        lock(&self.tokens)
            .iter()
            .filter(|(k, _)| k.pod_uid == pod_uid)
            .map(|(_, c)| c.refresh_at)
            .min()
    }

    /// Forgets the tokens of a pod that is gone.
    pub(crate) fn forget(&self, pod_uid: &str) {
        lock(&self.tokens).retain(|k, _| k.pod_uid != pod_uid);
    }
}

/// Asks the API server for a token: its text and lifetime.
async fn request(client: &Client, pod: &Pod, key: &Key) -> Result<(String, Duration), TokenError> {
    let mut spec = json!({
        "expirationSeconds": key.expiration_seconds,
        "boundObjectRef": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.metadata.name,
            "uid": pod.metadata.uid,
        },
    });
    if let Some(audience) = &key.audience {
        spec["audiences"] = json!([audience]);
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &key.namespace);
    let answer: Value = api
        .create_subresource("token", &key.account, &body)
        .await
        .map_err(|e| TokenError(format!("failed to fetch token: {e}")))?;
    let token = answer
        .pointer("/status/token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError("failed to fetch token: the answer has no token".into()))?;
    let seconds = answer
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(key.expiration_seconds)
        .max(1);
    Ok((
        token.to_owned(),
        Duration::from_secs(u64::try_from(seconds).unwrap_or(1)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_refreshed_at_80_percent_of_its_lifetime_or_after_a_day() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(2880)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(3607)),
            Duration::from_millis(2_885_600)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(600)),
            Duration::from_secs(480)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(48 * 3600)),
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(30 * 3600)),
            Duration::from_secs(24 * 3600),
            "80% of 30 h is more than a day"
        );
    }
}
