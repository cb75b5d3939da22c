//! The Raft log, vote and committed index in sled.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use std::marker::PhantomData;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::flusher::Flusher;
use crate::log_cache::LogCache;
use crate::{Durability, Entry, LogId, StoreConfig, TypeConfig, Vote, to_io};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// The log store. Clones share the same sled trees and the same cache of
/// the newest entries, so a reader handed out before an append sees the
/// appended entries.
pub struct LogStore<C = TypeConfig> {
    log: sled::Tree,
    meta: sled::Tree,
    /// The newest entries, decoded (see `log_cache`).
    cache: Arc<Mutex<LogCache>>,
    /// Makes writes durable ([`Durability::Fsync`]); `None` when they only
    /// need to reach sled's cache ([`Durability::Process`]).
    flusher: Option<Arc<Flusher>>,
    config: PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            log: self.log.clone(),
            meta: self.meta.clone(),
            cache: self.cache.clone(),
            flusher: self.flusher.clone(),
            config: PhantomData,
        }
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes).map_err(to_io)
}

fn encode<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(to_io)
}

// === impl LogStore ===

impl<C> LogStore<C> {
    pub(crate) fn new(db: &sled::Db, durability: Durability) -> io::Result<Self> {
        let flusher = match durability {
            Durability::Fsync => Some(Arc::new(Flusher::start(db)?)),
            Durability::Process => None,
        };
        Ok(Self {
            log: db.open_tree("log").map_err(to_io)?,
            meta: db.open_tree("log_meta").map_err(to_io)?,
            cache: Default::default(),
            flusher,
            config: PhantomData,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, k: &[u8]) -> io::Result<Option<T>> {
        match self.meta.get(k).map_err(to_io)? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    fn set_meta<T: serde::Serialize>(&self, k: &[u8], value: &T) -> io::Result<()> {
        self.meta.insert(k, encode(value)?).map_err(to_io)?;
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        match &self.flusher {
            Some(f) => f.flush().await,
            None => Ok(()),
        }
    }
}

impl<C: StoreConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        // The range as first..end (end `None`: to the end of the log).
        let first = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(first) => first,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(entries) = self.cache.lock().await.get(first, end) {
            return Ok(entries);
        }
        let end = end.map_or(Bound::Unbounded, |e| Bound::Excluded(key(e)));
        self.log
            .range::<[u8; 8], _>((Bound::Included(key(first)), end))
            .map(|kv| decode(&kv.map_err(to_io)?.1))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(VOTE)
    }
}

impl<C: StoreConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let last = match self.log.last().map_err(to_io)? {
            Some((_, v)) => Some(decode::<Entry>(&v)?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.set_meta(VOTE, vote)?;
        self.flush().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // A hint for faster recovery; made durable by the next flush.
        self.set_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // One fsync for every append waiting when the flusher next runs:
        // this returns as soon as the entries are in sled's buffers, and
        // openraft counts them as stored only when `callback` is called.
        //
        // Plain inserts in index order, not a `sled::Batch`: sled makes a
        // batch atomic by sealing its I/O buffer before and after it, so
        // every batch was two more buffer writes (each a `pwrite`, a
        // `sync_file_range` and a job for sled's I/O pool) on top of the
        // flush's own, about 2.7 writes per flush. Atomicity is not needed:
        // sled recovers a prefix of what was written, in write order, so a
        // crash mid-append keeps a prefix of these entries and never a
        // hole, which is all Raft asks of a log (nothing not yet flushed
        // was acknowledged).
        let mut cache = self.cache.lock().await;
        for entry in entries {
            let bytes = encode(&entry)?;
            let size = bytes.len();
            let k = key(entry.log_id.index);
            self.log.insert(k, bytes).map_err(to_io)?;
            cache.push(
                &entry,
                size,
                || matches!(self.log.last(), Ok(Some((last, _))) if *last == k),
            );
        }
        drop(cache);
        match &self.flusher {
            Some(f) => f.after_flush(move |r| {
                callback.io_completed(r.clone().map_err(|(kind, e)| io::Error::new(kind, e)));
            }),
            None => callback.io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        // The cache first: a read meanwhile goes to sled, which still holds
        // what it asks for or no longer does, never a stale copy.
        self.cache.lock().await.truncate_from(from);
        let mut batch = sled::Batch::default();
        for kv in self.log.range(key(from)..) {
            batch.remove(kv.map_err(to_io)?.0);
        }
        self.log.apply_batch(batch).map_err(to_io)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point first: a crash in between leaves extra
        // entries (harmless), never a gap that the log state hides.
        self.set_meta(LAST_PURGED, &log_id)?;
        self.cache.lock().await.purge_upto(log_id.index);
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=key(log_id.index)) {
            batch.remove(kv.map_err(to_io)?.0);
        }
        self.log.apply_batch(batch).map_err(to_io)?;
        Ok(())
    }
}
