//! No acknowledged submit is lost: every acknowledged job is in the final
//! state, or was garbage-collected: it left a replica's state (which
//! `collected_jobs` checks was due), or was last seen finished (collected
//! after the last sample, before the final state was read).

use std::collections::{BTreeMap, BTreeSet};

use super::{End, Invariant, Observation};
use crate::checkers::{self, Violation};

#[derive(Default)]
pub struct NoLostSubmits {
    /// Per replica: the jobs it held at its last observation, and where.
    held: BTreeMap<u64, (u64, BTreeSet<String>)>,
    /// Jobs some replica held and then no longer did, or held finished.
    collectable: BTreeSet<String>,
}

impl Invariant for NoLostSubmits {
    fn name(&self) -> &'static str {
        "no lost submits"
    }

    fn observe(&mut self, o: &Observation<'_>) {
        let now: BTreeSet<String> = o.state.jobs().map(|j| j.id.clone()).collect();
        if let Some((applied, before)) = self.held.get(&o.replica)
            && o.applied >= *applied
        {
            self.collectable.extend(before.difference(&now).cloned());
        }
        for j in o.state.jobs() {
            let finished =
                j.state.is_terminal() && j.tasks.iter().all(|t| t.live_attempt().is_none());
            if finished && !self.collectable.contains(&j.id) {
                self.collectable.insert(j.id.clone());
            }
        }
        self.held.insert(o.replica, (o.applied, now));
    }

    fn finish(&mut self, end: &End<'_>) -> Vec<Violation> {
        let mut ids: BTreeSet<String> = end.state.jobs().map(|j| j.id.clone()).collect();
        ids.extend(self.collectable.iter().cloned());
        checkers::lost_submits(end.history, &ids)
    }
}
