//! `gantry.v1.AgentService.Connect`: one bidirectional stream per agent.
//!
//! The replica that holds a node's stream registers the session in the log,
//! pushes the node's assignments and cancellations as they are applied
//! (level-triggered: it diffs what the node should run against what it has
//! sent), and proposes the agent's reports in batches, acknowledging each
//! finished report once it is committed.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use gantry_core::{AttemptEvent, AttemptRef, Command, Session};
use gantry_proto::v1::agent_message::Msg as AgentMsg;
use gantry_proto::v1::agent_service_server::AgentService;
use gantry_proto::v1::server_message::Msg as ServerMsg;
use gantry_proto::v1::{
    AgentMessage, Heartbeat, LogChunk, OutputStream, Pong, ServerMessage, Welcome,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::reports::{propose_reports, queue_report};
use crate::agents::dispatch::{Dispatcher, Outbound};
use crate::agents::sessions::SESSION_SILENCE_LIMIT;
use crate::api::convert::{exit_from_api, health_from_api, node_info_from_hello, token_from_api};
use crate::ops::auth;
use crate::replica::Replica;

/// How often agents send heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued towards one agent; a slow agent slows its own dispatch.
const OUTBOUND_QUEUE: usize = 256;
/// Reports queued from one agent before its stream reads are paused.
const REPORT_QUEUE: usize = 1024;
/// Live output chunks longer than this are cut (agents send at most this much).
pub const MAX_OUTPUT_CHUNK_BYTES: usize = 64 * 1024;

/// Un-counts a stream when its session ends, however it ends.
struct StreamGuard {
    replica: Arc<Replica>,
    node: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let replica = self.replica.clone();
        let node = std::mem::take(&mut self.node);
        gantry_store::runtime::spawn(async move { replica.streams.close(&node).await });
    }
}

pub struct AgentApi {
    pub(crate) replica: Arc<Replica>,
}

pub fn msg(m: ServerMsg) -> Result<ServerMessage, Status> {
    Ok(ServerMessage { msg: Some(m) })
}

/// The messages one agent sends, as its stream delivers them.
pub type AgentInbound = Pin<Box<dyn Stream<Item = Result<AgentMessage, Status>> + Send>>;
/// What goes back to the agent.
pub type AgentOutbound = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    type ConnectStream = AgentOutbound;

    async fn connect(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let identity = auth::identity(&req);
        let inbound: AgentInbound = Box::pin(req.into_inner());
        serve_agent(self.replica.clone(), identity, inbound)
            .await
            .map(Response::new)
    }
}

/// One agent's stream, whatever carries it (gRPC in production, the
/// simulated network in the simulation): takes its hello, registers the
/// session and runs it; the stream returned is what goes to the agent.
/// `identity`: the caller's certificate, when authenticated.
pub async fn serve_agent(
    replica: Arc<Replica>,
    identity: Option<gantry_pki::Identity>,
    mut inbound: AgentInbound,
) -> Result<AgentOutbound, Status> {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.next()).await {
        Ok(Some(Ok(AgentMessage {
            msg: Some(AgentMsg::Hello(h)),
        }))) => h,
        Ok(Some(Err(s))) => return Err(s),
        Err(_) => return Err(Status::deadline_exceeded("no hello within 10s")),
        Ok(_) => {
            return Err(Status::invalid_argument(
                "the first message on the agent stream must be hello",
            ));
        }
    };
    let info = node_info_from_hello(&hello)?;
    if !replica.streams.open(&info.id).await {
        return Err(Status::resource_exhausted(format!(
            "node {} already has {} streams open on this replica",
            info.id,
            crate::api::ratelimit::MAX_STREAMS_PER_NODE
        )));
    }
    let counted = StreamGuard {
        replica: replica.clone(),
        node: info.id.clone(),
    };
    if let Some(id) = &identity
        && id.name != info.id
    {
        tracing::warn!(caller = %id, claimed = %info.id, "agent registering as another node: refused");
        return Err(Status::permission_denied(format!(
            "the certificate names node {:?}, the hello says {:?}: an agent registers only as itself",
            id.name, info.id
        )));
    }
    let node_id = info.id.clone();
    let session = Session {
        id: uuid::Builder::from_random_bytes(gantry_store::runtime::random_u128().to_le_bytes())
            .into_uuid()
            .to_string(),
        replica: replica.id,
        opened_at_ms: replica.now_ms(),
    };
    let deadline = Instant::now() + replica.config.request_timeout();
    let (_, index) = replica
        .write(
            Command::NodeSessionOpened {
                now_ms: replica.now_ms(),
                node: info.clone(),
                session: session.clone(),
                health: hello.health.as_ref().map(health_from_api),
            },
            deadline,
        )
        .await?;
    replica
        .sessions
        .open(&node_id, &session.id, replica.now_ms())
        .await;
    tracing::info!(node = %node_id, session = %session.id, "agent connected");

    let (tx, rx) = Outbound::channel(OUTBOUND_QUEUE);
    let welcome = Welcome {
        session_id: session.id.clone(),
        heartbeat_interval_ms: HEARTBEAT_INTERVAL.as_millis() as u64,
        replica_id: replica.id,
        node_grace_ms: replica.config.node_grace_ms,
    };
    let _ = tx.send(msg(ServerMsg::Welcome(welcome))).await;

    let running: BTreeSet<AttemptRef> = hello
        .running
        .into_iter()
        .filter_map(|t| token_from_api(Some(t)).ok())
        .collect();
    let (reports_tx, reports_rx) = mpsc::channel(REPORT_QUEUE);
    // Finished reports the agent could not get acknowledged before.
    for f in hello.unacknowledged {
        if let Ok(attempt) = token_from_api(f.attempt.clone()) {
            let event = AttemptEvent::Finished(exit_from_api(f));
            let _ = reports_tx.try_send((attempt, event));
        }
    }
    let dispatcher = Dispatcher::new(replica.clone(), info, session.clone(), running, tx.clone());
    let outbound = replica.until_stopped(rx);
    gantry_store::runtime::spawn(async move {
        // Counted for as long as the session runs.
        let _counted = counted;
        run_session(
            replica, node_id, session.id, index, dispatcher, inbound, tx, reports_tx, reports_rx,
        )
        .await;
    });
    Ok(Box::pin(outbound))
}

