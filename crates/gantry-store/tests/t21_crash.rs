//! A store whose process is SIGKILLed while it appends comes back with a
//! log that holds every entry it had reported flushed, and no hole: the
//! entries present are 1..=last, each where it was written.
//!
//! Appends are plain sled inserts (not atomic batches), so this is what
//! keeps a crash in the middle of one from leaving a gap that Raft, which
//! only looks at the last log id, would not see.

// Tests may unwrap; the parent polls its child with std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gantry_core::{Command as Cmd, JobSpec, NewJob};
use gantry_store::{Entry, LogId};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::vote::leader_id_adv::CommittedLeaderId;

/// Set in the child's environment: the store directory it appends to.
const DIR_VAR: &str = "GANTRY_STORE_CRASH_DIR";
/// Entries per append, as a busy leader hands them to the store.
const PER_APPEND: u64 = 64;

fn log_id(index: u64) -> LogId {
    LogId::new(
        CommittedLeaderId {
            term: 1,
            node_id: 1,
        },
        index,
    )
}

fn entry(index: u64) -> Entry {
    Entry::new_normal(
        log_id(index),
        Cmd::SubmitJobs {
            now_ms: index,
            jobs: vec![NewJob {
                trace_parent: String::new(),
                id: format!("job-{index}"),
                spec: JobSpec {
                    argv: vec!["/bin/true".into()],
                    ..JobSpec::default()
                },
            }],
        }
        .into(),
    )
}

/// The child: appends until it is killed, printing `flushed N` each time
/// the store reports entries up to N on disk. It never waits for a flush
/// (flushes run beside the next appends, as openraft's do), so it is
/// nearly always in the middle of an append, and flushes seal sled's
/// buffer in the middle of appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of the crash test below; it runs until killed"]
async fn crash_child_appends_until_killed() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let (mut log, _sm) = gantry_store::open(std::path::Path::new(&dir)).unwrap();
    let mut next = 1;
    loop {
        let last = next + PER_APPEND - 1;
        let entries: Vec<Entry> = (next..=last).map(entry).collect();
        next = last + 1;
        let (tx, rx) = gantry_store::TypeConfig::oneshot();
        let flushed = IOFlushed::<gantry_store::TypeConfig>::signal(tx);
        log.append(entries, flushed).await.unwrap();
        tokio::spawn(async move {
            if rx.await.is_ok_and(|r| r.is_ok()) {
                println!("flushed {last}");
            }
        });
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn t21_a_store_killed_while_appending_keeps_every_flushed_entry_and_no_hole() {
    // Kills at sixteen depths of the log: each lands wherever the child is,
    // often in the middle of an append (the recovered log then ends inside
    // one).
    for target in (0..16).map(|i| 200 + 450 * i) {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "crash_child_appends_until_killed",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let flushed = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().unwrap();
        let reader = {
            let flushed = flushed.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(n) = line.strip_prefix("flushed ") {
                        flushed.fetch_max(n.trim().parse().unwrap(), Ordering::SeqCst);
                    }
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while flushed.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "the child did not flush {target} entries in 120 s"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child exited before it was killed"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // Kill while it appends (it never stops); std's kill is SIGKILL.
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let reported = flushed.load(Ordering::SeqCst);

        let (mut log, _sm) = gantry_store::open(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        let last = state.last_log_id.map_or(0, |l| l.index);
        assert!(
            last >= reported,
            "entries up to {reported} were reported flushed, but the log ends at {last}"
        );
        let entries = log
            .try_get_log_entries(0..=last + PER_APPEND)
            .await
            .unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        let want: Vec<u64> = (1..=last).collect();
        assert!(
            indexes == want,
            "a hole in the log after the kill: {} entries for last index {last} (reported flushed {reported})",
            indexes.len()
        );
        for e in &entries {
            assert_eq!(
                e,
                &entry(e.log_id.index),
                "entry {} changed",
                e.log_id.index
            );
        }
    }
}
