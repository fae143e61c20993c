//! [`Client`]: the connection pool, the cached endpoint and the one bounded
//! retry loop every operation runs through. The operations themselves are
//! in `kv.rs`, `lease.rs` and `watch.rs` (all over the etcd v3 API).

use crate::backoff::{Backoff, jitter_seed};
use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::pool::ChannelPool;
use crate::redirect::{Failure, classify};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A Titan client over the etcd v3 API. Cheap to clone; clones share the connection pool and the
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
    /// The endpoint that last served a request, or a leader named by a
    /// redirect; requests go there first. (Titan forwards etcd writes from
    /// followers, so this is "a node known to work", usually the leader.)
    leader: Mutex<Option<String>>,
    /// Round-robin cursor over the seeds, used when no leader is known.
    next_seed: AtomicUsize,
}

/// What the retry loop may do after an attempt whose outcome is unknown.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OnUnknown {
    /// Reads: retry freely.
    Retry,
    /// Conditional writes: retry (the condition makes a second execution
    /// impossible) and tell the caller, who resolves a resulting conflict.
    RetryAndFlag,
    /// Unconditional writes: stop with [`Error::OutcomeUnknown`].
    Fail(&'static str),
}

/// The result of the retry loop.
pub(crate) struct Attempted<T> {
    /// The successful attempt's answer.
    pub(crate) value: T,
    /// Some earlier attempt of this operation had an unknown outcome.
    pub(crate) after_unknown: bool,
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
    pub(crate) async fn run<T, F, Fut>(
        &self,
        on_unknown: OnUnknown,
        key: &[u8],
        mut f: F,
    ) -> Result<Attempted<T>>
    where
        F: FnMut(Channel) -> Fut,
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
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let channel = self
            .inner
            .pool
            .get(endpoint)
            .await
            .map_err(Failure::NotExecuted)?;
        let budget = self.inner.config.request_timeout.min(left);
        match tokio::time::timeout(budget, f(channel)).await {
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
    pub(crate) fn pick_endpoint(&self) -> String {
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
