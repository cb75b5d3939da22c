//! The read path: a read-index barrier, so that a read served by any
//! replica is linearizable.

use tokio::time::Instant;
use tonic::{Code, Status};

use openraft::ReadPolicy;

use super::{RETRY_PAUSE, Replica, Try};

impl Replica {
    /// Returns once this replica has applied everything committed before the
    /// call began (a read-index read), so a read that follows is linearizable.
    pub async fn read_barrier(&self, deadline: Instant) -> Result<(), Status> {
        loop {
            let (leader, addr) = self.leader(deadline).await?;
            let index = if leader == self.id {
                match self.leader_read_index(deadline).await {
                    Ok(i) => i,
                    Err(Try::Again) => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                    Err(Try::Fail(s)) => return Err(s),
                }
            } else {
                let asked = self.port.read_index(leader, &addr, deadline);
                match tokio::time::timeout_at(deadline, asked).await {
                    Ok(Ok(i)) => i,
                    Ok(Err(s))
                        if s.code() == Code::Unavailable
                            || s.code() == Code::FailedPrecondition =>
                    {
                        if Instant::now() + RETRY_PAUSE >= deadline {
                            return Err(Status::unavailable(format!(
                                "could not confirm a read index with the leader: {}",
                                s.message()
                            )));
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                    Ok(Err(s)) => return Err(s),
                    Err(_) => {
                        return Err(Status::unavailable(
                            "the leader did not confirm a read index before the deadline",
                        ));
                    }
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            return self
                .raft
                .wait(Some(remaining))
                .applied_index_at_least(Some(index), "linearizable read")
                .await
                .map(|_| ())
                .map_err(|e| {
                    Status::unavailable(format!(
                        "this replica did not catch up to read index {index} in time: {e}"
                    ))
                });
        }
    }

    /// On the leader: the index a read must wait for, after confirming
    /// leadership with a quorum.
    async fn leader_read_index(&self, deadline: Instant) -> Result<u64, Try> {
        let read = self.raft.get_read_linearizer(ReadPolicy::ReadIndex);
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(l)) => Ok(l.read_log_id().index()),
            Ok(Err(e)) if e.forward_to_leader().is_some() => Err(Try::Again),
            Ok(Err(e)) => Err(Try::Fail(Status::unavailable(format!(
                "leadership could not be confirmed: {e}"
            )))),
            Err(_) => Err(Try::Fail(Status::unavailable(
                "leadership could not be confirmed with a quorum before the deadline",
            ))),
        }
    }

    /// Leader side of a follower's read-index request.
    pub async fn serve_read_index(&self, deadline: Instant) -> Result<u64, Status> {
        match self.leader_read_index(deadline).await {
            Ok(i) => Ok(i),
            Err(Try::Again) => Err(Status::failed_precondition("not the leader")),
            Err(Try::Fail(s)) => Err(s),
        }
    }
}
