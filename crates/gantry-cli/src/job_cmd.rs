//! `gantry job ...`

use std::collections::HashMap;

use gantry_client::{ClientError, api};

use crate::output::{enum_name, json, table, time_ms};
use crate::{ClientArgs, Failure, parse};

#[derive(clap::Subcommand)]
pub enum JobCommand {
    /// Submit a job; prints its id. Everything after `--` is the command.
    Submit(Box<SubmitArgs>),
    /// Show one job and its tasks.
    Status {
        id: String,
        /// Read this replica's state without a linearizability check.
        #[arg(long)]
        stale: bool,
    },
    /// List jobs, oldest first.
    List {
        /// Only jobs in this state (pending, running, complete, failed, cancelled); repeatable.
        #[arg(long = "state")]
        states: Vec<String>,
        /// Only jobs whose name starts with this.
        #[arg(long)]
        name_prefix: Option<String>,
        /// Show at most this many jobs (all when 0).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        #[arg(long)]
        stale: bool,
    },
    /// Print a task's output: live while it runs, the stored tails after.
    Logs {
        id: String,
        #[arg(long, default_value_t = 0)]
        task: u32,
        /// Keep printing until the attempt ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Submit a job, stream its output, and exit with its exit code (like `docker run`).
    Run(Box<SubmitArgs>),
    /// Cancel a job.
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(clap::Args)]
pub struct SubmitArgs {
    #[arg(long, default_value = "")]
    name: String,
    /// Number of identical tasks.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// CPU per task: cores (0.5) or millicores (500m).
    #[arg(long, value_parser = parse::cpu_millis)]
    cpu: Option<u64>,
    /// Memory per task: MiB (512), 512Mi or 2Gi. Enforced on the node: a
    /// task that uses more is killed and reported out of memory.
    #[arg(long, value_parser = parse::memory_mib)]
    mem: Option<u64>,
    /// The user the tasks run as (a name or uid); the node must allow it
    /// (gantry agent --allow-task-user). Default: the node's task user.
    #[arg(long, default_value = "")]
    user: String,
    /// GPUs per task; the task sees exactly these through CUDA_VISIBLE_DEVICES.
    #[arg(long, default_value_t = 0)]
    gpus: u32,
    /// Only GPUs whose model contains this, e.g. A100 (implies --gpus 1 if unset).
    #[arg(long, default_value = "")]
    gpu_model: String,
    /// Only GPUs with at least this much memory: MiB, or 40Gi (implies --gpus 1 if unset).
    #[arg(long, value_parser = parse::memory_mib)]
    gpu_min_memory: Option<u64>,
    /// Placement policy: strict, balanced or aggressive (default: the cluster's).
    #[arg(long, default_value = "")]
    placement: String,
    /// Readiness probe: an HTTP GET, as [HOST:]PORT[/PATH]; 2xx or 3xx passes.
    #[arg(long, value_parser = parse::http_probe, group = "probe")]
    ready_http: Option<api::HttpProbe>,
    /// Readiness probe: a TCP connection to [HOST:]PORT.
    #[arg(long, value_parser = parse::tcp_probe, group = "probe")]
    ready_tcp: Option<api::TcpProbe>,
    /// Readiness probe: a command (split on spaces, no shell) that exits 0.
    #[arg(long, group = "probe")]
    ready_exec: Option<String>,
    /// How long the task may take to become ready before it fails (class warm-up).
    #[arg(long, value_parser = parse::duration_ms, default_value = "60s")]
    ready_warmup: u64,
    /// Time between probe tries.
    #[arg(long, value_parser = parse::duration_ms, default_value = "1s")]
    ready_interval: u64,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i32,
    /// Node label the task needs, KEY=VALUE; repeatable.
    #[arg(long = "label", value_parser = parse::key_value)]
    labels: Vec<(String, String)>,
    /// Environment variable, KEY=VALUE; repeatable.
    #[arg(long = "env", value_parser = parse::key_value)]
    env: Vec<(String, String)>,
    /// Working directory, relative to the attempt's own fresh directory
    /// (made if missing); an absolute path only where the node allows it
    /// (gantry agent --allow-workdir). Default: the fresh directory itself.
    #[arg(long, default_value = "")]
    workdir: String,
    /// Per-attempt timeout (30s, 5m, 1h).
    #[arg(long, value_parser = parse::duration_ms)]
    timeout: Option<u64>,
    /// Attempts allowed for workload failures (default 3).
    #[arg(long, default_value_t = 0)]
    max_attempts: u32,
    /// Makes retried submits return the original job.
    #[arg(long, default_value = "")]
    idempotency_key: String,
    /// Run the command through `sh -c` (the words after `--` are joined
    /// into one script). Without it, the command runs directly.
    #[arg(long)]
    shell: bool,
    /// Spread this job's tasks over nodes instead of packing them.
    #[arg(long)]
    spread: bool,
    /// How long the job is kept once finished before it is
    /// garbage-collected (30m, 12h, 7d, or forever). Default: the
    /// cluster's --job-retention (24h unless set).
    #[arg(long, value_parser = parse::retention_ms)]
    retention: Option<u64>,
    /// The program and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

impl SubmitArgs {
    fn readiness(&self) -> Option<api::Probe> {
        use api::probe::Check;
        let check = if let Some(h) = &self.ready_http {
            Check::Http(h.clone())
        } else if let Some(t) = &self.ready_tcp {
            Check::Tcp(t.clone())
        } else {
            Check::Exec(api::ExecProbe {
                argv: self
                    .ready_exec
                    .as_deref()?
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
            })
        };
        Some(api::Probe {
            check: Some(check),
            warmup_ms: self.ready_warmup,
            interval_ms: self.ready_interval,
            timeout_ms: 0,
        })
    }

