//! Bounded, jittered exponential backoff between retries.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// Largest doubling exponent; beyond it the ceiling is `max` anyway and the
/// shift would overflow.
const MAX_DOUBLINGS: u32 = 20;

/// Produces retry delays: attempt `n` waits a uniformly random time in
/// `[min, min(max, min * 2^n)]`. Jitter spreads clients that all saw the same
/// leader change, so they do not retry in lockstep.
#[derive(Debug)]
pub struct Backoff {
    /// Lower bound of every delay.
    min: Duration,
    /// Upper bound of every delay.
    max: Duration,
    /// Retries taken so far; drives the exponential ceiling.
    attempt: u32,
    /// Jitter source; seeded so that tests are reproducible.
    rng: ChaCha8Rng,
}

impl Backoff {
    /// A backoff with bounds `[min, max]` (swapped if given backwards) and a
    /// fixed jitter seed.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        let (min, max) = if min <= max { (min, max) } else { (max, min) };
        Backoff {
            min,
            max,
            attempt: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The next delay; always within `[min, max]`.
    pub fn next_delay(&mut self) -> Duration {
        let doublings = self.attempt.min(MAX_DOUBLINGS);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.min.saturating_mul(1u32 << doublings).min(self.max);
        let lo = self.min.as_micros() as u64;
        let hi = ceiling.as_micros() as u64;
        if hi <= lo {
            return ceiling;
        }
        Duration::from_micros(self.rng.random_range(lo..=hi))
    }
}

/// A seed for production jitter: differs between processes and calls, which
/// is all jitter needs.
pub(crate) fn jitter_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_delay_stays_within_bounds() {
        let (min, max) = (Duration::from_millis(20), Duration::from_millis(500));
        let mut backoff = Backoff::new(min, max, 7);
        for _ in 0..1000 {
            let d = backoff.next_delay();
            assert!(d >= min && d <= max, "{d:?} outside [{min:?}, {max:?}]");
        }
    }

    #[test]
    fn ceiling_grows_exponentially_until_max() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(1000));
        let mut backoff = Backoff::new(min, max, 1);
        // First attempt: ceiling = min, so the delay is exactly min.
        assert_eq!(backoff.next_delay(), min);
        // Attempt n has ceiling min * 2^n.
        for n in 1..6u32 {
            let d = backoff.next_delay();
            assert!(d <= min * (1 << n), "attempt {n}: {d:?}");
        }
    }

    #[test]
    fn late_attempts_reach_but_never_pass_max() {
        let (min, max) = (Duration::from_millis(1), Duration::from_millis(50));
        let mut backoff = Backoff::new(min, max, 3);
        let late: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).skip(100).collect();
        assert!(late.iter().all(|d| *d <= max));
        assert!(
            late.iter().any(|d| *d > max / 2),
            "jitter should use the full range"
        );
    }

    #[test]
    fn same_seed_gives_same_sequence() {
        let mk = || Backoff::new(Duration::from_millis(5), Duration::from_secs(1), 42);
        let (mut a, mut b) = (mk(), mk());
        for _ in 0..50 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }

    #[test]
    fn reversed_bounds_are_swapped() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(10), 9);
        for _ in 0..100 {
            let d = backoff.next_delay();
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(100));
        }
    }
}
