//! TLS for every gRPC listener and every dial (rustls, ring provider). The
//! only module that reads certificate files or builds TLS settings; the
//! files are re-read while the process runs ([`super::tls_reload`]).
//!
//! - The client gRPC port serves `--client-tls-cert`; with
//!   `--client-tls-ca` it requires a client certificate signed by it.
//! - The peer port (Raft, Admin) serves `--peer-tls-cert` and always
//!   requires a client certificate signed by `--peer-tls-ca`; every dial to
//!   another member's peer port (Raft streams, snapshots, the bootstrap
//!   probe) presents the same certificate and verifies the member with the
//!   same CA.
//! - A follower relaying etcd lease and member-list calls to the leader's client
//!   port dials it over TLS when that port uses TLS: it trusts both CAs and
//!   presents the peer certificate (else the client-port certificate), so
//!   with `--client-tls-ca` that certificate must be signed by a CA in it.
//!
//! A dialled `host:port` is verified against the host part: certificates
//! need SANs (DNS names or IP addresses) for the hosts members advertise.
//! Every file is read and checked at start-up, so a missing, unreadable or
//! malformed file stops the process with an error naming it.
//!
//! Every setting in use sits in a [`Live`] cell: listeners take the current
//! server settings for each handshake ([`super::tls_accept`]) and
//! [`Dialer::endpoint`] the current client settings for each dial, so a
//! reload ([`TransportTls::swap_in`]) changes new connections only; open
//! ones keep the session they negotiated.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::config::TlsFiles;

