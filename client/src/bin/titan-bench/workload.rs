//! What each operation is: op mix, key choice and the key naming scheme.

use crate::conn::Op;
use crate::zipf::{Zipf, ZipfError};
use rand::RngExt;

/// Operation mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// Only unconditional writes.
    Put,
    /// Only reads.
    Get,
    /// Reads with probability `--read-ratio`, else writes.
    Mixed,
    /// Read-then-conditional-write (Titan gRPC only).
    Cas,
    /// Paged prefix reads of `--range-limit` keys (etcd API only).
    Range,
    /// Compare mod_revision, then put, else get: the kube-apiserver's update
    /// (etcd API only).
    Txn,
    /// Watch fan-out mode: `--watchers` on the key prefix, writers putting
    /// into it; reports events/s and delivery latency (etcd API only).
    Watch,
    /// Lease mode: grant `--leases`, keep them all alive for the run; reports
    /// keep-alive responses/s, latency and leases lost (etcd API only).
    Lease,
}

impl Mix {
    /// Whether this mix needs etcd's v3 API.
    pub fn needs_etcd_api(self) -> bool {
        matches!(self, Mix::Range | Mix::Txn | Mix::Watch | Mix::Lease)
    }
}

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    Uniform,
    Zipf,
}

/// A workload: immutable, shared by all workers (each has its own RNG).
#[derive(Debug)]
pub struct Workload {
    mix: Mix,
    read_ratio: f64,
    keys: usize,
    zipf: Option<Zipf>,
    key_prefix: String,
}

impl Workload {
    pub fn new(
        mix: Mix,
        read_ratio: f64,
        keys: usize,
        dist: Dist,
        zipf_s: f64,
        key_prefix: String,
    ) -> Result<Self, ZipfError> {
        let zipf = match dist {
            Dist::Zipf => Some(Zipf::new(keys, zipf_s)?),
            Dist::Uniform if keys == 0 => return Err(ZipfError::KeyCount(0)),
            Dist::Uniform => None,
        };
        Ok(Workload {
            mix,
            read_ratio: read_ratio.clamp(0.0, 1.0),
            keys,
            zipf,
            key_prefix,
        })
    }

    /// The name of key number `i`: fixed width so keys sort by number.
    pub fn key(&self, i: usize) -> String {
        format!("{}{i:08}", self.key_prefix)
    }

    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Draws the next operation.
    pub fn next_op<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Op {
        let index = match &self.zipf {
            Some(z) => z.sample(rng),
            None => rng.random_range(0..self.keys),
        };
        let key = self.key(index);
        match self.mix {
            // The watch mode's writers put; the lease mode draws no ops.
            Mix::Put | Mix::Watch | Mix::Lease => Op::Put { key },
            Mix::Range => Op::Range { key },
            // The worker fills in the mod_revision it last saw for the key.
            Mix::Txn => Op::Txn {
                key,
                expected_mod_revision: 0,
            },
            Mix::Get => Op::Get { key },
            Mix::Cas => Op::Cas { key },
            Mix::Mixed if rng.random_range(0.0..1.0) < self.read_ratio => Op::Get { key },
            Mix::Mixed => Op::Put { key },
        }
    }
}

/// A printable value of `size` bytes (no spaces or newlines, so it is valid
/// on the TCP protocol too).
pub fn value_of_size(size: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..size)
        .map(|i| ALPHABET[i % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn mixed_respects_the_read_ratio() {
        let w = Workload::new(Mix::Mixed, 0.8, 100, Dist::Uniform, 0.0, "k/".into())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let gets = (0..10_000)
            .filter(|_| matches!(w.next_op(&mut rng), Op::Get { .. }))
            .count();
        assert!((7_700..8_300).contains(&gets), "{gets}");
    }

    #[test]
    fn keys_are_within_the_key_space_and_fixed_width() {
        let w = Workload::new(Mix::Put, 0.0, 10, Dist::Zipf, 0.99, "bench/".into())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..1000 {
            let Op::Put { key } = w.next_op(&mut rng) else {
                panic!("put mix made a non-put")
            };
            let n: usize = key["bench/".len()..].parse().unwrap_or(usize::MAX);
            assert!(n < 10 && key.len() == "bench/".len() + 8, "{key}");
        }
    }

    #[test]
    fn zero_keys_is_rejected() {
        assert!(Workload::new(Mix::Get, 0.0, 0, Dist::Uniform, 0.0, String::new()).is_err());
    }

    #[test]
    fn values_have_the_requested_size_and_no_whitespace() {
        for size in [0, 1, 256, 4096] {
            let v = value_of_size(size);
            assert_eq!(v.len(), size);
            assert!(!v.contains(char::is_whitespace));
        }
    }
}
