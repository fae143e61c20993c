//! `spec.tls`: keeps the cluster CA (Secret `NAME-ca`), the member
//! certificates (Secret `NAME-tls`) and the applications' client
//! certificates (Secrets `NAME-client-<name>`) up to date before anything
//! else is applied, and hands the reconcile the operator's client identity
//! for Admin calls. The certificate rules themselves are in [`crate::tls`].

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;

use super::observe::KubeState;
use super::{Context, Error, publish};
use crate::admin::TlsIdentity;
use crate::builders::{FIELD_MANAGER, Names, child_meta};
use crate::crd::TitanCluster;
use crate::kube_io::secret_texts;
use crate::tls::{self, ClusterCa};

/// Keys of the CA Secret (the `kubernetes.io/tls` layout).
const CA_SECRET_CERT: &str = "tls.crt";
const CA_SECRET_KEY: &str = "tls.key";

/// Under `spec.tls`: makes sure the CA exists, that every member up to the
/// largest of `spec.replicas`, the StatefulSet's replicas and the pods seen
/// has a valid certificate of it (issuing or renewing those that do not),
/// and returns a fresh client identity for the Admin API. `None` without
/// `spec.tls`, and nothing is read then.
pub async fn ensure(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    state: &KubeState,
    now: Timestamp,
) -> Result<Option<Arc<TlsIdentity>>, Error> {
    if !cluster.spec.tls_enabled() {
        return Ok(None);
    }
    let now = now.as_second();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let ca = cluster_ca(ctx, cluster, names, &secrets, now).await?;
    let existing = secrets
        .get_opt(&names.tls_secret())
        .await
        .map_err(Error::kube("get member certificates secret"))?;
    // Entries that are not UTF-8 are left out, and so re-issued.
    let have = secret_texts(existing.as_ref());
    let count = member_count(cluster, state, names);
    let want = tls::member_certs(&ca, names, count, &have, now).map_err(pki(names.tls_secret()))?;
    if existing.is_none() || want.data != have {
        let secret = Secret {
            metadata: child_meta(cluster, names, names.tls_secret()),
            type_: Some("Opaque".to_string()),
            data: Some(byte_data(&want.data)),
            ..Secret::default()
        };
        secrets
            .patch(
                &names.tls_secret(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(Error::kube("apply member certificates secret"))?;
    }
    if !want.issued.is_empty() {
        let note = format!(
            "issued certificates for {} (new, renewed or replaced) in Secret {}",
            want.issued.join(", "),
            names.tls_secret()
        );
        certificates_issued(ctx, cluster, note).await;
    }
    client_certificates(ctx, cluster, names, &secrets, &ca, now).await?;
    ctx.identities.get_or_issue(names, &ca, now).map(Some)
}

/// The operator's Admin client certificate per cluster (`NAMESPACE/NAME`),
/// kept for half its one-hour life so that a reconcile does not generate a
/// key every time; a new CA or a clock that went back issues a new one.
#[derive(Clone, Default)]
pub struct IdentityCache(Arc<std::sync::Mutex<BTreeMap<String, Cached>>>);

/// One cluster's cached identity.
#[derive(Clone)]
struct Cached {
    ca_pem: String,
    issued_at: i64,
    identity: Arc<TlsIdentity>,
}

impl IdentityCache {
    /// The cached identity of `names`' cluster if it is of `ca` and fresh
    /// at `now`, else a new one (then cached).
    fn get_or_issue(
        &self,
        names: &Names,
        ca: &ClusterCa,
        now: i64,
    ) -> Result<Arc<TlsIdentity>, Error> {
        let key = format!("{}/{}", names.namespace, names.cluster);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&key)
            && reusable(&c.ca_pem, c.issued_at, ca.cert_pem(), now)
        {
            return Ok(c.identity.clone());
        }
        let identity = identity(ca, names, now)?;
        let cached = Cached {
            ca_pem: ca.cert_pem().to_string(),
            issued_at: now,
            identity: identity.clone(),
        };
        map.insert(key, cached);
        Ok(identity)
    }
}

/// Whether an identity issued at `issued_at` by the CA `cached_ca` may be
/// used at `now` with the CA `ca`: same CA, and less than half of its
/// lifetime gone (so it has at least half an hour left).
fn reusable(cached_ca: &str, issued_at: i64, ca: &str, now: i64) -> bool {
    let age = now - issued_at;
    cached_ca == ca && (0..tls::OPERATOR_VALIDITY_SECS / 2).contains(&age)
}

/// The operator's client identity issued from the CA Secret, for calls
/// made outside the reconcile (a backup's snapshot stream under
/// `spec.tls.clientAuth`); `None` while the CA Secret does not exist.
pub async fn operator_identity(
    client: &Client,
    names: &Names,
    now: i64,
) -> Result<Option<Arc<TlsIdentity>>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let name = names.ca_secret();
    let Some(found) = secrets
        .get_opt(&name)
        .await
        .map_err(Error::kube("get CA secret"))?
    else {
        return Ok(None);
    };
    identity(&load_ca(&found, &name)?, names, now).map(Some)
}

