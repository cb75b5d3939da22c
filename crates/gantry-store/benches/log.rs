//! The log's hot path on a leader of three: append an entry, then read it
//! back three times (replication to each follower, and the apply). With
//! the newest entries kept in memory, the reads are reference counts;
//! through sled, each copies the entry out of sled's pages and decodes its
//! JSON. `cargo bench -p gantry-store`; figures in docs/benchmarks.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gantry_core::{Command, JobSpec, NewJob};
use gantry_store::{Durability, Entry, LogId, LogStore};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::vote::leader_id_adv::CommittedLeaderId;

/// Jobs per entry: what group commit makes of 64 clients sending one job each.
const JOBS: usize = 8;

fn entry(index: u64) -> Entry {
    let jobs = (0..JOBS)
        .map(|j| NewJob {
            id: format!("0193a1b2-c3d4-7e5f-8a9b-{index:06}{j:06}"),
            trace_parent: String::new(),
            spec: JobSpec {
                argv: vec!["/bin/true".into()],
                max_attempts: 1,
                idempotency_key: format!("0193a1b2-c3d4-7e5f-9a9b-{index:06}{j:06}"),
                ..JobSpec::default()
            },
        })
        .collect();
    Entry::new_normal(
        LogId::new(
            CommittedLeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        ),
        Command::SubmitJobs {
            now_ms: index,
            jobs,
        }
        .into(),
    )
}

/// Appends entry `index` with `log`, then reads it three times with `reader`.
async fn append_and_read(log: &mut LogStore, reader: &mut LogStore, index: u64) {
    log.append(vec![entry(index)], IOFlushed::noop())
        .await
        .expect("append");
    for _ in 0..3 {
        black_box(
            reader
                .try_get_log_entries(index..=index)
                .await
                .expect("read"),
        );
    }
}

fn log(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(JOBS as u64));
    for (name, cached) in [
        ("append, 3 reads from memory", true),
        ("append, 3 reads from sled", false),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let (mut log, _) = gantry_store::from_db(&db, Durability::Process).expect("store");
        // A second store over the same database has a cache of its own,
        // which never fills: its reads go to sled.
        let (other, _) = gantry_store::from_db(&db, Durability::Process).expect("store");
        let mut reader = if cached { log.clone() } else { other };
        let mut index = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                index += 1;
                rt.block_on(append_and_read(&mut log, &mut reader, index));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, log);
criterion_main!(benches);
