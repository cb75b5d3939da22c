//! The transport's ceiling: a server that answers `JobService.SubmitJobs`
//! over Gantry's own transport (the same tonic server settings, the same
//! mutual TLS with certificates from the cluster's CA) and does nothing
//! else: no Raft, no disk, no state. Driven like a replica, it shows what a
//! unary call per job costs on this machine before any work is done, so
//! the replicas' own share of a job's cost can be read beside etcd's.
//!
//! It runs in a process of its own (`bench echo-server`, which prints the
//! address it listens on), so its CPU is read from /proc like a replica's.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use gantry_proto::transport::{TlsPaths, Transport, reload};
use gantry_proto::v1::job_service_server::{JobService, JobServiceServer};
use gantry_proto::v1::{
    CancelJobRequest, CancelJobResponse, GetJobRequest, GetJobResponse, JobEvent, ListJobsRequest,
    ListJobsResponse, LogChunk, LogsRequest, SubmitJobsRequest, SubmitJobsResponse, SubmittedJob,
    WatchRequest,
};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tonic::{Request, Response, Status};

use cluster_tests::Cluster;

/// The echo server's process, stopped when dropped.
pub struct EchoServer {
    pub addr: String,
    child: Child,
}

impl EchoServer {
    /// Starts `bench echo-server` (this executable) with a server
    /// certificate from `cluster`'s CA (or plaintext if it has none) and
    /// waits for the address it listens on.
    pub async fn start(cluster: &Cluster) -> anyhow::Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("echo-server");
        if cluster.ca().is_some() {
            let tls = cluster.issue(gantry_pki::Role::Server, "echo")?;
            cmd.arg("--ca")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.cert)
                .arg("--key")
                .arg(&tls.key);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting `bench echo-server`")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("the echo server did not say where it listens within 10 s")??
            .context("the echo server exited before listening")?;
        let addr = first
            .strip_prefix("listening ")
            .with_context(|| format!("unexpected first line from the echo server: {first:?}"))?
            .to_owned();
        Ok(Self { addr, child })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// `bench echo-server`: serves until killed, after printing
/// `listening ADDR` on stdout.
pub async fn serve(tls: Option<TlsPaths>) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let transport = match &tls {
        Some(paths) => Transport::mtls(paths)?,
        None => Transport::insecure(),
    };
    let router = transport.server().add_service(JobServiceServer::new(Echo));
    match tls {
        Some(paths) => {
            let tls = reload::watch_files(paths, Duration::from_secs(60))?;
            router
                .serve_with_incoming(reload::incoming(listener, tls))
                .await?
        }
        None => {
            router
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                )
                .await?
        }
    }
    Ok(())
}

/// Answers every submission with fresh job ids, as a replica would after
/// its commit, and refuses everything else.
struct Echo;

fn only_submit() -> Status {
    Status::unimplemented("the echo server answers SubmitJobs only")
}

type Stream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Echo {
    type WatchStream = Stream<JobEvent>;
    type LogsStream = Stream<LogChunk>;

    async fn submit_jobs(
        &self,
        req: Request<SubmitJobsRequest>,
    ) -> Result<Response<SubmitJobsResponse>, Status> {
        let jobs = req
            .into_inner()
            .jobs
            .iter()
            .map(|_| SubmittedJob {
                job_id: uuid::Uuid::now_v7().to_string(),
                existing: false,
            })
            .collect();
        Ok(Response::new(SubmitJobsResponse {
            jobs,
            commit_index: 0,
        }))
    }

    async fn get_job(&self, _: Request<GetJobRequest>) -> Result<Response<GetJobResponse>, Status> {
        Err(only_submit())
    }

    async fn list_jobs(
        &self,
        _: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        Err(only_submit())
    }

    async fn cancel_job(
        &self,
        _: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        Err(only_submit())
    }

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(only_submit())
    }

    async fn logs(&self, _: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        Err(only_submit())
    }
}
