//! The PKI of `spec.tls`: one CA per cluster, a certificate per member and a
//! short-lived client certificate for the operator's own Admin calls.
//!
//! Pure: PEM in, PEM out, with the time passed in (unix seconds), so every
//! rule is unit-tested. `reconcile/certs.rs` keeps the results in Secrets.
//!
//! - The CA lives [`CA_VALIDITY_DAYS`]; it is never rotated by the operator
//!   (a new CA needs every member restarted with both CAs trusted).
//! - A member certificate lives [`MEMBER_VALIDITY_DAYS`] and is re-issued
//!   once less than [`RENEW_BEFORE_DAYS`] remain, or when it is missing,
//!   unreadable, or from another CA. The server re-reads its files
//!   (`--tls-reload-interval-ms`), so a renewal needs no restart.
//! - Member certificates serve and dial (server and client auth): the peer
//!   port takes only certificates of the cluster CA, and the Admin API is on
//!   that port.

use std::collections::BTreeMap;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use time::OffsetDateTime;

use crate::builders::Names;

/// Lifetime of a cluster CA.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Lifetime of a member certificate.
pub const MEMBER_VALIDITY_DAYS: i64 = 90;
/// A member certificate is re-issued once fewer days than this remain.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// Subject CN of the operator's client certificate; the members allow
/// only it to change the cluster through Admin (`--admin-allowed-cn`).
pub const OPERATOR_CN: &str = "titan-operator";
/// Lifetime of the operator's client certificate (issued per reconcile).
pub const OPERATOR_VALIDITY_SECS: i64 = 3600;
/// Certificates start this much before "now", for clocks a little behind.
const BACKDATE_SECS: i64 = 300;
const DAY_SECS: i64 = 86_400;
/// Kubernetes' default cluster DNS domain, for the fully qualified SANs.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// Key of the CA certificate in the member Secret (what pods and clients trust).
pub const CA_CERT_KEY: &str = "ca.crt";

/// Why the PKI could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The stored CA certificate or key does not parse, or they do not match.
    #[error("the stored CA is unusable: {0}")]
    BadCa(String),
    /// rcgen failed to generate or sign.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A time outside what a certificate can carry.
    #[error("time {0} is out of range for a certificate")]
    BadTime(i64),
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
}

/// A cluster's CA: its certificate and the key that signs member certificates.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

fn at(unix: i64) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| PkiError::BadTime(unix))
}

fn validity(params: &mut CertificateParams, now: i64, lifetime: i64) -> Result<(), PkiError> {
    params.not_before = at(now - BACKDATE_SECS)?;
    params.not_after = at(now + lifetime)?;
    Ok(())
}

impl ClusterCa {
    /// A new self-signed CA for `names`' cluster.
    pub fn generate(names: &Names, now: i64) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let cn = format!("titan-ca {}/{}", names.namespace, names.cluster);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, now, CA_VALIDITY_DAYS * DAY_SECS)?;
        let cert_pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        Ok(ClusterCa {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// The CA kept in a Secret. Fails when either part does not parse or
    /// the key is not the certificate's.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, PkiError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| PkiError::BadCa(format!("{what}: {e}"));
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad("key", &e))?;
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| bad("cert", &e))?;
        let cert = pem.parse_x509().map_err(|e| bad("cert", &e))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::BadCa(
                "the key does not belong to the certificate".to_string(),
            ));
        }
        if !cert.is_ca() {
            return Err(PkiError::BadCa("the certificate is not a CA".to_string()));
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| bad("cert", &e))?;
        Ok(ClusterCa {
            issuer,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// The CA certificate, PEM (what every member and client trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key, PEM (kept only in the CA Secret).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn sign(
        &self,
        cn: &str,
        sans: Vec<String>,
        usages: Vec<ExtendedKeyUsagePurpose>,
        now: i64,
        lifetime: i64,
    ) -> Result<Leaf, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, lifetime)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The certificate of member `ordinal`: its per-pod names and the
    /// Services', server and client auth.
    pub fn issue_member(&self, names: &Names, ordinal: u32, now: i64) -> Result<Leaf, PkiError> {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        self.sign(
            &names.pod(ordinal),
            member_sans(names, ordinal),
            vec![ServerAuth, ClientAuth],
            now,
            MEMBER_VALIDITY_DAYS * DAY_SECS,
        )
    }

    /// An application's client certificate (`spec.tls.clientCertificates`):
    /// subject CN `name`, client auth only, no SAN.
    pub fn issue_client(&self, name: &str, now: i64) -> Result<Leaf, PkiError> {
        self.sign(
            name,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            now,
            MEMBER_VALIDITY_DAYS * DAY_SECS,
        )
    }

    /// The operator's client certificate for Admin calls (client auth only).
    pub fn issue_operator(&self, now: i64) -> Result<Leaf, PkiError> {
        self.sign(
            OPERATOR_CN,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            now,
            OPERATOR_VALIDITY_SECS,
        )
    }
}

