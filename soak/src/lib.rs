//! Test support for Titan's opt-in soak (`scripts/soak.sh`): the
//! linearizability checker over a recorded client history, and the check
//! that watch streams agree with the committed history (`watch_check`).
//! The driver that builds the namespaced cluster, runs the nemesis, records
//! the history and runs the watchers is the `titan-soak` binary in this crate.
// Test scenarios may read top to bottom; the 70-line limit is for code.
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod linearizability;
pub mod watch_check;
