//! The invariants the simulation checks, one file each. Each sees every
//! replica's state as the monitor samples it during the run, and the
//! history and final state at the end.

mod all_terminal;
mod applied_entries_agree;
mod collected_jobs;
mod entry_times;
mod linearizable_ops;
mod no_lost_submits;
mod no_overlapping_runs;
mod replicas_agree;
mod single_live_attempt;
mod single_result;

use gantry_core::State;

use crate::checkers::{History, Violation};

/// One replica's state at one instant of the run.
pub struct Observation<'a> {
    pub replica: u64,
    pub at_ms: u64,
    pub applied: u64,
    /// The last applied entry's index and log id (term, leader, index) as
    /// text, from Raft's metrics.
    pub applied_log_id: Option<(u64, String)>,
    pub state: &'a State,
    /// A hash of the whole state, on some samples only (it costs a snapshot).
    pub digest: Option<u64>,
}

/// What the run ends with.
pub struct End<'a> {
    pub history: &'a History,
    /// The leader's state after healing.
    pub state: &'a State,
    /// Every execution of an attempt on the simulated nodes.
    pub executions: &'a [super::agent::Execution],
    /// Agents that learnt their node was lost while their lease held.
    pub leased_at_loss: &'a [String],
}

pub trait Invariant {
    fn name(&self) -> &'static str;
    fn observe(&mut self, _obs: &Observation<'_>) {}
    fn finish(&mut self, end: &End<'_>) -> Vec<Violation>;
}

pub fn all() -> Vec<Box<dyn Invariant + Send>> {
    vec![
        Box::new(applied_entries_agree::AppliedEntriesAgree::default()),
        Box::new(replicas_agree::ReplicasAgree::default()),
        Box::new(single_result::SingleResult::default()),
        Box::new(single_live_attempt::SingleLiveAttempt::default()),
        Box::new(no_lost_submits::NoLostSubmits::default()),
        Box::new(collected_jobs::CollectedJobs::default()),
        Box::new(linearizable_ops::LinearizableOps),
        Box::new(all_terminal::AllTerminal),
        Box::new(entry_times::EntryTimes::default()),
        Box::new(no_overlapping_runs::NoOverlappingRuns),
    ]
}

pub(crate) fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}
