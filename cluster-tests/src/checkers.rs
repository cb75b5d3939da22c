//! Checkers over what clients saw (a history) and the final state. Each is a
//! pure function returning the violations it found; each has a test with a
//! planted violation it must catch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use gantry_client::api;

pub use crate::linearizable::JobVersion;
use crate::linearizable::{self, JobModel, JobOp, Timed, Verdict};

/// How an operation ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    Ok(T),
    /// Refused: the operation certainly did not take effect.
    Fail(String),
    /// Timed out or broke: it may or may not have taken effect.
    Unknown(String),
}

#[derive(Clone, Debug)]
pub struct SubmitOp {
    pub client: usize,
    pub invoke: Duration,
    pub complete: Duration,
    /// The job id on success.
    pub outcome: Outcome<String>,
    /// The log index the job was created at: 0 unless acknowledged, and 0
    /// when the submit was a retry that found the job already created.
    pub index: u64,
}

#[derive(Clone, Debug)]
pub struct ReadOp {
    pub job_id: String,
    pub invoke: Duration,
    pub complete: Duration,
    /// The job's version as read ([`JobVersion::ABSENT`] for NotFound).
    pub outcome: Outcome<JobVersion>,
}

#[derive(Clone, Debug)]
pub struct CancelOp {
    pub job_id: String,
    pub invoke: Duration,
    pub complete: Duration,
    /// The job as the cancel left it.
    pub outcome: Outcome<JobVersion>,
}

/// Everything recorded during a run.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub submits: Vec<SubmitOp>,
    pub reads: Vec<ReadOp>,
    pub cancels: Vec<CancelOp>,
    /// Every job state a watcher saw, in the order it saw them.
    pub observed: Vec<api::JobEvent>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

fn v(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// At most one live execution per task, from the tasks' own marker files:
/// `dir/JOB.TASK.ATTEMPT` holds one line per heartbeat (ns since the
/// epoch). An attempt's last beat must come before any later attempt's first.
pub fn overlapping_executions(dir: &std::path::Path) -> Vec<Violation> {
    use std::collections::BTreeMap;
    let mut tasks: BTreeMap<(String, String), BTreeMap<u32, (u128, u128)>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplitn(3, '.');
        let (Some(attempt), Some(task), Some(job)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(attempt) = attempt.parse::<u32>() else {
            continue;
        };
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        // A line being written (no newline yet) may be a number cut short.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        let beats: Vec<u128> = whole
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if let (Some(first), Some(last)) = (beats.iter().min(), beats.iter().max()) {
            tasks
                .entry((job.to_owned(), task.to_owned()))
                .or_default()
                .insert(attempt, (*first, *last));
        }
    }
    let mut out = Vec::new();
    for ((job, task), attempts) in &tasks {
        let lives: Vec<(&u32, &(u128, u128))> = attempts.iter().collect();
        for pair in lives.windows(2) {
            let ((a, (_, a_last)), (b, (b_first, _))) = (pair[0], pair[1]);
            if a_last >= b_first {
                out.push(v(
                    "two live executions of one task",
                    format!(
                        "job {job} task {task}: attempt {a} still beat {} ms after attempt {b} began",
                        (a_last - b_first) / 1_000_000
                    ),
                ));
            }
        }
    }
    out
}

/// Invariant 1: every acknowledged submit is in the final state.
pub fn lost_submits(h: &History, final_ids: &BTreeSet<String>) -> Vec<Violation> {
    h.submits
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::Ok(id) if !final_ids.contains(id) => Some(v(
                "acknowledged submit lost",
                format!(
                    "job {id} (acknowledged to client {} at {:?}) is not in the final state",
                    s.client, s.complete
                ),
            )),
            _ => None,
        })
        .collect()
}

/// (job, task, attempt) → (state, exit code, finished at).
type Results = BTreeMap<(String, u32, u32), (String, Option<i32>, u64)>;

/// Invariant 2: an attempt, once seen finished, is never seen finished differently.
pub fn double_results(observed: &[api::JobEvent]) -> Vec<Violation> {
    let mut finished = Results::new();
    let mut out = Vec::new();
    for e in observed {
        let Some(job) = &e.job else { continue };
        for t in &job.tasks {
            for a in &t.attempts {
                if matches!(a.state.as_str(), "assigned" | "running") {
                    continue;
                }
                let key = (job.id.clone(), t.index, a.number);
                let result = (a.state.clone(), a.exit_code, a.finished_at_ms);
                match finished.get(&key) {
                    Some(first) if *first != result => out.push(v(
                        "two results for one attempt",
                        format!(
                            "{}/{}#{}: first {first:?}, later {result:?}",
                            key.0, key.1, key.2
                        ),
                    )),
                    Some(_) => {}
                    None => {
                        finished.insert(key, result);
                    }
                }
            }
        }
    }
    out
}

