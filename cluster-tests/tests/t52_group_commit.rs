//! Group commit (issue 9): concurrent submissions share Raft entries on the
//! leader and forwarded requests on a follower, and every caller still gets
//! the answer it would have had alone.

#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::collections::BTreeSet;
use std::sync::Arc;

use cluster_tests::{Cluster, Timings, http_get, sample};
use gantry_client::api;

fn spec(argv1: &str, key: &str) -> api::JobSpec {
    api::JobSpec {
        argv: vec!["/bin/echo".into(), argv1.into()],
        idempotency_key: key.into(),
        ..Default::default()
    }
}

async fn last_log_index(cluster: &Cluster, id: u64) -> f64 {
    let (_, text) = http_get(&cluster.replicas[&id].metrics_addr, "/metrics")
        .await
        .unwrap();
    sample(&text, "gantry_raft_last_log_index").unwrap()
}

/// Forwarded writes the leader has served.
async fn proposes_served(cluster: &Cluster, id: u64) -> f64 {
    let (_, text) = http_get(&cluster.replicas[&id].metrics_addr, "/metrics")
        .await
        .unwrap();
    sample(
        &text,
        "gantry_grpc_requests_total{method=\"/gantry.internal.v1.RaftService/Propose\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t52_concurrent_submits_share_entries_and_keep_their_own_answers() {
    let cluster = Cluster::start(3, Timings::default()).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    concurrent_submits(&cluster, leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t52_a_follower_forwards_concurrent_submits_together() {
    let cluster = Cluster::start(3, Timings::default()).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    let follower = *cluster.replicas.keys().find(|id| **id != leader).unwrap();
    let before = proposes_served(&cluster, leader).await;
    concurrent_submits(&cluster, follower).await;
    // 640 + 32 submissions (and a warm-up) reached the follower.
    let forwarded = proposes_served(&cluster, leader).await - before;
    assert!(
        forwarded > 0.0 && forwarded < 673.0,
        "the follower forwarded {forwarded} requests for 673 submissions: none were combined"
    );
}

/// Concurrent submissions through replica `via`: every caller gets its own
/// job, or, for a shared idempotency key, the one job or a conflict.
async fn concurrent_submits(cluster: &Cluster, via: u64) {
    let leader = cluster.leader().await.unwrap();
    let client = Arc::new(cluster.client(&[via]).unwrap());
    client.submit_jobs(vec![spec("warm-up", "")]).await.unwrap();

    // 64 callers at once, 10 single-job requests each: all stored, distinct.
    let before = last_log_index(cluster, leader).await;
    let mut calls = Vec::new();
    for c in 0..64 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for r in 0..10 {
                let resp = client
                    .submit_jobs(vec![spec(&format!("{c}-{r}"), "")])
                    .await
                    .unwrap();
                assert_eq!(resp.jobs.len(), 1);
                assert!(!resp.jobs[0].existing);
                ids.push(resp.jobs[0].job_id.clone());
            }
            ids
        }));
    }
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for c in calls {
        ids.extend(c.await.unwrap());
    }
    assert_eq!(ids.len(), 640, "every request got its own job");
    for id in ids.iter().take(20) {
        client.get_job(id, false).await.unwrap();
    }
    let entries = last_log_index(cluster, leader).await - before;
    assert!(
        entries < 640.0,
        "640 concurrent submissions took {entries} entries: none were combined"
    );

    // The same idempotency key from many callers at once: one job; callers
    // with the same spec get it back, a different spec is a conflict.
    let mut calls = Vec::new();
    for c in 0..32 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let argv1 = if c % 8 == 7 { "other" } else { "same" };
            client.submit_jobs(vec![spec(argv1, "shared-key")]).await
        }));
    }
    let (mut same, mut conflicts): (BTreeSet<String>, usize) = (BTreeSet::new(), 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(resp) => {
                same.insert(resp.jobs[0].job_id.clone());
            }
            Err(e) => {
                assert_eq!(e.code(), Some(tonic::Code::AlreadyExists), "{e}");
                conflicts += 1;
            }
        }
    }
    assert_eq!(same.len(), 1, "one job for the key: {same:?}");
    let job = client
        .get_job(same.iter().next().unwrap(), false)
        .await
        .unwrap();
    let winner = job.spec.unwrap().argv[1].clone();
    // Whichever spec was stored first, the callers with the other one conflict.
    let expected = if winner == "same" { 4 } else { 28 };
    assert_eq!(conflicts, expected, "stored spec {winner}");
}
