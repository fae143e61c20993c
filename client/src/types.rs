//! Plain request and result types of the key-value part of the client API,
//! and their mapping onto etcd v3 messages (`etcdserverpb`).

use titan_proto::etcdserverpb as pb;
use titan_proto::mvccpb;

/// Range results asked for when a [`RangeQuery`] gives no limit (etcd's
/// own default is "no limit"; the client keeps one answer bounded).
pub const DEFAULT_RANGE_LIMIT: u32 = 1000;

/// Read consistency, as etcd defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Confirmed with the leader (ReadIndex) before answering: never stale.
    #[default]
    Linearizable,
    /// Served from the contacted node's applied state; may be stale.
    Serializable,
}

impl Consistency {
    pub(crate) fn serializable(self) -> bool {
        self == Consistency::Serializable
    }
}

/// One key with its value and its etcd metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The key's `mod_revision`: the store revision of its last write. This
    /// is what conditional writes compare ("version" in this client).
    pub version: u64,
    /// The revision that created the key (since its last delete).
    pub create_revision: i64,
    /// etcd's `version`: writes to the key since its creation.
    pub modifications: i64,
    /// The lease the key is attached to (0 = none).
    pub lease: i64,
}

impl KeyValue {
    pub(crate) fn from_pb(kv: mvccpb::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            version: revision_u64(kv.mod_revision),
            create_revision: kv.create_revision,
            modifications: kv.version,
            lease: kv.lease,
        }
    }
}

/// A revision as the client's unsigned "version" (negative never happens;
/// it reads as 0 = absent).
pub(crate) fn revision_u64(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

/// The outcome of a compare-and-set operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasResult {
    /// The condition held and the write applied at `version`.
    Applied {
        /// The new version (for a put) or the delete's revision (0 when the
        /// delete was confirmed by reading back after an unknown outcome).
        version: u64,
    },
    /// The condition did not hold; nothing was written.
    Conflict {
        /// The key's version at the time (0 = absent).
        current_version: u64,
    },
}

/// The outcome of an unconditional delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteResult {
    /// Whether the key existed before the delete.
    pub existed: bool,
    /// The store revision after the delete.
    pub version: u64,
}

/// Which keys a [`crate::Client::range`] call returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeQuery {
    /// Inclusive start key (ignored when `prefix` is non-empty; empty = the
    /// first key).
    pub start: Vec<u8>,
    /// Exclusive end key; empty means "to the end of the key space".
    pub end: Vec<u8>,
    /// When non-empty, only keys starting with this prefix.
    pub prefix: Vec<u8>,
    /// Maximum keys returned; 0 means [`DEFAULT_RANGE_LIMIT`].
    pub limit: u32,
    /// Read consistency.
    pub consistency: Consistency,
    /// Read the store as of this revision (0 = the newest). A compacted
    /// revision is refused by the server (`OUT_OF_RANGE`).
    pub revision: i64,
}

impl RangeQuery {
    /// All keys starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        RangeQuery {
            prefix: prefix.into(),
            ..Default::default()
        }
    }

    /// Keys in `[start, end)`; an empty `end` means unbounded.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        RangeQuery {
            start: start.into(),
            end: end.into(),
            ..Default::default()
        }
    }

    /// The same query with a result limit.
    pub fn with_limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// The same query with a read consistency.
    pub fn with_consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// The same query at a past revision (0 = the newest).
    pub fn at_revision(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }

    /// The etcd `[key, range_end)` this query covers.
    pub(crate) fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        if !self.prefix.is_empty() {
            return prefix_bounds(&self.prefix);
        }
        let or_nul = |b: &[u8]| if b.is_empty() { vec![0] } else { b.to_vec() };
        (or_nul(&self.start), or_nul(&self.end))
    }

    pub(crate) fn to_pb(&self) -> pb::RangeRequest {
        let (key, range_end) = self.bounds();
        let limit = match self.limit {
            0 => DEFAULT_RANGE_LIMIT,
            n => n,
        };
        pb::RangeRequest {
            key,
            range_end,
            limit: i64::from(limit),
            revision: self.revision,
            serializable: self.consistency.serializable(),
            ..Default::default()
        }
    }
}

/// One page of a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePage {
    /// Matching keys in key order.
    pub kvs: Vec<KeyValue>,
    /// True when more keys matched than the limit allowed.
    pub more: bool,
    /// The store revision the read was served at.
    pub revision: i64,
}

/// etcd's `[key, range_end)` for every key starting with `prefix`: the end
/// is the prefix with its last byte below 0xff incremented, or `"\0"` (no
/// upper bound) when there is none. An empty prefix means every key.
pub fn prefix_bounds(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), end);
        }
    }
    (prefix.to_vec(), vec![0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds_follow_etcd_from_a_table() {
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            (b"ab", b"ab", b"ac"),
            (b"a\xff", b"a\xff", b"b"),
            (b"\xff\xff", b"\xff\xff", b"\0"),
            (b"", b"\0", b"\0"),
        ];
        for (prefix, key, end) in cases {
            let (k, e) = prefix_bounds(prefix);
            assert_eq!((k.as_slice(), e.as_slice()), (*key, *end), "{prefix:?}");
        }
    }

    #[test]
    fn range_query_maps_onto_an_etcd_range_request() {
        let all = RangeQuery::default().to_pb();
        assert_eq!((all.key, all.range_end), (vec![0], vec![0]));
        assert_eq!(all.limit, i64::from(DEFAULT_RANGE_LIMIT));
        assert!(!all.serializable);
        let between = RangeQuery::between("a", "c")
            .with_limit(5)
            .with_consistency(Consistency::Serializable)
            .at_revision(7)
            .to_pb();
        assert_eq!(
            (between.key, between.range_end),
            (b"a".to_vec(), b"c".to_vec())
        );
        assert_eq!((between.limit, between.revision), (5, 7));
        assert!(between.serializable);
        let open_end = RangeQuery::between("m", "").to_pb();
        assert_eq!(open_end.range_end, vec![0]);
        let prefix = RangeQuery::prefix("p/").to_pb();
        assert_eq!(
            (prefix.key, prefix.range_end),
            (b"p/".to_vec(), b"p0".to_vec())
        );
    }
}
