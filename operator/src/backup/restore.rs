//! Restoring a backup into a new cluster (`spec.bootstrap.fromBackup`).
//! Owns no Kubernetes state: callers pass the store and the key.
//!
//! Two steps:
//! - [`check_object`]: before the operator creates any pod of the cluster,
//!   it reads the object once: it is there, readable with the credentials,
//!   whole (etcd's SHA-256 trailer), of the expected checksum, and its
//!   snapshot header is in a format this build reads. Memory is bounded by
//!   one chunk plus the header.
//! - [`fetch`]: each initial member's init container (`titan-operator
//!   fetch-backup`) downloads the object into the member's volume next to the
//!   final path, fsyncs it, checks every byte of it (trailer, header, each
//!   record's CRC, padding), and only then renames it to the path
//!   `titan-server --restore-from` reads. A failed or damaged download
//!   leaves nothing at that path.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::Digest as _;
use titan_snapfile::backup::{BackupError as FileError, BackupSummary, verify_backup};
use titan_snapfile::{FileHeader, SnapshotDecodeError, SnapshotLimits, decode_header};
use tokio::io::AsyncWriteExt;

use super::BackupError;
use super::upload::{SnapshotDigest, StreamDigest};

/// What [`check_object`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedBackup {
    /// Size and whole-object SHA-256.
    pub digest: SnapshotDigest,
    /// The snapshot header (format version, index, term).
    pub header: FileHeader,
}

/// Reads the object at `key` once and checks it (see the module docs).
pub async fn check_object(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
    expected_sha256: Option<&str>,
) -> Result<CheckedBackup, BackupError> {
    let mut chunks = open(store, bucket, key).await?;
    let mut digest = StreamDigest::default();
    let mut header = HeaderProbe::default();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| unreachable(bucket, &e))?;
        header.feed(&chunk, key)?;
        digest.feed(&chunk);
    }
    let header = header.finish(key)?;
    let digest = finish_digest(digest, key, expected_sha256)?;
    Ok(CheckedBackup { digest, header })
}

/// Downloads the object at `key` to `out` (see the module docs). A file
/// already at `out` that an earlier run fetched from the same object (an
/// init container that ran before) is checked again and kept without a
/// download; any other file there is replaced.
pub async fn fetch(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
    out: &Path,
    expected_sha256: Option<&str>,
) -> Result<BackupSummary, BackupError> {
    let source_file = out.with_extension("source");
    let source = format!("s3://{bucket}/{key}\n");
    let same_source = tokio::fs::read_to_string(&source_file)
        .await
        .is_ok_and(|s| s == source);
    if same_source && tokio::fs::try_exists(out).await.unwrap_or(false) {
        match verify_file(out.to_path_buf(), key, expected_sha256).await {
            Ok(summary) => return Ok(summary),
            Err(error) => {
                tracing::warn!(path = %out.display(), %error, "replacing a damaged earlier download")
            }
        }
    }
    // Whatever is there is not this object's: it goes before the download.
    let _ = tokio::fs::remove_file(&source_file).await;
    let _ = tokio::fs::remove_file(out).await;
    let partial = out.with_extension("partial");
    let result = async {
        download(store, bucket, key, &partial, expected_sha256).await?;
        verify_file(partial.clone(), key, None).await
    }
    .await;
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(error);
        }
    };
    tokio::fs::rename(&partial, out)
        .await
        .map_err(|e| local(out, &e))?;
    tokio::fs::write(&source_file, source)
        .await
        .map_err(|e| local(&source_file, &e))?;
    sync_parent(out).await?;
    Ok(summary)
}

async fn open(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
) -> Result<BoxStream<'static, object_store::Result<bytes::Bytes>>, BackupError> {
    match store.get(&ObjectPath::from(key)).await {
        Ok(got) => Ok(got.into_stream()),
        Err(object_store::Error::NotFound { .. }) => Err(BackupError::BackupNotFound {
            bucket: bucket.to_string(),
            key: key.to_string(),
        }),
        Err(e) => Err(unreachable(bucket, &e)),
    }
}

