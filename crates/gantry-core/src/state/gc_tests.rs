use super::*;
use crate::command::{Command, Outcome};
use crate::job::{AttemptRef, JobState};
use crate::state::tests::{spec, submit};
use crate::{JobFilter, NodeInfo, Placement, Resources, Session};

fn cancel(now_ms: u64, id: &str) -> Command {
    Command::CancelJob {
        now_ms,
        job_id: id.into(),
        reason: String::new(),
    }
}

fn collect(now_ms: u64, retention: Retention, ids: &[&str]) -> Command {
    Command::CollectJobs {
        now_ms,
        retention,
        job_ids: ids.iter().map(|i| (*i).to_owned()).collect(),
    }
}

const DAY: Retention = Retention {
    default_ms: 86_400_000,
    older_than_ms: None,
};

fn collected(o: Outcome) -> u32 {
    match o {
        Outcome::Collected { collected } => collected,
        other => panic!("not a collection: {other:?}"),
    }
}

#[test]
fn t10_a_finished_job_goes_only_once_past_its_retention() {
    let mut s = State::default();
    let mut keyed = spec("x");
    keyed.idempotency_key = "k".into();
    s.apply(
        1,
        &submit(1_000, vec![("a", keyed.clone()), ("b", spec("y"))]),
    );
    s.apply(2, &cancel(2_000, "a"));
    // Not yet a day after it ended; "b" never ended.
    let due = s.jobs_due(&DAY, 2_000 + 86_399_999, None, 100, 100);
    assert!(due.ids.is_empty(), "{due:?}");
    assert_eq!(
        collected(s.apply(3, &collect(2_000 + 86_399_999, DAY, &["a", "b"]))),
        0
    );
    let now = 2_000 + 86_400_000;
    assert_eq!(
        s.jobs_due(&DAY, now, None, 100, 100).ids,
        vec!["a".to_owned()]
    );
    assert_eq!(collected(s.apply(4, &collect(now, DAY, &["a", "b"]))), 1);
    assert!(s.job("a").is_none());
    assert!(s.job("b").is_some(), "a pending job is never collected");
    assert_eq!(s.jobs_collected(), 1);
    assert_eq!(s.last_collection_ms(), now);
    let page = s.list_jobs(&JobFilter::default(), None, 10);
    assert_eq!(page.jobs.len(), 1);
    // Its idempotency key is free again: the same key makes a new job.
    let Outcome::Submitted(Ok(r)) = s.apply(5, &submit(now, vec![("a2", keyed)])) else {
        panic!()
    };
    assert!(!r[0].existing);
    // A replayed collection changes nothing.
    assert_eq!(collected(s.apply(6, &collect(now, DAY, &["a"]))), 0);
    assert_eq!(s.jobs_collected(), 1);
    // And it survives a snapshot.
    let back = State::from_snapshot(&s.to_snapshot().unwrap()).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.jobs_collected(), 1);
}

#[test]
fn t10_a_job_kept_for_ever_goes_only_when_an_operator_forces_it() {
    let mut s = State::default();
    let mut forever = spec("x");
    forever.retention_ms = Some(0);
    let mut short = spec("y");
    short.retention_ms = Some(10);
    s.apply(1, &submit(1, vec![("keep", forever), ("short", short)]));
    s.apply(2, &cancel(100, "keep"));
    s.apply(3, &cancel(100, "short"));
    let no_default = Retention {
        default_ms: 0,
        older_than_ms: None,
    };
    let late = 100 + 10 * 86_400_000;
    assert_eq!(
        s.jobs_due(&no_default, late, None, 10, 10).ids,
        vec!["short".to_owned()],
        "its own retention, though the cluster keeps jobs for ever"
    );
    s.apply(4, &collect(late, no_default, &["keep", "short"]));
    assert!(s.job("keep").is_some());
    let forced = Retention {
        default_ms: 0,
        older_than_ms: Some(0),
    };
    assert_eq!(collected(s.apply(5, &collect(late, forced, &["keep"]))), 1);
    assert_eq!(s.job_count(), 0);
}

#[test]
fn t10_a_cancelled_job_whose_attempt_still_runs_is_kept() {
    let mut s = State::default();
    s.apply(
        1,
        &Command::NodeSessionOpened {
            now_ms: 1,
            node: NodeInfo {
                id: "n".into(),
                capacity: Resources {
                    cpu_millis: 1_000,
                    memory_mib: 1_024,
                    gpus: 0,
                },
                max_tasks: 4,
                ..NodeInfo::default()
            },
            session: Session {
                id: "s".into(),
                replica: 1,
                opened_at_ms: 1,
            },
            health: None,
        },
    );
    s.apply(2, &submit(2, vec![("a", spec("x"))]));
    s.apply(
        3,
        &Command::Assign {
            now_ms: 3,
            placements: vec![Placement {
                attempt: AttemptRef {
                    job_id: "a".into(),
                    task: 0,
                    attempt: 1,
                },
                node_id: "n".into(),
            }],
        },
    );
    s.apply(4, &cancel(4, "a"));
    assert_eq!(s.job("a").unwrap().state, JobState::Cancelled);
    let forced = Retention {
        default_ms: 0,
        older_than_ms: Some(0),
    };
    assert_eq!(
        collected(s.apply(5, &collect(1_000_000, forced, &["a"]))),
        0,
        "its node has not reported the attempt stopped"
    );
    assert_eq!(s.live_attempts("n").count(), 1);
}

#[test]
fn t10_a_scan_is_bounded_and_resumes_where_it_stopped() {
    let mut s = State::default();
    let ids: Vec<String> = (0..10).map(|i| format!("j{i}")).collect();
    s.apply(
        1,
        &submit(1, ids.iter().map(|i| (i.as_str(), spec("x"))).collect()),
    );
    for (n, id) in ids.iter().enumerate() {
        s.apply(2 + n as u64, &cancel(10, id));
    }
    let all = Retention {
        default_ms: 1,
        older_than_ms: None,
    };
    let mut found = Vec::new();
    let mut after = None;
    let mut scans = 0;
    loop {
        let due = s.jobs_due(&all, 100, after, 3, 2);
        assert!(due.ids.len() <= 2);
        found.extend(due.ids);
        scans += 1;
        match due.next_after {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(found, ids);
    assert!(scans >= 5, "{scans} scans");
}

#[test]
fn t10_a_listing_paged_across_a_collection_keeps_its_order_and_never_repeats() {
    let mut s = State::default();
    let ids: Vec<String> = (0..6).map(|i| format!("j{i}")).collect();
    s.apply(
        1,
        &submit(1, ids.iter().map(|i| (i.as_str(), spec("x"))).collect()),
    );
    for (n, id) in ids.iter().enumerate().filter(|(n, _)| n % 2 == 0) {
        s.apply(2 + n as u64, &cancel(10, id));
    }
    let first = s.list_jobs(&JobFilter::default(), None, 2);
    assert_eq!(first.jobs.len(), 2);
    // j0, j2, j4 are finished: the collection takes j0 (on the page
    // already read) and j2, j4 (not yet read).
    let every = Retention {
        default_ms: 1,
        older_than_ms: None,
    };
    assert_eq!(
        collected(s.apply(20, &collect(100, every, &["j0", "j2", "j4"]))),
        3
    );
    let rest = s.list_jobs(&JobFilter::default(), first.next_after, 10);
    let seen: Vec<&str> = first
        .jobs
        .iter()
        .chain(rest.jobs.iter())
        .map(|j| j.id.as_str())
        .collect();
    assert_eq!(seen, vec!["j0", "j1", "j3", "j5"]);
    assert!(rest.next_after.is_none());
}
