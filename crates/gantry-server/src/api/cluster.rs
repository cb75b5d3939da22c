//! `gantry.v1.ClusterService`: status of every replica, and membership changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gantry_core::Retention;
use gantry_proto::internal::v1::LocalStatusRequest;
use gantry_proto::v1::cluster_service_client::ClusterServiceClient;
use gantry_proto::v1::cluster_service_server::ClusterService;
use gantry_proto::v1::{
    AddReplicaRequest, AddReplicaResponse, ClusterStatusRequest, ClusterStatusResponse,
    CollectGarbageRequest, CollectGarbageResponse, RemoveReplicaRequest, RemoveReplicaResponse,
    ReplicaStatus,
};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::{BasicNode, ChangeMembers};
use tonic::{Request, Response, Status};

use crate::api::deadline::deadline;
use crate::api::forward::{FORWARDED, forwarded, leader_channel};
use crate::ops::auth;
use crate::raft::internal::{local_status, state_digest};
use crate::replica::Replica;

/// How long Status waits for each replica's own answer.
const STATUS_PROBE_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Membership changes wait for a new replica to catch up, so they get longer.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ClusterApi {
    pub(crate) replica: Arc<Replica>,
}

// === impl ClusterApi ===

impl ClusterApi {
    async fn status(&self, with_digest: bool) -> ClusterStatusResponse {
        let (members, voters) = {
            let rx = self.replica.raft.metrics();
            let m = rx.borrow_watched();
            let membership = m.membership_config.membership();
            let members: BTreeMap<u64, String> = membership
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            (members, voters)
        };
        let probes = members.iter().map(|(id, addr)| {
            let (id, addr) = (*id, addr.clone());
            let voter = voters.contains(&id);
            async move {
                let mut status = ReplicaStatus {
                    id,
                    address: addr.clone(),
                    voter,
                    ..ReplicaStatus::default()
                };
                let local = if id == self.replica.id {
                    let mut l = local_status(&self.replica);
                    if with_digest {
                        (l.applied_index, l.state_digest) = state_digest(&self.replica).await;
                    }
                    Ok(l)
                } else {
                    self.probe(&addr, with_digest).await
                };
                match local {
                    Ok(l) => {
                        status.role = l.role;
                        status.term = l.term;
                        status.last_log_index = l.last_log_index;
                        status.applied_index = l.applied_index;
                        status.state_digest = l.state_digest;
                        status.clock_offset_ms = l.clock_offset_ms;
                        status.data_dir_free_bytes = l.data_dir_free_bytes;
                        status.nospace_alarm = l.nospace_alarm;
                    }
                    Err(e) => {
                        status.role = "unreachable".into();
                        status.error = e.message().to_owned();
                    }
                }
                status
            }
        });
        let replicas = futures::future::join_all(probes).await;
        let me = local_status(&self.replica);
        let (stale_reports, pending_tasks) = self
            .replica
            .state
            .read(|s, _| (s.stale_reports(), s.pending_count() as u64))
            .await;
        ClusterStatusResponse {
            leader_id: me.leader_id,
            term: me.term,
            replicas,
            answered_by: self.replica.id,
            stale_reports,
            pending_tasks,
        }
    }

    async fn probe(
        &self,
        addr: &str,
        with_digest: bool,
    ) -> Result<gantry_proto::internal::v1::LocalStatusResponse, Status> {
        let mut client = self.replica.peers.raft_client(addr).await?;
        let mut req = Request::new(LocalStatusRequest { with_digest });
        req.set_timeout(STATUS_PROBE_TIMEOUT);
        match tokio::time::timeout(STATUS_PROBE_TIMEOUT, client.local_status(req)).await {
            Ok(r) => Ok(r?.into_inner()),
            Err(_) => Err(Status::deadline_exceeded("no answer within 1s")),
        }
    }
}

/// Cluster changes come from clients, or from a replica forwarding a
/// client's (the table lets both roles through; a replica only forwards).
fn check_forwarded<T>(req: &Request<T>) -> Result<(), Status> {
    match auth::identity(req) {
        Some(id)
            if id.role == gantry_pki::Role::Server && !req.metadata().contains_key(FORWARDED) =>
        {
            Err(Status::permission_denied(format!(
                "a cluster change is not allowed for {id} unless it forwards a client's: it needs a client certificate"
            )))
        }
        _ => Ok(()),
    }
}

