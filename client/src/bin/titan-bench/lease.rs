//! Lease mode (`--op lease`): grants `--leases` leases of `--lease-ttl-secs`
//! (with `--clients` concurrent grants), keeps them all alive for the run over
//! `--keepalive-streams` LeaseKeepAlive streams (each lease renewed every
//! TTL/3, as etcd's clientv3 does, spread evenly over time), then checks every
//! lease with TimeToLive and revokes it. Reports keep-alive responses/s, their
//! latency, and every lease lost.

use crate::Args;
use crate::conn::channel;
use crate::stats::{Latency, Recorder, Summary};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use titan_proto::etcdserverpb as etcdpb;
use tokio::sync::mpsc;
use tonic::transport::Channel;

type LeaseClient = etcdpb::lease_client::LeaseClient<Channel>;

/// Keep-alive requests queued on one stream before the sender waits.
const KEEPALIVE_QUEUE_BOUND: usize = 1024;

/// When, counted from the start of keep-alives, the `k`-th request of a
/// stream holding `leases` leases is due: lease `k % leases` in round
/// `k / leases`, one request per lease per `interval`, spread evenly.
pub fn keepalive_due(k: u64, leases: usize, interval: Duration) -> Duration {
    let leases = leases.max(1) as u64;
    let nanos = interval.as_nanos() * u128::from(k) / u128::from(leases);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Keep-alive interval for a TTL: a third of it, at least 100 ms.
pub fn keepalive_interval(ttl_secs: i64) -> Duration {
    Duration::from_millis((ttl_secs.max(1) as u64 * 1000 / 3).max(100))
}

pub async fn run(args: Args) -> anyhow::Result<Summary> {
    let clients = connect_all(&args.endpoints, args.clients.max(1)).await?;
    let mut rec = Recorder::new();
    let granted_at = Instant::now();
    let (leases, grant) = grant_all(&args, &clients).await;
    rec.merge(&grant);
    let grant_s = granted_at.elapsed().as_secs_f64();
    if !args.quiet {
        eprintln!("granted {} leases in {grant_s:.1}s", leases.len());
    }
    let streams = args.keepalive_streams.clamp(1, leases.len().max(1));
    let interval = keepalive_interval(args.lease_ttl_secs);
    let run_for = Duration::from_secs_f64(args.duration_secs.max(0.0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for s in 0..streams {
        let mine: Vec<i64> = leases.iter().copied().skip(s).step_by(streams).collect();
        let client = clients[s % clients.len()].clone();
        tasks.push(tokio::spawn(keep_alive(
            client,
            mine,
            interval,
            started + run_for,
        )));
    }
    let mut keepalives = Recorder::new();
    for t in tasks {
        keepalives.merge(&t.await?);
    }
    let elapsed = started.elapsed();
    let lost = check_and_revoke(&args, &clients, &leases, &mut keepalives).await;
    for (kind, n) in &rec.errors {
        *keepalives.errors.entry(kind).or_insert(0) += n;
    }
    let mut summary = Summary::from_recorder(&keepalives, elapsed, serde_json::to_value(&args)?);
    let grants = Summary::from_recorder(
        &grant,
        Duration::from_secs_f64(grant_s),
        serde_json::Value::Null,
    );
    summary.clients = Some(args.leases as u64);
    summary.extra = Some(serde_json::json!({
        "leases_granted": leases.len(),
        "leases_lost": lost,
        "keepalive_streams": streams,
        "keepalive_interval_ms": interval.as_millis() as u64,
        "grant_throughput_ops_s": grants.throughput_ops_s,
        "grant_latency_us": brief(&grants.latency_us),
    }));
    Ok(summary)
}

fn brief(l: &Latency) -> serde_json::Value {
    serde_json::json!({"p50": l.p50, "p99": l.p99, "max": l.max})
}

async fn connect_all(endpoints: &[String], count: usize) -> anyhow::Result<Vec<LeaseClient>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let addr = &endpoints[i % endpoints.len()];
        let ch = channel(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e:?}"))?;
        out.push(LeaseClient::new(ch));
    }
    Ok(out)
}

/// Runs `f(client, i)` for i in 0..n over all clients at once (client `c`
/// takes i = c, c + clients, ...), merging what each recorded.
async fn fan_out<F, Fut>(clients: &[LeaseClient], n: usize, f: F) -> (Vec<i64>, Recorder)
where
    F: Fn(LeaseClient, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Option<i64>, &'static str>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(clients.len());
    for client in clients {
        let (client, next, f) = (client.clone(), next.clone(), f.clone());
        handles.push(tokio::spawn(async move {
            let (mut ids, mut rec) = (Vec::new(), Recorder::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                match f(client.clone(), i).await {
                    Ok(id) => {
                        rec.ok(t.elapsed());
                        ids.extend(id);
                    }
                    Err(kind) => rec.error(kind),
                }
            }
            (ids, rec)
        }));
    }
    let (mut ids, mut rec) = (Vec::with_capacity(n), Recorder::new());
    for h in handles {
        if let Ok((i, r)) = h.await {
            ids.extend(i);
            rec.merge(&r);
        }
    }
    (ids, rec)
}

async fn grant_all(args: &Args, clients: &[LeaseClient]) -> (Vec<i64>, Recorder) {
    let ttl = args.lease_ttl_secs;
    fan_out(clients, args.leases, move |mut c, _| async move {
        match c
            .lease_grant(etcdpb::LeaseGrantRequest { ttl, id: 0 })
            .await
        {
            Ok(r) if r.get_ref().error.is_empty() => Ok(Some(r.get_ref().id)),
            _ => Err("grant_failed"),
        }
    })
    .await
}

/// TimeToLive on every lease (one answering TTL -1 is lost), then revokes
/// them all; returns the leases lost.
async fn check_and_revoke(
    args: &Args,
    clients: &[LeaseClient],
    leases: &[i64],
    rec: &mut Recorder,
) -> u64 {
    let ids = Arc::new(leases.to_vec());
    let list = ids.clone();
    let (lost, check) = fan_out(clients, ids.len(), move |mut c, i| {
        let id = list[i];
        async move {
            match c
                .lease_time_to_live(etcdpb::LeaseTimeToLiveRequest { id, keys: false })
                .await
            {
                Ok(r) if r.get_ref().ttl > 0 => Ok(None),
                Ok(_) => Ok(Some(id)),
                Err(_) => Err("timetolive_failed"),
            }
        }
    })
    .await;
    for (kind, n) in &check.errors {
        *rec.errors.entry(kind).or_insert(0) += n;
    }
    if !lost.is_empty() {
        rec.errors.insert("leases_lost", lost.len() as u64);
    }
    let list = ids.clone();
    let (_, revoke) = fan_out(clients, ids.len(), move |mut c, i| {
        let id = list[i];
        async move {
            c.lease_revoke(etcdpb::LeaseRevokeRequest { id })
                .await
                .map(|_| None)
                .map_err(|_| "revoke_failed")
        }
    })
    .await;
    if !args.quiet && !revoke.errors.is_empty() {
        eprintln!("revoke errors: {:?}", revoke.errors);
    }
    lost.len() as u64
}

/// Keeps `leases` alive over one stream until `until`; records the latency of
/// every response, and as errors any TTL-0 (lost) answer or a broken stream.
async fn keep_alive(
    mut client: LeaseClient,
    leases: Vec<i64>,
    interval: Duration,
    until: Instant,
) -> Recorder {
    let mut rec = Recorder::new();
    let (tx, rx) = mpsc::channel::<etcdpb::LeaseKeepAliveRequest>(KEEPALIVE_QUEUE_BOUND);
    let requests =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    // Sent and not yet answered, by lease: at most one entry per lease.
    let mut pending: HashMap<i64, Instant> = HashMap::with_capacity(leases.len());
    let Some(&first) = leases.first() else {
        return rec;
    };
    // The first request goes before the call: a server may send its
    // response headers only with its first answer.
    pending.insert(first, Instant::now());
    if tx
        .send(etcdpb::LeaseKeepAliveRequest { id: first })
        .await
        .is_err()
    {
        rec.error("keepalive_stream_failed");
        return rec;
    }
    let call = client.lease_keep_alive(requests);
    let mut responses = match tokio::time::timeout_at(until.into(), call).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(_)) | Err(_) => {
            rec.error("keepalive_stream_failed");
            return rec;
        }
    };
    let start = Instant::now();
    let mut k = 1u64;
    loop {
        let due = start + keepalive_due(k, leases.len(), interval);
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => break,
            _ = tokio::time::sleep_until(due.into()) => {
                let id = leases[(k % leases.len().max(1) as u64) as usize];
                k += 1;
                pending.entry(id).or_insert_with(Instant::now);
                let send = tx.send(etcdpb::LeaseKeepAliveRequest { id });
                match tokio::time::timeout_at(until.into(), send).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        rec.error("keepalive_stream_ended");
                        break;
                    }
                    // The run ended while the server was not taking requests.
                    Err(_) => break,
                }
            }
            msg = responses.message() => match msg {
                Ok(Some(resp)) => on_response(&resp, &mut pending, &mut rec),
                Ok(None) => {
                    rec.error("keepalive_stream_ended");
                    break;
                }
                Err(status) => {
                    eprintln!("lease keep-alive stream ended by the server: {status}");
                    rec.error(stream_error_kind(status.code()));
                    break;
                }
            },
        }
    }
    rec
}

