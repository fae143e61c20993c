//! Watch fan-out mode (`--op watch`): `--watchers` watchers on the key prefix,
//! spread over `--watch-streams` Watch streams (one connection each, over the
//! endpoints), and `--clients` writers putting into the prefix at `--rate`
//! puts/s (0 = as fast as they can). Each value starts with its send time, so
//! a watcher measures delivery latency on receipt. Reports events/s
//! delivered, delivery latency, and events missing or out of order.

use crate::Args;
use crate::conn::channel;
use crate::etcd_ops::prefix_end;
use crate::stats::{Latency, Recorder, Summary};
use crate::workload::value_of_size;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use titan_proto::etcdserverpb as etcdpb;
use tokio::sync::watch as signal;

use etcdpb::watch_request::RequestUnion;

/// Digits of the send-time stamp (microseconds since the run began).
const STAMP_DIGITS: usize = 20;
/// How long all watchers may take to be created before the run fails.
const CREATE_WAIT: Duration = Duration::from_secs(60);
/// Interval of the progress line and of the drain check.
const TICK: Duration = Duration::from_millis(100);

/// A value of at least `size` bytes starting with the send time `stamp_us`.
pub fn stamped_value(stamp_us: u64, filler: &str) -> Vec<u8> {
    let mut value = format!("{stamp_us:0STAMP_DIGITS$}").into_bytes();
    value.extend_from_slice(filler.as_bytes().get(STAMP_DIGITS..).unwrap_or(&[]));
    value
}

/// The send time a [`stamped_value`] carries; None for a foreign value.
pub fn stamp_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.get(..STAMP_DIGITS)?)
        .ok()?
        .parse()
        .ok()
}

/// Per-watcher ordering check: events of one watcher must come in strictly
/// increasing revision order (each exactly once).
#[derive(Debug, Default)]
pub struct OrderCheck {
    last_revision: HashMap<i64, i64>,
    /// Events at or below their watcher's previous revision.
    pub out_of_order: u64,
}

impl OrderCheck {
    pub fn see(&mut self, watch_id: i64, mod_revision: i64) {
        let last = self.last_revision.entry(watch_id).or_insert(0);
        if mod_revision <= *last {
            self.out_of_order += 1;
        } else {
            *last = mod_revision;
        }
    }
}

/// Counters shared by the receivers, the writers and the controller.
#[derive(Debug, Default)]
struct Shared {
    created: AtomicU64,
    delivered: AtomicU64,
    /// Microseconds since the run's base of the last event received.
    last_event_us: AtomicU64,
}

/// What one stream's receiver saw.
struct StreamResult {
    rec: Recorder,
    order: OrderCheck,
    canceled: u64,
    ended: bool,
}

pub async fn run(args: Args) -> anyhow::Result<Summary> {
    let base = Instant::now();
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = signal::channel(false);
    let streams = args.watch_streams.clamp(1, args.watchers.max(1));
    let mut receivers = Vec::with_capacity(streams);
    for i in 0..streams {
        // Watchers i, i+streams, ... go on stream i.
        let count = (args.watchers + streams - 1 - i) / streams;
        let addr = args.endpoints[i % args.endpoints.len()].clone();
        let rx = open_stream(&addr, &args.key_prefix, count).await?;
        receivers.push(tokio::spawn(receive(
            rx,
            base,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    wait_created(&args, &shared).await?;
    let started = Instant::now();
    let slot = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let addr = args.endpoints[i % args.endpoints.len()].clone();
        let ctx = WriterCtx {
            args: args.clone(),
            base,
            started,
            slot: slot.clone(),
        };
        writers.push(tokio::spawn(writer(ctx, addr)));
    }
    let mut puts = Recorder::new();
    for w in writers {
        puts.merge(&w.await?);
    }
    let write_elapsed = started.elapsed();
    drain(&args, &shared, &puts).await;
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(receivers.len());
    for r in receivers {
        results.push(r.await?);
    }
    summarize(&args, &shared, base, started, write_elapsed, &puts, results)
}

async fn open_stream(
    addr: &str,
    prefix: &str,
    watchers: usize,
) -> anyhow::Result<tonic::Streaming<etcdpb::WatchResponse>> {
    let channel = channel(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e:?}"))?;
    let mut client = etcdpb::watch_client::WatchClient::new(channel);
    let create = etcdpb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(etcdpb::WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        })),
    };
    // The request side stays open (pending) for the whole run: closing it
    // ends every watch on the stream.
    let requests = futures::stream::iter(vec![create; watchers]).chain(futures::stream::pending());
    let resp = client.watch(requests).await?;
    Ok(resp.into_inner())
}

