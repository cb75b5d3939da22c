//! In-process clusters over real gRPC on port 0: forwarding, failover and
//! loss of quorum.

// Tests may unwrap; synchronous helpers poll with std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_client::{Client, ClientOptions, api};
use gantry_server::{Peers, RaftTimings, ServerConfig, ServerHandle, Stopped, start_on};
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tokio::time::Instant;

fn fast_timings() -> RaftTimings {
    RaftTimings {
        heartbeat_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        snapshot_every: 50,
    }
}

/// A plaintext replica configuration for an in-process test.
fn test_config(
    id: u64,
    listener: &TcpListener,
    peers: BTreeMap<u64, String>,
    dir: &std::path::Path,
    join: bool,
    raft: RaftTimings,
) -> ServerConfig {
    ServerConfig {
        id,
        listen: listener.local_addr().unwrap(),
        peers: Peers(peers),
        data_dir: dir.to_owned(),
        raft,
        join,
        request_timeout_ms: 3_000,
        insecure: true,
        ..ServerConfig::default()
    }
}

struct TestCluster {
    handles: BTreeMap<u64, ServerHandle>,
    _dirs: Vec<tempfile::TempDir>,
}

impl TestCluster {
    async fn start(n: u64) -> Self {
        gantry_telemetry::init_for_tests();
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let peers: BTreeMap<u64, String> = listeners
            .iter()
            .map(|(id, l)| (*id, l.local_addr().unwrap().to_string()))
            .collect();
        let mut handles = BTreeMap::new();
        let mut dirs = Vec::new();
        for (id, listener) in listeners {
            let dir = tempfile::tempdir().unwrap();
            let config = test_config(
                id,
                &listener,
                peers.clone(),
                dir.path(),
                false,
                fast_timings(),
            );
            handles.insert(id, start_on(config, listener).await.unwrap());
            dirs.push(dir);
        }
        Self {
            handles,
            _dirs: dirs,
        }
    }

    /// Waits until every live replica agrees on one leader.
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leaders: Vec<Option<u64>> = self
                .handles
                .values()
                .map(|h| h.replica.raft.metrics().borrow_watched().current_leader)
                .collect();
            if let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| *x == Some(*l))
                && self.handles.contains_key(l)
            {
                return *l;
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn client(&self, id: u64, opts: ClientOptions) -> Client {
        Client::new(&[self.handles[&id].addr.to_string()], opts).unwrap()
    }

    fn follower(&self, leader: u64) -> u64 {
        *self.handles.keys().find(|id| **id != leader).unwrap()
    }
}

