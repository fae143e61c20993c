//! Lease-based leader election (`coordination.k8s.io/v1` Lease), so that two
//! operator replicas never reconcile at the same time.
//!
//! The decision is pure ([`decide`]); [`LeaseLock`] applies it with
//! optimistic concurrency (`replace` carries the resourceVersion, so two
//! candidates racing for an expired lease cannot both win).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease object name.
    pub name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// A holder that has not renewed for this long loses the lease.
    pub lease_duration_secs: i32,
    /// How often the holder renews and candidates retry.
    pub renew_interval: Duration,
}

/// What to do with the current Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No Lease exists: create it holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Held by someone whose lease expired (or nobody): take it over.
    Takeover,
    /// Someone else holds a live lease.
    HeldByOther,
}

/// Decides from the observed Lease alone.
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = lease else {
        return LeaseDecision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return LeaseDecision::Renew;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let renewed = spec.renew_time.as_ref().map_or(0, |t| t.0.as_second());
    if holder.is_empty() || renewed + duration <= now.as_second() {
        LeaseDecision::Takeover
    } else {
        LeaseDecision::HeldByOther
    }
}

/// Where the Lease namespace came from (logged at start, so a developer sees
/// which namespace a local run uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceSource {
    /// `--lease-namespace` / `TITAN_OPERATOR_LEASE_NAMESPACE`.
    Flag,
    /// `POD_NAMESPACE` (the Deployment sets it from the downward API).
    PodNamespace,
    /// The client's default namespace: in a pod, the ServiceAccount's
    /// namespace; with a kubeconfig, the current context's (else `default`).
    Client,
}

impl std::fmt::Display for NamespaceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flag => "--lease-namespace",
            Self::PodNamespace => "POD_NAMESPACE",
            Self::Client => "the namespace the operator runs in, else the kubeconfig context's",
        })
    }
}

/// Picks the Lease namespace: the flag, else `POD_NAMESPACE`, else the
/// client's default namespace. Empty values count as unset.
pub fn resolve_namespace(
    flag: Option<&str>,
    pod_namespace: Option<&str>,
    client_default: &str,
) -> (String, NamespaceSource) {
    let given = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    if let Some(ns) = given(flag) {
        return (ns, NamespaceSource::Flag);
    }
    if let Some(ns) = given(pod_namespace) {
        return (ns, NamespaceSource::PodNamespace);
    }
    (client_default.to_string(), NamespaceSource::Client)
}

/// Why a lease request failed, sorted into what the operator can tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseProblem {
    /// The Lease namespace does not exist.
    NamespaceMissing {
        /// The namespace.
        namespace: String,
    },
    /// RBAC forbids reading or writing the Lease.
    Forbidden {
        /// The namespace.
        namespace: String,
        /// The API server's message (names the user and verb).
        message: String,
    },
    /// Anything else (network, API server overloaded, ...): retried.
    Other {
        /// The error text.
        message: String,
    },
}

impl LeaseProblem {
    /// Sorts a failed lease request.
    pub fn classify(error: &kube::Error, namespace: &str) -> Self {
        let namespace = namespace.to_string();
        match error {
            kube::Error::Api(s) if s.code == 404 && is_namespace_status(s) => {
                Self::NamespaceMissing { namespace }
            }
            kube::Error::Api(s) if s.code == 403 => Self::Forbidden {
                namespace,
                message: s.message.clone(),
            },
            other => Self::Other {
                message: other.to_string(),
            },
        }
    }

    /// Problems the operator cannot outwait on its own: a person must act.
    pub fn needs_user(&self) -> bool {
        !matches!(self, Self::Other { .. })
    }
}

fn is_namespace_status(s: &kube::core::Status) -> bool {
    s.details.as_ref().is_some_and(|d| d.kind == "namespaces")
        || s.message.starts_with("namespaces ")
}

impl std::fmt::Display for LeaseProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NamespaceMissing { namespace } => write!(
                f,
                "the leader-election Lease namespace {namespace:?} does not exist: create it \
                 (kubectl create namespace {namespace}) or choose another with --lease-namespace"
            ),
            Self::Forbidden { namespace, message } => write!(
                f,
                "not allowed to use leases.coordination.k8s.io in namespace {namespace:?} \
                 ({message}): grant the Role of manifests/rbac.yaml there, or choose a namespace \
                 the operator may use with --lease-namespace"
            ),
            Self::Other { message } => write!(f, "lease request failed: {message}"),
        }
    }
}

