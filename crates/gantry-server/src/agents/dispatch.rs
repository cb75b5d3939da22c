//! The per-session dispatcher: level-triggered, it diffs what the node
//! should run (its live attempts in the applied state) against what it has
//! told the agent, whenever an applied entry changed that node.
//!
//! One task per replica ([`wake_touched`]) follows the applied index and
//! wakes only the dispatchers of the nodes each entry touched (the state
//! keeps that list); with thousands of agents, waking every dispatcher on
//! every entry cost more than the work itself. As a backstop each
//! dispatcher also re-checks every [`RESYNC_EVERY`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gantry_core::{AttemptRef, JobSpec, NodeInfo, NodeStatus, Session};
use gantry_proto::v1::server_message::Msg as ServerMsg;
use gantry_proto::v1::{Assign, Cancel, ServerMessage};
use openraft::async_runtime::WatchReceiver;
use tokio::sync::{RwLock, mpsc, watch};
use tonic::Status;

use crate::api::convert::{spec_to_api, token_to_api};
use crate::replica::Replica;

/// What goes down one agent's stream.
pub type Outgoing = Result<ServerMessage, Status>;

/// The queue of messages towards one agent. Messages travel boxed: a tokio
/// queue allocates its slots 32 at a time, and an unboxed `Outgoing` is
/// about 480 bytes, so every held stream kept 15 KiB for a queue that is
/// almost always empty.
#[derive(Clone)]
pub struct Outbound {
    msgs: mpsc::Sender<Box<Outgoing>>,
    /// Acknowledgements travel apart, ahead of the rest: the replica that
    /// proposes an agent's reports must never wait for the agent to read its
    /// assignments, or an agent that writes before it reads (and a replica
    /// that reads its reports only as fast as it can acknowledge them)
    /// would wait on each other for ever.
    acks: mpsc::Sender<Box<Outgoing>>,
}

/// The agent's stream is gone.
#[derive(Debug)]
pub struct Closed;

/// Acknowledgements queued towards one agent. Each answers a report the agent
/// sent, so only an agent that stops reading and keeps reporting fills it;
/// then its reports wait.
pub const ACK_QUEUE: usize = 16_384;

impl Outbound {
    /// A queue of `capacity` messages (and one of [`ACK_QUEUE`]
    /// acknowledgements) and the stream that drains them, acknowledgements first.
    pub fn channel(
        capacity: usize,
    ) -> (
        Outbound,
        impl futures::Stream<Item = Outgoing> + Send + 'static,
    ) {
        let (msgs, mut msgs_rx) = mpsc::channel::<Box<Outgoing>>(capacity);
        let (acks, mut acks_rx) = mpsc::channel::<Box<Outgoing>>(ACK_QUEUE);
        let stream = futures::stream::poll_fn(move |cx| {
            use std::task::Poll;
            let acks_open = match acks_rx.poll_recv(cx) {
                Poll::Ready(Some(m)) => return Poll::Ready(Some(*m)),
                Poll::Ready(None) => false,
                Poll::Pending => true,
            };
            match msgs_rx.poll_recv(cx) {
                Poll::Ready(Some(m)) => Poll::Ready(Some(*m)),
                Poll::Ready(None) if !acks_open => Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            }
        });
        (Outbound { msgs, acks }, stream)
    }

    /// Queues a pong in the acknowledgements' lane, ahead of assignments
    /// (the agent times it to judge the network path), unless that is full.
    pub fn try_send_pong(&self, m: Outgoing) -> Result<(), Closed> {
        self.acks.try_send(Box::new(m)).map_err(|_| Closed)
    }

    /// Queues an acknowledgement; waits only when [`ACK_QUEUE`] are unread.
    pub async fn send_ack(&self, m: Outgoing) -> Result<(), Closed> {
        self.acks.send(Box::new(m)).await.map_err(|_| Closed)
    }

    /// Waits for room in the queue.
    pub async fn send(&self, m: Outgoing) -> Result<(), Closed> {
        self.msgs.send(Box::new(m)).await.map_err(|_| Closed)
    }

    /// Queues `m` unless the queue is full.
    #[cfg(test)]
    pub fn try_send(&self, m: Outgoing) -> Result<(), Closed> {
        self.msgs.try_send(Box::new(m)).map_err(|_| Closed)
    }

    pub fn is_closed(&self) -> bool {
        self.msgs.is_closed()
    }
}

/// How often a dispatcher re-checks its node without being woken.
pub const RESYNC_EVERY: Duration = Duration::from_secs(2);

/// One wake-up channel per node whose stream this replica holds (or held).
#[derive(Default)]
pub struct Wakeups {
    nodes: RwLock<HashMap<String, watch::Sender<u64>>>,
}

