//! Three real `gantry server` processes: acknowledged submits survive a
//! leader SIGKILL, a restarted replica catches up from its data dir, and a
//! wiped replica rejoins through a snapshot.

// Tests may unwrap; synchronous helpers poll with std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::collections::BTreeSet;
use std::time::Duration;

use cluster_tests::{Cluster, Timings, wait_for};
use gantry_client::{Client, api};

fn spec(i: usize) -> api::JobSpec {
    api::JobSpec {
        name: format!("job-{i}"),
        argv: vec!["/bin/echo".into(), i.to_string()],
        ..Default::default()
    }
}

/// Every job id the replica behind `client` lists.
async fn listed(client: &Client, stale: bool) -> anyhow::Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    let mut req = api::ListJobsRequest {
        page_size: 1000,
        stale,
        ..Default::default()
    };
    loop {
        let page = client.list_jobs(req.clone()).await?;
        ids.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        req.page_token = page.next_page_token;
    }
}

/// Submits `n` jobs one request each, round-robin over `ids`' replicas.
async fn submit_each(
    cluster: &Cluster,
    ids: &[u64],
    n: usize,
    offset: usize,
) -> anyhow::Result<BTreeSet<String>> {
    let clients: Vec<Client> = ids
        .iter()
        .map(|id| cluster.client(&[*id]))
        .collect::<Result<_, _>>()?;
    let mut acked = BTreeSet::new();
    for i in 0..n {
        let resp = clients[i % clients.len()]
            .submit_jobs(vec![spec(offset + i)])
            .await?;
        acked.insert(resp.jobs[0].job_id.clone());
    }
    Ok(acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_leader_kill_restart_and_wipe_lose_no_acknowledged_job() -> anyhow::Result<()> {
    let timings = Timings {
        snapshot_every: 50,
        ..Timings::default()
    };
    let mut cluster = Cluster::start(3, timings).await?;
    eprintln!("cluster in {}", cluster.dir().display());
    let leader = cluster.leader().await?;
    let followers = cluster.others(leader);

    // 100 submits through followers only: each is forwarded to the leader.
    let mut acked = submit_each(&cluster, &followers, 100, 0).await?;
    assert_eq!(acked.len(), 100);

    cluster.kill(leader).await?;
    let new_leader = cluster.leader().await?;
    assert_ne!(new_leader, leader);
    acked.extend(submit_each(&cluster, &followers, 100, 100).await?);
    assert_eq!(acked.len(), 200);

    // Every surviving replica lists exactly the acknowledged jobs.
    for id in &followers {
        let seen = listed(&cluster.client(&[*id])?, false).await?;
        assert_eq!(seen, acked, "replica {id} lists a different set");
    }

    // The killed replica restarts from its data dir and catches up.
    cluster.restart(leader)?;
    let restarted = cluster.client(&[leader])?;
    wait_for(
        "the restarted replica to catch up",
        Duration::from_secs(30),
        || async { (listed(&restarted, true).await.ok()? == acked).then_some(()) },
    )
    .await?;
    assert_eq!(listed(&restarted, false).await?, acked);

    // A replica whose data dir is lost comes back as docs/operations.md
    // says: out of the membership, wiped, started with --join, added back;
    // it is caught up by snapshot install.
    let leader = cluster.leader().await?;
    let victim = cluster.others(leader)[0];
    let admin = cluster.client(&[leader])?;
    admin.remove_replica(victim).await?;
    cluster.kill(victim).await?;
    cluster.wipe(victim)?;
    cluster.restart_joining(victim)?;
    let addr = cluster.replicas[&victim].addr.clone();
    admin.add_replica(victim, &addr).await?;
    let wiped = cluster.client(&[victim])?;
    wait_for(
        "the wiped replica to rejoin",
        Duration::from_secs(30),
        || async { (listed(&wiped, true).await.ok()? == acked).then_some(()) },
    )
    .await?;
    assert!(
        cluster.log_text(victim).contains("installed snapshot"),
        "replica {victim} caught up without a snapshot install; its log:\n{}",
        cluster.log_text(victim)
    );
    // All three agree, linearizably.
    for id in [1, 2, 3] {
        assert_eq!(listed(&cluster.client(&[id])?, false).await?, acked);
    }
    Ok(())
}
