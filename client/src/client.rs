//! [`Client`]: the KV operations, each run through one bounded retry loop.

use crate::backoff::{Backoff, jitter_seed};
use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::pool::ChannelPool;
use crate::redirect::{Failure, classify};
use crate::types::{CasResult, Consistency, DeleteResult, KeyValue, RangePage, RangeQuery};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use titan_proto::v1 as pb;
use titan_proto::v1::kv_client::KvClient;
use tonic::transport::Channel;

/// A Titan KV client. Cheap to clone; clones share the connection pool and the
/// cached leader.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Settings given at connect time.
    config: ClientConfig,
    /// One channel per endpoint.
    pool: ChannelPool,
    /// The last known leader's gRPC address; writes go there first.
    leader: Mutex<Option<String>>,
    /// Round-robin cursor over the seeds, used when no leader is known.
    next_seed: AtomicUsize,
}

/// What the retry loop may do after an attempt whose outcome is unknown.
#[derive(Debug, Clone, Copy)]
enum OnUnknown {
    /// Reads: retry freely.
    Retry,
    /// Conditional writes: retry (the condition makes a second execution
    /// impossible) and tell the caller, who resolves a resulting conflict.
    RetryAndFlag,
    /// Unconditional writes: stop with [`Error::OutcomeUnknown`].
    Fail(&'static str),
}

/// The result of the retry loop.
struct Attempted<T> {
    value: T,
    /// Some earlier attempt of this operation had an unknown outcome.
    after_unknown: bool,
}

impl Client {
    /// Validates the config and returns a client. Dials nothing yet: the first
    /// request connects to the leader (or a seed) on demand.
    pub fn connect(config: ClientConfig) -> Result<Client> {
        let pool = ChannelPool::for_config(&config)?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                pool,
                leader: Mutex::new(None),
                next_seed: AtomicUsize::new(0),
            }),
        })
    }

    /// The leader's gRPC address as last learned from a redirect or a
    /// successful write, if any.
    pub fn cached_leader(&self) -> Option<String> {
        self.lock_leader().clone()
    }

    /// Number of open pooled channels (one per endpoint used so far).
    pub fn pooled_channels(&self) -> usize {
        self.inner.pool.len()
    }

    /// Reads `key`. Returns the value and its version, or `None` if absent.
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        consistency: Consistency,
    ) -> Result<Option<(Vec<u8>, u64)>> {
        let req = pb::GetRequest {
            key: key.into(),
            consistency: consistency.to_proto() as i32,
        };
        let done = self
            .run(OnUnknown::Retry, &req.key, |mut kv| {
                let req = req.clone();
                async move { kv.get(req).await }
            })
            .await?;
        Ok(done.value.kv.map(|kv| (kv.value, kv.version)))
    }

    /// Writes `key = value` unconditionally; returns the new version.
    ///
    /// Returns [`Error::OutcomeUnknown`] if the request was sent and no answer
    /// came back; it is not retried then, since that could apply it twice
    /// around someone else's write.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64> {
        let req = pb::PutRequest {
            key: key.into(),
            value: value.into(),
            condition: None,
        };
        let done = self.send_put(req, OnUnknown::Fail("put")).await?;
        Ok(done.value.version)
    }

    /// Deletes `key` unconditionally (succeeds also when it did not exist).
    /// Like [`Client::put`], never retried after an unknown outcome.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<DeleteResult> {
        let req = pb::DeleteRequest {
            key: key.into(),
            condition: None,
        };
        let done = self.send_delete(req, OnUnknown::Fail("delete")).await?;
        Ok(DeleteResult {
            existed: done.value.existed,
            version: done.value.version,
        })
    }

    /// Writes `key = value` only if the key's version is `expected_version`.
    ///
    /// Safe under unknown outcomes: the client retries (a second execution
    /// would fail the condition) and, if the retry reports a conflict, reads the
    /// key back: if it now holds `value`, the earlier attempt applied and
    /// `Applied` is returned with the key's current version.
    pub async fn put_if_version(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        expected_version: u64,
    ) -> Result<CasResult> {
        let cond = pb::condition::Kind::ExpectedVersion(expected_version);
        self.conditional_put(key.into(), value.into(), cond).await
    }

    /// Writes `key = value` only if the key does not exist. Unknown outcomes
    /// are resolved as for [`Client::put_if_version`].
    pub async fn put_if_absent(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<CasResult> {
        let cond = pb::condition::Kind::MustBeAbsent(true);
        self.conditional_put(key.into(), value.into(), cond).await
    }

    /// Deletes `key` only if its version is `expected_version`.
    ///
    /// After an unknown outcome the client retries; if the retry conflicts
    /// because the key is now absent, the earlier attempt is taken to have
    /// applied and `Applied { version: 0 }` is returned (the delete's own log
    /// index is then not known).
    pub async fn delete_if_version(
        &self,
        key: impl Into<Vec<u8>>,
        expected_version: u64,
    ) -> Result<CasResult> {
        let condition = Some(pb::Condition {
            kind: Some(pb::condition::Kind::ExpectedVersion(expected_version)),
        });
        let req = pb::DeleteRequest {
            key: key.into(),
            condition,
        };
        let done = self.send_delete(req, OnUnknown::RetryAndFlag).await?;
        let resp = done.value;
        Ok(match (resp.succeeded, done.after_unknown, resp.version) {
            (true, _, version) => CasResult::Applied { version },
            (false, true, 0) => CasResult::Applied { version: 0 },
            (false, _, current_version) => CasResult::Conflict { current_version },
        })
    }

    /// Reads a key range or prefix (see [`RangeQuery`]).
    pub async fn range(&self, query: RangeQuery) -> Result<RangePage> {
        let req = query.to_proto();
        let done = self
            .run(OnUnknown::Retry, &req.prefix, |mut kv| {
                let req = req.clone();
                async move { kv.range(req).await }
            })
            .await?;
        let resp = done.value;
        Ok(RangePage {
            kvs: resp.kvs.into_iter().map(KeyValue::from_proto).collect(),
            more: resp.more,
            read_index: resp.read_index,
        })
    }

    async fn conditional_put(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        cond: pb::condition::Kind,
    ) -> Result<CasResult> {
        let condition = Some(pb::Condition { kind: Some(cond) });
        let req = pb::PutRequest {
            key: key.clone(),
            value: value.clone(),
            condition,
        };
        let done = self.send_put(req, OnUnknown::RetryAndFlag).await?;
        let resp = done.value;
        if resp.succeeded {
            return Ok(CasResult::Applied {
                version: resp.version,
            });
        }
        if !done.after_unknown {
            return Ok(CasResult::Conflict {
                current_version: resp.version,
            });
        }
        // An earlier attempt may have applied: the current value tells.
        match self.get(key, Consistency::Linearizable).await? {
            Some((current, version)) if current == value => Ok(CasResult::Applied { version }),
            Some((_, version)) => Ok(CasResult::Conflict {
                current_version: version,
            }),
            None => Ok(CasResult::Conflict { current_version: 0 }),
        }
    }

    async fn send_put(
        &self,
        req: pb::PutRequest,
        on_unknown: OnUnknown,
    ) -> Result<Attempted<pb::PutResponse>> {
        self.run(on_unknown, &req.key, |mut kv| {
            let req = req.clone();
            async move { kv.put(req).await }
        })
        .await
    }

    async fn send_delete(
        &self,
        req: pb::DeleteRequest,
        on_unknown: OnUnknown,
    ) -> Result<Attempted<pb::DeleteResponse>> {
        self.run(on_unknown, &req.key, |mut kv| {
            let req = req.clone();
            async move { kv.delete(req).await }
        })
        .await
    }
}

