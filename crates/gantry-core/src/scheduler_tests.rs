use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::command::{AttemptEvent, AttemptReport, Command, NewJob, Outcome};
use crate::job::{Exit, FailureClass, JobState, Resources, TaskState};
use crate::node::{NodeInfo, Session};

fn node(id: &str, cpu: u64, mem: u64, gpus: u32, labels: &[(&str, &str)]) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capacity: Resources {
            cpu_millis: cpu,
            memory_mib: mem,
            gpus,
        },
        max_tasks: 0,
        agent_version: "test".into(),
        gpus: Vec::new(),
    }
}

fn open(state: &mut State, index: u64, info: NodeInfo) {
    let session = Session {
        id: format!("s-{}", info.id),
        replica: 1,
        opened_at_ms: 0,
    };
    state.apply(
        index,
        &Command::NodeSessionOpened {
            now_ms: 0,
            node: info,
            session,
            health: None,
        },
    );
}

fn job(id: &str, cpu: u64, priority: i32) -> NewJob {
    NewJob {
        trace_parent: String::new(),
        id: id.into(),
        spec: JobSpec {
            argv: vec!["x".into()],
            resources: Resources {
                cpu_millis: cpu,
                memory_mib: 0,
                gpus: 0,
            },
            priority,
            ..JobSpec::default()
        },
    }
}

fn submit(state: &mut State, index: u64, jobs: Vec<NewJob>) {
    state.apply(index, &Command::SubmitJobs { now_ms: 0, jobs });
}

/// Schedules and applies one round; returns the placements.
fn round(state: &mut State, index: u64, now_ms: u64) -> Vec<Placement> {
    let placements = schedule(state, now_ms, 10_000);
    state.apply(
        index,
        &Command::Assign {
            now_ms,
            placements: placements.clone(),
        },
    );
    placements
}

fn finish(state: &mut State, index: u64, p: &Placement, failure: Option<FailureClass>) -> Outcome {
    state.apply(
        index,
        &Command::ReportAttempts {
            now_ms: 10,
            reports: vec![AttemptReport {
                node_id: p.node_id.clone(),
                attempt: p.attempt.clone(),
                event: AttemptEvent::Finished(Exit {
                    exit_code: Some(if failure.is_some() { 1 } else { 0 }),
                    failure,
                    ..Exit::default()
                }),
            }],
        },
    )
}

#[test]
fn t10_binpack_fills_one_node_spread_uses_both() {
    let mut s = State::default();
    open(&mut s, 1, node("a", 4000, 0, 0, &[]));
    open(&mut s, 2, node("b", 4000, 0, 0, &[]));
    submit(&mut s, 3, vec![job("j1", 1000, 0), job("j2", 1000, 0)]);
    let p = round(&mut s, 4, 0);
    assert_eq!(p.len(), 2);
    assert_eq!(
        p[0].node_id, p[1].node_id,
        "bin-packing keeps one node free"
    );

    let mut s = State::default();
    open(&mut s, 1, node("a", 4000, 0, 0, &[]));
    open(&mut s, 2, node("b", 4000, 0, 0, &[]));
    let mut spread = vec![job("j1", 1000, 0), job("j2", 1000, 0)];
    for j in &mut spread {
        j.spec.spread = true;
    }
    submit(&mut s, 3, spread);
    let p = round(&mut s, 4, 0);
    assert_ne!(p[0].node_id, p[1].node_id);
}

