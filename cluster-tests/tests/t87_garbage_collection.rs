//! Job garbage collection against real replicas: a finished job goes once
//! its retention passes (its own or the cluster's), never one that still
//! runs or waits; `gantry system gc --older-than` forces a run; reads of a
//! collected job say what happened; the replicas agree and keep the count
//! through a restart.

// Tests may unwrap; synchronous helpers poll with std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::time::Duration;

use cluster_tests::{Cluster, Timings, http_get, run_cli_text, sample, wait_for};
use gantry_client::{Client, api};

const WAIT: Duration = Duration::from_secs(60);

/// Runs the `gantry` CLI against `servers`; returns (success, stdout + stderr).
fn cli(servers: &[String], args: &[&str]) -> (bool, String) {
    run_cli_text(servers, args).unwrap()
}

fn job(argv: &[&str], retention_ms: Option<u64>) -> api::JobSpec {
    api::JobSpec {
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        max_attempts: 1,
        retention_ms,
        ..Default::default()
    }
}

async fn state(client: &Client, id: &str) -> Option<api::JobState> {
    let j = client.get_job(id, false).await.ok()?;
    api::JobState::try_from(j.state).ok()
}

async fn collected_on(cluster: &Cluster, id: u64) -> Option<f64> {
    let (_, text) = http_get(&cluster.replicas[&id].metrics_addr, "/metrics")
        .await
        .ok()?;
    sample(&text, "gantry_jobs_collected_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t87_finished_jobs_are_collected_after_their_retention_and_on_demand() {
    let env = vec![("GANTRY_GC_INTERVAL_MS".to_owned(), "200".to_owned())];
    let mut cluster = Cluster::start_with_env(3, Timings::default(), env)
        .await
        .unwrap();
    cluster.start_agent("a1", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a1"]).await.unwrap();
    let client = cluster.client(&[1, 2, 3]).unwrap();

    let mut nowhere = job(&["/bin/true"], Some(1));
    nowhere.constraints.insert("zone".into(), "nowhere".into());
    let submitted = client
        .submit_jobs(vec![
            // Kept one second once finished.
            job(&["/bin/true"], Some(1_000)),
            // The cluster's retention (24h).
            job(&["/bin/true"], None),
            // Still running when the collections run.
            job(&["/bin/sleep", "30"], Some(1)),
            // Never placed: pending for ever, whatever its retention.
            nowhere,
        ])
        .await
        .unwrap();
    let ids: Vec<String> = submitted.jobs.iter().map(|j| j.job_id.clone()).collect();
    let (short, default, running, pending) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    wait_for("the short-lived job to be collected", WAIT, || async {
        match client.get_job(short, false).await {
            Err(e) if e.code() == Some(tonic::Code::NotFound) => Some(e.to_string()),
            _ => None,
        }
    })
    .await
    .map(|msg| assert!(msg.contains("garbage-collected"), "{msg}"))
    .unwrap();
    wait_for("the running job to start", WAIT, || async {
        (state(&client, running).await == Some(api::JobState::Running)).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        state(&client, default).await,
        Some(api::JobState::Complete),
        "kept for the cluster's 24h"
    );
    assert_eq!(state(&client, pending).await, Some(api::JobState::Pending));

    // An operator's run: every finished job, whatever its retention.
    let servers = cluster.live_addrs();
    let (ok, out) = cli(&servers, &["system", "gc", "--older-than", "0s"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("collected 1 finished job(s); 2 job(s) remain"),
        "{out}"
    );
    assert!(client.get_job(default, false).await.is_err());
    assert_eq!(state(&client, running).await, Some(api::JobState::Running));
    assert_eq!(state(&client, pending).await, Some(api::JobState::Pending));
    let page = client
        .list_jobs(api::ListJobsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut listed: Vec<&str> = page.jobs.iter().map(|j| j.id.as_str()).collect();
    listed.sort_unstable();
    let mut left = vec![running.as_str(), pending.as_str()];
    left.sort_unstable();
    assert_eq!(listed, left);
    // Logs of a collected job say so too.
    let (ok, out) = cli(&servers, &["job", "logs", short]);
    assert!(!ok && out.contains("garbage-collected"), "{out}");

    // Every replica counts the same, also one restarted from its log.
    for id in [1, 2, 3] {
        let n = wait_for("the count on every replica", WAIT, || async {
            collected_on(&cluster, id).await.filter(|n| *n == 2.0)
        })
        .await;
        assert!(
            n.is_ok(),
            "replica {id}: {:?}",
            collected_on(&cluster, id).await
        );
    }
    cluster.kill(2).await.unwrap();
    cluster.restart(2).unwrap();
    wait_for("the restarted replica's count", WAIT, || async {
        collected_on(&cluster, 2).await.filter(|n| *n == 2.0)
    })
    .await
    .unwrap();
    let digests = wait_for("the replicas to agree", WAIT, || async {
        let s = client.cluster_status_with(true).await.ok()?;
        let applied: std::collections::BTreeSet<u64> =
            s.replicas.iter().map(|r| r.applied_index).collect();
        (applied.len() == 1 && s.replicas.iter().all(|r| r.error.is_empty())).then_some(s)
    })
    .await
    .unwrap();
    let distinct: std::collections::BTreeSet<_> =
        digests.replicas.iter().map(|r| r.state_digest).collect();
    assert_eq!(distinct.len(), 1, "{:?}", digests.replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t87_bad_retentions_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(cluster_tests::gantry_bin().unwrap())
        .args([
            "server",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--peers",
            "1=127.0.0.1:1",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--insecure", "--job-retention", "soon", "--check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("job_retention") && err.contains("24h"),
        "{err}"
    );
    let out = std::process::Command::new(cluster_tests::gantry_bin().unwrap())
        .args(["job", "submit", "--retention", "0s", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("forever"), "{err}");
}