/// Names a member's certificate is valid for: its per-pod DNS names (short
/// and fully qualified), the three Services (`NAME`, `NAME-leader`,
/// `NAME-peers`) in every form a client may dial, and loopback.
pub fn member_sans(names: &Names, ordinal: u32) -> Vec<String> {
    let ns = &names.namespace;
    let pod = names.pod(ordinal);
    let peers = names.peers_service();
    let mut sans = vec![
        format!("{pod}.{peers}"),
        format!("{pod}.{peers}.{ns}"),
        names.pod_host(ordinal),
        format!("{}.{CLUSTER_DOMAIN}", names.pod_host(ordinal)),
    ];
    for svc in [names.client_service(), names.leader_service(), peers] {
        sans.push(svc.clone());
        sans.push(format!("{svc}.{ns}"));
        sans.push(format!("{svc}.{ns}.svc"));
        sans.push(format!("{svc}.{ns}.svc.{CLUSTER_DOMAIN}"));
    }
    sans.push("localhost".to_string());
    sans.push("127.0.0.1".to_string());
    sans
}

/// `notAfter` of a PEM certificate, in unix seconds; `None` if it does not parse.
pub fn not_after(cert_pem: &str) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Whether a certificate must be (re-)issued at `now`: unreadable, or fewer
/// than [`RENEW_BEFORE_DAYS`] left.
pub fn needs_renewal(cert_pem: &str, now: i64) -> bool {
    not_after(cert_pem).is_none_or(|end| end - now < RENEW_BEFORE_DAYS * DAY_SECS)
}

/// Certificate key of a client certificate Secret (`kubernetes.io/tls`).
pub const CLIENT_CERT_KEY: &str = "tls.crt";
/// Private key key of a client certificate Secret.
pub const CLIENT_KEY_KEY: &str = "tls.key";

/// The data of client certificate `name`'s Secret given what it holds now:
/// `None` while its certificate is of this CA with more than
/// [`RENEW_BEFORE_DAYS`] left (kept byte for byte); otherwise a new
/// certificate and key with `ca.crt`.
pub fn client_cert(
    ca: &ClusterCa,
    name: &str,
    existing: &BTreeMap<String, String>,
    now: i64,
) -> Result<Option<BTreeMap<String, String>>, PkiError> {
    let same_ca = existing.get(CA_CERT_KEY).map(String::as_str) == Some(ca.cert_pem());
    let usable = match (existing.get(CLIENT_CERT_KEY), existing.get(CLIENT_KEY_KEY)) {
        (Some(cert), Some(_)) => same_ca && !needs_renewal(cert, now),
        _ => false,
    };
    if usable {
        return Ok(None);
    }
    let leaf = ca.issue_client(name, now)?;
    Ok(Some(BTreeMap::from([
        (CA_CERT_KEY.to_string(), ca.cert_pem().to_string()),
        (CLIENT_CERT_KEY.to_string(), leaf.cert_pem),
        (CLIENT_KEY_KEY.to_string(), leaf.key_pem),
    ])))
}

