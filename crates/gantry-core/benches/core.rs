//! The hot pure code of the control plane: applying large batches and one
//! scheduling round over a big cluster. `cargo bench -p gantry-core`;
//! figures and what changed them in docs/benchmarks.md.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gantry_core::scheduler::{schedule, schedule_with};
use gantry_core::{
    AttemptEvent, AttemptReport, Command, Exit, JobSpec, NewJob, NodeInfo, PlacementPolicy,
    Resources, Session, State,
};

fn node(i: usize) -> NodeInfo {
    NodeInfo {
        id: format!("node-{i:05}"),
        capacity: Resources {
            cpu_millis: 64_000,
            memory_mib: 256 * 1024,
            gpus: 0,
        },
        max_tasks: 0,
        agent_version: "bench".into(),
        ..NodeInfo::default()
    }
}

fn with_nodes(n: usize) -> (State, u64) {
    let mut s = State::default();
    let mut index = 0;
    for i in 0..n {
        index += 1;
        s.apply(
            index,
            &Command::NodeSessionOpened {
                now_ms: 0,
                node: node(i),
                session: Session {
                    id: format!("s-{i}"),
                    replica: 1,
                    opened_at_ms: 0,
                },
                health: None,
            },
        );
    }
    (s, index)
}

fn jobs(first: usize, n: usize, cpu_millis: u64) -> Command {
    Command::SubmitJobs {
        now_ms: 1,
        jobs: (first..first + n)
            .map(|i| NewJob {
                id: format!("job-{i:07}"),
                spec: JobSpec {
                    name: "bench".into(),
                    argv: vec!["/bin/true".into()],
                    resources: Resources {
                        cpu_millis,
                        memory_mib: 256,
                        gpus: 0,
                    },
                    ..JobSpec::default()
                },
                trace_parent: String::new(),
            })
            .collect(),
    }
}

/// `nodes` nodes and `pending` pending one-CPU tasks.
fn cluster(nodes: usize, pending: usize, cpu_millis: u64) -> (State, u64) {
    let (mut s, mut index) = with_nodes(nodes);
    for chunk in (0..pending).step_by(1000) {
        index += 1;
        s.apply(index, &jobs(chunk, 1000.min(pending - chunk), cpu_millis));
    }
    (s, index)
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(1000));
    let (base, index) = with_nodes(100);
    let submit = jobs(0, 1000, 1000);
    g.bench_function("submit 1,000 jobs", |b| {
        b.iter_batched(
            || base.clone(),
            |mut s| black_box(s.apply(index + 1, &submit)),
            BatchSize::LargeInput,
        )
    });
    let (pending, index) = cluster(10_000, 1000, 1000);
    let placements = schedule(&pending, 10, 1000);
    assert_eq!(placements.len(), 1000);
    let assign = Command::Assign {
        now_ms: 10,
        placements: placements.clone(),
    };
    g.bench_function("assign 1,000 placements (10,000 nodes)", |b| {
        b.iter_batched(
            || pending.clone(),
            |mut s| black_box(s.apply(index + 1, &assign)),
            BatchSize::LargeInput,
        )
    });
    let mut assigned = pending.clone();
    assigned.apply(index + 1, &assign);
    let reports = Command::ReportAttempts {
        now_ms: 20,
        reports: placements
            .iter()
            .map(|p| AttemptReport {
                node_id: p.node_id.clone(),
                attempt: p.attempt.clone(),
                event: AttemptEvent::Finished(Exit {
                    exit_code: Some(0),
                    ..Exit::default()
                }),
            })
            .collect(),
    };
    g.bench_function("report 1,000 results", |b| {
        b.iter_batched(
            || assigned.clone(),
            |mut s| black_box(s.apply(index + 2, &reports)),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn scheduler(c: &mut Criterion) {
    let mut g = c.benchmark_group("schedule");
    g.sample_size(10);
    // Room for everything: one round places its limit of 1,000 tasks.
    let (roomy, _) = cluster(10_000, 100_000, 1000);
    g.bench_function("10,000 nodes, 100,000 pending, a round of 1,000", |b| {
        b.iter(|| {
            let p = schedule_with(&roomy, 10, 1000, PlacementPolicy::Balanced);
            assert_eq!(p.len(), 1000);
            black_box(p)
        })
    });
    // No node fits any of them (the cluster is full for this shape): the
    // round must still be quick.
    let (full, _) = cluster(10_000, 100_000, 128_000);
    g.bench_function("10,000 nodes, 100,000 pending that fit nowhere", |b| {
        b.iter(|| {
            let p = schedule_with(&full, 10, 1000, PlacementPolicy::Balanced);
            assert!(p.is_empty());
            black_box(p)
        })
    });
    g.finish();
}

/// What a job watcher asks on every entry applied: the jobs the last entry
/// changed, with 100,000 jobs held (it read all of them until 2026-12-01).
fn watch(c: &mut Criterion) {
    let mut g = c.benchmark_group("watch");
    let (mut s, mut index) = cluster(10, 100_000, 1000);
    index += 1;
    s.apply(index, &jobs(100_000, 10, 1000));
    g.bench_function("jobs changed by the last entry, 100,000 jobs held", |b| {
        b.iter(|| {
            let changed = s.jobs_changed_after(index - 1);
            assert_eq!(changed.len(), 10);
            black_box(changed.len())
        })
    });
    g.finish();
}

criterion_group!(benches, apply, scheduler, watch);
criterion_main!(benches);
