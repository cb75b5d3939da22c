//! At most one live execution per task, on the nodes too: an agent that is
//! killed, frozen or cut off from the leader has its tasks stopped by their
//! supervisors before the cluster marks the node lost and runs them
//! elsewhere. Each task writes a heartbeat file every 100 ms; the last beat
//! of its first attempt must come before the first beat of its second.

// Tests may unwrap; synchronous helpers poll with std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::path::Path;
use std::time::Duration;

use cluster_tests::{Cluster, Timings, wait_for};
use gantry_client::{Client, ClientOptions, api};

/// Tasks on the victim node: each one a sample of the fence.
const TASKS: u32 = 10;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Freeze,
    /// The agent's replica loses the leader; the agent keeps its stream.
    Cut,
}

/// Beats (ns since the epoch) in `beat.TASK.ATTEMPT`.
fn beats(dir: &Path, task: u32, attempt: u32) -> Vec<u128> {
    std::fs::read_to_string(dir.join(format!("beat.{task}.{attempt}")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn fence_before_reschedule(fault: Fault) {
    let mut cluster = match fault {
        Fault::Cut => {
            let c = Cluster::start_partitionable(3, Timings::default())
                .await
                .unwrap();
            if !c.partitionable() {
                eprintln!("SKIPPED: network namespaces are not available here");
                return;
            }
            c
        }
        _ => Cluster::start(3, Timings::default()).await.unwrap(),
    };
    let leader = cluster.leader().await.unwrap();
    // The victim talks to a follower, so that a cut can take the leader from it.
    let via = cluster.others(leader)[0];
    cluster.start_agent("victim", &[via]).unwrap();
    cluster.wait_nodes_ready(&["victim"]).await.unwrap();
    let client = Client::new(&cluster.live_addrs(), ClientOptions::default()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "while :; do date +%s%N >> {}/beat.$GANTRY_TASK_INDEX.$GANTRY_ATTEMPT; sleep 0.1; done",
        dir.path().display()
    );
    let job = client
        .submit_jobs(vec![api::JobSpec {
            argv: vec![script],
            shell: true,
            count: TASKS,
            max_attempts: 1,
            ..Default::default()
        }])
        .await
        .unwrap()
        .jobs
        .remove(0)
        .job_id;
    wait_for(
        "every task to beat on the victim",
        Duration::from_secs(30),
        || async {
            (0..TASKS)
                .all(|t| !beats(dir.path(), t, 1).is_empty())
                .then_some(())
        },
    )
    .await
    .unwrap();
    // Only now a second node, for the tasks to go to.
    let others = cluster.others(via);
    cluster.start_agent("spare", &others).unwrap();
    cluster.wait_nodes_ready(&["spare"]).await.unwrap();

    match fault {
        Fault::Kill => cluster.kill_agent("victim").await.unwrap(),
        Fault::Freeze => cluster.pause_agent("victim", true).unwrap(),
        Fault::Cut => cluster.split(&[via], &others).unwrap(),
    }
    let moved = wait_for(
        "every task to run again on the spare node",
        Duration::from_secs(60),
        || async {
            (0..TASKS)
                .all(|t| !beats(dir.path(), t, 2).is_empty())
                .then_some(())
        },
    )
    .await;
    // What the victim's tasks wrote, read while the fault still holds.
    let first: Vec<Vec<u128>> = (0..TASKS).map(|t| beats(dir.path(), t, 1)).collect();
    match fault {
        Fault::Freeze => cluster.pause_agent("victim", false).unwrap(),
        Fault::Cut => cluster.heal().unwrap(),
        Fault::Kill => {}
    }
    moved.unwrap();
    let mut gaps = Vec::new();
    for t in 0..TASKS {
        let last = *first[t as usize].last().unwrap();
        let next = *beats(dir.path(), t, 2).first().unwrap();
        assert!(
            last < next,
            "{fault:?}: task {t}'s first attempt beat at {last} ns, after its second began at {next} ns"
        );
        gaps.push((next - last) / 1_000_000);
    }
    println!(
        "{fault:?}: ms from each task's last beat on the victim to its first on the spare: {gaps:?}"
    );
    // The first attempts never beat again.
    let after: Vec<usize> = (0..TASKS).map(|t| beats(dir.path(), t, 1).len()).collect();
    let before: Vec<usize> = first.iter().map(Vec::len).collect();
    assert_eq!(after, before, "{fault:?}: a first attempt beat again");
    let j = client.get_job(&job, false).await.unwrap();
    for task in &j.tasks {
        assert_eq!(task.attempts.len(), 2, "{fault:?}: {task:?}");
    }
    let _ = client.cancel_job(&job, "test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t24_a_killed_agents_tasks_stop_before_they_run_elsewhere() {
    fence_before_reschedule(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t24_a_frozen_agents_tasks_stop_before_they_run_elsewhere() {
    fence_before_reschedule(Fault::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t24_a_cut_off_agents_tasks_stop_before_they_run_elsewhere() {
    fence_before_reschedule(Fault::Cut).await;
}

/// A node crash (the agent and every supervisor killed) that its agent
/// comes back from before the grace ends: the six attempts it took down are
/// reported as infra failures, and the node's reputation counts one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t24_an_agent_crash_is_one_infra_failure_for_its_node() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    cluster.start_agent("a", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a"]).await.unwrap();
    let client = Client::new(&cluster.live_addrs(), ClientOptions::default()).unwrap();
    let job = client
        .submit_jobs(vec![api::JobSpec {
            argv: vec!["sleep".into(), "300".into()],
            count: 6,
            max_attempts: 1,
            ..Default::default()
        }])
        .await
        .unwrap()
        .jobs
        .remove(0)
        .job_id;
    wait_for("six running attempts", Duration::from_secs(30), || async {
        let j = client.get_job(&job, false).await.ok()?;
        (j.tasks
            .iter()
            .all(|t| t.attempts.last().is_some_and(|a| a.state == "running")))
        .then_some(())
    })
    .await
    .unwrap();
    cluster.kill_agent("a").await.unwrap();
    assert_eq!(cluster.kill_supervisors("a").unwrap(), 6);
    cluster.restart_agent("a").unwrap();
    // The six come back as infra failures and run again (on the same node).
    wait_for(
        "every task on its second attempt",
        Duration::from_secs(60),
        || async {
            let j = client.get_job(&job, false).await.ok()?;
            j.tasks.iter().all(|t| t.attempts.len() == 2).then_some(())
        },
    )
    .await
    .unwrap();
    let node = client
        .list_nodes(false)
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.id == "a")
        .unwrap();
    assert!(
        (0.9..=1.0).contains(&node.infra_failures),
        "one crash, {} infra failures counted",
        node.infra_failures
    );
    assert!(!node.blacklisted, "{}", node.blacklist_reason);
    let j = client.get_job(&job, false).await.unwrap();
    let first = &j.tasks[0].attempts[0];
    assert!(
        first.message.contains("agent restarted"),
        "{}",
        first.message
    );
    let _ = client.cancel_job(&job, "test over").await;
}
