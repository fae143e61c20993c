//! TLS for every gRPC listener and every dial (rustls through tonic, ring
//! provider). The only module that reads certificate files or builds TLS
//! settings.
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

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

use crate::config::TlsFiles;

/// Longest TLS handshake a listener waits for before dropping the
/// connection, so idle half-open connections cannot pile up.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Dials gRPC endpoints given as `host:port`: plaintext, or TLS verified
/// against the host part with this node's identity.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    /// `None`: plaintext `http://`.
    tls: Option<ClientTlsConfig>,
}

impl Dialer {
    /// An endpoint for `addr` (`host:port`), not yet connected.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        match &self.tls {
            None => Endpoint::from_shared(format!("http://{addr}")),
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.clone()),
        }
    }

    /// Whether dials use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Every TLS setting of the process, loaded and checked once at start-up.
#[derive(Debug, Clone, Default)]
pub struct TransportTls {
    /// The client gRPC port's server settings (`None`: plaintext).
    pub client_server: Option<ServerTlsConfig>,
    /// The peer port's server settings (`None`: plaintext).
    pub peer_server: Option<ServerTlsConfig>,
    /// Dials to other members' peer ports.
    pub peer_dialer: Dialer,
    /// Dials to the leader's client gRPC port (lease and member-list calls).
    pub forward_dialer: Dialer,
}

/// The PEM contents of one listener's files, each checked to parse.
struct PemSet {
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

impl PemSet {
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
    let client = client.map(|f| read_set("client", f)).transpose()?;
    let peer = peer.map(|f| read_set("peer", f)).transpose()?;
    let mut tls = TransportTls {
        client_server: client.as_ref().map(server_config).transpose()?,
        peer_server: peer.as_ref().map(server_config).transpose()?,
        ..TransportTls::default()
    };
    if let Some(p) = &peer {
        tls.peer_dialer = dialer(p, p.ca.iter())?;
    }
    if let Some(c) = &client {
        // Relayed lease calls dial the leader's client port: trust both CAs,
        // present the peer identity when there is one.
        let me = peer.as_ref().unwrap_or(c);
        let roots = c.ca.iter().chain(peer.as_ref().and_then(|p| p.ca.as_ref()));
        tls.forward_dialer = dialer(me, roots)?;
    }
    Ok(tls)
}

/// Server settings for one listener, checked by building them once.
fn server_config(pem: &PemSet) -> Result<ServerTlsConfig, TlsError> {
    let mut config = ServerTlsConfig::new()
        .identity(pem.identity())
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &pem.ca {
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    Server::builder()
        .tls_config(config.clone())
        .map_err(|e| pem.unusable(&e))?;
    Ok(config)
}

/// A TLS dialer presenting `me`'s identity and trusting `roots`, checked by
/// building it once.
fn dialer<'a>(me: &PemSet, roots: impl Iterator<Item = &'a Vec<u8>>) -> Result<Dialer, TlsError> {
    let config = ClientTlsConfig::new()
        .ca_certificates(roots.map(Certificate::from_pem))
        .identity(me.identity())
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    Endpoint::from_static("https://localhost")
        .tls_config(config.clone())
        .map_err(|e| me.unusable(&e))?;
    Ok(Dialer { tls: Some(config) })
}

/// Reads one listener's files; each must hold what its flag promises.
fn read_set(port: &'static str, files: &TlsFiles) -> Result<PemSet, TlsError> {
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
