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

/// What an agent says about its node when it connects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    /// Most tasks the node runs at once.
    pub max_tasks: u32,
    pub agent_version: String,
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
}

impl Node {
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// Ready, connected and eligible: may receive new tasks.
    pub fn accepts_work(&self) -> bool {
        self.status == NodeStatus::Ready
            && self.session.is_some()
            && self.eligibility == Eligibility::Eligible
    }
}
