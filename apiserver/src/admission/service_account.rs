//! Kubernetes' `ServiceAccount` admission plugin: every pod runs as a service account
//! that exists, and gets a token for it unless it opts out.
//!
//! On the create of a pod (not its updates, not its subresources), as kube-apiserver's
//! plugin of the same name:
//!
//! - `spec.serviceAccountName` defaults to `default` (and the deprecated
//!   `spec.serviceAccount` follows it);
//! - the account must exist, or the pod is refused with 403 Forbidden, `pods "web" is
//!   forbidden: error looking up service account ns/default: serviceaccount "default" not
//!   found`. A `default` account that the cache does not have yet is looked up again in
//!   the store, up to ten times 100–200 ms apart, since the `serviceaccount` controller
//!   creates it right after its namespace;
//! - unless `automountServiceAccountToken` is false (the pod's setting wins over the
//!   account's), the projected volume `kube-api-access-<5 random characters>` (a bound
//!   token at `token`, the cluster's CA from the `kube-root-ca.crt` ConfigMap at `ca.crt`,
//!   and the pod's namespace at `namespace`) is added, and mounted read-only at
//!   [`TOKEN_MOUNT_PATH`] in every container and init container that does not already
//!   mount something there;
//! - a pod without `imagePullSecrets` gets the account's;
//! - an account annotated `kubernetes.io/enforce-mountable-secrets: "true"` limits the
//!   secrets the pod may use (volumes, `env`, `envFrom`) to those in its `secrets`, and
//!   the pull secrets to its `imagePullSecrets`;
//! - a mirror pod (annotation `kubernetes.io/config.mirror`, the API's copy of a static
//!   pod) is not changed, and is refused when it names a service account, references a
//!   secret or projects a service account token.
//!
//! Accounts are read from the registry's watch cache, so admitting a pod costs no store
//! read (only a missing account is looked for in the store).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use keelson_core::{Error, ResourceType};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{AdmissionRequest, MutatingAdmission, Operation, ValidatingAdmission};
use crate::Registry;

/// The plugin's name, as kube-apiserver's `--disable-admission-plugins` knows it.
pub const PLUGIN_NAME: &str = "ServiceAccount";

/// The account a pod that names none runs as.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Where the token volume is mounted in every container.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The prefix of the token volume's name (`kube-api-access-x7k2q`).
pub const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";

/// The ConfigMap that holds the cluster's CA in every namespace (`ca.crt`).
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// The lifetime the token volume asks for: one hour and seven seconds, the value
/// Kubernetes uses so that its API server can tell these tokens apart.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;

/// The annotation of an account that limits the secrets its pods may use.
pub const ENFORCE_MOUNTABLE_SECRETS_ANNOTATION: &str = "kubernetes.io/enforce-mountable-secrets";

/// The annotation that marks a mirror pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// How many times a missing `default` account is looked up before the pod is refused.
const DEFAULT_ACCOUNT_ATTEMPTS: u32 = 10;

/// Kubernetes' `ServiceAccount` admission plugin (see the [module docs](self)): both a
/// mutating and a validating plugin; add it with [`super::AdmissionChain::plugin`].
///
/// ```
/// # async fn demo() {
/// use std::sync::Arc;
/// use keelson_apiserver::admission::{AdmissionChain, ServiceAccountAdmission};
/// use keelson_apiserver::Registry;
///
/// let registry = Registry::new(Arc::new(keelson_store::MemStore::ephemeral()));
/// let plugin = ServiceAccountAdmission::new(&registry);
/// let registry = registry.with_admission(AdmissionChain::default().plugin(plugin));
/// # let _ = registry;
/// # }
/// ```
#[derive(Clone)]
pub struct ServiceAccountAdmission {
    /// Where accounts are read: the registry's caches and store (without this plugin in
    /// its admission chain, so the two do not hold each other).
    registry: Registry,
}

impl std::fmt::Debug for ServiceAccountAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountAdmission")
            .finish_non_exhaustive()
    }
}

/// What the plugin reads of a ServiceAccount.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Account {
    #[serde(default)]
    metadata: AccountMeta,
    #[serde(default)]
    automount_service_account_token: Option<bool>,
    #[serde(default)]
    secrets: Option<Vec<NameRef>>,
    #[serde(default)]
    image_pull_secrets: Option<Vec<NameRef>>,
}

