//! `gantry cluster ...`

use gantry_client::api::ClusterStatusResponse;

use crate::output::{json, table};
use crate::{ClientArgs, Failure};

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Every replica's role, term and log position.
    Status,
    /// Add a replica (start it first with `gantry server --join`).
    AddReplica {
        #[arg(long)]
        id: u64,
        /// HOST:PORT the other replicas reach it at.
        #[arg(long)]
        address: String,
    },
    /// Remove a replica from the cluster.
    RemoveReplica {
        #[arg(long)]
        id: u64,
    },
    /// Back up or restore the whole replicated state (jobs and nodes).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Ask each replica in --servers for its gRPC health (grpc.health.v1):
    /// exit 0 when every one is SERVING (in a quorum), 1 otherwise. For
    /// container and load-balancer health checks.
    Health {
        /// The service to ask about ("" is the replica as a whole).
        #[arg(long, default_value = "")]
        service: String,
        /// Give up on a replica after this long.
        #[arg(long, value_parser = crate::parse::duration_ms, default_value = "3s")]
        timeout: u64,
    },
}

#[derive(clap::Subcommand)]
pub enum SnapshotCommand {
    /// Write a consistent copy of the state to FILE (replaced atomically).
    Save { file: std::path::PathBuf },
    /// Replace the cluster's state with FILE's. Refused while the cluster
    /// holds jobs, unless --force.
    Restore {
        file: std::path::PathBuf,
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(args: &ClientArgs, cmd: ClusterCommand) -> Result<(), Failure> {
    let status = match cmd {
        // Asks each replica itself, not the cluster through any of them.
        ClusterCommand::Health { service, timeout } => {
            return health(args, &service, std::time::Duration::from_millis(timeout)).await;
        }
        ClusterCommand::Snapshot { command } => {
            return snapshot(args, &args.client()?, command).await;
        }
        ClusterCommand::Status => args.client()?.cluster_status().await?,
        ClusterCommand::AddReplica { id, address } => {
            args.client()?.add_replica(id, &address).await?
        }
        ClusterCommand::RemoveReplica { id } => args.client()?.remove_replica(id).await?,
    };
    if args.json {
        return Ok(json(&status)?);
    }
    print_status(&status);
    Ok(())
}

fn print_status(s: &ClusterStatusResponse) {
    let leader = if s.leader_id == 0 {
        "none".to_owned()
    } else {
        s.leader_id.to_string()
    };
    println!(
        "leader: {leader}  term: {}  (answered by replica {})",
        s.term, s.answered_by
    );
    let rows: Vec<Vec<String>> = s
        .replicas
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.address.clone(),
                r.role.clone(),
                if r.voter { "yes" } else { "no" }.to_owned(),
                r.term.to_string(),
                r.last_log_index.to_string(),
                r.applied_index.to_string(),
                clock(r),
                disk(r),
                r.error.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "ADDRESS", "ROLE", "VOTER", "TERM", "LAST LOG", "APPLIED", "CLOCK", "DISK",
            "ERROR",
        ],
        &rows,
    );
}

/// The replica's clock against the leader's; flagged past the warning bound.
fn clock(r: &gantry_client::api::ReplicaStatus) -> String {
    match r.clock_offset_ms {
        None => "-".to_owned(),
        Some(ms) if ms.unsigned_abs() > 500 => {
            format!("SKEWED {:+.1}s", -(ms as f64) / 1000.0)
        }
        Some(ms) => format!("{:+}ms", -ms),
    }
}

/// Free space in the replica's data dir; NOSPACE while below its reserve.
fn disk(r: &gantry_client::api::ReplicaStatus) -> String {
    if r.role == "unreachable" {
        return "-".to_owned();
    }
    let mib = r.data_dir_free_bytes / (1024 * 1024);
    if r.nospace_alarm {
        format!("NOSPACE {mib}MiB free")
    } else {
        format!("{mib}MiB free")
    }
}

async fn snapshot(
    args: &ClientArgs,
    client: &gantry_client::Client,
    cmd: SnapshotCommand,
) -> Result<(), Failure> {
    match cmd {
        SnapshotCommand::Save { file } => {
            let (data, index) = client.save_snapshot().await?;
            // Written beside the target, then renamed: a crash leaves the old
            // file or the new one, never half of one.
            let tmp = file.with_extension("partial");
            std::fs::write(&tmp, &data)
                .and_then(|()| std::fs::rename(&tmp, &file))
                .map_err(|e| Failure {
                    message: format!("cannot write {}: {e}", file.display()),
                    code: 1,
                })?;
            if args.json {
                println!(
                    "{{\"file\":{:?},\"bytes\":{},\"index\":{index}}}",
                    file.display().to_string(),
                    data.len()
                );
            } else {
                println!(
                    "saved {} bytes to {} (state as of log index {index})",
                    data.len(),
                    file.display()
                );
            }
        }
        SnapshotCommand::Restore { file, force } => {
            let data = std::fs::read(&file).map_err(|e| Failure {
                message: format!("cannot read {}: {e}", file.display()),
                code: 1,
            })?;
            let r = client.restore_snapshot(&data, force).await?;
            if args.json {
                return Ok(json(&r)?);
            }
            println!(
                "restored {} jobs and {} nodes from {} (log index {})",
                r.jobs,
                r.nodes,
                file.display(),
                r.commit_index
            );
        }
    }
    Ok(())
}

/// `gantry cluster health`: the gRPC health service of each given replica.
async fn health(
    args: &ClientArgs,
    service: &str,
    timeout: std::time::Duration,
) -> Result<(), Failure> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    if args.servers.is_empty() {
        return Err(Failure {
            message: "give the replicas to check with --servers HOST:PORT,...".into(),
            code: crate::EXIT_USAGE,
        });
    }
    let transport = args.security.transport()?;
    let mut all_serving = true;
    for addr in &args.servers {
        let status = async {
            let channel = transport.channel(addr).map_err(|e| e.to_string())?;
            let req = HealthCheckRequest {
                service: service.to_owned(),
            };
            let reply = tokio::time::timeout(timeout, HealthClient::new(channel).check(req))
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))?
                .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
            Ok::<_, String>(reply.into_inner().status())
        }
        .await;
        let line = match status {
            Ok(ServingStatus::Serving) => "SERVING".to_owned(),
            Ok(other) => {
                all_serving = false;
                other.as_str_name().to_owned()
            }
            Err(e) => {
                all_serving = false;
                format!("UNREACHABLE ({e})")
            }
        };
        println!("{addr}  {line}");
    }
    if all_serving {
        Ok(())
    } else {
        Err(Failure {
            message: "not every replica is serving".into(),
            code: 1,
        })
    }
}
