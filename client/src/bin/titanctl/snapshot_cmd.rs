//! `titanctl snapshot`: `take` (the Admin API's on-node snapshot; also what
//! `snapshot` with no sub-command does), `save` (a backup streamed from one
//! member over etcd's Maintenance.Snapshot) and `verify` (offline check of
//! a backup file, decoded by `titan-snapfile`, never the server crate).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use titan_client::TlsConfig;
use titan_client::etcd_proto::SnapshotRequest;
use titan_client::etcd_proto::maintenance_client::MaintenanceClient;
use titan_snapfile::SnapshotLimits;
use titan_snapfile::backup::{
    BackupError, BackupSummary, CHECKSUM_LEN, has_checksum_size, hex, verify_backup,
};

use crate::output::print_json;
use crate::{Exit, Format};

/// `titanctl snapshot [--node ADDR]` or `titanctl snapshot take|save|verify`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SnapshotCmd {
    #[command(subcommand)]
    pub action: Option<SnapshotAction>,
    /// With no sub-command: `take`'s arguments.
    #[command(flatten)]
    pub take: crate::admin_cmd::SnapshotArgs,
}

/// `titanctl snapshot ...`
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotAction {
    /// Take a snapshot now on one node (the same as `snapshot` alone).
    Take(crate::admin_cmd::SnapshotArgs),
    /// Stream a consistent backup of one member's state into FILE (written
    /// as FILE.part, checked, fsynced, then renamed).
    Save(SaveArgs),
    /// Check a backup file offline: SHA-256 trailer, format version, every
    /// record and CRC.
    Verify(VerifyArgs),
}

/// `titanctl snapshot save`
#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Where to write the backup.
    file: PathBuf,
    /// Client gRPC address of the member to back up (default: the first of
    /// --endpoints). A backup is one member's applied state, as with etcd.
    #[arg(long)]
    endpoint: Option<String>,
}

/// `titanctl snapshot verify`
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The backup file.
    file: PathBuf,
}

/// Why a save or verify failed, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
enum SnapError {
    #[error("cannot reach {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("{endpoint} refused the snapshot: {status}")]
    Server { endpoint: String, status: String },
    #[error("stream from {0} broke off: {1}")]
    Stream(String, String),
    #[error("{}: {}", .0.display(), .1)]
    File(PathBuf, std::io::Error),
    #[error("{}: {}", .0.display(), .1)]
    Bad(PathBuf, BackupError),
}

impl SnapError {
    fn exit(&self) -> Exit {
        match self {
            SnapError::Unreachable { .. } => Exit::Unreachable,
            _ => Exit::Failed,
        }
    }
}

fn report(err: &SnapError, fmt: Format) -> Exit {
    match fmt {
        Format::Json => print_json(&json!({ "error": err.to_string(), "kind": "snapshot" })),
        Format::Table => eprintln!("titanctl: {err}"),
    }
    err.exit()
}

fn print_summary(verb: &str, file: &Path, s: &BackupSummary, fmt: Format) {
    match fmt {
        Format::Json => print_json(&json!({
            "file": file.display().to_string(), "size_bytes": s.file_bytes,
            "revision": s.revision, "compact_revision": s.compact_revision,
            "index": s.header.index, "term": s.header.term,
            "format_version": s.header.version, "keys": s.keys, "live_keys": s.live_keys,
            "records": s.records, "leases": s.leases, "sha256": s.sha256,
            "trailer_sha256": s.trailer_sha256,
        })),
        Format::Table => println!(
            "{verb} {}: {} bytes, revision {} (index {}, term {}), {} live keys, {} records, {} leases, format {}, sha256 {}",
            file.display(),
            s.file_bytes,
            s.revision,
            s.header.index,
            s.header.term,
            s.live_keys,
            s.records,
            s.leases,
            s.header.version,
            s.sha256
        ),
    }
}

/// `titanctl snapshot verify FILE`
pub fn verify(args: &VerifyArgs, fmt: Format) -> Exit {
    match verify_file(&args.file) {
        Ok(s) => {
            print_summary("verified", &args.file, &s, fmt);
            Exit::Ok
        }
        Err(e) => report(&e, fmt),
    }
}

fn verify_file(path: &Path) -> Result<BackupSummary, SnapError> {
    let mut f = File::open(path).map_err(|e| SnapError::File(path.into(), e))?;
    verify_backup(&mut f, &SnapshotLimits::default()).map_err(|e| SnapError::Bad(path.into(), e))
}

/// `titanctl snapshot save FILE`
pub async fn save(
    args: &SaveArgs,
    endpoints: &[String],
    tls: Option<&TlsConfig>,
    (timeout, idle): (Duration, Duration),
    fmt: Format,
) -> Exit {
    let Some(endpoint) = args.endpoint.clone().or_else(|| endpoints.first().cloned()) else {
        let e = SnapError::Unreachable {
            endpoint: String::new(),
            detail: "no endpoint given".into(),
        };
        return report(&e, fmt);
    };
    let part = part_path(&args.file);
    let result = save_to(&endpoint, tls, &part, &args.file, (timeout, idle)).await;
    match result {
        Ok(s) => {
            print_summary("saved", &args.file, &s, fmt);
            Exit::Ok
        }
        Err(e) => {
            let _ = fs::remove_file(&part);
            report(&e, fmt)
        }
    }
}

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

