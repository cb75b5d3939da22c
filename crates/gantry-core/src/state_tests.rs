use proptest::prelude::*;

use super::*;

pub(crate) fn spec(argv0: &str) -> JobSpec {
    JobSpec {
        argv: vec![argv0.to_owned()],
        ..JobSpec::default()
    }
}

pub(crate) fn submit(now_ms: u64, jobs: Vec<(&str, JobSpec)>) -> Command {
    Command::SubmitJobs {
        now_ms,
        jobs: jobs
            .into_iter()
            .map(|(id, spec)| NewJob {
                trace_parent: String::new(),
                id: id.to_owned(),
                spec,
            })
            .collect(),
    }
}

#[test]
fn t10_submit_creates_pending_jobs_with_tasks() {
    let mut s = State::default();
    let mut sp = spec("/bin/true");
    sp.count = 3;
    let out = s.apply(7, &submit(1000, vec![("a", sp), ("b", spec("x"))]));
    let Outcome::Submitted(Ok(r)) = out else {
        panic!("unexpected {out:?}")
    };
    assert_eq!(r.len(), 2);
    let a = s.job("a").unwrap();
    assert_eq!(a.tasks.len(), 3);
    assert_eq!(a.state, JobState::Pending);
    assert_eq!(a.create_index, 7);
    assert_eq!(a.submitted_at_ms, 1000);
    assert_eq!(a.spec.max_attempts, crate::job::DEFAULT_MAX_ATTEMPTS);
    assert_eq!(s.job("b").unwrap().seq, 1);
}

#[test]
fn t10_idempotency_same_spec_returns_original_other_spec_conflicts() {
    let mut s = State::default();
    let mut sp = spec("/bin/true");
    sp.idempotency_key = "k".into();
    s.apply(1, &submit(1, vec![("a", sp.clone())]));
    let out = s.apply(2, &submit(2, vec![("b", sp.clone())]));
    assert_eq!(
        out,
        Outcome::Submitted(Ok(vec![Submitted {
            job_id: "a".into(),
            existing: true
        }]))
    );
    let mut other = sp.clone();
    other.argv = vec!["/bin/false".into()];
    let out = s.apply(3, &submit(3, vec![("c", spec("ok")), ("d", other)]));
    assert!(matches!(
        out,
        Outcome::Submitted(Err(SubmitError::IdempotencyConflict { position: 1, .. }))
    ));
    // The rejected batch changed nothing, not even its valid first job.
    assert!(s.job("c").is_none());
    assert_eq!(s.job_count(), 1);
}

#[test]
fn t10_duplicate_ids_reject_the_batch() {
    let mut s = State::default();
    s.apply(1, &submit(1, vec![("a", spec("x"))]));
    let out = s.apply(2, &submit(2, vec![("b", spec("x")), ("a", spec("y"))]));
    assert!(matches!(
        out,
        Outcome::Submitted(Err(SubmitError::DuplicateId { position: 1, .. }))
    ));
    assert_eq!(s.job_count(), 1);
    // A replayed command (same id, same spec) answers as the original did.
    let replay = s.apply(3, &submit(3, vec![("a", spec("x"))]));
    assert_eq!(
        replay,
        Outcome::Submitted(Ok(vec![Submitted {
            job_id: "a".into(),
            existing: true
        }]))
    );
    assert_eq!(s.job_count(), 1);
}

#[test]
fn t10_cancel_marks_job_and_tasks_and_is_idempotent() {
    let mut s = State::default();
    s.apply(1, &submit(1, vec![("a", spec("x"))]));
    let cancel = Command::CancelJob {
        now_ms: 5,
        job_id: "a".into(),
        reason: "r".into(),
    };
    let Outcome::Cancelled(Ok(job)) = s.apply(2, &cancel) else {
        panic!()
    };
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.tasks[0].state, TaskState::Cancelled);
    assert_eq!(job.cancel_reason, "r");
    let again = s.apply(3, &cancel);
    assert_eq!(again, Outcome::Cancelled(Ok(job)));
    let missing = Command::CancelJob {
        now_ms: 5,
        job_id: "zz".into(),
        reason: String::new(),
    };
    assert_eq!(
        s.apply(4, &missing),
        Outcome::Cancelled(Err(CancelError::NotFound("zz".into())))
    );
}