#[derive(Debug, Default, Deserialize)]
struct AccountMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
struct NameRef {
    #[serde(default)]
    name: String,
}

impl Account {
    fn enforces_mountable_secrets(&self) -> bool {
        // Go's strconv.ParseBool, as Kubernetes reads the annotation.
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ENFORCE_MOUNTABLE_SECRETS_ANNOTATION))
            .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
    }

    fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().flatten().map(|s| s.name.as_str())
    }

    fn pull_secret_names(&self) -> impl Iterator<Item = &str> {
        self.image_pull_secrets
            .iter()
            .flatten()
            .map(|s| s.name.as_str())
    }
}

fn service_accounts() -> &'static ResourceType {
    static RT: OnceLock<ResourceType> = OnceLock::new();
    RT.get_or_init(ResourceType::of::<k8s_openapi::api::core::v1::ServiceAccount>)
}

/// Whether the plugin has anything to do with this write: creates of pods themselves.
fn concerns(request: &AdmissionRequest<'_>) -> bool {
    let rt = request.resource;
    request.operation == Operation::Create
        && !request.status_only
        && rt.group.is_empty()
        && rt.plural == "pods"
}

fn is_mirror(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

fn account_name(pod: &Value) -> &str {
    pod.pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The name Kubernetes' errors give the pod: on a create, its `generateName` when the
/// name was generated from it (the name is assigned after admission there).
fn error_name<'a>(request: &AdmissionRequest<'a>, pod: &'a Value) -> &'a str {
    let generated = pod
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
        .filter(|g| !g.is_empty());
    match generated {
        Some(prefix)
            if request.name.len() == prefix.len() + 5 && request.name.starts_with(prefix) =>
        {
            prefix
        }
        _ => request.name,
    }
}

fn forbidden(request: &AdmissionRequest<'_>, pod: &Value, reason: impl std::fmt::Display) -> Error {
    Error::forbidden(request.resource, error_name(request, pod), reason)
}

/// The containers of every kind (`initContainers`, `containers`, `ephemeralContainers`),
/// with the kind's name in Kubernetes' messages.
fn all_containers(pod: &Value) -> impl Iterator<Item = (&'static str, &Value)> {
    [
        ("initContainers", "init container"),
        ("containers", "container"),
        ("ephemeralContainers", "ephemeral container"),
    ]
    .into_iter()
    .flat_map(move |(field, what)| {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(move |c| (what, c))
    })
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Every secret a pod references, as Kubernetes' `VisitPodSecretNames` finds them.
fn referenced_secrets(pod: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    let array = |v: &'static str| {
        pod.pointer(v)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    out.extend(
        array("/spec/imagePullSecrets")
            .iter()
            .filter_map(|s| str_at(s, "/name")),
    );
    for (_, c) in all_containers(pod) {
        for e in c
            .get("envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.extend(str_at(e, "/secretRef/name"));
        }
        for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            out.extend(str_at(e, "/valueFrom/secretKeyRef/name"));
        }
    }
    const VOLUME_SECRETS: [&str; 10] = [
        "/secret/secretName",
        "/azureFile/secretName",
        "/cephfs/secretRef/name",
        "/cinder/secretRef/name",
        "/flexVolume/secretRef/name",
        "/iscsi/secretRef/name",
        "/rbd/secretRef/name",
        "/scaleIO/secretRef/name",
        "/storageos/secretRef/name",
        "/csi/nodePublishSecretRef/name",
    ];
    for v in array("/spec/volumes") {
        out.extend(VOLUME_SECRETS.iter().filter_map(|p| str_at(v, p)));
        for source in v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.extend(str_at(source, "/secret/name"));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn projects_a_token(pod: &Value) -> bool {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.pointer("/projected/sources").and_then(Value::as_array))
        .flatten()
        .any(|s| s.get("serviceAccountToken").is_some_and(|t| !t.is_null()))
}

/// The checks of a mirror pod: it may reference no account, no secret and no token.
fn check_mirror(request: &AdmissionRequest<'_>, pod: &Value) -> Result<(), Error> {
    if !account_name(pod).is_empty() {
        return Err(forbidden(
            request,
            pod,
            "a mirror pod may not reference service accounts",
        ));
    }
    if !referenced_secrets(pod).is_empty() {
        return Err(forbidden(
            request,
            pod,
            "a mirror pod may not reference secrets",
        ));
    }
    if projects_a_token(pod) {
        return Err(forbidden(
            request,
            pod,
            "a mirror pod may not use ServiceAccountToken volume projections",
        ));
    }
    Ok(())
}

/// The secrets an account that enforces mountable secrets lets its pods use, as
/// Kubernetes checks them: secret volumes, `env` and `envFrom` of init containers and
/// containers against `secrets`; `imagePullSecrets` against the account's.
fn limit_secret_references(account: &Account, pod: &Value) -> Result<(), String> {
    let mountable: Vec<&str> = account.secret_names().collect();
    let sa = &account.metadata.name;
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(secret) = v.get("secret").filter(|s| s.is_object()) else {
            continue;
        };
        let name = str_at(secret, "/secretName").unwrap_or_default();
        if !mountable.contains(&name) {
            return Err(format!("volume with secret.secretName=\"{name}\" is not allowed because service account {sa} does not reference that secret"));
        }
    }
    for (what, c) in all_containers(pod).filter(|(what, _)| *what != "ephemeral container") {
        let container = str_at(c, "/name").unwrap_or_default();
        for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = str_at(e, "/valueFrom/secretKeyRef/name") {
                if !mountable.contains(&name) {
                    let var = str_at(e, "/name").unwrap_or_default();
                    return Err(format!("{what} {container} with envVar {var} referencing secret.secretName=\"{name}\" is not allowed because service account {sa} does not reference that secret"));
                }
            }
        }
        for e in c
            .get("envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = str_at(e, "/secretRef/name") {
                if !mountable.contains(&name) {
                    return Err(format!("{what} {container} with envFrom referencing secret.secretName=\"{name}\" is not allowed because service account {sa} does not reference that secret"));
                }
            }
        }
    }
    let pull: Vec<&str> = account.pull_secret_names().collect();
    for (i, s) in pod
        .pointer("/spec/imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = str_at(s, "/name").unwrap_or_default();
        if !pull.contains(&name) {
            return Err(format!("imagePullSecrets[{i}].name=\"{name}\" is not allowed because service account {sa} does not reference that imagePullSecret"));
        }
    }
    Ok(())
}

