//! `gantry node ...`

use gantry_client::api::{Eligibility, Node};

use crate::output::{json, table, time_ms};
use crate::{ClientArgs, Failure, parse};

#[derive(clap::Subcommand)]
pub enum NodeCommand {
    /// Every node: status, eligibility, capacity, allocation, running tasks.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// No new tasks on the node; running ones carry on.
    Cordon { id: String },
    /// Let the node take new tasks again.
    Uncordon { id: String },
    /// No new tasks; running ones get until the deadline.
    Drain {
        id: String,
        #[arg(long, value_parser = parse::duration_ms, default_value = "5m")]
        deadline: u64,
    },
}

pub async fn run(args: &ClientArgs, cmd: NodeCommand) -> Result<(), Failure> {
    let client = args.client()?;
    let nodes = match cmd {
        NodeCommand::List { stale } => client.list_nodes(stale).await?,
        NodeCommand::Cordon { id } => vec![
            client
                .set_eligibility(&id, Eligibility::Cordoned, 0)
                .await?,
        ],
        NodeCommand::Uncordon { id } => {
            vec![
                client
                    .set_eligibility(&id, Eligibility::Eligible, 0)
                    .await?,
            ]
        }
        NodeCommand::Drain { id, deadline } => {
            vec![
                client
                    .set_eligibility(&id, Eligibility::Draining, deadline)
                    .await?,
            ]
        }
    };
    if args.json {
        return Ok(json(&nodes)?);
    }
    let rows: Vec<Vec<String>> = nodes.iter().map(row).collect();
    table(
        &[
            "ID",
            "STATUS",
            "ELIGIBILITY",
            "TASKS",
            "CPU",
            "MEMORY",
            "GPUS",
            "REPLICA",
            "LABELS",
            "LAST SEEN",
        ],
        &rows,
    );
    Ok(())
}

fn row(n: &Node) -> Vec<String> {
    let cap = n.capacity.unwrap_or_default();
    let used = n.allocated.unwrap_or_default();
    let mut labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    vec![
        n.id.clone(),
        n.status.clone(),
        n.eligibility.clone(),
        if n.max_tasks == 0 {
            n.running_tasks.to_string()
        } else {
            format!("{}/{}", n.running_tasks, n.max_tasks)
        },
        format!("{}/{}m", used.cpu_millis, cap.cpu_millis),
        format!("{}/{}Mi", used.memory_mib, cap.memory_mib),
        format!("{}/{}", used.gpus, cap.gpus),
        if n.session_replica == 0 {
            "-".into()
        } else {
            n.session_replica.to_string()
        },
        labels.join(","),
        time_ms(n.last_seen_ms),
    ]
}
