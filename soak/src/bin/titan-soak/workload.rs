//! The soak's clients: each writes unique values and reads (linearizable)
//! random keys through `titan-client` while the nemesis runs, recording
//! every operation as invoke / ok / fail / unknown with timestamps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use titan_client::{Client, ClientConfig, Consistency, RetryConfig};
use titan_soak::linearizability::{Op, OpKind};

/// How one operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// A read that failed (constrains nothing).
    Fail,
    /// A write without an answer: it may or may not have taken effect.
    Unknown,
}

/// One recorded operation.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// The checker's view of it.
    pub op: Op<u32>,
    /// How it ended.
    pub outcome: Outcome,
}

/// The shared history and a clock.
#[derive(Debug, Clone)]
pub struct History {
    start: Instant,
    records: Arc<Mutex<Vec<Record>>>,
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> History {
        History {
            start: Instant::now(),
            records: Arc::new(Mutex::new(Vec::new())),
        }
    }
    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    /// Appends one record.
    pub fn push(&self, r: Record) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }
    /// A copy of every record.
    pub fn snapshot(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A client with soak-sized timeouts over the given gRPC endpoints.
pub fn client(endpoints: &[String]) -> anyhow::Result<Client> {
    let mut cfg = ClientConfig::new(endpoints.iter().cloned());
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.request_timeout = Duration::from_millis(1500);
    cfg.retry = RetryConfig {
        overall_deadline: Duration::from_secs(4),
        ..RetryConfig::default()
    };
    Ok(Client::connect(cfg)?)
}

/// Encodes a unique put value.
pub fn value_of(client: u64, n: u64) -> u64 {
    (client << 40) | n
}

/// Reads `key` linearizably and records it.
pub async fn read(c: &Client, h: &History, key: u32) -> Option<Option<u64>> {
    let call = h.now();
    let res = c.get(key.to_string(), Consistency::Linearizable).await;
    let observed = res
        .ok()
        .map(|v| v.and_then(|(v, _)| String::from_utf8(v).ok()?.parse().ok()));
    let (ret, outcome) = match observed {
        Some(_) => (Some(h.now()), Outcome::Ok),
        None => (None, Outcome::Fail),
    };
    let kind = OpKind::Get {
        value: observed.flatten(),
    };
    let op = Op {
        key,
        kind,
        call,
        ret,
    };
    h.push(Record { op, outcome });
    observed
}

/// One client's loop until `stop`: half puts, half reads, over `keys` keys.
pub async fn run_client(
    id: u64,
    seed: u64,
    keys: u32,
    endpoints: Vec<String>,
    h: History,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let c = client(&endpoints)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = rng.random_range(0..keys);
        if rng.random_range(0..2) == 0 {
            read(&c, &h, key).await;
            continue;
        }
        n += 1;
        let value = value_of(id, n);
        let call = h.now();
        let res = c.put(key.to_string(), value.to_string()).await;
        let (ret, outcome) = match res {
            Ok(_) => (Some(h.now()), Outcome::Ok),
            Err(_) => (None, Outcome::Unknown),
        };
        let kind = OpKind::Put { value };
        let op = Op {
            key,
            kind,
            call,
            ret,
        };
        h.push(Record { op, outcome });
        if outcome == Outcome::Unknown {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}
