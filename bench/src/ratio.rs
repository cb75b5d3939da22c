//! `bench ratio`: the row issue 9 compares with etcd (64 clients, one job
//! per unary request) against Gantry, etcd and the echo server in turn,
//! for several rounds.
//!
//! This machine's speed drifts by a fifth within minutes (one binary read
//! 166 and 242 µs of CPU per job in runs minutes apart), so a ratio of rows
//! taken minutes apart is largely drift. Here the three run one after the
//! other, all three clusters up, in alternating order, and each round gives
//! its own ratio: the median of those is the figure. The clients connect
//! and make a call before the first round, so no row pays for handshakes.

use std::sync::Arc;

use gantry_client::Client;

use crate::echo::EchoServer;
use crate::etcd::{self, Etcd, EtcdClient};
use crate::load::{Latencies, header};
use crate::submits::{clients, clients_of, etcd_clients, put_with, submit_indexed};
use crate::{CpuPerOp, ThreadUsage, replica_pids, usage_table};
use cluster_tests::Cluster;

/// Starts etcd (where installed) and the echo server beside `cluster`,
/// runs the rounds and prints the figures and what they leave for the
/// replicas' own work.
///
/// With a `baseline` cluster (an earlier build of `gantry`), it runs in
/// turn with the rest and the two builds' ratio is measured the same way.
pub async fn scenario(
    cluster: &Cluster,
    baseline: Option<&Cluster>,
    rounds: usize,
    requests: usize,
    n: usize,
) -> anyhow::Result<()> {
    let echo = EchoServer::start(cluster).await?;
    let etcd = match etcd::binary() {
        Some(_) => Some(Etcd::start(100, 1000).await?),
        None => {
            println!("etcd is not installed (apt-get install etcd-server): no etcd rows");
            None
        }
    };
    let mut processes = replica_pids(cluster, "replica");
    let pids = |p: &[(String, u32)]| p.iter().map(|(_, pid)| *pid).collect::<Vec<_>>();
    // Which replica leads, for the tables of CPU by thread; the echo
    // server's table is the transport's own share, to read the replicas'
    // against.
    let tables = [
        ("gantry", leader_pid(cluster).await),
        (
            "baseline",
            match baseline {
                Some(b) => leader_pid(b).await,
                None => None,
            },
        ),
        ("echo", None),
    ];
    let mut targets = vec![Target::gantry(
        "gantry",
        "jobs/s",
        pids(&processes),
        clients(cluster, n, true)?,
    )];
    if let Some(etcd) = &etcd {
        targets.push(Target::etcd(pids(&etcd.pids()), etcd_clients(etcd, n)?));
        processes.extend(etcd.pids());
    }
    if let Some(b) = baseline {
        let replicas = replica_pids(b, "baseline");
        targets.push(Target::gantry(
            "baseline",
            "jobs/s",
            pids(&replicas),
            clients(b, n, true)?,
        ));
        processes.extend(replicas);
    }
    let echo_pid: Vec<u32> = echo.pid().into_iter().collect();
    processes.extend(echo_pid.iter().map(|p| ("echo server".to_owned(), *p)));
    let opts = cluster.client_options()?;
    let echo_clients = clients_of(std::slice::from_ref(&echo.addr), n, &opts)?;
    targets.push(Target::gantry("echo", "calls/s", echo_pid, echo_clients));

    let (readings, threads) = run(&targets, rounds, requests).await?;
    println!("\n{}", cpu_table(&targets, &readings));
    let at = |name: &str| targets.iter().position(|t| t.name == name);
    for (name, leader) in tables {
        if let Some(i) = at(name) {
            let ops = readings[i].len() * targets[i].clients() * requests;
            println!("{}", thread_table(&targets[i], &threads[i], leader, ops));
        }
    }
    let of = |name: &str| at(name).map(|i| readings[i].as_slice());
    let (Some(gantry), Some(echo_r)) = (of("gantry"), of("echo")) else {
        anyhow::bail!("the gantry and echo rows are always run");
    };
    if let Some(b) = of("baseline") {
        println!(
            "gantry / baseline: {:.2}x jobs/s, {:.2}x CPU per job in all (medians of the rounds' own ratios)",
            ratio(gantry, b),
            median(
                gantry
                    .iter()
                    .zip(b)
                    .map(|(g, b)| g.all_us() / b.all_us())
                    .collect()
            )
        );
    }
    let (g_all, x_all) = (all_us(gantry), all_us(echo_r));
    println!(
        "Gantry beyond the transport (group commit, Raft to two followers, three logs, \
         three applies): {:.0} µs of CPU per job",
        g_all - x_all
    );
    if let Some(e) = of("etcd") {
        let e_all = all_us(e);
        println!(
            "gantry / etcd: {:.2}x (median of the rounds' own ratios; target 2x)",
            ratio(gantry, e)
        );
        println!(
            "echo / etcd: {:.2}x: what a server that does no work at all reaches on this transport",
            ratio(echo_r, e)
        );
        println!(
            "2x etcd on a busy machine needs at most {:.0} µs of CPU per job in all (etcd: \
             {e_all:.0} per put); the transport and clients take {x_all:.0} of it, which leaves \
             {:.0} for the replicas' work (today {:.0})",
            e_all / 2.0,
            e_all / 2.0 - x_all,
            g_all - x_all
        );
    }
    print!("\n{}", usage_table(&processes));
    Ok(())
}