/// Where the retry loop is within one operation.
struct RetryState {
    started: Instant,
    deadline: Instant,
    attempts: u32,
    backoff: Backoff,
    after_unknown: bool,
    last: String,
}

/// What to do after one failed attempt.
enum Next {
    /// Try again now (a fresh redirect to a different node).
    Now,
    /// Try again after a backoff.
    Backoff,
    /// Stop with this error.
    Stop(Error),
}

impl Client {
    /// Runs one operation: pick an endpoint (leader first), attempt, classify
    /// the failure, follow redirects, back off, until success, a permanent
    /// error, `max_attempts` or the overall deadline.
    async fn run<T, F, Fut>(
        &self,
        on_unknown: OnUnknown,
        key: &[u8],
        mut f: F,
    ) -> Result<Attempted<T>>
    where
        F: FnMut(KvClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let retry = &self.inner.config.retry;
        let started = Instant::now();
        let mut state = RetryState {
            started,
            deadline: started + retry.overall_deadline,
            attempts: 0,
            backoff: Backoff::new(retry.backoff_min, retry.backoff_max, jitter_seed()),
            after_unknown: false,
            last: String::from("no attempt made"),
        };
        loop {
            let now = Instant::now();
            if state.attempts >= retry.max_attempts || now >= state.deadline {
                return Err(exhausted(&state, key));
            }
            state.attempts += 1;
            let endpoint = self.pick_endpoint();
            let next = match self.attempt(&endpoint, state.deadline - now, &mut f).await {
                Ok(resp) => {
                    self.set_leader_if_unknown(&endpoint);
                    let after_unknown = state.after_unknown;
                    return Ok(Attempted {
                        value: resp.into_inner(),
                        after_unknown,
                    });
                }
                Err(failure) => self.on_failure(&endpoint, failure, on_unknown, key, &mut state),
            };
            match next {
                Next::Now => {}
                Next::Backoff => {
                    let pause = state.backoff.next_delay();
                    let left = state.deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(pause.min(left)).await;
                }
                Next::Stop(err) => return Err(err),
            }
        }
    }