#[allow(clippy::too_many_arguments)]
async fn run_session(
    replica: Arc<Replica>,
    node_id: String,
    session_id: String,
    opened_at_index: u64,
    dispatcher: Dispatcher,
    mut inbound: AgentInbound,
    tx: Outbound,
    reports_tx: mpsc::Sender<(AttemptRef, AttemptEvent)>,
    reports_rx: mpsc::Receiver<(AttemptRef, AttemptEvent)>,
) {
    let dispatcher = gantry_store::runtime::spawn(dispatcher.run(opened_at_index));
    let proposer = gantry_store::runtime::spawn(propose_reports(
        replica.clone(),
        node_id.clone(),
        reports_rx,
        tx.clone(),
    ));
    let health_writer = HealthWriter::default();
    loop {
        // Heartbeats come every second: an agent silent for longer than the
        // session's silence limit while this replica waits to read is frozen
        // or cut off, and its session ends here (it is not registered again
        // until it reconnects and speaks). Time spent waiting on this
        // replica's own backlog does not count: the limit is on the read.
        let next = tokio::time::timeout(SESSION_SILENCE_LIMIT, inbound.next()).await;
        let m = match next {
            Ok(Some(Ok(m))) => m,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::info!(node = %node_id, error = %e, "agent stream broke");
                break;
            }
            Err(_) => {
                tracing::warn!(node = %node_id, silent_for = ?SESSION_SILENCE_LIMIT, "agent sent nothing, not even a heartbeat (frozen, or its network is gone): ending its session");
                break;
            }
        };
        replica
            .sessions
            .touch(&node_id, &session_id, replica.now_ms())
            .await;
        let report = match m.msg {
            Some(AgentMsg::Started(s)) => {
                token_from_api(s.attempt).map(|a| (a, AttemptEvent::Started))
            }
            Some(AgentMsg::Finished(f)) => token_from_api(f.attempt.clone())
                .map(|a| (a, AttemptEvent::Finished(exit_from_api(f)))),
            Some(AgentMsg::Output(mut o)) => {
                // The documented chunk size is enforced here, not trusted.
                o.data.truncate(MAX_OUTPUT_CHUNK_BYTES);
                if let Ok(attempt) = token_from_api(o.attempt) {
                    let stream = if o.stream == OutputStream::Stderr as i32 {
                        "stderr"
                    } else {
                        "stdout"
                    };
                    let chunk = LogChunk {
                        attempt: attempt.attempt,
                        stream: stream.into(),
                        data: o.data,
                        tail: false,
                    };
                    replica.output.push(&node_id, attempt, chunk).await;
                }
                continue;
            }
            Some(AgentMsg::Ready(r)) => token_from_api(r.attempt).map(|a| {
                let mut diagnostics = r.diagnostics;
                gantry_core::limits::truncate_tail(&mut diagnostics);
                (a, AttemptEvent::Ready { diagnostics })
            }),
            Some(AgentMsg::Leaving(l)) => {
                Box::pin(leaving(&replica, &node_id, &session_id, l.grace_ms)).await;
                continue;
            }
            Some(AgentMsg::Heartbeat(hb)) => {
                // Boxed, like the other rare big futures here: the session
                // task lives as long as the stream.
                Box::pin(heartbeat(
                    &replica,
                    &node_id,
                    &session_id,
                    hb,
                    &tx,
                    &health_writer,
                ))
                .await;
                continue;
            }
            Some(AgentMsg::Hello(_)) | None => {
                Err(Status::invalid_argument("unexpected message after hello"))
            }
        };
        match report {
            Ok(r) => {
                if matches!(r.1, AttemptEvent::Finished(_)) {
                    replica.output.finish(&node_id, r.0.clone()).await;
                }
                if !queue_report(&replica, &node_id, &session_id, &reports_tx, r).await {
                    break;
                }
            }
            Err(status) => {
                tracing::warn!(node = %node_id, error = %status, "bad message from agent; closing its stream");
                let _ = tx.send(Err(status)).await;
                break;
            }
        }
    }
    dispatcher.abort();
    health_writer.abort().await;
    // Let the proposer commit what was already received.
    drop(reports_tx);
    let _ = proposer.await;
    replica.sessions.close(&node_id, &session_id).await;
    let deadline = Instant::now() + replica.config.request_timeout();
    let closed = Command::NodeSessionClosed {
        now_ms: replica.now_ms(),
        node_id: node_id.clone(),
        session_id,
    };
    match replica.write(closed, deadline).await {
        Ok(_) => tracing::info!(node = %node_id, "agent disconnected"),
        Err(e) => tracing::warn!(node = %node_id, error = %e, "could not record the session's end"),
    }
}

