//! # titan-client
//!
//! An async Rust client for Titan's gRPC KV API (`titan.v1.KV`, client gRPC
//! port 7001) and Admin API (`titan.v1.Admin`, peer port 5001).
//!
//! - **Leader discovery.** Give it one or more seeds. Requests go to the last
//!   known leader, else round-robin over the seeds. A follower answers a write
//!   with `FAILED_PRECONDITION` / `NOT_LEADER` and the leader's address in the
//!   `titan-leader-grpc` metadata; the client follows that redirect at once.
//! - **Bounded retries.** Leader changes, refused connections and
//!   `UNAVAILABLE` (no leader yet) are retried with jittered exponential
//!   backoff, within [`RetryConfig::max_attempts`] and
//!   [`RetryConfig::overall_deadline`].
//! - **No blind retries of writes.** If a `put`/`delete` was sent and its fate
//!   is unknown (connection lost after sending, timeout), the call fails with
//!   [`Error::OutcomeUnknown`]. Conditional writes (`put_if_version`,
//!   `put_if_absent`, `delete_if_version`) are retried instead, because the
//!   condition prevents a double apply, and a conflict after an unknown attempt
//!   is settled by reading the key back.
//! - **Connection pool.** One HTTP/2 channel per endpoint, shared by all
//!   clones of a [`Client`].
//! - **TLS.** [`TlsConfig`] is part of the configuration, but this build does
//!   not implement it yet and refuses such a config with
//!   [`Error::TlsUnsupported`].
//!
//! ## Example
//!
//! Building a client validates the config without dialing:
//!
//! ```
//! use std::time::Duration;
//! use titan_client::{Client, ClientConfig};
//!
//! let mut config = ClientConfig::new(["localhost:7001", "localhost:7002", "localhost:7003"]);
//! config.request_timeout = Duration::from_secs(2);
//! config.retry.overall_deadline = Duration::from_secs(5);
//! let client = Client::connect(config)?;
//! assert_eq!(client.cached_leader(), None);
//! # Ok::<(), titan_client::Error>(())
//! ```
//!
//! Talking to a running cluster (start one with `scripts/cluster.sh start`):
//!
//! ```no_run
//! use titan_client::{CasResult, Client, ClientConfig, Consistency, Error, RangeQuery};
//!
//! # async fn demo() -> Result<(), Error> {
//! let client = Client::connect(ClientConfig::new(["localhost:7001", "localhost:7002"]))?;
//! let version = client.put("config/owner", "node-a").await?;
//! let (value, v) = client.get("config/owner", Consistency::Linearizable).await?.unwrap();
//! assert_eq!((value.as_slice(), v), (&b"node-a"[..], version));
//!
//! // Compare-and-set: only one of two racing writers wins.
//! match client.put_if_version("config/owner", "node-b", version).await? {
//!     CasResult::Applied { version } => println!("now owned by node-b at {version}"),
//!     CasResult::Conflict { current_version } => println!("lost the race: {current_version}"),
//! }
//!
//! let page = client.range(RangeQuery::prefix("config/").with_limit(100)).await?;
//! println!("{} keys", page.kvs.len());
//!
//! match client.put("k", "v").await {
//!     Err(Error::OutcomeUnknown { .. }) => { /* read back, or retry as CAS */ }
//!     other => { other?; }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Server contract this client relies on
//! - Not-leader: `FAILED_PRECONDITION`, message starting `NOT_LEADER`,
//!   metadata `titan-leader-grpc` (and `titan-leader-client`) when a leader is
//!   known.
//! - `UNAVAILABLE` from the server: trusted as "not executed" (and retried for
//!   any operation) only when its message names a reason on
//!   [`redirect::NOT_EXECUTED_MARKERS`] (no leader, overloaded, ...) and does
//!   not contain [`redirect::OUTCOME_UNKNOWN_MARKER`]; otherwise it is an
//!   unknown outcome.
//! - Back-pressure: `RESOURCE_EXHAUSTED`, only when nothing was proposed.
//! - Anything else after sending (`UNKNOWN`, `ABORTED`, `INTERNAL`,
//!   `DEADLINE_EXCEEDED`, `CANCELLED`, a dropped connection) is an unknown
//!   outcome.

mod admin;
mod backoff;
mod client;
mod config;
mod error;
mod pool;
pub mod redirect;
mod types;

pub use admin::AdminClient;
pub use backoff::Backoff;
pub use client::Client;
pub use config::{ClientConfig, RetryConfig, TlsConfig};
pub use error::{Error, Result};
pub use pool::MAX_POOLED_CHANNELS;
pub use titan_proto::v1 as proto;
pub use types::{CasResult, Consistency, DeleteResult, KeyValue, RangePage, RangeQuery};
