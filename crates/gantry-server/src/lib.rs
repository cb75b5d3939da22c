//! A Gantry replica (`gantry server`): the Raft node on sled storage, the
//! replica-to-replica service (Raft RPCs, forwarded writes, read index), and
//! the public job and cluster services. Every replica serves every public
//! call: writes are forwarded to the leader by the replica itself, reads are
//! linearizable through a read index unless the caller asks for a stale read.

mod agents;
mod api;
mod app;
mod leader;
pub mod ops;
pub mod plant;
mod raft;
mod replica;

pub use api::jobs::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use app::{Failed, ServerHandle, StartError, Stopped, start, start_on};
pub use ops::config::{
    AdmissionLimits, AdmissionSettings, ConfigError, Peers, RaftSettings, RaftTimings,
    ServerConfig, ServerSettings, parse_peers, parse_retention,
};
pub use raft::peers::Peers as PeerChannels;
pub use replica::port::PeerPort;
pub use replica::{ForwardError, ForwardReply, Parts, Replica};

// The replica's own parts the deterministic simulation runs (invariant 10).
pub use agents::sessions::{Liveness, SESSION_SILENCE_LIMIT};
pub use agents::stream::{AgentInbound, AgentOutbound, HEARTBEAT_INTERVAL, serve_agent};
pub use replica::clock::EntryClock;
