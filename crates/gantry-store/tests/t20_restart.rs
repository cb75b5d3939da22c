//! A store reopened from its directory comes back with its vote, its log and
//! the state of its last snapshot.

// Tests may unwrap; synchronous helpers poll with std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::collections::BTreeMap;

use gantry_core::{Command, JobSpec, NewJob};
use gantry_store::{Entry, LogId, Vote};
use openraft::entry::RaftEntry;
use openraft::storage::{
    IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::type_config::TypeConfigExt;
use openraft::vote::leader_id_adv::CommittedLeaderId;

fn log_id(index: u64) -> LogId {
    log_id_in(1, index)
}

fn log_id_in(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId { term, node_id: 1 }, index)
}

/// Appends `entries` and waits until they are on disk.
async fn append(log: &mut gantry_store::LogStore, entries: Vec<Entry>) {
    let (flushed, on_disk) = gantry_store::TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(flushed))
        .await
        .unwrap();
    on_disk.await.unwrap().unwrap();
}

fn submit(id: &str) -> Command {
    Command::SubmitJobs {
        now_ms: 1,
        jobs: vec![NewJob {
            trace_parent: String::new(),
            id: id.into(),
            spec: JobSpec {
                argv: vec!["/bin/true".into()],
                ..JobSpec::default()
            },
        }],
    }
}

#[tokio::test]
async fn t20_reopen_recovers_vote_log_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (1..=3)
        .map(|i| Entry::new_normal(log_id(i), submit(&format!("job-{i}")).into()))
        .collect();
    {
        let (mut log, mut sm) = gantry_store::open(dir.path()).unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        append(&mut log, entries.clone()).await;
        let stream = futures::stream::iter(entries.clone().into_iter().map(|e| Ok((e, None))));
        sm.apply(stream).await.unwrap();
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(3)));
    }
    let (mut log, mut sm) = gantry_store::open(dir.path()).unwrap();
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(1, 1))
    );
    assert_eq!(log.try_get_log_entries(1..4).await.unwrap(), entries);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(3)));
    let jobs = sm.reader().read(|s, index| (s.job_count(), index)).await;
    assert_eq!(jobs, (3, 3));
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(3)));
}

#[test]
fn t20_corrupt_snapshot_is_an_error_not_a_panic() {
    // Where snapshots are kept, and where replicas kept them before
    // snapshots had a database of their own.
    for db_name in ["snapshot.sled", "raft.sled"] {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join(db_name)).unwrap();
            db.open_tree("snapshot")
                .unwrap()
                .insert(b"data", b"garbage".to_vec())
                .unwrap();
            db.flush().unwrap();
        }
        let err = gantry_store::open(dir.path())
            .err()
            .expect("open must fail");
        assert!(!err.to_string().is_empty());
    }
}

// A replica that kept its snapshot in the log's database (before the two
// were split) comes back with that snapshot, moved to where it now lives.
#[tokio::test]
async fn t20_a_snapshot_in_the_old_place_is_moved_and_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = {
        let (_log, mut sm) = gantry_store::open(dir.path()).unwrap();
        let entry = Entry::new_normal(log_id(1), submit("job-1").into());
        sm.apply(futures::stream::iter([Ok((entry, None))]))
            .await
            .unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    };
    // Put it back the way an older replica kept it.
    {
        let new = sled::open(dir.path().join("snapshot.sled")).unwrap();
        new.open_tree("snapshot").unwrap().clear().unwrap();
        new.flush().unwrap();
        let db = sled::open(dir.path().join("raft.sled")).unwrap();
        let tree = db.open_tree("snapshot").unwrap();
        tree.insert(b"meta", serde_json::to_vec(&legacy.meta).unwrap())
            .unwrap();
        tree.insert(b"data", legacy.snapshot.clone()).unwrap();
        db.flush().unwrap();
    }
    {
        let (_log, mut sm) = gantry_store::open(dir.path()).unwrap();
        let jobs = sm.reader().read(|s, _| s.job_count()).await;
        assert_eq!(jobs, 1);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, legacy.meta.last_log_id);
    }
    let db = sled::open(dir.path().join("raft.sled")).unwrap();
    assert!(
        db.open_tree("snapshot").unwrap().is_empty(),
        "moved, not copied"
    );
}

