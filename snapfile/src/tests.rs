//! Format and backup-verify tests: one table of damaged files, each with
//! the error it must produce.

use std::collections::BTreeSet;
use std::io::{Cursor, Write};

use crate::backup::{BackupError, Sha256Writer, has_checksum_size, verify_backup};
use crate::{
    BodyItem, CrcWriter, FileHeader, RecordRef, SNAPSHOT_VERSION, SNAPSHOT_VERSION_NO_LEASES,
    SnapshotDecodeError, SnapshotLimits, decode_stream, encode_header_as, expect_end,
    write_history, write_leases, write_revisions,
};

fn live(rev: i64, value: &[u8]) -> RecordRef<'_> {
    RecordRef {
        mod_revision: rev,
        value: Some(value),
        create_revision: 2,
        version: 1,
        lease: 0,
    }
}

fn tombstone(rev: i64) -> RecordRef<'static> {
    RecordRef {
        mod_revision: rev,
        value: None,
        create_revision: 0,
        version: 0,
        lease: 0,
    }
}

/// A snapshot file stamped `version`: two keys (one deleted) at revision
/// 5, and one lease from version 3 on.
fn snapshot(version: u32) -> Vec<u8> {
    let header = FileHeader {
        version,
        index: 7,
        term: 2,
        key_count: 2,
        voters: BTreeSet::from([1, 2, 3]),
        learners: BTreeSet::new(),
        members: vec![(1, b"member-info".to_vec())],
    };
    let mut out = encode_header_as(&header, version);
    let mut body = CrcWriter::new(&mut out);
    write_revisions(&mut body, 5, 0).expect("write");
    write_history(&mut body, b"a", 2, [live(2, b"1"), live(4, b"2")]).expect("write");
    write_history(&mut body, b"b", 2, [live(3, b"x"), tombstone(5)]).expect("write");
    if version >= SNAPSHOT_VERSION {
        write_leases(&mut body, &[(9, 60)]).expect("write");
    }
    body.finish().expect("write");
    out
}

/// `content` wrapped as a backup: padding and SHA-256.
fn seal(content: &[u8]) -> Vec<u8> {
    let mut w = Sha256Writer::new(Vec::new());
    w.write_all(content).expect("write");
    let (mut out, digest) = w.finish().expect("finish");
    out.extend_from_slice(&digest);
    out
}

fn flip(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
    bytes[at] ^= 0x40;
    bytes
}