    fn spec(self) -> api::JobSpec {
        let s = self;
        let readiness = s.readiness();
        let gpu_min_memory_mib = s.gpu_min_memory.unwrap_or(0);
        // Asking for a kind of GPU without a count means one of them.
        let gpus = if s.gpus == 0 && (!s.gpu_model.is_empty() || gpu_min_memory_mib > 0) {
            1
        } else {
            s.gpus
        };
        let argv = if s.shell {
            vec![s.command.join(" ")]
        } else {
            s.command
        };
        api::JobSpec {
            name: s.name,
            argv,
            shell: s.shell,
            spread: s.spread,
            env: s.env.into_iter().collect::<HashMap<_, _>>(),
            working_dir: s.workdir,
            resources: Some(api::Resources {
                cpu_millis: s.cpu.unwrap_or(0),
                memory_mib: s.mem.unwrap_or(0),
                gpus,
            }),
            gpu_model: s.gpu_model,
            gpu_min_memory_mib,
            placement: s.placement,
            readiness,
            constraints: s.labels.into_iter().collect(),
            count: s.count,
            priority: s.priority,
            timeout_ms: s.timeout.unwrap_or(0),
            max_attempts: s.max_attempts,
            idempotency_key: s.idempotency_key,
            user: s.user,
            retention_ms: s.retention,
        }
    }
}

pub async fn run(args: &ClientArgs, cmd: JobCommand) -> Result<(), Failure> {
    let client = args.client()?;
    match cmd {
        JobCommand::Logs { id, task, follow } => {
            let mut stream = client.logs(&id, task, follow).await?;
            while let Some(chunk) = stream.message().await.map_err(ClientError::Status)? {
                write_chunk(&chunk);
            }
        }
        JobCommand::Run(s) => {
            let mut spec = s.spec();
            // Like `docker run`: one try unless asked for more.
            if spec.max_attempts == 0 {
                spec.max_attempts = 1;
            }
            return run_job(&client, spec).await;
        }
        JobCommand::Submit(s) => {
            let resp = client.submit_jobs(vec![s.spec()]).await?;
            if args.json {
                return Ok(json(&resp)?);
            }
            for j in resp.jobs {
                println!("{}", j.job_id);
            }
        }
        JobCommand::Status { id, stale } => {
            let job = client.get_job(&id, stale).await?;
            if args.json {
                return Ok(json(&job)?);
            }
            print_job(&job);
        }
        JobCommand::List {
            states,
            name_prefix,
            limit,
            stale,
        } => {
            let states = states
                .iter()
                .map(|s| parse_state(s))
                .collect::<Result<Vec<_>, _>>()?;
            let mut jobs = Vec::new();
            let mut req = api::ListJobsRequest {
                states,
                name_prefix: name_prefix.unwrap_or_default(),
                page_size: 1000,
                page_token: String::new(),
                stale,
            };
            loop {
                let page = client.list_jobs(req.clone()).await?;
                jobs.extend(page.jobs);
                if page.next_page_token.is_empty() || (limit > 0 && jobs.len() >= limit) {
                    break;
                }
                req.page_token = page.next_page_token;
            }
            if limit > 0 {
                jobs.truncate(limit);
            }
            if args.json {
                return Ok(json(&jobs)?);
            }
            let rows: Vec<Vec<String>> = jobs.iter().map(job_row).collect();
            table(
                &[
                    "ID",
                    "NAME",
                    "STATE",
                    "TASKS",
                    "PRIORITY",
                    "SUBMITTED",
                    "COMMAND",
                ],
                &rows,
            );
        }
        JobCommand::Cancel { id, reason } => {
            let job = client.cancel_job(&id, &reason).await?;
            if args.json {
                return Ok(json(&job)?);
            }
            println!("{} {}", job.id, state_name(job.state));
        }
    }
    Ok(())
}

fn write_chunk(chunk: &api::LogChunk) {
    use std::io::Write;
    if chunk.stream == "stderr" {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&chunk.data);
        let _ = err.flush();
    } else {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&chunk.data);
        let _ = out.flush();
    }
}