/// Invariant 3: never two live attempts of one task.
pub fn two_live_attempts(observed: &[api::JobEvent]) -> Vec<Violation> {
    let mut out = Vec::new();
    for e in observed {
        let Some(job) = &e.job else { continue };
        for t in &job.tasks {
            let live = t
                .attempts
                .iter()
                .filter(|a| matches!(a.state.as_str(), "assigned" | "running"))
                .count();
            if live > 1 {
                out.push(v(
                    "two live attempts",
                    format!(
                        "job {} task {} had {live} live attempts at index {}",
                        job.id, t.index, e.index
                    ),
                ));
            }
        }
    }
    out
}

/// The model of a job in the API's terms.
pub fn job_model() -> JobModel {
    JobModel {
        terminal: |s| {
            matches!(
                api::JobState::try_from(s),
                Ok(api::JobState::Complete | api::JobState::Failed | api::JobState::Cancelled)
            )
        },
        cancelled: api::JobState::Cancelled as i32,
    }
}

/// Reads, submits and cancels of each job are linearizable (a Wing–Gong
/// search per job, see [`linearizable`]): reads never go back in time, never
/// miss an acknowledged submit, and agree with what acknowledged cancels
/// returned. Operations with unknown outcomes are left out (they may or may
/// not have happened; the model already allows unseen writers).
pub fn linearizable(h: &History) -> Vec<Violation> {
    let mut by_job: BTreeMap<String, Vec<Timed<JobOp>>> = BTreeMap::new();
    for s in &h.submits {
        if let Outcome::Ok(id) = &s.outcome {
            by_job.entry(id.clone()).or_default().push(Timed {
                invoke: s.invoke,
                complete: s.complete,
                op: JobOp::Create { index: s.index },
            });
        }
    }
    for r in &h.reads {
        if let Outcome::Ok(version) = r.outcome {
            by_job.entry(r.job_id.clone()).or_default().push(Timed {
                invoke: r.invoke,
                complete: r.complete,
                op: JobOp::Read(version),
            });
        }
    }
    for c in &h.cancels {
        if let Outcome::Ok(version) = c.outcome {
            by_job.entry(c.job_id.clone()).or_default().push(Timed {
                invoke: c.invoke,
                complete: c.complete,
                op: JobOp::Cancel(version),
            });
        }
    }
    linearizable::check_jobs(&job_model(), by_job)
        .into_iter()
        .map(|(job, verdict, ops)| {
            let what = match verdict {
                Verdict::GaveUp { steps } => format!("undecided after {steps} steps"),
                _ => "no order explains it".to_string(),
            };
            v(
                "not linearizable",
                format!("job {job}: {what}; operations: {ops:?}"),
            )
        })
        .collect()
}

/// Invariant 4: after faults heal, every job is terminal.
pub fn not_terminal(jobs: &[api::Job]) -> Vec<Violation> {
    jobs.iter()
        .filter(|j| {
            !matches!(
                api::JobState::try_from(j.state),
                Ok(api::JobState::Complete | api::JobState::Failed | api::JobState::Cancelled)
            )
        })
        .map(|j| {
            v(
                "job not terminal after healing",
                format!("job {} is {:?}", j.id, api::JobState::try_from(j.state)),
            )
        })
        .collect()
}

