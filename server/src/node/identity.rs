//! The member identity a node keeps in its data dir: Raft id, cluster id,
//! name and how it started. A node without this file has no identity; it
//! never reuses an old one (see [`super::bootstrap`]).

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use crate::raft::NodeId;

/// File name inside the data dir.
pub const IDENTITY_FILE: &str = "identity";

/// How this identity came to be; decides what an empty log means at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// One of the initial members of a cluster (or a single-node cluster).
    Bootstrap,
    /// Added later through Admin.AddMember.
    Join,
}

/// A node's durable identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Raft id; unique for the cluster's whole lifetime.
    pub id: NodeId,
    /// Cluster id; empty while a joining node has not heard from a leader.
    pub cluster_id: String,
    /// Node name (`-id`).
    pub name: String,
    /// Bootstrap or join.
    pub origin: Origin,
}

/// The identity file exists but cannot be understood.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing failed.
    #[error("identity file {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Content is malformed.
    #[error("identity file {path} is corrupt: {reason}")]
    Corrupt {
        /// File path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// FNV-1a 64 of `bytes`, never 0. Used where every node must compute the
/// same value independently (bootstrap ids, the bootstrap cluster id).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// The Raft id every initial member derives for the member named `name`.
pub fn bootstrap_id(name: &str) -> NodeId {
    stable_hash(name.as_bytes())
}

/// A fresh random id (OS-seeded), for joining members.
pub fn random_id() -> NodeId {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// Cluster id shared by the initial members: a hash of their sorted names.
pub fn bootstrap_cluster_id(names: &[String]) -> String {
    let mut sorted = names.to_vec();
    sorted.sort();
    format!("{:016x}", stable_hash(sorted.join(",").as_bytes()))
}

impl Identity {
    /// Loads the identity from `dir`; `None` when the file does not exist.
    pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IdentityError::Io { path, source }),
        };
        Self::parse(&text)
            .map(Some)
            .map_err(|reason| IdentityError::Corrupt { path, reason })
    }

    fn parse(text: &str) -> Result<Identity, String> {
        let mut id = None;
        let mut cluster_id = None;
        let mut name = None;
        let mut origin = None;
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "id" => id = v.parse::<u64>().ok().filter(|&i| i != 0),
                "cluster_id" => cluster_id = Some(v.to_string()),
                "name" => name = Some(v.to_string()),
                "origin" if v == "bootstrap" => origin = Some(Origin::Bootstrap),
                "origin" if v == "join" => origin = Some(Origin::Join),
                _ => {}
            }
        }
        Ok(Identity {
            id: id.ok_or("missing or zero id")?,
            cluster_id: cluster_id.ok_or("missing cluster_id")?,
            name: name.ok_or("missing name")?,
            origin: origin.ok_or("missing origin")?,
        })
    }

    fn render(&self) -> String {
        let origin = match self.origin {
            Origin::Bootstrap => "bootstrap",
            Origin::Join => "join",
        };
        format!(
            "id={}\ncluster_id={}\nname={}\norigin={origin}\n",
            self.id, self.cluster_id, self.name
        )
    }

    /// Writes the identity atomically (temp file, fsync, rename, dir fsync).
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        write_atomic(dir, &path, self.render().as_bytes())
            .map_err(|source| IdentityError::Io { path, source })
    }
}

fn write_atomic(dir: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_missing_file_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(Identity::load(dir.path()).expect("load").is_none());
        let id = Identity {
            id: 42,
            cluster_id: "c1".into(),
            name: "node1".into(),
            origin: Origin::Join,
        };
        id.save(dir.path()).expect("save");
        assert_eq!(Identity::load(dir.path()).expect("load"), Some(id));
    }

    #[test]
    fn corrupt_identity_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(IDENTITY_FILE), "id=0\n").expect("write");
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }

    #[test]
    fn bootstrap_ids_agree_across_nodes_and_differ_by_name() {
        assert_eq!(bootstrap_id("node1"), bootstrap_id("node1"));
        assert_ne!(bootstrap_id("node1"), bootstrap_id("node2"));
        let a = bootstrap_cluster_id(&["b".into(), "a".into()]);
        assert_eq!(a, bootstrap_cluster_id(&["a".into(), "b".into()]));
    }
}
