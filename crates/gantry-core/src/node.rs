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

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub status: NodeStatus,
    pub updated_at_ms: u64,
}
