//! `gantry.v1.JobService`: authenticate (later) → validate → take the time
//! and ids once → commit through the leader → answer.

use std::sync::Arc;

use gantry_core::limits::{validate_batch, validate_reason};
use gantry_core::{Command, JobFilter, NewJob, Outcome};
use gantry_proto::v1::job_service_server::JobService;
use gantry_proto::v1::{
    CancelJobRequest, CancelJobResponse, GetJobRequest, GetJobResponse, JobEvent, ListJobsRequest,
    ListJobsResponse, LogChunk, LogsRequest, SubmitJobsRequest, SubmitJobsResponse, SubmittedJob,
    WatchRequest,
};
use tonic::{Request, Response, Status};

use crate::api::convert::{job_state_from_api, job_to_api, spec_from_api};
use crate::api::deadline::deadline;
use crate::api::error;
use crate::ops::auth;
use crate::replica::Replica;
use crate::replica::clock::now_ms;

/// ListJobs page size when the request gives none, and the most it may ask for.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1_000;

pub struct JobApi {
    pub(crate) replica: Arc<Replica>,
}

fn require_job_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("job_id: is empty"));
    }
    if id.len() > gantry_core::limits::MAX_NAME_BYTES {
        return Err(Status::invalid_argument(
            "job_id: is too long to be a job id",
        ));
    }
    Ok(())
}

type Stream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    type WatchStream = Stream<JobEvent>;
    type LogsStream = Stream<LogChunk>;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        if !req.job_id.is_empty() {
            require_job_id(&req.job_id)?;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(crate::api::watch::WATCH_QUEUE);
        tokio::spawn(crate::api::watch::watch_jobs(
            self.replica.clone(),
            req.job_id,
            req.from_index,
            tx,
        ));
        Ok(Response::new(Box::pin(self.replica.until_stopped(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))))
    }

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let deadline = deadline(&req, self.replica.config.request_timeout());
        let req = req.into_inner();
        require_job_id(&req.job_id)?;
        self.replica.read_barrier(deadline).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(crate::api::watch::WATCH_QUEUE);
        let replica = self.replica.clone();
        let err_tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) =
                crate::api::watch::logs(replica, req.job_id, req.task, req.follow, tx).await
            {
                let _ = err_tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(Box::pin(self.replica.until_stopped(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))))
    }

    async fn submit_jobs(
        &self,
        req: Request<SubmitJobsRequest>,
    ) -> Result<Response<SubmitJobsResponse>, Status> {
        let caller = auth::identity(&req);
        // Only clients may submit (WRITE), so a client's name is its key;
        // without TLS there are no identities and all callers share one.
        let key = caller.as_ref().map_or("anonymous", |c| c.name.as_str());
        if let Err(wait) = self.replica.submit_limit.take(key).await {
            let who = caller.map_or_else(|| "anonymous".to_owned(), |c| c.to_string());
            return Err(Status::resource_exhausted(format!(
                "submit rate limit for {who} reached ({} requests/s); retry in {} ms",
                self.replica.config.submit_rate,
                wait.as_millis().max(1)
            )));
        }
        let deadline = deadline(&req, self.replica.config.request_timeout());
        let specs = req
            .into_inner()
            .jobs
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                spec_from_api(s)
                    .map_err(|e| Status::invalid_argument(format!("jobs[{i}].{}", e.message())))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        validate_batch(&specs).map_err(error::invalid)?;
        let tasks = specs.iter().map(|s| u64::from(s.count.max(1))).sum();
        self.replica.admission.check(&self.replica, tasks)?;
        // The request's span (a child of the caller's, see grpc_metrics):
        // every job in the batch lives in this trace.
        let trace_parent = gantry_telemetry::otel::traceparent();
        // Time-ordered ids (UUIDv7): new jobs land at the end of the state's
        // job index, whose nodes stay in cache, instead of at random places
        // in it; listings in id order are in submission order.
        let jobs = specs
            .into_iter()
            .map(|spec| NewJob {
                id: uuid::Uuid::now_v7().to_string(),
                spec,
                trace_parent: trace_parent.clone(),
            })
            .collect();
        let cmd = Command::SubmitJobs {
            now_ms: now_ms(),
            jobs,
        };
        let (outcome, index) = self.replica.write(cmd, deadline).await?;
        let Outcome::Submitted(result) = outcome else {
            return Err(error::unexpected_outcome("SubmitJobs"));
        };
        let submitted = result.map_err(error::submit)?;
        Ok(crate::api::forward::write_reply(
            &self.replica,
            SubmitJobsResponse {
                jobs: submitted
                    .into_iter()
                    .map(|s| SubmittedJob {
                        job_id: s.job_id,
                        existing: s.existing,
                    })
                    .collect(),
                commit_index: index,
            },
        ))
    }

    async fn get_job(
        &self,
        req: Request<GetJobRequest>,
    ) -> Result<Response<GetJobResponse>, Status> {
        let deadline = deadline(&req, self.replica.config.request_timeout());
        let req = req.into_inner();
        require_job_id(&req.job_id)?;
        if !req.stale {
            self.replica.read_barrier(deadline).await?;
        }
        let job = self
            .replica
            .state
            .read(|s, _| s.job(&req.job_id).map(|j| job_to_api(j, true)))
            .await
            .ok_or_else(|| crate::api::error::job_not_found(&req.job_id))?;
        Ok(Response::new(GetJobResponse { job: Some(job) }))
    }

    async fn list_jobs(
        &self,
        req: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let deadline = deadline(&req, self.replica.config.request_timeout());
        let req = req.into_inner();
        let filter = JobFilter {
            states: req
                .states
                .iter()
                .map(|s| job_state_from_api(*s))
                .collect::<Result<_, _>>()?,
            name_prefix: req.name_prefix,
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(req.page_token.parse::<u64>().map_err(|_| {
                Status::invalid_argument(
                    "page_token: not a token from a previous ListJobs response",
                )
            })?)
        };
        let limit = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        } as usize;
        if !req.stale {
            self.replica.read_barrier(deadline).await?;
        }
        let page = self
            .replica
            .state
            .read(|s, _| s.list_jobs(&filter, after, limit))
            .await;
        Ok(Response::new(ListJobsResponse {
            jobs: page.jobs.iter().map(|j| job_to_api(j, false)).collect(),
            next_page_token: page.next_after.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    async fn cancel_job(
        &self,
        req: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        let deadline = deadline(&req, self.replica.config.request_timeout());
        let req = req.into_inner();
        require_job_id(&req.job_id)?;
        validate_reason(&req.reason).map_err(error::invalid)?;
        let cmd = Command::CancelJob {
            now_ms: now_ms(),
            job_id: req.job_id,
            reason: req.reason,
        };
        let (outcome, _) = self.replica.write(cmd, deadline).await?;
        let Outcome::Cancelled(result) = outcome else {
            return Err(error::unexpected_outcome("CancelJob"));
        };
        let job = result.map_err(error::cancel)?;
        Ok(crate::api::forward::write_reply(
            &self.replica,
            CancelJobResponse {
                job: Some(job_to_api(&job, true)),
            },
        ))
    }
}