/// The agent is shutting down: drain its node until the grace period ends
/// (the leader stops what still runs then, to run it elsewhere).
async fn leaving(replica: &Arc<Replica>, node_id: &str, session_id: &str, grace_ms: u64) {
    // A day at most: a typo must not keep a node draining for ever.
    let grace_ms = grace_ms.min(24 * 60 * 60 * 1000);
    let now = replica.now_ms();
    tracing::info!(node = %node_id, grace_ms, "agent shutting down: draining its node");
    let cmd = Command::NodeLeaving {
        now_ms: now,
        node_id: node_id.to_owned(),
        session_id: session_id.to_owned(),
        deadline_ms: now.saturating_add(grace_ms),
    };
    let deadline = Instant::now() + replica.config.request_timeout();
    if let Err(e) = replica.write(cmd, deadline).await {
        tracing::warn!(node = %node_id, error = %e, "could not record that the agent is leaving");
    }
}

/// At most one health verdict being written per stream: a newer report
/// waits for the next heartbeat instead of piling up writes.
#[derive(Default)]
struct HealthWriter(tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>);

impl HealthWriter {
    async fn abort(&self) {
        if let Some(h) = self.0.lock().await.take() {
            h.abort();
        }
    }
}

/// A heartbeat: answered with a pong (the agent measures the round trip),
/// its telemetry kept for the leader, and its health verdict written to the
/// log only when it differs from the one there.
async fn heartbeat(
    replica: &Arc<Replica>,
    node_id: &str,
    session_id: &str,
    hb: Heartbeat,
    tx: &Outbound,
    writer: &HealthWriter,
) {
    // Best effort: a full queue means the agent is behind; it gets the next one.
    let confirmed_ago_ms = replica
        .sessions
        .confirmed_ago(node_id)
        .await
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let _ = tx.try_send_pong(msg(ServerMsg::Pong(Pong {
        sent_at_ms: hb.sent_at_ms,
        confirmed_ago_ms,
    })));
    if hb.health.is_some() || !hb.gpus.is_empty() {
        let checked_at_ms = hb.health.as_ref().map(|r| r.checked_at_ms);
        replica
            .sessions
            .set_telemetry(telemetry(node_id, checked_at_ms, hb.gpus))
            .await;
    }
    let Some(report) = hb.health else {
        return;
    };
    let health = health_from_api(&report);
    let differs = replica
        .state
        .read(|s, _| s.node(node_id).is_some_and(|n| n.health.differs(&health)))
        .await;
    if !differs {
        return;
    }
    let mut slot = writer.0.lock().await;
    if slot.as_ref().is_some_and(|h| !h.is_finished()) {
        return;
    }
    if health.healthy {
        tracing::info!(node = %node_id, score = health.score, "node healthy");
    } else {
        let failing: Vec<&str> = health.failing.iter().map(|c| c.name.as_str()).collect();
        tracing::warn!(node = %node_id, score = health.score, ?failing, "node unhealthy: no new tasks go to it");
    }
    let cmd = Command::NodeHealth {
        now_ms: replica.now_ms(),
        node_id: node_id.to_owned(),
        session_id: session_id.to_owned(),
        health,
    };
    let replica = replica.clone();
    let node = node_id.to_owned();
    *slot = Some(gantry_store::runtime::spawn(async move {
        let deadline = Instant::now() + replica.config.request_timeout();
        if let Err(e) = replica.write(cmd, deadline).await {
            tracing::warn!(node = %node, error = %e, "could not record the node's health; the next report retries");
        }
    }));
}

fn telemetry(
    node_id: &str,
    checked_at_ms: Option<u64>,
    mut gpus: Vec<gantry_proto::v1::GpuTelemetry>,
) -> gantry_proto::internal::v1::NodeTelemetry {
    gpus.truncate(gantry_core::limits::MAX_GPUS as usize);
    for g in &mut gpus {
        gantry_core::limits::truncate_utf8(&mut g.uuid, gantry_core::limits::MAX_NAME_BYTES);
        gantry_core::limits::truncate_utf8(&mut g.model, gantry_core::limits::MAX_NAME_BYTES);
    }
    gantry_proto::internal::v1::NodeTelemetry {
        node_id: node_id.to_owned(),
        checked_at_ms: checked_at_ms.unwrap_or(0),
        gpus,
    }
}
