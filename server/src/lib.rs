//! `titan-server`: a replicated key-value server.
//!
//! See ARCHITECTURE.md for the code map and invariants.

pub mod api;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod storage;
pub mod transport;