/// Invariant 5: replicas at the same applied index hold the same state.
pub fn diverged(replicas: &[api::ReplicaStatus]) -> Vec<Violation> {
    let mut by_index: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for r in replicas.iter().filter(|r| r.error.is_empty()) {
        by_index
            .entry(r.applied_index)
            .or_default()
            .insert(r.state_digest);
    }
    by_index
        .into_iter()
        .filter(|(_, digests)| digests.len() > 1)
        .map(|(index, digests)| {
            v(
                "replicas diverged",
                format!("at applied index {index}: digests {digests:?}"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, attempts: Vec<(&str, Option<i32>, u64)>) -> api::JobEvent {
        api::JobEvent {
            index: 1,
            job: Some(api::Job {
                id: id.into(),
                state: api::JobState::Running as i32,
                tasks: vec![api::Task {
                    index: 0,
                    attempts: attempts
                        .into_iter()
                        .enumerate()
                        .map(|(i, (state, code, fin))| api::Attempt {
                            number: i as u32 + 1,
                            state: state.into(),
                            exit_code: code,
                            finished_at_ms: fin,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn t24_catches_two_live_executions_from_marker_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, beats: &[u128]| {
            let text: String = beats.iter().map(|b| format!("{b}\n")).collect();
            std::fs::write(dir.path().join(name), text).unwrap();
        };
        // Task 0: the first attempt stopped before the second began.
        write("j1.0.1", &[100, 200, 300]);
        write("j1.0.2", &[400, 500]);
        // Task 1: the first attempt still beat after the second began.
        write("j1.1.1", &[100, 200, 900_000_300]);
        write("j1.1.2", &[250, 350]);
        // A torn last line and a stray file are ignored.
        write("j2.0.1", &[10]);
        std::fs::write(dir.path().join("j2.0.2"), "20\n3").unwrap();
        std::fs::write(dir.path().join("notes"), "x").unwrap();
        let found = overlapping_executions(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].detail.contains("job j1 task 1"),
            "{}",
            found[0].detail
        );
        assert!(
            found[0]
                .detail
                .contains("attempt 1 still beat 900 ms after attempt 2"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn t10_catches_a_lost_job() {
        let h = History {
            submits: vec![SubmitOp {
                client: 0,
                invoke: ms(1),
                complete: ms(2),
                outcome: Outcome::Ok("j1".into()),
                index: 3,
            }],
            ..History::default()
        };
        assert_eq!(lost_submits(&h, &BTreeSet::new()).len(), 1);
        assert!(lost_submits(&h, &BTreeSet::from(["j1".to_string()])).is_empty());
        // An unknown outcome may be lost legitimately.
        let h = History {
            submits: vec![SubmitOp {
                client: 0,
                invoke: ms(1),
                complete: ms(2),
                outcome: Outcome::Unknown("timeout".into()),
                index: 0,
            }],
            ..History::default()
        };
        assert!(lost_submits(&h, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn t10_catches_a_double_result_and_two_live_attempts() {
        let seen = vec![
            job("j", vec![("succeeded", Some(0), 5)]),
            job("j", vec![("failed", Some(1), 6)]),
        ];
        assert_eq!(double_results(&seen).len(), 1);
        let same = vec![
            job("j", vec![("succeeded", Some(0), 5)]),
            job("j", vec![("succeeded", Some(0), 5)]),
        ];
        assert!(double_results(&same).is_empty());
        let two = vec![job("j", vec![("running", None, 0), ("assigned", None, 0)])];
        assert_eq!(two_live_attempts(&two).len(), 1);
        assert!(
            two_live_attempts(&[job("j", vec![("lost", None, 3), ("running", None, 0)])])
                .is_empty()
        );
    }

    #[test]
    fn t10_catches_a_stale_read() {
        let running = api::JobState::Running as i32;
        let read = |inv, comp, index| ReadOp {
            job_id: "j".into(),
            invoke: ms(inv),
            complete: ms(comp),
            outcome: Outcome::Ok(JobVersion {
                index,
                state: running,
            }),
        };
        let submit = SubmitOp {
            client: 0,
            invoke: ms(0),
            complete: ms(1),
            outcome: Outcome::Ok("j".into()),
            index: 5,
        };
        let h = History {
            submits: vec![submit.clone()],
            reads: vec![read(1, 2, 10), read(3, 4, 7)],
            ..History::default()
        };
        assert_eq!(linearizable(&h).len(), 1);
        // Overlapping reads may see either order.
        let h = History {
            submits: vec![submit.clone()],
            reads: vec![read(1, 5, 10), read(3, 4, 7)],
            ..History::default()
        };
        assert!(linearizable(&h).is_empty());
        // A read older than the acknowledged submit itself.
        let h = History {
            submits: vec![submit.clone()],
            reads: vec![read(2, 3, 4)],
            ..History::default()
        };
        assert_eq!(linearizable(&h).len(), 1);
        // An acknowledged cancel, then a read that still sees it running.
        let cancelled = api::JobState::Cancelled as i32;
        let h = History {
            submits: vec![submit],
            cancels: vec![CancelOp {
                job_id: "j".into(),
                invoke: ms(2),
                complete: ms(3),
                outcome: Outcome::Ok(JobVersion {
                    index: 9,
                    state: cancelled,
                }),
            }],
            reads: vec![read(4, 5, 12)],
            ..History::default()
        };
        assert_eq!(linearizable(&h).len(), 1);
    }

    #[test]
    fn t10_catches_divergence_and_unfinished_jobs() {
        let r = |i, d| api::ReplicaStatus {
            applied_index: i,
            state_digest: d,
            ..Default::default()
        };
        assert_eq!(diverged(&[r(5, 1), r(5, 2), r(6, 3)]).len(), 1);
        assert!(diverged(&[r(5, 1), r(5, 1), r(6, 3)]).is_empty());
        let pending = api::Job {
            id: "j".into(),
            state: api::JobState::Pending as i32,
            ..Default::default()
        };
        assert_eq!(not_terminal(&[pending]).len(), 1);
    }
}
