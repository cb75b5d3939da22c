//! The loop every replica runs to tell the leader which agent sessions it
//! holds; the leader's acknowledgement is what agents' leases come from.

use std::sync::Arc;

use gantry_proto::internal::v1::SessionsReport;

use crate::leader::SESSION_REPORT_INTERVAL;
use crate::replica::Replica;
use crate::replica::clock::now_ms;

/// Every replica: tell the leader which agent sessions this replica holds.
pub async fn report_sessions(replica: Arc<Replica>) {
    let mut tick = tokio::time::interval(SESSION_REPORT_INTERVAL);
    let mut reported_to: Option<u64> = None;
    loop {
        tokio::select! {
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
                let lost = replica.lost_nodes().await;
                let ids: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
                let refused = replica
                    .liveness
                    .confirm(nodes, |id| lost.contains(id))
                    .await;
                // As for the other replicas' reports: only with a quorum behind it.
                let deadline = sent + SESSION_REPORT_INTERVAL;
                if replica.serve_read_index(deadline).await.is_ok() {
                    let ids = ids.into_iter().filter(|id| !refused.contains(id));
                    replica.sessions.confirmed(ids, sent).await;
                }
                let telemetry = replica.sessions.take_telemetry(new_leader).await;
                replica.liveness.record_telemetry(telemetry).await;
            }
            Some((id, addr)) => {
                let sent_ms = now_ms();
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
                let sent = async {
                    let mut client = replica.peers.raft_client(&addr).await?;
                    let mut req = tonic::Request::new(report);
                    req.set_timeout(SESSION_REPORT_INTERVAL);
                    client.report_sessions(req).await
                };
                match sent.await {
                    Ok(ack) => {
                        let ack = ack.into_inner();
                        let ids = ids.into_iter().filter(|id| !ack.unconfirmed.contains(id));
                        replica.sessions.confirmed(ids, sent_at).await;
                        let leader_ms = ack.leader_now_ms;
                        if leader_ms > 0 {
                            replica.skew.record(sent_ms, now_ms(), leader_ms);
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
