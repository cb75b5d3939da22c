//! Admission of new work. A replica refuses new submissions, at once and
//! with RESOURCE_EXHAUSTED, when taking them would put what it already
//! accepted at risk: its data dir is below the free-space reserve (writes
//! must not reach a full disk, where the Raft core would stop), the
//! cluster already holds as many pending tasks as it allows, or the write
//! path is backed up (submissions waiting for a batch, or entries waiting
//! to be applied). Everything else — reads, agent reports, heartbeats,
//! cancels, scheduling — is admitted as before, so a saturated cluster
//! still finishes what it accepted. Clients retry a refusal later (the
//! message says why and for how long to wait).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tonic::Status;

use crate::replica::Replica;

/// How often the data dir's free space and the pending count are read.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Entries appended but not applied on the leader before submissions wait.
pub const MAX_UNAPPLIED_ENTRIES: u64 = 256;
/// Share of the submission queue that may fill before submissions wait.
const QUEUE_FULL_SHARE: (usize, usize) = (3, 4);
/// What a refused client is told to wait before trying again.
pub const RETRY_HINT: Duration = Duration::from_millis(500);

/// What the monitor last saw; read without locks on every submission.
#[derive(Default)]
pub struct Admission {
    free_bytes: AtomicU64,
    /// Below the reserve: new submissions are refused.
    disk_low: AtomicBool,
    pending_tasks: AtomicU64,
    /// Submissions refused, for the metrics.
    pub refused: prometheus_client::metrics::counter::Counter,
}

/// Free bytes for unprivileged writers on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the field types differ by platform
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

impl Admission {
    /// Free bytes in the data dir at the last check.
    pub fn free(&self) -> u64 {
        self.free_bytes.load(Ordering::Relaxed)
    }

    pub fn disk_low(&self) -> bool {
        self.disk_low.load(Ordering::Relaxed)
    }

    /// Reads the data dir and the state; logs when the alarm rises or clears.
    async fn update(&self, replica: &Replica) {
        let reserve = replica.config.admission.disk_reserve_bytes();
        match free_bytes(&replica.config.data_dir) {
            Ok(free) => {
                self.free_bytes.store(free, Ordering::Relaxed);
                let low = free < reserve;
                if self.disk_low.swap(low, Ordering::Relaxed) != low {
                    if low {
                        tracing::error!(
                            data_dir = %replica.config.data_dir.display(),
                            free_mib = free / MIB,
                            reserve_mib = reserve / MIB,
                            "NOSPACE alarm: free space below the reserve; refusing new submissions until space is freed (reads and running work go on)"
                        );
                    } else {
                        tracing::warn!(
                            free_mib = free / MIB,
                            "NOSPACE alarm cleared: free space above the reserve again; accepting submissions"
                        );
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read the data dir's free space"),
        }
        let pending = replica.state.read(|s, _| s.pending_count()).await;
        self.pending_tasks.store(
            u64::try_from(pending).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Whether `jobs` more tasks' worth of submissions may be taken now.
    pub fn check(&self, replica: &Replica, tasks: u64) -> Result<(), Status> {
        let refuse = |why: String| {
            self.refused.inc();
            Err(Status::resource_exhausted(format!(
                "{why}; nothing was submitted: retry in {} ms",
                RETRY_HINT.as_millis()
            )))
        };
        if self.disk_low() {
            return refuse(format!(
                "replica {} is low on disk: {} MiB free in {}, below its reserve of {} MiB (an operator must free space; reads and running work continue)",
                replica.id,
                self.free() / MIB,
                replica.config.data_dir.display(),
                replica.config.admission.disk_reserve_mib
            ));
        }
        let max = replica.config.admission.max_pending_tasks;
        let pending = self.pending_tasks.load(Ordering::Relaxed);
        if max > 0 && pending.saturating_add(tasks) > max {
            return refuse(format!(
                "the cluster holds {pending} pending tasks, and takes at most {max} (max_pending_tasks)"
            ));
        }
        let (used, cap) = queue_use(&replica.submits);
        let (fwd_used, fwd_cap) = queue_use(&replica.forwards);
        if used * QUEUE_FULL_SHARE.1 > cap * QUEUE_FULL_SHARE.0
            || fwd_used * QUEUE_FULL_SHARE.1 > fwd_cap * QUEUE_FULL_SHARE.0
        {
            return refuse(format!(
                "replica {} has {} submissions waiting to be committed: the cluster is saturated",
                replica.id,
                used + fwd_used
            ));
        }
        let m = replica.raft.metrics();
        let m = m.borrow_watched();
        let unapplied = m
            .last_log_index
            .unwrap_or(0)
            .saturating_sub(m.last_applied.as_ref().map_or(0, |l| l.index));
        if m.state.is_leader() && unapplied > MAX_UNAPPLIED_ENTRIES {
            return refuse(format!(
                "the leader (replica {}) has {unapplied} entries waiting to be applied: the cluster is saturated",
                replica.id
            ));
        }
        Ok(())
    }
}

const MIB: u64 = 1024 * 1024;

fn queue_use<T>(q: &tokio::sync::mpsc::Sender<T>) -> (usize, usize) {
    let cap = q.max_capacity();
    (cap - q.capacity(), cap)
}

/// Every replica: keeps [`Admission`]'s view of the disk and the state current.
pub async fn monitor(replica: std::sync::Arc<Replica>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        replica.admission.update(&replica).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
