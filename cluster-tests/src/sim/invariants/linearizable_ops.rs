//! Submits, reads and cancels of each job are linearizable (the same
//! Wing–Gong checker the real-process tests use).

use super::{End, Invariant};
use crate::checkers::{self, Violation};

pub struct LinearizableOps;

impl Invariant for LinearizableOps {
    fn name(&self) -> &'static str {
        "linearizable"
    }

    fn finish(&mut self, end: &End<'_>) -> Vec<Violation> {
        checkers::linearizable(end.history)
    }
}