/// A fresh one-hour operator certificate of `ca`.
fn identity(ca: &ClusterCa, names: &Names, now: i64) -> Result<Arc<TlsIdentity>, Error> {
    let operator = ca.issue_operator(now).map_err(pki(names.ca_secret()))?;
    Ok(Arc::new(TlsIdentity {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: operator.cert_pem,
        key_pem: operator.key_pem,
    }))
}

/// One Secret `NAME-client-<name>` per `spec.tls.clientCertificates`
/// entry: created, or re-issued when due, damaged or of another CA; left
/// alone otherwise. A `CertificatesIssued` event names what was issued.
async fn client_certificates(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    secrets: &Api<Secret>,
    ca: &ClusterCa,
    now: i64,
) -> Result<(), Error> {
    let mut issued = Vec::new();
    for name in cluster.spec.client_certificates() {
        let secret_name = names.client_secret(name);
        let existing = secrets
            .get_opt(&secret_name)
            .await
            .map_err(Error::kube("get client certificate secret"))?;
        let have = secret_texts(existing.as_ref());
        let Some(data) =
            tls::client_cert(ca, name, &have, now).map_err(pki(secret_name.clone()))?
        else {
            continue;
        };
        let secret = Secret {
            metadata: child_meta(cluster, names, secret_name.clone()),
            type_: Some("kubernetes.io/tls".to_string()),
            data: Some(byte_data(&data)),
            ..Secret::default()
        };
        secrets
            .patch(
                &secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(Error::kube("apply client certificate secret"))?;
        issued.push(secret_name);
    }
    if !issued.is_empty() {
        let note = format!(
            "issued client certificates in Secrets {}",
            issued.join(", ")
        );
        certificates_issued(ctx, cluster, note).await;
    }
    Ok(())
}

/// The Normal event `CertificatesIssued` with `note`.
async fn certificates_issued(ctx: &Context, cluster: &TitanCluster, note: String) {
    publish(
        ctx,
        cluster,
        EventType::Normal,
        "CertificatesIssued",
        "IssueCertificates",
        note,
    )
    .await;
}

fn pki(secret: String) -> impl FnOnce(tls::PkiError) -> Error {
    move |source| Error::Tls { secret, source }
}

/// The CA from its Secret, or a new one created there. The CA is created
/// with `create`, never overwritten: if two reconciles race, the loser
/// reads the winner's.
async fn cluster_ca(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    secrets: &Api<Secret>,
    now: i64,
) -> Result<ClusterCa, Error> {
    let name = names.ca_secret();
    if let Some(found) = secrets
        .get_opt(&name)
        .await
        .map_err(Error::kube("get CA secret"))?
    {
        return load_ca(&found, &name);
    }
    let ca = ClusterCa::generate(names, now).map_err(pki(name.clone()))?;
    let secret = Secret {
        metadata: child_meta(cluster, names, name.clone()),
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(byte_data(&BTreeMap::from([
            (CA_SECRET_CERT.to_string(), ca.cert_pem().to_string()),
            (CA_SECRET_KEY.to_string(), ca.key_pem().to_string()),
        ]))),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            let note = format!("created the cluster CA in Secret {name}");
            publish(
                ctx,
                cluster,
                EventType::Normal,
                "CaCreated",
                "IssueCertificates",
                note,
            )
            .await;
            Ok(ca)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let found = secrets
                .get(&name)
                .await
                .map_err(Error::kube("get CA secret"))?;
            load_ca(&found, &name)
        }
        Err(e) => Err(Error::kube("create CA secret")(e)),
    }
}