fn spec(argv: &[&str]) -> api::JobSpec {
    api::JobSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_submit_through_a_follower_is_visible_on_every_replica() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower(leader);
    tracing::info!(leader, follower, "submitting through a follower");
    let client = cluster.client(follower, ClientOptions::default());
    let resp = client
        .submit_jobs(vec![spec(&["/bin/echo", "hi"]), spec(&["/bin/true"])])
        .await
        .unwrap();
    assert_eq!(resp.jobs.len(), 2);
    for id in cluster.handles.keys() {
        let c = cluster.client(*id, ClientOptions::default());
        // Linearizable reads: every replica sees the acknowledged write.
        let job = c.get_job(&resp.jobs[0].job_id, false).await.unwrap();
        assert_eq!(job.spec.unwrap().argv, vec!["/bin/echo", "hi"]);
        assert_eq!(job.state, api::JobState::Pending as i32);
        let list = c.list_jobs(api::ListJobsRequest::default()).await.unwrap();
        assert_eq!(list.jobs.len(), 2);
    }
    // Bad input gets a clear error naming the field.
    let err = client.submit_jobs(vec![spec(&[])]).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    assert!(err.to_string().contains("jobs[0].argv"), "{err}");
    let err = client.get_job("no-such-job", false).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound));
    // Cancel through another follower.
    let job = cluster
        .client(leader, ClientOptions::default())
        .cancel_job(&resp.jobs[1].job_id, "not needed")
        .await
        .unwrap();
    assert_eq!(job.state, api::JobState::Cancelled as i32);
    for h in cluster.handles.into_values() {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_idempotency_key_returns_the_original_or_already_exists() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let client = cluster.client(cluster.follower(leader), ClientOptions::default());
    let mut s = spec(&["/bin/true"]);
    s.idempotency_key = "nightly-1".into();
    let first = client.submit_jobs(vec![s.clone()]).await.unwrap();
    let again = client.submit_jobs(vec![s.clone()]).await.unwrap();
    assert_eq!(first.jobs[0].job_id, again.jobs[0].job_id);
    assert!(again.jobs[0].existing);
    s.argv = vec!["/bin/false".into()];
    let err = client.submit_jobs(vec![s]).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::AlreadyExists));
    for h in cluster.handles.into_values() {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_leader_stop_elects_a_new_leader_and_keeps_the_job() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower(leader);
    let client = cluster.client(follower, ClientOptions::default());
    let job_id = client
        .submit_jobs(vec![spec(&["/bin/true"])])
        .await
        .unwrap()
        .jobs[0]
        .job_id
        .clone();
    tracing::info!(leader, "stopping the leader");
    cluster.handles.remove(&leader).unwrap().shutdown().await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let job = client.get_job(&job_id, false).await.unwrap();
    assert_eq!(job.id, job_id);
    // Writes are accepted again through either survivor.
    let other = cluster.follower(new_leader);
    let c2 = cluster.client(other, ClientOptions::default());
    c2.submit_jobs(vec![spec(&["/bin/true"])]).await.unwrap();
    let status = c2.cluster_status().await.unwrap();
    assert_eq!(status.leader_id, new_leader);
    let down = status.replicas.iter().find(|r| r.id == leader).unwrap();
    assert_eq!(down.role, "unreachable");
    for h in cluster.handles.into_values() {
        h.shutdown().await;
    }
}