/// The projected volume source of the token volume, as Kubernetes writes it.
pub fn token_volume_source() -> Value {
    json!({
        "defaultMode": 0o644,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
            {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ],
    })
}

/// Adds the token volume and its mounts to `spec` (a pod's spec), as Kubernetes does: an
/// existing `kube-api-access-*` volume is reused; containers that mount something at
/// [`TOKEN_MOUNT_PATH`] already are left alone; the volume is added only when a
/// container mounts it.
fn mount_token(spec: &mut Map<String, Value>) {
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| str_at(v, "/name"))
        .find(|n| n.starts_with(TOKEN_VOLUME_PREFIX))
        .map(str::to_owned);
    let volume = existing
        .clone()
        .unwrap_or_else(|| format!("{TOKEN_VOLUME_PREFIX}{}", crate::registry::random_suffix()));
    let mount = json!({"mountPath": TOKEN_MOUNT_PATH, "name": volume, "readOnly": true});
    let mut needed = false;
    for field in ["initContainers", "containers"] {
        for c in spec
            .get_mut(field)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            let mounted = c
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|m| str_at(m, "/mountPath") == Some(TOKEN_MOUNT_PATH));
            if mounted {
                continue;
            }
            if !c.get("volumeMounts").is_some_and(Value::is_array) {
                c.insert("volumeMounts".into(), json!([]));
            }
            if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                mounts.push(mount.clone());
                needed = true;
            }
        }
    }
    if needed && existing.is_none() {
        if !spec.get("volumes").is_some_and(Value::is_array) {
            spec.insert("volumes".into(), json!([]));
        }
        if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
            volumes.push(json!({"name": volume, "projected": token_volume_source()}));
        }
    }
}

impl ServiceAccountAdmission {
    /// The plugin, reading accounts through `registry` (its watch cache, and its store
    /// for an account the cache does not have). Give it the registry *before* adding the
    /// plugin to its admission chain.
    pub fn new(registry: &Registry) -> ServiceAccountAdmission {
        ServiceAccountAdmission {
            registry: registry.clone(),
        }
    }

