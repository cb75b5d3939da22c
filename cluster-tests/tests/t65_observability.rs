//! Metrics and health of real replicas: `/metrics` moves with a known
//! workload; gRPC health (`grpc.health.v1`) and `/ready` report SERVING
//! only while a replica is part of a quorum.

#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::time::Duration;

use cluster_tests::{Cluster, Timings, http_get, sample, wait_for};
use gantry_client::api;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health(addr: &str, service: &str) -> Option<ServingStatus> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let r = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

async fn metrics(addr: &str) -> String {
    let (code, body) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t65_metrics_count_a_known_workload() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    cluster.start_agent("a1", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a1"]).await.unwrap();
    let client = cluster.client(&[1]).unwrap();
    let spec = |argv: &[&str]| api::JobSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        max_attempts: 1,
        ..Default::default()
    };
    let mut specs: Vec<api::JobSpec> = (0..5).map(|_| spec(&["/bin/true"])).collect();
    specs.extend((0..2).map(|_| spec(&["/bin/false"])));
    client.submit_jobs(specs).await.unwrap();

    // Every replica's state-derived figures converge on the workload.
    for r in cluster.replicas.values() {
        let addr = r.metrics_addr.clone();
        wait_for(
            "the jobs to show in /metrics",
            Duration::from_secs(30),
            || {
                let addr = addr.clone();
                async move {
                    let m = metrics(&addr).await;
                    (sample(&m, r#"gantry_jobs{state="complete"}"#) == Some(5.0)
                        && sample(&m, r#"gantry_jobs{state="failed"}"#) == Some(2.0))
                    .then_some(())
                }
            },
        )
        .await
        .unwrap();
        let m = metrics(&r.metrics_addr).await;
        assert_eq!(sample(&m, "gantry_jobs_received_total"), Some(7.0), "{m}");
        assert_eq!(
            sample(
                &m,
                r#"gantry_attempts_finished{outcome="succeeded",class="none"}"#
            ),
            Some(5.0),
            "{m}"
        );
        assert_eq!(
            sample(
                &m,
                r#"gantry_attempts_finished{outcome="failed",class="workload"}"#
            ),
            Some(2.0),
            "{m}"
        );
        assert_eq!(
            sample(&m, "gantry_task_duration_seconds_count"),
            Some(7.0),
            "{m}"
        );
        assert_eq!(sample(&m, "gantry_pending_tasks"), Some(0.0), "{m}");
        assert!(
            sample(&m, "gantry_raft_applied_index").unwrap() > 0.0,
            "{m}"
        );
        assert!(sample(&m, "gantry_raft_term").unwrap() >= 1.0, "{m}");
        if sample(&m, "gantry_raft_is_leader") == Some(1.0) {
            // Every write was proposed here: the submit, assigns, reports.
            assert!(
                sample(&m, "gantry_raft_apply_latency_seconds_count").unwrap() >= 3.0,
                "{m}"
            );
        }
    }
    // Process-local figures: one agent stream in the whole cluster, the
    // submit counted on the replica the client called.
    let mut agents = 0.0;
    for r in cluster.replicas.values() {
        agents += sample(&metrics(&r.metrics_addr).await, "gantry_connected_agents").unwrap();
    }
    assert_eq!(agents, 1.0);
    let m = metrics(&cluster.replicas[&1].metrics_addr).await;
    assert!(
        sample(
            &m,
            r#"gantry_grpc_requests_total{method="/gantry.v1.JobService/SubmitJobs"}"#
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
    // An error is counted by method and code.
    assert!(client.get_job("no-such-job", false).await.is_err());
    let m = metrics(&cluster.replicas[&1].metrics_addr).await;
    assert!(
        sample(
            &m,
            r#"gantry_grpc_errors_total{method="/gantry.v1.JobService/GetJob",code="NotFound"}"#
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
    // Probes for load balancers.
    let r1 = &cluster.replicas[&1].metrics_addr;
    assert_eq!(http_get(r1, "/live").await.unwrap().0, 200);
    assert_eq!(http_get(r1, "/ready").await.unwrap().0, 200);
    let (code, body) = http_get(r1, "/health").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"in_quorum\":true"), "{body}");
    assert_eq!(http_get(r1, "/nope").await.unwrap().0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t65_health_is_serving_only_within_a_quorum() {
    let mut cluster = Cluster::start_partitionable(3, Timings::default())
        .await
        .unwrap();
    for r in cluster.replicas.values() {
        let addr = r.addr.clone();
        wait_for("SERVING", Duration::from_secs(20), || {
            let addr = addr.clone();
            async move {
                (health(&addr, "").await == Some(ServingStatus::Serving)
                    && health(&addr, "gantry.v1.JobService").await == Some(ServingStatus::Serving))
                .then_some(())
            }
        })
        .await
        .unwrap();
    }
    // Unknown services are NotFound, as the protocol says.
    assert_eq!(
        health(&cluster.replicas[&1].addr, "no.such.Service").await,
        None
    );

    // Cut one replica off from the others (partition where namespaces
    // exist, else stop the other two): it must turn NOT_SERVING while it
    // still answers, and /ready must say 503.
    let lonely = cluster.leader().await.unwrap();
    let others = cluster.others(lonely);
    if cluster.partitionable() {
        cluster.split(&[lonely], &others).unwrap();
    } else {
        eprintln!("no network namespaces: stopping the other replicas instead of partitioning");
        for o in &others {
            cluster.kill(*o).await.unwrap();
        }
    }
    let addr = cluster.replicas[&lonely].addr.clone();
    wait_for("NOT_SERVING on the cut-off replica", Duration::from_secs(20), || {
        let addr = addr.clone();
        async move { (health(&addr, "").await == Some(ServingStatus::NotServing)).then_some(()) }
    })
    .await
    .unwrap();
    let (code, _) = http_get(&cluster.replicas[&lonely].metrics_addr, "/ready")
        .await
        .unwrap();
    assert_eq!(code, 503);
    if cluster.partitionable() {
        // The majority side elects a leader and keeps serving.
        for o in &others {
            let addr = cluster.replicas[o].addr.clone();
            wait_for("SERVING on the majority", Duration::from_secs(20), || {
                let addr = addr.clone();
                async move { (health(&addr, "").await == Some(ServingStatus::Serving)).then_some(()) }
            })
            .await
            .unwrap();
        }
        cluster.heal().unwrap();
        wait_for("SERVING again after healing", Duration::from_secs(20), || {
            let addr = addr.clone();
            async move { (health(&addr, "").await == Some(ServingStatus::Serving)).then_some(()) }
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t65_agent_metrics_count_output_tasks_and_reconnects() {
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    cluster.start_agent("a1", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a1"]).await.unwrap();
    let agent = cluster.agents["a1"].metrics_addr.clone();
    let client = cluster.client(&[1, 2, 3]).unwrap();
    let spec = api::JobSpec {
        argv: vec!["/bin/echo".into(), "0123456789".into()],
        ..Default::default()
    };
    client.submit_jobs(vec![spec]).await.unwrap();
    wait_for("the output to be counted", Duration::from_secs(30), || {
        let agent = agent.clone();
        async move {
            let m = metrics(&agent).await;
            (sample(&m, "gantry_agent_output_bytes_total") == Some(11.0)
                && sample(&m, "gantry_agent_running_tasks") == Some(0.0))
            .then_some(())
        }
    })
    .await
    .unwrap();
    let m = metrics(&agent).await;
    assert_eq!(
        sample(&m, "gantry_agent_attempts_started_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "gantry_agent_connected"), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "gantry_agent_reconnects_total"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(http_get(&agent, "/ready").await.unwrap().0, 200);
    // Kill the replica holding the agent's stream: the agent moves.
    let holder = wait_for(
        "the replica holding the stream",
        Duration::from_secs(10),
        || async {
            for r in cluster.replicas.values() {
                let m = metrics(&r.metrics_addr).await;
                if sample(&m, "gantry_connected_agents") == Some(1.0) {
                    return Some(r.id);
                }
            }
            None
        },
    )
    .await
    .unwrap();
    cluster.kill(holder).await.unwrap();
    wait_for("a reconnect", Duration::from_secs(30), || {
        let agent = agent.clone();
        async move {
            let m = metrics(&agent).await;
            (sample(&m, "gantry_agent_reconnects_total") == Some(1.0)
                && sample(&m, "gantry_agent_connected") == Some(1.0))
            .then_some(())
        }
    })
    .await
    .unwrap();
}
