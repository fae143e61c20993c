//! Prometheus metrics (prometheus-client), served as text on `/metrics`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Client operations with their own latency histogram.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Op {
    /// TCP or gRPC read of one key.
    Get,
    /// TCP SET / gRPC Put.
    Set,
    /// Delete of one key.
    Delete,
    /// TCP PING.
    Ping,
    /// gRPC Range.
    Range,
}

/// Labels of the request histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// Which operation.
    pub op: Op,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Labels of per-follower gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The follower's member id.
    pub peer: u64,
}

/// A stage of the write path (see [`Metrics::write_stages`]).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // The label values Prometheus shows.
pub enum Stage {
    /// The runtime took the write and proposed or forwarded it.
    queued,
    /// The leader's own WAL fsync covering its entry finished.
    durable,
    /// Its entry was handed out as committed.
    committed,
    /// Applied here and answered.
    applied,
}

/// Where a write was proposed (see [`Metrics::write_stages`]).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // The label values Prometheus shows.
pub enum WritePath {
    /// On this node, the leader.
    local,
    /// This follower sent it to the leader inside Raft.
    forwarded,
}

/// Labels of [`Metrics::write_stages`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// The stage reached.
    pub stage: Stage,
    /// Where the write was proposed.
    pub path: WritePath,
}

/// The write-stage histograms, created once so that recording one on the
/// apply path is a plain observe (no label hashing or family lock).
struct StageHandles([[Histogram; 4]; 2]);

impl StageHandles {
    fn new(family: &Family<StageLabels, Histogram>) -> Self {
        let path = |path| {
            [
                Stage::queued,
                Stage::durable,
                Stage::committed,
                Stage::applied,
            ]
            .map(|stage| family.get_or_create(&StageLabels { stage, path }).clone())
        };
        StageHandles([path(WritePath::local), path(WritePath::forwarded)])
    }
}

/// 10 µs .. ~4 s in steps of 1.5x: fine enough to read sub-millisecond
/// medians off the buckets.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 1.5, 33))
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every metric the server exports, plus the registry that renders them.
pub struct Metrics {
    /// Owns the metric descriptions for encoding.
    registry: Registry,
    /// Client request latency by operation and outcome.
    pub requests: Family<OpLabels, Histogram>,
    /// The write path, stage by stage, on the node a client write entered:
    /// time from the client handle queueing the write for the runtime to
    /// `queued` (the runtime took it and proposed or forwarded it),
    /// `durable` (the leader's own WAL fsync covering its entry finished;
    /// local writes only), `committed` (its entry was handed out as
    /// committed, i.e. a quorum holds it) and `applied` (applied here and
    /// answered). The API layer's own time is the rest of
    /// `request_duration_seconds`.
    pub write_stages: Family<StageLabels, Histogram>,
    /// [`Self::write_stages`]' series, by path and stage.
    stage_handles: StageHandles,
    /// Latency of each WAL append+fsync (one per Ready batch).
    pub wal_fsync_seconds: Histogram,
    /// Bytes of entries appended to the WAL.
    pub wal_bytes: Counter,
    /// WAL segment files currently on disk.
    pub wal_segments: Gauge,
    /// Current Raft term.
    pub term: Gauge,
    /// Highest committed log index known here.
    pub commit_index: Gauge,
    /// Highest log index applied to the state machine.
    pub applied_index: Gauge,
    /// 1 when this node is the leader.
    pub is_leader: Gauge,
    /// Times the known leader changed.
    pub leader_changes: Counter,
    /// Entries each follower is behind the leader's last index (leader only).
    pub follower_lag: Family<PeerLabels, Gauge>,
    /// Snapshots written by this node.
    pub snapshots: Counter,
    /// Time to write one snapshot.
    pub snapshot_seconds: Histogram,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: Counter,
    /// Bytes in value-log data files (live and dead).
    pub value_log_bytes: Gauge,
    /// Value-log data files open.
    pub value_log_files: Gauge,
    /// Value-log appends that failed (the value stayed in memory).
    pub value_log_append_failures: Gauge,
    /// Value-log merges that retired at least one file.
    pub value_log_merges: Counter,
    /// Dead bytes value-log merges gave back.
    pub value_log_reclaimed_bytes: Counter,
    /// Raft messages dropped because a peer's send queue was full.
    pub peer_messages_dropped: Counter<u64, AtomicU64>,
    /// 1 once a fatal storage error stopped the node (it exits right after).
    pub storage_fatal: Gauge,
    /// Outbound peer streams open (members plus a bounded few unknown senders).
    pub peer_links: Gauge,
    /// Client requests refused because a memory or concurrency bound was hit.
    pub requests_refused: Family<RefusedLabels, Counter>,
    /// Polls that found changed TLS files, by port and whether the new set
    /// was put in use (`ok`) or refused (`failed`, the old one kept).
    pub tls_reloads: Family<TlsReloadLabels, Counter>,
    /// 1 while a port's TLS files hold a changed set that cannot be used
    /// (the previous certificate is still served); 0 otherwise.
    pub tls_reload_failing: Family<TlsPortLabels, Gauge>,
}

/// Labels of [`Metrics::tls_reloads`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsReloadLabels {
    /// `client` or `peer`.
    pub port: &'static str,
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

/// Labels of [`Metrics::tls_reload_failing`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsPortLabels {
    /// `client` or `peer`.
    pub port: &'static str,
}

