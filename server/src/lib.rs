//! `titan-server`: a replicated key-value server.
//!
//! See ARCHITECTURE.md for the code map and invariants.
// Test scenarios may read top to bottom; the 70-line limit is for code.
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod api;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod node;
pub mod server;
pub mod storage;
pub mod transport;

/// The Raft core lives in its own crate (`titan-raft`) so that its dependency
/// list proves it does no IO; re-exported here so `crate::raft::...` paths
/// read the same everywhere in the server.
pub use titan_raft as raft;
