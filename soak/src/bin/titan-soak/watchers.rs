//! The soak's watchers: each watches every key through the etcd Watch API
//! from the revision the run started at, on one node at a time; when its
//! stream breaks (kill, partition, restart) it resumes on the next node from
//! the revision after the last event it saw, as etcd clients do. At the end
//! every stream, and every acknowledged put, is checked against the committed
//! history with `titan_soak::watch_check` (see [`check_all`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use titan_proto::etcdserverpb as pb;
use titan_proto::etcdserverpb::kv_client::KvClient;
use titan_proto::etcdserverpb::watch_client::WatchClient;
use titan_soak::watch_check::{self, WatchEvent};

/// One event as the check sees it: key and value bytes.
pub type Event = WatchEvent<Vec<u8>, Vec<u8>>;

/// Pause before a broken stream is resumed on the next node.
const RESUME_BACKOFF_MS: u64 = 200;
/// Longest wait for one connection or one message before moving on.
const STREAM_IDLE_MS: u64 = 1_000;
/// Bound on the events one watcher keeps (a soak of an hour stays below).
pub const MAX_EVENTS_PER_WATCHER: usize = 5_000_000;

/// What one watcher saw.
#[derive(Debug, Default)]
pub struct WatchLog {
    /// Every event, in arrival order, across resumes.
    pub events: Vec<Event>,
    /// Streams opened (1 + resumes).
    pub streams: u64,
    /// Set when the server canceled the watch as compacted (`compact_revision`).
    pub compacted: Option<i64>,
}

/// When the watchers may stop: 0 while the run goes on, then the final
/// revision every watcher must reach.
pub type Target = Arc<AtomicI64>;

/// The store's current revision (a linearizable Range), from any endpoint.
pub async fn current_revision(endpoints: &[String]) -> Result<i64> {
    let mut last_err = anyhow::anyhow!("no endpoints");
    for ep in endpoints {
        let req = pb::RangeRequest {
            key: b"soak-ready".to_vec(),
            ..Default::default()
        };
        let call = async {
            let mut c = KvClient::new(channel(ep)?);
            let resp = c.range(req).await?.into_inner();
            anyhow::Ok(resp.header.map(|h| h.revision).unwrap_or_default())
        };
        match tokio::time::timeout(Duration::from_millis(3 * STREAM_IDLE_MS), call).await {
            Ok(Ok(rev)) => return Ok(rev),
            Ok(Err(e)) => last_err = e,
            Err(_) => last_err = anyhow::anyhow!("{ep}: timed out"),
        }
    }
    Err(last_err)
}

fn channel(ep: &str) -> Result<tonic::transport::Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{ep}"))
        .context("endpoint")?
        .connect_timeout(Duration::from_millis(STREAM_IDLE_MS));
    Ok(endpoint.connect_lazy())
}

/// Watches every key from `from` until `target` is set and reached (or
/// `give_up_after` past that), resuming across broken streams.
pub async fn run_watcher(
    first_node: usize,
    endpoints: Vec<String>,
    from: i64,
    target: Target,
    give_up_after: Duration,
) -> WatchLog {
    let mut log = WatchLog::default();
    let mut node = first_node;
    let mut target_seen_at: Option<Instant> = None;
    loop {
        let next = log.events.last().map_or(from, |e| e.revision + 1);
        let goal = target.load(Ordering::Relaxed);
        if goal > 0 {
            let since = *target_seen_at.get_or_insert_with(Instant::now);
            if next > goal || since.elapsed() > give_up_after {
                return log;
            }
        }
        log.streams += 1;
        let ep = &endpoints[node % endpoints.len()];
        if stream_once(ep, next, &mut log, &target).await {
            return log;
        }
        node += 1;
        tokio::time::sleep(Duration::from_millis(RESUME_BACKOFF_MS)).await;
    }
}

