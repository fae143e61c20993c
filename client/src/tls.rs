//! [`TlsConfig`] → tonic's rustls settings: reads and checks the PEM files
//! when the client is built, so a bad file is reported by name before
//! anything is dialled (and again, through `pool::LiveTls`, before each new
//! connection, so rotated files are taken in).

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::config::TlsConfig;
use crate::error::Error;
use crate::pool::error_chain;

/// Longest TLS handshake before a dial counts as failed.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Builds and checks tonic's client TLS settings from `config`.
pub(crate) fn client_tls(config: &TlsConfig) -> Result<ClientTlsConfig, Error> {
    let ca = read_pem("CA certificate", &config.ca_cert_path, check_certs)?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some((cert, key)) = &config.client_identity {
        let cert = read_pem("client certificate", cert, check_certs)?;
        let key = read_pem("client key", key, check_key)?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    if let Some(name) = &config.domain_name {
        tls = tls.domain_name(name.clone());
    }
    Endpoint::from_static("https://localhost")
        .tls_config(tls.clone())
        .map_err(|e| Error::TlsConfig(error_chain(&e)))?;
    Ok(tls)
}

fn read_pem(
    what: &'static str,
    path: &Path,
    check: fn(&[u8]) -> Result<(), String>,
) -> Result<Vec<u8>, Error> {
    let file_error = |reason: String| Error::TlsFile {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    check(&bytes).map_err(file_error)?;
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

/// One well-formed private key block.
fn check_key(pem: &[u8]) -> Result<(), String> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(_) => Ok(()),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err("no PRIVATE KEY block found".into()),
        Err(e) => Err(e.to_string()),
    }
}
