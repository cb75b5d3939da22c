//! The loop every replica runs to tell the leader which agent sessions it
//! holds; the leader's acknowledgement is what agents' leases come from.

use std::sync::Arc;

use gantry_proto::internal::v1::{SessionsReport, SessionsReportAck};
use tonic::Status;

use crate::leader::SESSION_REPORT_INTERVAL;
use crate::replica::Replica;

/// Every replica: tell the leader which agent sessions this replica holds.
pub async fn report_sessions(replica: Arc<Replica>) {
    let mut tick = tokio::time::interval(SESSION_REPORT_INTERVAL);
    let mut reported_to: Option<u64> = None;
    loop {
        // Biased: a fixed order, which the simulation replays (tokio's random one it cannot).
        tokio::select! {
            biased;
            _ = tick.tick() => {}
            () = replica.sessions.report_now.notified() => {}
        }
        // Sent even with no sessions held: the answer measures this
        // replica's clock against the leader's.
        let nodes = replica.sessions.nodes().await;
        let leader = replica.known_leader();
        // A leader this replica has not reported to gets all the telemetry.
        let new_leader = leader.as_ref().map(|(id, _)| *id) != reported_to;
        reported_to = leader.as_ref().map(|(id, _)| *id);
        match leader {
            Some((id, _)) if id == replica.id => {
                replica.skew.set(0);
                let sent = tokio::time::Instant::now();
                let deadline = sent + SESSION_REPORT_INTERVAL;
                let ids: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
                let refused = match replica.lost_nodes(deadline).await {
                    Some(lost) => {
                        replica
                            .liveness
                            .confirm(nodes, |id| lost.contains(id))
                            .await
                    }
                    None => ids.clone(),
                };
                // As for the other replicas' reports: only with a quorum behind it.
                if replica.serve_read_index(deadline).await.is_ok() {
                    let ids = ids.into_iter().filter(|id| !refused.contains(id));
                    replica.sessions.confirmed(ids, sent).await;
                }
                let telemetry = replica.sessions.take_telemetry(new_leader).await;
                replica.liveness.record_telemetry(telemetry).await;
            }
            Some((id, addr)) => {
                let sent_ms = replica.now_ms();
                let sent_at = tokio::time::Instant::now();
                let ids: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
                let seen_ago_ms = nodes
                    .iter()
                    .map(|(_, seen)| sent_ms.saturating_sub(*seen))
                    .collect();
                let (node_ids, last_seen_ms) = nodes.into_iter().unzip();
                let report = SessionsReport {
                    replica: replica.id,
                    node_ids,
                    last_seen_ms,
                    telemetry: replica.sessions.take_telemetry(new_leader).await,
                    seen_ago_ms,
                };
                let deadline = sent_at + SESSION_REPORT_INTERVAL;
                let sent = replica.port.report_sessions(id, &addr, report, deadline);
                match tokio::time::timeout_at(deadline, sent)
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")))
                {
                    Ok(ack) => {
                        let ids = ids.into_iter().filter(|id| !ack.unconfirmed.contains(id));
                        replica.sessions.confirmed(ids, sent_at).await;
                        let leader_ms = ack.leader_now_ms;
                        if leader_ms > 0 {
                            replica.skew.record(sent_ms, replica.now_ms(), leader_ms);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(leader = id, error = %e, "session report not delivered");
                    }
                }
            }
            None => {}
        }
    }
}

impl Replica {
    /// On the leader: a replica's report of the sessions it holds. The
    /// nodes it names are confirmed (see [`crate::Liveness::confirm`]) and
    /// the answer says which were not, and this leader's clock.
    pub async fn accept_sessions_report(
        &self,
        report: SessionsReport,
    ) -> Result<SessionsReportAck, Status> {
        if !self.raft.is_leader() {
            return Err(Status::failed_precondition("not the leader"));
        }
        if report.node_ids.len() > 1_000_000 {
            return Err(Status::invalid_argument("too many node ids in one report"));
        }
        if report.telemetry.len() > 1_000_000 {
            return Err(Status::invalid_argument(
                "too many telemetry entries in one report",
            ));
        }
        // Ages by the reporter's clock, made times by this leader's: a
        // replica with a skewed clock does not move a node's last-seen time.
        // A replica from before ages sent its own clock's times.
        let now = self.now_ms();
        let seen: Vec<u64> = if report.seen_ago_ms.len() == report.node_ids.len() {
            report
                .seen_ago_ms
                .iter()
                .map(|ago| now.saturating_sub(*ago))
                .collect()
        } else {
            report.last_seen_ms.clone()
        };
        let seen = report
            .node_ids
            .into_iter()
            .zip(seen.into_iter().chain(std::iter::repeat(0)));
        let deadline = tokio::time::Instant::now() + SESSION_REPORT_INTERVAL;
        let Some(lost) = self.lost_nodes(deadline).await else {
            return Err(Status::unavailable(
                "this leader has not applied what earlier leaders committed yet: no session is confirmed until it has",
            ));
        };
        let unconfirmed = self.liveness.confirm(seen, |id| lost.contains(id)).await;
        self.liveness.record_telemetry(report.telemetry).await;
        // The reporter tells its agents their session is confirmed from this
        // ack: only a leader a quorum still follows may give it, or a deposed
        // leader could keep agents' leases alive after another one took over.
        self.serve_read_index(deadline).await?;
        Ok(SessionsReportAck {
            leader_now_ms: now,
            unconfirmed,
        })
    }
}
