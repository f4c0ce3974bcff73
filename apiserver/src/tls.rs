//! TLS: the cluster's certificate authority and the server's certificate (made on first
//! start and kept under a directory), and an HTTPS server (HTTP/1.1 and HTTP/2 by ALPN)
//! that verifies client certificates against the CA when a client offers one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tower::ServiceExt;

use crate::auth::{ClientCertIdentity, User};

/// The cluster's CA and the API server's certificate, as PEM.
#[derive(Clone)]
pub struct Pki {
    /// The CA certificate (what clients trust).
    pub ca_cert: String,
    ca_key: String,
    /// The server certificate, for 127.0.0.1, ::1 and localhost.
    pub server_cert: String,
    server_key: String,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "keelson-ca");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl Pki {
    /// Loads the CA and server certificate from `dir`, making them on first use.
    ///
    /// # Errors
    /// When the files cannot be read or written, or are not valid PEM.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Pki> {
        let file = |name: &str| -> PathBuf { dir.join(name) };
        let names = ["ca.crt", "ca.key", "server.crt", "server.key"];
        if names.iter().all(|n| file(n).exists()) {
            let read = |n: &str| std::fs::read_to_string(file(n));
            return Ok(Pki {
                ca_cert: read("ca.crt")?,
                ca_key: read("ca.key")?,
                server_cert: read("server.crt")?,
                server_key: read("server.key")?,
            });
        }
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate().map_err(|e| io_err("generating the CA key", e))?;
        let ca_cert = ca_params()
            .and_then(|p| p.self_signed(&ca_key))
            .map_err(|e| io_err("making the CA certificate", e))?;
        let mut pki = Pki {
            ca_cert: ca_cert.pem(),
            ca_key: ca_key.serialize_pem(),
            server_cert: String::new(),
            server_key: String::new(),
        };
        let (cert, key) = pki.issue(
            "keelson-apiserver",
            &[],
            vec![
                SanType::DnsName("localhost".try_into().map_err(|e| io_err("SAN", e))?),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        pki.server_cert = cert;
        pki.server_key = key;
        std::fs::write(file("ca.crt"), &pki.ca_cert)?;
        std::fs::write(file("server.crt"), &pki.server_cert)?;
        write_secret(&file("ca.key"), &pki.ca_key)?;
        write_secret(&file("server.key"), &pki.server_key)?;
        Ok(pki)
    }

    fn issue(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> std::io::Result<(String, String)> {
        let ca_key =
            KeyPair::from_pem(&self.ca_key).map_err(|e| io_err("reading the CA key", e))?;
        let issuer = Issuer::new(ca_params().map_err(|e| io_err("CA", e))?, ca_key);
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| io_err("certificate", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for o in organizations {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().map_err(|e| io_err("generating a key", e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| io_err("signing a certificate", e))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a client certificate (user = common name, groups = organizations), as PEM
    /// certificate and key.
    ///
    /// # Errors
    /// When signing fails.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> std::io::Result<(String, String)> {
        self.issue(
            user,
            groups,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// The rustls configuration: this server's certificate, ALPN h2 and http/1.1, client
    /// certificates verified against the CA when offered.
    ///
    /// # Errors
    /// When the PEM does not parse.
    pub fn server_config(&self) -> std::io::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_cert.as_bytes()) {
            roots
                .add(cert.map_err(|e| io_err("CA certificate", e))?)
                .map_err(|e| io_err("CA certificate", e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| io_err("client verifier", e))?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.server_cert.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| io_err("server certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key.as_bytes())
            .map_err(|e| io_err("server key", e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| io_err("TLS versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| io_err("server certificate", e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Writes a file only its owner can read (keys, tokens, kubeconfigs with credentials).
///
/// # Errors
/// When the file cannot be written.
pub fn write_secret(path: &Path, text: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write;
    // Written beside the file and renamed over it, so a reader (kubectl, a test waiting
    // for the kubeconfig) never sees it half written.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_ref()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The identity in a verified client certificate: common name and organizations.
fn identity(cert: &CertificateDer<'_>) -> Option<ClientCertIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(ClientCertIdentity(User {
        name,
        uid: String::new(),
        groups,
    }))
}

/// Serves `router` over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: rustls::ServerConfig,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let who = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(identity);
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    if let Some(who) = &who {
                        req.extensions_mut().insert(who.clone());
                    }
                    router.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pki_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("keelson-pki-{}", uuid::Uuid::new_v4()));
        let first = Pki::load_or_create(&dir).expect("create");
        let again = Pki::load_or_create(&dir).expect("load");
        assert_eq!(first.ca_cert, again.ca_cert);
        assert_eq!(first.server_cert, again.server_cert);
        first.server_config().expect("a server config");
        let (cert, _key) = again.issue_client("alice", &["dev"]).expect("client cert");
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem");
        let ClientCertIdentity(user) = identity(&der).expect("identity");
        assert_eq!(
            (user.name.as_str(), user.groups.as_slice()),
            ("alice", &["dev".to_owned()][..])
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
