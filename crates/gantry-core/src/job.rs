//! Jobs, their tasks and the attempts made to run them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::node::NodeId;

/// A job's id: chosen by the proposing replica (a UUID), never by apply.
pub type JobId = String;

/// The default number of attempts for workload failures when a spec says 0.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Whether `v` is its type's default: such fields are not written.
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// What a task needs from a node. A missing field reads as its default, and
/// a default-valued one is not written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// Thousandths of a CPU core.
    #[serde(skip_serializing_if = "is_default")]
    pub cpu_millis: u64,
    #[serde(skip_serializing_if = "is_default")]
    pub memory_mib: u64,
    #[serde(skip_serializing_if = "is_default")]
    pub gpus: u32,
}

/// What the user asked for. Immutable once submitted.
///
/// Every field missing from an encoded spec reads as its default, and
/// default-valued fields are left out when one is written (a log entry's
/// JSON is about a third smaller). Replicas since commit 168d458 read specs
/// this way; a replica from before it is upgraded to one from between the
/// two first (docs/operations.md, "Upgrade").
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSpec {
    #[serde(skip_serializing_if = "is_default")]
    pub name: String,
    #[serde(skip_serializing_if = "is_default")]
    pub argv: Vec<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub env: BTreeMap<String, String>,
    /// Empty: a fresh directory per attempt.
    #[serde(skip_serializing_if = "is_default")]
    pub working_dir: String,
    #[serde(skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// Node labels that must all equal these values.
    #[serde(skip_serializing_if = "is_default")]
    pub constraints: BTreeMap<String, String>,
    /// Number of tasks; 0 is normalised to 1 by [`JobSpec::normalized`].
    #[serde(skip_serializing_if = "is_default")]
    pub count: u32,
    #[serde(skip_serializing_if = "is_default")]
    pub priority: i32,
    /// 0: no timeout.
    #[serde(skip_serializing_if = "is_default")]
    pub timeout_ms: u64,
    /// 0 is normalised to [`DEFAULT_MAX_ATTEMPTS`].
    #[serde(skip_serializing_if = "is_default")]
    pub max_attempts: u32,
    /// Empty: no idempotency.
    #[serde(skip_serializing_if = "is_default")]
    pub idempotency_key: String,
    /// Run `argv[0]` as a script with `sh -c` (argv[1..] become $0, $1, ...).
    /// Without it argv is executed directly, never through a shell.
    #[serde(skip_serializing_if = "is_default")]
    pub shell: bool,
    /// Placement: spread tasks over nodes instead of bin-packing them.
    #[serde(skip_serializing_if = "is_default")]
    pub spread: bool,
    // Added later: older entries decode without them.
    /// Only GPUs whose model contains this (case-insensitive); empty: any.
    #[serde(skip_serializing_if = "is_default")]
    pub gpu_model: String,
    /// Only GPUs with at least this much memory; 0: any.
    #[serde(skip_serializing_if = "is_default")]
    pub gpu_min_memory_mib: u64,
    #[serde(skip_serializing_if = "is_default")]
    pub placement: PlacementPolicy,
    /// A service task is ready only once this passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// The user tasks run as on the node; empty: the node's task user.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// How long the job is kept once finished, ms: `None` the cluster's
    /// `--job-retention`, `Some(0)` for ever. Added later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
}

/// Which nodes a job's tasks may go to.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum PlacementPolicy {
    /// The cluster's default (the leader's `scheduler.placement` setting).
    #[default]
    ClusterDefault,
    /// Only healthy, non-blacklisted nodes with a proven success record.
    Strict,
    /// Healthy, non-blacklisted nodes; ranking favours health and past success.
    Balanced,
    /// Any node with room that is not blacklisted, healthy or not.
    Aggressive,
}

impl PlacementPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterDefault => "",
            Self::Strict => "strict",
            Self::Balanced => "balanced",
            Self::Aggressive => "aggressive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "default" => Some(Self::ClusterDefault),
            "strict" => Some(Self::Strict),
            "balanced" => Some(Self::Balanced),
            "aggressive" => Some(Self::Aggressive),
            _ => None,
        }
    }
}

/// What a readiness probe checks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProbeCheck {
    /// Run argv (no shell) in the task's directory; exit 0 passes.
    Exec { argv: Vec<String> },
    /// A TCP connection opens.
    Tcp { host: String, port: u16 },
    /// An HTTP GET answers 2xx or 3xx.
    Http {
        host: String,
        port: u16,
        path: String,
    },
}

/// A readiness probe: the agent reports the task ready once it passes, and
/// fails the task with class `warm-up` if it does not within `warmup_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Probe {
    pub check: ProbeCheck,
    pub warmup_ms: u64,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

impl JobSpec {
    /// Fills defaults so that two specs that mean the same compare equal
    /// (the idempotency check compares normalised specs).
    pub fn normalized(mut self) -> Self {
        if self.count == 0 {
            self.count = 1;
        }
        if self.max_attempts == 0 {
            self.max_attempts = DEFAULT_MAX_ATTEMPTS;
        }
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobState {
    Pending,
    Running,
    Complete,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Complete | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    Pending,
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttemptState {
    Assigned,
    Running,
    Succeeded,
    Failed,
    Lost,
    Cancelled,
}

impl AttemptState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Lost => "lost",
            Self::Cancelled => "cancelled",
        }
    }
}

impl AttemptState {
    pub fn is_live(self) -> bool {
        matches!(self, Self::Assigned | Self::Running)
    }
}

