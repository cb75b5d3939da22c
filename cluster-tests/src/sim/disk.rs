//! A replica's disk as SIGKILL leaves it: Gantry's sled log, in front of
//! which appends wait for a simulated fsync, and a crash loses every append
//! that had not been flushed.
//!
//! In production an append returns once its entries are in sled's buffers
//! and openraft's callback fires after the flush that made them durable
//! (gantry-store's flusher). A process killed in between loses those
//! entries, and the log reads back shorter than the replica had written it:
//! that is what this models. Votes and truncations flush before returning
//! (there, and here: everything queued before them is made durable with
//! them); the committed-index hint is written without a flush and is lost
//! with the appends after it.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::time::Duration;

use gantry_store::LogStore;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;

use super::{SimConfig, spawn};

type Entry = EntryOf<SimConfig>;
type LogId = LogIdOf<SimConfig>;

/// Appends written to sled but not yet flushed, oldest first: the order
/// it was written in, the first index it wrote, and openraft's callback.
#[derive(Default)]
struct Unflushed {
    appends: VecDeque<(u64, u64, IOFlushed<SimConfig>)>,
    written: u64,
}

impl Unflushed {
    /// The first index written but not yet flushed.
    fn first(&self) -> Option<u64> {
        self.appends.iter().map(|(_, first, _)| *first).min()
    }

    /// A flush that makes every queued append durable (a vote or a truncation).
    fn flush_all(&mut self) {
        for (_, _, done) in self.appends.drain(..) {
            done.io_completed(Ok(()));
        }
    }
}

/// One incarnation's disk: the log store and its flusher.
pub struct Disk {
    store: LogStore<SimConfig>,
    unflushed: Arc<Mutex<Unflushed>>,
    wake: Arc<Notify>,
    flusher: JoinHandle<()>,
}

impl Disk {
    /// `store` over the replica's database; fsync latencies are drawn from `seed`.
    pub fn new(store: LogStore<SimConfig>, seed: u64) -> Arc<Self> {
        let unflushed = Arc::new(Mutex::new(Unflushed::default()));
        let wake = Arc::new(Notify::new());
        let flusher = spawn(flush_loop(
            unflushed.clone(),
            wake.clone(),
            StdRng::seed_from_u64(seed),
        ));
        Arc::new(Self {
            store,
            unflushed,
            wake,
            flusher,
        })
    }

    /// The log openraft is handed.
    pub fn log(self: &Arc<Self>) -> SimLog {
        SimLog {
            store: self.store.clone(),
            disk: self.clone(),
        }
    }

    /// The first index written but not yet flushed.
    pub async fn first_unflushed(&self) -> Option<u64> {
        self.unflushed.lock().await.first()
    }

    /// The process is killed: appends not yet flushed are gone, and so is
    /// the committed hint where it points past what is left. Returns how
    /// many entries were lost. Call after Raft has stopped.
    pub async fn kill(&self) -> io::Result<u64> {
        self.flusher.abort();
        let lost_from = {
            let mut u = self.unflushed.lock().await;
            let from = u.first();
            // Their callbacks never fire.
            u.appends.clear();
            from
        };
        let Some(from) = lost_from else {
            return Ok(0);
        };
        let mut store = self.store.clone();
        let before = store
            .get_log_state()
            .await?
            .last_log_id
            .map_or(0, |l| l.index);
        // The last entry kept; where it was purged already (it is in the
        // snapshot), the purge point.
        let keep: Option<LogId> = match from.checked_sub(1) {
            Some(prev) if prev > 0 => match store.try_get_log_entries(prev..=prev).await?.first() {
                Some(e) => Some(e.log_id),
                None => store.get_log_state().await?.last_purged_log_id,
            },
            _ => None,
        };
        store.truncate_after(keep).await?;
        let after = store.get_log_state().await?.last_log_id;
        let committed = store.read_committed().await?;
        if committed.map(|c| c.index) > after.map(|l| l.index) {
            store.save_committed(after).await?;
        }
        Ok(before.saturating_sub(after.map_or(0, |l| l.index)))
    }
}

/// Flushes in batches, each taking a drawn latency (mostly a few
/// milliseconds, sometimes tens), and answers the appends written before
/// it began, in order.
async fn flush_loop(unflushed: Arc<Mutex<Unflushed>>, wake: Arc<Notify>, mut rng: StdRng) {
    loop {
        let upto = {
            let u = unflushed.lock().await;
            u.appends.back().map(|(written, _, _)| *written)
        };
        let Some(upto) = upto else {
            wake.notified().await;
            continue;
        };
        let ms = if rng.random_bool(0.1) {
            rng.random_range(10..=60)
        } else {
            rng.random_range(1..=5)
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let mut u = unflushed.lock().await;
        // A vote or truncation meanwhile may have flushed some already;
        // what was written after this flush began waits for the next.
        while u.appends.front().is_some_and(|(w, _, _)| *w <= upto) {
            if let Some((_, _, done)) = u.appends.pop_front() {
                done.io_completed(Ok(()));
            }
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.flusher.abort();
    }
}

/// The log store openraft uses in the simulation: Gantry's, with appends
/// durable only once the simulated flush has run.
#[derive(Clone)]
pub struct SimLog {
    /// Gantry's log store (its methods take `&mut self`; clones share the trees).
    store: LogStore<SimConfig>,
    disk: Arc<Disk>,
}

impl RaftLogReader<SimConfig> for SimLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.store.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<SimConfig>>, io::Error> {
        self.store.read_vote().await
    }
}

impl RaftLogStorage<SimConfig> for SimLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<SimConfig>, io::Error> {
        self.store.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<SimConfig>) -> Result<(), io::Error> {
        self.disk.unflushed.lock().await.flush_all();
        self.store.save_vote(vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.store.save_committed(committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.store.read_committed().await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<SimConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        // Into sled's buffers (the store's own callback fires at once here).
        self.store.append(entries, IOFlushed::noop()).await?;
        let mut u = self.disk.unflushed.lock().await;
        u.written += 1;
        let written = u.written;
        u.appends.push_back((written, first, callback));
        drop(u);
        self.disk.wake.notify_one();
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.disk.unflushed.lock().await.flush_all();
        self.store.truncate_after(last_log_id).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.store.purge(log_id).await
    }
}