#[test]
fn t20_list_pages_in_submission_order_with_filters() {
    let mut s = State::default();
    for i in 0..25 {
        let mut sp = spec("x");
        sp.name = if i % 2 == 0 { "even" } else { "odd" }.into();
        s.apply(i + 1, &submit(1, vec![(&format!("j{i:02}"), sp)]));
    }
    s.apply(
        100,
        &Command::CancelJob {
            now_ms: 2,
            job_id: "j03".into(),
            reason: String::new(),
        },
    );
    let all = JobFilter::default();
    let p1 = s.list_jobs(&all, None, 10);
    assert_eq!(p1.jobs.len(), 10);
    assert_eq!(p1.jobs[0].id, "j00");
    let p3 = s.list_jobs(
        &all,
        Some(s.list_jobs(&all, p1.next_after, 10).next_after.unwrap()),
        10,
    );
    assert_eq!(p3.jobs.len(), 5);
    assert_eq!(p3.next_after, None);
    let odd = JobFilter {
        name_prefix: "od".into(),
        ..JobFilter::default()
    };
    assert_eq!(s.list_jobs(&odd, None, 100).jobs.len(), 12);
    let cancelled = JobFilter {
        states: vec![JobState::Cancelled],
        ..JobFilter::default()
    };
    let page = s.list_jobs(&cancelled, None, 100);
    assert_eq!(page.jobs.len(), 1);
    assert_eq!(page.jobs[0].id, "j03");
}

#[test]
fn t20_bad_snapshot_is_an_error_not_a_panic() {
    assert!(State::from_snapshot(b"not json").is_err());
    assert!(matches!(
        State::from_snapshot(
            br#"{"version":99,"next_seq":0,"stale_reports":0,"jobs":[],"nodes":[]}"#
        ),
        Err(SnapshotError::Version(99))
    ));
}

// --- property tests ---------------------------------------------------------

fn arb_spec() -> impl Strategy<Value = JobSpec> {
    (
        prop::sample::select(vec!["/bin/true", "/bin/false", "sleep"]),
        0u32..4,
        prop::option::of(prop::sample::select(vec!["k1", "k2", "k3"])),
        -2i32..3,
        0u32..3,
    )
        .prop_map(|(argv0, count, key, priority, gpus)| JobSpec {
            argv: vec![argv0.to_owned()],
            count,
            priority,
            resources: crate::Resources {
                gpus,
                ..Default::default()
            },
            idempotency_key: key.unwrap_or_default().to_owned(),
            name: argv0.to_owned(),
            retention_ms: (count == 3).then_some(0),
            ..JobSpec::default()
        })
}

fn arb_node_id() -> impl Strategy<Value = String> {
    (0u8..3).prop_map(|n| format!("node-{n}"))
}

fn arb_attempt() -> impl Strategy<Value = crate::AttemptRef> {
    ((0u8..12).prop_map(|n| format!("job-{n}")), 0u32..3, 1u32..4).prop_map(
        |(job_id, task, attempt)| crate::AttemptRef {
            job_id,
            task,
            attempt,
        },
    )
}

fn arb_exit() -> impl Strategy<Value = crate::Exit> {
    prop::option::of(prop::sample::select(vec![
        crate::FailureClass::Workload,
        crate::FailureClass::Timeout,
        crate::FailureClass::Infra,
        crate::FailureClass::Cancelled,
        crate::FailureClass::WarmUp,
    ]))
    .prop_flat_map(|failure| (Just(failure), "(e[12])?"))
    .prop_map(|(failure, infra_event)| crate::Exit {
        failure,
        exit_code: Some(i32::from(failure.is_some())),
        infra_event,
        ..crate::Exit::default()
    })
}

