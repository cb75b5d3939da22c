use super::*;
use crate::node::{BLACKLIST_TTL_MS, FailingCheck, Gpu, Health, REPUTATION_HALF_LIFE_MS, decay};

fn gpu_node(id: &str, gpus: &[(&str, u64)]) -> NodeInfo {
    let mut n = node(id, 64_000, 0, gpus.len() as u32, &[]);
    n.gpus = gpus
        .iter()
        .enumerate()
        .map(|(i, (model, mem))| Gpu {
            index: i as u32,
            uuid: format!("GPU-{id}-{i}"),
            model: (*model).into(),
            memory_mib: *mem,
        })
        .collect();
    n
}

fn gpu_job(id: &str, gpus: u32, model: &str, min_mem: u64) -> NewJob {
    let mut j = job(id, 1000, 0);
    j.spec.resources.gpus = gpus;
    j.spec.gpu_model = model.into();
    j.spec.gpu_min_memory_mib = min_mem;
    j
}

fn gpus_of(s: &State, p: &Placement) -> Vec<u32> {
    s.job(&p.attempt.job_id).unwrap().tasks[p.attempt.task as usize]
        .attempts
        .last()
        .unwrap()
        .gpus
        .clone()
}

fn set_health(s: &mut State, index: u64, node_id: &str, healthy: bool) {
    s.apply(
        index,
        &Command::NodeHealth {
            now_ms: 0,
            node_id: node_id.into(),
            session_id: format!("s-{node_id}"),
            health: Health {
                score: if healthy { 100 } else { 80 },
                healthy,
                failing: if healthy {
                    vec![]
                } else {
                    vec![FailingCheck {
                        name: "disk".into(),
                        detail: "1 GiB free, need 10 GiB".into(),
                    }]
                },
                checked_at_ms: 0,
            },
        },
    );
}

#[test]
fn t10_gpus_go_by_model_and_memory_and_are_never_shared() {
    let mut s = State::default();
    open(
        &mut s,
        1,
        gpu_node(
            "a",
            &[("NVIDIA T4", 16_384), ("NVIDIA A100-SXM4-80GB", 81_920)],
        ),
    );
    open(
        &mut s,
        2,
        gpu_node(
            "b",
            &[
                ("NVIDIA A100-SXM4-80GB", 81_920),
                ("NVIDIA A100-SXM4-80GB", 81_920),
            ],
        ),
    );
    // Four jobs in one round compete for three A100s: one must wait, and no
    // A100 may be handed out twice within the round.
    submit(
        &mut s,
        3,
        vec![
            gpu_job("big", 2, "a100", 0),
            gpu_job("one", 1, "A100", 40_000),
            gpu_job("more", 1, "a100", 0),
            gpu_job("t4", 1, "t4", 0),
        ],
    );
    let p = round(&mut s, 4, 0);
    let by_job: BTreeMap<&str, (&str, Vec<u32>)> = p
        .iter()
        .map(|p| {
            (
                p.attempt.job_id.as_str(),
                (p.node_id.as_str(), gpus_of(&s, p)),
            )
        })
        .collect();
    assert_eq!(
        by_job["big"],
        ("b", vec![0, 1]),
        "the only node with two A100s"
    );
    assert_eq!(by_job["one"], ("a", vec![1]), "the A100 on node a");
    assert!(!by_job.contains_key("more"), "no A100 left: it waits");
    assert_eq!(by_job["t4"], ("a", vec![0]));
    // A model nobody has, or too much memory, is never placed.
    submit(
        &mut s,
        5,
        vec![
            gpu_job("h100", 1, "H100", 0),
            gpu_job("huge", 1, "", 200_000),
        ],
    );
    let p = round(&mut s, 6, 0);
    assert!(p.iter().all(|p| p.attempt.job_id == "more") && p.is_empty());
    // When "big" finishes its GPUs free up for "more".
    let big = by_job["big"].clone();
    let done = Placement {
        attempt: AttemptRef {
            job_id: "big".into(),
            task: 0,
            attempt: 1,
        },
        node_id: big.0.into(),
    };
    finish(&mut s, 7, &done, None);
    let p = round(&mut s, 8, 20);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].attempt.job_id, "more");
    assert_eq!(gpus_of(&s, &p[0]), vec![0]);
}

