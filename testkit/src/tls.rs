//! Throwaway certificates for TLS tests, made with rcgen: a CA, a node
//! certificate for `localhost` and `127.0.0.1` (server and client use, so
//! one file serves both ports and every dial between members), a client
//! certificate, and a second CA with a client certificate of its own that
//! the first CA never signed. [`TestCa`] keeps its key, so rotation tests
//! can sign replacement certificates while a cluster runs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// PEM files written by [`TestPki::generate`].
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA that signs the node and client certificates.
    pub ca: PathBuf,
    /// Node certificate: SANs `localhost`, `127.0.0.1`; server and client auth.
    pub node_cert: PathBuf,
    /// Key of `node_cert`.
    pub node_key: PathBuf,
    /// Client certificate signed by `ca`.
    pub client_cert: PathBuf,
    /// Key of `client_cert`.
    pub client_key: PathBuf,
    /// Another CA, unrelated to `ca`.
    pub other_ca: PathBuf,
    /// Client (and server) certificate for `localhost`/`127.0.0.1` signed by
    /// `other_ca`.
    pub other_cert: PathBuf,
    /// Key of `other_cert`.
    pub other_key: PathBuf,
}

/// A CA's parameters and key, to sign leaves with.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).expect("self-sign CA").pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// A leaf signed by `ca`: (certificate PEM, key PEM).
fn leaf(
    ca: &Ca,
    name: &str,
    sans: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let key = KeyPair::generate().expect("leaf key");
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = usages.to_vec();
    let cert = params.signed_by(&key, &ca.issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path
}

/// A CA that keeps its key, for tests that rotate certificates.
pub struct TestCa {
    /// Signs the leaves.
    ca: Ca,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        TestCa { ca: new_ca(name) }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.ca.pem
    }

    /// A node certificate like [`TestPki::node_cert`] (SANs `localhost`,
    /// `127.0.0.1`; server and client auth) named `name`: (certificate PEM,
    /// key PEM).
    pub fn node_leaf(&self, name: &str) -> (String, String) {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        leaf(
            &self.ca,
            name,
            &["localhost", "127.0.0.1"],
            &[ServerAuth, ClientAuth],
        )
    }

    /// A client-only certificate named `name`: (certificate PEM, key PEM).
    pub fn client_leaf(&self, name: &str) -> (String, String) {
        leaf(
            &self.ca,
            name,
            &["titan-client"],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        )
    }
}

impl TestPki {
    /// Generates every certificate and writes the PEM files into `dir`.
    pub fn generate(dir: &Path) -> TestPki {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let ca = new_ca("titan test CA");
        let other = new_ca("some other CA");
        let hosts = ["localhost", "127.0.0.1"];
        let (node_cert, node_key) = leaf(&ca, "titan node", &hosts, &[ServerAuth, ClientAuth]);
        let (client_cert, client_key) = leaf(&ca, "titan client", &["titan-client"], &[ClientAuth]);
        let (other_cert, other_key) = leaf(&other, "intruder", &hosts, &[ServerAuth, ClientAuth]);
        TestPki {
            ca: write(dir, "ca.pem", &ca.pem),
            node_cert: write(dir, "node.pem", &node_cert),
            node_key: write(dir, "node-key.pem", &node_key),
            client_cert: write(dir, "client.pem", &client_cert),
            client_key: write(dir, "client-key.pem", &client_key),
            other_ca: write(dir, "other-ca.pem", &other.pem),
            other_cert: write(dir, "other.pem", &other_cert),
            other_key: write(dir, "other-key.pem", &other_key),
        }
    }

    /// Server flags for mutual TLS on both the client gRPC port and the
    /// peer port, every file from this PKI.
    pub fn server_flags(&self) -> Vec<String> {
        let p = |p: &PathBuf| p.display().to_string();
        vec![
            format!("--client-tls-cert={}", p(&self.node_cert)),
            format!("--client-tls-key={}", p(&self.node_key)),
            format!("--client-tls-ca={}", p(&self.ca)),
            format!("--peer-tls-cert={}", p(&self.node_cert)),
            format!("--peer-tls-key={}", p(&self.node_key)),
            format!("--peer-tls-ca={}", p(&self.ca)),
        ]
    }

    /// What a test uses to reach a node's mutual-TLS Admin service: the CA
    /// and the node certificate as client identity.
    pub fn admin_tls(&self) -> ClientTlsConfig {
        let read = |p: &PathBuf| std::fs::read(p).expect("read PEM");
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)))
            .identity(Identity::from_pem(
                read(&self.node_cert),
                read(&self.node_key),
            ))
    }
}
