//! State machine safety: replicas that applied the same prefix of the log
//! hold identical state (compared by a hash of the whole state).

use std::collections::BTreeMap;

use super::{End, Invariant, Observation, violation};
use crate::checkers::Violation;

#[derive(Default)]
pub struct ReplicasAgree {
    /// applied index → (first replica seen there, its digest)
    seen: BTreeMap<u64, (u64, u64)>,
    found: Vec<Violation>,
}

impl Invariant for ReplicasAgree {
    fn name(&self) -> &'static str {
        "replicas agree"
    }

    fn observe(&mut self, o: &Observation<'_>) {
        let Some(digest) = o.digest else { return };
        match self.seen.get(&o.applied) {
            Some((r, d)) if *d != digest => self.found.push(violation(
                "replicas diverged",
                format!(
                    "at applied index {}: replica {r} and replica {} hold different states",
                    o.applied, o.replica
                ),
            )),
            Some(_) => {}
            None => {
                self.seen.insert(o.applied, (o.replica, digest));
            }
        }
    }

    fn finish(&mut self, _end: &End<'_>) -> Vec<Violation> {
        std::mem::take(&mut self.found)
    }
}
