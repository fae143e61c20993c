//! The soak's clients: each writes unique values, reads (linearizable) and
//! runs compare-and-swap transactions (etcd `Txn`: compare the value it last
//! saw, put on success, read on failure) on random keys through
//! `titan-client` while the nemesis runs, recording every operation as
//! invoke / ok / fail / unknown with timestamps.

use std::collections::HashMap;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use titan_client::{
    Client, ClientConfig, Compare, CompareField, CompareOp, Consistency, RetryConfig, Txn, TxnOp,
    TxnOpResult, TxnResult,
};
use titan_soak::linearizability::{CasOutcome, Op, OpKind};

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

/// Parses a stored value (the soak writes decimal `u64`s).
fn parse_value(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The transaction for a compare-and-swap: `expect` (`None`: absent) →
/// put `value`, else read the key.
fn cas_txn(key: u32, expect: Option<u64>, value: u64) -> Txn {
    let k = key.to_string().into_bytes();
    let compare = match expect {
        Some(v) => Compare::new(
            k.clone(),
            CompareOp::Equal,
            CompareField::Value(v.to_string().into_bytes()),
        ),
        None => Compare::new(k.clone(), CompareOp::Equal, CompareField::Create(0)),
    };
    Txn {
        compares: vec![compare],
        success: vec![TxnOp::Put {
            key: k.clone(),
            value: value.to_string().into_bytes(),
            lease: 0,
        }],
        failure: vec![TxnOp::Get {
            key: k,
            prefix: false,
        }],
    }
}

/// What a compare-and-swap reply says, or `None` for a malformed reply.
fn cas_outcome(r: &TxnResult) -> Option<CasOutcome> {
    if r.succeeded {
        return Some(CasOutcome::Swapped);
    }
    match r.results.first()? {
        TxnOpResult::Get(kvs) => Some(CasOutcome::Failed {
            observed: match kvs.first() {
                Some(kv) => Some(parse_value(&kv.value)?),
                None => None,
            },
        }),
        _ => None,
    }
}

/// Runs one compare-and-swap and records it; returns the key's value as
/// the reply showed it (`None` when there was no usable reply).
pub async fn cas(
    c: &Client,
    h: &History,
    key: u32,
    expect: Option<u64>,
    value: u64,
) -> Option<Option<u64>> {
    let call = h.now();
    let outcome = match c.txn(&cas_txn(key, expect, value)).await {
        Ok(r) => cas_outcome(&r),
        Err(_) => None,
    };
    let (ret, recorded) = match outcome {
        Some(_) => (Some(h.now()), Outcome::Ok),
        None => (None, Outcome::Unknown),
    };
    let kind = OpKind::Cas {
        expect,
        value,
        outcome,
    };
    let op = Op {
        key,
        kind,
        call,
        ret,
    };
    h.push(Record {
        op,
        outcome: recorded,
    });
    match outcome? {
        CasOutcome::Swapped => Some(Some(value)),
        CasOutcome::Failed { observed } => Some(observed),
    }
}

/// One client's loop until `stop`: 40% reads, 40% puts and 20%
/// compare-and-swap transactions (against the value this client last saw
/// under the key), over `keys` keys.
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
    let mut seen: HashMap<u32, Option<u64>> = HashMap::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = rng.random_range(0..keys);
        let dice = rng.random_range(0..10);
        if dice < 4 {
            if let Some(v) = read(&c, &h, key).await {
                seen.insert(key, v);
            }
            continue;
        }
        n += 1;
        let value = value_of(id, n);
        let answered = if dice < 8 {
            put(&c, &h, key, value).await.then_some(Some(value))
        } else {
            let expect = seen.get(&key).copied().flatten();
            cas(&c, &h, key, expect, value).await
        };
        match answered {
            Some(v) => {
                seen.insert(key, v);
            }
            None => {
                seen.remove(&key);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(())
}

/// Puts `value` under `key` and records it; true when acknowledged.
async fn put(c: &Client, h: &History, key: u32, value: u64) -> bool {
    let call = h.now();
    let res = c.put(key.to_string(), value.to_string()).await;
    let (ret, outcome) = match res {
        Ok(_) => (Some(h.now()), Outcome::Ok),
        Err(_) => (None, Outcome::Unknown),
    };
    let op = Op {
        key,
        kind: OpKind::Put { value },
        call,
        ret,
    };
    h.push(Record { op, outcome });
    outcome == Outcome::Ok
}
