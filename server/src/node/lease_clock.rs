//! Lease time, owned by the leader: each lease's deadline (in memory, never
//! replicated), lease-id generation for grants proposed here, keep-alive
//! refreshes, and the expiry scan that proposes revoke entries.
//!
//! - Only the leader's clock is active. Followers keep no deadlines and never
//!   expire anything; a revoke is an ordinary log entry.
//! - On becoming leader ([`LeaseClock::promote`]) every lease's deadline is
//!   reset to now + TTL (etcd's "promote"), so a failover never shortens a
//!   lease. Stepping down clears the table.
//! - Expiry is bounded: at most [`MAX_EXPIRY_REVOKES_PER_TICK`] revokes are
//!   proposed per tick and [`MAX_EXPIRY_REVOKES_IN_FLIGHT`] wait for apply;
//!   one still unapplied after [`EXPIRY_RETRY_MS`] is proposed again.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Most expiry revokes proposed in one tick.
pub const MAX_EXPIRY_REVOKES_PER_TICK: usize = 64;
/// Most expiry revokes proposed and not yet applied.
pub const MAX_EXPIRY_REVOKES_IN_FLIGHT: usize = 1024;
/// An expiry revoke not applied after this long is proposed again.
pub const EXPIRY_RETRY_MS: u64 = 5_000;
/// Id bits below the member prefix (etcd's idutil layout: member bits, then
/// a millisecond timestamp and a counter).
const ID_SUFFIX_BITS: u32 = 48;

/// The leader's lease deadlines and the id generator.
#[derive(Debug)]
pub struct LeaseClock {
    /// Whether this node leads (deadlines are kept only then).
    active: bool,
    /// Lease id → when it expires.
    deadlines: HashMap<i64, Instant>,
    /// Lease id → when its expiry revoke was proposed.
    revoking: HashMap<i64, Instant>,
    /// The member prefix of generated ids (top bit clear: ids are positive).
    id_prefix: i64,
    /// The next generated suffix (starts at unix-ms << 8, then counts up).
    next_suffix: i64,
}

impl LeaseClock {
    /// A clock for member `member_id`, ids seeded from `unix_ms`.
    pub fn new(member_id: u64, unix_ms: u64) -> Self {
        let suffix_mask = (1i64 << ID_SUFFIX_BITS) - 1;
        LeaseClock {
            active: false,
            deadlines: HashMap::new(),
            revoking: HashMap::new(),
            id_prefix: ((member_id & 0x7fff) as i64) << ID_SUFFIX_BITS,
            next_suffix: ((unix_ms as i64) << 8) & suffix_mask,
        }
    }

    /// The next lease id not taken according to `taken`.
    pub fn next_id(&mut self, taken: impl Fn(i64) -> bool) -> i64 {
        let suffix_mask = (1i64 << ID_SUFFIX_BITS) - 1;
        loop {
            self.next_suffix = (self.next_suffix + 1) & suffix_mask;
            let id = self.id_prefix | self.next_suffix;
            if id != 0 && !taken(id) {
                return id;
            }
        }
    }

    /// Whether deadlines are kept (this node leads).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// This node became leader: every lease gets a full TTL from `now`.
    pub fn promote(&mut self, leases: impl Iterator<Item = (i64, i64)>, now: Instant) {
        self.active = true;
        self.revoking.clear();
        self.deadlines = leases.map(|(id, ttl)| (id, deadline(now, ttl))).collect();
    }

    /// This node stopped leading: it keeps no deadlines.
    pub fn demote(&mut self) {
        self.active = false;
        self.deadlines = HashMap::new();
        self.revoking = HashMap::new();
    }

    /// A grant was applied.
    pub fn granted(&mut self, id: i64, ttl_s: i64, now: Instant) {
        if self.active {
            self.deadlines.insert(id, deadline(now, ttl_s));
        }
    }

    /// A revoke (client or expiry) was applied, or found no lease.
    pub fn revoked(&mut self, id: i64) {
        self.deadlines.remove(&id);
        self.revoking.remove(&id);
    }

    /// A keep-alive: the lease gets a full TTL from `now`. False when this
    /// clock has no such lease.
    pub fn refresh(&mut self, id: i64, ttl_s: i64, now: Instant) -> bool {
        if !self.active || self.revoking.contains_key(&id) {
            return false;
        }
        match self.deadlines.get_mut(&id) {
            Some(d) => {
                *d = deadline(now, ttl_s);
                true
            }
            None => false,
        }
    }

