//! `bench`: Gantry's load harness (issue 9). Every scenario starts a
//! 3-replica cluster of the real `gantry` binary on loopback (mTLS unless
//! `--plaintext`), drives it from this process, and prints its figures
//! with the machine, the CPU seconds and peak RSS of every process, and the
//! baseline beside them. Nothing here asserts a time.
//!
//!     cargo build --release -p gantry-cli
//!     cargo run --release -p gantry-bench --bin bench -- submit
//!     cargo run --release -p gantry-bench --bin bench -- e2e --agents 5000 --jobs 50000
//!     cargo run --release -p gantry-bench --bin bench -- real --agents 4 --jobs 4000
//!     cargo run --release -p gantry-bench --bin bench -- failover --agents 100
//!     cargo run --release -p gantry-bench --bin bench -- agents --agents 10000

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use cluster_tests::{Cluster, Timings, http_get, sample, wait_for};
use gantry_bench::agents::{AgentStats, SimAgents};
use gantry_bench::echo;
use gantry_bench::etcd::{self, Etcd};
use gantry_bench::load::{Latencies, header};
use gantry_bench::ratio;
use gantry_bench::submits::{clients, etcd_puts, gantry_submits, spec};
use gantry_bench::{CpuPerOp, machine, replica_pids, usage_table};
use gantry_client::{Client, ClientOptions};
use gantry_proto::transport::TlsPaths;
use tokio::time::Instant;

/// The load generator allocates as the replicas do (one request and its
/// HTTP/2 frames per call, freed on another thread), and with glibc's
/// allocator spent about 7 % of its CPU in malloc and free; jemalloc, as in
/// `gantry`, leaves more of the machine to the servers being measured, the
/// same for every row (Gantry, etcd, the echo server).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(about = "Gantry's load harness: starts a real cluster, drives it, prints figures")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Run the replicas without TLS (mTLS is the default, as in production).
    #[arg(long, global = true)]
    plaintext: bool,
    /// Raft and liveness timings of the replicas.
    #[arg(long, global = true, value_enum, default_value_t = Profile::Default)]
    profile: Profile,
}

#[derive(Clone, Copy, ValueEnum)]
enum Profile {
    /// The replica's defaults: heartbeat 50 ms, elections 300-600 ms, node grace 10 s.
    Default,
    /// Tuned for fast failover on a LAN: heartbeat 20 ms, elections 60-120 ms, node grace 3 s.
    Fast,
    /// For shared or cross-zone machines (the defaults before): heartbeat 100 ms,
    /// elections 600-1200 ms, node grace 10 s.
    Slow,
}

