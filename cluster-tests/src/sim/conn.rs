//! An agent's stream to a replica over the simulated network, as a gRPC
//! stream over TCP behaves: opening it (the hello and the session's
//! registration) is one request that may be lost or time out; after that
//! messages arrive in order, each after its drawn delay; one lost on the way
//! arrives later (a retransmit), and across a cut the stream stalls until
//! the cut heals. It breaks when the replica crashes or either end drops it.
//! The replica's side is gantry-server's own `serve_agent`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gantry_proto::v1::{AgentMessage, ServerMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;

use super::net::{Endpoint, Net};
use super::replica::Replica;
use super::spawn;

/// How long a lost message waits before it is sent again.
const RETRANSMIT: Duration = Duration::from_millis(200);
/// How long opening a stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// The agent's end of an open stream.
pub struct Conn {
    tx: mpsc::UnboundedSender<(Instant, AgentMessage)>,
    pub rx: mpsc::UnboundedReceiver<Result<ServerMessage, Status>>,
}

impl Conn {
    /// Sends `m`; false once the stream is gone.
    pub fn send(&self, m: AgentMessage) -> bool {
        self.tx.send((Instant::now(), m)).is_ok()
    }
}

/// Opens a stream from `agent` to replica `to`, sending `hello` first.
pub async fn open(
    net: &Net,
    agent: Endpoint,
    to: u64,
    hello: AgentMessage,
) -> Result<Conn, String> {
    let (in_tx, in_rx) = mpsc::unbounded_channel::<Result<AgentMessage, Status>>();
    let _ = in_tx.send(Ok(hello));
    let inbound: gantry_server::AgentInbound =
        Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(in_rx));
    let opened = net
        .call(agent, to, OPEN_TIMEOUT, |r| async move {
            let served = gantry_server::serve_agent(r.server().clone(), None, inbound).await;
            served.map(|outbound| (r, outbound))
        })
        .await
        .map_err(|e| e.to_string())?;
    // Dropping `in_tx` on failure ends the inbound stream: a session the
    // replica registered for a stream the agent never got ends too.
    let (replica, mut outbound) = opened.map_err(|s| s.message().to_owned())?;

    let (tx, up_rx) = mpsc::unbounded_channel::<(Instant, AgentMessage)>();
    let (down_tx, rx) = mpsc::unbounded_channel();
    // Agent → replica.
    spawn(pump(net.clone(), agent, replica.clone(), up_rx, move |m| {
        in_tx.send(Ok(m)).is_ok()
    }));
    // Replica → agent: taken off the replica's stream as soon as it is sent.
    let (sent_tx, sent_rx) = mpsc::unbounded_channel();
    spawn(async move {
        while let Some(m) = outbound.next().await {
            if sent_tx.send((Instant::now(), m)).is_err() {
                return;
            }
        }
    });
    spawn(pump_back(net.clone(), agent, replica, sent_rx, down_tx));
    Ok(Conn { tx, rx })
}

/// Whether `replica` is still the one up under its id (not crashed).
async fn alive(net: &Net, replica: &Arc<Replica>) -> bool {
    net.replica(replica.id)
        .await
        .is_some_and(|r| Arc::ptr_eq(&r, replica))
}

/// When a message sent at `sent` from `from` arrives at `to`, in order after `last`.
async fn arrival(
    net: &Net,
    from: Endpoint,
    to: Endpoint,
    mut sent: Instant,
    last: Instant,
) -> Instant {
    loop {
        match net.route(from, to).await {
            Some(delay) => return (sent + delay).max(last),
            None => {
                sent = sent.max(Instant::now()) + RETRANSMIT;
                tokio::time::sleep_until(sent).await;
            }
        }
    }
}

async fn pump(
    net: Net,
    agent: Endpoint,
    replica: Arc<Replica>,
    mut rx: mpsc::UnboundedReceiver<(Instant, AgentMessage)>,
    deliver: impl Fn(AgentMessage) -> bool,
) {
    let mut last = Instant::now();
    while let Some((sent, m)) = rx.recv().await {
        last = arrival(&net, agent, replica.id, sent, last).await;
        tokio::time::sleep_until(last).await;
        if !alive(&net, &replica).await || !deliver(m) {
            return;
        }
    }
}

async fn pump_back(
    net: Net,
    agent: Endpoint,
    replica: Arc<Replica>,
    mut rx: mpsc::UnboundedReceiver<(Instant, Result<ServerMessage, Status>)>,
    to_agent: mpsc::UnboundedSender<Result<ServerMessage, Status>>,
) {
    let mut last = Instant::now();
    while let Some((sent, m)) = rx.recv().await {
        if !alive(&net, &replica).await {
            let _ = to_agent.send(Err(Status::unavailable("the replica crashed")));
            return;
        }
        last = arrival(&net, replica.id, agent, sent, last).await;
        tokio::time::sleep_until(last).await;
        if to_agent.send(m).is_err() {
            return;
        }
    }
    // The replica ended the stream.
    let _ = to_agent.send(Err(Status::unavailable("stream closed")));
}