    /// The account `namespace/name`, from the cache, else the store (retried for the
    /// `default` account the controller is about to create).
    async fn account(&self, namespace: &str, name: &str) -> Result<Account, Error> {
        let rt = service_accounts();
        if let Some(found) = self.registry.cached_as::<Account>(rt, namespace, name)? {
            return Ok(found);
        }
        let attempts = if name == DEFAULT_SERVICE_ACCOUNT {
            DEFAULT_ACCOUNT_ATTEMPTS
        } else {
            1
        };
        let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 100);
        let interval = Duration::from_millis(100 + jitter);
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(interval).await;
            }
            if let Some(found) = self
                .registry
                .read_as::<Account>(rt, namespace, name)
                .await?
            {
                return Ok(found);
            }
        }
        Err(Error::not_found(("", "serviceaccount"), name))
    }

    async fn checked_account(
        &self,
        request: &AdmissionRequest<'_>,
        pod: &Value,
    ) -> Result<Account, Error> {
        let namespace = request.namespace.unwrap_or_default();
        let name = account_name(pod);
        self.account(namespace, name).await.map_err(|e| {
            forbidden(
                request,
                pod,
                format_args!("error looking up service account {namespace}/{name}: {e}"),
            )
        })
    }
}

#[async_trait]
impl MutatingAdmission for ServiceAccountAdmission {
    fn name(&self) -> &str {
        PLUGIN_NAME
    }

    async fn admit(&self, request: &AdmissionRequest<'_>, pod: &mut Value) -> Result<(), Error> {
        if !concerns(request) || is_mirror(pod) {
            // A mirror pod is checked, never changed: its node would not recognise it.
            return Ok(());
        }
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let named = spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let name = named.unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned());
        spec.insert("serviceAccountName".into(), json!(name));
        spec.insert("serviceAccount".into(), json!(name));
        let account = self.checked_account(request, pod).await?;
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let automount = spec
            .get("automountServiceAccountToken")
            .and_then(Value::as_bool)
            .or(account.automount_service_account_token)
            .unwrap_or(true);
        if automount {
            mount_token(spec);
        }
        let has_pull_secrets = spec
            .get("imagePullSecrets")
            .and_then(Value::as_array)
            .is_some_and(|s| !s.is_empty());
        let from_account: Vec<Value> = account
            .pull_secret_names()
            .map(|n| json!({"name": n}))
            .collect();
        if !has_pull_secrets && !from_account.is_empty() {
            spec.insert("imagePullSecrets".into(), Value::Array(from_account));
        }
        Ok(())
    }
}

#[async_trait]
impl ValidatingAdmission for ServiceAccountAdmission {
    fn name(&self) -> &str {
        PLUGIN_NAME
    }