fn unreachable(bucket: &str, e: &object_store::Error) -> BackupError {
    BackupError::BucketUnreachable {
        bucket: bucket.to_string(),
        detail: e.to_string(),
    }
}

fn corrupt(key: &str, detail: String) -> BackupError {
    BackupError::BackupCorrupt {
        key: key.to_string(),
        detail,
    }
}

fn local(path: &Path, e: &std::io::Error) -> BackupError {
    BackupError::Download {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// The trailer check, then the expected checksum if one was given.
fn finish_digest(
    digest: StreamDigest,
    key: &str,
    expected_sha256: Option<&str>,
) -> Result<SnapshotDigest, BackupError> {
    let digest = digest.finish_object().map_err(|d| corrupt(key, d))?;
    match expected_sha256 {
        Some(want) if want != digest.sha256 => Err(corrupt(
            key,
            format!(
                "SHA-256 is {}, bootstrap.fromBackup.sha256 expects {want}",
                digest.sha256
            ),
        )),
        _ => Ok(digest),
    }
}

/// Streams the object into `partial`, then fsyncs it.
async fn download(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
    partial: &Path,
    expected_sha256: Option<&str>,
) -> Result<(), BackupError> {
    if let Some(dir) = partial.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| local(dir, &e))?;
    }
    let mut chunks = open(store, bucket, key).await?;
    let mut file = tokio::fs::File::create(partial)
        .await
        .map_err(|e| local(partial, &e))?;
    let mut digest = StreamDigest::default();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| unreachable(bucket, &e))?;
        digest.feed(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| local(partial, &e))?;
    }
    file.sync_all().await.map_err(|e| local(partial, &e))?;
    finish_digest(digest, key, expected_sha256)?;
    Ok(())
}

/// The whole offline check of `titanctl snapshot verify` (and the whole
/// file's SHA-256 against `expected_sha256`, if given), on the blocking pool.
async fn verify_file(
    path: PathBuf,
    key: &str,
    expected_sha256: Option<&str>,
) -> Result<BackupSummary, BackupError> {
    let key = key.to_string();
    let expected = expected_sha256.map(str::to_string);
    let checked = tokio::task::spawn_blocking(move || {
        if let Some(want) = expected {
            let mut file = std::fs::File::open(&path).map_err(|e| local(&path, &e))?;
            let mut hasher = sha2::Sha256::new();
            std::io::copy(&mut file, &mut hasher).map_err(|e| local(&path, &e))?;
            let got = titan_snapfile::backup::hex(&sha2::Digest::finalize(hasher));
            if got != want {
                let detail =
                    format!("SHA-256 is {got}, bootstrap.fromBackup.sha256 expects {want}");
                return Err(corrupt(&key, detail));
            }
        }
        let mut file = std::fs::File::open(&path).map_err(|e| local(&path, &e))?;
        verify_backup(&mut file, &SnapshotLimits::default()).map_err(|e| match e {
            FileError::Io(io) => local(&path, &io),
            FileError::Snapshot(SnapshotDecodeError::UnsupportedVersion(v)) => {
                BackupError::BackupUnsupported {
                    key: key.clone(),
                    detail: format!("snapshot format version {v}"),
                }
            }
            other => corrupt(&key, other.to_string()),
        })
    })
    .await;
    checked.map_err(|e| BackupError::Download {
        path: "backup check".to_string(),
        detail: e.to_string(),
    })?
}

async fn sync_parent(path: &Path) -> Result<(), BackupError> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let dir = dir.to_path_buf();
    let synced = tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await;
    match synced {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(local(path, &e)),
        Err(e) => Err(BackupError::Download {
            path: path.display().to_string(),
            detail: e.to_string(),
        }),
    }
}

