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

/// Calls of `RaftService/{method}` replica `id` has served.
async fn raft_calls_served(cluster: &Cluster, id: u64, method: &str) -> f64 {
    let (_, text) = http_get(&cluster.replicas[&id].metrics_addr, "/metrics")
        .await
        .unwrap();
    sample(
        &text,
        &format!(
            "gantry_grpc_requests_total{{method=\"/gantry.internal.v1.RaftService/{method}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

/// Forwarded writes the leader has served.
async fn proposes_served(cluster: &Cluster, id: u64) -> f64 {
    raft_calls_served(cluster, id, "Propose").await
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

/// A follower names the leader in its reply to a write; the client sends
/// its next calls there (when the address is one of its own), so later
/// writes skip the forwarding hop. With `follow_leader` off it stays put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t52_the_client_follows_the_leader_a_follower_names() {
    let cluster = Cluster::start(3, Timings::default()).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    let follower = *cluster.replicas.keys().find(|id| **id != leader).unwrap();
    let (leader_addr, follower_addr) = (
        cluster.replicas[&leader].addr.clone(),
        cluster.replicas[&follower].addr.clone(),
    );

    let client = cluster.client(&[follower, leader]).unwrap();
    assert_eq!(client.current_server(), follower_addr);
    client.submit_jobs(vec![spec("first", "")]).await.unwrap();
    assert_eq!(
        client.current_server(),
        leader_addr,
        "the follower's reply named the leader"
    );
    let before = proposes_served(&cluster, leader).await;
    for r in 0..5 {
        client
            .submit_jobs(vec![spec(&format!("then-{r}"), "")])
            .await
            .unwrap();
    }
    assert_eq!(
        proposes_served(&cluster, leader).await - before,
        0.0,
        "later writes went to the leader itself, none were forwarded"
    );

    let opts = gantry_client::ClientOptions {
        follow_leader: false,
        ..cluster.client_options().unwrap()
    };
    let stays = gantry_client::Client::new(&[follower_addr.clone(), leader_addr], opts).unwrap();
    stays.submit_jobs(vec![spec("stays", "")]).await.unwrap();
    assert_eq!(stays.current_server(), follower_addr);

    // A leader the client was not given is not followed.
    let only_follower = cluster.client(&[follower]).unwrap();
    only_follower
        .submit_jobs(vec![spec("alone", "")])
        .await
        .unwrap();
    assert_eq!(only_follower.current_server(), follower_addr);
}

/// The leader replicates over pipelined `StreamAppend` streams, not one
/// `AppendEntries` call per batch: followers serve streams and no unary
/// append, and every write is still committed on all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t52_replication_goes_over_append_streams() {
    let cluster = Cluster::start(3, Timings::default()).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    let client = Arc::new(cluster.client(&[leader]).unwrap());
    let mut calls = Vec::new();
    for c in 0..16 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            for r in 0..10 {
                client
                    .submit_jobs(vec![spec(&format!("{c}-{r}"), "")])
                    .await
                    .unwrap();
            }
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    let index = last_log_index(&cluster, leader).await;
    for id in cluster.replicas.keys().filter(|id| **id != leader) {
        assert!(
            raft_calls_served(&cluster, *id, "StreamAppend").await > 0.0,
            "follower {id} served no append stream"
        );
        assert_eq!(
            raft_calls_served(&cluster, *id, "AppendEntries").await,
            0.0,
            "follower {id} was sent unary appends"
        );
        cluster_tests::wait_for(
            "the follower's log to reach the leader's",
            std::time::Duration::from_secs(10),
            || async { (last_log_index(&cluster, *id).await >= index).then_some(()) },
        )
        .await
        .unwrap();
    }
}