/// Applies [`decide`] against the API server.
pub struct LeaseLock {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl LeaseLock {
    /// Lock over the configured Lease.
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        let api = Api::namespaced(client, &config.namespace);
        Self { api, config }
    }

    /// Settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn spec(&self, now: Timestamp, previous: Option<&LeaseSpec>, takeover: bool) -> LeaseSpec {
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration_secs),
            acquire_time: if takeover || previous.is_none() {
                Some(MicroTime(now))
            } else {
                previous.and_then(|s| s.acquire_time.clone())
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if takeover {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// Tries once to hold the lease. `Ok(true)` means we hold it now.
    /// A write conflict (someone else won the race) is `Ok(false)`.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.config.name).await?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let (lease, create) = match decide(spec, &self.config.identity, now) {
            LeaseDecision::HeldByOther => return Ok(false),
            LeaseDecision::Create => (self.new_lease(now), true),
            decision => {
                let mut lease = current.clone().unwrap_or_default();
                lease.spec = Some(self.spec(now, spec, decision == LeaseDecision::Takeover));
                (lease, false)
            }
        };
        let result = if create {
            self.api.create(&PostParams::default(), &lease).await
        } else {
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn new_lease(&self, now: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(self.spec(now, None, false)),
        }
    }

    /// Gives the lease up on graceful shutdown so a standby takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.config.identity.as_str());
        if !ours {
            return Ok(());
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
        }
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn lease(holder: Option<&str>, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn lease_namespace_prefers_flag_then_pod_namespace_then_client_default() {
        let cases = [
            (
                Some("ops"),
                Some("pod-ns"),
                "ctx",
                "ops",
                NamespaceSource::Flag,
            ),
            (
                None,
                Some("pod-ns"),
                "ctx",
                "pod-ns",
                NamespaceSource::PodNamespace,
            ),
            (Some(""), Some(" "), "ctx", "ctx", NamespaceSource::Client),
            (None, None, "default", "default", NamespaceSource::Client),
        ];
        for (flag, pod, client, want, source) in cases {
            assert_eq!(
                resolve_namespace(flag, pod, client),
                (want.to_string(), source),
                "{flag:?} {pod:?} {client:?}"
            );
        }
    }

    /// An API error as the API server sends it (a `Status` object).
    fn api_error(code: u16, message: &str, kind: Option<&str>) -> kube::Error {
        let mut status = serde_json::json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "code": code, "message": message});
        if let Some(kind) = kind {
            status["details"] = serde_json::json!({"name": "x", "kind": kind});
        }
        let status: kube::core::Status =
            serde_json::from_value(status).unwrap_or_else(|e| panic!("status: {e}"));
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn lease_errors_are_sorted_into_what_the_user_must_fix() {
        let missing = api_error(
            404,
            r#"namespaces "titan-system" not found"#,
            Some("namespaces"),
        );
        let problem = LeaseProblem::classify(&missing, "titan-system");
        assert!(problem.needs_user());
        assert!(
            problem.to_string().contains("--lease-namespace"),
            "{problem}"
        );
        assert!(
            problem
                .to_string()
                .contains("kubectl create namespace titan-system")
        );
        let forbidden = api_error(403, "leases is forbidden: User \"x\" cannot create", None);
        let problem = LeaseProblem::classify(&forbidden, "ops");
        assert!(matches!(problem, LeaseProblem::Forbidden { .. }));
        assert!(
            problem.to_string().contains("manifests/rbac.yaml"),
            "{problem}"
        );
        assert!(
            problem.to_string().contains("--lease-namespace"),
            "{problem}"
        );
        let lease_missing = api_error(404, "leases \"l\" not found", Some("leases"));
        assert!(!LeaseProblem::classify(&lease_missing, "ops").needs_user());
        let overloaded = api_error(503, "try later", None);
        assert!(!LeaseProblem::classify(&overloaded, "ops").needs_user());
    }

    #[test]
    fn lease_decisions_follow_holder_and_expiry() {
        let cases = [
            (None, 100, LeaseDecision::Create),
            (Some(lease(Some("me"), 10)), 100, LeaseDecision::Renew),
            (
                Some(lease(Some("other"), 90)),
                100,
                LeaseDecision::HeldByOther,
            ),
            (Some(lease(Some("other"), 85)), 100, LeaseDecision::Takeover),
            (Some(lease(Some("other"), 84)), 100, LeaseDecision::Takeover),
            (Some(lease(None, 99)), 100, LeaseDecision::Takeover),
        ];
        for (spec, now, want) in cases {
            assert_eq!(decide(spec.as_ref(), "me", at(now)), want, "{spec:?}");
        }
    }
}
