//! `ClusterService.SaveSnapshot` / `RestoreSnapshot`: a backup of the whole
//! replicated state, and putting one back (`gantry cluster snapshot ...`).
//!
//! The file is the state machine's own snapshot format (versioned JSON), so a
//! backup taken by one version is read by the next as Raft snapshots are.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use gantry_core::{Command, Outcome, State};
use gantry_proto::v1::{RestoreSnapshotResponse, SaveSnapshotRequest, SnapshotData};
use tonic::{Request, Response, Status, Streaming};

use crate::api::deadline::deadline;
use crate::replica::Replica;
use crate::replica::clock::now_ms;

/// The largest snapshot a restore accepts: it becomes one log entry.
pub const MAX_RESTORE_BYTES: usize = 64 * 1024 * 1024;
/// Chunks of a saved snapshot on the wire.
const CHUNK_BYTES: usize = 1024 * 1024;

pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotData, Status>> + Send>>;

/// A copy of the state as of a linearizable read: every write acknowledged
/// before the request is in it.
pub async fn save(
    replica: &Arc<Replica>,
    req: Request<SaveSnapshotRequest>,
) -> Result<Response<SnapshotStream>, Status> {
    let deadline = deadline(&req, replica.config.request_timeout());
    replica.read_barrier(deadline).await?;
    let (bytes, index) = replica
        .state
        .read(|s, applied| (s.to_snapshot(), applied))
        .await;
    let bytes = bytes.map_err(|e| Status::internal(format!("encoding the snapshot: {e}")))?;
    tracing::info!(bytes = bytes.len(), index, "snapshot saved by a client");
    let mut chunks: Vec<Result<SnapshotData, Status>> = bytes
        .chunks(CHUNK_BYTES)
        .map(|c| {
            Ok(SnapshotData {
                data: c.to_vec(),
                ..SnapshotData::default()
            })
        })
        .collect();
    if let Some(Ok(first)) = chunks.first_mut() {
        first.index = index;
    }
    Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
}

/// Replaces the state with a saved one, in one log entry.
pub async fn restore(
    replica: &Arc<Replica>,
    req: Request<Streaming<SnapshotData>>,
) -> Result<Response<RestoreSnapshotResponse>, Status> {
    let deadline = deadline(&req, replica.config.request_timeout());
    let mut stream = req.into_inner();
    let (mut data, mut force, mut first) = (Vec::new(), false, true);
    while let Some(chunk) = stream.message().await? {
        if first {
            force = chunk.force;
            first = false;
        }
        if data.len() + chunk.data.len() > MAX_RESTORE_BYTES {
            return Err(Status::invalid_argument(format!(
                "snapshot: larger than the {MAX_RESTORE_BYTES} bytes a restore accepts"
            )));
        }
        data.extend_from_slice(&chunk.data);
    }
    let text = String::from_utf8(data)
        .map_err(|_| Status::invalid_argument("snapshot: not a Gantry snapshot (not UTF-8)"))?;
    // Checked here so a bad file is refused before anything is proposed.
    State::from_snapshot(text.as_bytes())
        .map_err(|e| Status::invalid_argument(format!("snapshot: not a Gantry snapshot: {e}")))?;
    if !force {
        replica.read_barrier(deadline).await?;
        let jobs = replica.state.read(|s, _| s.job_count()).await;
        if jobs > 0 {
            return Err(Status::failed_precondition(format!(
                "the cluster holds {jobs} jobs and a restore replaces them all: restore into an empty cluster, or pass force (--force)"
            )));
        }
    }
    let cmd = Command::RestoreState {
        now_ms: now_ms(),
        snapshot: text,
    };
    let (outcome, index) = replica.write(cmd, deadline).await?;
    match outcome {
        Outcome::Restored(Ok(summary)) => {
            tracing::warn!(
                jobs = summary.jobs,
                nodes = summary.nodes,
                index,
                "state replaced by a restored snapshot"
            );
            Ok(Response::new(RestoreSnapshotResponse {
                jobs: summary.jobs,
                nodes: summary.nodes,
                commit_index: index,
            }))
        }
        Outcome::Restored(Err(e)) => Err(Status::invalid_argument(format!("snapshot: {e}"))),
        _ => Err(crate::api::error::unexpected_outcome("RestoreSnapshot")),
    }
}
