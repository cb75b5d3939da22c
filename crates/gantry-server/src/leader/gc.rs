//! Job garbage collection on the leader: finished jobs past their retention
//! are removed through the log (`CollectJobs`), in bounded scans and
//! batches so a collection never holds the state or the log for long.

use std::sync::Arc;
use std::time::Duration;

use gantry_core::{Command, Outcome, Retention};
use tokio::time::Instant;
use tonic::Status;

use crate::replica::Replica;

/// Jobs read from the state per look (the state is shared with apply).
const SCAN_PER_READ: usize = 10_000;
/// Jobs removed per log entry.
pub const MAX_PER_ENTRY: usize = 1_000;
/// Apply rules from which `CollectJobs` entries are understood.
const RULES_NEEDED: u32 = 2;

/// What a collection did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Collected {
    pub collected: u64,
    pub remaining: u64,
}

/// Every `--gc-interval`, while this replica leads: collect what is due.
pub async fn collect_loop(replica: Arc<Replica>) {
    let every = replica.config.gc_interval();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: wait one period first.
    tick.tick().await;
    loop {
        tick.tick().await;
        // Until every replica can read `CollectJobs` (a rolling upgrade).
        if replica.state.read(|s, _| s.rules()).await < RULES_NEEDED {
            continue;
        }
        let mut rule = Retention {
            default_ms: replica.config.job_retention_ms(),
            older_than_ms: None,
        };
        if crate::plant::planted(crate::plant::Plant::CollectIgnoringRetention) {
            rule.older_than_ms = Some(0);
        }
        match collect(
            &replica,
            rule,
            Instant::now() + every.max(Duration::from_secs(10)),
        )
        .await
        {
            Ok(c) if c.collected > 0 => tracing::info!(
                collected = c.collected,
                remaining = c.remaining,
                "garbage-collected finished jobs past their retention"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "job garbage collection did not finish; next round continues")
            }
        }
    }
}

/// Removes the jobs `rule` says are due, scanning every job once.
pub async fn collect(
    replica: &Replica,
    rule: Retention,
    deadline: Instant,
) -> Result<Collected, Status> {
    if replica.state.read(|s, _| s.rules()).await < RULES_NEEDED {
        return Err(Status::failed_precondition(
            "not every replica runs a release that knows job garbage collection yet (apply rules 2): \
             upgrade them all; collection starts once they do",
        ));
    }
    let mut done = Collected::default();
    let mut after = None;
    loop {
        // Entries stamp their own time at the leader; this only picks
        // candidates, and apply checks each again.
        let now = replica.now_ms();
        let due = replica
            .state
            .read(|s, _| s.jobs_due(&rule, now, after, SCAN_PER_READ, MAX_PER_ENTRY))
            .await;
        if !due.ids.is_empty() {
            let cmd = Command::CollectJobs {
                now_ms: now,
                retention: rule,
                job_ids: due.ids,
            };
            if let (Outcome::Collected { collected }, _) = replica.write(cmd, deadline).await? {
                done.collected += u64::from(collected);
            }
        }
        match due.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
        // Apply, reads and other writes go first between batches.
        tokio::task::yield_now().await;
    }
    done.remaining = replica.state.read(|s, _| s.job_count() as u64).await;
    Ok(done)
}
