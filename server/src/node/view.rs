//! The runtime's published view: the [`LeaderView`] that handles, `/readyz`
//! and the admin API read, its `stopping`/`failed` flags, and since when no
//! leader has been known. Owns its state; the runtime computes the rest of
//! the view from the core.

use tokio::sync::watch;
use tokio::time::Instant;

use super::handle::LeaderView;

/// The published leader view and the leaderless clock.
pub(super) struct View {
    /// Published leader view for handles, /readyz and the admin API.
    tx: watch::Sender<LeaderView>,
    /// Since when no leader has been known (reads fail after `leader_wait`).
    leaderless_since: Option<Instant>,
}

impl View {
    /// Publishes into `tx`; a leader is assumed until a tick sees none.
    pub(super) fn new(tx: watch::Sender<LeaderView>) -> Self {
        View {
            tx,
            leaderless_since: None,
        }
    }

    /// A fatal storage error: `failed` first (a request that sees
    /// `stopping` must read why), not ready, stopping.
    pub(super) fn mark_failed(&self) {
        self.tx.send_modify(|v| {
            v.failed = true;
            v.ready = false;
            v.stopping = true;
        });
    }

    /// Requests fail fast from now on.
    pub(super) fn mark_stopping(&self) {
        self.tx.send_modify(|v| v.stopping = true);
    }

    /// Publishes `view` if it changed. Its `failed` flag is kept as
    /// published, and `stopping` stays set only while `shutting_down`.
    pub(super) fn publish(&self, mut view: LeaderView, shutting_down: bool) {
        view.stopping = shutting_down && self.tx.borrow().stopping;
        view.failed = self.tx.borrow().failed;
        self.tx.send_if_modified(|v| {
            let changed = *v != view;
            if changed {
                *v = view;
            }
            changed
        });
    }

    /// How long no leader has been known at `now` (`leader` 0 = none); a
    /// known leader resets the clock and returns `None`.
    pub(super) fn leaderless_for(
        &mut self,
        leader: u64,
        now: Instant,
    ) -> Option<std::time::Duration> {
        if leader != 0 {
            self.leaderless_since = None;
            return None;
        }
        let since = *self.leaderless_since.get_or_insert(now);
        Some(now.duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `failed` survives every later publish; `stopping` only while the
    /// shutdown is on; the leaderless clock runs from the first tick
    /// without a leader and a leader resets it.
    #[test]
    fn flags_survive_publishing_and_a_leader_resets_the_leaderless_clock() {
        let (tx, rx) = watch::channel(LeaderView::default());
        let mut view = View::new(tx);
        view.mark_stopping();
        view.publish(LeaderView::default(), false);
        assert!(!rx.borrow().stopping);
        view.mark_stopping();
        view.publish(LeaderView::default(), true);
        assert!(rx.borrow().stopping);
        view.mark_failed();
        let ready = LeaderView {
            leader_id: 2,
            ready: true,
            ..LeaderView::default()
        };
        view.publish(ready, true);
        assert!(rx.borrow().failed && rx.borrow().ready && rx.borrow().leader_id == 2);

        let t0 = Instant::now();
        assert_eq!(view.leaderless_for(0, t0), Some(Duration::ZERO));
        let later = t0 + Duration::from_secs(3);
        assert_eq!(view.leaderless_for(0, later), Some(Duration::from_secs(3)));
        assert_eq!(view.leaderless_for(7, later), None);
        assert_eq!(view.leaderless_for(0, later), Some(Duration::ZERO));
    }
}
