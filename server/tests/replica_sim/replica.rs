//! One simulated replica: the real node (`build_with_env`, the real
//! `Runtime`, WAL and snapshot code) over an in-memory WAL file system
//! (`SimFs`), a real temp dir for the identity file and snapshots, inline
//! blocking work, and the simulated network. A crash aborts the runtime
//! task and keeps only what a power loss would leave of the WAL.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use titan_raft::rng::SplitMix64;
use titan_server::config::{Config, PeerSpec};
use titan_server::metrics::Metrics;
use titan_server::node::outbound::{PeerView, StatusProbe};
use titan_server::node::{
    Blocking, InlineSchedule, Member, NodeEnv, NodeHandle, NodeNet, ValueLogTuning, build_with_env,
};
use titan_server::raft::NodeId;
use titan_server::storage::wal_fs::{SimFault, SimFs};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::net::SimNet;

/// Ticks between elections (and the tick length) every replica runs with.
pub const TICK: Duration = Duration::from_millis(10);
/// Election timeout in ticks (the core randomises up to twice this).
pub const ELECTION_TICKS: u32 = 10;

/// Longest simulated latency of a deferred WAL append or snapshot write.
pub const MAX_FSYNC_MS: u64 = 3;
/// Small segments, so rotation, compaction and closed segments occur.
pub const WAL_SEGMENT_BYTES: u64 = 32 << 10;
/// Entries between snapshots (each compacts the log behind it).
pub const SNAPSHOT_THRESHOLD_ENTRIES: u64 = 100;
/// Entries kept behind a snapshot: a follower down for a few hundred
/// milliseconds of writes needs a snapshot to catch up.
pub const LOG_MARGIN_ENTRIES: u64 = 20;
/// Time a stopping node gets to hand leadership over and finish its
/// writes (`--shutdown-grace-ms`).
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// How much longer than its grace a stop may take before it counts as hung.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(2);

/// A pre-bootstrap probe that never gets an answer (every peer is new).
struct SilentProbe;

impl StatusProbe for SilentProbe {
    fn probe(&self, _addr: String, _timeout: Duration) -> BoxFuture<'static, Option<PeerView>> {
        Box::pin(async { None })
    }
}

/// A replica's durable state and, while it runs, its node.
pub struct Replica {
    /// Node name (`n1`, ...).
    pub name: String,
    /// Raft id (derived from the name for initial members).
    pub id: NodeId,
    /// Identity file and snapshots.
    dir: tempfile::TempDir,
    /// The WAL's disk.
    pub fs: SimFs,
    /// The names of the other initial members.
    peers: Vec<String>,
    /// The running node's front door.
    pub handle: Option<NodeHandle>,
    /// The running node's runtime task.
    task: Option<JoinHandle<()>>,
    /// The runtime's shutdown signal (flipped by a graceful `stop`).
    shutdown: Option<watch::Sender<bool>>,
    /// Starts so far (each gets its own seeded environment).
    starts: u64,
    /// Wiped and started again as a new member that waits to be added.
    join: bool,
    /// A disk fault was armed since the last crash.
    fault_armed: bool,
}

/// Copies the regular files under `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn peer_spec(name: &str) -> PeerSpec {
    PeerSpec {
        name: name.to_string(),
        host: name.to_string(),
        raft_port: 1,
        client_port: 2,
    }
}

/// Where a seed puts values: all in memory, all in the value log, or the
/// log above a small threshold (so both placements mix in one store).
fn value_log_threshold(seed: u64) -> Option<u64> {
    [None, Some(0), Some(4)][(seed % 3) as usize]
}

fn config(
    name: &str,
    peers: &[String],
    join: bool,
    data_dir: &Path,
    value_log_threshold: Option<u64>,
) -> Config {
    Config {
        name: name.to_string(),
        listen_addr: "sim".into(),
        client_listen_addr: "sim".into(),
        peer_port: 1,
        client_port: 2,
        grpc_port: 3,
        http_port: 4,
        advertise_peer_addr: format!("{name}:1"),
        advertise_client_addr: format!("{name}:2"),
        advertise_grpc_addr: format!("{name}:3"),
        peers: peers.iter().map(|p| peer_spec(p)).collect(),
        join,
        data_dir: data_dir.to_path_buf(),
        restore_from: None,
        snapshot_threshold_entries: SNAPSHOT_THRESHOLD_ENTRIES,
        // Entry count alone: the simulator wants many snapshots.
        snapshot_log_percent: 0,
        value_log_threshold,
        value_log_merge_ratio: 0.3,
        value_log_merge_rate: 0,
        max_snapshot_bytes: 1 << 30,
        tick: TICK,
        election_ticks: ELECTION_TICKS,
        heartbeat_ticks: 1,
        max_line_bytes: 1 << 20,
        max_connections: 16,
        shutdown_grace: SHUTDOWN_GRACE,
        client_tls: None,
        peer_tls: None,
        tls_reload_interval: Duration::from_secs(60),
        admin_allowed_cn: Vec::new(),
    }
}

