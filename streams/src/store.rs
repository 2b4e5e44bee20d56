//! See [`StateStore`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where a store keeps its data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreKind {
    /// In memory only: every assignment restores the partition from the
    /// start of its changelog.
    #[default]
    InMemory,
    /// In memory for serving, plus a redb file per partition under `dir`
    /// holding the data and a changelog checkpoint: an assignment restores
    /// only the changelog records after the checkpoint.
    #[cfg(feature = "redb")]
    Redb {
        /// The directory of the store files (`<dir>/<store>-<partition>.redb`).
        dir: PathBuf,
    },
}

/// Counters of the stores of one [`Streams`](crate::Streams) instance — a
/// metric-like view of restoration and of the changelog traffic.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub(crate) restores: AtomicU64,
    pub(crate) restoring: AtomicU64,
    pub(crate) restore_target: AtomicU64,
    pub(crate) restored_records: AtomicU64,
    pub(crate) restore_micros: AtomicU64,
    pub(crate) changelog_records: AtomicU64,
    pub(crate) rolled_back_writes: AtomicU64,
    pub(crate) batches_committed: AtomicU64,
    pub(crate) batches_aborted: AtomicU64,
}

/// A point-in-time copy of [`StoreStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStatsSnapshot {
    /// Partition restorations finished.
    pub restores: u64,
    /// Partition restorations in progress.
    pub restoring: u64,
    /// Changelog records the current and past restorations had to read
    /// (the "total" of the progress lines).
    pub restore_target: u64,
    /// Changelog records read by restorations.
    pub restored_records: u64,
    /// Time spent restoring, in microseconds.
    pub restore_micros: u64,
    /// Changelog records appended to outboxes by successful attempts.
    pub changelog_records: u64,
    /// Applied writes undone because their batch's transaction aborted.
    pub rolled_back_writes: u64,
    /// Batches whose transaction committed.
    pub batches_committed: u64,
    /// Batches whose transaction aborted.
    pub batches_aborted: u64,
}

impl StoreStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StoreStatsSnapshot {
        StoreStatsSnapshot {
            restores: self.restores.load(Relaxed),
            restoring: self.restoring.load(Relaxed),
            restore_target: self.restore_target.load(Relaxed),
            restored_records: self.restored_records.load(Relaxed),
            restore_micros: self.restore_micros.load(Relaxed),
            changelog_records: self.changelog_records.load(Relaxed),
            rolled_back_writes: self.rolled_back_writes.load(Relaxed),
            batches_committed: self.batches_committed.load(Relaxed),
            batches_aborted: self.batches_aborted.load(Relaxed),
        }
    }
}

/// The state of one store partition.
#[derive(Default)]
pub(crate) struct PartitionData {
    /// What handlers read: committed writes plus the pending ones of the
    /// batch in progress.
    pub(crate) map: BTreeMap<Bytes, Bytes>,
    /// Previous values of the keys written by the batch in progress, in
    /// write order, to roll back an aborted transaction.
    pub(crate) undo: Vec<(Bytes, Option<Bytes>)>,
    /// Keys changed since the persistent copy was last written.
    pub(crate) dirty: BTreeSet<Bytes>,
}

impl PartitionData {
    pub(crate) fn apply(&mut self, key: Bytes, value: Option<Bytes>, pending: bool) {
        let old = match value {
            Some(v) => self.map.insert(key.clone(), v),
            None => self.map.remove(&key),
        };
        if pending {
            self.undo.push((key.clone(), old));
        }
        self.dirty.insert(key);
    }

    /// Undoes the pending writes; returns how many.
    pub(crate) fn roll_back(&mut self) -> usize {
        let n = self.undo.len();
        while let Some((key, old)) = self.undo.pop() {
            match old {
                Some(v) => self.map.insert(key, v),
                None => self.map.remove(&key),
            };
        }
        n
    }
}

pub(crate) type SharedPartition = Arc<Mutex<PartitionData>>;

pub(crate) fn lock(p: &SharedPartition) -> MutexGuard<'_, PartitionData> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keyed state stores, one per (store, input partition), backed by a
/// compacted changelog topic.
///
/// A handler reads and writes its record's partition through the
/// [`StateStore`] request extension. Writes are *staged* per attempt: they
/// reach the partition's store only when the attempt answers `2xx`, and
/// then the [`Stateful`](crate::Stateful) service appends one changelog
/// record per written key to the attempt's
/// [`Outbox`](kafka_tower::runtime::Outbox), so state, outputs and consumed
/// offsets commit in one transaction. Applied writes stay *pending* until
/// the batch's transaction ends: kept when it commits, rolled back when it
/// aborts (see [`crate::Streams`]).
///
/// ```
/// use kafka_tower_streams::StateStore;
///
/// let store = StateStore::detached("accounts", 0);
/// store.put("acc-1", "100");
/// assert_eq!(store.get(b"acc-1").as_deref(), Some(&b"100"[..]));
/// store.delete("acc-1");
/// assert_eq!(store.get(b"acc-1"), None);
/// ```
///
/// A handler's view of one store partition for one attempt: reads see the
/// attempt's own staged writes first; writes are staged until the attempt
/// succeeds. A request extension set by [`Stateful`](crate::Stateful).
#[derive(Clone)]
pub struct StateStore {
    name: Arc<str>,
    partition: i32,
    data: SharedPartition,
    staged: Arc<Mutex<BTreeMap<Bytes, Option<Bytes>>>>,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("name", &self.name)
            .field("partition", &self.partition)
            .field("staged", &self.staged().len())
            .finish()
    }
}

