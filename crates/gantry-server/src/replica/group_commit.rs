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

use std::future::Future;
use std::sync::Arc;

use gantry_core::{Command, NewJob, Outcome, limits};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
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

/// Entries being committed at once. A batch of fewer than [`OVERLAP_JOBS`]
/// jobs waits until no entry is in flight, growing meanwhile: an entry
/// costs about the same whatever its size (an append and an fsync on
/// every replica, replication, an apply), so while the replicas are busy
/// one larger entry is cheaper than two small ones; large batches (100-job
/// requests) overlap. The measurements are in docs/benchmarks.md.
pub const IN_FLIGHT: usize = 4;
/// A batch this large is proposed while others are in flight.
pub const OVERLAP_JOBS: usize = 64;
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

/// The submissions of one combined entry, being gathered.
struct Batch {
    parts: Vec<Pending>,
    jobs: usize,
    /// A submission that did not fit, first in the next batch.
    overflow: Option<Pending>,
}

impl Batch {
    fn new(first: Pending) -> Self {
        Self {
            jobs: first.jobs.len(),
            parts: vec![first],
            overflow: None,
        }
    }

    /// Takes `p` in, unless that would make an entry larger than one
    /// request may be: then it waits for the next batch.
    fn add(&mut self, p: Pending) {
        if self.jobs + p.jobs.len() > limits::MAX_JOBS_PER_SUBMIT {
            self.overflow = Some(p);
        } else {
            self.jobs += p.jobs.len();
            self.parts.push(p);
        }
    }

    fn full(&self) -> bool {
        self.overflow.is_some() || self.jobs >= limits::MAX_JOBS_PER_SUBMIT
    }

    /// Large enough to be proposed while other entries are in flight.
    fn large(&self) -> bool {
        self.full() || self.jobs >= OVERLAP_JOBS
    }

    /// Everything already queued, while it fits.
    fn fill(&mut self, rx: &mut mpsc::Receiver<Pending>) {
        while !self.full() {
            match rx.try_recv() {
                Ok(p) => self.add(p),
                Err(_) => return,
            }
        }
    }
}

/// Forms batches from the queue until the replica shuts down.
pub(crate) async fn run(replica: Arc<Replica>, route: Route, rx: mpsc::Receiver<Pending>) {
    batches(rx, move |parts| {
        let replica = replica.clone();
        async move { commit(&replica, route, parts).await }
    })
    .await;
}

/// Gathers the queue into batches and runs `commit` on each, in a task of
/// its own, by the rules of [`IN_FLIGHT`].
async fn batches<F, Fut>(mut rx: mpsc::Receiver<Pending>, commit: F)
where
    F: Fn(Vec<Pending>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    // Signalled each time an entry's commit finishes.
    let finished = Arc::new(Notify::new());
    let mut carried: Option<Pending> = None;
    let mut closed = false;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None if closed => return,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut batch = Batch::new(first);
        let permit = loop {
            batch.fill(&mut rx);
            if closed || batch.large() || permits.available_permits() == IN_FLIGHT {
                match permits.clone().acquire_owned().await {
                    Ok(permit) => break permit,
                    Err(_) => return,
                }
            }
            // Small, and an entry is in flight: take in arrivals until the
            // batch is large or the entries in flight are done.
            // Biased: a fixed order, which the simulation replays (tokio's random one it cannot).
            tokio::select! {
                biased;
                () = finished.notified() => {}
                p = rx.recv() => match p {
                    Some(p) => batch.add(p),
                    None => closed = true,
                },
            }
        };
        carried = batch.overflow.take();
        let committed = commit(batch.parts);
        let finished = finished.clone();
        gantry_store::runtime::spawn(async move {
            committed.await;
            drop(permit);
            finished.notify_one();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pending(jobs: usize) -> Pending {
        let (reply, _) = oneshot::channel();
        Pending {
            now_ms: 0,
            jobs: vec![
                NewJob {
                    id: String::new(),
                    spec: Default::default(),
                    trace_parent: String::new(),
                };
                jobs
            ],
            deadline: Instant::now() + Duration::from_secs(60),
            reply,
        }
    }

    /// Runs the batcher with a commit that records each batch's job count
    /// and finishes only when the test releases it.
    struct Harness {
        tx: Queue,
        proposed: mpsc::UnboundedReceiver<usize>,
        sizes: Vec<usize>,
        release: Arc<Semaphore>,
    }

    impl Harness {
        fn start() -> Self {
            let (tx, rx) = queue();
            let (sizes, proposed) = mpsc::unbounded_channel();
            let release = Arc::new(Semaphore::new(0));
            let r = release.clone();
            gantry_store::runtime::spawn(batches(rx, move |parts: Vec<Pending>| {
                let _ = sizes.send(parts.iter().map(|p| p.jobs.len()).sum());
                let r = r.clone();
                async move { r.acquire().await.unwrap().forget() }
            }));
            Self {
                tx,
                proposed,
                sizes: Vec::new(),
                release,
            }
        }

        /// The sizes of the first `n` batches proposed.
        async fn wait_for_batches(&mut self, n: usize) -> Vec<usize> {
            while self.sizes.len() < n {
                let next = tokio::time::timeout(Duration::from_secs(10), self.proposed.recv());
                match next.await {
                    Ok(Some(size)) => self.sizes.push(size),
                    _ => panic!("only {:?} proposed after 10 s", self.sizes),
                }
            }
            self.sizes.clone()
        }

        /// Lets the batcher run a while, then says whether it proposed more.
        async fn proposed_more(&mut self) -> bool {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            !self.proposed.is_empty()
        }
    }

    #[tokio::test]
    async fn t20_a_partial_batch_grows_while_an_entry_is_in_flight() {
        let mut h = Harness::start();
        h.tx.send(pending(1)).await.unwrap();
        assert_eq!(h.wait_for_batches(1).await, vec![1]);
        // The first entry is being committed: these wait and become one.
        for _ in 0..5 {
            h.tx.send(pending(2)).await.unwrap();
        }
        // Nothing more is proposed while the first is in flight.
        assert!(!h.proposed_more().await);
        h.release.add_permits(1);
        assert_eq!(h.wait_for_batches(2).await, vec![1, 10]);
    }

    #[tokio::test]
    async fn t20_large_batches_overlap_up_to_the_limit() {
        let mut h = Harness::start();
        // Each is proposed at once, while the ones before are in flight.
        for n in 1..=IN_FLIGHT {
            h.tx.send(pending(OVERLAP_JOBS)).await.unwrap();
            assert_eq!(h.wait_for_batches(n).await, vec![OVERLAP_JOBS; n]);
        }
        // The limit is reached: the next waits for a commit to finish.
        h.tx.send(pending(OVERLAP_JOBS)).await.unwrap();
        assert!(!h.proposed_more().await);
        h.release.add_permits(1);
        let sizes = h.wait_for_batches(IN_FLIGHT + 1).await;
        assert_eq!(sizes, vec![OVERLAP_JOBS; IN_FLIGHT + 1]);
    }

    #[tokio::test]
    async fn t20_a_batch_never_exceeds_one_requests_limit() {
        let mut h = Harness::start();
        h.tx.send(pending(1)).await.unwrap();
        h.wait_for_batches(1).await;
        // Queued behind the first: 600 + 600 do not fit in one entry.
        h.tx.send(pending(600)).await.unwrap();
        h.tx.send(pending(600)).await.unwrap();
        h.release.add_permits(1);
        assert_eq!(h.wait_for_batches(3).await, vec![1, 600, 600]);
    }
}