fn arb_command() -> impl Strategy<Value = Command> {
    // Few distinct ids so duplicates, conflicts and cancels of existing jobs happen.
    let id = || (0u8..12).prop_map(|n| format!("job-{n}"));
    prop_oneof![
        1 => (any::<u16>(), arb_node_id(), 0u64..4000, 0u32..3).prop_map(|(now, id, cpu, s)| {
            Command::NodeSessionOpened {
                now_ms: u64::from(now),
                node: crate::NodeInfo {
                    id,
                    capacity: crate::Resources { cpu_millis: cpu, memory_mib: 1024, gpus: 2 },
                    max_tasks: 3,
                    ..crate::NodeInfo::default()
                },
                session: crate::Session { id: format!("s{s}"), replica: 1, opened_at_ms: 0 },
                health: None,
            }
        }),
        1 => (any::<u16>(), prop::collection::vec((arb_attempt(), arb_node_id()), 0..4)).prop_map(
            |(now, ps)| Command::Assign {
                now_ms: u64::from(now),
                placements: ps
                    .into_iter()
                    .map(|(attempt, node_id)| crate::Placement { attempt, node_id })
                    .collect(),
            }
        ),
        1 => (any::<u16>(), prop::collection::vec((arb_attempt(), arb_node_id(), prop::option::of(arb_exit())), 0..4)).prop_map(
            |(now, rs)| Command::ReportAttempts {
                now_ms: u64::from(now),
                reports: rs
                    .into_iter()
                    .map(|(attempt, node_id, exit)| crate::AttemptReport {
                        node_id,
                        event: match exit {
                            None => crate::AttemptEvent::Started,
                            Some(e) if e.failure == Some(crate::FailureClass::WarmUp) && e.exit_code == Some(1) && attempt.task == 2 => {
                                crate::AttemptEvent::Ready { diagnostics: "probe passed".into() }
                            }
                            Some(e) => crate::AttemptEvent::Finished(e),
                        },
                        attempt,
                    })
                    .collect(),
            }
        ),
        1 => (any::<u16>(), prop::collection::vec(arb_node_id(), 0..2)).prop_map(|(now, node_ids)| {
            Command::NodesLost { now_ms: u64::from(now), node_ids }
        }),
        3 => (any::<u32>(), prop::collection::vec((id(), arb_spec()), 1..4)).prop_map(
            |(now, jobs)| Command::SubmitJobs {
                now_ms: u64::from(now),
                jobs: jobs.into_iter().map(|(id, spec)| NewJob { id, spec, trace_parent: String::new() }).collect(),
            }
        ),
        1 => (any::<u32>(), id(), "[a-z]{0,5}").prop_map(|(now, job_id, reason)| {
            Command::CancelJob { now_ms: u64::from(now), job_id, reason }
        }),
        1 => (any::<u16>(), arb_node_id(), 0u32..3, any::<bool>()).prop_map(|(now, node_id, s, healthy)| {
            Command::NodeHealth {
                now_ms: u64::from(now),
                node_id,
                session_id: format!("s{s}"),
                health: crate::Health {
                    score: if healthy { 100 } else { 80 },
                    healthy,
                    failing: if healthy { vec![] } else {
                        vec![crate::FailingCheck { name: "disk".into(), detail: "full".into() }]
                    },
                    checked_at_ms: u64::from(now),
                },
            }
        }),
        1 => (any::<u16>(), arb_node_id(), any::<bool>()).prop_map(|(now, node_id, blacklisted)| {
            Command::SetBlacklist { now_ms: u64::from(now), node_id, blacklisted, reason: String::new() }
        }),
        1 => (any::<u16>(), 0u32..3).prop_map(|(now, rules)| {
            Command::EnableRules { now_ms: u64::from(now), rules }
        }),
        1 => (any::<u32>(), prop::collection::vec(id(), 0..4), 0u64..3000, prop::option::of(0u64..3000)).prop_map(
            |(now, job_ids, default_ms, older_than_ms)| Command::CollectJobs {
                now_ms: u64::from(now),
                retention: Retention { default_ms, older_than_ms },
                job_ids,
            }
        ),
    ]
}