#[derive(Debug, PartialEq, Eq)]
enum Want {
    Ok { leases: u64 },
    NoChecksum,
    ChecksumMismatch,
    Snapshot(&'static str),
    Padding,
}

fn classify(result: Result<crate::backup::BackupSummary, BackupError>) -> Want {
    match result {
        Ok(s) => Want::Ok { leases: s.leases },
        Err(BackupError::NoChecksum(_)) => Want::NoChecksum,
        Err(BackupError::ChecksumMismatch { .. }) => Want::ChecksumMismatch,
        Err(BackupError::Padding(_)) => Want::Padding,
        Err(BackupError::Snapshot(e)) => Want::Snapshot(match e {
            SnapshotDecodeError::UnsupportedVersion(_) => "version",
            SnapshotDecodeError::Checksum(what) => what,
            SnapshotDecodeError::BadMagic => "magic",
            SnapshotDecodeError::Truncated => "truncated",
            _ => "other",
        }),
        Err(BackupError::Io(e)) => panic!("unexpected I/O error {e}"),
    }
}

#[test]
fn verify_accepts_good_backups_and_names_each_kind_of_damage() {
    let good = seal(&snapshot(SNAPSHOT_VERSION));
    let body_at = snapshot(SNAPSHOT_VERSION).len() - 20;
    let mut bad_padding = snapshot(SNAPSHOT_VERSION);
    bad_padding.extend(std::iter::repeat_n(0, 4));
    bad_padding.push(1);
    let last = good.len() - 1;
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        ("good", good.clone(), Want::Ok { leases: 1 }),
        (
            "version 2 (no leases)",
            seal(&snapshot(SNAPSHOT_VERSION_NO_LEASES)),
            Want::Ok { leases: 0 },
        ),
        ("empty file", Vec::new(), Want::NoChecksum),
        (
            "truncated",
            good[..good.len() - 100].to_vec(),
            Want::NoChecksum,
        ),
        (
            "truncated by 512 bytes",
            good[512..].to_vec(),
            Want::ChecksumMismatch,
        ),
        (
            "flipped content byte",
            flip(good.clone(), 30),
            Want::ChecksumMismatch,
        ),
        (
            "wrong checksum",
            flip(good.clone(), last),
            Want::ChecksumMismatch,
        ),
        (
            "newer format version, resealed",
            seal(&snapshot(SNAPSHOT_VERSION + 1)),
            Want::Snapshot("version"),
        ),
        (
            "flipped body byte, resealed",
            seal(&flip(snapshot(3), body_at)),
            Want::Snapshot("body"),
        ),
        (
            "flipped header byte, resealed",
            seal(&flip(snapshot(3), 20)),
            Want::Snapshot("header"),
        ),
        ("not a snapshot", seal(&[0u8; 100]), Want::Snapshot("magic")),
        ("non-zero padding", seal(&bad_padding), Want::Padding),
    ];
    for (name, bytes, want) in cases {
        let got = classify(verify_backup(
            &mut Cursor::new(bytes),
            &SnapshotLimits::default(),
        ));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn a_good_backup_reports_what_it_holds() {
    let good = seal(&snapshot(SNAPSHOT_VERSION));
    assert!(has_checksum_size(good.len() as u64));
    let s = verify_backup(&mut Cursor::new(&good), &SnapshotLimits::default()).expect("verify");
    assert_eq!((s.header.index, s.header.term, s.header.version), (7, 2, 3));
    assert_eq!((s.revision, s.compact_revision), (5, 0));
    assert_eq!((s.keys, s.records, s.live_keys, s.leases), (2, 4, 1, 1));
    assert_eq!(s.file_bytes, good.len() as u64);
    assert_eq!(
        s.trailer_sha256,
        crate::backup::hex(&good[good.len() - 32..])
    );
    use sha2::Digest;
    assert_eq!(
        s.sha256,
        crate::backup::hex(&sha2::Sha256::digest(&good)),
        "the whole file's, as sha256sum prints it"
    );
}

#[test]
fn every_truncation_of_a_snapshot_is_an_error_never_a_panic() {
    let bytes = snapshot(SNAPSHOT_VERSION);
    for cut in 0..bytes.len() {
        let r = decode_stream(&mut &bytes[..cut], &SnapshotLimits::default(), |_| Ok(()));
        assert!(r.is_err(), "cut {cut}");
    }
    let mut whole = &bytes[..];
    let mut items = Vec::new();
    decode_stream(&mut whole, &SnapshotLimits::default(), |i| {
        items.push(i);
        Ok(())
    })
    .expect("decode");
    expect_end(&mut whole).expect("nothing after the trailer");
    assert!(matches!(
        items[0],
        BodyItem::Revisions {
            revision: 5,
            compact: 0
        }
    ));
    assert!(matches!(&items[3], BodyItem::Lease(9, 60)));
}

#[test]
fn hostile_lengths_are_refused_before_allocating() {
    let mut bytes = snapshot(SNAPSHOT_VERSION);
    let limits = SnapshotLimits {
        max_key_bytes: 0,
        ..SnapshotLimits::default()
    };
    let r = decode_stream(&mut &bytes[..], &limits, |_| Ok(()));
    assert!(
        matches!(r, Err(SnapshotDecodeError::TooLarge { what: "key", .. })),
        "{r:?}"
    );
    bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let r = decode_stream(&mut &bytes[..], &SnapshotLimits::default(), |_| Ok(()));
    assert!(
        matches!(r, Err(SnapshotDecodeError::TooLarge { what: "header", .. })),
        "{r:?}"
    );
}
