//! The simulated state machine: a map from a one-byte key to a `u64` value,
//! written by `Put` commands. Every put carries a unique value (its op id),
//! which keeps the linearizability check cheap.

use std::collections::BTreeMap;

/// A decoded `Put` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Put {
    /// Unique id of the client operation (also the value written).
    pub op_id: u64,
    pub key: u8,
}

impl Put {
    /// `op_id:u64 LE | key:u8`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.op_id.to_le_bytes().to_vec();
        out.push(self.key);
        out
    }

    pub fn decode(data: &[u8]) -> Option<Put> {
        if data.len() != 9 {
            return None;
        }
        let op_id = u64::from_le_bytes(data[..8].try_into().ok()?);
        Some(Put {
            op_id,
            key: data[8],
        })
    }
}

/// Applied state of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kv {
    pub map: BTreeMap<u8, u64>,
}

impl Kv {
    pub fn apply(&mut self, data: &[u8]) {
        if let Some(put) = Put::decode(data) {
            self.map.insert(put.key, put.op_id);
        }
    }

    pub fn get(&self, key: u8) -> Option<u64> {
        self.map.get(&key).copied()
    }
}

/// Read contexts: `op_id:u64 LE | key:u8` (same layout as a put).
pub fn read_ctx(op_id: u64, key: u8) -> Vec<u8> {
    Put { op_id, key }.encode()
}
