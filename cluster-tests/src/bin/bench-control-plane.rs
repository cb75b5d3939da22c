//! Control-plane benchmark: committed submits per second and latency on a
//! 3-replica loopback cluster of the real binary, and the time from a leader
//! SIGKILL to the first accepted write.
//!
//!     cargo build --release -p gantry-cli
//!     cargo run --release -p cluster-tests --bin bench-control-plane [-- --quick] [--fast]
//!
//! Prints a table with the machine and etcd's figures on this kind of
//! machine beside ours (issue 9). Not a test: nothing here asserts a time.

use std::sync::Arc;
use std::time::Duration;

use cluster_tests::bench::{machine, percentile_ms};
use cluster_tests::{Cluster, Timings, wait_for};
use gantry_client::{Client, ClientOptions, api};
use tokio::sync::Barrier;
use tokio::time::Instant;

struct Figures {
    jobs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn spec() -> api::JobSpec {
    api::JobSpec {
        argv: vec!["/bin/true".into()],
        ..Default::default()
    }
}

/// `clients` concurrent clients, each sending `requests` submits of `batch` jobs.
async fn submit_load(
    servers: &[String],
    clients: usize,
    requests: usize,
    batch: usize,
) -> anyhow::Result<Figures> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for c in 0..clients {
        // Spread clients over the replicas: most requests are forwarded.
        let mut order = servers.to_vec();
        order.rotate_left(c % servers.len());
        let client = Client::new(&order, ClientOptions::default())?;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut lat = Vec::with_capacity(requests);
            for _ in 0..requests {
                let t = Instant::now();
                client.submit_jobs(vec![spec(); batch]).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = start.elapsed();
    lat.sort();
    Ok(Figures {
        jobs_per_s: (clients * requests * batch) as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile_ms(&lat, 0.5),
        p99_ms: percentile_ms(&lat, 0.99),
    })
}

/// SIGKILLs the leader while a writer submits; returns kill → first ack.
async fn failover_once(cluster: &mut Cluster) -> anyhow::Result<Duration> {
    let leader = cluster.leader().await?;
    let survivors: Vec<String> = cluster
        .others(leader)
        .iter()
        .map(|id| cluster.replicas[id].addr.clone())
        .collect();
    let opts = ClientOptions {
        request_timeout: Duration::from_secs(2),
        retry_deadline: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    let client = Client::new(&survivors, opts)?;
    client.submit_jobs(vec![spec()]).await?;
    let killed_at = Instant::now();
    cluster.kill(leader).await?;
    // The first write sent after the kill that is acknowledged.
    client.submit_jobs(vec![spec()]).await?;
    let took = killed_at.elapsed();
    cluster.restart(leader)?;
    let back = cluster.client(&[leader])?;
    wait_for(
        "the old leader to rejoin",
        Duration::from_secs(30),
        || async {
            back.get_job("warm-up", false)
                .await
                .err()
                .filter(|e| e.code() == Some(tonic::Code::NotFound))
                .map(|_| ())
        },
    )
    .await?;
    Ok(took)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    // --fast: the test profile (heartbeat 50 ms, elections 300-600 ms);
    // otherwise the replica's defaults.
    let timings = if std::env::args().any(|a| a == "--fast") {
        Timings {
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_every: 10_000,
            node_grace_ms: 10_000,
        }
    } else {
        Timings {
            heartbeat_ms: 100,
            election_min_ms: 600,
            election_max_ms: 1200,
            snapshot_every: 10_000,
            node_grace_ms: 10_000,
        }
    };
    let mut cluster = Cluster::start(3, timings.clone()).await?;
    let servers = cluster.live_addrs();
    println!(
        "machine: {}; 3 replicas + load generator on loopback, plaintext",
        machine()
    );
    println!(
        "raft: heartbeat {} ms, election timeout {}-{} ms\n",
        timings.heartbeat_ms, timings.election_min_ms, timings.election_max_ms
    );
    // Warm up connections and the leader.
    submit_load(&servers, 4, 50 / scale.min(5), 1).await?;

    let rows = [
        (
            "1 client, 1 job/request",
            1,
            3_000 / scale,
            1,
            "1,150/s, p99 1.9 ms",
        ),
        (
            "64 clients, 1 job/request",
            64,
            300 / scale,
            1,
            "8,900/s, p99 17 ms",
        ),
        ("64 clients, 100 jobs/request", 64, 30 / scale, 100, "-"),
    ];
    println!(
        "{:<30} {:>12} {:>10} {:>10}   etcd 3.4 puts here (baseline)",
        "scenario", "jobs/s", "p50 ms", "p99 ms"
    );
    for (name, clients, requests, batch, baseline) in rows {
        let f = submit_load(&servers, clients, requests, batch).await?;
        println!(
            "{name:<30} {:>12.0} {:>10.2} {:>10.2}   {baseline}",
            f.jobs_per_s, f.p50_ms, f.p99_ms
        );
    }

    let runs = if quick { 2 } else { 5 };
    let mut took = Vec::new();
    for _ in 0..runs {
        took.push(failover_once(&mut cluster).await?);
    }
    took.sort();
    let ms: Vec<String> = took
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
        .collect();
    println!(
        "\nleader SIGKILL -> first accepted write: median {:.0} ms, max {:.0} ms over {runs} runs ({})   etcd here: 390 ms tuned, 1.4 s default",
        took[took.len() / 2].as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3,
        ms.join(", ")
    );
    Ok(())
}
