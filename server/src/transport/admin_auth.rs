//! Who may change the cluster through `titan.v1.Admin` (`--admin-allowed-cn`).
//!
//! The peer port's mutual TLS admits every certificate of the cluster CA:
//! the members' own and the operator's. With an allow list, the calls that
//! change membership, leadership or storage (AddMember, PromoteMember,
//! RemoveMember, TransferLeadership, TakeSnapshot, MergeValueLog) also need
//! a client certificate whose subject common name is on it: a member's
//! certificate gets a member into Raft, not the right to reshape the
//! cluster. (A member's certificate still carries Raft traffic; this does
//! not defend against a compromised member.) Status stays open to every
//! certificate the port admits: members probe each other with it before
//! bootstrap.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tonic::Status;

/// The allow list; empty admits every caller the peer port accepted.
#[derive(Debug, Clone, Default)]
pub struct AdminPolicy {
    allowed: Arc<[String]>,
}

impl AdminPolicy {
    /// Admin calls need a certificate with one of `allowed` as its subject
    /// CN; an empty list checks nothing beyond the port's own TLS.
    pub fn new(allowed: Vec<String>) -> Self {
        AdminPolicy {
            allowed: allowed.into(),
        }
    }

    /// Whether the call `call` made with the client chain `certs` (leaf
    /// first; `None` on a plaintext or certificate-less connection) may
    /// change the cluster.
    pub fn check(&self, call: &str, certs: Option<&[CertificateDer<'_>]>) -> Result<(), Status> {
        if self.allowed.is_empty() {
            return Ok(());
        }
        let wanted = self.allowed.join(", ");
        let Some(leaf) = certs.and_then(<[_]>::first) else {
            return Err(Status::unauthenticated(format!(
                "{call} needs a client certificate whose CN is one of: {wanted}"
            )));
        };
        let names = common_names(leaf).map_err(|e| {
            Status::permission_denied(format!(
                "{call}: the client certificate cannot be read ({e}); it needs a CN among: {wanted}"
            ))
        })?;
        if names.iter().any(|n| self.allowed.contains(n)) {
            return Ok(());
        }
        let shown = if names.is_empty() {
            "no CN".to_string()
        } else {
            format!("CN={}", names.join(", CN="))
        };
        Err(Status::permission_denied(format!(
            "{call} is for admin identities (CN one of: {wanted}); this client certificate has {shown}"
        )))
    }
}

/// The subject common names of a DER certificate.
fn common_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    cert.subject()
        .iter_common_name()
        .map(|cn| {
            cn.as_str()
                .map(str::to_string)
                .map_err(|e| format!("CN is not text: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn cert(cn: Option<&str>) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn only_an_allowed_common_name_may_change_the_cluster() {
        let operator = cert(Some("titan-operator"));
        let member = cert(Some("demo-0"));
        let anonymous = cert(None);
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02]);
        let open = AdminPolicy::default();
        let strict = AdminPolicy::new(vec!["titan-operator".into(), "ops".into()]);
        // (policy, chain, expected code, text the message must carry)
        let table: Vec<(
            &AdminPolicy,
            Option<Vec<CertificateDer<'static>>>,
            Code,
            &str,
        )> = vec![
            (&open, None, Code::Ok, ""),
            (&open, Some(vec![member.clone()]), Code::Ok, ""),
            (&strict, Some(vec![operator.clone()]), Code::Ok, ""),
            (&strict, Some(vec![operator, member.clone()]), Code::Ok, ""),
            (&strict, None, Code::Unauthenticated, "titan-operator, ops"),
            (
                &strict,
                Some(vec![]),
                Code::Unauthenticated,
                "needs a client certificate",
            ),
            (
                &strict,
                Some(vec![member]),
                Code::PermissionDenied,
                "CN=demo-0",
            ),
            (
                &strict,
                Some(vec![anonymous]),
                Code::PermissionDenied,
                "no CN",
            ),
            (
                &strict,
                Some(vec![garbage]),
                Code::PermissionDenied,
                "cannot be read",
            ),
        ];
        for (i, (policy, chain, code, text)) in table.into_iter().enumerate() {
            let got = policy.check("RemoveMember", chain.as_deref());
            match got {
                Ok(()) => assert_eq!(code, Code::Ok, "row {i}: admitted"),
                Err(s) => {
                    assert_eq!(s.code(), code, "row {i}: {}", s.message());
                    assert!(s.message().starts_with("RemoveMember"), "row {i}: {s:?}");
                    assert!(s.message().contains(text), "row {i}: {}", s.message());
                }
            }
        }
    }
}