#[test]
fn t10_constraints_gpus_and_capacity_hold() {
    let mut s = State::default();
    open(&mut s, 1, node("cpu", 8000, 0, 0, &[("zone", "a")]));
    open(&mut s, 2, node("gpu", 8000, 0, 2, &[("zone", "b")]));
    let mut gpu_job = job("g", 1000, 0);
    gpu_job.spec.resources.gpus = 2;
    let mut zoned = job("z", 1000, 0);
    zoned.spec.constraints = BTreeMap::from([("zone".to_string(), "a".to_string())]);
    let mut nowhere = job("n", 1000, 0);
    nowhere.spec.constraints = BTreeMap::from([("zone".to_string(), "c".to_string())]);
    let big = job("big", 9000, 0);
    submit(&mut s, 3, vec![gpu_job, zoned, nowhere, big]);
    let p = round(&mut s, 4, 0);
    let by_job: BTreeMap<_, _> = p
        .iter()
        .map(|p| (p.attempt.job_id.as_str(), p.node_id.as_str()))
        .collect();
    assert_eq!(by_job.get("g"), Some(&"gpu"));
    assert_eq!(by_job.get("z"), Some(&"cpu"));
    assert!(!by_job.contains_key("n"));
    assert!(!by_job.contains_key("big"));
    assert_eq!(s.pending_count(), 2);
}

#[test]
fn t10_priority_goes_first_when_room_is_short() {
    let mut s = State::default();
    open(&mut s, 1, node("a", 2000, 0, 0, &[]));
    submit(
        &mut s,
        2,
        vec![
            job("low", 1000, 0),
            job("high", 1000, 5),
            job("mid", 1000, 1),
        ],
    );
    let p = round(&mut s, 3, 0);
    let placed: Vec<_> = p.iter().map(|p| p.attempt.job_id.as_str()).collect();
    assert_eq!(placed, vec!["high", "mid"]);
}

#[test]
fn t20_workload_failures_retry_with_backoff_then_fail() {
    let mut s = State::default();
    open(&mut s, 1, node("a", 4000, 0, 0, &[]));
    let mut j = job("j", 1000, 0);
    j.spec.max_attempts = 2;
    submit(&mut s, 2, vec![j]);
    let p = round(&mut s, 3, 0);
    assert_eq!(
        finish(&mut s, 4, &p[0], Some(FailureClass::Workload)),
        Outcome::Reported {
            accepted: 1,
            stale: 0
        }
    );
    let task = s.job("j").unwrap().tasks[0].clone();
    assert_eq!(task.state, TaskState::Pending);
    assert!(task.not_before_ms > 10);
    assert!(round(&mut s, 5, 10).is_empty(), "backoff holds the retry");
    let p2 = round(&mut s, 6, task.not_before_ms);
    assert_eq!(p2[0].attempt.attempt, 2);
    // A late report for attempt 1 is refused by fencing.
    assert_eq!(
        finish(&mut s, 7, &p[0], None),
        Outcome::Reported {
            accepted: 0,
            stale: 1
        }
    );
    finish(&mut s, 8, &p2[0], Some(FailureClass::Timeout));
    let job = s.job("j").unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.tasks[0].failure_reason.contains("2 of 2"),
        "{}",
        job.tasks[0].failure_reason
    );
    assert_eq!(s.stale_reports(), 1);
}

#[test]
fn t20_infra_failures_do_not_consume_attempts_and_reports_are_fenced_by_node() {
    let mut s = State::default();
    open(&mut s, 1, node("a", 4000, 0, 0, &[]));
    let mut j = job("j", 1000, 0);
    j.spec.max_attempts = 1;
    submit(&mut s, 2, vec![j]);
    let p = round(&mut s, 3, 0);
    // A report naming another node is refused.
    let mut foreign = p[0].clone();
    foreign.node_id = "b".into();
    assert_eq!(
        finish(&mut s, 4, &foreign, None),
        Outcome::Reported {
            accepted: 0,
            stale: 1
        }
    );
    // The node is lost: the attempt is lost and the task retried (infra).
    let out = s.apply(
        5,
        &Command::NodesLost {
            now_ms: 20,
            node_ids: vec!["a".into()],
        },
    );
    assert_eq!(out, Outcome::NodesLost { attempts_lost: 1 });
    let task = &s.job("j").unwrap().tasks[0];
    assert_eq!(task.state, TaskState::Pending);
    assert_eq!((task.workload_failures, task.infra_failures), (0, 1));
    assert_eq!(s.usage("a").tasks, 0);
    // The lost node gets nothing; a reconnected one does.
    assert!(round(&mut s, 6, 100_000).is_empty());
    open(&mut s, 7, node("a", 4000, 0, 0, &[]));
    let p2 = round(&mut s, 8, 100_000);
    finish(&mut s, 9, &p2[0], None);
    assert_eq!(s.job("j").unwrap().state, JobState::Complete);
}

