//! `gantry.v1.NodeService`: list nodes, cordon, uncordon, drain.

use std::sync::Arc;

use gantry_core::limits::validate_reason;
use gantry_core::{Command, Outcome};
use gantry_proto::internal::v1::NodeTelemetry;
use gantry_proto::v1::node_service_client::NodeServiceClient;
use gantry_proto::v1::node_service_server::NodeService;
use gantry_proto::v1::{
    ListNodesRequest, ListNodesResponse, SetBlacklistRequest, SetBlacklistResponse,
    SetEligibilityRequest, SetEligibilityResponse,
};
use tonic::{Request, Response, Status};

use crate::api::convert::{eligibility_from_api, node_to_api};
use crate::api::deadline::deadline;
use crate::api::forward::{forwarded, leader_channel};
use crate::replica::Replica;
use crate::replica::clock::now_ms;

pub struct NodeApi {
    pub(crate) replica: Arc<Replica>,
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let deadline = deadline(&req, self.replica.config.request_timeout());
        let on_leader = !req.get_ref().stale;
        if on_leader {
            // The leader knows when every agent last spoke: answer from there.
            if let Some(ch) = leader_channel(&self.replica, &req, deadline).await? {
                return NodeServiceClient::new(ch)
                    .list_nodes(forwarded(req.into_inner(), deadline))
                    .await;
            }
            self.replica.read_barrier(deadline).await?;
        }
        let now = now_ms();
        let mut nodes: Vec<gantry_proto::v1::Node> = self
            .replica
            .state
            .read(|s, _| {
                s.nodes()
                    .map(|n| node_to_api(n, &s.usage(n.id()), now))
                    .collect()
            })
            .await;
        if on_leader {
            let seen = self.replica.liveness.last_seen_ms().await;
            let telemetry = self.replica.liveness.telemetry().await;
            for n in &mut nodes {
                n.last_seen_ms = seen.get(&n.id).copied().unwrap_or(0);
                if let Some(t) = telemetry.get(&n.id) {
                    add_telemetry(n, t);
                }
            }
        }
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn set_eligibility(
        &self,
        req: Request<SetEligibilityRequest>,
    ) -> Result<Response<SetEligibilityResponse>, Status> {
        let deadline = deadline(&req, self.replica.config.request_timeout());
        let req = req.into_inner();
        let now = now_ms();
        let eligibility = eligibility_from_api(req.eligibility, req.drain_deadline_ms, now)?;
        let cmd = Command::SetEligibility {
            now_ms: now,
            node_id: req.node_id.clone(),
            eligibility,
        };
        let (outcome, index) = self.replica.write(cmd, deadline).await?;
        match outcome {
            Outcome::Node(Ok(())) => {}
            Outcome::Node(Err(e)) => return Err(Status::not_found(e.to_string())),
            _ => return Err(crate::api::error::unexpected_outcome("SetEligibility")),
        }
        let node = self.node_after(&req.node_id, index, deadline).await;
        Ok(crate::api::forward::write_reply(
            &self.replica,
            SetEligibilityResponse { node },
        ))
    }

    async fn set_blacklist(
        &self,
        req: Request<SetBlacklistRequest>,
    ) -> Result<Response<SetBlacklistResponse>, Status> {
        let deadline = deadline(&req, self.replica.config.request_timeout());
        let req = req.into_inner();
        validate_reason(&req.reason).map_err(crate::api::error::invalid)?;
        let cmd = Command::SetBlacklist {
            now_ms: now_ms(),
            node_id: req.node_id.clone(),
            blacklisted: req.blacklisted,
            reason: req.reason,
        };
        let (outcome, index) = self.replica.write(cmd, deadline).await?;
        match outcome {
            Outcome::Node(Ok(())) => {}
            Outcome::Node(Err(e)) => return Err(Status::not_found(e.to_string())),
            _ => return Err(crate::api::error::unexpected_outcome("SetBlacklist")),
        }
        let node = self.node_after(&req.node_id, index, deadline).await;
        Ok(crate::api::forward::write_reply(
            &self.replica,
            SetBlacklistResponse { node },
        ))
    }
}

impl NodeApi {
    /// The node as of the change at `index`, even on a lagging follower.
    async fn node_after(
        &self,
        node_id: &str,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Option<gantry_proto::v1::Node> {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _ = self
            .replica
            .raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "node change applied")
            .await;
        let now = now_ms();
        self.replica
            .state
            .read(|s, _| {
                s.node(node_id)
                    .map(|n| node_to_api(n, &s.usage(n.id()), now))
            })
            .await
    }
}

/// Fills in what only the leader knows: the last check time and GPU telemetry.
fn add_telemetry(n: &mut gantry_proto::v1::Node, t: &NodeTelemetry) {
    if t.checked_at_ms > 0 {
        n.last_check_ms = t.checked_at_ms;
    }
    for live in &t.gpus {
        if let Some(g) = n.gpus.iter_mut().find(|g| g.index == live.index) {
            let (uuid, model, total) = (g.uuid.clone(), g.model.clone(), g.memory_total_mib);
            *g = live.clone();
            // The registered inventory names the GPU; telemetry fills the rest.
            if !uuid.is_empty() {
                g.uuid = uuid;
            }
            if !model.is_empty() {
                g.model = model;
            }
            if total > 0 {
                g.memory_total_mib = total;
            }
        }
    }
}
