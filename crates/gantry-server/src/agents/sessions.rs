//! Agent sessions: which streams this replica holds, and, on the leader,
//! when some replica last confirmed each node's session. Liveness lives in
//! memory only: heartbeats never reach the Raft log.

use std::collections::{BTreeMap, HashMap};

use gantry_proto::internal::v1::NodeTelemetry;
use tokio::sync::RwLock;
use tokio::time::Instant;

/// A session counts as held only while its agent keeps talking: a frozen
/// agent (or a half-open connection) stops being confirmed after this.
pub const SESSION_SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The agent streams this replica holds: node id → (session id, last message).
#[derive(Default)]
pub struct Sessions {
    held: RwLock<BTreeMap<String, (String, Instant, u64)>>,
    /// The latest health-check time and GPU telemetry per node, and whether
    /// it changed since the last report to the leader.
    telemetry: RwLock<HashMap<String, (NodeTelemetry, bool)>>,
    /// When a session report naming the node was sent to the leader that
    /// acknowledged it: the leader's own confirmation came no earlier.
    confirmed: RwLock<HashMap<String, Instant>>,
    /// Wakes the session report loop: a new session's agent waits for its
    /// first confirmation before it starts a task.
    pub report_now: tokio::sync::Notify,
}

impl Sessions {
    /// The leader took note of `nodes` from a report sent at `sent`.
    pub async fn confirmed(&self, nodes: impl IntoIterator<Item = String>, sent: Instant) {
        let mut all = self.confirmed.write().await;
        for n in nodes {
            let at = all.entry(n).or_insert(sent);
            *at = (*at).max(sent);
        }
    }

    /// How long ago the leader's latest known confirmation of `node` was.
    pub async fn confirmed_ago(&self, node_id: &str) -> Option<std::time::Duration> {
        self.confirmed
            .read()
            .await
            .get(node_id)
            .map(|at| at.elapsed())
    }

    /// `now_ms`: the replica's wall clock (see `Replica::now_ms`).
    pub async fn open(&self, node_id: &str, session_id: &str, now_ms: u64) {
        self.held.write().await.insert(
            node_id.to_owned(),
            (session_id.to_owned(), Instant::now(), now_ms),
        );
        self.report_now.notify_one();
    }

    /// Records that the agent spoke (any message, heartbeats included).
    pub async fn touch(&self, node_id: &str, session_id: &str, now_ms: u64) {
        if let Some((s, seen, seen_ms)) = self.held.write().await.get_mut(node_id)
            && s == session_id
        {
            *seen = Instant::now();
            *seen_ms = now_ms;
        }
    }

    /// Forgets the session unless a newer one for the node replaced it.
    pub async fn close(&self, node_id: &str, session_id: &str) {
        let mut held = self.held.write().await;
        if held.get(node_id).is_some_and(|(s, _, _)| s == session_id) {
            held.remove(node_id);
            self.telemetry.write().await.remove(node_id);
            self.confirmed.write().await.remove(node_id);
        }
    }

    /// Keeps a node's latest check time and GPU telemetry for the leader.
    /// A `checked_at_ms` of 0 (a heartbeat without a new report) keeps the last one.
    pub async fn set_telemetry(&self, mut t: NodeTelemetry) {
        let mut all = self.telemetry.write().await;
        if t.checked_at_ms == 0
            && let Some((old, _)) = all.get(&t.node_id)
        {
            t.checked_at_ms = old.checked_at_ms;
        }
        let changed = all.get(&t.node_id).is_none_or(|(old, _)| *old != t);
        if changed {
            all.insert(t.node_id.clone(), (t, true));
        }
    }

    /// Telemetry that changed since the last call (all of it with `all`,
    /// for a leader that has not heard from this replica before).
    pub async fn take_telemetry(&self, all: bool) -> Vec<NodeTelemetry> {
        let mut map = self.telemetry.write().await;
        map.values_mut()
            .filter(|(_, dirty)| all || *dirty)
            .map(|(t, dirty)| {
                *dirty = false;
                t.clone()
            })
            .collect()
    }

    /// Nodes whose agents spoke recently, with when they last did (ms since the epoch).
    pub async fn nodes(&self) -> Vec<(String, u64)> {
        let now = Instant::now();
        self.held
            .read()
            .await
            .iter()
            .filter(|(_, (_, seen, _))| now.duration_since(*seen) <= SESSION_SILENCE_LIMIT)
            .map(|(node, (_, _, seen_ms))| (node.clone(), *seen_ms))
            .collect()
    }

    pub async fn count(&self) -> usize {
        self.held.read().await.len()
    }
}

/// On the leader: when a replica last said it holds each node's session,
/// and when that node's agent last spoke.
#[derive(Default)]
pub struct Liveness {
    confirmed: RwLock<HashMap<String, Instant>>,
    last_seen_ms: RwLock<HashMap<String, u64>>,
    telemetry: RwLock<HashMap<String, NodeTelemetry>>,
    /// Nodes this leader decided are lost, until the log says so: no
    /// report confirms them meanwhile, or an agent could get a fresh lease
    /// for tasks the cluster is about to run elsewhere.
    fencing: RwLock<std::collections::HashSet<String>>,
}