#[test]
fn t20_cancel_keeps_live_attempt_until_reported() {
    let mut s = State::default();
    open(&mut s, 1, node("a", 4000, 0, 0, &[]));
    submit(&mut s, 2, vec![job("j", 1000, 0)]);
    let p = round(&mut s, 3, 0);
    s.apply(
        4,
        &Command::CancelJob {
            now_ms: 5,
            job_id: "j".into(),
            reason: String::new(),
        },
    );
    let a = &s.job("j").unwrap().tasks[0].attempts[0];
    assert!(a.cancel_requested && a.state.is_live());
    assert_eq!(
        s.usage("a").tasks,
        1,
        "resources held until the kill is reported"
    );
    finish(&mut s, 5, &p[0], Some(FailureClass::Cancelled));
    let job = s.job("j").unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.tasks[0].state, TaskState::Cancelled);
    assert_eq!(s.usage("a").tasks, 0);
}

// --- property tests ---------------------------------------------------------

fn arb_cluster() -> impl Strategy<Value = (Vec<NodeInfo>, Vec<NewJob>)> {
    let nodes = prop::collection::vec(
        (1000u64..8000, 0u64..4096, 0u32..3, 0u32..4, prop::bool::ANY),
        1..5,
    )
    .prop_map(|ns| {
        ns.into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, gpus, max_tasks, zone_a))| NodeInfo {
                max_tasks,
                ..node(
                    &format!("n{i}"),
                    cpu,
                    mem,
                    gpus,
                    &[("zone", if zone_a { "a" } else { "b" })],
                )
            })
            .collect::<Vec<_>>()
    });
    let jobs = prop::collection::vec(
        (
            0u64..3000,
            0u64..2048,
            0u32..3,
            -2i32..3,
            prop::option::of(prop::bool::ANY),
            1u32..3,
            prop::bool::ANY,
        ),
        0..30,
    )
    .prop_map(|js| {
        js.into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, gpus, priority, zone, count, spread))| {
                let mut j = job(&format!("j{i}"), cpu, priority);
                j.spec.resources.memory_mib = mem;
                j.spec.resources.gpus = gpus;
                j.spec.count = count;
                j.spec.spread = spread;
                if let Some(a) = zone {
                    j.spec
                        .constraints
                        .insert("zone".into(), if a { "a" } else { "b" }.into());
                }
                j
            })
            .collect()
    });
    (nodes, jobs)
}

/// The scheduler as a plain scan: every task looks at every node. The
/// ranked queues must place exactly as this does.
fn schedule_by_scan(
    state: &State,
    now_ms: u64,
    limit: usize,
    default: PlacementPolicy,
) -> Vec<Placement> {
    let mut nodes: BTreeMap<&str, (&crate::node::Node, crate::state::Usage)> = state
        .nodes()
        .filter(|n| n.accepts_work(now_ms))
        .map(|n| (n.id(), (n, state.usage(n.id()))))
        .collect();
    let mut placements = Vec::new();
    for (job, task_index) in state.pending_tasks() {
        if placements.len() >= limit {
            break;
        }
        let task = &job.tasks[task_index as usize];
        if task.not_before_ms > now_ms {
            continue;
        }
        let policy = match job.spec.placement {
            PlacementPolicy::ClusterDefault => default,
            p => p,
        };
        let mut best: Option<(&str, f64)> = None;
        for (id, (node, usage)) in &nodes {
            if !admits(policy, node, now_ms) || !feasible(node, usage, &job.spec) {
                continue;
            }
            let score = rank(node, usage, &job.spec, now_ms);
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((id, score));
            }
        }
        let Some((id, _)) = best else { continue };
        let (node, usage) = nodes.get_mut(id).unwrap();
        let gpus = usage.pick_gpus(&node.info, &job.spec).unwrap();
        usage.add(&job.spec.resources, &gpus);
        placements.push(Placement {
            attempt: crate::job::AttemptRef {
                job_id: job.id.clone(),
                task: task_index,
                attempt: task.attempts.len() as u32 + 1,
            },
            node_id: id.to_owned(),
        });
    }
    placements
}

