//! `titan-server`: a replicated key-value server.
//!
//! See ARCHITECTURE.md for the code map and invariants.

pub mod raft;
pub mod storage;