/// A state that applied `cmds` at indexes 1, 2, ...
fn applied(cmds: &[Command]) -> State {
    let mut s = State::default();
    for (i, c) in cmds.iter().enumerate() {
        s.apply(i as u64 + 1, c);
    }
    s
}

proptest! {
    #[test]
    fn t30_apply_is_deterministic(cmds in prop::collection::vec(arb_command(), 0..40)) {
        let (mut a, mut b) = (State::default(), State::default());
        for (i, c) in cmds.iter().enumerate() {
            let index = i as u64 + 1;
            prop_assert_eq!(a.apply(index, c), b.apply(index, c));
        }
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.to_snapshot().unwrap(), b.to_snapshot().unwrap());
    }

    // Invariant: the log of recent job changes finds what reading every job
    // finds, for every cursor, also in a state restored from a snapshot
    // (whose changes up to then are in no log) that goes on applying.
    #[test]
    fn t30_jobs_changed_after_finds_what_reading_every_job_finds(
        before in prop::collection::vec(arb_command(), 0..40),
        after in prop::collection::vec(arb_command(), 0..20),
    ) {
        fn ids(jobs: Vec<&Job>) -> Vec<String> {
            jobs.iter().map(|j| j.id.clone()).collect()
        }
        fn check(s: &State, upto: u64) -> Result<(), TestCaseError> {
            for k in 0..=upto {
                prop_assert_eq!(ids(s.jobs_changed_after(k)), ids(s.jobs_changed_after_by_scan(k)));
            }
            Ok(())
        }
        let mut s = State::default();
        for (i, c) in before.iter().enumerate() {
            s.apply(i as u64 + 1, c);
            check(&s, i as u64 + 1)?;
        }
        let mut restored = State::from_snapshot(&s.to_snapshot().unwrap()).unwrap();
        check(&restored, before.len() as u64)?;
        for (i, c) in after.iter().enumerate() {
            let index = (before.len() + i) as u64 + 1;
            restored.apply(index, c);
            check(&restored, index)?;
        }
    }

    // A snapshot encoded from a copy (while the state moves on) is the
    // snapshot of the state at the time of the copy.
    #[test]
    fn t30_a_snapshot_copy_encodes_what_the_state_held(
        before in prop::collection::vec(arb_command(), 0..30),
        after in prop::collection::vec(arb_command(), 0..10),
    ) {
        let mut s = applied(&before);
        let expected = s.to_snapshot().unwrap();
        let copy = s.snapshot_copy();
        for (i, c) in after.iter().enumerate() {
            s.apply((before.len() + i) as u64 + 1, c);
        }
        prop_assert_eq!(copy.encode().unwrap(), expected);
    }

    #[test]
    fn t30_snapshot_restore_is_identical_and_keeps_applying_identically(
        before in prop::collection::vec(arb_command(), 0..30),
        after in prop::collection::vec(arb_command(), 0..10),
    ) {
        let mut s = applied(&before);
        let mut restored = State::from_snapshot(&s.to_snapshot().unwrap()).unwrap();
        prop_assert_eq!(&restored, &s);
        for (i, c) in after.iter().enumerate() {
            let index = (before.len() + i) as u64 + 1;
            prop_assert_eq!(s.apply(index, c), restored.apply(index, c));
        }
        prop_assert_eq!(&restored, &s);
    }

    // Invariant: an entry that changes what a node's dispatcher sends (its
    // live attempts, their cancels, its session or status) names the node in
    // `nodes_touched_after`, else a replica would not wake that dispatcher.
    #[test]
    fn t30_every_change_a_dispatcher_sees_is_touched(cmds in prop::collection::vec(arb_command(), 0..60)) {
        fn view(s: &State) -> BTreeMap<String, String> {
            s.nodes()
                .map(|n| {
                    let live: Vec<String> = s
                        .live_attempts(n.id())
                        .map(|r| {
                            let a = s.job(&r.job_id).unwrap().tasks[r.task as usize].attempts.last().unwrap();
                            format!("{r}:{}:{:?}", a.cancel_requested, a.gpus)
                        })
                        .collect();
                    (n.id().to_owned(), format!("{live:?} {:?} {:?}", n.session, n.status))
                })
                .collect()
        }
        let mut s = State::default();
        for (i, c) in cmds.iter().enumerate() {
            let index = i as u64 + 1;
            let before = view(&s);
            s.apply(index, c);
            let after = view(&s);
            let Some(touched) = s.nodes_touched_after(index - 1) else { continue };
            for (node, v) in &after {
                if before.get(node) != Some(v) {
                    prop_assert!(touched.contains(node.as_str()), "{} changed at {} untouched by {:?}", node, index, c);
                }
            }
        }
    }

    // Invariant: no GPU is held by two live attempts, however commands interleave.
    #[test]
    fn t30_no_gpu_is_assigned_twice(cmds in prop::collection::vec(arb_command(), 0..60)) {
        let mut s = State::default();
        for (i, c) in cmds.iter().enumerate() {
            s.apply(i as u64 + 1, c);
            for node in s.nodes() {
                let mut held = std::collections::BTreeSet::new();
                for r in s.live_attempts(node.id()) {
                    let a = s.job(&r.job_id).unwrap().tasks[r.task as usize].attempts.last().unwrap();
                    for g in &a.gpus {
                        prop_assert!(held.insert(*g), "GPU {} of {} held twice", g, node.id());
                    }
                    prop_assert!(a.gpus.len() as u32 == s.job(&r.job_id).unwrap().spec.resources.gpus);
                }
            }
        }
    }

    // Whatever a collection entry names, only jobs that had ended, with no
    // attempt left live, go; everything else stays as it was.
    #[test]
    fn t30_a_collection_removes_only_finished_jobs(cmds in prop::collection::vec(arb_command(), 0..60)) {
        let mut s = State::default();
        for (i, c) in cmds.iter().enumerate() {
            let before = s.clone();
            s.apply(i as u64 + 1, c);
            if let Command::CollectJobs { now_ms, retention, .. } = c {
                for j in before.jobs() {
                    if s.job(&j.id).is_none() {
                        prop_assert!(j.state.is_terminal(), "{} was {:?}", j.id, j.state);
                        prop_assert!(j.tasks.iter().all(|t| t.live_attempt().is_none()));
                        prop_assert!(retention.due(j, *now_ms));
                    }
                }
            }
        }
    }

    #[test]
    fn t30_ids_and_keys_stay_unique(cmds in prop::collection::vec(arb_command(), 0..40)) {
        let mut s = State::default();
        for (i, c) in cmds.iter().enumerate() {
            s.apply(i as u64 + 1, c);
        }
        let page = s.list_jobs(&JobFilter::default(), None, usize::MAX);
        prop_assert_eq!(page.jobs.len(), s.job_count());
        let mut keys: Vec<_> = page.jobs.iter()
            .map(|j| j.spec.idempotency_key.clone()).filter(|k| !k.is_empty()).collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        prop_assert_eq!(keys.len(), n);
    }
}

proptest! {
    // Bytes from the network or a damaged log never panic the decoder or apply.
    #[test]
    fn t30_decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(cmd) = serde_json::from_slice::<Command>(&bytes) {
            let mut s = State::default();
            s.apply(1, &cmd);
        }
        let _ = State::from_snapshot(&bytes);
    }

    // Well-formed commands with hostile field values apply without panicking.
    #[test]
    fn t30_mutated_commands_apply_cleanly(
        cmds in prop::collection::vec(arb_command(), 1..20),
        cut in 0usize..64,
    ) {
        let mut s = State::default();
        for (i, c) in cmds.iter().enumerate() {
            let text = serde_json::to_string(c).unwrap();
            // Truncated encodings are refused, never half-applied.
            let truncated = &text[..text.len().saturating_sub(cut).max(1).min(text.len())];
            if let Ok(decoded) = serde_json::from_str::<Command>(truncated) {
                s.apply(i as u64 + 1, &decoded);
            }
        }
    }
}
