//! A Gantry replica (`gantry server`): the Raft node on sled storage, the
//! replica-to-replica service (Raft RPCs, forwarded writes, read index), and
//! the public job and cluster services. Every replica serves every public
//! call: writes are forwarded to the leader by the replica itself, reads are
//! linearizable through a read index unless the caller asks for a stale read.

mod admission;
mod agent_api;
mod app;
mod auth;
mod clock;
mod cluster;
mod commit_hold;
pub mod config;
mod convert;
mod deadline;
mod dispatch;
mod error;
mod forward;
mod group_commit;
mod grpc_metrics;
mod health;
mod internal;
mod jobs;
mod leader;
pub mod metrics;
mod network;
mod nodes_api;
mod output;
mod peers;
mod ratelimit;
mod reachability;
mod replica;
mod rules;
mod sessions;
mod snapshot_api;
mod watch;

pub use app::{Failed, ServerHandle, StartError, Stopped, start, start_on};
pub use config::{AdmissionLimits, ConfigError, RaftTimings, ServerConfig, parse_peers};
pub use jobs::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use replica::Replica;
