//! Zipf-distributed key ranks: rank `k` (0-based) of `n` is drawn with
//! probability proportional to `1 / (k + 1)^s`. A precomputed CDF plus binary
//! search gives exact sampling; memory is one `f64` per key, bounded by
//! [`MAX_ZIPF_KEYS`].

use rand::RngExt;

/// Largest key space for which a CDF is built (80 MB of `f64`).
pub const MAX_ZIPF_KEYS: usize = 10_000_000;

/// Errors building a [`Zipf`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ZipfError {
    /// `n` was 0 or above [`MAX_ZIPF_KEYS`].
    #[error("zipf needs 1..={MAX_ZIPF_KEYS} keys, got {0}")]
    KeyCount(usize),
    /// The exponent was negative or not finite.
    #[error("zipf exponent must be finite and >= 0, got {0}")]
    Exponent(f64),
}

/// A Zipf sampler over ranks `0..n`.
#[derive(Debug, Clone)]
pub struct Zipf {
    /// `cdf[k]` = P(rank <= k); the last entry is 1.0.
    cdf: Vec<f64>,
}

impl Zipf {
    /// Builds the CDF for `n` ranks with exponent `s` (0 = uniform; the YCSB
    /// default skew is 0.99).
    pub fn new(n: usize, s: f64) -> Result<Self, ZipfError> {
        if n == 0 || n > MAX_ZIPF_KEYS {
            return Err(ZipfError::KeyCount(n));
        }
        if !s.is_finite() || s < 0.0 {
            return Err(ZipfError::Exponent(s));
        }
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 0..n {
            total += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        Ok(Zipf { cdf })
    }

    /// Number of ranks.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Draws one rank in `0..len()`.
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.random_range(0.0..1.0);
        self.cdf
            .partition_point(|p| *p <= u)
            .min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn counts(z: &Zipf, draws: usize, seed: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut counts = vec![0usize; z.len()];
        for _ in 0..draws {
            counts[z.sample(&mut rng)] += 1;
        }
        counts
    }

    #[test]
    fn samples_stay_in_range() {
        let z = Zipf::new(10, 1.2).unwrap_or_else(|e| panic!("{e}"));
        assert!(counts(&z, 10_000, 1).len() == 10);
    }

    #[test]
    fn rank_frequencies_follow_the_power_law() {
        // s = 1, n = 100: P(0)/P(1) = 2, P(0)/P(9) = 10.
        let z = Zipf::new(100, 1.0).unwrap_or_else(|e| panic!("{e}"));
        let c = counts(&z, 200_000, 7);
        let ratio01 = c[0] as f64 / c[1] as f64;
        let ratio09 = c[0] as f64 / c[9] as f64;
        assert!((ratio01 - 2.0).abs() < 0.15, "P0/P1 = {ratio01}");
        assert!((ratio09 - 10.0).abs() < 1.5, "P0/P9 = {ratio09}");
        // Probability of rank 0 is 1 / H(100) ~= 0.1928.
        let p0 = c[0] as f64 / 200_000.0;
        assert!((p0 - 0.1928).abs() < 0.01, "P0 = {p0}");
    }

    #[test]
    fn exponent_zero_is_uniform() {
        let z = Zipf::new(4, 0.0).unwrap_or_else(|e| panic!("{e}"));
        for c in counts(&z, 40_000, 3) {
            assert!((9_000..11_000).contains(&c), "{c}");
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let z = Zipf::new(1000, 0.99).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(counts(&z, 1000, 11), counts(&z, 1000, 11));
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert_eq!(Zipf::new(0, 1.0).err(), Some(ZipfError::KeyCount(0)));
        assert_eq!(
            Zipf::new(MAX_ZIPF_KEYS + 1, 1.0).err(),
            Some(ZipfError::KeyCount(MAX_ZIPF_KEYS + 1))
        );
        assert!(matches!(
            Zipf::new(5, f64::NAN),
            Err(ZipfError::Exponent(_))
        ));
        assert!(matches!(Zipf::new(5, -1.0), Err(ZipfError::Exponent(_))));
    }
}
