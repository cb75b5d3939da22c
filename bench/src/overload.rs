//! `bench overload`: more submissions than the agents can run. Clients
//! submit one job per request as fast as they are answered for a while;
//! the cluster takes what it can hold (up to its pending-task limit) and
//! refuses the rest at once with RESOURCE_EXHAUSTED. Then every accepted
//! job must finish, with no node marked lost and nothing rescheduled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gantry_client::{Client, api};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::Code;

use crate::agents::{AgentStats, SimAgents};
use crate::load::{Latencies, header};
use cluster_tests::{Cluster, wait_for};

/// What a refusal must take at most to count as quick.
pub const QUICK_REFUSAL: Duration = Duration::from_millis(100);

/// Each task holds a whole CPU of a simulated agent for its run, so the
/// agents' capacity, not the submitters, limits the work.
pub fn heavy_spec() -> api::JobSpec {
    api::JobSpec {
        argv: vec!["/bin/true".into()],
        max_attempts: 1,
        resources: Some(api::Resources {
            cpu_millis: 1_000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[derive(Default)]
struct Tally {
    accepted: Vec<Duration>,
    refused: Vec<Duration>,
    other: Vec<String>,
}

/// What the run saw, printed by [`Outcome::print`].
pub struct Outcome {
    pub seconds: f64,
    pub accepted: usize,
    pub refused: usize,
    pub quick_refusals: usize,
    pub other_errors: Vec<String>,
    pub accepted_latency: Latencies,
    pub refusal_latency: Latencies,
    pub drained_in: Duration,
    pub rescheduled: u64,
    pub attempts_lost: f64,
}

/// `clients` submitters for `run_for`, then waits for every accepted job.
pub async fn run(
    cluster: &Cluster,
    sim: &SimAgents,
    clients: Vec<Client>,
    run_for: Duration,
) -> anyhow::Result<Outcome> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let base = AgentStats::get(&sim.stats.acked);
    let start = Instant::now();
    let mut workers = Vec::new();
    for client in clients {
        let (tally, stop) = (tally.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut mine = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client.submit_jobs(vec![heavy_spec()]).await;
                let took = t.elapsed();
                match r {
                    Ok(_) => mine.accepted.push(took),
                    Err(e) if e.code() == Some(Code::ResourceExhausted) => mine.refused.push(took),
                    Err(e) => mine.other.push(e.to_string()),
                }
            }
            let mut all = tally.lock().await;
            all.accepted.extend(mine.accepted);
            all.refused.extend(mine.refused);
            all.other.extend(mine.other);
        }));
    }
    // The load runs for this long; the workers stop on the flag.
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut t = std::mem::take(&mut *tally.lock().await);
    let accepted = t.accepted.len();
    let drain = Instant::now();
    wait_for(
        "every accepted job to finish",
        Duration::from_secs(600),
        || async { (AgentStats::get(&sim.stats.acked) >= base + accepted as u64).then_some(()) },
    )
    .await?;
    let drained_in = drain.elapsed();
    t.accepted.sort_unstable();
    t.refused.sort_unstable();
    let quick_refusals = t.refused.iter().filter(|d| **d <= QUICK_REFUSAL).count();
    let attempts_lost = crate::attempts_lost(cluster).await?;
    Ok(Outcome {
        seconds,
        accepted,
        refused: t.refused.len(),
        quick_refusals,
        other_errors: t.other,
        accepted_latency: Latencies {
            per_s: accepted as f64 / seconds,
            sorted: t.accepted,
        },
        refusal_latency: Latencies {
            per_s: quick_refusals as f64 / seconds,
            sorted: t.refused,
        },
        drained_in,
        rescheduled: AgentStats::get(&sim.stats.rescheduled),
        attempts_lost,
    })
}

impl Outcome {
    pub fn print(&self) {
        println!("\n{}", header());
        println!(
            "{}",
            self.accepted_latency
                .row("submits accepted (committed)", "jobs/s", "all must finish")
        );
        println!(
            "{}",
            self.refusal_latency.row(
                "submits refused (RESOURCE_EXHAUSTED)",
                "/s",
                "each within 100 ms"
            )
        );
        println!(
            "\naccepted {} and refused {} in {:.1} s; refused within {} ms: {} of {}; other errors: {}",
            self.accepted,
            self.refused,
            self.seconds,
            QUICK_REFUSAL.as_millis(),
            self.quick_refusals,
            self.refused,
            self.other_errors.len()
        );
        for e in self.other_errors.iter().take(5) {
            println!("  error: {e}");
        }
        println!(
            "every accepted job finished {:.1} s after the load stopped; attempts lost with their node: {}; rescheduled attempts: {}",
            self.drained_in.as_secs_f64(),
            self.attempts_lost,
            self.rescheduled
        );
    }
}