/// Leadership moving mid-change, or another change still in progress, is
/// transient: UNAVAILABLE, which clients retry. The rest is a refusal.
fn membership_error(
    e: openraft::errors::RaftError<
        gantry_store::TypeConfig,
        ClientWriteError<gantry_store::TypeConfig>,
    >,
) -> Status {
    use openraft::errors::{ChangeMembershipError, RaftError};
    match &e {
        RaftError::APIError(
            ClientWriteError::ForwardToLeader(_) | ClientWriteError::LogEntryDiscarded(_),
        ) => Status::unavailable(format!(
            "leadership changed during the membership change; retry: {e}"
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => Status::unavailable(format!(
            "another membership change is still in progress; retry: {e}"
        )),
        RaftError::Fatal(_) => Status::unavailable(format!("this replica stopped: {e}")),
        _ => Status::failed_precondition(format!("membership change refused: {e}")),
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    type SaveSnapshotStream = crate::api::snapshot::SnapshotStream;

    async fn save_snapshot(
        &self,
        req: Request<gantry_proto::v1::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        crate::api::snapshot::save(&self.replica, req).await
    }

    async fn restore_snapshot(
        &self,
        req: Request<tonic::Streaming<gantry_proto::v1::SnapshotData>>,
    ) -> Result<Response<gantry_proto::v1::RestoreSnapshotResponse>, Status> {
        crate::api::snapshot::restore(&self.replica, req).await
    }

    async fn collect_garbage(
        &self,
        req: Request<CollectGarbageRequest>,
    ) -> Result<Response<CollectGarbageResponse>, Status> {
        let deadline = deadline(&req, MEMBERSHIP_TIMEOUT);
        if let Some(ch) = leader_channel(&self.replica, &req, deadline).await? {
            return ClusterServiceClient::new(ch)
                .collect_garbage(forwarded(req.into_inner(), deadline))
                .await;
        }
        let rule = Retention {
            default_ms: self.replica.config.job_retention_ms(),
            older_than_ms: req.into_inner().older_than_ms,
        };
        tracing::info!(?rule, "garbage collection asked for");
        let done = crate::leader::gc::collect(&self.replica, rule, deadline).await?;
        Ok(Response::new(CollectGarbageResponse {
            collected: done.collected,
            remaining: done.remaining,
        }))
    }

    async fn status(
        &self,
        req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let with_digest = req.into_inner().with_digest;
        Ok(Response::new(ClusterApi::status(self, with_digest).await))
    }

    async fn add_replica(
        &self,
        req: Request<AddReplicaRequest>,
    ) -> Result<Response<AddReplicaResponse>, Status> {
        check_forwarded(&req)?;
        let deadline = deadline(&req, MEMBERSHIP_TIMEOUT);
        if let Some(ch) = leader_channel(&self.replica, &req, deadline).await? {
            return ClusterServiceClient::new(ch)
                .add_replica(forwarded(req.into_inner(), deadline))
                .await;
        }
        let AddReplicaRequest { id, address } = req.into_inner();
        if id == 0 {
            return Err(Status::invalid_argument("id: must be 1 or more"));
        }
        if address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(Status::invalid_argument(format!(
                "address: {address:?} is not HOST:PORT"
            )));
        }
        let is_voter = {
            let rx = self.replica.raft.metrics();
            let m = rx.borrow_watched();
            m.membership_config
                .membership()
                .voter_ids()
                .any(|v| v == id)
        };
        if is_voter {
            return Err(Status::already_exists(format!(
                "replica {id} is already a voter"
            )));
        }
        tracing::info!(id, %address, "adding replica: catching it up as a learner");
        let raft = &self.replica.raft;
        tokio::time::timeout_at(
            deadline,
            raft.add_learner(id, BasicNode::new(address), true),
        )
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "replica {id} did not catch up before the deadline: is it running and reachable?"
            ))
        })?
        .map_err(membership_error)?;
        let add = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        tokio::time::timeout_at(deadline, raft.change_membership(add, false))
            .await
            .map_err(|_| Status::deadline_exceeded("membership change not committed in time"))?
            .map_err(membership_error)?;
        tracing::info!(id, "replica added as a voter");
        Ok(Response::new(AddReplicaResponse {
            status: Some(ClusterApi::status(self, false).await),
        }))
    }

    async fn remove_replica(
        &self,
        req: Request<RemoveReplicaRequest>,
    ) -> Result<Response<RemoveReplicaResponse>, Status> {
        check_forwarded(&req)?;
        let deadline = deadline(&req, MEMBERSHIP_TIMEOUT);
        if let Some(ch) = leader_channel(&self.replica, &req, deadline).await? {
            return ClusterServiceClient::new(ch)
                .remove_replica(forwarded(req.into_inner(), deadline))
                .await;
        }
        let id = req.into_inner().id;
        let (known, voters) = {
            let rx = self.replica.raft.metrics();
            let m = rx.borrow_watched();
            let membership = m.membership_config.membership();
            (
                membership.get_node(&id).is_some(),
                membership.voter_ids().collect::<BTreeSet<_>>(),
            )
        };
        if !known {
            return Err(Status::not_found(format!("replica {id} is not a member")));
        }
        if voters.len() == 1 && voters.contains(&id) {
            return Err(Status::failed_precondition(
                "cannot remove the last voter: the cluster would have no quorum",
            ));
        }
        let raft = &self.replica.raft;
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        tokio::time::timeout_at(deadline, raft.change_membership(change, false))
            .await
            .map_err(|_| Status::deadline_exceeded("membership change not committed in time"))?
            .map_err(membership_error)?;
        tracing::info!(id, "replica removed");
        Ok(Response::new(RemoveReplicaResponse {
            status: Some(ClusterApi::status(self, false).await),
        }))
    }
}
