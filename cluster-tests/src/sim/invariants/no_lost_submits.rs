//! No acknowledged submit is lost: every acknowledged job is in the final
//! state, or left a replica's state by garbage collection (which
//! `collected_jobs` checks was due).

use std::collections::{BTreeMap, BTreeSet};

use super::{End, Invariant, Observation};
use crate::checkers::{self, Violation};

#[derive(Default)]
pub struct NoLostSubmits {
    /// Per replica: the jobs it held at its last observation, and where.
    held: BTreeMap<u64, (u64, BTreeSet<String>)>,
    /// Jobs some replica held and then no longer did.
    collected: BTreeSet<String>,
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
            self.collected.extend(before.difference(&now).cloned());
        }
        self.held.insert(o.replica, (o.applied, now));
    }

    fn finish(&mut self, end: &End<'_>) -> Vec<Violation> {
        let mut ids: BTreeSet<String> = end.state.jobs().map(|j| j.id.clone()).collect();
        ids.extend(self.collected.iter().cloned());
        checkers::lost_submits(end.history, &ids)
    }
}
