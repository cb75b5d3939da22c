//! A Wing–Gong linearizability search with Lowe's memoisation (the
//! algorithm Porcupine and Knossos use), over any sequential [`Model`], and
//! the model of one job as clients see it.
//!
//! A history is linearizable when its completed operations can be put in
//! one order that respects real time (an operation that returned before
//! another was invoked comes first) and that the sequential model accepts,
//! each operation producing the output its client saw. The search tries
//! operations that are "minimal" (invoked before any pending one returned)
//! in turn, backtracking when the model refuses, and remembers every
//! (linearised set, state) pair it has already explored so that each is
//! explored once.
//!
//! Jobs are independent objects, so a history is checked job by job
//! (P-compositionality): linearizability is local.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use std::time::Duration;

/// A sequential specification: from a state, an operation with the output
/// its client saw either is possible (and gives the next state) or is not.
pub trait Model {
    type State: Clone + Eq + Hash + std::fmt::Debug;
    type Op: std::fmt::Debug;
    fn init(&self) -> Self::State;
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// One completed operation: when it was invoked and returned, and what it
/// was (input and output together).
#[derive(Clone, Debug)]
pub struct Timed<O> {
    pub invoke: Duration,
    pub complete: Duration,
    pub op: O,
}

/// Why a history is not linearizable, or could not be decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists; the longest prefix the search managed is given.
    NotLinearizable {
        longest_prefix: Vec<usize>,
    },
    /// The search gave up after `steps` (never seen with the models here;
    /// reported, never silently passed).
    GaveUp {
        steps: usize,
    },
}

const MAX_STEPS: usize = 2_000_000;

#[derive(Clone, Copy)]
enum Event {
    Call(usize),
    Return(usize),
}

/// Decides whether `history` is linearizable under `model`.
pub fn check<M: Model>(model: &M, history: &[Timed<M::Op>]) -> Verdict {
    let n = history.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events in time order; at equal times calls come first, so operations
    // that touch at an instant count as concurrent (the permissive reading).
    let mut events: Vec<(Duration, u8, Event)> = Vec::with_capacity(2 * n);
    for (i, t) in history.iter().enumerate() {
        events.push((t.invoke, 0, Event::Call(i)));
        events.push((t.complete.max(t.invoke), 1, Event::Return(i)));
    }
    events.sort_by_key(|(t, kind, e)| {
        (
            *t,
            *kind,
            match e {
                Event::Call(i) | Event::Return(i) => *i,
            },
        )
    });
    let kinds: Vec<Event> = events.iter().map(|(_, _, e)| *e).collect();
    // A doubly linked list over the events; index len() is the head sentinel.
    let head = kinds.len();
    let mut next: Vec<usize> = (1..=kinds.len()).chain([usize::MAX]).collect();
    let mut prev: Vec<usize> = std::iter::once(head)
        .chain(0..kinds.len().saturating_sub(1))
        .chain([usize::MAX])
        .collect();
    next[head] = 0;
    let end = usize::MAX;
    // Where each operation's return event sits in the list.
    let mut ret_of = vec![0usize; n];
    for (pos, e) in kinds.iter().enumerate() {
        if let Event::Return(i) = e {
            ret_of[*i] = pos;
        }
    }
    let fix_last = |next: &mut Vec<usize>| {
        if let Some(last) = next.iter().position(|&x| x == kinds.len()) {
            next[last] = end;
        }
    };
    fix_last(&mut next);

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
        let (p, q) = (prev[pos], next[pos]);
        next[p] = q;
        if q != end {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
        let (p, q) = (prev[pos], next[pos]);
        next[p] = pos;
        if q != end {
            prev[q] = pos;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut state = model.init();
    let mut entry = next[head];
    let mut steps = 0usize;
    while next[head] != end {
        steps += 1;
        if steps > MAX_STEPS {
            return Verdict::GaveUp { steps };
        }
        if entry == end {
            // Every remaining candidate was refused (cannot happen: a return
            // event is always reached first), treat as a dead end.
            return Verdict::NotLinearizable {
                longest_prefix: longest,
            };
        }
        match kinds[entry] {
            Event::Call(i) => {
                let advanced = model.step(&state, &history[i].op).and_then(|s| {
                    let mut bits = linearized.clone();
                    bits[i / 64] |= 1 << (i % 64);
                    seen.insert((bits, s.clone())).then_some(s)
                });
                match advanced {
                    Some(s) => {
                        stack.push((entry, std::mem::replace(&mut state, s)));
                        linearized[i / 64] |= 1 << (i % 64);
                        unlink(&mut next, &mut prev, entry);
                        unlink(&mut next, &mut prev, ret_of[i]);
                        if stack.len() > longest.len() {
                            longest = stack
                                .iter()
                                .map(|(pos, _)| match kinds[*pos] {
                                    Event::Call(j) | Event::Return(j) => j,
                                })
                                .collect();
                        }
                        entry = next[head];
                    }
                    None => entry = next[entry],
                }
            }
            Event::Return(_) => {
                // An operation returned before any order could place it.
                let Some((call, old)) = stack.pop() else {
                    return Verdict::NotLinearizable {
                        longest_prefix: longest,
                    };
                };
                let Event::Call(i) = kinds[call] else {
                    unreachable!("the stack holds call events only")
                };
                state = old;
                linearized[i / 64] &= !(1 << (i % 64));
                relink(&mut next, &mut prev, ret_of[i]);
                relink(&mut next, &mut prev, call);
                entry = next[call];
            }
        }
    }
    Verdict::Linearizable
}

/// A job as a client sees it: the log index of its last change and its state
/// (the API's `JobState` number). Index 0 means "no such job".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobVersion {
    pub index: u64,
    pub state: i32,
}

impl JobVersion {
    pub const ABSENT: JobVersion = JobVersion { index: 0, state: 0 };
    /// The model's state once a read found a created job gone: garbage
    /// collected (never a client's version).
    const COLLECTED: JobVersion = JobVersion {
        index: u64::MAX,
        state: -2,
    };
}

/// What a client did to one job, with what it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOp {
    /// Submit acknowledged, committed at this index.
    Create { index: u64 },
    /// Get returned this version (or [`JobVersion::ABSENT`] for NotFound).
    Read(JobVersion),
    /// Cancel acknowledged, returning the job as it was after the cancel.
    Cancel(JobVersion),
}