async fn save_to(
    endpoint: &str,
    tls: Option<&TlsConfig>,
    part: &Path,
    file: &Path,
    (timeout, idle): (Duration, Duration),
) -> Result<BackupSummary, SnapError> {
    use std::os::unix::fs::OpenOptionsExt;
    // A backup holds every value: readable by its owner only, as etcdctl's.
    let mut out = OpenOptions::new()
        .mode(0o600)
        .write(true)
        .create(true)
        .truncate(true)
        .open(part)
        .map_err(|e| SnapError::File(part.into(), e))?;
    receive(endpoint, tls, &mut out, part, (timeout, idle)).await?;
    out.sync_all()
        .map_err(|e| SnapError::File(part.into(), e))?;
    drop(out);
    let summary = verify_file(part)?;
    fs::rename(part, file).map_err(|e| SnapError::File(file.into(), e))?;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapError::File(dir.into(), e))?;
    Ok(summary)
}

/// Streams the member's snapshot into `out`, hashing all but the last 32
/// bytes and checking them against it as it goes.
async fn receive(
    endpoint: &str,
    tls: Option<&TlsConfig>,
    out: &mut File,
    part: &Path,
    (timeout, idle): (Duration, Duration),
) -> Result<(), SnapError> {
    let unreachable = |detail: String| SnapError::Unreachable {
        endpoint: endpoint.into(),
        detail,
    };
    let channel = titan_client::grpc_endpoint(endpoint, tls)
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(timeout)
        .connect()
        .await
        .map_err(|e| unreachable(titan_client::error_chain(&e)))?;
    let mut client = MaintenanceClient::new(channel).max_decoding_message_size(64 << 20);
    let server = |status: tonic::Status| SnapError::Server {
        endpoint: endpoint.into(),
        status: format!("{:?}: {}", status.code(), status.message()),
    };
    let mut stream = client
        .snapshot(SnapshotRequest {})
        .await
        .map_err(server)?
        .into_inner();
    let mut tail = TailHasher::default();
    let mut remaining = None;
    loop {
        let next = tokio::time::timeout(idle, stream.message()).await;
        let msg = next
            .map_err(|_| SnapError::Stream(endpoint.into(), format!("no data for {idle:?}")))?
            .map_err(server)?;
        let Some(msg) = msg else { break };
        out.write_all(&msg.blob)
            .map_err(|e| SnapError::File(part.into(), e))?;
        tail.update(&msg.blob);
        remaining = Some(msg.remaining_bytes);
    }
    tail.check(remaining)
        .map_err(|e| SnapError::Bad(part.into(), e))
}

/// SHA-256 of every byte but the last 32, which it keeps aside.
#[derive(Default)]
struct TailHasher {
    hasher: Sha256,
    tail: Vec<u8>,
    total: u64,
}

impl TailHasher {
    fn update(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        self.tail.extend_from_slice(data);
        if self.tail.len() > CHECKSUM_LEN {
            let cut = self.tail.len() - CHECKSUM_LEN;
            self.hasher.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
    }

    /// Whether the stream ended where the server said and its last 32
    /// bytes are the SHA-256 of the rest.
    fn check(self, remaining: Option<u64>) -> Result<(), BackupError> {
        if remaining.unwrap_or(0) != 0 || !has_checksum_size(self.total) {
            return Err(BackupError::NoChecksum(self.total));
        }
        let actual: [u8; CHECKSUM_LEN] = self.hasher.finalize().into();
        if actual[..] != self.tail[..] {
            return Err(BackupError::ChecksumMismatch {
                expected: hex(&self.tail),
                actual: hex(&actual),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_hasher_checks_the_last_32_bytes_however_the_stream_is_cut() {
        let content = vec![7u8; 1024];
        let digest: [u8; 32] = Sha256::digest(&content).into();
        let whole = [content.clone(), digest.to_vec()].concat();
        for cut in [1, 31, 32, 33, 100, 511] {
            let mut h = TailHasher::default();
            for piece in whole.chunks(cut) {
                h.update(piece);
            }
            h.check(Some(0)).expect("good stream");
        }
        let mut bad = TailHasher::default();
        bad.update(&whole[..whole.len() - 1]);
        bad.update(&[0]);
        assert!(matches!(
            bad.check(Some(0)),
            Err(BackupError::ChecksumMismatch { .. })
        ));
        let mut short = TailHasher::default();
        short.update(&whole);
        assert!(matches!(
            short.check(Some(5)),
            Err(BackupError::NoChecksum(_))
        ));
    }
}
