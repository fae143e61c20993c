//! Plain request and result types of the client API.

use titan_proto::v1 as pb;

/// Read consistency, mirroring `titan.v1.Consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Confirmed with the leader (ReadIndex) before answering: never stale.
    #[default]
    Linearizable,
    /// Served from the contacted node's applied state; may be stale.
    Serializable,
}

impl Consistency {
    pub(crate) fn to_proto(self) -> pb::Consistency {
        match self {
            Consistency::Linearizable => pb::Consistency::Linearizable,
            Consistency::Serializable => pb::Consistency::Serializable,
        }
    }
}

/// One key with its value and version (the log index of its last write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Log index of the key's last write; what conditional writes compare.
    pub version: u64,
}

impl KeyValue {
    pub(crate) fn from_proto(kv: pb::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            version: kv.version,
        }
    }
}

/// The outcome of a compare-and-set operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasResult {
    /// The condition held and the write applied at `version`.
    Applied {
        /// The new version (for a put) or the delete's log index (0 when the
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
    /// The delete's log index.
    pub version: u64,
}

/// Which keys a [`crate::Client::range`] call returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeQuery {
    /// Inclusive start key (ignored when `prefix` is non-empty).
    pub start: Vec<u8>,
    /// Exclusive end key; empty means "to the end of the key space".
    pub end: Vec<u8>,
    /// When non-empty, only keys starting with this prefix.
    pub prefix: Vec<u8>,
    /// Maximum keys returned; 0 lets the server choose (1000, capped at 10000).
    pub limit: u32,
    /// Read consistency.
    pub consistency: Consistency,
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

    pub(crate) fn to_proto(&self) -> pb::RangeRequest {
        pb::RangeRequest {
            start: self.start.clone(),
            end: self.end.clone(),
            prefix: self.prefix.clone(),
            limit: self.limit,
            consistency: self.consistency.to_proto() as i32,
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
    /// The applied index the read was served at.
    pub read_index: u64,
}
