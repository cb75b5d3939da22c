//! A simulated client: submits, reads (read-index) and cancels jobs through
//! random replicas, recording every operation in the history.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gantry_core::{JobSpec, NewJob, Resources};
use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::api_state;
use super::net::Net;
use crate::checkers::{CancelOp, History, JobVersion, Outcome, ReadOp, SubmitOp};

/// A client: submits, reads and cancels through random replicas.
pub(super) struct Client {
    pub c: usize,
    pub net: Net,
    pub ids: Vec<u64>,
    pub rng: StdRng,
    pub history: Arc<Mutex<History>>,
    pub start: Instant,
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

impl Client {
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub(super) async fn run(mut self, stop: Arc<AtomicBool>) {
        let me = 2_000 + self.c as u64;
        let mut n = 0u64;
        let mut acked: Vec<String> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(10..200))).await;
            let to = self.ids[self.rng.random_range(0..self.ids.len())];
            let op = self.rng.random_range(0..100);
            let invoke = self.elapsed();
            let inner = CLIENT_TIMEOUT - Duration::from_millis(300);
            if op < 55 || acked.is_empty() {
                n += 1;
                let id = format!("j{}-{n}", self.c);
                let job = NewJob {
                    trace_parent: String::new(),
                    id: id.clone(),
                    spec: JobSpec {
                        argv: vec!["sim".into()],
                        resources: Resources {
                            cpu_millis: 500,
                            memory_mib: 64,
                            gpus: 0,
                        },
                        ..JobSpec::default()
                    }
                    .normalized(),
                };
                let r = self
                    .net
                    .call(me, to, CLIENT_TIMEOUT, |r| async move {
                        r.submit(job, Instant::now() + inner).await
                    })
                    .await;
                let (outcome, index) = match r {
                    Ok(Ok(index)) => {
                        acked.push(id.clone());
                        (Outcome::Ok(id), index)
                    }
                    Ok(Err(e)) => (Outcome::Unknown(e), 0),
                    Err(e) => (Outcome::Unknown(e.to_string()), 0),
                };
                let op = SubmitOp {
                    client: self.c,
                    invoke,
                    complete: self.elapsed(),
                    outcome,
                    index,
                };
                self.history.lock().await.submits.push(op);
            } else if op < 90 {
                let job_id = acked[self.rng.random_range(0..acked.len())].clone();
                let id = job_id.clone();
                let r = self
                    .net
                    .call(me, to, CLIENT_TIMEOUT, |r| async move {
                        r.get_job(&id, Instant::now() + inner).await
                    })
                    .await;
                let outcome = match r {
                    Ok(Ok(Some((index, state)))) => Outcome::Ok(JobVersion {
                        index,
                        state: api_state(state),
                    }),
                    Ok(Ok(None)) => Outcome::Ok(JobVersion::ABSENT),
                    Ok(Err(e)) => Outcome::Unknown(e),
                    Err(e) => Outcome::Unknown(e.to_string()),
                };
                let op = ReadOp {
                    job_id,
                    invoke,
                    complete: self.elapsed(),
                    outcome,
                };
                self.history.lock().await.reads.push(op);
            } else {
                let job_id = acked[self.rng.random_range(0..acked.len())].clone();
                let id = job_id.clone();
                let r = self
                    .net
                    .call(me, to, CLIENT_TIMEOUT, |r| async move {
                        r.cancel(id, Instant::now() + inner).await
                    })
                    .await;
                let outcome = match r {
                    Ok(Ok(Ok((index, state)))) => Outcome::Ok(JobVersion {
                        index,
                        state: api_state(state),
                    }),
                    Ok(Ok(Err(e))) => Outcome::Fail(e),
                    Ok(Err(e)) => Outcome::Unknown(e),
                    Err(e) => Outcome::Unknown(e.to_string()),
                };
                let op = CancelOp {
                    job_id,
                    invoke,
                    complete: self.elapsed(),
                    outcome,
                };
                self.history.lock().await.cancels.push(op);
            }
        }
    }
}