/// Collects the first bytes of an object until the snapshot header inside
/// decodes (or cannot), and keeps nothing after that.
#[derive(Default)]
struct HeaderProbe {
    prefix: Vec<u8>,
    header: Option<FileHeader>,
}

/// Magic (8), version (4), header length (4).
const FIXED_HEADER_BYTES: usize = 16;
/// The header's CRC32 after its body.
const HEADER_CRC_BYTES: usize = 4;

impl HeaderProbe {
    fn feed(&mut self, chunk: &[u8], key: &str) -> Result<(), BackupError> {
        if self.header.is_some() {
            return Ok(());
        }
        let limits = SnapshotLimits::default();
        let cap = FIXED_HEADER_BYTES + limits.max_header_bytes as usize + HEADER_CRC_BYTES;
        let room = cap.saturating_sub(self.prefix.len());
        self.prefix
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        let Some(needed) = self.needed() else {
            return Ok(());
        };
        if self.prefix.len() < needed.min(cap) {
            return Ok(());
        }
        match decode_header(&mut &self.prefix[..], &limits) {
            Ok(header) => {
                self.header = Some(header);
                self.prefix = Vec::new();
                Ok(())
            }
            Err(SnapshotDecodeError::UnsupportedVersion(v)) => {
                Err(BackupError::BackupUnsupported {
                    key: key.to_string(),
                    detail: format!("snapshot format version {v}"),
                })
            }
            Err(e) => Err(corrupt(key, format!("snapshot header: {e}"))),
        }
    }

    /// Bytes the header takes, once its length field has arrived.
    fn needed(&self) -> Option<usize> {
        let len = self.prefix.get(12..FIXED_HEADER_BYTES)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        Some(FIXED_HEADER_BYTES + len + HEADER_CRC_BYTES)
    }

    fn finish(self, key: &str) -> Result<FileHeader, BackupError> {
        self.header.ok_or_else(|| {
            corrupt(
                key,
                format!(
                    "ends after {} bytes, inside the snapshot header",
                    self.prefix.len()
                ),
            )
        })
    }
}

