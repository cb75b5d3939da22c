//! Faults must be cheap as well as safe: a follower that is down costs the
//! leader almost nothing (no reconnect spin, no log line per retry), and
//! the check that says so fails on a replica planted to spin.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cluster_tests::cost::{Cost, PEER_DOWN, Sample};
use cluster_tests::{Cluster, Timings, http_get, sample, wait_for};
use gantry_client::api;

/// Jobs that keep running through the fault.
async fn start_long_jobs(cluster: &mut Cluster) {
    cluster.start_agent("a", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a"]).await.unwrap();
    let client = cluster.client(&[1, 2, 3]).unwrap();
    let spec = api::JobSpec {
        argv: vec!["/bin/sleep".into(), "300".into()],
        count: 3,
        max_attempts: 1,
        ..Default::default()
    };
    client.submit_jobs(vec![spec]).await.unwrap();
}

async fn metric(cluster: &Cluster, id: u64, series: &str) -> Option<f64> {
    let (_, text) = http_get(&cluster.replicas[&id].metrics_addr, "/metrics")
        .await
        .ok()?;
    sample(&text, series)
}

/// Kills a follower and measures the leader for `window`.
async fn leader_cost_with_a_follower_down(
    cluster: &mut Cluster,
    window: Duration,
) -> (u64, u64, Cost) {
    let leader = cluster.leader().await.unwrap();
    let follower = cluster.others(leader)[0];
    tracing::info!(leader, follower, "killing a follower");
    cluster.kill(follower).await.unwrap();
    let before = Sample::take(cluster, leader).unwrap();
    // The measurement window itself: the cost is a rate over this time.
    tokio::time::sleep(window).await;
    let after = Sample::take(cluster, leader).unwrap();
    (leader, follower, Cost::between(&before, &after))
}

#[tokio::test(flavor = "multi_thread")]
async fn t82_a_follower_down_for_30s_costs_the_leader_almost_nothing() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    start_long_jobs(&mut cluster).await;
    let (leader, follower, cost) =
        leader_cost_with_a_follower_down(&mut cluster, Duration::from_secs(30)).await;
    eprintln!("leader {leader} with follower {follower} down: {cost}");
    if let Err(e) = cost.check(PEER_DOWN) {
        panic!(
            "a dead follower costs the leader too much: {e}\nleader's log ends:\n{}",
            tail(&cluster.log_text(leader), 20)
        );
    }
    let log = cluster.log_text(leader);
    assert!(
        log.contains("peer replica unreachable"),
        "the leader says once that the follower is unreachable:\n{}",
        tail(&log, 20)
    );

    // Back: the leader notices and the follower catches up.
    cluster.restart(follower).unwrap();
    let target = metric(&cluster, leader, "gantry_raft_last_log_index")
        .await
        .unwrap();
    wait_for(
        "the restarted follower to catch up",
        Duration::from_secs(30),
        || async {
            let applied = metric(&cluster, follower, "gantry_raft_applied_index").await?;
            (applied >= target).then_some(())
        },
    )
    .await
    .unwrap();
    wait_for(
        "the leader to log the follower's return",
        Duration::from_secs(10),
        || async {
            cluster
                .log_text(leader)
                .contains("peer replica reachable again")
                .then_some(())
        },
    )
    .await
    .unwrap();
}

/// The same check on a build planted to spin (the backoff switched off):
/// it must fail, or the check above proves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn t82_the_cost_check_fails_on_a_leader_planted_to_spin() {
    if !cfg!(debug_assertions) {
        eprintln!("SKIPPED: the switch that removes the backoff exists in debug builds only");
        return;
    }
    let env = vec![("GANTRY_TEST_NO_PEER_BACKOFF".to_owned(), "1".to_owned())];
    let mut cluster = Cluster::start_with_env(3, Timings::default(), env)
        .await
        .unwrap();
    start_long_jobs(&mut cluster).await;
    let (leader, _, cost) =
        leader_cost_with_a_follower_down(&mut cluster, Duration::from_secs(10)).await;
    eprintln!("planted spin: leader {leader}: {cost}");
    assert!(
        cost.check(PEER_DOWN).is_err(),
        "a leader without backoff passed the cost check: {cost}"
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