proptest! {
    // Same placements as the scan, in the same order, over random clusters,
    // mixed shapes, spread and packing, several rounds.
    #[test]
    fn t30_ranked_queues_place_exactly_as_a_scan(
        (_, jobs) in arb_cluster(),
        nodes in prop::collection::vec(
            (prop::sample::select(vec![2000u64, 4000]), prop::sample::select(vec![0u64, 2048]), 0u32..3, 0u32..3, prop::bool::ANY),
            1..8,
        ),
        limit in 1usize..40,
    ) {
        // Few distinct node sizes, so ties (lowest id wins) are common.
        let nodes: Vec<NodeInfo> = nodes
            .into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, gpus, max_tasks, zone_a))| NodeInfo {
                max_tasks,
                ..node(&format!("n{i}"), cpu, mem, gpus, &[("zone", if zone_a { "a" } else { "b" })])
            })
            .collect();
        let mut s = State::default();
        let mut index = 0;
        for n in nodes {
            index += 1;
            open(&mut s, index, n);
        }
        submit(&mut s, index + 1, jobs);
        for r in 0..3u64 {
            let fast = schedule_with(&s, 0, limit, PlacementPolicy::Balanced);
            let scan = schedule_by_scan(&s, 0, limit, PlacementPolicy::Balanced);
            prop_assert_eq!(&fast, &scan);
            s.apply(index + 2 + r, &Command::Assign { now_ms: 0, placements: fast });
        }
    }

    #[test]
    fn t30_never_overcommits_and_constraints_always_hold((nodes, jobs) in arb_cluster()) {
        let mut s = State::default();
        let mut index = 0;
        for n in nodes {
            index += 1;
            open(&mut s, index, n);
        }
        submit(&mut s, index + 1, jobs);
        // Several rounds, finishing some attempts between them.
        for r in 0..3u64 {
            let placed = round(&mut s, index + 2 + r * 2, 0);
            for n in s.nodes() {
                let u = s.usage(n.id());
                let c = &n.info.capacity;
                prop_assert!(u.resources.cpu_millis <= c.cpu_millis);
                prop_assert!(u.resources.memory_mib <= c.memory_mib);
                prop_assert!(u.resources.gpus <= c.gpus);
                prop_assert!(n.info.max_tasks == 0 || u.tasks <= n.info.max_tasks);
            }
            for p in &placed {
                let job = s.job(&p.attempt.job_id).unwrap();
                let node = s.node(&p.node_id).unwrap();
                for (k, v) in &job.spec.constraints {
                    prop_assert_eq!(node.info.labels.get(k), Some(v));
                }
                // At most one live attempt per task.
                let live = job.tasks[p.attempt.task as usize].attempts.iter().filter(|a| a.state.is_live()).count();
                prop_assert!(live <= 1);
            }
            if let Some(p) = placed.first() {
                finish(&mut s, index + 3 + r * 2, p, None);
            }
        }
    }

    #[test]
    fn t30_higher_priority_is_never_passed_over_by_an_equal_lower_one(
        priorities in prop::collection::vec(-3i32..4, 1..20),
        slots in 1u64..10,
    ) {
        let mut s = State::default();
        open(&mut s, 1, node("a", slots * 1000, 0, 0, &[]));
        let jobs = priorities.iter().enumerate().map(|(i, p)| job(&format!("j{i}"), 1000, *p)).collect();
        submit(&mut s, 2, jobs);
        let placed = round(&mut s, 3, 0);
        let min_placed = placed.iter().map(|p| s.job(&p.attempt.job_id).unwrap().spec.priority).min();
        let max_waiting = s.pending_tasks().map(|(j, _)| j.spec.priority).max();
        if let (Some(lo), Some(hi)) = (min_placed, max_waiting) {
            prop_assert!(lo >= hi, "placed priority {} while {} waits", lo, hi);
        }
    }
}

