//! Replicas and agents of the real binary: a mixed workload ends in the
//! right states with the right exit codes and output; an agent crash moves
//! its task to another node and its stale report is fenced off; a replica
//! failover is not a node failure.

// Tests may unwrap; synchronous helpers poll with std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::time::Duration;

use cluster_tests::{Cluster, Timings, wait_for};
use gantry_client::{Client, ClientOptions, api};

fn argv(args: &[&str]) -> api::JobSpec {
    api::JobSpec {
        argv: args.iter().map(|s| s.to_string()).collect(),
        max_attempts: 1,
        ..Default::default()
    }
}

fn shell(script: &str) -> api::JobSpec {
    api::JobSpec {
        argv: vec![script.to_owned()],
        shell: true,
        max_attempts: 1,
        ..Default::default()
    }
}

fn state(j: &api::Job) -> api::JobState {
    api::JobState::try_from(j.state).unwrap()
}

/// Processes whose command line contains `needle` (zombies excluded).
fn processes_matching(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'));
        if cmdline.contains(needle) && !zombie {
            found.push(cmdline);
        }
    }
    found
}

async fn wait_state(client: &Client, id: &str, want: api::JobState) -> api::Job {
    wait_for(
        &format!("job {id} to be {want:?}"),
        Duration::from_secs(60),
        || async {
            let j = client.get_job(id, false).await.ok()?;
            (state(&j) == want).then_some(j)
        },
    )
    .await
    .unwrap()
}

async fn submit(client: &Client, specs: Vec<api::JobSpec>) -> Vec<String> {
    client
        .submit_jobs(specs)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.job_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_mixed_workload_ends_in_the_right_states() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    cluster.start_agent("a1", &[1, 2, 3]).unwrap();
    cluster.start_agent("a2", &[2, 3, 1]).unwrap();
    cluster.wait_nodes_ready(&["a1", "a2"]).await.unwrap();
    let client = Client::new(&cluster.live_addrs(), ClientOptions::default()).unwrap();

    let ok = submit(
        &client,
        (0..80)
            .map(|i| argv(&["/bin/echo", &format!("ok-{i}")]))
            .collect(),
    )
    .await;
    let failing = submit(
        &client,
        (0..60).map(|_| shell("echo oops >&2; exit 3")).collect(),
    )
    .await;
    let timeouts = submit(
        &client,
        (0..20)
            .map(|_| api::JobSpec {
                timeout_ms: 500,
                ..argv(&["/bin/sleep", "301"])
            })
            .collect(),
    )
    .await;
    let mut to_cancel = submit(
        &client,
        (0..30).map(|_| argv(&["/bin/sleep", "302"])).collect(),
    )
    .await;
    // Tasks that start children of their own: cancel must take the whole group.
    to_cancel.extend(
        submit(
            &client,
            (0..10)
                .map(|_| shell("sleep 303 & sleep 303; wait"))
                .collect(),
        )
        .await,
    );

    for id in &to_cancel {
        wait_state(&client, id, api::JobState::Running).await;
        client.cancel_job(id, "test").await.unwrap();
    }
    for id in &ok {
        let j = wait_state(&client, id, api::JobState::Complete).await;
        let a = &j.tasks[0].attempts[0];
        assert_eq!(a.exit_code, Some(0));
        assert!(a.stdout_tail.starts_with("ok-"), "{a:?}");
    }
    for id in &failing {
        let j = wait_state(&client, id, api::JobState::Failed).await;
        let a = &j.tasks[0].attempts[0];
        assert_eq!(
            (a.exit_code, a.failure_class.as_str()),
            (Some(3), "workload")
        );
        assert_eq!(a.stderr_tail, "oops\n");
        assert_eq!(j.tasks[0].attempts.len(), 1);
    }
    for id in &timeouts {
        let j = wait_state(&client, id, api::JobState::Failed).await;
        assert_eq!(j.tasks[0].attempts[0].failure_class, "timeout");
    }
    for id in &to_cancel {
        let j = wait_state(&client, id, api::JobState::Cancelled).await;
        let a = j.tasks[0].attempts.last().unwrap();
        // Cancelled tasks end with their attempt killed and reported.
        wait_for(
            "the cancelled attempt to be reported",
            Duration::from_secs(30),
            || async {
                let j = client.get_job(id, false).await.ok()?;
                (j.tasks[0].attempts.last()?.state == "cancelled").then_some(())
            },
        )
        .await
        .unwrap();
        assert!(a.node_id.starts_with('a'));
    }
    for needle in ["sleep 301", "sleep 302", "sleep 303"] {
        let left = processes_matching(needle);
        assert!(left.is_empty(), "left running: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_agent_crash_moves_the_task_and_its_stale_report_is_fenced() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    cluster.start_agent("a", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a"]).await.unwrap();
    let client = Client::new(&cluster.live_addrs(), ClientOptions::default()).unwrap();
    let mut spec = shell("sleep 4; echo done");
    spec.max_attempts = 3;
    let id = submit(&client, vec![spec]).await.remove(0);
    // Started on a (the job reads running once it is assigned).
    wait_for(
        "the attempt to start on a",
        Duration::from_secs(30),
        || async {
            let j = client.get_job(&id, false).await.ok()?;
            (j.tasks[0].attempts.first()?.state == "running").then_some(())
        },
    )
    .await
    .unwrap();

    cluster.start_agent("b", &[2, 3, 1]).unwrap();
    cluster.wait_nodes_ready(&["b"]).await.unwrap();
    cluster.kill_agent("a").await.unwrap();

    // After the grace period node a is lost and the task runs again on b.
    let job = wait_state(&client, &id, api::JobState::Complete).await;
    let attempts = &job.tasks[0].attempts;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(
        (attempts[0].node_id.as_str(), attempts[0].state.as_str()),
        ("a", "lost")
    );
    assert_eq!(attempts[0].failure_class, "infra");
    assert_eq!(
        (attempts[1].node_id.as_str(), attempts[1].state.as_str()),
        ("b", "succeeded")
    );
    assert_eq!(
        job.tasks[0].workload_failures, 0,
        "a host failure must not consume attempts"
    );

    // The crashed agent comes back and reports its old attempt: refused.
    let before = client.cluster_status().await.unwrap().stale_reports;
    cluster.restart_agent("a").unwrap();
    let fenced = wait_for(
        "the stale report to be fenced off",
        Duration::from_secs(30),
        || async {
            let s = client.cluster_status().await.ok()?;
            (s.stale_reports > before).then_some(())
        },
    )
    .await;
    if fenced.is_err() {
        eprintln!("{}", cluster.agent_log("a"));
    }
    fenced.unwrap();
    let after = client.get_job(&id, false).await.unwrap();
    assert_eq!(state(&after), api::JobState::Complete);
    assert_eq!(after.tasks[0].attempts.len(), 2);
}

