//! Compute nodes, as the control plane knows them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::Resources;

/// A node's id: the name its agent registers with (and, with mTLS, its
/// certificate's name).
pub type NodeId = String;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeStatus {
    /// A replica holds the node's session.
    Ready,
    /// No replica has held its session for the grace period.
    Lost,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Lost => "lost",
        }
    }
}

/// Whether the scheduler may place new tasks on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Eligibility {
    Eligible,
    /// No new tasks; running ones carry on.
    Cordoned,
    /// No new tasks; running ones are cancelled and rescheduled at the deadline.
    Draining {
        deadline_ms: u64,
    },
}

/// The agent stream a replica holds for a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub replica: u64,
    pub opened_at_ms: u64,
}

/// One GPU of a node, as its agent registered it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Gpu {
    /// The node-local index: what `CUDA_VISIBLE_DEVICES` names.
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_mib: u64,
}

/// What an agent says about its node when it connects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    /// Most tasks the node runs at once.
    pub max_tasks: u32,
    pub agent_version: String,
    /// The GPUs behind `capacity.gpus`. Added later: older entries decode
    /// with none, and then the node's GPUs are indices 0..capacity.gpus.
    #[serde(default)]
    pub gpus: Vec<Gpu>,
}

impl NodeInfo {
    /// The node's GPUs: the registered list, or anonymous indices for a
    /// node that registered only a count.
    pub fn gpu_list(&self) -> Vec<Gpu> {
        if self.gpus.is_empty() {
            (0..self.capacity.gpus)
                .map(|index| Gpu {
                    index,
                    ..Gpu::default()
                })
                .collect()
        } else {
            self.gpus.clone()
        }
    }
}

/// A health check that failed, as the agent reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FailingCheck {
    pub name: String,
    pub detail: String,
}

/// The node's health verdict. Only changes reach the log: a new verdict or
/// a different set of failing checks, not every report.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Health {
    /// 0-100: the share of the agent's checks that passed.
    pub score: u32,
    pub healthy: bool,
    pub failing: Vec<FailingCheck>,
    /// When the report that changed the verdict was made.
    pub checked_at_ms: u64,
}

impl Default for Health {
    /// A node whose agent reports no health (an older agent) counts as healthy.
    fn default() -> Self {
        Self {
            score: 100,
            healthy: true,
            failing: Vec::new(),
            checked_at_ms: 0,
        }
    }
}

impl Health {
    /// Whether `other` says something different enough to write down.
    pub fn differs(&self, other: &Health) -> bool {
        self.healthy != other.healthy
            || self.score != other.score
            || self
                .failing
                .iter()
                .map(|c| &c.name)
                .ne(other.failing.iter().map(|c| &c.name))
    }
}

/// Per node: infra-class failures and successes, each decaying with a
/// half-life of [`REPUTATION_HALF_LIFE_MS`]. Workload-class failures never
/// count against a node. Kept in thousandths so apply stays integer-only
/// (and so deterministic on every replica).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reputation {
    pub infra_milli: u64,
    pub success_milli: u64,
    /// When the two counts were last decayed.
    pub updated_at_ms: u64,
    /// The event behind the last infra failure counted (rules ≥ 1): more
    /// failures from the same event do not count again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_infra_event: String,
}

/// An infra failure or a success counts half after this long.
pub const REPUTATION_HALF_LIFE_MS: u64 = 60 * 60 * 1000;
/// A node reaching this many (decayed) infra failures is blacklisted.
pub const BLACKLIST_INFRA_FAILURES: u64 = 3;
/// How long an automatic blacklist lasts (an operator's lasts until cleared).
pub const BLACKLIST_TTL_MS: u64 = 60 * 60 * 1000;
/// `strict` placement wants at least this many (decayed) successes...
pub const STRICT_MIN_SUCCESSES: u64 = 1;
/// ...and at least this share of successes among successes and infra failures, in percent.
pub const STRICT_MIN_SUCCESS_PERCENT: u64 = 90;

