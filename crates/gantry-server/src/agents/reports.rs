//! An agent's reports (started, ready, finished) on their way into the log:
//! queued per stream, proposed in batches, finished ones acknowledged to
//! the agent once committed.

use std::sync::Arc;
use std::time::Duration;

use gantry_core::{AttemptEvent, AttemptRef, AttemptReport, Command};
use gantry_proto::v1::Ack;
use gantry_proto::v1::server_message::Msg as ServerMsg;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::dispatch::Outbound;
use super::stream::{HEARTBEAT_INTERVAL, msg};
use crate::api::convert::token_to_api;
use crate::replica::Replica;

/// How often reports that keep failing to commit are mentioned in the log.
const REPORT_WARN_EVERY: Duration = Duration::from_secs(60);
/// The most reports proposed in one log entry.
const MAX_REPORT_BATCH: usize = 512;

/// Queues a report for the proposer. While the queue is full (the log is
/// slower than this agent's reports) the stream is not read, but the agent
/// just spoke: its session stays confirmed meanwhile, as the wait is this
/// replica's backlog, not the agent's silence. `false` once the proposer is gone.
pub async fn queue_report(
    replica: &Replica,
    node_id: &str,
    session_id: &str,
    reports_tx: &mpsc::Sender<(AttemptRef, AttemptEvent)>,
    report: (AttemptRef, AttemptEvent),
) -> bool {
    let report = match reports_tx.try_send(report) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(r)) => r,
    };
    let send = reports_tx.send(report);
    tokio::pin!(send);
    let mut keep_alive = tokio::time::interval(HEARTBEAT_INTERVAL);
    keep_alive.tick().await;
    loop {
        // Biased: a fixed order, which the simulation replays (tokio's random one it cannot).
        tokio::select! {
            biased;
            sent = &mut send => return sent.is_ok(),
            _ = keep_alive.tick() => replica.sessions.touch(node_id, session_id, replica.now_ms()).await,
        }
    }
}

/// Proposes the agent's reports in batches; acknowledges finished reports
/// once committed. A report that cannot be committed now is retried while
/// the stream lives; after that the agent re-sends it on reconnect.
pub async fn propose_reports(
    replica: Arc<Replica>,
    node_id: String,
    mut rx: mpsc::Receiver<(AttemptRef, AttemptEvent)>,
    tx: Outbound,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_REPORT_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let reports: Vec<AttemptReport> = batch
            .iter()
            .map(|(attempt, event)| AttemptReport {
                node_id: node_id.clone(),
                attempt: attempt.clone(),
                event: event.clone(),
            })
            .collect();
        let cmd = Command::ReportAttempts {
            now_ms: replica.now_ms(),
            reports,
        };
        // A span per finished attempt in its job's trace, until committed.
        let finished: Vec<&AttemptRef> = batch
            .iter()
            .filter(|(_, e)| matches!(e, AttemptEvent::Finished(_)))
            .map(|(a, _)| a)
            .collect();
        let _spans: Vec<tracing::Span> = replica
            .state
            .read(|s, _| {
                finished
                    .iter()
                    .filter_map(|a| {
                        let trace = &s.job(&a.job_id)?.trace_parent;
                        if trace.is_empty() {
                            return None;
                        }
                        let span = tracing::info_span!("result committed", job = %a.job_id, task = a.task, attempt = a.attempt);
                        gantry_telemetry::otel::set_parent(&span, trace);
                        Some(span)
                    })
                    .collect()
            })
            .await;
        // The first failure is logged, then one line a minute until they
        // commit: with no quorum, every session retries every 200 ms.
        let mut tries = 0u64;
        let mut warned = Instant::now();
        loop {
            let deadline = Instant::now() + replica.config.request_timeout();
            match replica.write(cmd.clone(), deadline).await {
                Ok(_) => {
                    if tries > 0 {
                        tracing::info!(node = %node_id, tries, "reports committed after retrying");
                    }
                    break;
                }
                Err(e) if !tx.is_closed() => {
                    tries += 1;
                    if tries == 1 || warned.elapsed() >= REPORT_WARN_EVERY {
                        warned = Instant::now();
                        tracing::warn!(node = %node_id, error = %e, tries, "reports not committed yet; retrying every 200 ms");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => return,
            }
        }
        for (attempt, event) in &batch {
            if matches!(event, AttemptEvent::Finished(_)) {
                let ack = Ack {
                    attempt: Some(token_to_api(attempt)),
                };
                let _ = tx.send_ack(msg(ServerMsg::Ack(ack))).await;
            }
        }
    }
}
