//! # titan-client
//!
//! An async Rust client for Titan over the **etcd v3 API** (`etcdserverpb`
//! KV, Watch and Lease on the client gRPC port, 7001), plus the Admin API
//! (`titan.v1.Admin`, peer port 5001).
//!
//! - **Any member serves.** Titan forwards etcd writes from followers to the
//!   leader and serves watches from any node, so requests go to the last
//!   endpoint that worked, else round-robin over the seeds. A `NOT_LEADER`
//!   redirect with a `titan-leader-grpc` hint is still followed at once.
//! - **Bounded retries.** Refused connections and `UNAVAILABLE` answers that
//!   say nothing was proposed (no leader, "leader changed", "request not
//!   sent") are retried with jittered exponential backoff, within
//!   [`RetryConfig::max_attempts`] and [`RetryConfig::overall_deadline`].
//! - **No blind retries of writes.** If a `put`/`delete`/`txn`/lease grant or
//!   revoke was sent and its fate is unknown (connection lost after sending,
//!   timeout, the server's `DEADLINE_EXCEEDED` "outcome unknown"), the call
//!   fails with [`Error::OutcomeUnknown`]. Conditional writes
//!   (`put_if_version`, `put_if_absent`, `delete_if_version`, each one etcd
//!   txn) are retried instead, because the condition prevents a double
//!   apply, and a conflict after an unknown attempt is settled by reading the
//!   key back.
//! - **Versions are revisions.** A key's "version" here is its etcd
//!   `mod_revision`; [`KeyValue`] also carries `create_revision`, etcd's
//!   per-key `version` (as `modifications`) and the lease.
//! - **Watch, leases, transactions.** [`Client::watch`] streams changes to a
//!   key or prefix from any revision still held, resuming on another node if
//!   the stream breaks; [`Client::lease_grant`] and friends manage leases;
//!   [`Client::txn`] runs compares + success/failure operations atomically.
//! - **Connection pool.** One HTTP/2 channel per endpoint, shared by all
//!   clones of a [`Client`].
//! - **TLS.** With [`ClientConfig::tls`] set, every endpoint (seeds and
//!   leader hints given as `host:port`) is dialled over TLS (rustls), the
//!   server verified with the configured CA against the endpoint's host (or
//!   [`TlsConfig::domain_name`]), presenting a client certificate when one
//!   is configured. Unreadable or malformed files fail
//!   [`Client::connect`] with [`Error::TlsFile`].
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
//! use titan_client::{Compare, CompareField, CompareOp, Txn, TxnOp, WatchQuery};
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
//! // Leases: the key vanishes when the lease is revoked or expires.
//! let lease = client.lease_grant(10).await?;
//! client.put_with_lease("session/a", "alive", lease.id).await?;
//! client.lease_keep_alive_once(lease.id).await?;
//!
//! // Watch a prefix from a past revision.
//! let mut watch = client.watch(WatchQuery::prefix("config/").from_revision(1)).await?;
//! for event in watch.next().await? {
//!     println!("{:?} {:?}", event.kind, event.kv.key);
//! }
//!
//! // A transaction: if config/owner is still at `version`, write `a`.
//! let txn = Txn {
//!     compares: vec![Compare::new("config/owner", CompareOp::Equal, CompareField::Mod(version as i64))],
//!     success: vec![TxnOp::Put { key: b"a".to_vec(), value: b"1".to_vec(), lease: 0 }],
//!     failure: vec![TxnOp::Get { key: b"config/owner".to_vec(), prefix: false }],
//! };
//! println!("txn took the {} branch", if client.txn(&txn).await?.succeeded { "success" } else { "failure" });
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
//! - Writes on a follower are forwarded by the server (etcd API). A
//!   redirect (`FAILED_PRECONDITION`, message starting `NOT_LEADER`, metadata
//!   `titan-leader-grpc`) is followed when a server sends one.
//! - `UNAVAILABLE` from the server: trusted as "not executed" (and retried for
//!   any operation) only when its message names a reason on
//!   [`redirect::NOT_EXECUTED_MARKERS`] (no leader, leader changed, request
//!   not sent, overloaded, ...) and does not contain
//!   [`redirect::OUTCOME_UNKNOWN_MARKER`]; otherwise it is an unknown outcome.
//! - Back-pressure: `RESOURCE_EXHAUSTED`, only when nothing was proposed.
//! - Anything else after sending (`UNKNOWN`, `ABORTED`, `INTERNAL`,
//!   `DEADLINE_EXCEEDED`, `CANCELLED`, a dropped connection) is an unknown
//!   outcome. etcd's errors (`OUT_OF_RANGE` compacted / future revision,
//!   `NOT_FOUND` lease, `INVALID_ARGUMENT`) are permanent: [`Error::Rejected`].

mod admin;
mod backoff;
mod client;
mod config;
mod error;
mod kv;
mod lease;
mod pool;
mod tls;
pub use pool::{error_chain, grpc_endpoint};
pub mod redirect;
mod txn;
mod types;
mod watch;

pub use admin::AdminClient;
pub use backoff::Backoff;
pub use client::Client;
pub use config::{ClientConfig, RetryConfig, TlsConfig};
pub use error::{Error, Result};
pub use lease::{LeaseGrant, LeaseInfo};
pub use pool::MAX_POOLED_CHANNELS;
pub use titan_proto::etcdserverpb as etcd_proto;
pub use titan_proto::mvccpb;
pub use titan_proto::v1 as proto;
pub use txn::{Compare, CompareField, CompareOp, Txn, TxnOp, TxnOpResult, TxnResult};
pub use types::{
    CasResult, Consistency, DEFAULT_RANGE_LIMIT, DeleteResult, KeyValue, RangePage, RangeQuery,
    prefix_bounds,
};
pub use watch::{EventKind, MAX_WATCH_RESUMES_IN_A_ROW, Watch, WatchEvent, WatchQuery};