/// One stream from `from`; true when the watcher is done (target reached,
/// compacted, or full), false when the stream broke.
async fn stream_once(ep: &str, from: i64, log: &mut WatchLog, target: &Target) -> bool {
    let Ok(ch) = channel(ep) else { return false };
    let mut client = WatchClient::new(ch);
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: vec![0],
                range_end: vec![0],
                start_revision: from,
                ..Default::default()
            },
        )),
    };
    // The sender lives as long as the stream: closing it ends the watch.
    let (tx, rx) = mpsc::channel(1);
    if tx.send(create).await.is_err() {
        return false;
    }
    let idle = Duration::from_millis(STREAM_IDLE_MS);
    let Ok(Ok(resp)) = tokio::time::timeout(idle, client.watch(ReceiverStream::new(rx))).await
    else {
        return false;
    };
    let mut stream = resp.into_inner();
    loop {
        let goal = target.load(Ordering::Relaxed);
        if goal > 0 && log.events.last().is_some_and(|e| e.revision >= goal) {
            return true;
        }
        let msg = match tokio::time::timeout(idle, stream.message()).await {
            Err(_) if goal > 0 => return false, // idle after the end: resume elsewhere
            Err(_) => continue,
            Ok(Ok(Some(m))) => m,
            Ok(_) => return false,
        };
        if msg.canceled && msg.compact_revision > 0 {
            log.compacted = Some(msg.compact_revision);
            return true;
        }
        for e in msg.events {
            let Some(kv) = e.kv else { continue };
            let put = e.r#type == titan_proto::mvccpb::event::EventType::Put as i32;
            log.events.push(WatchEvent {
                revision: kv.mod_revision,
                key: kv.key,
                value: put.then_some(kv.value),
            });
        }
        if log.events.len() >= MAX_EVENTS_PER_WATCHER {
            return true;
        }
    }
}

/// Checks the watchers. The soak writes one key per revision, so the
/// committed history is known from its shape: a watcher that read
/// `from..=through` to the end must hold every revision exactly once, in
/// order, with every acknowledged put (`acked`: key, value); that watcher is
/// the reference every other stream must equal over its window.
pub fn check_all(
    from: i64,
    through: i64,
    logs: &[WatchLog],
    acked: &[(Vec<u8>, Vec<u8>)],
    log: fn(&str),
) -> bool {
    let complete = |w: &&WatchLog| w.compacted.is_none();
    let Some(reference) = logs.iter().find(complete) else {
        log("watch check inconclusive: every watcher fell behind the compaction point");
        return logs.is_empty();
    };
    let mut ok = true;
    let whole = watch_check::check_every_revision(&reference.events, from, through);
    if let Err(v) = &whole {
        log(&format!(
            "watch reference over {from}..={through} DISAGREES: {v:?}"
        ));
        ok = false;
    }
    for (i, w) in logs.iter().enumerate() {
        // A watcher canceled as compacted (it fell behind the retention) is
        // checked up to the last event it saw.
        let end = match w.compacted {
            Some(_) => w.events.last().map_or(from - 1, |e| e.revision),
            None => through,
        };
        let verdict = watch_check::check_stream(&reference.events, from, end, &w.events);
        log(&format!(
            "watcher {i}: {} events over {} streams{}: {}",
            w.events.len(),
            w.streams,
            w.compacted
                .map_or(String::new(), |r| format!(" (canceled: compacted at {r})")),
            match &verdict {
                Ok(()) => format!("every revision {from}..={end} once, in order, values matching"),
                Err(v) => format!("DISAGREES: {v:?}"),
            }
        ));
        ok &= verdict.is_ok();
    }
    let puts: HashSet<(&[u8], &[u8])> = reference
        .events
        .iter()
        .filter_map(|e| Some((e.key.as_slice(), e.value.as_deref()?)))
        .collect();
    let missing = acked
        .iter()
        .filter(|(k, v)| !puts.contains(&(k.as_slice(), v.as_slice())))
        .count();
    log(&format!(
        "acknowledged puts missing from the watched history: {missing} of {}",
        acked.len()
    ));
    ok && missing == 0
}
