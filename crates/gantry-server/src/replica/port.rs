//! The replica's port to its peers: the one part of a replica that differs
//! between production (gRPC over the network, [`crate::raft::peers::Peers`])
//! and the deterministic simulation (its simulated network). Everything a
//! replica decides is written once, over this.

use gantry_core::Command;
use gantry_proto::internal::v1::{LocalStatusResponse, SessionsReport, SessionsReportAck};
use gantry_store::ReplicaId;
use tokio::time::Instant;
use tonic::Status;

use crate::replica::ForwardReply;

/// What a replica asks of another, by id and address. A peer that cannot be
/// reached answers UNAVAILABLE (the caller looks for the leader again);
/// every other status is the peer's own answer.
#[tonic::async_trait]
pub trait PeerPort: Send + Sync + 'static {
    /// Asks the leader to commit `cmd` (the leader runs
    /// [`crate::Replica::propose_forwarded`]).
    async fn propose(
        &self,
        leader: ReplicaId,
        addr: &str,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<ForwardReply, Status>;

    /// Asks the leader for a read index ([`crate::Replica::serve_read_index`]).
    async fn read_index(
        &self,
        leader: ReplicaId,
        addr: &str,
        deadline: Instant,
    ) -> Result<u64, Status>;

    /// Tells the leader which sessions this replica holds
    /// ([`crate::Replica::accept_sessions_report`]).
    async fn report_sessions(
        &self,
        leader: ReplicaId,
        addr: &str,
        report: SessionsReport,
        deadline: Instant,
    ) -> Result<SessionsReportAck, Status>;

    /// A peer's own view of itself ([`crate::Replica::local_status`]).
    async fn local_status(
        &self,
        peer: ReplicaId,
        addr: &str,
        deadline: Instant,
    ) -> Result<LocalStatusResponse, Status>;
}
