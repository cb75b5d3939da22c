//! The deterministic simulation (see `cluster_tests::sim`): many seeds, each
//! a whole cluster with faults in one thread under a virtual clock, checked
//! by the invariants in `sim/invariants/`.
//!
//! `GANTRY_SIM_SEEDS=N` runs N seeds (CI: 1,000; a developer's `cargo test`:
//! 40); `GANTRY_SIM_SEED=N` replays one. Any violation fails the test and
//! prints the seed and its fault schedule.

#![allow(clippy::unwrap_used)]

use std::io::Write;

use cluster_tests::sim::{self, Options, Report};

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("GANTRY_SIM_SEED") {
        return vec![s.parse().expect("GANTRY_SIM_SEED must be a number")];
    }
    let default = if std::env::var_os("CI").is_some() {
        1_000
    } else {
        40
    };
    let n: u64 = std::env::var("GANTRY_SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    let base: u64 = rand::random::<u32>().into();
    (base..base + n).collect()
}

/// Seeds on two threads (the machine's cores), each with its own runtime.
fn run_all(seeds: &[u64]) -> Vec<Report> {
    let opts = Options::default();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<u64> = seeds.iter().copied().skip(t).step_by(threads).collect();
                let opts = &opts;
                s.spawn(move || {
                    mine.into_iter()
                        .map(|seed| sim::run(seed, opts))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

#[test]
fn t90_simulated_seeds_keep_every_invariant() {
    let seeds = seeds();
    let reports = run_all(&seeds);
    let failed: Vec<&Report> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    // Written to stderr directly, past the test harness's capture, so
    // every run shows its summary.
    let _ = writeln!(std::io::stderr(), "{}", sim::summary(&reports));
    for r in &failed {
        eprintln!(
            "FAILED {r}\n  replay: GANTRY_SIM_SEED={} cargo test -p cluster-tests --test t90_simulation",
            r.seed
        );
        for f in &r.faults {
            eprintln!("  fault {f}");
        }
        for v in &r.violations {
            eprintln!("  {}: {}", v.invariant, v.detail);
        }
        for line in &r.final_state {
            eprintln!("  final: {line}");
        }
    }
    assert!(
        failed.is_empty(),
        "{} seeds violated invariants",
        failed.len()
    );
    // The runs did real work: jobs were acknowledged and faults injected.
    assert!(
        reports.iter().all(|r| r.acknowledged > 0),
        "a seed acknowledged no submit"
    );
    assert!(
        reports.iter().any(|r| r.faults.len() > 1),
        "no faults were injected"
    );
}

#[test]
fn t90_a_seed_replays_exactly() {
    let opts = Options {
        fault_ms: 6_000,
        ..Options::default()
    };
    let seed = 7;
    let a = sim::run(seed, &opts);
    let b = sim::run(seed, &opts);
    assert_eq!(a.faults, b.faults);
    assert_eq!(
        (a.submits, a.reads, a.cancels, a.messages, a.dropped),
        (b.submits, b.reads, b.cancels, b.messages, b.dropped)
    );
    assert_eq!(
        a.fingerprint, b.fingerprint,
        "seed {seed} did not replay: {a}\n{b}"
    );
    // And a different seed is a different run.
    let c = sim::run(seed + 1, &opts);
    assert_ne!(a.fingerprint, c.fingerprint);
}

#[test]
fn t90_a_node_confirmed_while_its_loss_is_written_is_not_lost_again() {
    // The seed that found it (CI, 2026-12-06): the leader's liveness loop
    // forgot a reconnected node's fresh confirmation when its last loss
    // committed, then judged it from when the loop started, and marked it
    // lost on every tick; its tasks' retry backoffs outgrew the run.
    let r = sim::run(2_779_761_268, &Options::default());
    assert!(
        r.violations.is_empty(),
        "{r}\n{:#?}\n{:#?}",
        r.violations,
        r.final_state
    );
}

/// How many of `seeds` violate `invariant` with `opts`.
fn seeds_violating(seeds: std::ops::Range<u64>, opts: &Options, invariant: &str) -> usize {
    seeds
        .map(|seed| sim::run(seed, opts))
        .filter(|r| r.violations.iter().any(|v| v.invariant == invariant))
        .count()
}

#[test]
fn t90_a_planted_stale_read_is_caught() {
    // Replicas that skip the read barrier serve stale versions from
    // partitioned or lagging replicas; the linearizability checker must see it.
    let opts = Options {
        plant: Some(sim::Plant::StaleReads),
        ..Options::default()
    };
    let caught = seeds_violating(0..20, &opts, "not linearizable");
    assert!(caught > 0, "20 seeds with stale reads planted, none caught");
}

#[test]
fn t90_a_bug_planted_in_the_shipped_leader_code_is_caught() {
    // The simulation's replicas stamp entries with gantry-server's own
    // entry clock. Planted there (debug builds only), a bug that stamps
    // with the leader's bare wall clock writes times earlier than the
    // entries before them whenever a leader's clock is behind: the
    // entry-times invariant must see it on the seeds that skew clocks.
    if !gantry_server::plant::set(None) {
        eprintln!("SKIPPED: bugs can be planted in debug builds only");
        return;
    }
    let planted = Options {
        plant: Some(sim::Plant::Shipped(
            gantry_server::plant::Plant::RawEntryStamps,
        )),
        ..Options::default()
    };
    let caught = seeds_violating(0..20, &planted, "entry times on one timeline");
    eprintln!("raw entry stamps planted in gantry-server: caught on {caught} of 20 seeds");
    assert!(
        caught > 0,
        "20 seeds with raw entry stamps planted in gantry-server, none caught"
    );
}

#[test]
fn t90_a_liveness_bug_planted_in_the_shipped_leader_code_is_caught() {
    // The simulation's replicas run gantry-server's leader loops. Planted
    // in its liveness bookkeeping (debug builds only), a leader that
    // forgets the sessions replicas confirm marks nodes lost while their
    // agents hold leases from those very confirmations, which the
    // checkers must see.
    if !gantry_server::plant::set(None) {
        eprintln!("SKIPPED: bugs can be planted in debug builds only");
        return;
    }
    let planted = Options {
        plant: Some(sim::Plant::Shipped(
            gantry_server::plant::Plant::ForgetConfirmations,
        )),
        ..Options::default()
    };
    let caught = seeds_violating(0..10, &planted, "no lease outlives its node's loss");
    eprintln!("forgotten confirmations planted in gantry-server: caught on {caught} of 10 seeds");
    assert!(
        caught > 0,
        "10 seeds with forgotten confirmations planted in gantry-server, none caught"
    );
}

#[test]
fn t90_a_garbage_collection_bug_planted_in_the_shipped_leader_code_is_caught() {
    // The leader's collection loop, planted to ignore retentions (debug
    // builds only), removes jobs the moment they finish: the replicas'
    // states show them gone before their retention passed.
    if !gantry_server::plant::set(None) {
        eprintln!("SKIPPED: bugs can be planted in debug builds only");
        return;
    }
    let planted = Options {
        plant: Some(sim::Plant::Shipped(
            gantry_server::plant::Plant::CollectIgnoringRetention,
        )),
        ..Options::default()
    };
    let caught = seeds_violating(
        0..10,
        &planted,
        "a job collected before its retention passed",
    );
    eprintln!("retention ignored by the collector: caught on {caught} of 10 seeds");
    assert!(
        caught > 0,
        "10 seeds with retentions ignored by the collector, none caught"
    );
}

#[test]
fn t90_a_leader_killed_mid_flush_and_back_at_once_keeps_the_replicas_agreed() {
    // Leaders are killed while followers hold appends they have not flushed
    // (a killed process loses those) and are restarted before an election
    // can end. openraft's default restores such a leader in its old term,
    // where it gives new entries the lost ones' log ids; followers keep
    // theirs, and the replicas diverge. Gantry turns restoring off: the
    // leader stands for election and a new term gives new log ids.
    let schedule = Options {
        crash_leaders_mid_flush: true,
        ..Options::default()
    };
    let planted = Options {
        plant: Some(sim::Plant::LeaderRestore),
        ..schedule.clone()
    };
    let seeds = 0..12u64;
    let caught = seeds_violating(seeds.clone(), &planted, "replicas diverged");
    assert!(
        caught > 0,
        "12 seeds with leaders restored in their old term, no divergence caught"
    );
    let mut lost = 0;
    for seed in seeds {
        let r = sim::run(seed, &schedule);
        assert!(r.violations.is_empty(), "{r}: {:#?}", r.violations);
        lost += r
            .faults
            .iter()
            .filter(|f| f.contains("unflushed entries lost"))
            .count();
    }
    assert!(lost > 0, "no crash lost an unflushed append");
}