/// Longest TLS handshake a listener waits for before dropping the
/// connection, so idle half-open connections cannot pile up.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN protocol every listener offers: gRPC is HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// Why the TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {flag} file {}: {source}", path.display())]
    Read {
        /// The flag that names the file.
        flag: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file holds no usable PEM block of the expected kind.
    #[error("{flag} file {} is not a usable PEM file: {reason}", path.display())]
    BadPem {
        /// The flag that names the file.
        flag: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The files parse but do not make a working TLS configuration (a key
    /// that does not match its certificate, a CA that is not a certificate).
    #[error("TLS files of the {port} port ({files}) are unusable: {reason}")]
    Unusable {
        /// `client` or `peer`.
        port: &'static str,
        /// The files involved.
        files: String,
        /// The cause.
        reason: String,
    },
}

/// A setting in use that a reload may replace: readers take the current
/// value (a cheap `Arc` clone) once per handshake or dial.
#[derive(Debug)]
pub struct Live<T> {
    /// The value in use.
    value: RwLock<Arc<T>>,
    /// Times the value was replaced, so a cached channel can tell it was
    /// built with older settings.
    generation: AtomicU64,
}

impl<T> Live<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Self {
        Live {
            value: RwLock::new(Arc::new(value)),
            generation: AtomicU64::new(0),
        }
    }

    /// The value in use now.
    pub fn current(&self) -> Arc<T> {
        // A writer only assigns an `Arc`; a poisoned lock still holds a
        // whole value.
        self.value
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `value` in use for every later [`Live::current`].
    pub fn replace(&self, value: T) {
        *self.value.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// How many times the value was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// Dials gRPC endpoints given as `host:port`: plaintext, or TLS verified
/// against the host part with this node's identity as of the dial.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    /// `None`: plaintext `http://`.
    tls: Option<Arc<Live<ClientTlsConfig>>>,
}

impl Dialer {
    /// An endpoint for `addr` (`host:port`), not yet connected, with the
    /// client certificate and CAs of the files as last (re)loaded.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        match &self.tls {
            None => Endpoint::from_shared(format!("http://{addr}")),
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?
                .tls_config(tls.current().as_ref().clone()),
        }
    }

    /// Whether dials use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Changes whenever a reload replaces the dial settings (always 0 for
    /// plaintext). A cached channel re-dials on its own with the settings
    /// it was built with, so whoever caches one rebuilds it when this moved.
    pub fn generation(&self) -> u64 {
        self.tls.as_ref().map_or(0, |live| live.generation())
    }

    /// Puts `config` in use for later dials (a plaintext dialer stays one).
    fn swap_in(&self, config: Option<ClientTlsConfig>) {
        if let (Some(live), Some(config)) = (&self.tls, config) {
            live.replace(config);
        }
    }
}

/// Server settings of one listener, replaced on reload.
pub type LiveServerConfig = Arc<Live<ServerConfig>>;

/// Every TLS setting of the process: loaded and checked at start-up,
/// replaced whole by [`TransportTls::swap_in`] when the files change.
/// Clones share the settings.
#[derive(Debug, Clone, Default)]
pub struct TransportTls {
    /// The client gRPC port's server settings (`None`: plaintext).
    pub client_server: Option<LiveServerConfig>,
    /// The peer port's server settings (`None`: plaintext).
    pub peer_server: Option<LiveServerConfig>,
    /// Dials to other members' peer ports.
    pub peer_dialer: Dialer,
    /// Dials to the leader's client gRPC port (lease and member-list calls).
    pub forward_dialer: Dialer,
    /// The files and what they held when the settings in use were built.
    pub(super) loaded: LoadedFiles,
}

/// The files of both ports and their contents as last loaded.
#[derive(Debug, Clone, Default)]
pub(super) struct LoadedFiles {
    /// The client gRPC port's files.
    pub(super) client: Option<LoadedPort>,
    /// The peer port's files.
    pub(super) peer: Option<LoadedPort>,
}

impl LoadedFiles {
    /// Builds every setting from these contents.
    pub(super) fn build(&self) -> Result<Built, TlsError> {
        build(
            self.client.as_ref().map(|c| &c.pem),
            self.peer.as_ref().map(|p| &p.pem),
        )
    }
}

/// One port's file names and their contents as last loaded.
#[derive(Debug, Clone)]
pub(super) struct LoadedPort {
    /// The paths, re-read on every poll.
    pub(super) files: TlsFiles,
    /// What they held.
    pub(super) pem: PemSet,
}

/// Settings built from one reading of the files, not yet in use.
#[derive(Debug)]
pub(super) struct Built {
    /// Client gRPC port server settings.
    client_server: Option<ServerConfig>,
    /// Peer port server settings.
    peer_server: Option<ServerConfig>,
    /// Dials to members.
    peer_dial: Option<ClientTlsConfig>,
    /// Dials to the leader's client port.
    forward_dial: Option<ClientTlsConfig>,
}

impl TransportTls {
    /// Puts freshly built settings in use for every new handshake and dial.
    /// (Which ports use TLS never changes, so every part has its cell.)
    pub(super) fn swap_in(&self, built: Built) {
        for (live, config) in [
            (&self.client_server, built.client_server),
            (&self.peer_server, built.peer_server),
        ] {
            if let (Some(live), Some(config)) = (live, config) {
                live.replace(config);
            }
        }
        self.peer_dialer.swap_in(built.peer_dial);
        self.forward_dialer.swap_in(built.forward_dial);
    }
}

/// The PEM contents of one listener's files, each checked to parse.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct PemSet {
    /// `client` or `peer`.
    port: &'static str,
    /// The files, for error messages.
    files: String,
    /// Certificate chain.
    cert: Vec<u8>,
    /// Private key.
    key: Vec<u8>,
    /// CA bundle, if any.
    ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for PemSet {
    /// Names the files; never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemSet")
            .field("port", &self.port)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl PemSet {
    /// The files, for log lines.
    pub(super) fn files(&self) -> &str {
        &self.files
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert, &self.key)
    }

    fn unusable(&self, err: &dyn std::error::Error) -> TlsError {
        TlsError::Unusable {
            port: self.port,
            files: self.files.clone(),
            reason: error_chain(err),
        }
    }
}

/// Reads and checks the files of both ports and builds every TLS setting.
pub fn load(client: Option<&TlsFiles>, peer: Option<&TlsFiles>) -> Result<TransportTls, TlsError> {
    let port = |name, files: &TlsFiles| {
        read_set(name, files).map(|pem| LoadedPort {
            files: files.clone(),
            pem,
        })
    };
    let loaded = LoadedFiles {
        client: client.map(|f| port("client", f)).transpose()?,
        peer: peer.map(|f| port("peer", f)).transpose()?,
    };
    let built = loaded.build()?;
    let dialer = |config: Option<ClientTlsConfig>| Dialer {
        tls: config.map(|c| Arc::new(Live::new(c))),
    };
    Ok(TransportTls {
        client_server: built.client_server.map(|c| Arc::new(Live::new(c))),
        peer_server: built.peer_server.map(|c| Arc::new(Live::new(c))),
        peer_dialer: dialer(built.peer_dial),
        forward_dialer: dialer(built.forward_dial),
        loaded,
    })
}

/// Every setting built from the given contents; an error names the files.
pub(super) fn build(client: Option<&PemSet>, peer: Option<&PemSet>) -> Result<Built, TlsError> {
    let mut built = Built {
        client_server: client.map(server_config).transpose()?,
        peer_server: peer.map(server_config).transpose()?,
        peer_dial: None,
        forward_dial: None,
    };
    if let Some(p) = peer {
        built.peer_dial = Some(dialer(p, p.ca.iter())?);
    }
    if let Some(c) = client {
        // Relayed lease calls dial the leader's client port: trust both CAs,
        // present the peer identity when there is one.
        let me = peer.unwrap_or(c);
        let roots = c.ca.iter().chain(peer.and_then(|p| p.ca.as_ref()));
        built.forward_dial = Some(dialer(me, roots)?);
    }
    Ok(built)
}

/// Server settings for one listener: its certificate (the key must match
/// it), client certificates required and verified against the CA bundle
/// when there is one, ALPN `h2`. The same rules as tonic's own
/// `ServerTlsConfig` (which this replaced to allow reloads).
fn server_config(pem: &PemSet) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| pem.unusable(&e))?;
    let builder = match &pem.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(parse_certs(ca));
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|e| pem.unusable(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| pem.unusable(&e))?;
    let mut config = builder
        .with_single_cert(parse_certs(&pem.cert), key)
        .map_err(|e| pem.unusable(&e))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Every well-formed `CERTIFICATE` block of `pem` (the files were checked
/// with [`check_certs`] when read).
fn parse_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// TLS dial settings presenting `me`'s identity and trusting `roots`,
/// checked by building them once.
fn dialer<'a>(
    me: &PemSet,
    roots: impl Iterator<Item = &'a Vec<u8>>,
) -> Result<ClientTlsConfig, TlsError> {
    let config = ClientTlsConfig::new()
        .ca_certificates(roots.map(Certificate::from_pem))
        .identity(me.identity())
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    Endpoint::from_static("https://localhost")
        .tls_config(config.clone())
        .map_err(|e| me.unusable(&e))?;
    Ok(config)
}