/// One system under load: its server processes and its clients.
pub struct Target {
    pub name: &'static str,
    unit: &'static str,
    servers: Vec<u32>,
    load: Load,
}

enum Load {
    Gantry(Arc<Vec<Client>>),
    Etcd(Arc<Vec<EtcdClient>>),
}

/// What one row measured.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    pub per_s: f64,
    /// CPU µs per operation: the servers' together, and the load generator's.
    pub servers_us: f64,
    pub load_us: f64,
    /// Operations per Raft entry (Gantry's submissions; 0 where the
    /// replies carry no commit index).
    pub per_entry: f64,
}

impl Reading {
    pub fn all_us(&self) -> f64 {
        self.servers_us + self.load_us
    }
}

impl Target {
    /// Gantry's clients (or the echo server's, which speaks the same API).
    pub fn gantry(
        name: &'static str,
        unit: &'static str,
        servers: Vec<u32>,
        c: Vec<Client>,
    ) -> Self {
        Self {
            name,
            unit,
            servers,
            load: Load::Gantry(Arc::new(c)),
        }
    }

    pub fn etcd(servers: Vec<u32>, clients: Vec<EtcdClient>) -> Self {
        Self {
            name: "etcd",
            unit: "puts/s",
            servers,
            load: Load::Etcd(Arc::new(clients)),
        }
    }

    fn clients(&self) -> usize {
        match &self.load {
            Load::Gantry(c) => c.len(),
            Load::Etcd(c) => c.len(),
        }
    }

    /// The load, and operations per Raft entry where that can be read.
    async fn drive(&self, requests: usize) -> anyhow::Result<(Latencies, f64)> {
        match &self.load {
            Load::Gantry(c) => {
                let (l, (low, high)) = submit_indexed(c.clone(), requests, 1).await?;
                let ops = (self.clients() * requests) as f64;
                // The first entry of the row is counted whole, though
                // submissions from before it may share it.
                let per_entry = if high == 0 {
                    0.0
                } else {
                    ops / (high - low + 1) as f64
                };
                Ok((l, per_entry))
            }
            Load::Etcd(c) => Ok((put_with(c.clone(), requests).await?, 0.0)),
        }
    }

    /// `requests` calls from every client, with the CPU it took (and each
    /// server's, by kind of thread).
    async fn measure(
        &self,
        requests: usize,
    ) -> anyhow::Result<(Latencies, Reading, Vec<ThreadUsage>)> {
        let threads_before: Vec<ThreadUsage> =
            self.servers.iter().map(|p| ThreadUsage::of(*p)).collect();
        let mut columns: Vec<(String, u32)> = self
            .servers
            .iter()
            .map(|pid| (String::new(), *pid))
            .collect();
        columns.push((String::new(), std::process::id()));
        let cpu = CpuPerOp::new(columns);
        let mark = cpu.mark();
        let (l, per_entry) = self.drive(requests).await?;
        let per = cpu.per_op(&mark, self.clients() * requests);
        let threads = self
            .servers
            .iter()
            .zip(&threads_before)
            .map(|(p, before)| ThreadUsage::of(*p).since(before))
            .collect();
        let (load, servers) = per.split_last().unwrap_or((&0.0, &[]));
        let reading = Reading {
            per_s: l.per_s,
            servers_us: servers.iter().sum(),
            load_us: *load,
            per_entry,
        };
        Ok((l, reading, threads))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Each target's readings, round by round, and its servers' CPU by kind
/// of thread over all rounds.
pub type Measured = (Vec<Vec<Reading>>, Vec<Vec<ThreadUsage>>);

/// Runs `rounds` rounds of `requests` calls per client against every
/// target (alternating the order), printing each round.
pub async fn run(targets: &[Target], rounds: usize, requests: usize) -> anyhow::Result<Measured> {
    for t in targets {
        t.drive(2).await?;
    }
    let mut readings = vec![Vec::new(); targets.len()];
    let mut threads: Vec<Vec<ThreadUsage>> = targets
        .iter()
        .map(|t| vec![ThreadUsage::default(); t.servers.len()])
        .collect();
    let mut latencies: Vec<Vec<std::time::Duration>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (l, r, used) = targets[i].measure(requests).await?;
            for (sum, u) in threads[i].iter_mut().zip(&used) {
                sum.add(u);
            }
            latencies[i].extend(l.sorted);
            readings[i].push(r);
        }
        let mut line = format!("round {:<3}", round + 1);
        for (t, rs) in targets.iter().zip(&readings) {
            if let Some(r) = rs.last() {
                line.push_str(&format!(
                    "  {} {:>6.0} {} ({:.0}+{:.0} µs)",
                    t.name, r.per_s, t.unit, r.servers_us, r.load_us
                ));
                if r.per_entry > 0.0 {
                    line.push_str(&format!(" {:.1}/entry", r.per_entry));
                }
            }
        }
        println!("{line}");
    }
    println!("\n{}", header());
    for ((t, rs), mut sorted) in targets.iter().zip(&readings).zip(latencies) {
        sorted.sort();
        let all = Latencies {
            per_s: median(rs.iter().map(|r| r.per_s).collect()),
            sorted,
        };
        let what = format!("{}: {} clients, median of {rounds}", t.name, t.clients());
        println!("{}", all.row(&what, t.unit, "latencies of all rounds"));
    }
    Ok((readings, threads))
}