/// Appends `entries` to the log and to the model of what it should hold.
async fn append_both(
    log: &mut gantry_store::LogStore,
    model: &mut BTreeMap<u64, Entry>,
    entries: Vec<Entry>,
) {
    for e in &entries {
        model.insert(e.log_id.index, e.clone());
    }
    append(log, entries).await;
}

/// A short account of entries for a failed assertion: the first and last
/// log ids and how many.
fn summary(entries: &[Entry]) -> String {
    match (entries.first(), entries.last()) {
        (Some(a), Some(b)) => format!("{} entries, {} ..= {}", entries.len(), a.log_id, b.log_id),
        _ => "none".into(),
    }
}

fn check(got: Vec<Entry>, want: Vec<Entry>, what: &str, range: &str) {
    assert!(
        got == want,
        "{what}: {range}: read {}, the log holds {}",
        summary(&got),
        summary(&want)
    );
}

/// Every read of `log` against the entries it should hold: ranges that
/// start and end before, inside and after them.
async fn reads_match(log: &mut gantry_store::LogStore, model: &BTreeMap<u64, Entry>, what: &str) {
    let last = model.keys().next_back().copied().unwrap_or(0);
    let points = [
        0,
        1,
        2,
        10,
        last / 2,
        last.saturating_sub(1),
        last,
        last + 1,
        last + 5,
    ];
    for &a in &points {
        for &b in &points {
            if a > b {
                continue;
            }
            let want = model.range(a..b).map(|(_, e)| e.clone()).collect();
            let got = log.try_get_log_entries(a..b).await.unwrap();
            check(got, want, what, &format!("{a}..{b}"));
            let want = model.range(a..=b).map(|(_, e)| e.clone()).collect();
            let got = log.try_get_log_entries(a..=b).await.unwrap();
            check(got, want, what, &format!("{a}..={b}"));
        }
        let want = model.range(a..).map(|(_, e)| e.clone()).collect();
        let got = log.try_get_log_entries(a..).await.unwrap();
        check(got, want, what, &format!("{a}.."));
    }
}

// Reads return what the log holds, through appends in batches of varied
// sizes, a truncation, appends of a later term, a purge and a reopen.
#[tokio::test]
async fn t20_reads_return_what_the_log_holds_through_truncation_purge_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = BTreeMap::new();
    let entry = |term: u64, i: u64| {
        Entry::new_normal(
            log_id_in(term, i),
            submit(&format!("job-{term}-{i}")).into(),
        )
    };
    {
        let (mut log, _sm) = gantry_store::open(dir.path()).unwrap();
        reads_match(&mut log, &model, "empty").await;
        let total = 700;
        let mut next = 1;
        for size in [1, 7, 100, 300].into_iter().cycle() {
            if next > total {
                break;
            }
            let batch: Vec<Entry> = (next..(next + size).min(total + 1))
                .map(|i| entry(1, i))
                .collect();
            next += batch.len() as u64;
            append_both(&mut log, &mut model, batch).await;
        }
        reads_match(&mut log, &model, "appended").await;
        // A new leader's entries replace the last ones.
        let cut = total - 50;
        log.truncate_after(Some(log_id_in(1, cut))).await.unwrap();
        model.retain(|i, _| *i <= cut);
        reads_match(&mut log, &model, "truncated").await;
        let batch = (cut + 1..=cut + 20).map(|i| entry(2, i)).collect();
        append_both(&mut log, &mut model, batch).await;
        reads_match(&mut log, &model, "appended after the truncation").await;
        log.purge(log_id_in(1, 10)).await.unwrap();
        model.retain(|i, _| *i > 10);
        reads_match(&mut log, &model, "purged").await;
    }
    let (mut log, _sm) = gantry_store::open(dir.path()).unwrap();
    reads_match(&mut log, &model, "reopened").await;
    let last = *model.keys().next_back().unwrap();
    append_both(&mut log, &mut model, vec![entry(3, last + 1)]).await;
    reads_match(&mut log, &model, "appended after the reopen").await;
}