/// The error key of a keep-alive stream the server ended with `code`.
fn stream_error_kind(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unavailable => "keepalive_stream_error_unavailable",
        tonic::Code::DeadlineExceeded => "keepalive_stream_error_deadline_exceeded",
        tonic::Code::ResourceExhausted => "keepalive_stream_error_resource_exhausted",
        tonic::Code::NotFound => "keepalive_stream_error_not_found",
        tonic::Code::Cancelled => "keepalive_stream_error_cancelled",
        tonic::Code::Internal => "keepalive_stream_error_internal",
        _ => "keepalive_stream_error_other",
    }
}

/// Records a keep-alive answer: its round trip from the first unanswered
/// send for that lease, and a TTL of 0 (the lease is gone) as an error.
fn on_response(
    resp: &etcdpb::LeaseKeepAliveResponse,
    pending: &mut HashMap<i64, Instant>,
    rec: &mut Recorder,
) {
    if let Some(sent) = pending.remove(&resp.id) {
        rec.ok(sent.elapsed());
    }
    if resp.ttl <= 0 {
        rec.error("keepalive_ttl_zero");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_are_spread_evenly_over_the_interval() {
        let i = Duration::from_secs(3);
        assert_eq!(keepalive_due(0, 3, i), Duration::ZERO);
        assert_eq!(keepalive_due(1, 3, i), Duration::from_secs(1));
        // Round two starts one interval later with the first lease again.
        assert_eq!(keepalive_due(3, 3, i), Duration::from_secs(3));
        assert_eq!(keepalive_due(7, 3, i), Duration::from_secs(7));
        assert_eq!(keepalive_due(5, 0, i), Duration::from_secs(15));
    }

    #[test]
    fn keepalive_interval_is_a_third_of_the_ttl_with_a_floor() {
        assert_eq!(keepalive_interval(30), Duration::from_secs(10));
        assert_eq!(keepalive_interval(10), Duration::from_millis(3333));
        assert_eq!(keepalive_interval(0), Duration::from_millis(333));
    }
}