impl Replica {
    /// A replica that has never run, one of the initial members `names`.
    pub fn new(name: &str, names: &[String]) -> Self {
        let peers = names.iter().filter(|n| *n != name).cloned().collect();
        Replica {
            name: name.to_string(),
            id: titan_server::node::identity::bootstrap_id(name),
            dir: tempfile::tempdir().expect("tempdir"),
            fs: SimFs::new(),
            peers,
            handle: None,
            task: None,
            shutdown: None,
            starts: 0,
            join: false,
            fault_armed: false,
        }
    }

    /// The WAL directory inside the simulated disk.
    pub fn wal_dir(&self) -> PathBuf {
        self.dir.path().join("wal")
    }

    /// Whether the node runs.
    pub fn is_up(&self) -> bool {
        self.handle.is_some()
    }

    /// Builds and starts the node from what the disk holds.
    pub async fn start(&mut self, seed: u64, net: &SimNet) -> Result<(), String> {
        self.starts += 1;
        let mut rng = SplitMix64::new(seed ^ self.id ^ self.starts.wrapping_mul(0x9E37));
        let env = NodeEnv {
            blocking: Blocking::Inline(InlineSchedule::new(rng.next_u64(), MAX_FSYNC_MS)),
            wal_fs: Some(Arc::new(self.fs.clone())),
            wal_segment_bytes: Some(WAL_SEGMENT_BYTES),
            log_margin_entries: Some(LOG_MARGIN_ENTRIES),
            seed: Some(rng.next_u64()),
            // Files of a few dozen records and a merge check every second,
            // so files close, die and get merged during a run.
            value_log: Some(ValueLogTuning {
                file_bytes: 1024,
                merge_min_bytes: 2048,
                merge_check_interval: Duration::from_secs(1),
            }),
        };
        let peers = if self.join { &[][..] } else { &self.peers[..] };
        let threshold = value_log_threshold(seed);
        let cfg = config(&self.name, peers, self.join, self.dir.path(), threshold);
        let (tx, rx) = watch::channel(false);
        // A joining member's id is chosen inside the build (from the seed).
        let id = std::cell::Cell::new(self.id);
        let outbound = |ctx: titan_server::node::OutboundContext| {
            id.set(ctx.self_member.id);
            net.outbound(ctx)
        };
        let nn = NodeNet {
            probe: &SilentProbe,
            outbound,
        };
        let built = build_with_env(cfg, env, Arc::new(Metrics::new()), nn, rx)
            .await
            .map_err(|e| format!("{} refused to boot: {e}", self.name))?;
        self.id = id.get();
        net.register(self.id, built.inbox.clone(), built.snapshots.clone());
        self.handle = Some(built.handle.clone());
        self.task = Some(built.spawn());
        self.shutdown = Some(tx);
        Ok(())
    }

    /// Power loss: the runtime task is gone at once; the WAL keeps only what
    /// was fsynced, plus `torn` garbage at the end of its newest segment.
    pub fn crash(&mut self, net: &SimNet, torn: Vec<u8>) {
        net.unregister(self.id);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.handle = None;
        self.shutdown = None;
        self.fault_armed = false;
        let newest = self.newest_segment();
        let mut torn = Some(torn);
        let image = self.fs.crash_image(|p| {
            if Some(p) == newest.as_deref() {
                torn.take().unwrap_or_default()
            } else {
                Vec::new()
            }
        });
        self.move_to_fresh_dir(&image);
    }