impl Profile {
    fn timings(self) -> Timings {
        match self {
            Profile::Default => Timings {
                heartbeat_ms: 50,
                election_min_ms: 300,
                election_max_ms: 600,
                snapshot_every: 10_000,
                node_grace_ms: 10_000,
            },
            Profile::Slow => Timings {
                heartbeat_ms: 100,
                election_min_ms: 600,
                election_max_ms: 1200,
                snapshot_every: 10_000,
                node_grace_ms: 10_000,
            },
            Profile::Fast => Timings {
                heartbeat_ms: 20,
                election_min_ms: 60,
                election_max_ms: 120,
                snapshot_every: 10_000,
                node_grace_ms: 3_000,
            },
        }
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// Committed submissions: 1 client, 64 clients, 64 clients with batches;
    /// the same against etcd where it is installed.
    Submit {
        /// Requests per client, 1-job rows (the batched row sends a tenth).
        #[arg(long, default_value_t = 300)]
        requests: usize,
        /// Skip the etcd rows even if etcd is installed.
        #[arg(long)]
        no_etcd: bool,
        /// Run only this row (gantry's and etcd's), for profiling one of them.
        #[arg(long, value_enum)]
        only: Option<SubmitRow>,
    },
    /// Submit -> assigned -> simulated agent's no-op -> result committed.
    E2e {
        #[arg(long, default_value_t = 5000)]
        agents: usize,
        #[arg(long, default_value_t = 50_000)]
        jobs: usize,
        /// Single submits timed for the dispatch latency.
        #[arg(long, default_value_t = 300)]
        latency_samples: usize,
    },
    /// Real `gantry agent` processes running /bin/true.
    Real {
        #[arg(long, default_value_t = 4)]
        agents: usize,
        #[arg(long, default_value_t = 4000)]
        jobs: usize,
        /// Agents without cgroups (`gantry agent --no-cgroups`): limits not
        /// enforced, for the cost of enforcing them.
        #[arg(long)]
        no_cgroups: bool,
    },
    /// Leader SIGKILL under load, with simulated agents running tasks.
    Failover {
        #[arg(long, default_value_t = 100)]
        agents: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// How long each simulated task runs.
        #[arg(long, default_value_t = 300)]
        task_ms: u64,
    },
    /// The 64-client row against Gantry, etcd and a server that only
    /// answers (the transport's ceiling), in turn for several rounds: the
    /// ratio to etcd as the median of each round's own.
    Ratio {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Requests per client per row.
        #[arg(long, default_value_t = 300)]
        requests: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Another `gantry` binary (an earlier build) to run in turn with
        /// the rest, for a before/after ratio measured the same way.
        #[arg(long)]
        baseline_bin: Option<PathBuf>,
    },
    /// Serves `JobService.SubmitJobs` and nothing else, over Gantry's
    /// transport (started by `ratio`; prints `listening ADDR`).
    #[command(hide = true)]
    EchoServer {
        #[arg(long, requires_all = ["cert", "key"])]
        ca: Option<PathBuf>,
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// More submissions than the agents can run: the cluster takes what it
    /// can hold and refuses the rest at once; everything it took finishes.
    Overload {
        #[arg(long, default_value_t = 256)]
        clients: usize,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Simulated agents, 1,000 one-CPU task slots each.
        #[arg(long, default_value_t = 10)]
        agents: usize,
        /// How long each task runs.
        #[arg(long, default_value_t = 2000)]
        task_ms: u64,
        /// The replicas' pending-task limit (--max-pending-tasks).
        #[arg(long, default_value_t = 20_000)]
        max_pending: u64,
    },
    /// Hold many agent streams; then how fast a dead agent's node is found lost.
    Agents {
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
        /// Seconds to hold the streams while measuring the servers' CPU.
        #[arg(long, default_value_t = 10)]
        hold_s: u64,
    },
}

/// One row of `bench submit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SubmitRow {
    /// 1 client, 1 job per request.
    Single,
    /// 64 clients, 1 job per request.
    Clients,
    /// 64 clients, 100 jobs per request.
    Batched,
}

fn replica_processes(cluster: &Cluster) -> Vec<(String, u32)> {
    let mut p = replica_pids(cluster, "replica");
    p.extend(cluster.agent_pids());
    p.push(("bench (load+agents)".into(), std::process::id()));
    p
}

fn cpu_of(processes: &[(String, u32)]) -> f64 {
    processes
        .iter()
        .filter_map(|(_, pid)| gantry_bench::process_usage(*pid))
        .map(|(c, _)| c)
        .sum()
}

fn preamble(cli: &Cli, what: &str) {
    let t = cli.profile.timings();
    println!("machine: {}", machine());
    println!(
        "{what}; 3 replicas on loopback, {}; raft heartbeat {} ms, elections {}-{} ms, node grace {} ms",
        if cli.plaintext { "plaintext" } else { "mTLS" },
        t.heartbeat_ms,
        t.election_min_ms,
        t.election_max_ms,
        t.node_grace_ms
    );
}

async fn start(cli: &Cli) -> anyhow::Result<Cluster> {
    // The per-identity submit limit (2,000 requests/s by default) protects a
    // production cluster from one runaway client; a load test is that client.
    Cluster::start_with_options(3, cli.profile.timings(), !cli.plaintext, bench_env()).await
}

fn bench_env() -> Vec<(String, String)> {
    vec![
        ("GANTRY_SUBMIT_RATE".to_owned(), "1000000".to_owned()),
        ("GANTRY_SUBMIT_BURST".to_owned(), "1000000".to_owned()),
    ]
}

async fn overload(
    cli: &Cli,
    clients: usize,
    seconds: u64,
    agents: usize,
    task_ms: u64,
    max_pending: u64,
) -> anyhow::Result<()> {
    preamble(
        cli,
        &format!(
            "{clients} clients submitting 1-job requests for {seconds} s; {agents} simulated agents with 1,000 slots each, {task_ms} ms tasks; pending-task limit {max_pending}"
        ),
    );
    let mut env = bench_env();
    env.push((
        "GANTRY_MAX_PENDING_TASKS".to_owned(),
        max_pending.to_string(),
    ));
    let cluster =
        Cluster::start_with_options(3, cli.profile.timings(), !cli.plaintext, env).await?;
    let sim = SimAgents::start(&cluster, "sim", agents, task_ms)?;
    wait_registered(&cluster, agents).await?;
    let processes = replica_processes(&cluster);
    let submitters = gantry_bench::submits::clients(&cluster, clients, false)?;
    let outcome =
        gantry_bench::overload::run(&cluster, &sim, submitters, Duration::from_secs(seconds))
            .await?;
    outcome.print();
    print!("{}", usage_table(&processes));
    anyhow::ensure!(
        outcome.attempts_lost == 0.0 && outcome.rescheduled == 0,
        "nodes were marked lost or attempts rescheduled under overload"
    );
    Ok(())
}

async fn submit(
    cli: &Cli,
    requests: usize,
    no_etcd: bool,
    only: Option<SubmitRow>,
) -> anyhow::Result<()> {
    preamble(
        cli,
        "committed submissions (the reply comes after the Raft commit and apply)",
    );
    let cluster = start(cli).await?;
    gantry_submits(&cluster, 4, 20, 1, true).await?; // warm up connections and the leader
    // (row, name, clients, requests each, jobs per request, follow the leader, baseline)
    let rows = [
        (
            SubmitRow::Single,
            "1 client, 1 job/request",
            1,
            requests * 10,
            1,
            true,
            "etcd 3.4 here: 1,150 puts/s, p99 1.9 ms",
        ),
        (
            SubmitRow::Clients,
            "64 clients, 1 job/request",
            64,
            requests,
            1,
            true,
            "etcd 3.4 here: 8,900 puts/s, p99 17 ms",
        ),
        (
            SubmitRow::Clients,
            "64 clients, leader hint off",
            64,
            requests,
            1,
            false,
            "the row above",
        ),
        (
            SubmitRow::Batched,
            "64 clients, 100 jobs/request",
            64,
            (requests / 10).max(1),
            100,
            true,
            "the 1-job row above",
        ),
    ];
    println!("\n{}", header());
    let mut single = 0.0;
    let mut entries = Vec::new();
    let processes = replica_processes(&cluster);
    let leader = format!("replica {}", cluster.leader().await?);
    let term_before = leader_term(&cluster).await?;
    let mut cpu = CpuPerOp::new(
        processes
            .iter()
            .map(|(name, pid)| {
                let column = match name.strip_prefix("replica ") {
                    Some(id) if *name == leader => format!("r{id} leader"),
                    Some(id) => format!("r{id}"),
                    None => "load gen".to_owned(),
                };
                (column, *pid)
            })
            .collect(),
    );
    for (row, name, n, reqs, batch, follow, baseline) in rows {
        if only.is_some_and(|o| o != row) {
            continue;
        }
        let before = leader_log_index(&cluster).await?;
        let mark = cpu.mark();
        let l = gantry_submits(&cluster, n, reqs, batch, follow).await?;
        cpu.add(name, &mark, n * reqs * batch);
        let took = leader_log_index(&cluster).await? - before;
        entries.push((name, (n * reqs * batch) as f64 / took.max(1.0)));
        let compared = batch > 1 || !follow;
        if n == 64 && !compared {
            single = l.per_s;
        }
        let baseline = if compared && single > 0.0 {
            format!("{baseline}: {:.1}x", l.per_s / single)
        } else {
            baseline.to_owned()
        };
        println!("{}", l.row(&format!("gantry: {name}"), "jobs/s", &baseline));
        print_terms(&cluster, term_before).await?;
    }
    println!();
    for (name, per_entry) in entries {
        println!("jobs per Raft entry, {name}: {per_entry:.1} (group commit)");
    }
    println!("\n{}", cpu.table("job"));
    print!("{}", usage_table(&processes));
    drop(cluster);
    if no_etcd {
        return Ok(());
    }
    if etcd::binary().is_none() {
        println!("\netcd is not installed (apt-get install etcd-server): no side-by-side rows");
        return Ok(());
    }
    let etcd = Etcd::start(100, 1000).await?;
    println!(
        "\nthe same load against a 3-member etcd on loopback (plaintext), one put per request:"
    );
    println!("{}", header());
    let rows = [
        (SubmitRow::Single, "1 client", 1, requests * 10),
        (SubmitRow::Clients, "64 clients", 64, requests),
    ];
    let mut columns = etcd.pids();
    columns.push(("load gen".into(), std::process::id()));
    let mut cpu = CpuPerOp::new(columns);
    for (row, name, n, reqs) in rows {
        if only.is_some_and(|o| o != row) {
            continue;
        }
        let mark = cpu.mark();
        let l = etcd_puts(&etcd, n, reqs).await?;
        cpu.add(name, &mark, n * reqs);
        println!(
            "{}",
            l.row(&format!("etcd: {name}, 1 put/request"), "puts/s", "-")
        );
    }
    println!("\n{}", cpu.table("put"));
    print!("{}", usage_table(&etcd.pids()));
    Ok(())
}

async fn wait_registered(cluster: &Cluster, n: usize) -> anyhow::Result<Duration> {
    let client = cluster.client(&[cluster.leader().await?])?;
    let start = Instant::now();
    wait_for(
        "every agent to register",
        Duration::from_secs(300),
        || async {
            let nodes = client.list_nodes(true).await.ok()?;
            (nodes.iter().filter(|n| n.status == "ready").count() >= n).then_some(())
        },
    )
    .await?;
    Ok(start.elapsed())
}

async fn wait_counter(
    counter: &std::sync::atomic::AtomicU64,
    target: u64,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while AgentStats::get(counter) < target {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Submits `jobs` in batches of 1,000 from 4 submitters; returns when all are committed.
async fn submit_batches(cluster: &Cluster, jobs: usize) -> anyhow::Result<u64> {
    let per = jobs.div_ceil(4 * 1000);
    let mut tasks = Vec::new();
    for client in clients(cluster, 4, true)? {
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
    Ok((per * 4 * 1000) as u64)
}

async fn dispatch_latency(
    cluster: &Cluster,
    stats: &AgentStats,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let client = Client::new(&cluster.live_addrs(), cluster.client_options()?)?;
    stats.record.store(true, Ordering::Relaxed);
    let mut latency = Vec::new();
    for _ in 0..samples {
        let resp = client.submit_jobs(vec![spec()]).await?;
        let acked = Instant::now();
        let id = resp
            .jobs
            .first()
            .context("no job in the reply")?
            .job_id
            .clone();
        let t = wait_for("the job's dispatch", Duration::from_secs(10), || async {
            stats.assigned_at.lock().await.get(&id).copied()
        })
        .await?;
        latency.push(t.saturating_duration_since(acked));
    }
    stats.record.store(false, Ordering::Relaxed);
    latency.sort();
    Ok(latency)
}

async fn e2e(cli: &Cli, agents: usize, jobs: usize, samples: usize) -> anyhow::Result<()> {
    preamble(
        cli,
        &format!("end to end with {agents} simulated agents (real streams, one per agent)"),
    );
    let cluster = start(cli).await?;
    let connect = Instant::now();
    let sim = SimAgents::start(&cluster, "sim", agents, 0)?;
    wait_registered(&cluster, agents).await?;
    println!(
        "{agents} agents connected and registered in {:.1} s",
        connect.elapsed().as_secs_f64()
    );
    let latency = dispatch_latency(&cluster, &sim.stats, samples).await?;

    let processes = replica_processes(&cluster);
    let cpu_before = cpu_of(&processes);
    let term_before = leader_term(&cluster).await?;
    let base = AgentStats::get(&sim.stats.acked);
    let start = Instant::now();
    let submitted = submit_batches(&cluster, jobs).await?;
    wait_counter(&sim.stats.acked, base + submitted, "every result").await?;
    let elapsed = start.elapsed();
    let cpu = cpu_of(&processes) - cpu_before;
    println!("\n{}", header());
    println!(
        "{}",
        Latencies::rate(submitted as f64 / elapsed.as_secs_f64()).row(
            "tasks: submit->run->result committed",
            "tasks/s",
            "Slurm here: ~60 jobs/s (79 at best)"
        )
    );
    println!(
        "{}",
        Latencies {
            per_s: samples as f64,
            sorted: latency
        }
        .row(
            "dispatch: submit ack -> agent has it",
            "samples",
            "Slurm here: 565 ms median submit->start"
        )
    );
    println!(
        "\nCPU per task during the throughput phase, all processes: {:.3} ms (Slurm here: 20-25 ms)",
        cpu * 1e3 / submitted as f64
    );
    println!(
        "rescheduled attempts: {}; attempts lost with their node: {}",
        AgentStats::get(&sim.stats.rescheduled),
        gantry_bench::attempts_lost(&cluster).await?
    );
    print_terms(&cluster, term_before).await?;
    print!("{}", usage_table(&processes));
    Ok(())
}

/// Elections since `before` (the leader's term then): nobody kills a
/// replica here, so any is one the timings caused under load.
async fn print_terms(cluster: &Cluster, before: f64) -> anyhow::Result<()> {
    let elections = leader_term(cluster).await? - before;
    println!("  raft elections so far (none asked for): {elections:.0}");
    Ok(())
}

async fn real(cli: &Cli, agents: usize, jobs: usize, no_cgroups: bool) -> anyhow::Result<()> {
    preamble(
        cli,
        &format!(
            "{agents} real `gantry agent` processes running /bin/true, each under its supervisor, {}",
            if no_cgroups {
                "limits not enforced (--no-cgroups)"
            } else {
                "in cgroups with limits"
            }
        ),
    );
    let mut cluster = start(cli).await?;
    let ids: Vec<u64> = cluster.replicas.keys().copied().collect();
    let names: Vec<String> = (0..agents).map(|i| format!("real-{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        let mut order = ids.clone();
        order.rotate_left(i % ids.len());
        let mut flags = vec!["--max-tasks", "64"];
        if no_cgroups {
            flags.push("--no-cgroups");
        }
        cluster.start_agent_with(n, &order, &flags)?;
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    cluster.wait_nodes_ready(&refs).await?;
    let processes = replica_processes(&cluster);
    let leader = cluster.leader().await?;
    let metrics = cluster.replicas[&leader].metrics_addr.clone();
    let cpu_before = cpu_of(&processes);
    let machine_before = gantry_bench::machine_cpu_seconds();
    let start = Instant::now();
    let submitted = submit_batches(&cluster, jobs).await?;
    wait_for(
        "every job to complete",
        Duration::from_secs(600),
        || async {
            let (_, text) = http_get(&metrics, "/metrics").await.ok()?;
            let done = sample(&text, "gantry_jobs{state=\"complete\"}").unwrap_or(0.0)
                + sample(&text, "gantry_jobs{state=\"failed\"}").unwrap_or(0.0);
            (done as u64 >= submitted).then_some(())
        },
    )
    .await?;
    let elapsed = start.elapsed();
    let cpu = cpu_of(&processes) - cpu_before;
    let machine = gantry_bench::machine_cpu_seconds() - machine_before;
    let (_, text) = http_get(&metrics, "/metrics").await?;
    let failed = sample(&text, "gantry_jobs{state=\"failed\"}").unwrap_or(0.0);
    println!("\n{}", header());
    println!(
        "{}",
        Latencies::rate(submitted as f64 / elapsed.as_secs_f64()).row(
            "jobs completed (real /bin/true)",
            "jobs/s",
            "Slurm here: ~60 jobs/s (79 at best)"
        )
    );
    println!(
        "\nCPU per job: replicas, agents and the load generator (not the /bin/true processes themselves): {:.2} ms (Slurm here: 20-25 ms); failed jobs: {failed}",
        cpu * 1e3 / submitted as f64
    );
    println!(
        "CPU per job, the whole machine (supervisors, cgroups and /bin/true included): {:.2} ms",
        machine * 1e3 / submitted as f64
    );
    print!("{}", usage_table(&processes));
    Ok(())
}

/// The leader's last Raft log index, from its metrics.
async fn leader_log_index(cluster: &Cluster) -> anyhow::Result<f64> {
    let leader = cluster.leader().await?;
    let (_, text) = http_get(&cluster.replicas[&leader].metrics_addr, "/metrics").await?;
    sample(&text, "gantry_raft_last_log_index")
        .context("no gantry_raft_last_log_index in the leader's metrics")
}

/// The leader's current Raft term, from its metrics.
async fn leader_term(cluster: &Cluster) -> anyhow::Result<f64> {
    let leader = cluster.leader().await?;
    let (_, text) = http_get(&cluster.replicas[&leader].metrics_addr, "/metrics").await?;
    sample(&text, "gantry_raft_term").context("no gantry_raft_term in the leader's metrics")
}

async fn failover(cli: &Cli, agents: usize, runs: usize, task_ms: u64) -> anyhow::Result<()> {
    preamble(
        cli,
        &format!(
            "leader SIGKILL while {agents} simulated agents run {task_ms} ms tasks and a writer submits"
        ),
    );
    let mut cluster = start(cli).await?;
    let sim = SimAgents::start(&cluster, "sim", agents, task_ms)?;
    wait_registered(&cluster, agents).await?;
    // Background load: one submitter keeps every agent busy.
    let load = Client::new(&cluster.live_addrs(), cluster.client_options()?)?;
    let submitted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (submitted, stop) = (submitted.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if load.submit_jobs(vec![spec(); 20]).await.is_ok() {
                    submitted.fetch_add(20, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let term_before = leader_term(&cluster).await?;
    let mut took = Vec::new();
    for _ in 0..runs {
        let leader = cluster.leader().await?;
        let survivors: Vec<String> = cluster
            .others(leader)
            .iter()
            .map(|id| cluster.replicas[id].addr.clone())
            .collect();
        let opts = ClientOptions {
            request_timeout: Duration::from_millis(500),
            retry_deadline: Duration::from_secs(30),
            ..cluster.client_options()?
        };
        let probe = Client::new(&survivors, opts)?;
        probe.submit_jobs(vec![spec()]).await?;
        submitted.fetch_add(1, Ordering::Relaxed);
        let killed_at = Instant::now();
        cluster.kill(leader).await?;
        probe.submit_jobs(vec![spec()]).await?;
        took.push(killed_at.elapsed());
        submitted.fetch_add(1, Ordering::Relaxed);
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
    }
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    let total = submitted.load(Ordering::Relaxed);
    wait_counter(&sim.stats.acked, total, "every result after the failovers").await?;
    took.sort();
    let terms = leader_term(&cluster).await? - term_before;
    let client = cluster.client(&[cluster.leader().await?])?;
    let lost = client
        .list_nodes(true)
        .await?
        .iter()
        .filter(|n| n.status != "ready")
        .count();
    println!("\n{}", header());
    println!(
        "{}",
        Latencies {
            per_s: runs as f64,
            sorted: took.clone()
        }
        .row(
            "leader SIGKILL -> write accepted",
            "runs",
            "etcd here: 390 ms tuned, 1.4 s default"
        )
    );
    let ms: Vec<String> = took
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
        .collect();
    println!("runs (ms): {}", ms.join(", "));
    println!(
        "raft terms during the runs: {terms:.0} for {runs} kills (more: elections nobody caused, e.g. heartbeats late under load)"
    );
    println!(
        "tasks submitted {total}, results committed {}, rescheduled attempts {}, agents not ready at the end {lost}, agent reconnects {}",
        AgentStats::get(&sim.stats.acked),
        AgentStats::get(&sim.stats.rescheduled),
        AgentStats::get(&sim.stats.reconnects),
    );
    print!("{}", usage_table(&replica_processes(&cluster)));
    Ok(())
}

async fn hold(cli: &Cli, agents: usize, hold_s: u64) -> anyhow::Result<()> {
    preamble(cli, &format!("{agents} simulated agents holding streams"));
    let cluster = start(cli).await?;
    let connect = Instant::now();
    let sim = SimAgents::start(&cluster, "sim", agents, 0)?;
    let registered = wait_registered(&cluster, agents).await?;
    println!(
        "{agents} streams open and nodes registered in {:.1} s (certificates issued {:.1} s of it)",
        connect.elapsed().as_secs_f64(),
        connect.elapsed().saturating_sub(registered).as_secs_f64()
    );
    let processes = replica_processes(&cluster);
    let servers: Vec<(String, u32)> = processes
        .iter()
        .filter(|(n, _)| n.starts_with("replica"))
        .cloned()
        .collect();
    let cpu_before = cpu_of(&servers);
    tokio::time::sleep(Duration::from_secs(hold_s)).await; // a measuring window, not synchronisation
    let held = AgentStats::get(&sim.stats.connected);
    let cpu = cpu_of(&servers) - cpu_before;
    let rss: f64 = servers
        .iter()
        .filter_map(|(_, pid)| gantry_bench::process_usage(*pid))
        .map(|(_, r)| r)
        .sum();
    let rss_now: f64 = servers
        .iter()
        .filter_map(|(_, pid)| gantry_bench::rss_now(*pid))
        .sum();
    println!(
        "streams held after {hold_s} s: {held}; servers' CPU while holding: {:.1}% of one core; servers' RSS together: {rss_now:.0} MiB now, {rss:.0} MiB at the peak (target: 10,000 streams in 1 GiB)",
        cpu * 100.0 / hold_s as f64
    );
    // Lost-node detection: end some agents' streams, time until their nodes are lost.
    let victims: Vec<usize> = (0..agents.min(10)).collect();
    let names: Vec<String> = victims.iter().map(|i| sim.node_ids[*i].clone()).collect();
    let client = cluster.client(&[cluster.leader().await?])?;
    let killed = Instant::now();
    sim.kill(&victims);
    wait_for(
        "the dead agents' nodes to be lost",
        Duration::from_secs(120),
        || async {
            let nodes = client.list_nodes(true).await.ok()?;
            names
                .iter()
                .all(|n| nodes.iter().any(|x| &x.id == n && x.status == "lost"))
                .then_some(())
        },
    )
    .await?;
    println!(
        "lost-node detection: {} agents killed -> all their nodes lost in {:.2} s (grace {} ms; target <= 5 s with the fast profile)",
        victims.len(),
        killed.elapsed().as_secs_f64(),
        cli.profile.timings().node_grace_ms
    );
    print!("{}", usage_table(&processes));
    Ok(())
}

async fn ratio_scenario(
    cli: &Cli,
    rounds: usize,
    requests: usize,
    n: usize,
    baseline_bin: Option<PathBuf>,
) -> anyhow::Result<()> {
    preamble(
        cli,
        &format!(
            "{n} clients, one job per unary request, {rounds} rounds of Gantry, etcd and the echo server in turn"
        ),
    );
    let cluster = start(cli).await?;
    let baseline = match baseline_bin {
        Some(bin) => Some(
            Cluster::start_binary(bin, 3, cli.profile.timings(), !cli.plaintext, bench_env())
                .await?,
        ),
        None => None,
    };
    ratio::scenario(&cluster, baseline.as_ref(), rounds, requests, n).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Thousands of streams need thousands of descriptors here and in the
    // replicas (which inherit the limit).
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    match &cli.scenario {
        Scenario::Submit {
            requests,
            no_etcd,
            only,
        } => submit(&cli, *requests, *no_etcd, *only).await,
        Scenario::E2e {
            agents,
            jobs,
            latency_samples,
        } => e2e(&cli, *agents, *jobs, *latency_samples).await,
        Scenario::Real {
            agents,
            jobs,
            no_cgroups,
        } => real(&cli, *agents, *jobs, *no_cgroups).await,
        Scenario::Failover {
            agents,
            runs,
            task_ms,
        } => failover(&cli, *agents, *runs, *task_ms).await,
        Scenario::Agents { agents, hold_s } => hold(&cli, *agents, *hold_s).await,
        Scenario::Overload {
            clients,
            seconds,
            agents,
            task_ms,
            max_pending,
        } => overload(&cli, *clients, *seconds, *agents, *task_ms, *max_pending).await,
        Scenario::Ratio {
            rounds,
            requests,
            clients,
            baseline_bin,
        } => ratio_scenario(&cli, *rounds, *requests, *clients, baseline_bin.clone()).await,
        Scenario::EchoServer { ca, cert, key } => {
            let tls = match (ca, cert, key) {
                (Some(ca), Some(cert), Some(key)) => Some(TlsPaths {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            };
            echo::serve(tls).await
        }
    }
}