#[test]
fn t10_apply_refuses_a_placement_whose_gpus_are_taken() {
    // Two plans made from the same view (say, by two leaders in turn) each
    // put a 1-GPU job on the node's only GPU: apply takes the first only.
    let mut s = State::default();
    open(&mut s, 1, gpu_node("a", &[("T4", 16_384)]));
    submit(
        &mut s,
        2,
        vec![gpu_job("x", 1, "", 0), gpu_job("y", 1, "", 0)],
    );
    let plan = |job: &str| Placement {
        attempt: AttemptRef {
            job_id: job.into(),
            task: 0,
            attempt: 1,
        },
        node_id: "a".into(),
    };
    let out = s.apply(
        3,
        &Command::Assign {
            now_ms: 0,
            placements: vec![plan("x"), plan("y")],
        },
    );
    assert_eq!(
        out,
        Outcome::Assigned {
            placed: 1,
            skipped: 1
        }
    );
}

#[test]
fn t10_unhealthy_nodes_get_no_work_unless_aggressive() {
    let mut s = State::default();
    open(&mut s, 1, node("sick", 4000, 0, 0, &[]));
    open(&mut s, 2, node("well", 4000, 0, 0, &[]));
    set_health(&mut s, 3, "sick", false);
    // Bin-packing alone would pick "sick" (lowest id on a tie).
    submit(&mut s, 4, vec![job("j1", 1000, 0)]);
    let p = round(&mut s, 5, 0);
    assert_eq!(p[0].node_id, "well");

    let mut s = State::default();
    open(&mut s, 1, node("sick", 4000, 0, 0, &[]));
    set_health(&mut s, 2, "sick", false);
    submit(&mut s, 3, vec![job("j1", 1000, 0)]);
    assert!(round(&mut s, 4, 0).is_empty(), "balanced: nowhere to go");
    let p = schedule_with(&s, 0, 10, PlacementPolicy::Aggressive);
    assert_eq!(p.len(), 1, "aggressive takes any feasible node");
    // A job's own policy wins over the cluster default.
    let mut j = job("j2", 1000, 0);
    j.spec.placement = PlacementPolicy::Aggressive;
    submit(&mut s, 5, vec![j]);
    let p = schedule(&s, 0, 10);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].attempt.job_id, "j2");
    // A report carried by an old session does not change the verdict.
    s.apply(
        6,
        &Command::NodeHealth {
            now_ms: 0,
            node_id: "sick".into(),
            session_id: "old".into(),
            health: Health::default(),
        },
    );
    assert!(!s.node("sick").unwrap().health.healthy);
}

#[test]
fn t10_reputation_decays_with_a_half_life() {
    assert_eq!(decay(1000, 0), 1000);
    assert_eq!(decay(1000, REPUTATION_HALF_LIFE_MS), 500);
    assert_eq!(decay(1000, 2 * REPUTATION_HALF_LIFE_MS), 250);
    // Half-way through a half-life: within 6 % above 2^-0.5.
    let mid = decay(1_000_000, REPUTATION_HALF_LIFE_MS / 2) as f64 / 1e6;
    assert!(
        (std::f64::consts::FRAC_1_SQRT_2..0.76).contains(&mid),
        "{mid}"
    );
    assert_eq!(decay(u64::MAX, 64 * REPUTATION_HALF_LIFE_MS), 0);
    assert_eq!(decay(u64::MAX, u64::MAX), 0);
    // Monotone in time.
    let mut last = u64::MAX;
    for step in 0..50 {
        let v = decay(1_000_000, step * REPUTATION_HALF_LIFE_MS / 7);
        assert!(v <= last);
        last = v;
    }
}

