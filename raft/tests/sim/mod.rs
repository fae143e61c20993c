//! Deterministic simulation harness for the Raft core (TigerBeetle VOPR
//! style): a simulated network and disk, crash/restart with loss of
//! unsynced writes, a tiny KV state machine, continuous safety checkers and
//! a linearizability checker. Shared by `raft_sim.rs` (seeded fault runs)
//! and `raft_scenarios.rs` (hand-driven paper scenarios).
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod checker;
pub mod cluster;
pub mod kv;
pub mod linearizability;
pub mod network;
pub mod workload;
