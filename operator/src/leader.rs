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