/// Runs one job on `node_id` that ends with `class` (None: success).
fn end_on(s: &mut State, index: &mut u64, node_id: &str, now_ms: u64, class: Option<FailureClass>) {
    let id = format!("j{index}");
    let mut j = job(&id, 1000, 0);
    j.spec.placement = PlacementPolicy::Aggressive;
    submit(s, *index, vec![j]);
    *index += 1;
    let p = Placement {
        attempt: AttemptRef {
            job_id: id,
            task: 0,
            attempt: 1,
        },
        node_id: node_id.into(),
    };
    s.apply(
        *index,
        &Command::Assign {
            now_ms,
            placements: vec![p.clone()],
        },
    );
    *index += 1;
    s.apply(
        *index,
        &Command::ReportAttempts {
            now_ms,
            reports: vec![AttemptReport {
                node_id: p.node_id.clone(),
                attempt: p.attempt.clone(),
                event: AttemptEvent::Finished(Exit {
                    exit_code: Some(1),
                    failure: class,
                    message: format!("{class:?}"),
                    ..Exit::default()
                }),
            }],
        },
    );
    *index += 1;
}

/// An infra failure on `node_id` from the node event `event`.
fn infra_from(s: &mut State, index: &mut u64, node_id: &str, now_ms: u64, event: &str) {
    let id = format!("j{index}");
    let mut j = job(&id, 1000, 0);
    j.spec.placement = PlacementPolicy::Aggressive;
    submit(s, *index, vec![j]);
    *index += 1;
    let attempt = AttemptRef {
        job_id: id,
        task: 0,
        attempt: 1,
    };
    let placements = vec![Placement {
        attempt: attempt.clone(),
        node_id: node_id.into(),
    }];
    s.apply(*index, &Command::Assign { now_ms, placements });
    *index += 1;
    let exit = Exit {
        failure: Some(FailureClass::Infra),
        message: "the agent restarted".into(),
        infra_event: event.into(),
        ..Exit::default()
    };
    let reports = vec![AttemptReport {
        node_id: node_id.into(),
        attempt,
        event: AttemptEvent::Finished(exit),
    }];
    s.apply(*index, &Command::ReportAttempts { now_ms, reports });
    *index += 1;
}

#[test]
fn t24_one_agent_crash_is_one_infra_failure_once_the_rules_are_on() {
    let infra = |s: &State, id: &str| s.node(id).unwrap().reputation.at(5000).0;
    // The first release's rules: every attempt counts (and the node is out).
    let mut s = State::default();
    open(&mut s, 1, node("a", 64_000, 0, 0, &[]));
    open(&mut s, 2, node("b", 64_000, 0, 0, &[]));
    open(&mut s, 3, node("c", 64_000, 0, 0, &[]));
    let mut index = 4;
    for t in 0..6 {
        infra_from(&mut s, &mut index, "a", 1000 + t, "agent-restart:77");
    }
    // (Three count; then the node is out and takes no more attempts.)
    assert!(infra(&s, "a") >= 2_900, "{}", infra(&s, "a"));
    assert!(s.node("a").unwrap().blacklisted_at(2000));

    // Rules 1: six attempts of one crash are one failure, and no blacklist.
    let mut s = State::default();
    open(&mut s, 1, node("a", 64_000, 0, 0, &[]));
    open(&mut s, 2, node("b", 64_000, 0, 0, &[]));
    open(&mut s, 3, node("c", 64_000, 0, 0, &[]));
    s.apply(
        4,
        &Command::EnableRules {
            now_ms: 1,
            rules: 1,
        },
    );
    assert_eq!(s.rules(), 1);
    let mut index = 5;
    for t in 0..6 {
        infra_from(&mut s, &mut index, "a", 1000 + t, "agent-restart:77");
    }
    assert!((990..=1000).contains(&infra(&s, "a")), "{}", infra(&s, "a"));
    assert!(!s.node("a").unwrap().blacklisted_at(2000));
    // Another crash is another failure; a failure without an event counts as before.
    infra_from(&mut s, &mut index, "a", 1100, "agent-restart:99");
    infra_from(&mut s, &mut index, "a", 1200, "");
    assert!(
        (2_900..=3_000).contains(&infra(&s, "a")),
        "{}",
        infra(&s, "a")
    );
    // The rules survive a snapshot.
    let back = State::from_snapshot(&s.to_snapshot().unwrap()).unwrap();
    assert_eq!(back.rules(), 1);
    assert_eq!(back, s);
}