    /// SIGTERM: the runtime hands leadership over and finishes what it can
    /// within [`SHUTDOWN_GRACE`], then returns. The process exits cleanly,
    /// so the disk keeps everything written, synced or not (the page cache
    /// outlives the process). A stop that does not finish in time, or a
    /// runtime that fails, is an error.
    pub async fn stop(&mut self, net: &SimNet) -> Result<(), String> {
        if let Some(tx) = self.shutdown.as_ref() {
            let _ = tx.send(true);
        }
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        let done = tokio::time::timeout(SHUTDOWN_GRACE + SHUTDOWN_SLACK, &mut task).await;
        net.unregister(self.id);
        self.handle = None;
        self.shutdown = None;
        self.fault_armed = false;
        match done {
            Err(_) => {
                task.abort();
                return Err(format!(
                    "{} did not stop within {:?} of SIGTERM",
                    self.name,
                    SHUTDOWN_GRACE + SHUTDOWN_SLACK
                ));
            }
            Ok(Err(e)) => {
                return Err(format!(
                    "{}'s runtime failed while stopping: {e}",
                    self.name
                ));
            }
            Ok(Ok(())) => {}
        }
        let image = self.fs.clone();
        self.move_to_fresh_dir(&image);
        Ok(())
    }

    /// Moves the durable state to a fresh directory, the disk the restarted
    /// process finds: the real files (identity, snapshots, staged transfers)
    /// are copied and the WAL image is re-keyed under the new path. A task
    /// the crashed node left behind (a deferred snapshot write, a transfer
    /// in flight) can only touch the old directory, which is deleted.
    fn move_to_fresh_dir(&mut self, image: &SimFs) {
        use titan_server::storage::wal_fs::WalFs;
        let fresh = tempfile::tempdir().expect("tempdir");
        copy_tree(self.dir.path(), fresh.path());
        let (old_wal, new_wal) = (self.wal_dir(), fresh.path().join("wal"));
        let fs = SimFs::new();
        for name in image.list(&old_wal).unwrap_or_default() {
            if let Some(data) = image.read_all(&old_wal.join(&name)) {
                fs.write_all(&new_wal.join(&name), data);
            }
        }
        self.dir = fresh;
        self.fs = fs;
    }

    /// This replica as a member to add (the addresses are names the
    /// simulated network routes by).
    pub fn as_member(&self) -> Member {
        Member {
            id: self.id,
            name: self.name.clone(),
            peer_addr: format!("{}:1", self.name),
            client_addr: format!("{}:2", self.name),
            grpc_addr: format!("{}:3", self.name),
        }
    }

    /// What an operator does with a member whose disk is damaged: delete
    /// its data (the replica must be down) so it can start again as a new
    /// member with a new id, waiting to be added.
    pub fn wipe(&mut self) {
        assert!(!self.is_up(), "wipe a running replica");
        self.dir = tempfile::tempdir().expect("tempdir");
        self.fs = SimFs::new();
        self.join = true;
    }

    /// Flips one byte in the middle of a closed (not the newest) WAL
    /// segment; false when there is none.
    pub fn corrupt_closed_segment(&mut self) -> bool {
        use titan_server::storage::wal_fs::WalFs;
        let dir = self.wal_dir();
        let mut names = self.fs.list(&dir).unwrap_or_default();
        names.retain(|n| n.ends_with(".wal"));
        names.sort();
        let Some(closed) = names.len().checked_sub(2).map(|i| dir.join(&names[i])) else {
            return false;
        };
        let Some(mut data) = self.fs.read_all(&closed) else {
            return false;
        };
        let at = data.len() / 2;
        data[at] ^= 0x5a;
        self.fs.write_all(&closed, data);
        true
    }

    /// Arms a one-shot disk fault (the node may stop when it fires).
    pub fn inject(&mut self, fault: SimFault) {
        self.fs.set_fault(Some(fault));
        self.fault_armed = true;
    }

    /// A node whose runtime stopped by itself is treated like a crashed
    /// process (down until restarted), provided a disk fault was armed: a
    /// stop without one, or a panic, is a bug.
    pub fn reap(&mut self, net: &SimNet) -> Result<bool, String> {
        use futures::FutureExt;
        if !self.task.as_ref().is_some_and(|t| t.is_finished()) {
            return Ok(false);
        }
        if let Some(Err(e)) = self.task.take().and_then(|t| t.now_or_never()) {
            return Err(format!("{}'s runtime failed: {e}", self.name));
        }
        if !self.fault_armed {
            return Err(format!(
                "{}'s runtime stopped without a disk fault",
                self.name
            ));
        }
        self.crash(net, Vec::new());
        Ok(true)
    }

    fn newest_segment(&self) -> Option<PathBuf> {
        use titan_server::storage::wal_fs::WalFs;
        let dir = self.wal_dir();
        let mut names = self.fs.list(&dir).ok()?;
        names.retain(|n| n.ends_with(".wal"));
        names.sort();
        names.last().map(|n| dir.join(n))
    }
}
