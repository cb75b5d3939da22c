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
    /// One node in full: health and failing checks, GPUs, reputation, blacklist.
    Status {
        id: String,
        #[arg(long)]
        stale: bool,
    },
    /// No new tasks until whitelisted (running ones carry on).
    Blacklist {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Clear a blacklist (an operator's or an automatic one) and the node's infra-failure record.
    Whitelist { id: String },
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
        NodeCommand::Blacklist { id, reason } => {
            vec![client.set_blacklist(&id, true, &reason).await?]
        }
        NodeCommand::Whitelist { id } => vec![client.set_blacklist(&id, false, "").await?],
        NodeCommand::Status { id, stale } => {
            let node = client
                .list_nodes(stale)
                .await?
                .into_iter()
                .find(|n| n.id == id)
                .ok_or_else(|| Failure {
                    message: format!("node {id} not found"),
                    code: 1,
                })?;
            if args.json {
                return Ok(json(&node)?);
            }
            print_node(&node);
            return Ok(());
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
            "HEALTH",
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
        health(n),
        if n.session_replica == 0 {
            "-".into()
        } else {
            n.session_replica.to_string()
        },
        labels.join(","),
        time_ms(n.last_seen_ms),
    ]
}

/// "100", "80 unhealthy", "blacklisted" — the one word that matters first.
fn health(n: &Node) -> String {
    if n.blacklisted {
        format!("{} blacklisted", n.health_score)
    } else if n.healthy {
        n.health_score.to_string()
    } else {
        format!("{} unhealthy", n.health_score)
    }
}

fn print_node(n: &Node) {
    let cap = n.capacity.unwrap_or_default();
    let used = n.allocated.unwrap_or_default();
    let fields = [
        ("ID", n.id.clone()),
        ("Status", n.status.clone()),
        ("Eligibility", n.eligibility.clone()),
        (
            "Health",
            format!(
                "{} ({}), checked {}",
                n.health_score,
                if n.healthy { "healthy" } else { "unhealthy" },
                time_ms(n.last_check_ms)
            ),
        ),
        (
            "Blacklisted",
            if n.blacklisted {
                let until = if n.blacklisted_until_ms == 0 {
                    "until whitelisted".to_owned()
                } else {
                    format!("until {}", time_ms(n.blacklisted_until_ms))
                };
                format!("yes, {until}: {}", n.blacklist_reason)
            } else {
                "no".into()
            },
        ),
        (
            "Reputation",
            format!(
                "{:.1} infra failures, {:.1} successes (decayed, half-life 1h)",
                n.infra_failures, n.successes
            ),
        ),
        ("Tasks", n.running_tasks.to_string()),
        ("CPU", format!("{}/{}m", used.cpu_millis, cap.cpu_millis)),
        (
            "Memory",
            format!("{}/{}Mi", used.memory_mib, cap.memory_mib),
        ),
        ("Agent", n.agent_version.clone()),
        ("Last seen", time_ms(n.last_seen_ms)),
    ];
    for (k, v) in fields {
        println!("{k:<13}{v}");
    }
    if !n.failing_checks.is_empty() {
        println!("\nFailing checks");
        for c in &n.failing_checks {
            println!("  {:<10}{}", c.name, c.detail);
        }
    }
    if !n.gpus.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = n
            .gpus
            .iter()
            .map(|g| {
                // A powered GPU never reads 0 W and 0 C: until the agent's
                // first heartbeat brings telemetry there is no reading (seen
                // on an H200 right after the node registered).
                let read = g.power_mw > 0 || g.temperature_c > 0;
                let or_dash = |v: String| if read { v } else { "-".to_owned() };
                vec![
                    g.index.to_string(),
                    g.model.clone(),
                    g.uuid.clone(),
                    format!("{}/{}Mi", g.memory_used_mib, g.memory_total_mib),
                    or_dash(format!("{}%", g.utilization_percent)),
                    or_dash(format!("{}C", g.temperature_c)),
                    or_dash(format!("{:.0}W", f64::from(g.power_mw) / 1000.0)),
                    g.ecc_errors.to_string(),
                    if n.gpus_in_use.contains(&g.index) {
                        "yes"
                    } else {
                        "no"
                    }
                    .into(),
                ]
            })
            .collect();
        table(
            &[
                "GPU", "MODEL", "UUID", "MEMORY", "UTIL", "TEMP", "POWER", "ECC", "IN USE",
            ],
            &rows,
        );
    }
}