/// `value` after `elapsed_ms` of exponential decay: whole half-lives are
/// exact shifts, the rest of one is the chord 1 - x/2 of 2^-x (at most 6 %
/// above the curve). Integer arithmetic only.
pub fn decay(value: u64, elapsed_ms: u64) -> u64 {
    let halvings = elapsed_ms / REPUTATION_HALF_LIFE_MS;
    if halvings >= 64 {
        return 0;
    }
    let v = value >> halvings;
    let rest = u128::from(elapsed_ms % REPUTATION_HALF_LIFE_MS);
    let cut = u128::from(v) * rest / (2 * u128::from(REPUTATION_HALF_LIFE_MS));
    v - cut as u64
}

impl Reputation {
    fn decay_to(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.updated_at_ms);
        self.infra_milli = decay(self.infra_milli, elapsed);
        self.success_milli = decay(self.success_milli, elapsed);
        self.updated_at_ms = self.updated_at_ms.max(now_ms);
    }

    pub fn record_infra_failure(&mut self, now_ms: u64) {
        self.decay_to(now_ms);
        self.infra_milli = self.infra_milli.saturating_add(1000);
    }

    pub fn record_success(&mut self, now_ms: u64) {
        self.decay_to(now_ms);
        self.success_milli = self.success_milli.saturating_add(1000);
    }

    /// Forgets the infra failures (an operator whitelisted the node).
    pub fn clear_infra_failures(&mut self, now_ms: u64) {
        self.decay_to(now_ms);
        self.infra_milli = 0;
    }

    /// (infra failures, successes) as of `now_ms`, in thousandths.
    pub fn at(&self, now_ms: u64) -> (u64, u64) {
        let elapsed = now_ms.saturating_sub(self.updated_at_ms);
        (
            decay(self.infra_milli, elapsed),
            decay(self.success_milli, elapsed),
        )
    }

    /// The share of successes among successes and infra failures, 0 to 1;
    /// 0.5 for a node with no record either way.
    pub fn success_share(&self, now_ms: u64) -> f64 {
        let (infra, ok) = self.at(now_ms);
        if infra + ok == 0 {
            0.5
        } else {
            ok as f64 / (infra + ok) as f64
        }
    }

    /// What `strict` placement asks of a node's record.
    pub fn is_proven(&self, now_ms: u64) -> bool {
        let (infra, ok) = self.at(now_ms);
        ok >= STRICT_MIN_SUCCESSES * 1000 && ok * 100 >= STRICT_MIN_SUCCESS_PERCENT * (ok + infra)
    }
}

/// A node taken out of placement for its record or by an operator.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Blacklist {
    pub reason: String,
    pub since_ms: u64,
    /// 0: until an operator whitelists the node.
    pub until_ms: u64,
}

impl Blacklist {
    pub fn active_at(&self, now_ms: u64) -> bool {
        self.until_ms == 0 || now_ms < self.until_ms
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    pub info: NodeInfo,
    pub status: NodeStatus,
    pub eligibility: Eligibility,
    pub session: Option<Session>,
    pub registered_at_ms: u64,
    /// Last change of status or session (the log records changes, not heartbeats).
    pub updated_at_ms: u64,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub reputation: Reputation,
    #[serde(default)]
    pub blacklist: Option<Blacklist>,
    /// Draining because its agent is shutting down: undone when the agent
    /// connects again (an operator's cordon or drain is not).
    #[serde(default)]
    pub leaving: bool,
}

impl Node {
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// Ready, connected, eligible and not blacklisted at `now_ms`: may
    /// receive new tasks (health is a placement policy's call).
    pub fn accepts_work(&self, now_ms: u64) -> bool {
        self.status == NodeStatus::Ready
            && self.session.is_some()
            && self.eligibility == Eligibility::Eligible
            && !self.blacklisted_at(now_ms)
    }

    pub fn blacklisted_at(&self, now_ms: u64) -> bool {
        self.blacklist.as_ref().is_some_and(|b| b.active_at(now_ms))
    }
}
