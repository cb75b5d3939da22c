//! Streaming reads: `JobService.Watch` (job changes, resumable by index) and
//! `JobService.Logs` (live output relayed from the replica holding the
//! node's stream, or the stored tails after the end).

use std::sync::Arc;

use gantry_core::AttemptRef;
use gantry_proto::internal::v1::TailOutputRequest;
use gantry_proto::v1::{JobEvent, LogChunk};
use openraft::async_runtime::WatchReceiver;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Status;

use crate::agents::output::Tail;
use crate::api::convert::job_to_api;
use crate::replica::Replica;

/// Events queued towards one watcher; a slow watcher slows only itself.
pub const WATCH_QUEUE: usize = 256;

pub type Sender<T> = mpsc::Sender<Result<T, Status>>;

/// Sends every job (or `job_id`) changed after `from_index`, then keeps
/// sending changes as they are applied, until the watcher goes away.
pub async fn watch_jobs(
    replica: Arc<Replica>,
    job_id: String,
    from_index: u64,
    tx: Sender<JobEvent>,
) {
    let mut cursor = from_index;
    let mut metrics = replica.raft.metrics();
    loop {
        let events: Vec<JobEvent> = replica
            .state
            .read(|s, _| {
                let event = |j: &gantry_core::Job| JobEvent {
                    index: j.modify_index,
                    job: Some(job_to_api(j, true)),
                };
                let mut changed: Vec<JobEvent> = if job_id.is_empty() {
                    s.jobs_changed_after(cursor)
                        .into_iter()
                        .map(event)
                        .collect()
                } else {
                    s.job(&job_id)
                        .filter(|j| j.modify_index > cursor)
                        .map(event)
                        .into_iter()
                        .collect()
                };
                changed.sort_by_key(|e| e.index);
                changed
            })
            .await;
        for e in events {
            cursor = cursor.max(e.index);
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

/// Streams a tail from the local hub: what is buffered, then (if following)
/// live chunks until the attempt ends.
pub async fn stream_tail(mut tail: Tail, follow: bool, tx: Sender<LogChunk>) {
    for c in tail.buffered {
        if tx.send(Ok(c)).await.is_err() {
            return;
        }
    }
    if !follow || tail.done {
        return;
    }
    loop {
        match tail.live.recv().await {
            Ok(Some(c)) => {
                if tx.send(Ok(c)).await.is_err() {
                    return;
                }
            }
            Ok(None) | Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let note = LogChunk {
                    stream: "stderr".into(),
                    data: format!("[gantry: {n} output chunks skipped: reader too slow]\n")
                        .into_bytes(),
                    ..LogChunk::default()
                };
                if tx.send(Ok(note)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Where a task's latest attempt stands, for `Logs`.
enum Source {
    Live {
        node_id: String,
        attempt: AttemptRef,
        replica: u64,
    },
    Finished(Vec<LogChunk>),
}

pub async fn logs(
    replica: Arc<Replica>,
    job_id: String,
    task: u32,
    follow: bool,
    tx: Sender<LogChunk>,
) -> Result<(), Status> {
    let source = replica
        .state
        .read(|s, _| -> Result<Source, Status> {
            let job = s
                .job(&job_id)
                .ok_or_else(|| crate::api::error::job_not_found(&job_id))?;
            let t = job
                .tasks
                .get(task as usize)
                .ok_or_else(|| Status::not_found(format!("job {job_id} has no task {task}")))?;
            let a = t.attempts.last().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "task {task} of job {job_id} has not started yet"
                ))
            })?;
            if a.state.is_live() {
                let replica = s
                    .node(&a.node_id)
                    .and_then(|n| n.session.as_ref())
                    .map_or(0, |x| x.replica);
                Ok(Source::Live {
                    node_id: a.node_id.clone(),
                    attempt: AttemptRef {
                        job_id: job_id.clone(),
                        task,
                        attempt: a.number,
                    },
                    replica,
                })
            } else {
                let chunk = |stream: &str, data: &str| LogChunk {
                    attempt: a.number,
                    stream: stream.into(),
                    data: data.as_bytes().to_vec(),
                    tail: true,
                };
                Ok(Source::Finished(vec![
                    chunk("stdout", &a.exit.stdout_tail),
                    chunk("stderr", &a.exit.stderr_tail),
                ]))
            }
        })
        .await?;
    match source {
        Source::Finished(chunks) => {
            for c in chunks.into_iter().filter(|c| !c.data.is_empty()) {
                if tx.send(Ok(c)).await.is_err() {
                    break;
                }
            }
        }
        Source::Live {
            node_id,
            attempt,
            replica: holder,
        } if holder == replica.id || holder == 0 => {
            let tail = replica.output.tail(&node_id, attempt).await;
            stream_tail(tail, follow && holder != 0, tx).await;
        }
        Source::Live {
            node_id,
            attempt,
            replica: holder,
        } => {
            let addr = {
                let rx = replica.raft.metrics();
                let m = rx.borrow_watched();
                m.membership_config
                    .membership()
                    .get_node(&holder)
                    .map(|n| n.addr.clone())
            };
            let Some(addr) = addr else {
                return Err(Status::unavailable(format!(
                    "replica {holder} holding the node's stream is not a member"
                )));
            };
            let mut client = replica.peers.raft_client(&addr).await?;
            let req = TailOutputRequest {
                node_id,
                job_id: attempt.job_id,
                task: attempt.task,
                attempt: attempt.attempt,
                follow,
            };
            let mut relayed = client.tail_output(req).await?.into_inner();
            while let Some(c) = relayed.next().await {
                if tx.send(c).await.is_err() {
                    break;
                }
            }
        }
    }
    Ok(())
}
