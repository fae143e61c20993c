//! Where the MVCC store keeps a value: in memory, or in the value log
//! (`storage/vlog.rs`) once it reaches the threshold.
//!
//! [`ValueStore`] is the placement policy the store carries; the default
//! keeps everything in memory, as before the value log existed. The choice
//! is local to a member (another member may place the same value
//! differently) and never changes what a read returns.

use std::sync::Arc;

use super::vlog::{ValueLog, ValueLogError, ValueLogStats, ValueRef};

/// A stored value: 16 bytes, so a key history's record stays small enough
/// for `imbl` to keep a one-record history inline (see
/// `mvcc::Record`). The rarer logged reference is boxed for that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Held in memory (shared with readers and snapshots).
    Inline(Arc<[u8]>),
    /// Held in the value log.
    Logged(Box<ValueRef>),
}

impl Value {
    /// Length in bytes, without reading anything.
    pub fn len(&self) -> usize {
        match self {
            Value::Inline(v) => v.len(),
            Value::Logged(r) => r.value_len as usize,
        }
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Inline(Arc::from(v))
    }
}

/// The placement policy: values of at least `threshold` bytes go to the
/// value log, smaller ones (and every value when there is no log) stay in
/// memory. Cloning shares the log.
#[derive(Debug, Clone, Default)]
pub struct ValueStore {
    log: Option<Arc<ValueLog>>,
    threshold: usize,
    /// Shared by every clone of a store since the last merge moved values
    /// (see [`ValueStore::next_epoch`]).
    epoch: Arc<()>,
}

impl ValueStore {
    /// Every value in memory.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Values of at least `threshold` bytes in `log`.
    pub fn logged(log: Arc<ValueLog>, threshold: usize) -> Self {
        Self {
            log: Some(log),
            threshold,
            epoch: Arc::new(()),
        }
    }

    /// The same placement in a new epoch. A merge moves values, points the
    /// live store at the copies and gives it a new epoch; store clones made
    /// before (readers, snapshot writers) keep the old one, and the merged
    /// files stay open until [`ValueStore::epoch_released`] says the last of
    /// them is gone.
    pub fn next_epoch(&self) -> Self {
        Self {
            epoch: Arc::new(()),
            ..self.clone()
        }
    }

    /// Whether `other` is a clone from the same epoch.
    pub fn same_epoch(&self, other: &ValueStore) -> bool {
        Arc::ptr_eq(&self.epoch, &other.epoch)
    }

    /// A check that is true once only the returned closure still holds
    /// this epoch (every store clone that shared it was dropped).
    pub fn epoch_released(self) -> impl Fn() -> bool + Send + Sync + 'static {
        let epoch = self.epoch;
        move || Arc::strong_count(&epoch) == 1
    }

    /// The value log, if values go to one.
    pub fn log(&self) -> Option<&Arc<ValueLog>> {
        self.log.as_ref()
    }

    /// The value log's counters (zero without a log).
    pub fn stats(&self) -> ValueLogStats {
        self.log.as_ref().map(|l| l.stats()).unwrap_or_default()
    }

    /// Stores `value` for `key`. A failed append keeps the value in memory
    /// (the log counts and reports it): what a read returns never depends on
    /// the disk.
    pub fn store(&self, key: &[u8], value: &[u8]) -> Value {
        match &self.log {
            Some(log) if value.len() >= self.threshold => match log.append(key, value) {
                Ok(r) => Value::Logged(Box::new(r)),
                Err(_) => Value::from(value),
            },
            _ => Value::from(value),
        }
    }

    /// Like [`ValueStore::store`], taking ownership (no copy when the value
    /// stays in memory).
    pub fn store_vec(&self, key: &[u8], value: Vec<u8>) -> Value {
        match &self.log {
            Some(_) if value.len() >= self.threshold => self.store(key, &value),
            _ => Value::Inline(value.into()),
        }
    }

    /// The bytes of `value`, stored under `key`.
    pub fn read(&self, key: &[u8], value: &Value) -> Result<Arc<[u8]>, ValueLogError> {
        match (value, &self.log) {
            (Value::Inline(v), _) => Ok(v.clone()),
            (Value::Logged(r), Some(log)) => log.read(key, **r).map(Arc::from),
            (Value::Logged(r), None) => Err(ValueLogError {
                path: Default::default(),
                offset: r.offset,
                what: "a logged value in a store without a value log".into(),
            }),
        }
    }
}