/// Backup files for tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::io::Write;

    use titan_snapfile::backup::Sha256Writer;
    use titan_snapfile::{CrcWriter, FileHeader, encode_header, write_leases, write_revisions};

    /// A backup file: a snapshot (header, revision 7, no keys, no leases,
    /// trailer) in etcd's envelope (zero padding and SHA-256).
    pub(crate) fn backup_file(header_bytes: Vec<u8>) -> Vec<u8> {
        let mut content = header_bytes;
        let mut body = CrcWriter::new(&mut content);
        write_revisions(&mut body, 7, 0).unwrap_or_else(|e| panic!("{e}"));
        write_leases(&mut body, &[]).unwrap_or_else(|e| panic!("{e}"));
        body.finish().unwrap_or_else(|e| panic!("{e}"));
        let mut w = Sha256Writer::new(Vec::new());
        w.write_all(&content).unwrap_or_else(|e| panic!("{e}"));
        let (mut out, digest) = w.finish().unwrap_or_else(|e| panic!("{e}"));
        out.extend_from_slice(&digest);
        out
    }

    /// A good backup at index 9, term 2.
    pub(crate) fn good_backup() -> Vec<u8> {
        backup_file(encode_header(&FileHeader {
            index: 9,
            term: 2,
            ..FileHeader::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::backup_file;
    use super::*;
    use object_store::PutPayload;
    use object_store::memory::InMemory;
    use sha2::{Digest, Sha256};
    use titan_snapfile::backup::hex;
    use titan_snapfile::{encode_header, encode_header_as};

    const BUCKET: &str = "backups";
    const KEY: &str = "titan/prod/demo/20261207T000000Z-nightly.snapshot";

    fn good_header() -> FileHeader {
        FileHeader {
            index: 9,
            term: 2,
            ..FileHeader::default()
        }
    }

    async fn store_with(bytes: &[u8]) -> InMemory {
        let store = InMemory::new();
        store
            .put(&ObjectPath::from(KEY), PutPayload::from(bytes.to_vec()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store
    }

    fn reason(result: Result<impl std::fmt::Debug, BackupError>) -> &'static str {
        match result {
            Ok(v) => panic!("expected a failure, got {v:?}"),
            Err(e) => e.reason(),
        }
    }

    #[tokio::test]
    async fn a_whole_backup_checks_out_with_its_header_and_checksum() {
        let file = backup_file(encode_header(&good_header()));
        let store = store_with(&file).await;
        let sha = hex(&Sha256::digest(&file));
        let checked = check_object(&store, BUCKET, KEY, Some(&sha))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(checked.digest.size_bytes, file.len() as u64);
        assert_eq!(checked.digest.sha256, sha);
        assert_eq!((checked.header.index, checked.header.term), (9, 2));
    }

    #[tokio::test]
    async fn damaged_missing_foreign_and_newer_backups_fail_with_their_reason() {
        let file = backup_file(encode_header(&good_header()));
        let mut flipped = file.clone();
        flipped[40] ^= 0x01;
        let truncated = file[..file.len() - 512].to_vec();
        let newer = backup_file(encode_header_as(&good_header(), 99));
        let table: [(&str, Vec<u8>, Option<&str>, &str); 5] = [
            ("a flipped byte", flipped, None, "BackupCorrupt"),
            ("a truncated object", truncated, None, "BackupCorrupt"),
            (
                "another object than expected",
                file.clone(),
                Some(&"0".repeat(64)),
                "BackupCorrupt",
            ),
            ("a newer format", newer, None, "BackupFormatUnsupported"),
            (
                "a few bytes",
                b"not a snapshot".to_vec(),
                None,
                "BackupCorrupt",
            ),
        ];
        for (what, bytes, expected, want) in table {
            let store = store_with(&bytes).await;
            let got = reason(check_object(&store, BUCKET, KEY, expected).await);
            assert_eq!(got, want, "check_object on {what}");
        }
        let empty = InMemory::new();
        assert_eq!(
            reason(check_object(&empty, BUCKET, KEY, None).await),
            "BackupNotFound"
        );
    }

    #[tokio::test]
    async fn fetch_publishes_only_a_verified_file_and_keeps_it_on_a_rerun() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join("restore").join("backup.snapshot");
        let file = backup_file(encode_header(&good_header()));
        let store = store_with(&file).await;
        let summary = fetch(&store, BUCKET, KEY, &out, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(summary.revision, 7);
        assert_eq!(std::fs::read(&out).unwrap_or_default(), file);

        // A rerun (the init container again) keeps the file without a download.
        let gone = InMemory::new();
        let sha = hex(&Sha256::digest(&file));
        let again = fetch(&gone, BUCKET, KEY, &out, Some(&sha))
            .await
            .unwrap_or_else(|e| panic!("rerun: {e}"));
        assert_eq!(again, summary);
        // ... but not for another object, nor another expected checksum.
        assert_eq!(
            reason(fetch(&gone, BUCKET, KEY, &out, Some(&"0".repeat(64))).await),
            "BackupNotFound",
            "a file of another checksum is fetched again"
        );
        assert!(!out.exists(), "a file of another object is removed");
        // Fetched again, then the same file from another key.
        fetch(&store, BUCKET, KEY, &out, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            reason(fetch(&gone, BUCKET, "other-key", &out, None).await),
            "BackupNotFound"
        );
        assert!(!out.exists(), "a file of another object is removed");

        // A damaged object leaves nothing at the path, nor a partial file.
        let other = dir.path().join("other").join("backup.snapshot");
        let mut flipped = file.clone();
        flipped[40] ^= 0x01;
        let bad = store_with(&flipped).await;
        assert_eq!(
            reason(fetch(&bad, BUCKET, KEY, &other, None).await),
            "BackupCorrupt"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path().join("other"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