/// A follower holds streams it does not own: the leader's replication
/// stream and a client's watch. Stopping it must end them, not wait for the
/// peers to let go (they never do), and a watcher learns why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_a_follower_stops_gracefully_with_streams_open_to_it() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower(leader);
    let client = cluster.client(follower, ClientOptions::default());
    // A committed write: the leader has replicated to the follower.
    client
        .submit_jobs(vec![spec(&["/bin/true"])])
        .await
        .unwrap();
    let mut watch = client.watch("", 0).await.unwrap();
    assert!(
        watch.message().await.unwrap().is_some(),
        "the submitted job"
    );
    let stopped = cluster.handles.remove(&follower).unwrap().shutdown().await;
    assert_eq!(stopped, Stopped::Gracefully, "no call outlived the stop");
    let end = watch.message().await.unwrap_err();
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end}");
    assert!(end.message().contains("shutting down"), "{end}");
    // The other two still commit.
    let c2 = cluster.client(leader, ClientOptions::default());
    c2.submit_jobs(vec![spec(&["/bin/true"])]).await.unwrap();
    for h in cluster.handles.into_values() {
        assert_eq!(h.shutdown().await, Stopped::Gracefully);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_no_quorum_answers_unavailable_within_the_deadline() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let survivor = cluster.follower(leader);
    let others: Vec<u64> = cluster
        .handles
        .keys()
        .copied()
        .filter(|id| *id != survivor)
        .collect();
    for id in others {
        cluster.handles.remove(&id).unwrap().shutdown().await;
    }
    let opts = ClientOptions {
        request_timeout: Duration::from_secs(5),
        retry_deadline: Duration::from_secs(1),
        ..ClientOptions::default()
    };
    let client = cluster.client(survivor, opts);
    // The server's own request deadline (3 s) bounds the wait: an error, never a hang.
    let submit = tokio::time::timeout(
        Duration::from_secs(30),
        client.submit_jobs(vec![spec(&["/bin/true"])]),
    )
    .await
    .expect("submit must not hang without quorum");
    assert_eq!(submit.unwrap_err().code(), Some(tonic::Code::Unavailable));
    let read = tokio::time::timeout(Duration::from_secs(30), client.get_job("x", false))
        .await
        .expect("read must not hang without quorum");
    assert_eq!(read.unwrap_err().code(), Some(tonic::Code::Unavailable));
    // A stale read is still served from local state.
    let stale = client.get_job("x", true).await.unwrap_err();
    assert_eq!(stale.code(), Some(tonic::Code::NotFound));
    for h in cluster.handles.into_values() {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_add_and_remove_a_replica() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let client = cluster.client(cluster.follower(leader), ClientOptions::default());
    let job = client
        .submit_jobs(vec![spec(&["/bin/true"])])
        .await
        .unwrap()
        .jobs[0]
        .job_id
        .clone();

    // A fourth replica started with --join waits to be contacted.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut peers: BTreeMap<u64, String> = cluster
        .handles
        .iter()
        .map(|(id, h)| (*id, h.addr.to_string()))
        .collect();
    peers.insert(4, addr.clone());
    let config = test_config(
        4,
        &listener,
        peers,
        dir.path(),
        true,
        RaftTimings::default(),
    );
    cluster
        .handles
        .insert(4, start_on(config, listener).await.unwrap());
    let status = client.add_replica(4, &addr).await.unwrap();
    let four = status.replicas.iter().find(|r| r.id == 4).unwrap();
    assert!(four.voter);
    assert_eq!(status.replicas.len(), 4);
    // The new replica serves linearizable reads of what came before it.
    let c4 = cluster.client(4, ClientOptions::default());
    assert_eq!(c4.get_job(&job, false).await.unwrap().id, job);
    // Adding it again is refused; removing an unknown id is NotFound.
    assert_eq!(
        client.add_replica(4, &addr).await.unwrap_err().code(),
        Some(tonic::Code::AlreadyExists)
    );
    assert_eq!(
        client.remove_replica(9).await.unwrap_err().code(),
        Some(tonic::Code::NotFound)
    );
    let status = client.remove_replica(4).await.unwrap();
    assert!(status.replicas.iter().all(|r| r.id != 4));
    assert_eq!(status.replicas.len(), 3);
    cluster.handles.remove(&4).unwrap().shutdown().await;
    client
        .submit_jobs(vec![spec(&["/bin/true"])])
        .await
        .unwrap();
    for h in cluster.handles.into_values() {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_oversized_and_overfull_requests_get_the_documented_errors() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let client = cluster.client(leader, ClientOptions::default());
    // Too many jobs in one call.
    let err = client
        .submit_jobs(vec![
            spec(&["/bin/true"]);
            gantry_core::limits::MAX_JOBS_PER_SUBMIT + 1
        ])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    assert!(
        err.to_string().contains("limit per request is 1000"),
        "{err}"
    );
    // A message over the 16 MiB limit, sent by a client that allows more.
    let channel = gantry_proto::transport::Transport::insecure()
        .channel(&cluster.handles[&leader].addr.to_string())
        .unwrap();
    let big = api::JobSpec {
        argv: vec!["x".repeat(17 * 1024 * 1024)],
        ..Default::default()
    };
    let err = api::job_service_client::JobServiceClient::new(channel)
        .max_encoding_message_size(64 * 1024 * 1024)
        .submit_jobs(api::SubmitJobsRequest { jobs: vec![big] })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err}"
    );
    let list = client
        .list_jobs(api::ListJobsRequest::default())
        .await
        .unwrap();
    assert!(list.jobs.is_empty(), "nothing was accepted");
    for h in cluster.handles.into_values() {
        h.shutdown().await;
    }
}