/// The sequential specification of one job. Clients are not its only
/// writers (the scheduler and agents change it too, unseen), so between two
/// client operations the job may move forward any number of versions; it
/// may never move back, one version has one content, and a terminal state
/// is final. Garbage collection may remove it once (unseen, it may have
/// finished first): a read then finds it absent, and every later read too.
/// That a removed job had finished is checked on the replicas' states (the
/// simulation's `collected_jobs` invariant), not here.
#[derive(Clone, Copy, Debug)]
pub struct JobModel {
    pub terminal: fn(i32) -> bool,
    pub cancelled: i32,
}

impl Model for JobModel {
    type State = Option<JobVersion>;
    type Op = JobOp;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, state: &Self::State, op: &JobOp) -> Option<Self::State> {
        let forward = |cur: &JobVersion, seen: &JobVersion| {
            let same = seen.index == cur.index && seen.state == cur.state;
            let later =
                seen.index > cur.index && !((self.terminal)(cur.state) && seen.state != cur.state);
            same || later
        };
        match (state, op) {
            (None, JobOp::Create { index }) => Some(Some(JobVersion {
                index: *index,
                state: -1,
            })),
            (Some(_), JobOp::Create { .. }) => None,
            (None, JobOp::Read(v)) => (*v == JobVersion::ABSENT).then_some(None),
            (Some(_), JobOp::Read(v)) if *v == JobVersion::ABSENT => {
                Some(Some(JobVersion::COLLECTED))
            }
            (Some(cur), _) if *cur == JobVersion::COLLECTED => None,
            // Right after create the state is whatever the first read says.
            (Some(cur), JobOp::Read(v)) if cur.state == -1 => {
                (v.index >= cur.index).then_some(Some(*v))
            }
            (Some(cur), JobOp::Read(v)) => forward(cur, v).then_some(Some(*v)),
            (None, JobOp::Cancel(_)) => None,
            (Some(cur), JobOp::Cancel(v)) => {
                let ok_state = v.state == self.cancelled || (self.terminal)(v.state);
                let ok_order = if cur.state == -1 {
                    v.index >= cur.index
                } else {
                    forward(cur, v)
                };
                (ok_state && ok_order).then_some(Some(*v))
            }
        }
    }
}