impl Liveness {
    /// Confirms the nodes a replica holds, except those being fenced or
    /// `lost` in the log: returns the ones not confirmed (the reporter
    /// gives their agents no lease from this report).
    pub async fn confirm(
        &self,
        nodes: impl IntoIterator<Item = (String, u64)>,
        lost: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let now = Instant::now();
        let mut confirmed = self.confirmed.write().await;
        let fencing = self.fencing.read().await;
        let mut seen = self.last_seen_ms.write().await;
        let mut refused = Vec::new();
        for (id, seen_ms) in nodes {
            let last = seen.entry(id.clone()).or_default();
            *last = (*last).max(seen_ms);
            if fencing.contains(&id) || lost(&id) {
                refused.push(id);
            } else if !crate::plant::planted(crate::plant::Plant::ForgetConfirmations) {
                confirmed.insert(id, now);
            }
        }
        refused
    }

    /// When each node's agent last spoke, as far as this leader heard.
    pub async fn last_seen_ms(&self) -> HashMap<String, u64> {
        self.last_seen_ms.read().await.clone()
    }

    pub async fn record_telemetry(&self, reports: impl IntoIterator<Item = NodeTelemetry>) {
        let mut all = self.telemetry.write().await;
        for t in reports {
            all.insert(t.node_id.clone(), t);
        }
    }

    /// The latest health-check time and GPU telemetry per node, as far as this leader heard.
    pub async fn telemetry(&self) -> HashMap<String, NodeTelemetry> {
        self.telemetry.read().await.clone()
    }

    /// Nodes among `ready` not confirmed for `grace`, or still being
    /// fenced (their loss not yet in the log). A node seen for the first
    /// time (e.g. by a new leader) gets a full grace period from now. The
    /// nodes returned are fenced: no report confirms them until
    /// [`Liveness::forget`] (their loss is applied) or a new term.
    pub async fn expired(&self, ready: &[String], grace: std::time::Duration) -> Vec<String> {
        let now = Instant::now();
        // Same lock order as `confirm`: a report is taken in wholly before
        // the decision or refused after it.
        let mut confirmed = self.confirmed.write().await;
        let mut fencing = self.fencing.write().await;
        // No longer ready: the loss reached the log after all (a write
        // that timed out but committed). Its reconnect starts afresh.
        fencing.retain(|id| {
            let pending = ready.contains(id);
            if !pending {
                confirmed.remove(id);
            }
            pending
        });
        let lost: Vec<String> = ready
            .iter()
            .filter(|id| {
                let seen = *confirmed.entry((*id).clone()).or_insert(now);
                fencing.contains(*id) || now.duration_since(seen) > grace
            })
            .cloned()
            .collect();
        fencing.extend(lost.iter().cloned());
        lost
    }

    /// Forgets nodes whose loss the log now holds, so a reconnect starts a
    /// fresh period (the log's `lost` keeps them unconfirmed until then).
    pub async fn forget(&self, node_ids: &[String]) {
        let mut confirmed = self.confirmed.write().await;
        let mut fencing = self.fencing.write().await;
        for id in node_ids {
            confirmed.remove(id);
            fencing.remove(id);
        }
    }

    /// The leader did not run for `stalled` (starved of CPU, paused): that
    /// time does not count against any node, as no replica could have
    /// confirmed a session with it meanwhile.
    pub async fn excuse(&self, stalled: std::time::Duration) {
        let now = Instant::now();
        for seen in self.confirmed.write().await.values_mut() {
            *seen = (*seen + stalled).min(now);
        }
    }

    /// Forgets everything: a new term of leadership starts from scratch.
    pub async fn reset(&self) {
        self.confirmed.write().await.clear();
        self.fencing.write().await.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Time the leader spent unable to run does not make nodes lost: after
    /// a stall as long as the grace, a node confirmed just before it has
    /// the rest of its grace still.
    #[tokio::test(start_paused = true)]
    async fn a_leaders_own_stall_is_excused() {
        let l = Liveness::default();
        let grace = Duration::from_secs(10);
        let ready = vec!["n1".to_owned()];
        l.confirm([("n1".to_owned(), 0)], |_| false).await;
        tokio::time::advance(Duration::from_secs(12)).await;
        l.excuse(Duration::from_secs(11)).await;
        assert!(l.expired(&ready, grace).await.is_empty());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(l.expired(&ready, grace).await, ready);
    }

    /// A report that reaches the leader after it decided a node is lost,
    /// but before the loss is in the log, confirms nothing for that node:
    /// its agent's lease must not be renewed for tasks about to run
    /// elsewhere. Nor does one about a node the log says is lost.
    #[tokio::test(start_paused = true)]
    async fn no_confirmation_between_a_loss_decision_and_its_entry() {
        let l = Liveness::default();
        let grace = Duration::from_secs(5);
        let ready = vec!["n1".to_owned(), "n2".to_owned()];
        let both = || [("n1".to_owned(), 0), ("n2".to_owned(), 0)];
        assert!(l.confirm(both(), |_| false).await.is_empty());
        tokio::time::advance(Duration::from_secs(6)).await;
        l.confirm([("n2".to_owned(), 0)], |_| false).await;
        assert_eq!(l.expired(&ready, grace).await, vec!["n1".to_owned()]);
        // The NodesLost entry is being written: n1's report is refused.
        assert_eq!(l.confirm(both(), |_| false).await, vec!["n1".to_owned()]);
        // Its write failed: the next round decides the same again.
        assert_eq!(l.expired(&ready, grace).await, vec!["n1".to_owned()]);
        // Applied: fencing ends, the log's own word keeps it unconfirmed.
        l.forget(&["n1".to_owned()]).await;
        let lost = |id: &str| id == "n1";
        assert_eq!(l.confirm(both(), lost).await, vec!["n1".to_owned()]);
        // Registered again: confirmed as any node.
        assert!(l.confirm(both(), |_| false).await.is_empty());
        assert!(l.expired(&ready, grace).await.is_empty());
    }
}