/// Reads one listener's files; each must hold what its flag promises.
pub(super) fn read_set(port: &'static str, files: &TlsFiles) -> Result<PemSet, TlsError> {
    let flag = |what: &str| format!("--{port}-tls-{what}");
    let cert = read_pem(&flag("cert"), &files.cert, check_certs)?;
    let key = read_pem(&flag("key"), &files.key, check_key)?;
    let ca = files
        .ca
        .as_deref()
        .map(|ca| read_pem(&flag("ca"), ca, check_certs))
        .transpose()?;
    let mut names = vec![
        files.cert.display().to_string(),
        files.key.display().to_string(),
    ];
    names.extend(files.ca.iter().map(|p| p.display().to_string()));
    Ok(PemSet {
        port,
        files: names.join(", "),
        cert,
        key,
        ca,
    })
}

fn read_pem(
    flag: &str,
    path: &Path,
    check: fn(&[u8]) -> Result<(), String>,
) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        flag: flag.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    check(&bytes).map_err(|reason| TlsError::BadPem {
        flag: flag.to_string(),
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(bytes)
}

/// At least one `CERTIFICATE` block, every one well-formed.
fn check_certs(pem: &[u8]) -> Result<(), String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(())
}

/// One well-formed private key block (PKCS#8, PKCS#1 or SEC1).
fn check_key(pem: &[u8]) -> Result<(), String> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(_) => Ok(()),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err("no PRIVATE KEY block found".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Words that mark a TLS failure in an error chain (rustls's messages:
/// `invalid peer certificate: UnknownIssuer`, `received fatal alert:
/// CertificateRequired`, ...).
const TLS_FAILURE_MARKERS: [&str; 3] = ["certificate", "fatal alert", "tls handshake"];

/// The error's whole chain when it is a TLS failure (a certificate refused
/// on either side), which a dialler logs as a warning: unlike a member that
/// is down, it will not heal by itself.
pub fn tls_failure(err: &dyn std::error::Error) -> Option<String> {
    let chain = error_chain(err);
    let lower = chain.to_ascii_lowercase();
    TLS_FAILURE_MARKERS
        .iter()
        .any(|m| lower.contains(m))
        .then_some(chain)
}

/// "outer: inner: root" for an error and its sources.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_checks_name_what_is_missing() {
        assert_eq!(
            check_certs(b"hello"),
            Err("no CERTIFICATE block found".into())
        );
        assert_eq!(
            check_key(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err("no PRIVATE KEY block found".into())
        );
        assert!(
            check_certs(b"-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n").is_err()
        );
    }

    #[test]
    fn missing_file_is_reported_with_flag_and_path() {
        let files = TlsFiles {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
            ca: None,
        };
        let err = load(Some(&files), None).expect_err("missing file");
        let text = err.to_string();
        assert!(text.contains("--client-tls-cert"), "{text}");
        assert!(text.contains("/nonexistent/cert.pem"), "{text}");
    }
}