/// Checks every job's operations separately; returns, per job that fails,
/// the verdict.
pub fn check_jobs(
    model: &JobModel,
    ops: BTreeMap<String, Vec<Timed<JobOp>>>,
) -> Vec<(String, Verdict, Vec<Timed<JobOp>>)> {
    ops.into_iter()
        .filter_map(|(job, ops)| match check(model, &ops) {
            Verdict::Linearizable => None,
            verdict => Some((job, verdict, ops)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A register holding one integer: the textbook model.
    struct Register;
    #[derive(Debug, Clone)]
    enum RegOp {
        Write(u32),
        Read(u32),
    }
    impl Model for Register {
        type State = u32;
        type Op = RegOp;
        fn init(&self) -> u32 {
            0
        }
        fn step(&self, s: &u32, op: &RegOp) -> Option<u32> {
            match op {
                RegOp::Write(v) => Some(*v),
                RegOp::Read(v) => (v == s).then_some(*s),
            }
        }
    }

    fn t<O>(invoke: u64, complete: u64, op: O) -> Timed<O> {
        Timed {
            invoke: Duration::from_millis(invoke),
            complete: Duration::from_millis(complete),
            op,
        }
    }

    #[test]
    fn t10_register_histories_from_the_literature() {
        use RegOp::*;
        // Concurrent write and read: the read may see either value.
        let h = vec![t(0, 10, Write(1)), t(5, 6, Read(0)), t(7, 8, Read(1))];
        assert_eq!(check(&Register, &h), Verdict::Linearizable);
        // A read after the write returned must see it.
        let h = vec![t(0, 1, Write(1)), t(2, 3, Read(0))];
        assert!(matches!(
            check(&Register, &h),
            Verdict::NotLinearizable { .. }
        ));
        // Two reads inside one write cannot see new then old.
        let h = vec![t(0, 10, Write(1)), t(1, 2, Read(1)), t(3, 4, Read(0))];
        assert!(matches!(
            check(&Register, &h),
            Verdict::NotLinearizable { .. }
        ));
        // Nor can a value come from nowhere.
        let h = vec![t(0, 10, Write(1)), t(1, 2, Read(2))];
        assert!(matches!(
            check(&Register, &h),
            Verdict::NotLinearizable { .. }
        ));
    }

    fn job_model() -> JobModel {
        JobModel {
            terminal: |s| s >= 3,
            cancelled: 5,
        }
    }

    fn read(index: u64, state: i32) -> JobOp {
        JobOp::Read(JobVersion { index, state })
    }

    #[test]
    fn t10_catches_a_read_of_an_older_version_and_a_collected_job_come_back() {
        let m = job_model();
        let ok = vec![
            t(0, 1, JobOp::Create { index: 5 }),
            t(2, 3, read(7, 2)),
            t(4, 5, read(9, 4)),
        ];
        assert_eq!(check(&m, &ok), Verdict::Linearizable);
        // A read after a completed read saw an older version.
        let stale = vec![
            t(0, 1, JobOp::Create { index: 5 }),
            t(2, 3, read(9, 2)),
            t(4, 5, read(7, 2)),
        ];
        assert!(matches!(check(&m, &stale), Verdict::NotLinearizable { .. }));
        // NotFound after the create was acknowledged: garbage-collected
        // (that it had finished is the replicas' states' to show)...
        let collected = vec![t(0, 1, JobOp::Create { index: 5 }), t(2, 3, read(0, 0))];
        assert_eq!(check(&m, &collected), Verdict::Linearizable);
        // ...and a collected job never comes back.
        let back = vec![
            t(0, 1, JobOp::Create { index: 5 }),
            t(2, 3, read(0, 0)),
            t(4, 5, read(9, 4)),
        ];
        assert!(matches!(check(&m, &back), Verdict::NotLinearizable { .. }));
        // NotFound concurrent with the create is fine.
        let racing = vec![t(0, 3, JobOp::Create { index: 5 }), t(1, 2, read(0, 0))];
        assert_eq!(check(&m, &racing), Verdict::Linearizable);
        // A terminal job came back to life.
        let revived = vec![
            t(0, 1, JobOp::Create { index: 5 }),
            t(2, 3, read(7, 4)),
            t(4, 5, read(9, 2)),
        ];
        assert!(matches!(
            check(&m, &revived),
            Verdict::NotLinearizable { .. }
        ));
        // One version, two contents.
        let forked = vec![
            t(0, 1, JobOp::Create { index: 5 }),
            t(2, 3, read(7, 2)),
            t(4, 5, read(7, 3)),
        ];
        assert!(matches!(
            check(&m, &forked),
            Verdict::NotLinearizable { .. }
        ));
        // An acknowledged cancel that left the job running.
        let bad_cancel = vec![
            t(0, 1, JobOp::Create { index: 5 }),
            t(2, 3, JobOp::Cancel(JobVersion { index: 8, state: 2 })),
        ];
        assert!(matches!(
            check(&m, &bad_cancel),
            Verdict::NotLinearizable { .. }
        ));
        let cancel_then_read = vec![
            t(0, 1, JobOp::Create { index: 5 }),
            t(2, 3, JobOp::Cancel(JobVersion { index: 8, state: 5 })),
            t(4, 5, read(8, 5)),
        ];
        assert_eq!(check(&m, &cancel_then_read), Verdict::Linearizable);
    }

    /// For read-only histories of versions, linearizability is exactly "no
    /// read that began after another returned saw an older version" — a
    /// pairwise rule. The search must agree with it on random histories.
    fn pairwise_ok(ops: &[Timed<JobOp>]) -> bool {
        let index = |o: &JobOp| match o {
            JobOp::Read(v) => v.index,
            _ => 0,
        };
        ops.iter().all(|a| {
            ops.iter()
                .all(|b| !(a.complete < b.invoke && index(&b.op) < index(&a.op)))
        })
    }

    proptest! {
        #[test]
        fn t10_search_agrees_with_the_pairwise_rule(
            raw in proptest::collection::vec((0u64..40, 0u64..8, 1u64..6), 1..12)
        ) {
            let m = job_model();
            let mut ops = vec![t(0, 0, JobOp::Create { index: 1 })];
            for (start, len, idx) in raw {
                // Each version has one content here (state = index), non-terminal.
                ops.push(t(start + 1, start + 1 + len, read(idx, 1)));
            }
            let ops: Vec<_> = ops
                .into_iter()
                .map(|mut o| {
                    if let JobOp::Read(v) = &mut o.op {
                        v.state = 1;
                    }
                    o
                })
                .collect();
            // With state fixed, versions differing only by index are fine.
            let verdict = check(&m, &ops);
            prop_assert_eq!(verdict == Verdict::Linearizable, pairwise_ok(&ops));
        }
    }
}
