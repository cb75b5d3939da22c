//! Seeded fault schedules: the same seed always gives the same schedule, so
//! a failing run is replayed with `GANTRY_SEED=<seed>`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    KillReplica(u64),
    RestartReplica(u64),
    PauseReplica(u64),
    ResumeReplica(u64),
    KillAgent(String),
    RestartAgent(String),
    /// SIGSTOP / SIGCONT an agent (its stream stays open, it says nothing).
    PauseAgent(String),
    ResumeAgent(String),
    /// Let the workload run.
    Wait(u64),
    /// SIGKILL whichever replica leads at that moment.
    KillLeader,
    /// Restart every replica that is down.
    RestartDown,
    /// Partitions (replicas in network namespaces only): cut the leader
    /// off from every other replica, both ways.
    IsolateLeader,
    /// Cut a minority (one of three, two of five) off from the rest.
    SplitMinority,
    /// The leader's packets to the other replicas are dropped (one way).
    LeaderCannotSend,
    /// Packets to the leader from the other replicas are dropped (one way).
    LeaderCannotReceive,
    /// Remove every cut.
    Heal,
    /// A replica loses its data: removed from the membership, SIGKILLed,
    /// wiped, started again with `--join` and added back (caught up by
    /// snapshot as a learner, then a voter).
    WipeAndRejoin(u64),
    /// Membership change under load: remove a follower from the cluster,
    /// wipe it, start it with `--join` and add it back (learner, then voter).
    ReplaceFollower,
}

impl Fault {
    pub fn is_partition(&self) -> bool {
        matches!(
            self,
            Fault::IsolateLeader
                | Fault::SplitMinority
                | Fault::LeaderCannotSend
                | Fault::LeaderCannotReceive
                | Fault::Heal
        )
    }
}

/// The named scenarios, each a fixed schedule.
pub fn named(name: &str) -> Option<Vec<Fault>> {
    use Fault::*;
    let s = match name {
        "leader-kill-loop" => (0..3)
            .flat_map(|_| [KillLeader, Wait(1_500), RestartDown, Wait(1_500)])
            .collect(),
        "rolling-restart" => (1..=3)
            .flat_map(|id| [KillReplica(id), Wait(500), RestartReplica(id), Wait(1_500)])
            .collect(),
        "agent-flapping" => (0..5)
            .flat_map(|_| {
                [
                    KillAgent("a1".into()),
                    Wait(300),
                    RestartAgent("a1".into()),
                    Wait(500),
                ]
            })
            .collect(),
        // Frozen past the node grace: its tasks must stop before they run elsewhere.
        "agent-freeze" => (0..2)
            .flat_map(|_| {
                [
                    PauseAgent("a1".into()),
                    Wait(7_000),
                    ResumeAgent("a1".into()),
                    Wait(1_500),
                ]
            })
            .collect(),
        "membership-change" => (0..2)
            .flat_map(|_| [ReplaceFollower, Wait(1_500)])
            .collect(),
        "leader-isolated" => (0..2)
            .flat_map(|_| [IsolateLeader, Wait(3_000), Heal, Wait(1_500)])
            .collect(),
        "minority-split" => (0..2)
            .flat_map(|_| [SplitMinority, Wait(3_000), Heal, Wait(1_500)])
            .collect(),
        "one-way" => vec![
            LeaderCannotSend,
            Wait(3_000),
            Heal,
            Wait(1_500),
            LeaderCannotReceive,
            Wait(3_000),
            Heal,
            Wait(1_500),
        ],
        _ => return None,
    };
    Some(s)
}

/// Scenarios that need replicas in network namespaces.
pub const PARTITION_SCENARIOS: &[&str] = &["leader-isolated", "minority-split", "one-way"];

pub const SCENARIOS: &[&str] = &[
    "leader-kill-loop",
    "rolling-restart",
    "agent-flapping",
    "agent-freeze",
    "membership-change",
];

/// A schedule for `replicas` replicas and `agents` agents, `steps` long. At
/// most a minority of replicas is down or paused at any time (one of three),
/// and one agent at a time is down.
pub fn schedule(seed: u64, replicas: u64, agents: &[&str], steps: usize) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let minority = (replicas - 1) / 2;
    let mut down: Vec<u64> = Vec::new();
    let mut paused: Vec<u64> = Vec::new();
    // The agent that is down, and whether it is frozen rather than killed.
    let mut agent_down: Option<(String, bool)> = None;
    let mut out = Vec::new();
    for _ in 0..steps {
        out.push(Fault::Wait(rng.random_range(200..700)));
        let faulty = (down.len() + paused.len()) as u64;
        match rng.random_range(0..6) {
            0 | 1 if faulty < minority => {
                let id = loop {
                    let id = rng.random_range(1..=replicas);
                    if !down.contains(&id) && !paused.contains(&id) {
                        break id;
                    }
                };
                let p: f64 = rng.random();
                if p < 0.15 {
                    // Killed, wiped and back within the step: never more
                    // than a minority without its data at once.
                    out.push(Fault::WipeAndRejoin(id));
                } else if p < 0.6 {
                    down.push(id);
                    out.push(Fault::KillReplica(id));
                } else {
                    paused.push(id);
                    out.push(Fault::PauseReplica(id));
                }
            }
            2 | 3 if !down.is_empty() => out.push(Fault::RestartReplica(down.remove(0))),
            2 | 3 if !paused.is_empty() => out.push(Fault::ResumeReplica(paused.remove(0))),
            4 if agent_down.is_none() && !agents.is_empty() => {
                let a = agents[rng.random_range(0..agents.len())].to_owned();
                let frozen = rng.random_bool(0.4);
                out.push(if frozen {
                    Fault::PauseAgent(a.clone())
                } else {
                    Fault::KillAgent(a.clone())
                });
                agent_down = Some((a, frozen));
            }
            5 => match agent_down.take() {
                Some((a, true)) => out.push(Fault::ResumeAgent(a)),
                Some((a, false)) => out.push(Fault::RestartAgent(a)),
                None => {}
            },
            _ => {}
        }
    }
    // Heal everything at the end.
    out.extend(down.into_iter().map(Fault::RestartReplica));
    out.extend(paused.into_iter().map(Fault::ResumeReplica));
    out.extend(agent_down.map(|(a, frozen)| {
        if frozen {
            Fault::ResumeAgent(a)
        } else {
            Fault::RestartAgent(a)
        }
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_same_seed_same_schedule_and_never_a_majority_down() {
        for seed in 0..200 {
            let s = schedule(seed, 3, &["a", "b"], 30);
            assert_eq!(s, schedule(seed, 3, &["a", "b"], 30));
            let mut faulty = 0i32;
            for f in &s {
                match f {
                    Fault::KillReplica(_) | Fault::PauseReplica(_) => faulty += 1,
                    Fault::RestartReplica(_) | Fault::ResumeReplica(_) => faulty -= 1,
                    _ => {}
                }
                assert!((0..=1).contains(&faulty), "seed {seed}: {s:?}");
            }
            assert_eq!(faulty, 0, "seed {seed} does not heal: {s:?}");
        }
    }
}
