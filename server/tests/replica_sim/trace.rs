//! A running hash of everything that happened in a run (deliveries, client
//! outcomes, faults), so two runs of one seed can be compared exactly.

use std::sync::{Arc, Mutex};

/// FNV-1a over every event's words, and the number of events.
#[derive(Clone, Default)]
pub struct Trace(Arc<Mutex<(u64, u64)>>);

impl Trace {
    /// An empty trace.
    pub fn new() -> Self {
        Trace(Arc::new(Mutex::new((0xcbf2_9ce4_8422_2325, 0))))
    }

    /// Records one event.
    pub fn event(&self, words: &[u64]) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for w in words {
            for b in w.to_le_bytes() {
                t.0 = (t.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        t.1 += 1;
        if std::env::var_os("TITAN_VOPR_TRACE").is_some() {
            eprintln!("TRACE {words:?}");
        }
    }

    /// (hash, events) so far.
    pub fn summary(&self) -> (u64, u64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