    /// Whole seconds left on a lease (rounded up), or `None` when unknown.
    pub fn remaining_s(&self, id: i64, now: Instant) -> Option<i64> {
        let d = self.deadlines.get(&id)?;
        let left = d.saturating_duration_since(now);
        Some(left.as_millis().div_ceil(1000) as i64)
    }

    /// Leases whose deadline passed and whose revoke is not in flight
    /// (bounded); each returned id is marked in flight at `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<i64> {
        if !self.active {
            return Vec::new();
        }
        let retry = Duration::from_millis(EXPIRY_RETRY_MS);
        self.revoking
            .retain(|_, at| now.saturating_duration_since(*at) < retry);
        let room = MAX_EXPIRY_REVOKES_IN_FLIGHT.saturating_sub(self.revoking.len());
        let mut due: Vec<(Instant, i64)> = self
            .deadlines
            .iter()
            .filter(|(id, d)| **d <= now && !self.revoking.contains_key(id))
            .map(|(id, d)| (*d, *id))
            .collect();
        due.sort_unstable();
        due.truncate(room.min(MAX_EXPIRY_REVOKES_PER_TICK));
        for (_, id) in &due {
            self.revoking.insert(*id, now);
        }
        due.into_iter().map(|(_, id)| id).collect()
    }
}

/// `now + ttl_s` seconds, saturating far in the future.
fn deadline(now: Instant, ttl_s: i64) -> Instant {
    let ttl = Duration::from_secs(u64::try_from(ttl_s).unwrap_or(0));
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// etcd's minimum lease TTL: ceil(1.5 × election timeout) in seconds.
pub fn min_ttl_s(election_timeout: Duration) -> i64 {
    (election_timeout.as_millis() * 3).div_ceil(2000).max(1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_clock_keeps_no_deadlines_and_expires_nothing() {
        let now = Instant::now();
        let mut c = LeaseClock::new(1, 0);
        c.granted(5, 1, now);
        assert_eq!(c.remaining_s(5, now), None);
        assert!(c.expired(now + Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn promote_gives_every_lease_a_full_ttl_from_now() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(1, 0);
        c.promote([(1, 10), (2, 3)].into_iter(), t0);
        let cases = [(1, Some(10)), (2, Some(3)), (9, None)];
        for (id, want) in cases {
            assert_eq!(c.remaining_s(id, t0), want, "lease {id}");
        }
        assert!(c.expired(t0 + Duration::from_secs(2)).is_empty());
        assert_eq!(c.expired(t0 + Duration::from_secs(3)), vec![2]);
    }

    #[test]
    fn expiry_is_proposed_once_per_lease_until_the_retry_interval() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(1, 0);
        c.promote((1..=200).map(|id| (id, 1)), t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(c.expired(t1).len(), MAX_EXPIRY_REVOKES_PER_TICK);
        assert_eq!(c.expired(t1).len(), MAX_EXPIRY_REVOKES_PER_TICK);
        assert!(
            !c.refresh(1, 10, t1),
            "a lease being revoked is not renewed"
        );
        c.revoked(1);
        let later = t1 + Duration::from_millis(EXPIRY_RETRY_MS);
        assert_eq!(c.expired(later).len(), MAX_EXPIRY_REVOKES_PER_TICK);
    }

    #[test]
    fn keep_alive_pushes_the_deadline_and_demote_forgets_everything() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(1, 0);
        c.promote([(7, 5)].into_iter(), t0);
        assert!(c.refresh(7, 5, t0 + Duration::from_secs(4)));
        assert!(c.expired(t0 + Duration::from_secs(6)).is_empty());
        c.demote();
        assert!(!c.refresh(7, 5, t0));
        assert_eq!(c.remaining_s(7, t0), None);
    }

    #[test]
    fn generated_ids_are_positive_carry_the_member_and_skip_taken_ones() {
        let mut c = LeaseClock::new(0xffff_0003, 1_700_000_000_000);
        let a = c.next_id(|_| false);
        let b = c.next_id(|id| id == a + 1);
        assert!(a > 0 && b == a + 2);
        assert_eq!(a >> 48, 0x7fff & 0x0003);
    }

    #[test]
    fn min_ttl_is_one_and_a_half_election_timeouts_rounded_up() {
        let cases = [(1000, 2), (2000, 3), (100, 1), (3000, 5)];
        for (ms, want) in cases {
            assert_eq!(min_ttl_s(Duration::from_millis(ms)), want, "{ms} ms");
        }
    }
}
