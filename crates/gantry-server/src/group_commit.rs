//! Group commit: submissions that arrive while earlier ones are being
//! committed share one Raft entry. Each entry costs a log append,
//! replication to every follower, an apply and a share of the next
//! snapshot, whatever its size; 64 clients sending one job each used to
//! make 64 entries.
//!
//! Every replica batches: the leader into entries ([`Route::Raft`]), a
//! follower into forwarded requests ([`Route::Leader`]). A follower used to
//! forward each submission as its own `Propose` call, so the leader paid
//! TLS, HTTP/2 and decoding per submission for the two thirds of the load
//! that reached it through followers; a follower's batch is one call, and
//! the leader batches it again with what else is waiting.
//!
//! Applying a combined entry is the same as applying its parts one after
//! another (the state decides a whole batch before changing anything, and
//! an idempotency key met twice in one batch answers like a replay). If the
//! state rejects the combined entry (one part's conflict rejects all), no
//! job of it was stored, and each part is proposed again on its own, in
//! order, so every caller gets the answer it would have had alone.

use std::sync::Arc;

use gantry_core::{Command, NewJob, Outcome, limits};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::replica::{Replica, Try};

/// Where a replica's batches go.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Route {
    /// Proposed as Raft entries: the leader's batches.
    Raft,
    /// Forwarded to the leader as one request: a follower's batches. If this
    /// replica turns out to lead, every part gets [`Try::Again`] and is
    /// proposed here on the caller's next try.
    Leader,
}

/// Combined entries being committed at once; while all are in flight, new
/// submissions queue and form the next, larger, batch.
pub const IN_FLIGHT: usize = 4;
/// Submissions waiting for a batch.
pub const QUEUE: usize = 8_192;

pub(crate) struct Pending {
    pub now_ms: u64,
    pub jobs: Vec<NewJob>,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<(Outcome, u64), Try>>,
}

pub(crate) type Queue = mpsc::Sender<Pending>;

pub(crate) fn queue() -> (Queue, mpsc::Receiver<Pending>) {
    mpsc::channel(QUEUE)
}

/// Forms batches from the queue until the replica shuts down.
pub(crate) async fn run(replica: Arc<Replica>, route: Route, mut rx: mpsc::Receiver<Pending>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut total = first.jobs.len();
        let mut batch = vec![first];
        while let Ok(p) = rx.try_recv() {
            // A combined entry stays within what one request may carry.
            if total + p.jobs.len() > limits::MAX_JOBS_PER_SUBMIT {
                carried = Some(p);
                break;
            }
            total += p.jobs.len();
            batch.push(p);
        }
        let replica = replica.clone();
        tokio::spawn(async move {
            commit(&replica, route, batch).await;
            drop(permit);
        });
    }
}

/// Commits `cmd` the way `route` says.
async fn propose(
    replica: &Replica,
    route: Route,
    cmd: Command,
    deadline: Instant,
) -> Result<(Outcome, u64), Try> {
    match route {
        Route::Raft => replica.propose_raw(cmd, deadline).await,
        Route::Leader => replica.forward_to_leader(&cmd, deadline).await,
    }
}

async fn commit(replica: &Replica, route: Route, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        let p = batch.remove(0);
        alone(replica, route, p).await;
        return;
    }
    let now_ms = batch.iter().map(|p| p.now_ms).max().unwrap_or_default();
    let deadline = batch
        .iter()
        .map(|p| p.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let jobs: Vec<NewJob> = batch.iter().flat_map(|p| p.jobs.iter().cloned()).collect();
    let result = propose(
        replica,
        route,
        Command::SubmitJobs { now_ms, jobs },
        deadline,
    )
    .await;
    match result {
        Ok((Outcome::Submitted(Ok(mut all)), index)) => {
            for p in batch {
                let rest = all.split_off(p.jobs.len().min(all.len()));
                let mine = std::mem::replace(&mut all, rest);
                let _ = p.reply.send(Ok((Outcome::Submitted(Ok(mine)), index)));
            }
        }
        Ok((Outcome::Submitted(Err(_)), _)) => {
            // Nothing of the combined entry was stored: one at a time.
            for p in batch {
                alone(replica, route, p).await;
            }
        }
        other => {
            for p in batch {
                let _ = p.reply.send(other.clone());
            }
        }
    }
}

async fn alone(replica: &Replica, route: Route, p: Pending) {
    let cmd = Command::SubmitJobs {
        now_ms: p.now_ms,
        jobs: p.jobs,
    };
    let _ = p.reply.send(propose(replica, route, cmd, p.deadline).await);
}