/// A task cancelled before its assignment reached its node ends all the
/// same: the replica holding the node's stream was paused while the task
/// was assigned and cancelled, so on resuming its dispatcher sends only the
/// cancel, and the agent reports the attempt never started. It used to stay
/// live for ever, holding the node's resources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_a_task_cancelled_before_its_node_heard_of_it_ends() {
    let timings = Timings {
        // Long enough that the node is not marked lost meanwhile.
        node_grace_ms: 60_000,
        ..Timings::default()
    };
    let mut cluster = Cluster::start(3, timings).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    let holder = cluster.others(leader)[0];
    cluster.start_agent("a", &[holder]).unwrap();
    cluster.wait_nodes_ready(&["a"]).await.unwrap();
    let client = cluster.client(&[leader]).unwrap();
    cluster.pause(holder, true).unwrap();
    let id = submit(&client, vec![shell("sleep 60")]).await.remove(0);
    wait_for(
        "the task to be assigned to a",
        Duration::from_secs(30),
        || async {
            let j = client.get_job(&id, false).await.ok()?;
            (j.tasks[0].attempts.first()?.state == "assigned").then_some(())
        },
    )
    .await
    .unwrap();
    client.cancel_job(&id, "test").await.unwrap();
    cluster.pause(holder, false).unwrap();
    let ended = wait_for(
        "the cancelled attempt to end",
        Duration::from_secs(30),
        || async {
            let j = client.get_job(&id, false).await.ok()?;
            let a = j.tasks[0].attempts.first()?;
            (a.state != "assigned" && a.state != "running").then(|| a.clone())
        },
    )
    .await;
    if ended.is_err() {
        eprintln!("{}", cluster.agent_log("a"));
    }
    let attempt = ended.unwrap();
    assert_eq!(attempt.state, "cancelled", "{attempt:?}");
    assert!(attempt.message.contains("before it started"), "{attempt:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_replica_failover_is_not_a_node_failure() {
    // Under mTLS: agents prove their node id with their certificate.
    let mut cluster = Cluster::start_secure(3, Timings::default()).await.unwrap();
    cluster.start_agent("a", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a"]).await.unwrap();
    let client = Client::new(&cluster.live_addrs(), cluster.client_options().unwrap()).unwrap();
    let id = submit(&client, vec![shell("sleep 3; echo survived")])
        .await
        .remove(0);
    wait_state(&client, &id, api::JobState::Running).await;

    let nodes = client.list_nodes(false).await.unwrap();
    let holder = nodes.iter().find(|n| n.id == "a").unwrap().session_replica;
    cluster.kill(holder).await.unwrap();
    let client = Client::new(&cluster.live_addrs(), cluster.client_options().unwrap()).unwrap();

    let job = wait_state(&client, &id, api::JobState::Complete).await;
    let attempts = &job.tasks[0].attempts;
    assert_eq!(attempts.len(), 1, "the task was rescheduled: {attempts:?}");
    assert_eq!(attempts[0].stdout_tail, "survived\n");
    let node = client
        .list_nodes(false)
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.id == "a")
        .unwrap();
    assert_eq!(node.status, "ready");
    assert_ne!(
        node.session_replica, holder,
        "the agent moved to another replica"
    );
}