impl StateStore {
    pub(crate) fn new(name: Arc<str>, partition: i32, data: SharedPartition) -> Self {
        StateStore {
            name,
            partition,
            data,
            staged: Default::default(),
        }
    }

    /// A store attached to no runtime, for unit tests of handlers: staged
    /// writes are visible to this handle's reads and never committed.
    pub fn detached(name: &str, partition: i32) -> Self {
        StateStore::new(name.into(), partition, Default::default())
    }

    fn staged(&self) -> MutexGuard<'_, BTreeMap<Bytes, Option<Bytes>>> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The input partition this store belongs to.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The value of `key`: this attempt's staged write if any, else the
    /// store's.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        if let Some(v) = self.staged().get(key) {
            return v.clone();
        }
        lock(&self.data).map.get(key).cloned()
    }

    /// Stages `key = value`.
    pub fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.staged().insert(key.into(), Some(value.into()));
    }

    /// Stages the deletion of `key` (a tombstone in the changelog).
    pub fn delete(&self, key: impl Into<Bytes>) {
        self.staged().insert(key.into(), None);
    }

    /// The value of `key` decoded from JSON; `Ok(None)` when absent.
    pub fn get_json<T: DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, serde_json::Error> {
        self.get(key)
            .map(|v| serde_json::from_slice(&v))
            .transpose()
    }

    /// Stages `key = JSON(value)`.
    pub fn put_json<T: Serialize>(
        &self,
        key: impl Into<Bytes>,
        value: &T,
    ) -> Result<(), serde_json::Error> {
        let v = serde_json::to_vec(value)?;
        self.put(key, v);
        Ok(())
    }

    /// Takes the staged writes (the runtime applies them on success).
    pub(crate) fn take_staged(&self) -> BTreeMap<Bytes, Option<Bytes>> {
        std::mem::take(&mut *self.staged())
    }

    pub(crate) fn data(&self) -> &SharedPartition {
        &self.data
    }
}

/// The persistent copy of a store partition.
#[cfg(feature = "redb")]
pub(crate) mod persistent {
    use super::*;
    use redb::{Database, ReadableTable, TableDefinition};

    const DATA: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("data");
    const META: TableDefinition<'_, &str, i64> = TableDefinition::new("meta");
    const CHECKPOINT: &str = "changelog_checkpoint";

    fn err(e: impl fmt::Display) -> String {
        format!("redb: {e}")
    }

    /// One redb file.
    pub(crate) struct PersistentPartition {
        db: Database,
        pub(crate) path: PathBuf,
    }

    impl PersistentPartition {
        pub(crate) fn open(path: PathBuf) -> Result<Self, String> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let db = Database::create(&path).map_err(err)?;
            Ok(PersistentPartition { db, path })
        }

        /// Loads every entry and the checkpoint (the changelog offset to
        /// resume restoring from), `None` when there is none.
        pub(crate) fn load(
            &self,
            into: &mut BTreeMap<Bytes, Bytes>,
        ) -> Result<Option<i64>, String> {
            let txn = self.db.begin_read().map_err(err)?;
            let checkpoint = match txn.open_table(META) {
                Ok(t) => t.get(CHECKPOINT).map_err(err)?.map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(err(e)),
            };
            match txn.open_table(DATA) {
                Ok(t) => {
                    for e in t.iter().map_err(err)? {
                        let (k, v) = e.map_err(err)?;
                        into.insert(
                            Bytes::copy_from_slice(k.value()),
                            Bytes::copy_from_slice(v.value()),
                        );
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(err(e)),
            }
            Ok(checkpoint)
        }

        /// Writes the dirty keys of `data` (and the checkpoint when given)
        /// in one ACID transaction.
        pub(crate) fn persist(
            &self,
            data: &mut PartitionData,
            checkpoint: Option<i64>,
        ) -> Result<(), String> {
            if data.dirty.is_empty() && checkpoint.is_none() {
                return Ok(());
            }
            let txn = self.db.begin_write().map_err(err)?;
            {
                let mut t = txn.open_table(DATA).map_err(err)?;
                for k in &data.dirty {
                    match data.map.get(k) {
                        Some(v) => {
                            t.insert(&k[..], &v[..]).map_err(err)?;
                        }
                        None => {
                            t.remove(&k[..]).map_err(err)?;
                        }
                    }
                }
                let mut m = txn.open_table(META).map_err(err)?;
                if let Some(c) = checkpoint {
                    m.insert(CHECKPOINT, c).map_err(err)?;
                }
            }
            txn.commit().map_err(err)?;
            data.dirty.clear();
            Ok(())
        }
    }
}
