//! The mTLS and authorization matrix against a running cluster of the real
//! binary: each refusal is asserted, and so is that no state changed.

// Tests may unwrap; synchronous helpers poll with std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::time::Duration;

use cluster_tests::{Cluster, Timings, TlsPaths, Transport, wait_for};
use gantry_client::{Client, api};
use gantry_pki::{Identity, LeafSpec, Role};
use gantry_proto::internal::v1::LocalStatusRequest;
use gantry_proto::internal::v1::raft_service_client::RaftServiceClient;
use gantry_proto::v1::agent_message::Msg as AgentMsg;
use gantry_proto::v1::agent_service_client::AgentServiceClient;
use gantry_proto::v1::job_service_client::JobServiceClient;
use gantry_proto::v1::server_message::Msg as ServerMsg;
use gantry_proto::v1::{AgentMessage, AttemptFinished, Hello, ListJobsRequest, SubmitJobsRequest};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn spec() -> api::JobSpec {
    api::JobSpec {
        argv: vec!["/bin/true".into()],
        ..Default::default()
    }
}

/// Writes a certificate signed by `ca` into `dir` and returns its paths.
fn mint(
    dir: &std::path::Path,
    ca_pem: &str,
    ca: &gantry_pki::Pair,
    role: Role,
    name: &str,
    backdate: u32,
) -> TlsPaths {
    let spec = LeafSpec {
        identity: Identity {
            role,
            name: name.into(),
        },
        dns: vec!["localhost".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
        days: 1,
        backdate_days: backdate,
    };
    let stem = format!("minted-{}-{name}-{backdate}", role.as_str());
    gantry_pki::write_pair(dir, &stem, &gantry_pki::issue(ca, &spec).unwrap()).unwrap();
    let ca_path = dir.join(format!("{stem}-ca.pem"));
    std::fs::write(&ca_path, ca_pem).unwrap();
    TlsPaths {
        ca: ca_path,
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
    }
}

async fn job_count(admin: &Client) -> usize {
    admin
        .list_jobs(ListJobsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .jobs
        .len()
}

/// Submits through `transport` straight to one replica, with no retries.
async fn try_submit(transport: &Transport, addr: &str) -> tonic::Status {
    let channel = transport.channel(addr).unwrap();
    let req = SubmitJobsRequest { jobs: vec![spec()] };
    JobServiceClient::new(channel)
        .submit_jobs(req)
        .await
        .expect_err("the submit must be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t70_the_refusal_matrix() {
    let mut cluster = Cluster::start_secure(3, Timings::default()).await.unwrap();
    let admin = Client::new(&cluster.live_addrs(), cluster.client_options().unwrap()).unwrap();
    let addr = cluster.live_addrs()[0].clone();
    admin.submit_jobs(vec![spec()]).await.unwrap();
    let before = job_count(&admin).await;
    let ca = cluster.ca().unwrap().clone();
    let scratch = cluster.dir().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();

    // 1. No client certificate: the CA is trusted, nothing is presented.
    let ca_pem = std::fs::read(cluster.dir().join("pki/ca.pem")).unwrap();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    let err = JobServiceClient::new(channel)
        .submit_jobs(SubmitJobsRequest { jobs: vec![spec()] })
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok, "no client certificate: {err}");

    // 2. A certificate from another CA.
    let other_ca = gantry_pki::new_ca(1).unwrap();
    let mut foreign = mint(
        &scratch,
        &ca.cert_pem,
        &other_ca,
        Role::Client,
        "mallory",
        0,
    );
    foreign.ca = cluster.dir().join("pki/ca.pem");
    let err = try_submit(&Transport::mtls(&foreign).unwrap(), &addr).await;
    // Refused in the TLS handshake: the call fails before reaching any service.
    assert_ne!(err.code(), Code::Ok, "{err}");

    // 3. An expired certificate from the right CA.
    let expired = mint(&scratch, &ca.cert_pem, &ca, Role::Client, "old", 10);
    let err = try_submit(&Transport::mtls(&expired).unwrap(), &addr).await;
    // Refused in the TLS handshake: the call fails before reaching any service.
    assert_ne!(err.code(), Code::Ok, "{err}");

    // 4. A client certificate on the internal Raft service.
    let client_tls = Transport::mtls(&cluster.issue(Role::Client, "admin").unwrap()).unwrap();
    let err = RaftServiceClient::new(client_tls.channel(&addr).unwrap())
        .local_status(LocalStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("server certificate"), "{err}");

    // 5. An agent certificate on SubmitJobs.
    let agent_a = Transport::mtls(&cluster.issue(Role::Agent, "a").unwrap()).unwrap();
    let err = try_submit(&agent_a, &addr).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // 6. Agent `a` registering as node `b`.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(AgentMessage {
        msg: Some(AgentMsg::Hello(Hello {
            node_id: "b".into(),
            ..Hello::default()
        })),
    })
    .await
    .unwrap();
    let err = AgentServiceClient::new(agent_a.channel(&addr).unwrap())
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(
        admin
            .list_nodes(false)
            .await
            .unwrap()
            .iter()
            .all(|n| n.id != "b")
    );

    // 8. Plaintext against the TLS port.
    let err = try_submit(&Transport::insecure(), &addr).await;
    assert_ne!(err.code(), Code::Ok, "{err}");

    // Nothing above changed any state.
    assert_eq!(job_count(&admin).await, before);

    // 7. Agent `a` reporting a result for an attempt assigned to `b`.
    cluster.start_agent("b", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["b"]).await.unwrap();
    let id = admin
        .submit_jobs(vec![api::JobSpec {
            argv: vec!["/bin/sleep".into(), "30".into()],
            ..Default::default()
        }])
        .await
        .unwrap()
        .jobs
        .remove(0)
        .job_id;
    let job = wait_for("the job to run on b", Duration::from_secs(30), || async {
        let j = admin.get_job(&id, false).await.ok()?;
        (j.tasks[0].attempts.first()?.state == "running").then_some(j)
    })
    .await
    .unwrap();
    let stale_before = admin.cluster_status().await.unwrap().stale_reports;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(AgentMessage {
        msg: Some(AgentMsg::Hello(Hello {
            node_id: "a".into(),
            ..Hello::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = AgentServiceClient::new(agent_a.channel(&addr).unwrap())
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        inbound.message().await.unwrap().unwrap().msg,
        Some(ServerMsg::Welcome(_))
    ));
    let forged = AttemptFinished {
        attempt: Some(api::AttemptToken {
            job_id: id.clone(),
            task: 0,
            attempt: 1,
        }),
        exit_code: Some(0),
        ..AttemptFinished::default()
    };
    tx.send(AgentMessage {
        msg: Some(AgentMsg::Finished(forged)),
    })
    .await
    .unwrap();
    wait_for(
        "the forged report to be fenced off",
        Duration::from_secs(30),
        || async {
            let s = admin.cluster_status().await.ok()?;
            (s.stale_reports > stale_before).then_some(())
        },
    )
    .await
    .unwrap();
    let after = admin.get_job(&id, false).await.unwrap();
    assert_eq!(after.tasks[0].attempts.len(), 1);
    assert_eq!(after.tasks[0].attempts[0].state, "running");
    assert_eq!(after.tasks[0].attempts[0].node_id, "b");
    assert_eq!(job.tasks[0].attempts[0].node_id, "b");
    admin.cancel_job(&id, "done").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t70_renewed_tls_files_are_used_without_a_restart() {
    let cluster = Cluster::start_secure(1, Timings::default()).await.unwrap();
    let addr = cluster.live_addrs()[0].clone();
    let pid = cluster.pid(1).unwrap();
    let ca = cluster.ca().unwrap().clone();
    let scratch = cluster.dir().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    // A client whose certificate comes from a new CA the replica does not trust yet.
    let new_ca = gantry_pki::new_ca(1).unwrap();
    let mut newcomer = mint(&scratch, &ca.cert_pem, &new_ca, Role::Client, "newcomer", 0);
    newcomer.ca = cluster.dir().join("pki/ca.pem");
    let transport = Transport::mtls(&newcomer).unwrap();
    try_submit(&transport, &addr).await;

    // The operator deploys a CA bundle with both CAs (atomically, as a rename).
    let bundle = format!("{}{}", ca.cert_pem, new_ca.cert_pem);
    let tmp = cluster.dir().join("pki/ca.pem.new");
    std::fs::write(&tmp, bundle).unwrap();
    std::fs::rename(&tmp, cluster.dir().join("pki/ca.pem")).unwrap();

    wait_for(
        "the replica to trust the new CA",
        Duration::from_secs(30),
        || async {
            let channel = transport.channel(&addr).ok()?;
            JobServiceClient::new(channel)
                .submit_jobs(SubmitJobsRequest { jobs: vec![spec()] })
                .await
                .ok()
        },
    )
    .await
    .unwrap();
    assert_eq!(cluster.pid(1), Some(pid), "the replica was not restarted");
}
