//! `gantry.v1.NodeService`: list nodes, cordon, uncordon, drain.

use std::sync::Arc;

use gantry_core::{Command, Outcome};
use gantry_proto::v1::node_service_client::NodeServiceClient;
use gantry_proto::v1::node_service_server::NodeService;
use gantry_proto::v1::{
    ListNodesRequest, ListNodesResponse, SetEligibilityRequest, SetEligibilityResponse,
};
use tonic::{Request, Response, Status};

use crate::auth;
use crate::clock::now_ms;
use crate::convert::{eligibility_from_api, node_to_api};
use crate::deadline::deadline;
use crate::forward::{forwarded, leader_channel};
use crate::replica::Replica;

pub struct NodeApi {
    pub(crate) replica: Arc<Replica>,
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        auth::require(&self.replica, &req, auth::READ, "list_nodes")?;
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
        let mut nodes: Vec<gantry_proto::v1::Node> = self
            .replica
            .state
            .read(|s, _| {
                s.nodes()
                    .map(|n| node_to_api(n, &s.usage(n.id())))
                    .collect()
            })
            .await;
        if on_leader {
            let seen = self.replica.liveness.last_seen_ms().await;
            for n in &mut nodes {
                n.last_seen_ms = seen.get(&n.id).copied().unwrap_or(0);
            }
        }
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn set_eligibility(
        &self,
        req: Request<SetEligibilityRequest>,
    ) -> Result<Response<SetEligibilityResponse>, Status> {
        auth::require(&self.replica, &req, auth::WRITE, "set_eligibility")?;
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
            _ => return Err(crate::error::unexpected_outcome("SetEligibility")),
        }
        // Answer with the node as of this change, even on a lagging follower.
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _ = self
            .replica
            .raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "eligibility applied")
            .await;
        let node = self
            .replica
            .state
            .read(|s, _| {
                s.node(&req.node_id)
                    .map(|n| node_to_api(n, &s.usage(n.id())))
            })
            .await;
        Ok(Response::new(SetEligibilityResponse { node }))
    }
}
