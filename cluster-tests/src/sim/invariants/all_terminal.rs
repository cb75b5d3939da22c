//! After the faults heal, every job ends within the run's bound.

use super::{End, Invariant, violation};
use crate::checkers::Violation;

pub struct AllTerminal;

impl Invariant for AllTerminal {
    fn name(&self) -> &'static str {
        "every job terminal after healing"
    }

    fn finish(&mut self, end: &End<'_>) -> Vec<Violation> {
        end.state
            .jobs()
            .filter(|j| !j.state.is_terminal())
            .map(|j| {
                violation(
                    "job not terminal after healing",
                    format!("job {} is {}", j.id, j.state.as_str()),
                )
            })
            .collect()
    }
}
