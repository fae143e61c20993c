//! Durable storage: write-ahead log, snapshot files and the state machine.
//!
//! - [`wal`]: the segmented, CRC-framed, group-committed write-ahead log.
//! - [`wal_record`]: the WAL's byte layout (segment header, record frames).
//! - [`wal_recovery`]: reading the WAL back, torn-tail versus corruption.
//! - [`wal_fs`]: the file layer under the WAL (real files, or a power-loss simulator).
//! - [`state_machine`]: what Raft entries are applied to: the MVCC store,
//!   the member directory, the applied index.
//! - [`mvcc`]: the MVCC store (revisions, key histories, compaction), pure.
//! - [`mvcc_codec`]: the state machine's command codec (entry payloads).
//! - [`snapshot_codec`]: the store mapped onto the snapshot file's byte
//!   layout (crate `titan-snapfile`), streamed both ways.
//! - [`snapshot`]: the snapshot directory (atomic write, keep two, install).
//! - [`mod@boot`]: startup: snapshot + WAL replay ([`boot()`]).
//! - [`fsutil`]: atomic small-file writes and directory fsync.
//!
//! Invariants the code relies on:
//! 1. [`Wal::append`] returns only after an fsync covering the batch; the
//!    node acknowledges nothing (and answers no vote) before that.
//! 2. Recovery drops bytes only from the tail of the last segment, and only
//!    when no valid record follows them; any other damage stops the node.
//! 3. Every segment starts with the current hard state and snapshot marker,
//!    so compaction (oldest segments first, after the marker is durable)
//!    never loses them.
//! 4. A snapshot file is visible under its final name only after it was
//!    fully written and fsynced; the directory is fsynced after the rename.
//! 5. Storage depends on `raft` only for its plain data types.

pub mod boot;
pub mod check;
pub mod fsutil;
pub mod mvcc;
pub mod mvcc_codec;
pub mod snapshot;
pub mod snapshot_codec;
pub mod state_machine;
pub mod value;
pub mod vlog;
pub mod vlog_merge;
pub mod wal;
pub mod wal_fs;
pub mod wal_record;
pub mod wal_recovery;

pub use boot::{Boot, BootError, BootOptions, boot};
pub use snapshot::{
    SnapshotError, SnapshotFile, SnapshotInstaller, SnapshotOptions, SnapshotStore, StagedSnapshot,
};
pub use snapshot_codec::{SnapshotHeader, SnapshotLimits};
pub use state_machine::{
    ApplyError, ApplyOutcome, Command, Condition, MemberInfo, StateMachine, Versioned, WriteOutcome,
};
pub use wal::{FsyncObserver, Wal, WalError, WalOptions, WalRecovery, WalStats};