    async fn validate(&self, request: &AdmissionRequest<'_>, pod: &Value) -> Result<(), Error> {
        if !concerns(request) {
            return Ok(());
        }
        if is_mirror(pod) {
            return check_mirror(request, pod);
        }
        if account_name(pod).is_empty() {
            let namespace = request.namespace.unwrap_or_default();
            return Err(forbidden(
                request,
                pod,
                format_args!(
                    "no service account specified for pod {namespace}/{}",
                    request.name
                ),
            ));
        }
        let account = self.checked_account(request, pod).await?;
        if account.enforces_mountable_secrets() {
            limit_secret_references(&account, pod).map_err(|e| forbidden(request, pod, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_volume_is_mounted_in_every_container_that_has_nothing_at_its_path() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT_PATH}]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "own", "emptyDir": {}}],
        }});
        let spec = pod["spec"].as_object_mut().expect("spec");
        mount_token(spec);
        let volumes = pod["spec"]["volumes"].as_array().expect("volumes");
        assert_eq!(volumes.len(), 3);
        let name = volumes[2]["name"].as_str().expect("name");
        assert!(name.starts_with(TOKEN_VOLUME_PREFIX), "{name}");
        assert_eq!(name.len(), TOKEN_VOLUME_PREFIX.len() + 5);
        assert_eq!(volumes[2]["projected"], token_volume_source());
        let mount = json!({"mountPath": TOKEN_MOUNT_PATH, "name": name, "readOnly": true});
        assert_eq!(
            pod["spec"]["initContainers"][0]["volumeMounts"],
            json!([mount])
        );
        assert_eq!(pod["spec"]["containers"][0]["volumeMounts"][1], mount);
        assert_eq!(
            pod["spec"]["containers"][1]["volumeMounts"]
                .as_array()
                .map(Vec::len),
            Some(1),
            "a container with its own mount there keeps it"
        );
    }

    #[test]
    fn an_existing_token_volume_is_reused_and_none_is_added_when_no_container_needs_it() {
        let mut pod = json!({"spec": {
            "containers": [{"name": "a"}],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": []}}],
        }});
        mount_token(pod["spec"].as_object_mut().expect("spec"));
        assert_eq!(pod["spec"]["volumes"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"][0]["name"],
            json!("kube-api-access-abcde")
        );
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "volumeMounts": [{"name": "x", "mountPath": TOKEN_MOUNT_PATH}]},
        ]}});
        mount_token(pod["spec"].as_object_mut().expect("spec"));
        assert!(pod["spec"].get("volumes").is_none(), "{pod}");
    }

    #[test]
    fn the_token_volume_is_what_kubernetes_projects() {
        let v = token_volume_source();
        assert_eq!(v["defaultMode"], json!(420));
        assert_eq!(
            v["sources"][0]["serviceAccountToken"],
            json!({"expirationSeconds": 3607, "path": "token"})
        );
        assert_eq!(
            v["sources"][1]["configMap"]["name"],
            json!("kube-root-ca.crt")
        );
        assert_eq!(
            v["sources"][1]["configMap"]["items"],
            json!([{"key": "ca.crt", "path": "ca.crt"}])
        );
        assert_eq!(
            v["sources"][2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            json!("metadata.namespace")
        );
    }

    #[test]
    fn every_kind_of_secret_reference_is_found() {
        let pod = json!({"spec": {
            "imagePullSecrets": [{"name": "pull"}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "from"}}]}],
            "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "key", "key": "k"}}}]}],
            "volumes": [
                {"name": "v", "secret": {"secretName": "vol"}},
                {"name": "p", "projected": {"sources": [{"secret": {"name": "proj"}}]}},
                {"name": "c", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "csi"}}},
            ],
        }});
        let mut found = referenced_secrets(&pod);
        found.sort_unstable();
        found.dedup();
        assert_eq!(found, ["csi", "from", "key", "proj", "pull", "vol"]);
        assert!(referenced_secrets(&json!({"spec": {"containers": [{"name": "c"}]}})).is_empty());
    }

    #[test]
    fn an_enforcing_account_limits_secrets_with_kubernetes_messages() {
        let account: Account = serde_json::from_value(json!({
            "metadata": {"name": "builder", "annotations": {ENFORCE_MOUNTABLE_SECRETS_ANNOTATION: "true"}},
            "secrets": [{"name": "ok"}],
            "imagePullSecrets": [{"name": "pull"}],
        }))
        .expect("account");
        assert!(account.enforces_mountable_secrets());
        let allowed = json!({"spec": {
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "ok"}}]}],
            "volumes": [{"name": "v", "secret": {"secretName": "ok"}}],
        }});
        assert_eq!(limit_secret_references(&account, &allowed), Ok(()));
        let volume =
            json!({"spec": {"volumes": [{"name": "v", "secret": {"secretName": "other"}}]}});
        assert_eq!(
            limit_secret_references(&account, &volume),
            Err("volume with secret.secretName=\"other\" is not allowed because service account builder does not reference that secret".into())
        );
        let env = json!({"spec": {"initContainers": [{"name": "i", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}]}]}});
        assert_eq!(
            limit_secret_references(&account, &env),
            Err("init container i with envVar X referencing secret.secretName=\"other\" is not allowed because service account builder does not reference that secret".into())
        );
        let pull = json!({"spec": {"imagePullSecrets": [{"name": "pull"}, {"name": "other"}]}});
        assert_eq!(
            limit_secret_references(&account, &pull),
            Err("imagePullSecrets[1].name=\"other\" is not allowed because service account builder does not reference that imagePullSecret".into())
        );
        let relaxed: Account = serde_json::from_value(json!({
            "metadata": {"name": "b", "annotations": {ENFORCE_MOUNTABLE_SECRETS_ANNOTATION: "no"}},
        }))
        .expect("account");
        assert!(!relaxed.enforces_mountable_secrets());
    }
}