/// `gantry job run`: submit, follow task 0's output attempt by attempt,
/// and exit as the task did.
async fn run_job(client: &gantry_client::Client, spec: api::JobSpec) -> Result<(), Failure> {
    let id = client.submit_jobs(vec![spec]).await?.jobs.remove(0).job_id;
    eprintln!("gantry: job {id} submitted");
    let mut followed = std::collections::BTreeSet::new();
    let mut watch = client.watch(&id, 0).await?;
    let job = loop {
        let Some(event) = watch.message().await.map_err(ClientError::Status)? else {
            // The replica went away: pick up where we were from another.
            watch = client.watch(&id, 0).await?;
            continue;
        };
        let Some(job) = event.job else { continue };
        let terminal = matches!(
            api::JobState::try_from(job.state),
            Ok(api::JobState::Complete | api::JobState::Failed | api::JobState::Cancelled)
        );
        if let Some(a) = job.tasks.first().and_then(|t| t.attempts.last())
            && matches!(a.state.as_str(), "assigned" | "running")
            && followed.insert(a.number)
        {
            let mut logs = client.logs(&id, 0, true).await?;
            while let Ok(Some(chunk)) = logs.message().await {
                write_chunk(&chunk);
            }
        }
        if terminal {
            break client.get_job(&id, false).await?;
        }
    };
    let last = job.tasks.first().and_then(|t| t.attempts.last()).cloned();
    if let Some(a) = &last
        && !followed.contains(&a.number)
    {
        // Finished before we could follow it live: print what was kept.
        for (stream, data) in [("stdout", &a.stdout_tail), ("stderr", &a.stderr_tail)] {
            write_chunk(&api::LogChunk {
                stream: stream.into(),
                data: data.clone().into_bytes(),
                ..Default::default()
            });
        }
    }
    let state = api::JobState::try_from(job.state).unwrap_or(api::JobState::Unspecified);
    let code = match (state, &last) {
        (api::JobState::Complete, _) => return Ok(()),
        (api::JobState::Cancelled, _) => 130,
        (_, Some(a)) if a.failure_class == "timeout" => 124,
        (_, Some(a)) => a.exit_code.map_or(1, |c| c.clamp(1, 255) as u8),
        (_, None) => 1,
    };
    let reason = job
        .tasks
        .first()
        .map(|t| t.failure_reason.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| state_name(job.state));
    Err(Failure {
        message: format!("job {id} {}: {reason}", state_name(job.state)),
        code,
    })
}

fn parse_state(s: &str) -> Result<i32, Failure> {
    let full = format!("JOB_STATE_{}", s.to_uppercase());
    api::JobState::from_str_name(&full)
        .filter(|s| *s != api::JobState::Unspecified)
        .map(|s| s as i32)
        .ok_or_else(|| Failure {
            message: format!("--state {s:?}: use pending, running, complete, failed or cancelled"),
            code: crate::EXIT_USAGE,
        })
}

fn state_name(v: i32) -> String {
    api::JobState::try_from(v)
        .map(|s| enum_name(s.as_str_name(), "JOB_STATE_"))
        .unwrap_or_else(|_| v.to_string())
}

fn job_row(j: &api::Job) -> Vec<String> {
    let spec = j.spec.clone().unwrap_or_default();
    let c = j.task_counts.unwrap_or_default();
    let total = c.pending + c.running + c.succeeded + c.failed + c.cancelled;
    vec![
        j.id.clone(),
        spec.name,
        state_name(j.state),
        format!("{}/{total} done", c.succeeded + c.failed + c.cancelled),
        spec.priority.to_string(),
        time_ms(j.submitted_at_ms),
        spec.argv.join(" "),
    ]
}

