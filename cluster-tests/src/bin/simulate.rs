//! Runs the deterministic simulation over many seeds and prints one line per
//! seed and a summary; exits 1 if any invariant was violated.
//!
//!   cargo run --release -p cluster-tests --bin simulate -- --seeds 1000
//!   cargo run --release -p cluster-tests --bin simulate -- --seed 42 --verbose
//!
//! A failing seed replays exactly with `--seed N`.

use cluster_tests::sim::{self, Options, Report};

fn usage() -> ! {
    eprintln!(
        "usage: simulate [--seed N | --seeds N [--start S]] [--threads T] [--fault-ms MS] [--verbose] [--plant-stale-reads] [--crash-leaders-mid-flush [--plant-leader-restore]]"
    );
    std::process::exit(64)
}

fn num(v: Option<String>) -> u64 {
    v.and_then(|s| s.parse().ok()).unwrap_or_else(|| usage())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut seeds, mut start, mut one) = (100u64, None, None);
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mut opts = Options::default();
    let mut verbose = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seed" => one = Some(num(args.next())),
            "--seeds" => seeds = num(args.next()),
            "--start" => start = Some(num(args.next())),
            "--threads" => threads = num(args.next()).max(1),
            "--fault-ms" => opts.fault_ms = num(args.next()),
            "--verbose" => verbose = true,
            "--plant-stale-reads" => opts.plant = Some(sim::Plant::StaleReads),
            "--crash-leaders-mid-flush" => opts.crash_leaders_mid_flush = true,
            "--plant-leader-restore" => opts.plant = Some(sim::Plant::LeaderRestore),
            _ => usage(),
        }
    }
    let list: Vec<u64> = match one {
        Some(s) => vec![s],
        None => {
            let base = start.unwrap_or_else(|| rand::random::<u32>().into());
            (base..base + seeds).collect()
        }
    };
    let began = tokio::time::Instant::now();
    let reports = run_all(&list, threads as usize, &opts, verbose);
    let failed: Vec<&Report> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    println!(
        "{} in {:.1} s",
        sim::summary(&reports),
        began.elapsed().as_secs_f64()
    );
    for r in &failed {
        println!("FAILED seed {} (replay: --seed {}):", r.seed, r.seed);
        for f in &r.faults {
            println!("  fault {f}");
        }
        for v in &r.violations {
            println!("  {}: {}", v.invariant, v.detail);
        }
        for line in &r.final_state {
            println!("  final: {line}");
        }
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

/// Seeds are independent: run them on `threads` threads, each its own runtime.
fn run_all(seeds: &[u64], threads: usize, opts: &Options, verbose: bool) -> Vec<Report> {
    let chunks: Vec<Vec<u64>> = (0..threads)
        .map(|t| seeds.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    let mut out: Vec<Report> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|seed| {
                            let r = sim::run(seed, opts);
                            println!("{r}");
                            if verbose {
                                for f in &r.faults {
                                    println!("  fault {f}");
                                }
                            }
                            r
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    out.sort_by_key(|r| r.seed);
    out
}