impl Wakeups {
    /// A receiver that changes whenever an entry touches `node_id`.
    pub async fn subscribe(&self, node_id: &str) -> watch::Receiver<u64> {
        self.nodes
            .write()
            .await
            .entry(node_id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    async fn wake(&self, nodes: Option<BTreeSet<String>>, index: u64) {
        let all = self.nodes.read().await;
        let bump = |tx: &watch::Sender<u64>| tx.send_modify(|v| *v = index);
        match nodes {
            Some(nodes) => nodes.iter().filter_map(|n| all.get(n)).for_each(bump),
            None => all.values().for_each(bump),
        }
    }
}

/// Follows the applied index and wakes the dispatchers of touched nodes.
pub async fn wake_touched(replica: Arc<Replica>) {
    let mut metrics = replica.raft.metrics();
    let mut seen = 0;
    loop {
        let (touched, applied) = replica
            .state
            .read(|s, applied| {
                let nodes = s
                    .nodes_touched_after(seen)
                    .map(|set| set.into_iter().map(str::to_owned).collect());
                (nodes, applied)
            })
            .await;
        if applied != seen {
            seen = applied;
            replica.wakeups.wake(touched, applied).await;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Why a dispatcher stopped.
#[derive(Debug)]
pub enum Ended {
    /// The agent's stream is gone.
    StreamClosed,
    /// A newer session for the node replaced this one (the agent reconnected elsewhere).
    Replaced,
    /// The node was marked lost while this stream was open.
    Lost,
    ShuttingDown,
}

pub struct Dispatcher {
    pub replica: Arc<Replica>,
    pub info: NodeInfo,
    pub session: Session,
    /// The agent's own list from its hello, used once to reconcile.
    pub agent_running: BTreeSet<AttemptRef>,
    pub tx: Outbound,
    sent: BTreeSet<AttemptRef>,
    cancels_sent: BTreeSet<AttemptRef>,
}

/// A live attempt on this node, with what its Assign needs if one is due.
struct LiveAttempt {
    r: AttemptRef,
    cancel_requested: bool,
    /// Only for attempts not yet sent (nor running on the agent already):
    /// copying every live attempt's spec on every wake-up was the largest
    /// cost of a dispatcher whose node runs thousands of tasks.
    assign: Option<ToAssign>,
}

struct ToAssign {
    spec: JobSpec,
    /// The job's trace.
    trace: String,
    gpus: Vec<u32>,
}

/// What the state says about this node, read in one go.
struct View {
    live: Vec<LiveAttempt>,
    status: Option<NodeStatus>,
    session_id: Option<String>,
}

impl Dispatcher {
    pub fn new(
        replica: Arc<Replica>,
        info: NodeInfo,
        session: Session,
        agent_running: BTreeSet<AttemptRef>,
        tx: Outbound,
    ) -> Self {
        Self {
            replica,
            info,
            session,
            agent_running,
            tx,
            sent: BTreeSet::new(),
            cancels_sent: BTreeSet::new(),
        }
    }

    /// Runs until the stream closes or the session is replaced.
    pub async fn run(mut self, opened_at_index: u64) -> Ended {
        // Until this replica has applied the session's own entry it may not
        // yet know assignments the agent already runs: reconcile only after.
        // Big futures that run now and then are boxed, so the idle
        // dispatcher (one per held stream) is small.
        let applied = Box::pin(
            self.replica
                .raft
                .wait(None)
                .applied_index_at_least(Some(opened_at_index), "session open applied"),
        )
        .await;
        if applied.is_err() {
            return Ended::ShuttingDown;
        }
        let mut woken = self.replica.wakeups.subscribe(&self.info.id).await;
        loop {
            woken.borrow_and_update();
            if let Err(ended) = Box::pin(self.sync()).await {
                // End this stream: the agent lives on another session now,
                // or reconnects and registers again. A stream never outlives
                // its node's loss: what was assigned on it may run
                // elsewhere now, and the agent drops what it has not started.
                let why = match ended {
                    Ended::Replaced => "a newer session for this node replaced this one",
                    Ended::Lost => {
                        tracing::warn!(node = %self.info.id, "node was marked lost while its agent is connected here (this replica or the agent was cut off from the leader): ending the stream, the agent registers again");
                        "the node was marked lost (no replica confirmed its session for the node grace): reconnect"
                    }
                    Ended::StreamClosed | Ended::ShuttingDown => return ended,
                };
                let _ = self.tx.send(Err(Status::aborted(why))).await;
                return ended;
            }
            // Biased: a fixed order, which the simulation replays (tokio's random one it cannot).
            tokio::select! {
                biased;
                changed = woken.changed() => {
                    if changed.is_err() {
                        return Ended::ShuttingDown;
                    }
                }
                () = tokio::time::sleep(RESYNC_EVERY) => {}
            }
        }
    }

    async fn send(&self, m: ServerMsg) -> Result<(), Ended> {
        self.tx
            .send(Ok(ServerMessage { msg: Some(m) }))
            .await
            .map_err(|_| Ended::StreamClosed)
    }

    async fn cancel(&self, r: &AttemptRef, reason: &str) -> Result<(), Ended> {
        self.send(ServerMsg::Cancel(Cancel {
            attempt: Some(token_to_api(r)),
            reason: reason.to_owned(),
        }))
        .await
    }

    async fn view(&self) -> View {
        let node_id = &self.info.id;
        self.replica
            .state
            .read(|s, _| View {
                live: s
                    .live_attempts(node_id)
                    .filter_map(|r| {
                        let job = s.job(&r.job_id)?;
                        let a = job.tasks.get(r.task as usize)?.attempts.last()?;
                        let due = !a.cancel_requested
                            && !self.sent.contains(r)
                            && !self.agent_running.contains(r);
                        Some(LiveAttempt {
                            r: r.clone(),
                            cancel_requested: a.cancel_requested,
                            assign: due.then(|| ToAssign {
                                spec: job.spec.clone(),
                                trace: job.trace_parent.clone(),
                                gpus: a.gpus.clone(),
                            }),
                        })
                    })
                    .collect(),
                status: s.node(node_id).map(|n| n.status),
                session_id: s
                    .node(node_id)
                    .and_then(|n| n.session.as_ref())
                    .map(|x| x.id.clone()),
            })
            .await
    }

    async fn sync(&mut self) -> Result<(), Ended> {
        let view = self.view().await;
        match &view.session_id {
            Some(id) if *id != self.session.id => return Err(Ended::Replaced),
            None if view.status == Some(NodeStatus::Lost) => return Err(Ended::Lost),
            _ => {}
        }
        let live: BTreeSet<&AttemptRef> = view.live.iter().map(|a| &a.r).collect();
        for stale in self.agent_running.iter().filter(|r| !live.contains(r)) {
            tracing::info!(node = %self.info.id, attempt = %stale, "agent runs an attempt not assigned to it; cancelling");
            self.cancel(stale, "not assigned to this node").await?;
        }
        // Sent earlier, no longer live: finished (a no-op for the agent) or
        // taken away (node lost, then rescheduled): make sure it stops.
        for gone in self.sent.iter().filter(|r| !live.contains(r)) {
            self.cancel(gone, "no longer assigned to this node").await?;
        }
        for LiveAttempt {
            r,
            cancel_requested,
            assign,
        } in &view.live
        {
            if *cancel_requested {
                if self.cancels_sent.insert(r.clone()) {
                    self.cancel(r, "job cancelled or node drained").await?;
                }
            } else if let Some(ToAssign { spec, trace, gpus }) = assign
                && !self.agent_running.contains(r)
                && self.sent.insert(r.clone())
            {
                // A span in the job's trace; the agent's run is its child.
                let span = tracing::info_span!("dispatch", job = %r.job_id, task = r.task, attempt = r.attempt, node = %self.info.id);
                gantry_telemetry::otel::set_parent(&span, trace);
                let traceparent = span.in_scope(gantry_telemetry::otel::traceparent);
                self.send(ServerMsg::Assign(Assign {
                    attempt: Some(token_to_api(r)),
                    spec: Some(spec_to_api(spec)),
                    traceparent,
                    gpus: gpus.clone(),
                }))
                .await?;
            }
        }
        let running = std::mem::take(&mut self.agent_running);
        self.sent
            .extend(running.into_iter().filter(|r| live.contains(r)));
        self.sent.retain(|r| live.contains(r));
        self.cancels_sent.retain(|r| live.contains(r));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use gantry_proto::v1::Ack;

    fn ack() -> Outgoing {
        Ok(ServerMessage {
            msg: Some(ServerMsg::Ack(Ack::default())),
        })
    }

    fn cancel() -> Outgoing {
        Ok(ServerMessage {
            msg: Some(ServerMsg::Cancel(Cancel::default())),
        })
    }

    /// An agent that does not read its assignments must not keep its
    /// reports from being acknowledged: acknowledgements queue apart and go
    /// out first.
    #[tokio::test]
    async fn acknowledgements_never_wait_behind_a_full_queue() {
        let (tx, stream) = Outbound::channel(2);
        tx.send(cancel()).await.unwrap();
        tx.send(cancel()).await.unwrap();
        assert!(tx.try_send(cancel()).is_err(), "the message queue is full");
        for _ in 0..100 {
            tokio::time::timeout(Duration::from_secs(5), tx.send_ack(ack()))
                .await
                .expect("an acknowledgement is queued while messages are full")
                .unwrap();
        }
        drop(tx);
        let kinds: Vec<&str> = stream
            .map(|m| match m.unwrap().msg {
                Some(ServerMsg::Ack(_)) => "ack",
                _ => "other",
            })
            .collect::<Vec<_>>()
            .await;
        assert_eq!(kinds.len(), 102);
        assert!(kinds[..100].iter().all(|k| *k == "ack"), "acks first");
        assert!(kinds[100..].iter().all(|k| *k == "other"));
    }
}