/// Labels of [`Metrics::requests_refused`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// Which bound: `grpc_concurrency` or `tcp_memory`.
    pub bound: &'static str,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("titan");
        let requests = Family::<OpLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Client request latency",
            requests.clone(),
        );
        let write_stages = Family::<StageLabels, Histogram>::new_with_constructor(
            stage_histogram as fn() -> Histogram,
        );
        registry.register(
            "write_stage_seconds",
            "Time from a client write entering the runtime's queue to each stage: \
             queued, durable (leader fsync), committed, applied",
            write_stages.clone(),
        );
        let m = Metrics {
            requests,
            stage_handles: StageHandles::new(&write_stages),
            write_stages,
            wal_fsync_seconds: latency_histogram(),
            wal_bytes: Counter::default(),
            wal_segments: Gauge::default(),
            term: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            follower_lag: Family::default(),
            snapshots: Counter::default(),
            snapshot_seconds: latency_histogram(),
            snapshots_installed: Counter::default(),
            value_log_bytes: Gauge::default(),
            value_log_files: Gauge::default(),
            value_log_append_failures: Gauge::default(),
            value_log_merges: Counter::default(),
            value_log_reclaimed_bytes: Counter::default(),
            peer_messages_dropped: Counter::default(),
            storage_fatal: Gauge::default(),
            peer_links: Gauge::default(),
            requests_refused: Family::default(),
            tls_reloads: Family::default(),
            tls_reload_failing: Family::default(),
            registry,
        };
        m.register_rest()
    }

    fn register_rest(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "wal_fsync_duration_seconds",
            "WAL append+fsync latency per batch",
            self.wal_fsync_seconds.clone(),
        );
        r.register(
            "wal_written_bytes",
            "Entry bytes appended to the WAL",
            self.wal_bytes.clone(),
        );
        r.register(
            "wal_segments",
            "WAL segment files on disk",
            self.wal_segments.clone(),
        );
        r.register("raft_term", "Current Raft term", self.term.clone());
        r.register(
            "raft_commit_index",
            "Committed log index",
            self.commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Applied log index",
            self.applied_index.clone(),
        );
        r.register(
            "raft_is_leader",
            "1 if this node leads",
            self.is_leader.clone(),
        );
        r.register(
            "raft_leader_changes",
            "Leader changes observed",
            self.leader_changes.clone(),
        );
        r.register(
            "raft_follower_lag_entries",
            "Follower lag behind the leader",
            self.follower_lag.clone(),
        );
        self.register_snapshot_and_peer()
    }

    fn register_snapshot_and_peer(mut self) -> Self {
        let r = &mut self.registry;
        r.register("snapshots", "Snapshots written", self.snapshots.clone());
        r.register(
            "snapshot_duration_seconds",
            "Snapshot write time",
            self.snapshot_seconds.clone(),
        );
        r.register(
            "snapshots_installed",
            "Snapshots installed from a leader",
            self.snapshots_installed.clone(),
        );
        r.register(
            "value_log_bytes",
            "Bytes in value-log data files, live and dead",
            self.value_log_bytes.clone(),
        );
        r.register(
            "value_log_files",
            "Value-log data files open",
            self.value_log_files.clone(),
        );
        r.register(
            "value_log_append_failures",
            "Value-log appends that failed (the value stayed in memory)",
            self.value_log_append_failures.clone(),
        );
        r.register(
            "value_log_merges",
            "Value-log merges that retired files",
            self.value_log_merges.clone(),
        );
        r.register(
            "value_log_reclaimed_bytes",
            "Dead bytes given back by value-log merges",
            self.value_log_reclaimed_bytes.clone(),
        );
        r.register(
            "peer_messages_dropped",
            "Raft messages dropped on full peer queues",
            self.peer_messages_dropped.clone(),
        );
        r.register(
            "storage_fatal",
            "1 once a fatal storage error stopped the node; the log names the file",
            self.storage_fatal.clone(),
        );
        r.register(
            "peer_links",
            "Outbound peer streams open",
            self.peer_links.clone(),
        );
        r.register(
            "requests_refused",
            "Client requests refused at the edge by a named bound",
            self.requests_refused.clone(),
        );
        r.register(
            "tls_reloads",
            "Polls that found changed TLS files, by port and outcome (failed: old certificate kept)",
            self.tls_reloads.clone(),
        );
        r.register(
            "tls_reload_failing",
            "1 while a port's changed TLS files are unusable and the previous certificate is served",
            self.tls_reload_failing.clone(),
        );
        self
    }

    /// Records that a write received at `received` reached `stage`.
    pub fn observe_stage(&self, stage: Stage, path: WritePath, received: tokio::time::Instant) {
        self.stage_handles.0[path as usize][stage as usize]
            .observe(received.elapsed().as_secs_f64());
    }

    /// Counts one request refused by `bound`.
    pub fn refused(&self, bound: &'static str) {
        self.requests_refused
            .get_or_create(&RefusedLabels { bound })
            .inc();
    }

    /// Records one client request.
    pub fn observe_request(&self, op: Op, elapsed: Duration, failed: bool) {
        let outcome = if failed { "error" } else { "ok" };
        self.requests
            .get_or_create(&OpLabels { op, outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// Renders the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Gauges take i64; Raft indexes are u64 and far below i64::MAX in practice.
pub fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
