//! `titan-server`: a replicated key-value server.
//!
//! See ARCHITECTURE.md for the code map and invariants.

pub mod api;
pub mod config;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod storage;
pub mod transport;
