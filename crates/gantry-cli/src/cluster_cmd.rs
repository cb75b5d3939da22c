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
}

pub async fn run(args: &ClientArgs, cmd: ClusterCommand) -> Result<(), Failure> {
    let client = args.client()?;
    let status = match cmd {
        ClusterCommand::Status => client.cluster_status().await?,
        ClusterCommand::AddReplica { id, address } => client.add_replica(id, &address).await?,
        ClusterCommand::RemoveReplica { id } => client.remove_replica(id).await?,
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
                r.error.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "ADDRESS", "ROLE", "VOTER", "TERM", "LAST LOG", "APPLIED", "ERROR",
        ],
        &rows,
    );
}