/// Why an attempt did not succeed: the line between "the host" and "my job".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureClass {
    /// The task itself failed: non-zero exit, killed by a signal, could not be spawned.
    Workload,
    /// The task ran past its timeout and was killed.
    Timeout,
    /// The host failed the task: node lost, agent error.
    Infra,
    /// Cancelled by a user (or a drain deadline).
    Cancelled,
    /// A service task never became ready within its probe's warm-up window.
    WarmUp,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Timeout => "timeout",
            Self::Infra => "infra",
            Self::Cancelled => "cancelled",
            Self::WarmUp => "warm-up",
        }
    }
}

/// The fencing token of an attempt: results are accepted only for the
/// current attempt of a task, and only from the node it was assigned to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptRef {
    pub job_id: JobId,
    pub task: u32,
    pub attempt: u32,
}

impl std::fmt::Display for AttemptRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}#{}", self.job_id, self.task, self.attempt)
    }
}

/// How an attempt ended, as its agent reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Exit {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// `None` for success.
    pub failure: Option<FailureClass>,
    pub message: String,
    /// The last bytes of output (bounded by `limits::MAX_OUTPUT_TAIL_BYTES`).
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// What the agent saw (a readiness probe's command and last output).
    #[serde(default)]
    pub diagnostics: String,
    /// For an infra failure: the node event behind it (an agent restart, a
    /// lapsed lease), the same for every attempt that event took down.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub infra_event: String,
}

/// One try at running a task on one node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub node_id: NodeId,
    pub state: AttemptState,
    pub assigned_at_ms: u64,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    /// Set when the job was cancelled while this attempt was live: the
    /// node is told to kill it, and it stays live until the node reports.
    pub cancel_requested: bool,
    /// Stopped because its node's drain deadline passed: the task is
    /// rescheduled elsewhere without counting a failure.
    pub drained: bool,
    pub exit: Exit,
    /// The GPUs (node-local indices) the attempt holds while live.
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// When its readiness probe first passed; 0: no probe or not yet.
    #[serde(default)]
    pub ready_at_ms: u64,
    /// The readiness probe's report when it passed.
    #[serde(default)]
    pub diagnostics: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Task {
    pub index: u32,
    pub state: TaskState,
    pub attempts: Vec<Attempt>,
    /// Retry backoff: not placed before this time.
    pub not_before_ms: u64,
    /// Failures that consume the job's `max_attempts`.
    pub workload_failures: u32,
    /// Host failures, retried without consuming `max_attempts` (bounded separately).
    pub infra_failures: u32,
    /// Why the task ended failed.
    pub failure_reason: String,
}

impl Task {
    /// The attempt that may still report: the last one, while live.
    pub fn live_attempt(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.state.is_live())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub pending: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    /// Position in submission order, assigned by apply.
    pub seq: u64,
    pub spec: JobSpec,
    pub state: JobState,
    pub submitted_at_ms: u64,
    pub updated_at_ms: u64,
    /// The Raft log index of the entry that created this job.
    pub create_index: u64,
    /// The Raft log index of the entry that last changed this job.
    pub modify_index: u64,
    pub cancel_reason: String,
    pub tasks: Vec<Task>,
    /// The `traceparent` the job's spans descend from ("" if none).
    #[serde(default)]
    pub trace_parent: String,
}

impl Job {
    pub fn task_counts(&self) -> TaskCounts {
        let mut c = TaskCounts::default();
        for t in &self.tasks {
            match t.state {
                TaskState::Pending => c.pending += 1,
                TaskState::Assigned | TaskState::Running => c.running += 1,
                TaskState::Succeeded => c.succeeded += 1,
                TaskState::Failed => c.failed += 1,
                TaskState::Cancelled => c.cancelled += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A spec is written without its default-valued fields and reads back as
    // the full spec; so does one with every field set.
    #[test]
    fn t10_a_spec_is_written_without_default_fields_and_reads_back_whole() {
        let full = JobSpec {
            argv: vec!["/bin/true".into()],
            max_attempts: 1,
            resources: Resources {
                cpu_millis: 500,
                ..Resources::default()
            },
            ..JobSpec::default()
        };
        let compact = r#"{"argv":["/bin/true"],"resources":{"cpu_millis":500},"max_attempts":1}"#;
        let read: JobSpec = serde_json::from_str(compact).unwrap();
        assert_eq!(read, full);
        let round: JobSpec = serde_json::from_slice(&serde_json::to_vec(&full).unwrap()).unwrap();
        assert_eq!(round, full);
        // Written without its default-valued fields.
        assert_eq!(serde_json::to_string(&full).unwrap(), compact);
        // A spec with every field set is written and read back whole.
        let every = JobSpec {
            name: "n".into(),
            argv: vec!["a".into()],
            env: [("K".to_owned(), "V".to_owned())].into(),
            working_dir: "/w".into(),
            resources: Resources {
                cpu_millis: 1,
                memory_mib: 2,
                gpus: 3,
            },
            constraints: [("zone".to_owned(), "a".to_owned())].into(),
            count: 4,
            priority: -5,
            timeout_ms: 6,
            max_attempts: 7,
            idempotency_key: "k".into(),
            shell: true,
            spread: true,
            gpu_model: "H200".into(),
            gpu_min_memory_mib: 8,
            placement: PlacementPolicy::Strict,
            readiness: Some(Probe {
                check: ProbeCheck::Tcp {
                    host: "h".into(),
                    port: 9,
                },
                warmup_ms: 10,
                interval_ms: 11,
                timeout_ms: 12,
            }),
            user: "svc".into(),
            retention_ms: Some(13),
        };
        let back: JobSpec = serde_json::from_slice(&serde_json::to_vec(&every).unwrap()).unwrap();
        assert_eq!(back, every);
    }
}