fn print_job(j: &api::Job) {
    let spec = j.spec.clone().unwrap_or_default();
    let r = spec.resources.unwrap_or_default();
    let fields = [
        ("ID", j.id.clone()),
        ("Name", spec.name.clone()),
        ("State", state_name(j.state)),
        ("Command", spec.argv.join(" ")),
        ("Submitted", time_ms(j.submitted_at_ms)),
        ("Updated", time_ms(j.updated_at_ms)),
        ("Priority", spec.priority.to_string()),
        (
            "Resources",
            format!(
                "cpu={}m mem={}MiB gpus={}",
                r.cpu_millis, r.memory_mib, r.gpus
            ),
        ),
        ("Max attempts", spec.max_attempts.to_string()),
        ("GPU kind", gpu_kind(&spec)),
        (
            "Placement",
            if spec.placement.is_empty() {
                "cluster default".into()
            } else {
                spec.placement.clone()
            },
        ),
        ("Readiness", probe_text(spec.readiness.as_ref())),
        ("Commit index", j.create_index.to_string()),
        (
            "Trace id",
            if j.trace_id.is_empty() {
                "-".into()
            } else {
                j.trace_id.clone()
            },
        ),
    ];
    for (k, v) in fields {
        println!("{k:<14}{v}");
    }
    if !j.cancel_reason.is_empty() {
        println!("{:<14}{}", "Cancelled", j.cancel_reason);
    }
    println!();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for t in &j.tasks {
        let state = api::TaskState::try_from(t.state)
            .map(|s| enum_name(s.as_str_name(), "TASK_STATE_"))
            .unwrap_or_default();
        if t.attempts.is_empty() {
            rows.push(vec![t.index.to_string(), state.clone(), "-".into()]);
        }
        for a in &t.attempts {
            let exit = match (a.exit_code, a.signal) {
                (Some(c), _) => c.to_string(),
                (None, Some(s)) => format!("signal {s}"),
                (None, None) => "-".into(),
            };
            rows.push(vec![
                t.index.to_string(),
                state.clone(),
                a.number.to_string(),
                a.node_id.clone(),
                a.state.clone(),
                exit,
                if a.failure_class.is_empty() {
                    "-".into()
                } else {
                    a.failure_class.clone()
                },
                time_ms(a.started_at_ms),
                time_ms(a.finished_at_ms),
                a.message.clone(),
            ]);
        }
        if !t.failure_reason.is_empty() {
            rows.push(vec![
                t.index.to_string(),
                state,
                "".into(),
                format!("failed: {}", t.failure_reason),
            ]);
        }
    }
    table(
        &[
            "TASK",
            "STATE",
            "ATTEMPT",
            "NODE",
            "ATTEMPT STATE",
            "EXIT",
            "FAILURE",
            "STARTED",
            "FINISHED",
            "MESSAGE",
        ],
        &rows,
    );
    for t in &j.tasks {
        for a in &t.attempts {
            if a.gpus.is_empty() && a.ready_at_ms == 0 && a.diagnostics.is_empty() {
                continue;
            }
            println!("\nTask {} attempt {}:", t.index, a.number);
            if !a.gpus.is_empty() {
                let gpus: Vec<String> = a.gpus.iter().map(u32::to_string).collect();
                println!("  GPUs       {}", gpus.join(","));
            }
            if a.ready_at_ms > 0 {
                println!("  Ready      {}", time_ms(a.ready_at_ms));
            }
            if !a.diagnostics.is_empty() {
                println!("  Diagnostics");
                for line in a.diagnostics.lines() {
                    println!("    {line}");
                }
            }
        }
    }
}

fn gpu_kind(spec: &api::JobSpec) -> String {
    let mut parts = Vec::new();
    if !spec.gpu_model.is_empty() {
        parts.push(format!("model ~ {:?}", spec.gpu_model));
    }
    if spec.gpu_min_memory_mib > 0 {
        parts.push(format!("memory >= {} MiB", spec.gpu_min_memory_mib));
    }
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(", ")
    }
}

fn probe_text(p: Option<&api::Probe>) -> String {
    use api::probe::Check;
    let Some(p) = p else {
        return "-".into();
    };
    let host = |h: &str| {
        if h.is_empty() {
            "127.0.0.1".to_owned()
        } else {
            h.to_owned()
        }
    };
    let what = match &p.check {
        Some(Check::Http(h)) => format!(
            "http GET http://{}:{}{}",
            host(&h.host),
            h.port,
            if h.path.is_empty() { "/" } else { &h.path }
        ),
        Some(Check::Tcp(t)) => format!("tcp {}:{}", host(&t.host), t.port),
        Some(Check::Exec(e)) => format!("exec {:?}", e.argv),
        None => "-".into(),
    };
    format!(
        "{what} (warm-up {} ms, every {} ms)",
        p.warmup_ms, p.interval_ms
    )
}
