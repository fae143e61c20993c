//! The KV history's linearizability checker: the Wing–Gong–Lowe search
//! (per key, porcupine-style, unknown outcomes may or may not take effect)
//! shared with the process-level soak, so the simulation and the soak judge
//! histories the same way. Its tests live with it in
//! `soak/src/linearizability.rs`.

// Each test binary uses a different part of the harness.
#[allow(unused_imports)]
pub use titan_soak::linearizability::{Op, OpKind, Verdict, check};