/// A frozen agent's stream stays open, but its heartbeats stop: the replica
/// holding it ends the session (no new work goes to the node), and the node
/// is registered again only when the agent speaks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_a_frozen_agents_session_ends_until_it_speaks_again() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    cluster.start_agent("a", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a"]).await.unwrap();
    let client = Client::new(&cluster.live_addrs(), ClientOptions::default()).unwrap();
    let session_of_a = || async {
        let nodes = client.list_nodes(false).await.ok()?;
        Some(nodes.into_iter().find(|n| n.id == "a")?.session_replica)
    };
    let holder = session_of_a().await.unwrap();
    assert_ne!(holder, 0);

    cluster.pause_agent("a", true).unwrap();
    let ended = wait_for(
        "the frozen agent's session to end",
        Duration::from_secs(15),
        || async { (session_of_a().await? == 0).then_some(()) },
    )
    .await;
    let log = cluster.log_text(holder);
    cluster.pause_agent("a", false).unwrap();
    ended.unwrap();
    assert!(
        log.contains("ending its session"),
        "replica {holder} says why it ended the session"
    );

    // Thawed, it reconnects and its node is registered again.
    wait_for(
        "the thawed agent's node to be registered again",
        Duration::from_secs(15),
        || async { (session_of_a().await? != 0).then_some(()) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_live_output_is_relayed_from_any_replica() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    cluster.start_agent("a", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a"]).await.unwrap();
    let all = Client::new(&cluster.live_addrs(), ClientOptions::default()).unwrap();
    let holder = all.list_nodes(false).await.unwrap()[0].session_replica;
    // Ask a replica that does not hold the agent's stream.
    let other = cluster.others(holder)[0];
    let client = cluster.client(&[other]).unwrap();
    let id = submit(
        &client,
        vec![shell(
            "for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done",
        )],
    )
    .await
    .remove(0);
    wait_state(&client, &id, api::JobState::Running).await;
    let mut logs = client.logs(&id, 0, true).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = logs.message().await.unwrap() {
        assert!(!chunk.tail, "expected live output, got the stored tail");
        out.extend(chunk.data);
    }
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n"
    );
    // After the end, the stored tail is served.
    let job = wait_state(&client, &id, api::JobState::Complete).await;
    let mut logs = client.logs(&id, 0, false).await.unwrap();
    let chunk = logs.message().await.unwrap().unwrap();
    assert!(chunk.tail);
    assert_eq!(chunk.data, job.tasks[0].attempts[0].stdout_tail.as_bytes());
    // Watch from index 0 replays the job's latest state, resumable by index.
    let mut watch = client.watch(&id, 0).await.unwrap();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.job.unwrap().state, api::JobState::Complete as i32);
    assert!(first.index > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_agent_shutdown_kills_its_tasks_process_groups() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    cluster.start_agent("a", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a"]).await.unwrap();
    let client = Client::new(&cluster.live_addrs(), ClientOptions::default()).unwrap();
    let id = submit(&client, vec![shell("sleep 304 & sleep 304; wait")])
        .await
        .remove(0);
    wait_state(&client, &id, api::JobState::Running).await;
    wait_for(
        "the task's processes to start",
        Duration::from_secs(30),
        || async { (processes_matching("sleep 304").len() >= 2).then_some(()) },
    )
    .await
    .unwrap();
    let status = cluster.stop_agent("a").await.unwrap();
    assert!(status.success(), "agent exit: {status}");
    let left = processes_matching("sleep 304");
    assert!(
        left.is_empty(),
        "left running after agent shutdown: {left:?}"
    );
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_an_output_flood_is_truncated_and_memory_stays_bounded() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    cluster.start_agent("a", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a"]).await.unwrap();
    let client = Client::new(&cluster.live_addrs(), ClientOptions::default()).unwrap();
    let pids: Vec<u32> = [1, 2, 3].iter().filter_map(|id| cluster.pid(*id)).collect();
    let before: u64 = pids.iter().map(|p| rss_kib(*p)).sum();
    // 200 MB of output as fast as the task can write it.
    let id = submit(&client, vec![shell("yes | head -c 200000000")])
        .await
        .remove(0);
    let job = wait_state(&client, &id, api::JobState::Complete).await;
    let a = &job.tasks[0].attempts[0];
    assert_eq!(
        a.stdout_tail.len(),
        16 * 1024,
        "the log keeps only the documented tail"
    );
    assert!(a.stdout_tail.starts_with("y\n") || a.stdout_tail.starts_with("\ny"));
    let after: u64 = pids.iter().map(|p| rss_kib(*p)).sum();
    eprintln!("replicas' RSS: {before} KiB before, {after} KiB after 200 MB of task output");
    // Bounded buffers: 1 MiB per attempt on the relaying replica, 16 KiB in
    // the log. 64 MiB of headroom covers allocator noise, not 200 MB.
    assert!(
        after < before + 64 * 1024,
        "replica memory grew from {before} KiB to {after} KiB"
    );
}
