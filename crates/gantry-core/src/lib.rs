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
mod state;

pub use command::{CancelError, Command, NewJob, Outcome, SubmitError, Submitted};
pub use job::{
    Attempt, AttemptState, Job, JobId, JobSpec, JobState, Resources, Task, TaskCounts, TaskState,
};
pub use limits::ValidationError;
pub use node::{Node, NodeId, NodeStatus};
pub use state::{JobFilter, Page, SnapshotError, State};
