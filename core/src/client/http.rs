//! The HTTP transport: the Kubernetes REST API over HTTP/1.1 or HTTP/2, plain or TLS
//! (rustls), with bearer-token or client-certificate credentials from a kubeconfig.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde_json::Value;

use super::{
    error_from_status_json, DeleteOptions, ListParams, ObjectList, Patch, Transport, WatchEvent,
    WatchEventType, WatchParams, WatchStream,
};
use crate::{Error, ResourceType, Result};

/// Where a cluster is and how to authenticate to it: what a kubeconfig context says.
#[derive(Clone, Default)]
pub struct Config {
    /// The server's URL (`https://127.0.0.1:6443`).
    pub server: String,
    /// PEM certificates of the authorities to trust for the server's certificate.
    pub certificate_authority: Option<Vec<u8>>,
    /// Skip verifying the server's certificate (`insecure-skip-tls-verify`).
    pub insecure_skip_tls_verify: bool,
    /// A bearer token.
    pub token: Option<String>,
    /// A client certificate and its key, PEM.
    pub client_certificate: Option<(Vec<u8>, Vec<u8>)>,
    /// The context's namespace, the client's default.
    pub namespace: Option<String>,
    /// How long a request other than a watch may take (default 60 s).
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("client_certificate", &self.client_certificate.is_some())
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The parts of a kubeconfig file the client uses.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct Kubeconfig {
    clusters: Vec<Named<ClusterEntry>>,
    users: Vec<Named<UserEntry>>,
    contexts: Vec<Named<ContextEntry>>,
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: Option<T>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct ClusterEntry {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct UserEntry {
    token: Option<String>,
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    exec: Option<serde_yaml_ng::Value>,
    auth_provider: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ContextEntry {
    cluster: String,
    user: String,
    namespace: Option<String>,
}

fn config_error(message: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("kubeconfig: {message}"))
}

impl Config {
    /// A server with no credentials (plain HTTP, or TLS verified against the given CA).
    pub fn new(server: impl Into<String>) -> Config {
        Config {
            server: server.into(),
            ..Config::default()
        }
    }

    /// The kubeconfig in `$KUBECONFIG` (its first file), else `~/.kube/config`, at its
    /// current context.
    ///
    /// # Errors
    /// When there is none, or it cannot be read or used.
    pub fn infer() -> Result<Config> {
        let path = match std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
            Some(list) => std::env::split_paths(&list)
                .next()
                .ok_or_else(|| config_error("$KUBECONFIG is empty"))?,
            None => std::env::var_os("HOME")
                .map(|home| Path::new(&home).join(".kube").join("config"))
                .ok_or_else(|| config_error("neither $KUBECONFIG nor $HOME is set"))?,
        };
        Config::from_kubeconfig(&path, None)
    }

    /// The config of a kubeconfig file, at `context` (default: its current context).
    /// Relative file paths in it are taken from the file's directory.
    ///
    /// # Errors
    /// When the file cannot be read, or names something missing.
    pub fn from_kubeconfig(path: &Path, context: Option<&str>) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_error(format!("reading {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Config::from_kubeconfig_text(&text, context, base)
    }

    /// The config of kubeconfig text (YAML or JSON); relative paths are taken from `base`.
    ///
    /// # Errors
    /// When the text does not parse, or names something missing.
    pub fn from_kubeconfig_text(text: &str, context: Option<&str>, base: &Path) -> Result<Config> {
        let kc: Kubeconfig = serde_yaml_ng::from_str(text)
            .map_err(|e| config_error(format!("does not parse: {e}")))?;
        let context_name = context
            .map(str::to_owned)
            .or(kc.current_context.clone())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| config_error("no context given and no current-context set"))?;
        let find = |what: &str, name: &str| config_error(format!("{what} {name:?} not found"));
        let ctx = kc
            .contexts
            .iter()
            .find(|c| c.name == context_name)
            .and_then(|c| c.value.as_ref())
            .ok_or_else(|| find("context", &context_name))?;
        let cluster = kc
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .and_then(|c| c.value.as_ref())
            .ok_or_else(|| find("cluster", &ctx.cluster))?;
        let empty = UserEntry::default();
        let user = if ctx.user.is_empty() {
            &empty
        } else {
            kc.users
                .iter()
                .find(|u| u.name == ctx.user)
                .and_then(|u| u.value.as_ref())
                .ok_or_else(|| find("user", &ctx.user))?
        };
        if user.exec.is_some() || user.auth_provider.is_some() {
            return Err(config_error(format!(
                "user {:?} uses an exec or auth-provider credential plugin, which this client does not run; use a token or a client certificate",
                ctx.user
            )));
        }
        let read = |p: &PathBuf| -> Result<Vec<u8>> {
            let full = base.join(p);
            std::fs::read(&full)
                .map_err(|e| config_error(format!("reading {}: {e}", full.display())))
        };
        let data = |d: &str| -> Result<Vec<u8>> {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(d.trim())
                .map_err(|e| config_error(format!("bad base64 data: {e}")))
        };
        let either = |inline: &Option<String>, file: &Option<PathBuf>| -> Result<Option<Vec<u8>>> {
            match (inline, file) {
                (Some(d), _) => data(d).map(Some),
                (None, Some(p)) => read(p).map(Some),
                (None, None) => Ok(None),
            }
        };
        let token = match (&user.token, &user.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(p)) => Some(
                String::from_utf8(read(p)?)
                    .map_err(|_| config_error("the token file is not UTF-8"))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let cert = either(&user.client_certificate_data, &user.client_certificate)?;
        let key = either(&user.client_key_data, &user.client_key)?;
        let client_certificate = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(config_error(
                    "a client certificate needs its key, and a key its certificate",
                ))
            }
        };
        Ok(Config {
            server: cluster.server.clone(),
            certificate_authority: either(
                &cluster.certificate_authority_data,
                &cluster.certificate_authority,
            )?,
            insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
            token,
            client_certificate,
            namespace: ctx.namespace.clone().filter(|n| !n.is_empty()),
            timeout: None,
        })
    }

    fn tls(&self) -> Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(format!("TLS: {e}")))?;
        let builder = if self.insecure_skip_tls_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            if let Some(ca) = &self.certificate_authority {
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert =
                        cert.map_err(|e| config_error(format!("the CA does not parse: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| config_error(format!("the CA is not usable: {e}")))?;
                }
            }
            builder.with_root_certificates(roots)
        };
        // ALPN (h2, then http/1.1) is set by the connector.
        let tls = match &self.client_certificate {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| {
                        config_error(format!("the client certificate does not parse: {e}"))
                    })?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| config_error(format!("the client key does not parse: {e}")))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    config_error(format!("the client certificate is not usable: {e}"))
                })?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(tls)
    }
}

