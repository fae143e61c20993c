//! Durable storage: write-ahead log, snapshot files and the state machine.
//!
//! - [`wal`]: the segmented, CRC-framed, group-committed write-ahead log.
//! - [`wal_record`]: the WAL's byte layout (segment header, record frames).
//! - [`wal_recovery`]: reading the WAL back, torn-tail versus corruption.
//! - [`wal_fs`]: the file layer under the WAL (real files, or a power-loss simulator).
//! - [`state_machine`]: the ordered key-value map Raft entries are applied to.
//! - [`snapshot_codec`]: the snapshot file's byte layout, streamed both ways.
//! - [`snapshot`]: the snapshot directory (atomic write, keep two, install).
//! - [`boot`]: startup: snapshot + WAL replay.
//! - [`fsutil`]: atomic small-file writes and directory fsync.

pub mod boot;
pub mod fsutil;
pub mod snapshot;
pub mod snapshot_codec;
pub mod state_machine;
pub mod wal;
pub mod wal_fs;
pub mod wal_record;
pub mod wal_recovery;

pub use boot::{Boot, BootError, BootOptions, boot};
pub use snapshot::{
    SnapshotError, SnapshotFile, SnapshotInstaller, SnapshotOptions, SnapshotStore,
};
pub use snapshot_codec::{SnapshotHeader, SnapshotLimits};
pub use state_machine::{
    ApplyError, ApplyOutcome, Command, Condition, MemberInfo, StateMachine, Versioned, WriteOutcome,
};
pub use wal::{FsyncObserver, Wal, WalError, WalOptions, WalRecovery, WalStats};
