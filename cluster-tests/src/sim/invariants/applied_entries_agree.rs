//! State machine safety, Raft's central property: no two replicas ever
//! apply different entries at the same log index. (Openraft's advanced
//! leader ids allow several leaders in one term, so "one leader per term"
//! is not the property; this one holds whatever the election mode.)

use std::collections::BTreeMap;

use super::{End, Invariant, Observation, violation};
use crate::checkers::Violation;

#[derive(Default)]
pub struct AppliedEntriesAgree {
    /// log index → (replica that applied it first, the entry's log id)
    seen: BTreeMap<u64, (u64, String)>,
    found: Vec<Violation>,
}

impl Invariant for AppliedEntriesAgree {
    fn name(&self) -> &'static str {
        "applied entries agree"
    }

    fn observe(&mut self, o: &Observation<'_>) {
        let Some((index, log_id)) = &o.applied_log_id else {
            return;
        };
        match self.seen.get(index) {
            Some((r, first)) if first != log_id => self.found.push(violation(
                "two entries applied at one index",
                format!(
                    "index {}: replica {r} applied {first}, replica {} applied {log_id} (at {} ms)",
                    index, o.replica, o.at_ms
                ),
            )),
            Some(_) => {}
            None => {
                self.seen.insert(*index, (o.replica, log_id.clone()));
            }
        }
    }

    fn finish(&mut self, _end: &End<'_>) -> Vec<Violation> {
        std::mem::take(&mut self.found)
    }
}
