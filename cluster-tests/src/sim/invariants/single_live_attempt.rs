//! Never two live attempts of one task, in any replica's state.

use super::{End, Invariant, Observation, violation};
use crate::checkers::Violation;

#[derive(Default)]
pub struct SingleLiveAttempt {
    found: Vec<Violation>,
}

impl Invariant for SingleLiveAttempt {
    fn name(&self) -> &'static str {
        "one live attempt per task"
    }

    fn observe(&mut self, o: &Observation<'_>) {
        for job in o.state.jobs() {
            for t in &job.tasks {
                let live = t.attempts.iter().filter(|a| a.state.is_live()).count();
                if live > 1 {
                    self.found.push(violation(
                        "two live attempts",
                        format!(
                            "job {} task {} has {live} live attempts on replica {} at index {}",
                            job.id, t.index, o.replica, o.applied
                        ),
                    ));
                }
            }
        }
    }

    fn finish(&mut self, _end: &End<'_>) -> Vec<Violation> {
        std::mem::take(&mut self.found)
    }
}
