//! Background writers that follow `NOT_LEADER` redirects and record exactly
//! which writes were acknowledged, for "no acknowledged write lost" checks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Client, Cluster};

/// What one key went through: the last acknowledged value and the values
/// attempted after it without an acknowledgement (any of which may have
/// committed).
#[derive(Debug, Default, Clone)]
pub struct KeyHistory {
    /// The last value whose write was acknowledged.
    pub last_acked: Option<String>,
    /// Values attempted after `last_acked` without an acknowledgement.
    pub unacked_after: Vec<String>,
}

/// Shared record of all writers.
#[derive(Debug, Default)]
pub struct Ledger {
    /// History per key.
    pub keys: HashMap<String, KeyHistory>,
    /// Acknowledged writes.
    pub acked: u64,
    /// Writes that failed or whose outcome is unknown.
    pub failed: u64,
    /// Times a write succeeded, for measuring unavailability windows.
    pub ack_times: Vec<Instant>,
}

impl Ledger {
    /// Checks one node's value for `key` against the history.
    pub fn accepts(&self, key: &str, got: Option<&str>) -> bool {
        let Some(h) = self.keys.get(key) else {
            return true;
        };
        match (&h.last_acked, got) {
            (Some(v), Some(g)) if v == g => true,
            (_, Some(g)) => h.unacked_after.iter().any(|u| u == g),
            (None, None) => true,
            (Some(_), None) => false,
        }
    }
}

/// Writers running in threads until stopped.
pub struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The shared record every writer appends to.
    pub ledger: Arc<Mutex<Ledger>>,
}

/// Client ports of all nodes, re-read by writers when redirecting.
pub type Ports = Arc<Vec<u16>>;

impl Writers {
    /// `clients` threads, each cycling over `keys_per_client` keys of its own.
    pub fn start(ports: Ports, clients: usize, keys_per_client: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let threads = (0..clients)
            .map(|c| {
                let (stop, ledger, ports) = (stop.clone(), ledger.clone(), ports.clone());
                std::thread::spawn(move || write_loop(c, keys_per_client, &ports, &stop, &ledger))
            })
            .collect();
        Writers {
            stop,
            threads,
            ledger,
        }
    }

    /// Stops and joins every writer; returns the ledger.
    pub fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let mut l = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *l)
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> u64 {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner()).acked
    }
}

fn write_loop(c: usize, keys: usize, ports: &[u16], stop: &AtomicBool, ledger: &Mutex<Ledger>) {
    let mut target = c % ports.len();
    let mut conn: Option<Client> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let key = format!("c{c}-k{}", seq % keys as u64);
        let value = format!("v{seq}");
        if conn.is_none() {
            conn = Client::connect(ports[target]).ok();
        }
        let reply = conn
            .as_mut()
            .map(|cl| cl.cmd(&format!("SET {key} {value}")));
        let mut l = ledger.lock().unwrap_or_else(|e| e.into_inner());
        let h = l.keys.entry(key).or_default();
        match reply {
            Some(Ok(r)) if r == "OK" => {
                h.last_acked = Some(value);
                h.unacked_after.clear();
                l.acked += 1;
                l.ack_times.push(Instant::now());
                continue;
            }
            Some(Ok(r)) => {
                h.unacked_after.push(value);
                l.failed += 1;
                let redirect = r
                    .strip_prefix("ERR NOT_LEADER ")
                    .and_then(|addr| ports.iter().position(|p| addr.ends_with(&format!(":{p}"))));
                // No usable redirect (e.g. UNAVAILABLE on a removed node): try the next node.
                target = redirect.unwrap_or((target + 1) % ports.len());
                conn = None;
            }
            _ => {
                h.unacked_after.push(value);
                l.failed += 1;
                conn = None;
                target = (target + 1) % ports.len();
            }
        }
        drop(l);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `key` from node `port` (linearizable GET); `Err` if the node did not answer.
pub fn read(port: u16, key: &str) -> Result<Option<String>, String> {
    let mut c = Client::connect(port).map_err(|e| e.to_string())?;
    let r = c.cmd(&format!("GET {key}")).map_err(|e| e.to_string())?;
    if r == "NOT_FOUND" {
        Ok(None)
    } else if let Some(v) = r.strip_prefix("VALUE ") {
        Ok(Some(v.to_string()))
    } else {
        Err(r)
    }
}

/// Asserts every key in the ledger reads back acceptably on every running node.
pub fn verify_all(cluster: &Cluster, ledger: &Ledger) {
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        for key in ledger.keys.keys() {
            let got = super::wait_for(Duration::from_secs(20), "a read answer", || {
                read(node.client_port, key).ok()
            });
            assert!(
                ledger.accepts(key, got.as_deref()),
                "{}: key {key} reads {got:?}, history {:?}",
                node.name,
                ledger.keys.get(key)
            );
        }
    }
}