/// Accepts any server certificate (`insecure-skip-tls-verify`), still checking the
/// handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type HyperClient = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The Kubernetes REST API over HTTP(S), for a [`Client`](super::Client).
pub struct HttpTransport {
    http: HyperClient,
    base: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("server", &self.base)
            .finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A transport for `config`. Needs a tokio runtime when used.
    ///
    /// # Errors
    /// When the TLS settings cannot be used or the server URL is not http(s).
    pub fn new(config: Config) -> Result<HttpTransport> {
        let base = config.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(config_error(format!(
                "the server {base:?} is not an http:// or https:// URL"
            )));
        }
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config.tls()?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        let authorization = match &config.token {
            Some(t) => Some(
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| config_error("the token is not a valid header value"))?,
            ),
            None => None,
        };
        Ok(HttpTransport {
            http,
            base,
            authorization,
            timeout: config.timeout.unwrap_or(Duration::from_secs(60)),
        })
    }

    /// `/api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]]`, or `/apis/GROUP/VERSION/...`.
    fn path(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: Option<&str>,
        subresource: Option<&str>,
    ) -> String {
        let mut p = self.base.clone();
        if rt.group.is_empty() {
            p.push_str("/api/");
        } else {
            p.push_str("/apis/");
            p.push_str(&rt.group);
            p.push('/');
        }
        p.push_str(&rt.version);
        if let Some(ns) = namespace.filter(|_| rt.is_namespaced()) {
            p.push_str("/namespaces/");
            p.push_str(&escape(ns));
        }
        p.push('/');
        p.push_str(&rt.plural);
        if let Some(name) = name {
            p.push('/');
            p.push_str(&escape(name));
        }
        if let Some(sub) = subresource {
            p.push('/');
            p.push_str(sub);
        }
        p
    }

    async fn send(
        &self,
        method: Method,
        url: String,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(ACCEPT, "application/json");
        if let Some(auth) = &self.authorization {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let body = match body {
            Some((ct, bytes)) => {
                req = req.header(CONTENT_TYPE, ct);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req
            .body(body)
            .map_err(|e| Error::bad_request(format!("cannot build a request for {url}: {e}")))?;
        self.http
            .request(req)
            .await
            .map_err(|e| Error::service_unavailable(format!("{url}: {}", chain(&e))))
    }

    /// Sends a request and reads its JSON answer; a failure answer becomes its error.
    async fn call(
        &self,
        method: Method,
        url: String,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Value> {
        let what = url.clone();
        let work = async move {
            let resp = self.send(method, url, body).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| {
                    Error::service_unavailable(format!("{what}: reading the answer: {e}"))
                })?
                .to_bytes();
            answer(status, &bytes)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(Error::timeout("the request did not finish in time", None)))
    }
}

/// The value of a successful answer, or the error a failed one describes.
fn answer(status: StatusCode, bytes: &[u8]) -> Result<Value> {
    let parsed: std::result::Result<Value, _> = serde_json::from_slice(bytes);
    if status.is_success() {
        return parsed
            .map_err(|e| Error::internal(format!("the server's answer is not JSON: {e}")));
    }
    match parsed {
        Ok(v) if v.get("kind").and_then(Value::as_str) == Some("Status") => {
            Err(error_from_status_json(&v))
        }
        _ => {
            let text = String::from_utf8_lossy(bytes);
            let status_json = serde_json::json!({
                "kind": "Status", "status": "Failure", "code": status.as_u16(),
                "message": format!("the server answered {status}: {}", text.trim()),
            });
            Err(error_from_status_json(&status_json))
        }
    }
}

/// An error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Percent-encodes a path segment.
fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn with_query(mut url: String, pairs: &[(&str, String)]) -> String {
    if !pairs.is_empty() {
        url.push('?');
        url.push_str(&serde_urlencoded::to_string(pairs).unwrap_or_default());
    }
    url
}

fn selection_query(sel: &super::Selection, q: &mut Vec<(&'static str, String)>) {
    if let Some(l) = sel.labels.as_ref().filter(|l| !l.is_empty()) {
        q.push(("labelSelector", l.to_string()));
    }
    if let Some(f) = sel.fields.as_ref().filter(|f| !f.is_empty()) {
        q.push(("fieldSelector", f.to_string()));
    }
}

fn json_body(v: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(v)
        .map_err(|e| Error::bad_request(format!("the object does not encode: {e}")))
}

#[async_trait::async_trait]
impl Transport for HttpTransport {
    async fn get(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>> {
        let url = self.path(rt, namespace, Some(name), None);
        self.call(Method::GET, url, None).await.map(Arc::new)
    }

    async fn get_subresource(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
    ) -> Result<Arc<Value>> {
        let url = self.path(rt, namespace, Some(name), Some(subresource));
        self.call(Method::GET, url, None).await.map(Arc::new)
    }

    async fn create_subresource(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
        body: Value,
    ) -> Result<Arc<Value>> {
        let url = self.path(rt, namespace, Some(name), Some(subresource));
        self.call(
            Method::POST,
            url,
            Some(("application/json", json_body(&body)?)),
        )
        .await
        .map(Arc::new)
    }

    async fn list(&self, rt: &ResourceType, params: &ListParams) -> Result<ObjectList> {
        let mut q = Vec::new();
        selection_query(&params.selection, &mut q);
        if params.limit > 0 {
            q.push(("limit", params.limit.to_string()));
        }
        if let Some(c) = params.continue_token.as_ref().filter(|c| !c.is_empty()) {
            q.push(("continue", c.clone()));
        }
        if let Some(rv) = &params.resource_version {
            q.push(("resourceVersion", rv.clone()));
            if params.exact {
                q.push(("resourceVersionMatch", "Exact".to_owned()));
            }
        }
        let url = with_query(
            self.path(rt, params.selection.namespace.as_deref(), None, None),
            &q,
        );
        let mut list = self.call(Method::GET, url, None).await?;
        let meta = list.get("metadata").cloned().unwrap_or(Value::Null);
        let items = match list.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        let kind = rt.kind.to_string();
        let api_version = rt.api_version();
        Ok(ObjectList {
            // List items carry no apiVersion and kind on the wire; put them back so each
            // item decodes on its own.
            items: items
                .into_iter()
                .map(|mut item| {
                    if let Some(map) = item.as_object_mut() {
                        map.entry("apiVersion")
                            .or_insert_with(|| Value::String(api_version.clone()));
                        map.entry("kind")
                            .or_insert_with(|| Value::String(kind.clone()));
                    }
                    Arc::new(item)
                })
                .collect(),
            resource_version: meta
                .get("resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            continue_token: meta
                .get("continue")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(str::to_owned),
            remaining: meta.get("remainingItemCount").and_then(Value::as_i64),
        })
    }

    async fn create(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Arc<Value>> {
        let namespace = namespace.or_else(|| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
        });
        let url = self.path(rt, namespace, None, None);
        self.call(
            Method::POST,
            url,
            Some(("application/json", json_body(&object)?)),
        )
        .await
        .map(Arc::new)
    }

    async fn replace(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        object: Value,
    ) -> Result<Arc<Value>> {
        let url = self.path(rt, namespace, Some(name), subresource);
        self.call(
            Method::PUT,
            url,
            Some(("application/json", json_body(&object)?)),
        )
        .await
        .map(Arc::new)
    }

    async fn patch(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        patch: &Patch,
    ) -> Result<Arc<Value>> {
        let mut url = self.path(rt, namespace, Some(name), subresource);
        if let Patch::Apply {
            field_manager,
            force,
            ..
        } = patch
        {
            let mut q = vec![("fieldManager", field_manager.clone())];
            if *force {
                q.push(("force", "true".to_owned()));
            }
            url = with_query(url, &q);
        }
        self.call(
            Method::PATCH,
            url,
            Some((patch.content_type(), json_body(patch.body())?)),
        )
        .await
        .map(Arc::new)
    }

    async fn delete(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Option<Arc<Value>>> {
        let mut body = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1"});
        if let Some(g) = options.grace_period_seconds {
            body["gracePeriodSeconds"] = g.into();
        }
        if let Some(uid) = &options.uid {
            body["preconditions"]["uid"] = uid.clone().into();
        }
        if let Some(rv) = &options.resource_version {
            body["preconditions"]["resourceVersion"] = rv.clone().into();
        }
        if options.dry_run {
            body["dryRun"] = serde_json::json!(["All"]);
        }
        if let Some(p) = options.propagation_policy {
            body["propagationPolicy"] = p.as_str().into();
        }
        let url = self.path(rt, namespace, Some(name), None);
        let v = self
            .call(
                Method::DELETE,
                url,
                Some(("application/json", json_body(&body)?)),
            )
            .await?;
        Ok((v.get("kind").and_then(Value::as_str) != Some("Status")).then(|| Arc::new(v)))
    }

    async fn watch(&self, rt: &ResourceType, params: &WatchParams) -> Result<WatchStream> {
        let mut q = vec![("watch", "1".to_owned())];
        selection_query(&params.selection, &mut q);
        if let Some(rv) = &params.resource_version {
            q.push(("resourceVersion", rv.clone()));
        }
        if params.send_initial_events {
            q.push(("sendInitialEvents", "true".to_owned()));
            q.push(("resourceVersionMatch", "NotOlderThan".to_owned()));
        }
        if params.bookmarks || params.send_initial_events {
            q.push(("allowWatchBookmarks", "true".to_owned()));
        }
        if let Some(t) = params.timeout {
            q.push(("timeoutSeconds", t.as_secs().max(1).to_string()));
        }
        let url = with_query(
            self.path(rt, params.selection.namespace.as_deref(), None, None),
            &q,
        );
        let resp = tokio::time::timeout(self.timeout, self.send(Method::GET, url, None))
            .await
            .unwrap_or_else(|_| Err(Error::timeout("the watch did not start in time", None)))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return answer(status, &bytes).map(|_| futures::stream::empty().boxed());
        }
        Ok(watch_lines(resp.into_body()))
    }
}

/// Splits a watch body into its newline-delimited JSON events.
fn watch_lines(body: hyper::body::Incoming) -> WatchStream {
    struct State {
        body: hyper::body::Incoming,
        buf: BytesMut,
        done: bool,
    }
    let state = State {
        body,
        buf: BytesMut::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(at) = s.buf.iter().position(|b| *b == b'\n') {
                let line = s.buf.split_to(at + 1);
                let line = &line[..at];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some((parse_event(line), s));
            }
            if s.done {
                if s.buf.iter().all(u8::is_ascii_whitespace) {
                    return None;
                }
                let rest = s.buf.split();
                return Some((parse_event(&rest), s));
            }
            match s.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        s.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    s.done = true;
                    s.buf.clear();
                    return Some((
                        Err(Error::service_unavailable(format!(
                            "the watch broke off: {e}"
                        ))),
                        s,
                    ));
                }
                None => s.done = true,
            }
        }
    })
    .boxed()
}

fn parse_event(line: &[u8]) -> Result<WatchEvent> {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(rename = "type")]
        kind: String,
        object: Value,
    }
    let wire: Wire = serde_json::from_slice(line)
        .map_err(|e| Error::internal(format!("the server sent an undecodable watch event: {e}")))?;
    let kind = WatchEventType::parse(&wire.kind).ok_or_else(|| {
        Error::internal(format!(
            "the server sent a watch event of unknown type {:?}",
            wire.kind
        ))
    })?;
    Ok(WatchEvent {
        kind,
        object: Arc::new(wire.object),
    })
}