use futures::StreamExt as _;

async fn receive(
    mut rx: tonic::Streaming<etcdpb::WatchResponse>,
    base: Instant,
    shared: Arc<Shared>,
    mut stop: signal::Receiver<bool>,
) -> StreamResult {
    let mut out = StreamResult {
        rec: Recorder::new(),
        order: OrderCheck::default(),
        canceled: 0,
        ended: false,
    };
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => break,
            msg = rx.message() => msg,
        };
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) | Err(_) => {
                out.ended = true;
                break;
            }
        };
        if resp.created {
            shared.created.fetch_add(1, Ordering::Relaxed);
        }
        if resp.canceled {
            out.canceled += 1;
        }
        let now_us = base.elapsed().as_micros() as u64;
        for event in &resp.events {
            let Some(kv) = &event.kv else { continue };
            out.order.see(resp.watch_id, kv.mod_revision);
            if let Some(stamp) = stamp_of(&kv.value) {
                out.rec
                    .ok(Duration::from_micros(now_us.saturating_sub(stamp)));
            }
        }
        if !resp.events.is_empty() {
            shared
                .delivered
                .fetch_add(resp.events.len() as u64, Ordering::Relaxed);
            shared.last_event_us.fetch_max(now_us, Ordering::Relaxed);
        }
    }
    out
}

async fn wait_created(args: &Args, shared: &Shared) -> anyhow::Result<()> {
    let deadline = Instant::now() + CREATE_WAIT;
    while shared.created.load(Ordering::Relaxed) < args.watchers as u64 {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "only {} of {} watchers created after {CREATE_WAIT:?}",
                shared.created.load(Ordering::Relaxed),
                args.watchers
            );
        }
        tokio::time::sleep(TICK).await;
    }
    if !args.quiet {
        eprintln!("{} watchers created", args.watchers);
    }
    Ok(())
}

struct WriterCtx {
    args: Args,
    base: Instant,
    started: Instant,
    /// Next put number (the rate schedule and the key are drawn from it).
    slot: Arc<AtomicU64>,
}

/// Puts stamped values until the run is over; `--rate` paces the puts of
/// all writers together on one schedule.
async fn writer(ctx: WriterCtx, addr: String) -> Recorder {
    let mut rec = Recorder::new();
    let Ok(channel) = channel(&addr).await else {
        rec.error("connect");
        return rec;
    };
    let mut kv = etcdpb::kv_client::KvClient::new(channel);
    let filler = value_of_size(ctx.args.value_size);
    let limit = Duration::from_secs_f64(ctx.args.duration_secs.max(0.0));
    let timeout = Duration::from_millis(ctx.args.timeout_ms);
    loop {
        let n = ctx.slot.fetch_add(1, Ordering::Relaxed);
        if ctx
            .args
            .ops
            .map_or(ctx.started.elapsed() >= limit, |ops| n >= ops)
        {
            break;
        }
        if ctx.args.rate > 0.0 {
            let due = ctx.started + Duration::from_secs_f64(n as f64 / ctx.args.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let key = format!(
            "{}{:08}",
            ctx.args.key_prefix,
            n % ctx.args.keys.max(1) as u64
        );
        let sent = Instant::now();
        let stamp = ctx.base.elapsed().as_micros() as u64;
        let req = etcdpb::PutRequest {
            key: key.into_bytes(),
            value: stamped_value(stamp, &filler),
            ..Default::default()
        };
        match tokio::time::timeout(timeout, kv.put(req)).await {
            Ok(Ok(_)) => rec.ok(sent.elapsed()),
            Ok(Err(_)) => rec.error("put_failed"),
            Err(_) => rec.error("put_timeout"),
        }
    }
    rec
}

/// Waits until every acknowledged put reached every watcher, or
/// `--drain-secs` passed.
async fn drain(args: &Args, shared: &Shared, puts: &Recorder) {
    let expected = puts.latency_us.len() * args.watchers as u64;
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain_secs.max(0.0));
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(TICK).await;
    }
}

