//! Operations as the guide describes them, with the real binary: a snapshot
//! saved, every replica wiped, the snapshot restored, every job back; the
//! guide's "replace a dead replica" block run as written; a leader that is
//! stopped hands its leadership over first.

// Tests may unwrap; synchronous helpers poll with std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use cluster_tests::{Cluster, Timings, free_addrs, gantry_bin, repo_root, run_cli_text, wait_for};
use gantry_client::{Client, api};

const WAIT: Duration = Duration::from_secs(60);

/// Runs the `gantry` CLI against `servers`; returns (success, stdout + stderr).
fn cli(servers: &[String], args: &[&str]) -> (bool, String) {
    run_cli_text(servers, args).unwrap()
}

fn shell(script: &str, labels: &[(&str, &str)]) -> api::JobSpec {
    api::JobSpec {
        argv: vec![script.to_owned()],
        shell: true,
        max_attempts: 1,
        constraints: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

/// Waits until each job is finished, or pending with no node that fits.
async fn settled(client: &Client, ids: &[String]) -> BTreeMap<String, api::Job> {
    let mut jobs = BTreeMap::new();
    for id in ids {
        let j = wait_for(&format!("job {id} to settle"), WAIT, || async {
            let j = client.get_job(id, false).await.ok()?;
            let s = api::JobState::try_from(j.state).ok()?;
            let unplaceable = s == api::JobState::Pending
                && j.spec.as_ref().is_some_and(|s| !s.constraints.is_empty());
            (matches!(
                s,
                api::JobState::Complete | api::JobState::Failed | api::JobState::Cancelled
            ) || unplaceable)
                .then_some(j)
        })
        .await
        .unwrap();
        jobs.insert(id.clone(), j);
    }
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t87_snapshot_save_wipe_every_replica_restore_every_job_back() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    cluster.start_agent("a1", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a1"]).await.unwrap();
    let client = cluster.client(&[1, 2, 3]).unwrap();
    let mut specs: Vec<api::JobSpec> = (0..5).map(|_| shell("echo done", &[])).collect();
    specs.push(shell("exit 3", &[]));
    // Nobody carries this label: these stay pending across the restore.
    specs.extend((0..3).map(|_| shell("true", &[("rack", "nowhere")])));
    let ids: Vec<String> = client
        .submit_jobs(specs)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    let before = settled(&client, &ids).await;

    let servers = cluster.live_addrs();
    let file = cluster.dir().join("backup.json");
    let file_s = file.to_str().unwrap();
    let (ok, out) = cli(&servers, &["cluster", "snapshot", "save", file_s]);
    assert!(ok && out.contains("saved"), "{out}");

    // Every replica's data is lost.
    cluster.kill_agent("a1").await.unwrap();
    for id in [1, 2, 3] {
        cluster.kill(id).await.unwrap();
        cluster.wipe(id).unwrap();
    }
    for id in [1, 2, 3] {
        cluster.restart(id).unwrap();
    }
    cluster.leader().await.unwrap();
    let client = cluster.client(&[1, 2, 3]).unwrap();
    for id in &ids {
        assert!(
            client.get_job(id, false).await.is_err(),
            "the wipe left {id}"
        );
    }

    let (ok, out) = cli(&servers, &["cluster", "snapshot", "restore", file_s]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("restored {} jobs", ids.len())),
        "{out}"
    );
    for (id, was) in &before {
        let now = client.get_job(id, false).await.unwrap();
        assert_eq!(now.state, was.state, "job {id}");
        assert_eq!(now.spec, was.spec, "job {id}");
        assert_eq!(now.tasks.len(), was.tasks.len());
        assert_eq!(
            now.tasks[0].attempts.len(),
            was.tasks[0].attempts.len(),
            "job {id}'s attempts"
        );
    }
    // A second restore would replace what is there now: refused unless forced.
    let (ok, out) = cli(&servers, &["cluster", "snapshot", "restore", file_s]);
    assert!(!ok && out.contains("--force"), "{out}");
    let (ok, out) = cli(
        &servers,
        &["cluster", "snapshot", "restore", file_s, "--force"],
    );
    assert!(ok, "{out}");
    // Garbage is refused before anything is proposed.
    std::fs::write(
        cluster.dir().join("junk.json"),
        b"{\"not\": \"a snapshot\"}",
    )
    .unwrap();
    let junk = cluster.dir().join("junk.json");
    let (ok, out) = cli(
        &servers,
        &[
            "cluster",
            "snapshot",
            "restore",
            junk.to_str().unwrap(),
            "--force",
        ],
    );
    assert!(!ok && out.contains("not a Gantry snapshot"), "{out}");

    // The restored cluster keeps working: new work runs once an agent is back.
    cluster.restart_agent("a1").unwrap();
    cluster.wait_nodes_ready(&["a1"]).await.unwrap();
    let id = client
        .submit_jobs(vec![shell("true", &[])])
        .await
        .unwrap()
        .jobs[0]
        .job_id
        .clone();
    let after = settled(&client, &[id]).await;
    assert!(
        after
            .values()
            .all(|j| j.state == api::JobState::Complete as i32)
    );
}

/// The guide's block marked `<!-- procedure: NAME -->`.
fn guide_block(name: &str) -> String {
    let guide = repo_root().join("docs/operations.md");
    let text = std::fs::read_to_string(guide).unwrap();
    let marker = format!("<!-- procedure: {name} -->");
    let after = &text[text.find(&marker).expect("the marked block") + marker.len()..];
    let body = after
        .trim_start()
        .strip_prefix("```sh\n")
        .expect("a sh block");
    body[..body.find("```").unwrap()].to_owned()
}

/// Kills processes whose command line contains `needle`.
fn kill_matching(needle: &str) {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle)
            && let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t87_the_guides_replace_a_dead_replica_procedure_runs_as_written() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    let client = cluster.client(&[1, 2, 3]).unwrap();
    let first = client
        .submit_jobs(vec![shell("true", &[])])
        .await
        .unwrap()
        .jobs[0]
        .job_id
        .clone();
    // Replica 3's host dies.
    cluster.kill(3).await.unwrap();
    let survivors: Vec<String> = [1, 2]
        .iter()
        .map(|id| cluster.replicas[id].addr.clone())
        .collect();
    let new_addr = free_addrs(1).unwrap().remove(0);
    let data_dir = cluster.dir().join("replica-4-new");
    let peers = format!(
        "1={},2={},4={new_addr}",
        cluster.replicas[&1].addr, cluster.replicas[&2].addr
    );
    let bin_dir = gantry_bin().unwrap().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = std::fs::File::create(cluster.dir().join("procedure.log")).unwrap();
    let status = Command::new("bash")
        .args([
            "-euo",
            "pipefail",
            "-c",
            &guide_block("replace-dead-replica"),
        ])
        .env("PATH", path)
        .env("GANTRY_SERVERS", survivors.join(","))
        .env("GANTRY_INSECURE", "true")
        .env("DEAD_ID", "3")
        .env("NEW_ID", "4")
        .env("NEW_ADDR", &new_addr)
        .env("PEERS", &peers)
        .env("DATA_DIR", &data_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(cluster.dir().join("procedure.log")).unwrap();
    let needle = data_dir.to_str().unwrap().to_owned();
    let result = std::panic::AssertUnwindSafe(async {
        assert!(status.success(), "the procedure failed:\n{text}");
        let client = Client::new(&survivors, gantry_client::ClientOptions::default()).unwrap();
        let status = wait_for("replica 4 to be a voter", WAIT, || async {
            let s = client.cluster_status().await.ok()?;
            let ids: Vec<(u64, bool)> = s.replicas.iter().map(|r| (r.id, r.voter)).collect();
            (ids == vec![(1, true), (2, true), (4, true)]).then_some(s)
        })
        .await
        .unwrap();
        assert!(
            status.replicas.iter().all(|r| r.error.is_empty()),
            "{status:?}"
        );
        // The new replica holds what was committed before it existed, and
        // the cluster takes writes.
        let only_new = Client::new(
            std::slice::from_ref(&new_addr),
            gantry_client::ClientOptions::default(),
        )
        .unwrap();
        wait_for("the first job on replica 4", WAIT, || async {
            only_new.get_job(&first, true).await.ok()
        })
        .await
        .unwrap();
        client.submit_jobs(vec![shell("true", &[])]).await.unwrap();
    });
    let outcome = futures::FutureExt::catch_unwind(result).await;
    kill_matching(&needle);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t87_a_stopped_leader_hands_leadership_over_first() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    // SIGTERM: a graceful stop.
    let status = cluster.stop(leader).await.unwrap();
    assert!(status.success(), "{status:?}");
    let log = cluster.log_text(leader);
    assert!(
        log.contains("leadership handed over"),
        "the leader did not hand over:\n{log}"
    );
    let others = cluster.others(leader);
    let client = cluster.client(&others).unwrap();
    client.submit_jobs(vec![shell("true", &[])]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t87_a_stopping_agent_finishes_what_it_can_and_hands_back_the_rest() {
    let mut cluster = Cluster::start(1, Timings::default()).await.unwrap();
    cluster
        .start_agent_with("a1", &[1], &["--shutdown-grace", "3s"])
        .unwrap();
    cluster.wait_nodes_ready(&["a1"]).await.unwrap();
    let client = cluster.client(&[1]).unwrap();
    let ids: Vec<String> = client
        .submit_jobs(vec![
            shell("sleep 1; echo finished", &[]),
            shell("exec sleep 300", &[]),
        ])
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    for id in &ids {
        wait_for(&format!("job {id} running"), WAIT, || async {
            let j = client.get_job(id, false).await.ok()?;
            (j.tasks[0].attempts.first()?.state == "running").then_some(())
        })
        .await
        .unwrap();
    }
    // SIGTERM: the short task finishes, the long one is handed back.
    let status = cluster.stop_agent("a1").await.unwrap();
    assert!(status.success(), "{status:?}");
    let short = client.get_job(&ids[0], false).await.unwrap();
    assert_eq!(short.state, api::JobState::Complete as i32);
    assert!(short.tasks[0].attempts[0].stdout_tail.contains("finished"));
    let long = client.get_job(&ids[1], false).await.unwrap();
    let task = &long.tasks[0];
    assert_eq!(task.state, api::TaskState::Pending as i32, "{long:?}");
    assert_eq!(task.workload_failures, 0, "a hand-back is not a failure");
    assert_eq!(task.infra_failures, 0);
    let node = client.list_nodes(false).await.unwrap().remove(0);
    assert_eq!(node.eligibility, "draining");
    assert_eq!(
        node.infra_failures, 0.0,
        "a graceful exit does not count against the host"
    );

    // Another node takes the handed-back task; a1 back takes work again.
    cluster.start_agent("a2", &[1]).unwrap();
    wait_for("the task on a2", WAIT, || async {
        let j = client.get_job(&ids[1], false).await.ok()?;
        let a = j.tasks[0].attempts.last()?;
        (a.node_id == "a2" && a.state == "running").then_some(())
    })
    .await
    .unwrap();
    cluster.restart_agent("a1").unwrap();
    wait_for("a1 eligible again", WAIT, || async {
        let nodes = client.list_nodes(false).await.ok()?;
        let a1 = nodes.into_iter().find(|n| n.id == "a1")?;
        (a1.status == "ready" && a1.eligibility == "eligible").then_some(())
    })
    .await
    .unwrap();
}
