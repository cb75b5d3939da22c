//! Garbage collection of finished jobs. The leader picks jobs past their
//! retention and proposes `CollectJobs`; apply checks each again against the
//! entry's own time, so a job is never removed before it finished and its
//! retention passed, whichever replica proposed and however late it applies.

use serde::{Deserialize, Serialize};

use super::State;
use crate::job::{Job, JobId};

/// Which finished jobs a collection removes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// The cluster's retention for jobs that name none, ms (0: for ever).
    pub default_ms: u64,
    /// An operator's forced run (`gantry system gc --older-than`): every
    /// job finished at least this long ago goes, whatever its retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than_ms: Option<u64>,
}

impl Retention {
    /// Whether `job` may be removed at `now_ms`: every task ended, no
    /// attempt still live (a cancelled job's attempt holds its node until
    /// reported), and finished for at least its retention.
    pub fn due(&self, job: &Job, now_ms: u64) -> bool {
        if !job.state.is_terminal() || job.tasks.iter().any(|t| t.live_attempt().is_some()) {
            return false;
        }
        let keep = match self.older_than_ms {
            Some(t) => t,
            None => match job.spec.retention_ms.unwrap_or(self.default_ms) {
                0 => return false,
                t => t,
            },
        };
        now_ms.saturating_sub(finished_at(job)) >= keep
    }
}

/// When the job's last change happened: its end, or a later report of an
/// attempt it had stopped.
pub fn finished_at(job: &Job) -> u64 {
    job.tasks
        .iter()
        .flat_map(|t| t.attempts.iter().map(|a| a.finished_at_ms))
        .fold(job.updated_at_ms, u64::max)
}

/// What a scan for due jobs found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Due jobs, in submission order.
    pub ids: Vec<JobId>,
    /// The `seq` to scan on after; `None` when the scan reached the end.
    pub next_after: Option<u64>,
}

impl State {
    /// Up to `max` jobs due at `now_ms` among at most `scan` jobs after seq
    /// `after` (bounded, so a collection never holds the state for long).
    pub fn jobs_due(
        &self,
        rule: &Retention,
        now_ms: u64,
        after: Option<u64>,
        scan: usize,
        max: usize,
    ) -> Due {
        let start = after.map_or(0, |s| s.saturating_add(1));
        let mut due = Due::default();
        for (n, (seq, id)) in self.by_seq.range(start..).enumerate() {
            if n == scan || due.ids.len() == max {
                due.next_after = Some(seq.saturating_sub(1));
                return due;
            }
            if self.jobs.get(id).is_some_and(|j| rule.due(j, now_ms)) {
                due.ids.push(id.clone());
            }
        }
        due
    }

    /// Jobs ever submitted (each took a submission number).
    pub fn jobs_submitted(&self) -> u64 {
        self.next_seq
    }

    /// Finished jobs collected since the cluster began (replicated).
    pub fn jobs_collected(&self) -> u64 {
        self.collected
    }

    /// The time of the last entry that collected jobs (0: none yet).
    pub fn last_collection_ms(&self) -> u64 {
        self.last_collection_ms
    }

    pub(super) fn apply_collect(
        &mut self,
        index: u64,
        now_ms: u64,
        rule: &Retention,
        ids: &[JobId],
    ) -> u32 {
        let mut collected = 0u32;
        for id in ids {
            if !self.jobs.get(id).is_some_and(|j| rule.due(j, now_ms)) {
                continue;
            }
            let Some(job) = self.jobs.remove(id) else {
                continue;
            };
            self.by_seq.remove(&job.seq);
            let key = &job.spec.idempotency_key;
            if !key.is_empty() && self.idempotency.get(key) == Some(id) {
                self.idempotency.remove(key);
            }
            // Watchers resuming from before this entry look the job up and
            // find it gone.
            self.changed.push(index, id);
            collected += 1;
        }
        if collected > 0 {
            self.collected += u64::from(collected);
            self.last_collection_ms = now_ms;
        }
        collected
    }
}

#[cfg(test)]
#[path = "gc_tests.rs"]
mod tests;
