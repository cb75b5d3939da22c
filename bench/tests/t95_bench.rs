#![allow(clippy::unwrap_used, clippy::disallowed_types)]
//! The load harness's scenarios run end to end at a small size (issue 9).
//! Nothing here checks a time: figures are what `bench` prints, and the
//! tests check that each scenario completes and reports them.

use std::process::Command;

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .env("GANTRY_BIN", cluster_tests::gantry_bin().unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("machine: "), "{stdout}");
    assert!(stdout.contains("peak RSS MiB"), "{stdout}");
    stdout
}

/// The number in the rate column of the row starting with `figure`.
fn rate(stdout: &str, figure: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(figure))
        .unwrap_or_else(|| panic!("no row {figure:?} in\n{stdout}"));
    line[figure.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn t95_submit_scenario_reports_every_row_over_mtls() {
    let out = bench(&["submit", "--requests", "10"]);
    assert!(out.contains("mTLS"), "{out}");
    for row in [
        "gantry: 1 client, 1 job/request",
        "gantry: 64 clients, 1 job/request",
        "gantry: 64 clients, 100 jobs/request",
    ] {
        assert!(rate(&out, row) > 0.0, "{out}");
        // Its CPU per job by process, the leader named.
        let cpu = row.trim_start_matches("gantry: ");
        assert!(out.lines().any(|l| l.starts_with(cpu)), "{out}");
    }
    let header = out
        .lines()
        .find(|l| l.starts_with("CPU µs per job, by process"))
        .unwrap_or_else(|| panic!("no CPU table in\n{out}"));
    assert!(
        header.contains("leader") && header.contains("load gen"),
        "{out}"
    );
    if gantry_bench::etcd::binary().is_some() {
        assert!(rate(&out, "etcd: 64 clients, 1 put/request") > 0.0, "{out}");
        assert!(out.contains("CPU µs per put, by process"), "{out}");
    } else {
        assert!(out.contains("etcd is not installed"), "{out}");
    }
}

#[test]
fn t95_e2e_scenario_runs_every_task_through_simulated_agents() {
    let out = bench(&[
        "e2e",
        "--agents",
        "20",
        "--jobs",
        "2000",
        "--latency-samples",
        "20",
    ]);
    assert!(
        rate(&out, "tasks: submit->run->result committed") > 0.0,
        "{out}"
    );
    assert!(
        out.contains("dispatch: submit ack -> agent has it"),
        "{out}"
    );
    assert!(out.contains("rescheduled attempts: 0"), "{out}");
}

#[test]
fn t95_real_agents_scenario_completes_every_job() {
    let out = bench(&["--plaintext", "real", "--agents", "2", "--jobs", "200"]);
    assert!(rate(&out, "jobs completed (real /bin/true)") > 0.0, "{out}");
    assert!(out.contains("failed jobs: 0"), "{out}");
}

#[test]
fn t95_failover_scenario_loses_and_reruns_nothing() {
    // The default profile: a loaded CI machine must not see elections that a
    // tuned one would tolerate.
    let out = bench(&[
        "failover",
        "--agents",
        "10",
        "--runs",
        "1",
        "--task-ms",
        "100",
    ]);
    assert!(out.contains("rescheduled attempts 0"), "{out}");
    assert!(out.contains("agents not ready at the end 0"), "{out}");
}

#[test]
fn t95_agents_scenario_holds_streams_and_finds_dead_nodes_lost() {
    let out = bench(&[
        "--profile",
        "fast",
        "agents",
        "--agents",
        "50",
        "--hold-s",
        "1",
    ]);
    assert!(out.contains("streams held after 1 s: 50"), "{out}");
    assert!(
        out.contains("lost-node detection: 10 agents killed"),
        "{out}"
    );
}

#[test]
fn t95_ratio_scenario_runs_gantry_the_echo_server_and_a_baseline_in_turn() {
    let bin = cluster_tests::gantry_bin().unwrap();
    let bin = bin.to_str().unwrap();
    let out = bench(&[
        "ratio",
        "--rounds",
        "2",
        "--requests",
        "5",
        "--clients",
        "4",
        "--baseline-bin",
        bin,
    ]);
    let rounds: Vec<&str> = out.lines().filter(|l| l.starts_with("round ")).collect();
    assert_eq!(rounds.len(), 2, "{out}");
    for target in ["gantry", "baseline", "echo"] {
        assert!(
            rounds.iter().all(|l| l.contains(&format!("{target} "))),
            "{out}"
        );
        assert!(
            rate(&out, &format!("{target}: 4 clients, median of 2")) > 0.0,
            "{out}"
        );
    }
    assert!(out.contains("gantry / baseline: "), "{out}");
    assert!(out.contains("Gantry beyond the transport"), "{out}");
    // Jobs per Raft entry in every round, and each replica's CPU by kind
    // of thread, the leader's among them.
    assert!(rounds.iter().all(|l| l.contains("/entry")), "{out}");
    assert!(out.contains("gantry: CPU by thread"), "{out}");
    assert!(out.contains("(leader): tokio workers"), "{out}");
    assert!(out.contains("(server): tokio workers"), "{out}");
    assert!(out.contains("echo server"), "{out}");
    if gantry_bench::etcd::binary().is_some() {
        assert!(rate(&out, "etcd: 4 clients, median of 2") > 0.0, "{out}");
        assert!(out.contains("gantry / etcd: "), "{out}");
    } else {
        assert!(out.contains("etcd is not installed"), "{out}");
    }
}