    /// One attempt against `endpoint`, bounded by the request timeout and by
    /// what is left of the overall deadline.
    async fn attempt<T, F, Fut>(
        &self,
        endpoint: &str,
        left: Duration,
        f: &mut F,
    ) -> std::result::Result<tonic::Response<T>, Failure>
    where
        F: FnMut(KvClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let channel = self
            .inner
            .pool
            .get(endpoint)
            .await
            .map_err(Failure::NotExecuted)?;
        let budget = self.inner.config.request_timeout.min(left);
        match tokio::time::timeout(budget, f(KvClient::new(channel))).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(status)) => Err(classify(&status)),
            Err(_) => Err(Failure::Unknown(format!(
                "no reply from {endpoint} within {budget:?}"
            ))),
        }
    }

    fn on_failure(
        &self,
        endpoint: &str,
        failure: Failure,
        on_unknown: OnUnknown,
        key: &[u8],
        state: &mut RetryState,
    ) -> Next {
        tracing::debug!(
            endpoint,
            ?failure,
            attempt = state.attempts,
            "titan-client attempt failed"
        );
        match failure {
            Failure::NotLeader {
                leader_grpc: Some(hint),
            } => {
                state.last = format!("{endpoint} is not the leader; redirected to {hint}");
                let fresh = hint != endpoint;
                self.set_leader(Some(hint));
                if fresh { Next::Now } else { Next::Backoff }
            }
            Failure::NotLeader { leader_grpc: None } => {
                state.last = format!("{endpoint} is not the leader and knows no leader");
                self.forget_leader(endpoint);
                Next::Backoff
            }
            Failure::NotExecuted(detail) => {
                self.inner.pool.evict(endpoint);
                self.forget_leader(endpoint);
                state.last = detail;
                Next::Backoff
            }
            Failure::Unknown(detail) => {
                self.inner.pool.evict(endpoint);
                self.forget_leader(endpoint);
                self.after_unknown(detail, on_unknown, key, state)
            }
            Failure::Permanent(code, message) => Next::Stop(Error::Rejected { code, message }),
        }
    }

    fn after_unknown(
        &self,
        detail: String,
        on_unknown: OnUnknown,
        key: &[u8],
        state: &mut RetryState,
    ) -> Next {
        match on_unknown {
            OnUnknown::Fail(op) => Next::Stop(Error::OutcomeUnknown {
                op,
                key: String::from_utf8_lossy(key).into_owned(),
                detail,
            }),
            OnUnknown::RetryAndFlag => {
                state.after_unknown = true;
                state.last = detail;
                Next::Backoff
            }
            OnUnknown::Retry => {
                state.last = detail;
                Next::Backoff
            }
        }
    }

    /// The cached leader, else the next seed in round-robin order.
    fn pick_endpoint(&self) -> String {
        if let Some(leader) = self.lock_leader().clone() {
            return leader;
        }
        let seeds = &self.inner.config.endpoints;
        let i = self.inner.next_seed.fetch_add(1, Ordering::Relaxed);
        seeds[i % seeds.len()].clone()
    }

    fn set_leader(&self, leader: Option<String>) {
        *self.lock_leader() = leader;
    }

    /// After a success on a seed, remember it: it served the request, so it is
    /// the leader (for writes) or at least a live node (for reads).
    fn set_leader_if_unknown(&self, endpoint: &str) {
        let mut leader = self.lock_leader();
        if leader.is_none() {
            *leader = Some(endpoint.to_string());
        }
    }

    /// Forgets the cached leader if it is `endpoint` (it just failed).
    fn forget_leader(&self, endpoint: &str) {
        let mut leader = self.lock_leader();
        if leader.as_deref() == Some(endpoint) {
            *leader = None;
        }
    }

    fn lock_leader(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // Every critical section is one assignment or clone: never torn.
        self.inner
            .leader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The error when the retry budget runs out. If an attempt of a conditional
/// write had an unknown outcome and no later attempt settled it, the write may
/// still have applied: that is reported as such, not as "nothing happened".
fn exhausted(state: &RetryState, key: &[u8]) -> Error {
    if state.after_unknown {
        return Error::OutcomeUnknown {
            op: "conditional write",
            key: String::from_utf8_lossy(key).into_owned(),
            detail: format!(
                "retries exhausted after {} attempts: {}",
                state.attempts, state.last
            ),
        };
    }
    Error::RetriesExhausted {
        attempts: state.attempts,
        elapsed_ms: state.started.elapsed().as_millis() as u64,
        last: state.last.clone(),
    }
}