/// The pid of `cluster`'s leader, if the replicas agree on one.
async fn leader_pid(cluster: &Cluster) -> Option<u32> {
    cluster.pid(cluster.leader().await.ok()?)
}

/// Where `t`'s servers spent their CPU over all rounds (`ops` operations),
/// by kind of thread: µs per operation and context switches per 100.
pub fn thread_table(t: &Target, used: &[ThreadUsage], leader: Option<u32>, ops: usize) -> String {
    let ops = ops.max(1) as f64;
    let mut out = format!(
        "{:<38} {:>10} {:>16}\n",
        format!("{}: CPU by thread, all rounds", t.name),
        "µs per op",
        "switches per 100"
    );
    for (i, (pid, u)) in t.servers.iter().zip(used).enumerate() {
        let role = match leader {
            Some(l) if l == *pid => "leader",
            Some(_) => "follower",
            None => "server",
        };
        // Threads that did nothing (the main thread, parked at startup) are left out.
        for (kind, (cpu, switches)) in u.by_kind.iter().filter(|(_, (c, _))| *c > 0.0) {
            out.push_str(&format!(
                "{:<38} {:>10.1} {:>16.1}\n",
                format!("  {} ({role}): {kind}", i + 1),
                cpu * 1e6 / ops,
                *switches as f64 * 100.0 / ops
            ));
        }
    }
    out
}

/// The median over rounds of `a`'s rate over `b`'s in the same round.
pub fn ratio(a: &[Reading], b: &[Reading]) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| a.per_s / b.per_s).collect())
}

/// The table of CPU per operation (medians over the rounds), and how
/// busy the machine was (cores, from CPU per operation times the rate).
pub fn cpu_table(targets: &[Target], readings: &[Vec<Reading>]) -> String {
    let mut out = format!(
        "{:<38} {:>10} {:>10} {:>10} {:>12}\n",
        "CPU µs per op (median of rounds)", "servers", "load gen", "all", "cores busy"
    );
    for (t, rs) in targets.iter().zip(readings) {
        let servers = median(rs.iter().map(|r| r.servers_us).collect());
        let load = median(rs.iter().map(|r| r.load_us).collect());
        let busy = median(rs.iter().map(|r| r.all_us() * r.per_s / 1e6).collect());
        out.push_str(&format!(
            "{:<38} {servers:>10.0} {load:>10.0} {:>10.0} {busy:>12.2}\n",
            t.name,
            servers + load
        ));
    }
    out
}

/// Median CPU µs per operation, all processes.
pub fn all_us(readings: &[Reading]) -> f64 {
    median(readings.iter().map(Reading::all_us).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(per_s: f64) -> Reading {
        Reading {
            per_s,
            servers_us: 1.0,
            load_us: 1.0,
            per_entry: 0.0,
        }
    }

    #[test]
    fn t10_the_ratio_is_the_median_of_each_rounds_own() {
        // Drift moves both systems together: round by round the ratio holds.
        let a = [r(100.0), r(200.0), r(150.0)];
        let b = [r(50.0), r(100.0), r(100.0)];
        assert_eq!(ratio(&a, &b), 2.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }
}