/// Key of member `pod`'s certificate in the member Secret.
pub fn cert_key(pod: &str) -> String {
    format!("{pod}.crt")
}

/// Key of member `pod`'s private key in the member Secret.
pub fn key_key(pod: &str) -> String {
    format!("{pod}.key")
}

/// The member Secret's data the operator wants, and which members got a new
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCerts {
    /// `ca.crt` and `POD.crt` / `POD.key` for every member.
    pub data: BTreeMap<String, String>,
    /// Pods whose certificate was issued now (new, renewed or replaced).
    pub issued: Vec<String>,
}

/// The member Secret for ordinals `0..count` from what it holds now: every
/// certificate of this CA with time left is kept byte for byte (so nothing
/// rotates without need); the others are issued. Entries of higher ordinals
/// of the same CA are kept, for a member that comes back.
pub fn member_certs(
    ca: &ClusterCa,
    names: &Names,
    count: u32,
    existing: &BTreeMap<String, String>,
    now: i64,
) -> Result<MemberCerts, PkiError> {
    let same_ca = existing.get(CA_CERT_KEY).map(String::as_str) == Some(ca.cert_pem());
    let mut data = if same_ca {
        existing.clone()
    } else {
        BTreeMap::new()
    };
    data.insert(CA_CERT_KEY.to_string(), ca.cert_pem().to_string());
    let mut issued = Vec::new();
    for ordinal in 0..count {
        let pod = names.pod(ordinal);
        let (ck, kk) = (cert_key(&pod), key_key(&pod));
        let usable = match (data.get(&ck), data.get(&kk)) {
            (Some(cert), Some(_)) => !needs_renewal(cert, now),
            _ => false,
        };
        if !usable {
            let leaf = ca.issue_member(names, ordinal, now)?;
            data.insert(ck, leaf.cert_pem);
            data.insert(kk, leaf.key_pem);
            issued.push(pod);
        }
    }
    Ok(MemberCerts { data, issued })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000; // 2026-11

    fn names() -> Names {
        Names {
            cluster: "demo".to_string(),
            namespace: "prod".to_string(),
        }
    }

    fn parsed(cert_pem: &str) -> (Vec<String>, String, String) {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).expect("pem");
        let cert = pem.parse_x509().expect("x509");
        let sans = cert
            .subject_alternative_name()
            .expect("san ext")
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                        x509_parser::extensions::GeneralName::IPAddress(ip) => format!("{ip:?}"),
                        other => format!("{other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        (sans, cert.issuer().to_string(), cert.subject().to_string())
    }

    #[test]
    fn a_member_certificate_names_its_pod_and_the_services_and_chains_to_the_ca() {
        let ca = ClusterCa::generate(&names(), NOW).expect("ca");
        let leaf = ca.issue_member(&names(), 1, NOW).expect("leaf");
        let (sans, issuer, subject) = parsed(&leaf.cert_pem);
        for want in [
            "demo-1.demo-peers.prod.svc",
            "demo-1.demo-peers.prod.svc.cluster.local",
            "demo-1.demo-peers",
            "demo.prod.svc",
            "demo-leader.prod.svc.cluster.local",
            "demo-peers.prod",
            "localhost",
        ] {
            assert!(sans.iter().any(|s| s == want), "{want} not in {sans:?}");
        }
        assert!(!sans.iter().any(|s| s.contains("demo-0")), "{sans:?}");
        let (_, _, ca_subject) = parsed(ca.cert_pem());
        assert_eq!(issuer, ca_subject);
        assert_eq!(subject, "CN=demo-1");
        let end = not_after(&leaf.cert_pem).expect("not after");
        assert_eq!(end, NOW + MEMBER_VALIDITY_DAYS * DAY_SECS);
    }

    #[test]
    fn a_stored_ca_loads_and_signs_certificates_that_chain_to_it() {
        let ca = ClusterCa::generate(&names(), NOW).expect("ca");
        let loaded = ClusterCa::load(ca.cert_pem(), ca.key_pem()).expect("load");
        let leaf = loaded.issue_operator(NOW).expect("leaf");
        let (_, issuer, subject) = parsed(&leaf.cert_pem);
        assert_eq!(issuer, parsed(ca.cert_pem()).2);
        assert_eq!(subject, "CN=titan-operator");
        // The chain really verifies: rustls' verifier accepts the leaf for
        // client auth under this CA.
        assert_chain_verifies(ca.cert_pem(), &leaf.cert_pem);
    }

    fn assert_chain_verifies(ca_pem: &str, leaf_pem: &str) {
        use x509_parser::pem::parse_x509_pem;
        let (_, ca) = parse_x509_pem(ca_pem.as_bytes()).expect("ca pem");
        let (_, leaf) = parse_x509_pem(leaf_pem.as_bytes()).expect("leaf pem");
        let ca = ca.parse_x509().expect("ca");
        let leaf = leaf.parse_x509().expect("leaf");
        leaf.verify_signature(Some(ca.public_key()))
            .expect("leaf signed by the CA");
    }

    #[test]
    fn a_broken_or_mismatched_ca_is_refused_with_the_reason() {
        let ca = ClusterCa::generate(&names(), NOW).expect("ca");
        let other = ClusterCa::generate(&names(), NOW).expect("other");
        let cases = [
            ("garbage", ca.key_pem().to_string(), "cert"),
            (ca.cert_pem(), "garbage".to_string(), "key"),
            (
                ca.cert_pem(),
                other.key_pem().to_string(),
                "does not belong",
            ),
        ];
        for (cert, key, want) in cases {
            let err = ClusterCa::load(cert, &key).expect_err("refused");
            assert!(err.to_string().contains(want), "{err}");
        }
        let leaf = ca.issue_member(&names(), 0, NOW).expect("leaf");
        let err = ClusterCa::load(&leaf.cert_pem, &leaf.key_pem).expect_err("not a CA");
        assert!(err.to_string().contains("not a CA"), "{err}");
    }

    #[test]
    fn renewal_is_due_in_the_last_thirty_days_or_when_unreadable() {
        let ca = ClusterCa::generate(&names(), NOW).expect("ca");
        let leaf = ca.issue_member(&names(), 0, NOW).expect("leaf");
        let renew_at = NOW + (MEMBER_VALIDITY_DAYS - RENEW_BEFORE_DAYS) * DAY_SECS;
        let cases = [
            (NOW, false),
            (renew_at - 1, false),
            (renew_at + 1, true),
            (NOW + MEMBER_VALIDITY_DAYS * DAY_SECS + 1, true),
        ];
        for (now, want) in cases {
            assert_eq!(needs_renewal(&leaf.cert_pem, now), want, "at {now}");
        }
        assert!(needs_renewal("not a certificate", NOW));
    }

    #[test]
    fn member_secret_keeps_good_certificates_and_issues_the_rest() {
        let n = names();
        let ca = ClusterCa::generate(&n, NOW).expect("ca");
        let first = member_certs(&ca, &n, 3, &BTreeMap::new(), NOW).expect("first");
        assert_eq!(first.issued, ["demo-0", "demo-1", "demo-2"]);
        assert_eq!(first.data.len(), 7, "ca.crt + 3 x (crt, key)");

        // Nothing due: byte-identical, nothing issued.
        let again = member_certs(&ca, &n, 3, &first.data, NOW + DAY_SECS).expect("again");
        assert_eq!(
            again,
            MemberCerts {
                data: first.data.clone(),
                issued: vec![]
            }
        );

        // Scale to 4: only the new member gets one.
        let grown = member_certs(&ca, &n, 4, &first.data, NOW).expect("grown");
        assert_eq!(grown.issued, ["demo-3"]);
        assert_eq!(grown.data["demo-0.crt"], first.data["demo-0.crt"]);

        // Back to 3: the fourth member's entry stays.
        let shrunk = member_certs(&ca, &n, 3, &grown.data, NOW).expect("shrunk");
        assert!(shrunk.issued.is_empty());
        assert!(shrunk.data.contains_key("demo-3.key"));

        // 61 days on: all are renewed.
        let later = NOW + 61 * DAY_SECS;
        let renewed = member_certs(&ca, &n, 3, &first.data, later).expect("renewed");
        assert_eq!(renewed.issued, ["demo-0", "demo-1", "demo-2"]);
        assert!(!needs_renewal(&renewed.data["demo-1.crt"], later));

        // A missing key, a damaged certificate: that member only.
        let mut damaged = first.data.clone();
        damaged.remove("demo-0.key");
        damaged.insert("demo-2.crt".to_string(), "junk".to_string());
        let fixed = member_certs(&ca, &n, 3, &damaged, NOW).expect("fixed");
        assert_eq!(fixed.issued, ["demo-0", "demo-2"]);
        assert_eq!(fixed.data["demo-1.crt"], first.data["demo-1.crt"]);

        // Another CA's Secret: everything is replaced, stale entries dropped.
        let new_ca = ClusterCa::generate(&n, NOW).expect("new ca");
        let moved = member_certs(&new_ca, &n, 2, &grown.data, NOW).expect("moved");
        assert_eq!(moved.issued, ["demo-0", "demo-1"]);
        assert_eq!(moved.data[CA_CERT_KEY], new_ca.cert_pem());
        assert!(!moved.data.contains_key("demo-3.crt"));
        assert_chain_verifies(new_ca.cert_pem(), &moved.data["demo-0.crt"]);
    }
    #[test]
    fn a_client_certificate_is_kept_until_due_and_reissued_when_due_damaged_or_of_another_ca() {
        let ca = ClusterCa::generate(&names(), NOW).expect("ca");
        let first = client_cert(&ca, "filesync", &BTreeMap::new(), NOW)
            .expect("issue")
            .expect("a new Secret is issued");
        let (sans, issuer, subject) = parsed(&first[CLIENT_CERT_KEY]);
        assert_eq!(subject, "CN=filesync");
        assert!(sans.is_empty(), "{sans:?}");
        assert!(issuer.contains("demo"), "{issuer}");
        assert_eq!(first[CA_CERT_KEY], ca.cert_pem());
        assert_chain_verifies(ca.cert_pem(), &first[CLIENT_CERT_KEY]);

        let mut no_key = first.clone();
        no_key.remove(CLIENT_KEY_KEY);
        let mut junk = first.clone();
        junk.insert(CLIENT_CERT_KEY.to_string(), "junk".to_string());
        let other = ClusterCa::generate(&names(), NOW).expect("other");
        let mut moved = first.clone();
        moved.insert(CA_CERT_KEY.to_string(), other.cert_pem().to_string());
        // (what the Secret holds, when, re-issued?)
        let table = [
            (&first, NOW + DAY_SECS, false),
            (&first, NOW + 59 * DAY_SECS, false),
            (&first, NOW + 61 * DAY_SECS, true),
            (&no_key, NOW, true),
            (&junk, NOW, true),
            (&moved, NOW, true),
        ];
        for (i, (have, now, reissued)) in table.into_iter().enumerate() {
            let got = client_cert(&ca, "filesync", have, now).expect("client cert");
            assert_eq!(got.is_some(), reissued, "row {i}");
            if let Some(data) = got {
                assert!(!needs_renewal(&data[CLIENT_CERT_KEY], now), "row {i}");
                assert_chain_verifies(ca.cert_pem(), &data[CLIENT_CERT_KEY]);
            }
        }
    }
}
