//! A task runs at most once at a time on the nodes ("exactly once on the
//! nodes too"): no execution of a task starts while another execution of
//! it still runs anywhere — the leader gives a task to another node only
//! after the first node's lease has run out and its agent has stopped it.
//! And the lease itself: no agent learns its node was lost while a lease
//! from the cluster's confirmations still holds.

use std::collections::BTreeMap;

use super::{End, Invariant, violation};
use crate::checkers::Violation;
use crate::sim::agent::Execution;

pub struct NoOverlappingRuns;

impl Invariant for NoOverlappingRuns {
    fn name(&self) -> &'static str {
        "one execution at a time per task"
    }

    fn finish(&mut self, end: &End<'_>) -> Vec<Violation> {
        let mut by_task: BTreeMap<(&str, u32), Vec<&Execution>> = BTreeMap::new();
        for e in end.executions {
            by_task
                .entry((e.attempt.job_id.as_str(), e.attempt.task))
                .or_default()
                .push(e);
        }
        // The first line of defence: the leader marks a node lost only
        // after every lease its confirmations gave has run out.
        let mut found: Vec<Violation> = end
            .leased_at_loss
            .iter()
            .map(|d| violation("no lease outlives its node's loss", d.clone()))
            .collect();
        for ((job, task), mut runs) in by_task {
            runs.sort_by_key(|e| (e.start_ms, e.attempt.attempt));
            // The latest end among the runs started so far (None: still running).
            let mut busy: Option<(&Execution, Option<u64>)> = None;
            for e in runs {
                if let Some((prev, until)) = busy
                    && until.is_none_or(|u| e.start_ms < u)
                {
                    found.push(violation(
                        "one execution at a time per task",
                        format!(
                            "job {job} task {task}: attempt {} started on {} at {} ms while attempt {} ran on {} ({} ms to {})",
                            e.attempt.attempt,
                            e.node,
                            e.start_ms,
                            prev.attempt.attempt,
                            prev.node,
                            prev.start_ms,
                            until.map_or("the end".to_owned(), |u| format!("{u} ms")),
                        ),
                    ));
                }
                let later = match (busy.map(|b| b.1), e.end_ms) {
                    (Some(None), _) => false,
                    (_, None) => true,
                    (Some(Some(u)), Some(v)) => v > u,
                    (None, Some(_)) => true,
                };
                if later {
                    busy = Some((e, e.end_ms));
                }
            }
        }
        found
    }
}
