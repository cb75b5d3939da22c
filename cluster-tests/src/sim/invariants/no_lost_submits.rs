//! No acknowledged submit is lost.

use std::collections::BTreeSet;

use super::{End, Invariant};
use crate::checkers::{self, Violation};

pub struct NoLostSubmits;

impl Invariant for NoLostSubmits {
    fn name(&self) -> &'static str {
        "no lost submits"
    }

    fn finish(&mut self, end: &End<'_>) -> Vec<Violation> {
        let ids: BTreeSet<String> = end.state.jobs().map(|j| j.id.clone()).collect();
        checkers::lost_submits(end.history, &ids)
    }
}
