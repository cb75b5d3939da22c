//! Gantry's domain model and its deterministic state machine.
//!
//! Everything that is replicated through Raft lives here: the job and node
//! types, the append-only [`Command`] enum that is the log payload, and
//! [`State::apply`]. Nothing in this crate reads a clock, draws a random
//! number or does I/O: time and ids arrive as fields of a command, set by the
//! replica that proposed it, so every replica that applies the same log
//! prefix holds the same state (DESIGN.md, invariant 5).

mod command;
mod job;
pub mod limits;
mod node;
pub mod scheduler;
mod state;

pub use command::{
    AttemptEvent, AttemptReport, CancelError, Command, NewJob, NodeError, Outcome, Placement,
    RestoreSummary, SubmitError, Submitted,
};
pub use job::{
    Attempt, AttemptRef, AttemptState, Exit, FailureClass, Job, JobId, JobSpec, JobState,
    PlacementPolicy, Probe, ProbeCheck, Resources, Task, TaskCounts, TaskState,
};
pub use limits::ValidationError;
pub use node::{
    BLACKLIST_INFRA_FAILURES, BLACKLIST_TTL_MS, Blacklist, Eligibility, FailingCheck, Gpu, Health,
    Node, NodeId, NodeInfo, NodeStatus, REPUTATION_HALF_LIFE_MS, Reputation, Session,
};
pub use state::{
    Due, JobFilter, Page, RULES, Retention, SnapshotCopy, SnapshotError, State, Usage, finished_at,
};
