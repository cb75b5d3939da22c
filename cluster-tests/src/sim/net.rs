//! The simulated network: every message between endpoints (replicas,
//! agents, clients) goes through [`Net::call`], which decides from the seeded
//! random source whether it is lost, how long it takes each way, and whether
//! a partition (directed, so one-way cuts work) or a crashed replica stops
//! it. Raft's RPCs use it through [`SimNetwork`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gantry_store::{Snapshot, Vote};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkV2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use super::SimConfig;
use super::replica::Replica;

/// An endpoint: replicas are 1..=N, agents and clients get ids above 1000.
pub type Endpoint = u64;

/// Why a message got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The target is down: refused at once, like a closed port.
    Refused,
    /// Lost on the way there or back, or cut by a partition: the caller
    /// waited out its timeout.
    TimedOut,
}

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused => f.write_str("connection refused"),
            Self::TimedOut => f.write_str("timed out"),
        }
    }
}

pub struct NetState {
    rng: StdRng,
    /// Replicas that are up, by id.
    up: BTreeMap<Endpoint, Arc<Replica>>,
    /// Directed cuts: messages from .0 to .1 are dropped.
    cut: BTreeSet<(Endpoint, Endpoint)>,
    pub loss: f64,
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    pub delivered: u64,
    pub dropped: u64,
}

/// The network; clones share it.
#[derive(Clone)]
pub struct Net(Arc<Mutex<NetState>>);

impl Net {
    pub fn new(seed: u64, loss: f64, min_delay_ms: u64, max_delay_ms: u64) -> Self {
        Net(Arc::new(Mutex::new(NetState {
            rng: StdRng::seed_from_u64(seed),
            up: BTreeMap::new(),
            cut: BTreeSet::new(),
            loss,
            min_delay_ms,
            max_delay_ms,
            delivered: 0,
            dropped: 0,
        })))
    }

    pub async fn state(&self) -> tokio::sync::MutexGuard<'_, NetState> {
        self.0.lock().await
    }

    pub async fn set_up(&self, id: Endpoint, replica: Option<Arc<Replica>>) {
        let mut s = self.0.lock().await;
        match replica {
            Some(r) => s.up.insert(id, r),
            None => s.up.remove(&id),
        };
    }

    pub async fn replica(&self, id: Endpoint) -> Option<Arc<Replica>> {
        self.0.lock().await.up.get(&id).cloned()
    }

    pub async fn up_replicas(&self) -> Vec<Arc<Replica>> {
        self.0.lock().await.up.values().cloned().collect()
    }

    /// Cuts messages from every endpoint in `from` to every one in `to`.
    pub async fn cut(&self, from: &[Endpoint], to: &[Endpoint]) {
        let mut s = self.0.lock().await;
        for a in from {
            for b in to {
                if a != b {
                    s.cut.insert((*a, *b));
                }
            }
        }
    }

    pub async fn heal(&self) {
        self.0.lock().await.cut.clear();
    }

    /// The fate of one message: `None` if lost or cut, else its delay.
    pub(super) async fn route(&self, from: Endpoint, to: Endpoint) -> Option<Duration> {
        let mut s = self.0.lock().await;
        let p = s.loss.clamp(0.0, 1.0);
        let lost = s.cut.contains(&(from, to)) || s.rng.random_bool(p);
        if lost {
            s.dropped += 1;
            return None;
        }
        s.delivered += 1;
        let (lo, hi) = (s.min_delay_ms, s.max_delay_ms.max(s.min_delay_ms));
        let d = s.rng.random_range(lo..=hi);
        Some(Duration::from_millis(d))
    }

    /// Sends a request from `from` to replica `to` and waits for the reply,
    /// at most `timeout`: `serve` runs on the target when the request
    /// arrives; the reply then travels back (and may be lost on the way).
    pub async fn call<T, F, Fut>(
        &self,
        from: Endpoint,
        to: Endpoint,
        timeout: Duration,
        serve: F,
    ) -> Result<T, NetError>
    where
        F: FnOnce(Arc<Replica>) -> Fut,
        Fut: Future<Output = T>,
    {
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let Some(there) = self.route(from, to).await else {
            tokio::time::sleep_until(deadline).await;
            return Err(NetError::TimedOut);
        };
        tokio::time::sleep(there.min(timeout)).await;
        let Some(target) = self.replica(to).await else {
            return Err(NetError::Refused);
        };
        let reply = match tokio::time::timeout_at(deadline, serve(target)).await {
            Ok(r) => r,
            Err(_) => return Err(NetError::TimedOut),
        };
        match self.route(to, from).await {
            Some(back) if tokio::time::Instant::now() + back <= deadline => {
                tokio::time::sleep(back).await;
                Ok(reply)
            }
            _ => {
                tokio::time::sleep_until(deadline).await;
                Err(NetError::TimedOut)
            }
        }
    }
}

/// openraft's network for one replica, over [`Net`].
#[derive(Clone)]
pub struct SimNetwork {
    pub net: Net,
    pub from: Endpoint,
}

pub struct SimPeer {
    net: Net,
    from: Endpoint,
    to: Endpoint,
}

impl RaftNetworkFactory<SimConfig> for SimNetwork {
    type Network = SimPeer;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> SimPeer {
        SimPeer {
            net: self.net.clone(),
            from: self.from,
            to: target,
        }
    }
}

fn rpc_err(e: NetError) -> RPCError<SimConfig> {
    match e {
        NetError::Refused => RPCError::Unreachable(Unreachable::from_string("connection refused")),
        NetError::TimedOut => RPCError::Network(NetworkError::from_string("timed out")),
    }
}

fn remote_err(e: impl std::fmt::Display) -> RPCError<SimConfig> {
    RPCError::Network(NetworkError::from_string(format!("refused: {e}")))
}

/// The shortest deadline for an append or vote, as in production.
const MIN_RPC_TIMEOUT: Duration = Duration::from_millis(500);

impl RaftNetworkV2<SimConfig> for SimPeer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<SimConfig>, RPCError<SimConfig>> {
        let timeout = option.hard_ttl().max(MIN_RPC_TIMEOUT);
        self.net
            .call(self.from, self.to, timeout, |r| async move {
                r.raft().append_entries(rpc).await
            })
            .await
            .map_err(rpc_err)?
            .map_err(remote_err)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<SimConfig>, RPCError<SimConfig>> {
        self.net
            .call(self.from, self.to, option.hard_ttl(), |r| async move {
                r.raft().vote(rpc).await
            })
            .await
            .map_err(rpc_err)?
            .map_err(remote_err)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<SimConfig>, RPCError<SimConfig>> {
        self.net
            .call(self.from, self.to, option.hard_ttl(), |r| async move {
                r.raft().pre_vote(rpc).await
            })
            .await
            .map_err(rpc_err)?
            .map_err(remote_err)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<SimConfig>, StreamingError<SimConfig>> {
        let send = self.net.call(
            self.from,
            self.to,
            Duration::from_secs(10),
            |r| async move { r.raft().install_full_snapshot(vote, snapshot).await },
        );
        tokio::select! {
            biased;
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => r
                .map_err(|e| StreamingError::from(rpc_err(e)))?
                .map_err(|e| StreamingError::from(remote_err(e))),
        }
    }
}