#[test]
fn t10_infra_failures_blacklist_a_node_workload_failures_never_do() {
    let mut s = State::default();
    open(&mut s, 1, node("bad-host", 64_000, 0, 0, &[]));
    open(&mut s, 2, node("bad-jobs", 64_000, 0, 0, &[]));
    let mut index = 3;
    for i in 0..10 {
        end_on(
            &mut s,
            &mut index,
            "bad-jobs",
            1000 + i,
            Some(FailureClass::Workload),
        );
        end_on(
            &mut s,
            &mut index,
            "bad-jobs",
            1000 + i,
            Some(FailureClass::Timeout),
        );
        end_on(
            &mut s,
            &mut index,
            "bad-jobs",
            1000 + i,
            Some(FailureClass::WarmUp),
        );
    }
    assert!(s.node("bad-jobs").unwrap().blacklist.is_none());
    assert_eq!(s.node("bad-jobs").unwrap().reputation.at(2000).0, 0);

    end_on(
        &mut s,
        &mut index,
        "bad-host",
        1000,
        Some(FailureClass::Infra),
    );
    end_on(
        &mut s,
        &mut index,
        "bad-host",
        1001,
        Some(FailureClass::Infra),
    );
    assert!(s.node("bad-host").unwrap().blacklist.is_none(), "2 < 3");
    end_on(
        &mut s,
        &mut index,
        "bad-host",
        1002,
        Some(FailureClass::Infra),
    );
    let host = s.node("bad-host").unwrap().clone();
    let b = host.blacklist.clone().expect("blacklisted after the third");
    assert!(b.reason.contains("infra failures"), "{}", b.reason);
    assert_eq!(b.until_ms, 1002 + BLACKLIST_TTL_MS);
    assert!(!host.accepts_work(1003));
    // No task goes there, even for an aggressive job; apply refuses it too.
    let mut j = job("after", 1000, 0);
    j.spec.placement = PlacementPolicy::Aggressive;
    j.spec.constraints.clear();
    submit(&mut s, index, vec![j]);
    index += 1;
    let p = schedule_with(&s, 1003, 10, PlacementPolicy::Aggressive);
    assert!(p.iter().all(|p| p.node_id != "bad-host"));
    // The blacklist expires by itself...
    assert!(host.accepts_work(1002 + BLACKLIST_TTL_MS));
    // ...or an operator clears it, which also forgets the failures.
    s.apply(
        index,
        &Command::SetBlacklist {
            now_ms: 2000,
            node_id: "bad-host".into(),
            blacklisted: false,
            reason: String::new(),
        },
    );
    index += 1;
    let n = s.node("bad-host").unwrap();
    assert!(n.blacklist.is_none() && n.reputation.at(2000).0 == 0);
    // An operator's blacklist lasts until cleared.
    s.apply(
        index,
        &Command::SetBlacklist {
            now_ms: 3000,
            node_id: "bad-jobs".into(),
            blacklisted: true,
            reason: "bad DIMM".into(),
        },
    );
    let n = s.node("bad-jobs").unwrap();
    assert_eq!(n.blacklist.as_ref().unwrap().reason, "bad DIMM");
    assert!(!n.accepts_work(u64::MAX - 1));
    // Decay: three infra failures a few half-lives ago no longer blacklist.
    let mut s2 = State::default();
    open(&mut s2, 1, node("n", 64_000, 0, 0, &[]));
    let mut index = 2;
    end_on(&mut s2, &mut index, "n", 0, Some(FailureClass::Infra));
    end_on(&mut s2, &mut index, "n", 0, Some(FailureClass::Infra));
    end_on(
        &mut s2,
        &mut index,
        "n",
        3 * REPUTATION_HALF_LIFE_MS,
        Some(FailureClass::Infra),
    );
    assert!(s2.node("n").unwrap().blacklist.is_none());
}

