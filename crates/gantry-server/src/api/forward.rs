//! Public calls a follower hands to the leader as they are (cluster changes,
//! node listings); job writes go through `RaftService.Propose` instead.

use std::sync::Arc;

use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::replica::Replica;

/// Marks a request a replica forwarded to the leader, so it is never forwarded twice.
pub(crate) const FORWARDED: &str = "x-gantry-forwarded";

/// `msg` as a forwarded request, with what is left of the deadline.
pub(crate) fn forwarded<T>(msg: T, deadline: Instant) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(deadline.saturating_duration_since(Instant::now()));
    req.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    req
}

/// A channel to the leader when this replica is not it; `None` on the leader.
/// A request that was already forwarded once is refused instead of bouncing.
pub(crate) async fn leader_channel<T>(
    replica: &Arc<Replica>,
    req: &Request<T>,
    deadline: Instant,
) -> Result<Option<Channel>, Status> {
    let (leader, addr) = replica.leader(deadline).await?;
    if leader == replica.id {
        return Ok(None);
    }
    if req.metadata().contains_key(FORWARDED) {
        return Err(Status::unavailable(
            "leadership moved while the request was forwarded; retry",
        ));
    }
    Ok(Some(replica.peers.channel(&addr).await?))
}

/// `msg` as a reply to a write, with [`gantry_proto::LEADER_HINT`] when this replica does
/// not lead (the write went through the leader, so a leader is known).
pub(crate) fn write_reply<T>(replica: &Replica, msg: T) -> tonic::Response<T> {
    let mut resp = tonic::Response::new(msg);
    let hint = replica
        .known_leader()
        .filter(|(id, _)| *id != replica.id)
        .and_then(|(_, addr)| addr.parse().ok());
    if let Some(value) = hint {
        resp.metadata_mut().insert(gantry_proto::LEADER_HINT, value);
    }
    resp
}
