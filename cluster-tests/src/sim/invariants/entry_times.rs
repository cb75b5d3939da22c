//! One clock for the state: with replicas' clocks skewed by up to a minute
//! either way, the times in the state still read as one timeline. A job is
//! submitted before its attempts are assigned; an attempt is assigned
//! before it starts and starts before it finishes; a retry is assigned
//! after the attempt before it finished, and never before its backoff
//! deadline. Times taken from the clock of whichever replica proposed an
//! entry (a follower forwarding an agent's report, a new leader behind the
//! old one) break these orders.

use std::collections::BTreeMap;

use gantry_core::{Job, TaskState};

use super::{End, Invariant, Observation, violation};
use crate::checkers::Violation;

/// (job, task, attempt number that failed) → the retry's deadline.
type Deadlines = BTreeMap<(String, u32, u32), u64>;

#[derive(Default)]
pub struct EntryTimes {
    deadlines: Deadlines,
    found: Vec<Violation>,
}

impl EntryTimes {
    fn check(&mut self, job: &Job, replica: u64) {
        let mut bad = |what: &str, detail: String| {
            if self.found.len() < 20 {
                self.found.push(violation(
                    "entry times on one timeline",
                    format!("{what}: job {} on replica {replica}: {detail}", job.id),
                ));
            }
        };
        for t in &job.tasks {
            let mut prev_finished = None;
            for a in &t.attempts {
                let id = format!("task {} attempt {}", t.index, a.number);
                if a.assigned_at_ms < job.submitted_at_ms {
                    bad(
                        "assigned before submitted",
                        format!("{id} at {} < {}", a.assigned_at_ms, job.submitted_at_ms),
                    );
                }
                if a.started_at_ms > 0 && a.started_at_ms < a.assigned_at_ms {
                    bad(
                        "started before assigned",
                        format!("{id} at {} < {}", a.started_at_ms, a.assigned_at_ms),
                    );
                }
                let floor = a.started_at_ms.max(a.assigned_at_ms);
                if a.finished_at_ms > 0 && a.finished_at_ms < floor {
                    bad(
                        "finished before started",
                        format!("{id} at {} < {floor}", a.finished_at_ms),
                    );
                }
                if let Some(f) = prev_finished
                    && a.assigned_at_ms < f
                {
                    bad(
                        "retry assigned before the attempt before it finished",
                        format!("{id} at {} < {f}", a.assigned_at_ms),
                    );
                }
                if let Some(deadline) =
                    self.deadlines
                        .get(&(job.id.clone(), t.index, a.number.saturating_sub(1)))
                    && a.assigned_at_ms < *deadline
                {
                    bad(
                        "retry assigned before its backoff deadline",
                        format!("{id} at {} < {deadline}", a.assigned_at_ms),
                    );
                }
                prev_finished = (a.finished_at_ms > 0).then_some(a.finished_at_ms);
            }
            // Waiting out a backoff: remember the deadline for the retry.
            if t.state == TaskState::Pending
                && t.not_before_ms > 0
                && let Some(last) = t.attempts.last()
            {
                self.deadlines
                    .entry((job.id.clone(), t.index, last.number))
                    .or_insert(t.not_before_ms);
            }
        }
    }
}

impl Invariant for EntryTimes {
    fn name(&self) -> &'static str {
        "entry times on one timeline"
    }

    fn observe(&mut self, o: &Observation<'_>) {
        for job in o.state.jobs() {
            self.check(job, o.replica);
        }
    }

    fn finish(&mut self, end: &End<'_>) -> Vec<Violation> {
        for job in end.state.jobs() {
            self.check(job, 0);
        }
        std::mem::take(&mut self.found)
    }
}
