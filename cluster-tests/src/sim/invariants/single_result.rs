//! An attempt has one result: once any replica shows it finished, no replica
//! ever shows it finished differently (a second accepted report would).

use std::collections::BTreeMap;

use gantry_core::AttemptState;

use super::{End, Invariant, Observation, violation};
use crate::checkers::Violation;

type Key = (String, u32, u32);
type Result = (AttemptState, Option<i32>, u64, String);

#[derive(Default)]
pub struct SingleResult {
    results: BTreeMap<Key, Result>,
    found: Vec<Violation>,
}

impl Invariant for SingleResult {
    fn name(&self) -> &'static str {
        "one result per attempt"
    }

    fn observe(&mut self, o: &Observation<'_>) {
        for job in o.state.jobs() {
            for t in &job.tasks {
                for a in t.attempts.iter().filter(|a| !a.state.is_live()) {
                    let key = (job.id.clone(), t.index, a.number);
                    let result = (
                        a.state,
                        a.exit.exit_code,
                        a.finished_at_ms,
                        a.node_id.clone(),
                    );
                    match self.results.get(&key) {
                        Some(first) if *first != result => self.found.push(violation(
                            "two results for one attempt",
                            format!(
                                "{}/{}#{}: {first:?}, then {result:?} on replica {}",
                                key.0, key.1, key.2, o.replica
                            ),
                        )),
                        Some(_) => {}
                        None => {
                            self.results.insert(key, result);
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self, _end: &End<'_>) -> Vec<Violation> {
        std::mem::take(&mut self.found)
    }
}
