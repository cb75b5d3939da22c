//! Job garbage collection: a job leaves a replica's state only once it
//! finished and its retention passed, by the log's own times; once gone
//! from a replica it never comes back there or in the final state.
//!
//! Entry times only grow along the log, so a job seen unfinished on a
//! replica whose latest entry time was `C` finished at `C` or later: the
//! entry that removed it must carry `C + retention` or later. A job seen
//! finished must be removed no earlier than its finish plus retention.

use std::collections::{BTreeMap, BTreeSet};

use gantry_core::finished_at;

use super::{End, Invariant, Observation, violation};
use crate::checkers::Violation;
use crate::sim::replica::JOB_RETENTION_MS;

/// A job as last seen on one replica.
struct Seen {
    /// When it finished (by its entries' times), if it had.
    finished_at: Option<u64>,
    /// The replica's latest entry time then.
    clock_ms: u64,
    state: gantry_core::JobState,
    applied: u64,
    at_ms: u64,
}

#[derive(Default)]
pub struct CollectedJobs {
    /// Per replica: the jobs it held at its last observation, and at what
    /// applied index.
    held: BTreeMap<u64, (u64, BTreeMap<String, Seen>)>,
    /// Per replica: the jobs it held once and no longer does, with the
    /// applied index they were gone by (a restarted replica replays its
    /// log and holds them again below it).
    gone: BTreeMap<u64, BTreeMap<String, u64>>,
    found: Vec<Violation>,
}

impl Invariant for CollectedJobs {
    fn name(&self) -> &'static str {
        "jobs are collected only past their retention, and never return"
    }

    fn observe(&mut self, o: &Observation<'_>) {
        let clock_ms = o.state.clock_ms();
        let now: BTreeMap<String, Seen> = o
            .state
            .jobs()
            .map(|j| {
                let finished =
                    j.state.is_terminal() && j.tasks.iter().all(|t| t.live_attempt().is_none());
                let seen = Seen {
                    finished_at: finished.then(|| finished_at(j)),
                    clock_ms,
                    state: j.state,
                    applied: o.applied,
                    at_ms: o.at_ms,
                };
                (j.id.clone(), seen)
            })
            .collect();
        let gone = self.gone.entry(o.replica).or_default();
        for id in now
            .keys()
            .filter(|id| gone.get(*id).is_some_and(|at| o.applied >= *at))
        {
            self.found.push(violation(
                "a collected job came back",
                format!(
                    "job {id} is on replica {} again at applied index {}",
                    o.replica, o.applied
                ),
            ));
        }
        if let Some((applied, before)) = self.held.get(&o.replica)
            && o.applied >= *applied
        {
            let removed_at = o.state.last_collection_ms();
            for (id, last) in before.iter().filter(|(id, _)| !now.contains_key(*id)) {
                let earliest = last.finished_at.unwrap_or(last.clock_ms) + JOB_RETENTION_MS;
                if removed_at < earliest {
                    self.found.push(violation(
                        "a job collected before its retention passed",
                        format!(
                            "job {id} left replica {} by applied index {} in an entry of {removed_at} ms; \
                             last seen there {} at applied {} ({} ms; finished at {:?}, replica clock {} ms): not before {earliest} ms",
                            o.replica, o.applied, last.state.as_str(), last.applied, last.at_ms, last.finished_at, last.clock_ms
                        ),
                    ));
                }
                gone.insert(id.clone(), o.applied);
            }
        }
        self.held.insert(o.replica, (o.applied, now));
    }

    fn finish(&mut self, end: &End<'_>) -> Vec<Violation> {
        let gone: BTreeSet<&String> = self.gone.values().flat_map(|g| g.keys()).collect();
        for j in end.state.jobs().filter(|j| gone.contains(&j.id)) {
            self.found.push(violation(
                "a collected job came back",
                format!("job {} is in the final state", j.id),
            ));
        }
        std::mem::take(&mut self.found)
    }
}