#[test]
fn t10_strict_wants_a_record_and_ranking_favours_success() {
    let mut s = State::default();
    open(&mut s, 1, node("a", 64_000, 0, 0, &[]));
    open(&mut s, 2, node("b", 64_000, 0, 0, &[]));
    let mut strict = job("strict", 1000, 0);
    strict.spec.placement = PlacementPolicy::Strict;
    submit(&mut s, 3, vec![strict]);
    assert!(round(&mut s, 4, 0).is_empty(), "no node has a record yet");
    // A success on "b" proves it; "strict" goes there.
    let mut index = 5;
    end_on(&mut s, &mut index, "b", 1, None);
    let p = schedule(&s, 1, 10);
    let strict_p: Vec<_> = p.iter().filter(|p| p.attempt.job_id == "strict").collect();
    assert_eq!(strict_p.len(), 1);
    assert_eq!(strict_p[0].node_id, "b");
    // Balanced, with equal packing, prefers the node that succeeded before
    // over the lower id.
    submit(&mut s, index, vec![job("plain", 1000, 0)]);
    let p = schedule(&s, 1, 10);
    let plain: Vec<_> = p.iter().filter(|p| p.attempt.job_id == "plain").collect();
    assert_eq!(plain[0].node_id, "b");
}

#[test]
fn t24_strict_avoids_a_node_that_does_not_enforce_limits() {
    let mut s = State::default();
    open(&mut s, 1, node("a", 64_000, 0, 0, &[]));
    open(&mut s, 2, node("b", 64_000, 0, 0, &[]));
    let mut index = 3;
    end_on(&mut s, &mut index, "a", 1, None);
    end_on(&mut s, &mut index, "b", 1, None);
    // "a" says its limits are not enforced: healthy still, but not for strict.
    s.apply(
        index,
        &Command::NodeHealth {
            now_ms: 0,
            node_id: "a".into(),
            session_id: "s-a".into(),
            health: Health {
                score: 100,
                healthy: true,
                failing: vec![FailingCheck {
                    name: crate::scheduler::LIMITS_CHECK.into(),
                    detail: "limits are not enforced on this node: no cgroups".into(),
                }],
                checked_at_ms: 0,
            },
        },
    );
    index += 1;
    let mut strict = job("strict", 1000, 0);
    strict.spec.placement = PlacementPolicy::Strict;
    strict.spec.count = 2;
    submit(&mut s, index, vec![strict, job("plain", 63_500, 0)]);
    let p = schedule(&s, 1, 10);
    let on = |id: &str| -> Vec<&str> {
        p.iter()
            .filter(|p| p.attempt.job_id == id)
            .map(|p| p.node_id.as_str())
            .collect()
    };
    assert_eq!(
        on("strict"),
        vec!["b", "b"],
        "strict only where limits hold"
    );
    assert_eq!(on("plain"), vec!["a"], "balanced still uses the node");
}

#[test]
fn t10_at_most_a_third_of_the_nodes_are_blacklisted_automatically() {
    // A fault that hits every host must not take the whole cluster out.
    let mut s = State::default();
    for (i, id) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
        open(&mut s, i as u64 + 1, node(id, 64_000, 0, 0, &[]));
    }
    let mut index = 10;
    for id in ["a", "b", "c", "d", "e", "f"] {
        for t in 0..3 {
            end_on(&mut s, &mut index, id, 1000 + t, Some(FailureClass::Infra));
        }
    }
    let out: Vec<&str> = s
        .nodes()
        .filter(|n| n.blacklisted_at(2000))
        .map(|n| n.id())
        .collect();
    assert_eq!(out, vec!["a", "b"], "6 nodes: at most 2 out automatically");
    // Their records still count, and an operator may take out more.
    assert!(s.node("f").unwrap().reputation.at(2000).0 >= 2900);
    s.apply(
        index,
        &Command::SetBlacklist {
            now_ms: 2000,
            node_id: "f".into(),
            blacklisted: true,
            reason: "bad PSU".into(),
        },
    );
    assert!(s.node("f").unwrap().blacklisted_at(2001));
    // A single node can be taken out (at least one).
    let mut one = State::default();
    open(&mut one, 1, node("only", 64_000, 0, 0, &[]));
    let mut index = 2;
    for t in 0..3 {
        end_on(&mut one, &mut index, "only", t, Some(FailureClass::Infra));
    }
    assert!(one.node("only").unwrap().blacklisted_at(10));
}