fn load_ca(secret: &Secret, name: &str) -> Result<ClusterCa, Error> {
    let data = secret_texts(Some(secret));
    let part = |key: &str| data.get(key).map(String::as_str).unwrap_or_default();
    ClusterCa::load(part(CA_SECRET_CERT), part(CA_SECRET_KEY)).map_err(pki(name.to_string()))
}

/// Members that need a certificate: `spec.replicas`, the StatefulSet's
/// current size, and any pod of a higher ordinal still around.
fn member_count(cluster: &TitanCluster, state: &KubeState, names: &Names) -> u32 {
    let spec = u32::try_from(cluster.spec.replicas).unwrap_or(0);
    let sts = state
        .statefulset
        .as_ref()
        .and_then(|s| s.spec.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0);
    let pods = state
        .pods
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .filter_map(|n| names.ordinal_of(n))
        .map(|o| o + 1)
        .max()
        .unwrap_or(0);
    spec.max(sts).max(pods)
}

fn byte_data(data: &BTreeMap<String, String>) -> BTreeMap<String, ByteString> {
    data.iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_operator_identity_is_reused_for_half_its_life_with_the_same_ca_only() {
        let half = tls::OPERATOR_VALIDITY_SECS / 2;
        // (cached CA, issued at, CA now, now, reusable)
        let table = [
            ("a", 1000, "a", 1000, true),
            ("a", 1000, "a", 1000 + half - 1, true),
            ("a", 1000, "a", 1000 + half, false),
            ("a", 1000, "b", 1001, false),
            // The clock went back: issue anew.
            ("a", 1000, "a", 999, false),
        ];
        for (cached, issued, ca, now, want) in table {
            assert_eq!(
                reusable(cached, issued, ca, now),
                want,
                "{cached} {issued} {ca} {now}"
            );
        }
    }

    #[test]
    fn the_cache_hands_out_one_identity_per_cluster_until_it_is_due() {
        let names = |cluster: &str| Names {
            cluster: cluster.to_string(),
            namespace: "prod".to_string(),
        };
        let ca = ClusterCa::generate(&names("demo"), 1_000).expect("ca");
        let cache = IdentityCache::default();
        let first = cache
            .get_or_issue(&names("demo"), &ca, 1_000)
            .expect("issue");
        let again = cache
            .get_or_issue(&names("demo"), &ca, 1_600)
            .expect("reuse");
        assert!(Arc::ptr_eq(&first, &again), "reissued while fresh");
        let other = cache
            .get_or_issue(&names("other"), &ca, 1_600)
            .expect("other");
        assert!(!Arc::ptr_eq(&first, &other), "shared across clusters");
        let later = 1_000 + tls::OPERATOR_VALIDITY_SECS / 2;
        let renewed = cache
            .get_or_issue(&names("demo"), &ca, later)
            .expect("renew");
        assert!(!Arc::ptr_eq(&first, &renewed), "kept past half its life");
        assert!(renewed.cert_pem.contains("BEGIN CERTIFICATE"));
    }
}