fn summarize(
    args: &Args,
    shared: &Shared,
    base: Instant,
    started: Instant,
    write_elapsed: Duration,
    puts: &Recorder,
    results: Vec<StreamResult>,
) -> anyhow::Result<Summary> {
    let mut events = Recorder::new();
    let (mut out_of_order, mut canceled, mut ended) = (0, 0, 0);
    for r in &results {
        events.merge(&r.rec);
        out_of_order += r.order.out_of_order;
        canceled += r.canceled;
        ended += u64::from(r.ended);
    }
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let expected = puts.latency_us.len() * args.watchers as u64;
    let missing = expected.saturating_sub(delivered);
    for (kind, n) in [
        ("events_missing", missing),
        ("events_out_of_order", out_of_order),
        ("watchers_canceled", canceled),
        ("watch_streams_ended", ended),
    ] {
        if n > 0 {
            events.errors.insert(kind, n);
        }
    }
    for (kind, n) in &puts.errors {
        *events.errors.entry(kind).or_insert(0) += n;
    }
    // Events/s over the time from the first put to the last event received.
    let since_base = Duration::from_micros(shared.last_event_us.load(Ordering::Relaxed));
    let span = since_base
        .saturating_sub(started.duration_since(base))
        .max(write_elapsed);
    let mut summary = Summary::from_recorder(&events, span, serde_json::to_value(args)?);
    let put_summary = Summary::from_recorder(puts, write_elapsed, serde_json::Value::Null);
    summary.clients = Some(args.watchers as u64);
    summary.extra = Some(serde_json::json!({
        "watchers": args.watchers,
        "watch_streams": results.len(),
        "puts_acknowledged": puts.latency_us.len(),
        "put_throughput_ops_s": put_summary.throughput_ops_s,
        "put_latency_us": latency_brief(&put_summary.latency_us),
        "events_expected": expected,
        "events_delivered": delivered,
        "events_missing": missing,
        "events_out_of_order": out_of_order,
    }));
    Ok(summary)
}

fn latency_brief(l: &Latency) -> serde_json::Value {
    serde_json::json!({"p50": l.p50, "p99": l.p99, "max": l.max})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_value_keeps_its_size_and_gives_back_its_stamp() {
        let filler = value_of_size(256);
        let v = stamped_value(123_456_789, &filler);
        assert_eq!(v.len(), 256);
        assert_eq!(stamp_of(&v), Some(123_456_789));
        // Values shorter than a stamp grow to hold it.
        let short = stamped_value(7, "");
        assert_eq!((short.len(), stamp_of(&short)), (STAMP_DIGITS, Some(7)));
    }

    #[test]
    fn a_foreign_value_has_no_stamp() {
        assert_eq!(stamp_of(b"hello"), None);
        assert_eq!(stamp_of(value_of_size(64).as_bytes()), None);
    }

    #[test]
    fn order_check_counts_repeats_and_regressions_per_watcher() {
        let mut c = OrderCheck::default();
        for (id, rev) in [(1, 5), (2, 5), (1, 6), (1, 6), (2, 4), (2, 7)] {
            c.see(id, rev);
        }
        assert_eq!(c.out_of_order, 2);
    }
}
