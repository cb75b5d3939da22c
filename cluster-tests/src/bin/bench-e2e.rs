//! End-to-end benchmark: submit → scheduled → dispatched over a real agent
//! stream → the (simulated) agent runs a no-op → result committed.
//!
//!     cargo build --release -p gantry-cli
//!     cargo run --release -p cluster-tests --bin bench-e2e [-- --agents 100 --jobs 20000]
//!
//! Simulated agents live in this process, each holding a real
//! AgentService.Connect stream to a replica (spread over all three); on
//! Assign they report Finished at once. Prints placements per second and
//! the dispatch latency (submit acknowledged → the agent receives Assign).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cluster_tests::bench::{machine, percentile_ms, process_usage, usage_table};
use cluster_tests::{Cluster, Timings};
use gantry_client::{Client, ClientOptions, api};
use gantry_proto::transport::Transport;
use gantry_proto::v1::agent_message::Msg as AgentMsg;
use gantry_proto::v1::agent_service_client::AgentServiceClient;
use gantry_proto::v1::server_message::Msg as ServerMsg;
use gantry_proto::v1::{AgentMessage, AttemptFinished, Hello, Resources};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Default)]
struct Counters {
    acked: std::sync::atomic::AtomicU64,
    /// Set once the figures are printed: streams breaking after it are expected.
    done: std::sync::atomic::AtomicBool,
    assigned_at: Mutex<HashMap<String, Instant>>,
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn simulated_agent(
    addr: String,
    node_id: String,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let channel = Transport::insecure().channel(&addr)?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(1024);
    tx.send(AgentMessage {
        msg: Some(AgentMsg::Hello(Hello {
            node_id,
            capacity: Some(Resources {
                cpu_millis: 1_000_000,
                memory_mib: 1_000_000,
                gpus: 0,
            }),
            version: "bench".into(),
            ..Hello::default()
        })),
    })
    .await?;
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(m) = inbound.message().await? {
        match m.msg {
            Some(ServerMsg::Assign(a)) => {
                let Some(token) = a.attempt else { continue };
                counters
                    .assigned_at
                    .lock()
                    .await
                    .entry(token.job_id.clone())
                    .or_insert_with(Instant::now);
                let done = AttemptFinished {
                    attempt: Some(token),
                    exit_code: Some(0),
                    ..AttemptFinished::default()
                };
                tx.send(AgentMessage {
                    msg: Some(AgentMsg::Finished(done)),
                })
                .await?;
            }
            Some(ServerMsg::Ack(_)) => {
                counters
                    .acked
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            _ => {}
        }
    }
    Ok(())
}

fn spec() -> api::JobSpec {
    api::JobSpec {
        argv: vec!["/bin/true".into()],
        max_attempts: 1,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let agents = arg("--agents", 100);
    let jobs = arg("--jobs", 20_000);
    let cluster = Cluster::start(
        3,
        Timings {
            heartbeat_ms: 100,
            election_min_ms: 600,
            election_max_ms: 1200,
            snapshot_every: 10_000,
            node_grace_ms: 10_000,
        },
    )
    .await?;
    let addrs = cluster.live_addrs();
    let counters = Arc::new(Counters::default());
    for i in 0..agents {
        let addr = addrs[i % addrs.len()].clone();
        let c = counters.clone();
        tokio::spawn(async move {
            if let Err(e) = simulated_agent(addr, format!("sim-{i}"), c.clone()).await
                && !c.done.load(std::sync::atomic::Ordering::Relaxed)
            {
                eprintln!("simulated agent {i}: {e}");
            }
        });
    }
    let client = Client::new(&addrs, ClientOptions::default())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.list_nodes(true).await?.len() < agents {
        anyhow::ensure!(Instant::now() < deadline, "agents did not register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Dispatch latency: single submits, one at a time.
    let mut latency = Vec::new();
    for _ in 0..300 {
        let resp = client.submit_jobs(vec![spec()]).await?;
        let acked = Instant::now();
        let id = resp.jobs[0].job_id.clone();
        let wait = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(t) = counters.assigned_at.lock().await.get(&id) {
                latency.push(t.saturating_duration_since(acked));
                break;
            }
            anyhow::ensure!(Instant::now() < wait, "job {id} was never dispatched");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    latency.sort();

    // Throughput: batches of 1,000 jobs from 4 concurrent submitters.
    let base = counters.acked.load(std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let per = jobs / 4 / 1000;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = Client::new(&addrs, ClientOptions::default())?;
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                client.submit_jobs(vec![spec(); 1000]).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let submitted = (per * 4 * 1000) as u64;
    let wait = Instant::now() + Duration::from_secs(300);
    while counters.acked.load(std::sync::atomic::Ordering::Relaxed) - base < submitted {
        anyhow::ensure!(Instant::now() < wait, "not every job completed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let mut processes: Vec<(String, u32)> = (1..=3)
        .filter_map(|id| Some((format!("replica {id}"), cluster.pid(id)?)))
        .collect();
    processes.push(("load generator+agents".into(), std::process::id()));
    let total_cpu: f64 = processes
        .iter()
        .filter_map(|(_, pid)| process_usage(*pid))
        .map(|(c, _)| c)
        .sum();
    let all_tasks = submitted + latency.len() as u64;
    println!("machine: {}", machine());
    println!(
        "3 replicas + {agents} simulated agents (real streams) + load generator on this machine, plaintext"
    );
    println!(
        "end-to-end (submit -> assigned -> agent no-op -> result committed): {submitted} tasks in {:.2} s = {:.0} tasks/s",
        elapsed.as_secs_f64(),
        submitted as f64 / elapsed.as_secs_f64()
    );
    println!(
        "dispatch latency (submit acknowledged -> agent has the Assign), {} single submits: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latency.len(),
        percentile_ms(&latency, 0.5),
        percentile_ms(&latency, 0.99),
        percentile_ms(&latency, 1.0)
    );
    print!("{}", usage_table(&processes));
    println!(
        "CPU per task, all processes (whole run incl. start-up): {:.2} ms",
        total_cpu * 1e3 / all_tasks as f64
    );
    println!(
        "baseline on this kind of machine: Slurm about 60 trivial jobs/s (79/s at best), 20-25 ms of CPU per trivial job, 565 ms submit->start median"
    );
    counters
        .done
        .store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}