#[test]
fn t20_drain_deadline_stops_and_reschedules_without_counting_failures() {
    let mut s = State::default();
    open(&mut s, 1, node("a", 4000, 0, 0, &[]));
    open(&mut s, 2, node("b", 4000, 0, 0, &[]));
    submit(&mut s, 3, vec![job("j", 1000, 0)]);
    let p = round(&mut s, 4, 0);
    let first = p[0].node_id.clone();
    let drain = Command::SetEligibility {
        now_ms: 10,
        node_id: first.clone(),
        eligibility: crate::Eligibility::Draining { deadline_ms: 100 },
    };
    s.apply(5, &drain);
    // Before the deadline nothing is stopped.
    let early = s.apply(
        6,
        &Command::DrainExpired {
            now_ms: 50,
            node_id: first.clone(),
        },
    );
    assert!(matches!(early, Outcome::Node(Err(_))));
    s.apply(
        7,
        &Command::DrainExpired {
            now_ms: 100,
            node_id: first.clone(),
        },
    );
    let a = &s.job("j").unwrap().tasks[0].attempts[0];
    assert!(a.cancel_requested && a.drained);
    finish(&mut s, 8, &p[0], Some(FailureClass::Cancelled));
    let task = &s.job("j").unwrap().tasks[0];
    assert_eq!(task.state, TaskState::Pending);
    assert_eq!((task.workload_failures, task.infra_failures), (0, 0));
    // The draining node gets nothing new; the other one takes the task.
    let p2 = round(&mut s, 9, 200);
    assert_eq!(p2.len(), 1);
    assert_ne!(p2[0].node_id, first);
    assert_eq!(s.job("j").unwrap().modify_index, 9);
}

// GPUs, health, reputation and placement policies.
#[path = "placement_tests.rs"]
mod placement;

/// A full cluster with a long queue: a round stops reading the queue once
/// no node has a task slot left, so each task that finishes costs a round
/// of one placement, not a read of every pending task.
#[test]
fn t10_a_round_stops_reading_the_queue_when_no_slot_is_left() {
    let mut s = State::default();
    open(
        &mut s,
        1,
        NodeInfo {
            max_tasks: 2,
            ..node("n1", 64_000, 0, 0, &[])
        },
    );
    let jobs: Vec<NewJob> = (0..10_000)
        .map(|i| job(&format!("j{i:05}"), 10, 0))
        .collect();
    submit(&mut s, 2, jobs);

    let first = schedule_round(&s, 0, 1_000, PlacementPolicy::Balanced);
    assert_eq!(first.placements.len(), 2);
    assert_eq!(
        first.examined, 2,
        "the queue is read only until the slots are gone"
    );
    s.apply(
        3,
        &Command::Assign {
            now_ms: 0,
            placements: first.placements.clone(),
        },
    );
    let full = schedule_round(&s, 0, 1_000, PlacementPolicy::Balanced);
    assert_eq!((full.placements.len(), full.examined), (0, 0));

    finish(&mut s, 4, &first.placements[0], None);
    let next = schedule_round(&s, 10, 1_000, PlacementPolicy::Balanced);
    assert_eq!(next.placements.len(), 1);
    assert_eq!(next.examined, 1);
    assert_eq!(s.pending_count(), 9_998);
}
