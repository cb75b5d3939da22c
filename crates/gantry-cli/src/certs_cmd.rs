//! `gantry certs init` and `gantry certs issue`: the cluster CA and role
//! certificates (rcgen). Keys are written 0600; nothing is overwritten.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use gantry_pki::{Identity, LeafSpec, Pair, Role};

use crate::{EXIT_USAGE, Failure};

#[derive(clap::Subcommand)]
pub enum CertsCommand {
    /// Make a new CA and the certificates of a cluster in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// A replica: NAME=HOST (HOST is an IP or DNS name it is reached at); repeatable.
        #[arg(long = "server", value_parser = parse_server)]
        servers: Vec<(String, String)>,
        /// An agent's node name; repeatable.
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// The client (CLI) certificate's name.
        #[arg(long, default_value = "admin")]
        client: String,
        /// Validity of every certificate, in days (the CA gets ten times as long).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Issue one certificate from an existing CA.
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        role: Role,
        #[arg(long)]
        name: String,
        #[arg(long)]
        dns: Vec<String>,
        #[arg(long)]
        ip: Vec<IpAddr>,
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_server(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, h)) if !n.is_empty() && !h.is_empty() => Ok((n.to_owned(), h.to_owned())),
        _ => Err(format!("{s:?} is not NAME=HOST")),
    }
}

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure {
        message: e.to_string(),
        code: 1,
    }
}

fn leaf(role: Role, name: &str, hosts: &[String], days: u32) -> LeafSpec {
    let (ips, dns): (Vec<&String>, Vec<&String>) =
        hosts.iter().partition(|h| h.parse::<IpAddr>().is_ok());
    LeafSpec {
        identity: Identity {
            role,
            name: name.to_owned(),
        },
        dns: dns.into_iter().cloned().collect(),
        ips: ips.into_iter().filter_map(|h| h.parse().ok()).collect(),
        days,
        backdate_days: 0,
    }
}

fn issue_into(ca: &Pair, spec: &LeafSpec, out: &Path) -> Result<(), Failure> {
    let pair = gantry_pki::issue(ca, spec).map_err(fail)?;
    let stem = format!("{}-{}", spec.identity.role.as_str(), spec.identity.name);
    let (cert, key) = gantry_pki::write_pair(out, &stem, &pair).map_err(fail)?;
    println!(
        "{}  {}  ({})",
        cert.display(),
        key.display(),
        spec.identity.uri()
    );
    Ok(())
}

pub fn run(cmd: CertsCommand) -> Result<(), Failure> {
    match cmd {
        CertsCommand::Init {
            dir,
            servers,
            agents,
            client,
            days,
        } => {
            if dir.join(gantry_pki::CA_CERT).exists() {
                return Err(Failure {
                    message: format!(
                        "{} already holds a CA; refusing to overwrite (use `gantry certs issue --ca-dir {}` to add certificates)",
                        dir.display(),
                        dir.display()
                    ),
                    code: EXIT_USAGE,
                });
            }
            let ca = gantry_pki::new_ca(days.saturating_mul(10)).map_err(fail)?;
            gantry_pki::write_pair(&dir, "ca", &ca).map_err(fail)?;
            println!(
                "{}  (the cluster CA; keep ca-key.pem offline)",
                dir.join("ca.pem").display()
            );
            for (name, host) in &servers {
                let mut hosts = vec![host.clone()];
                if host != "localhost" {
                    hosts.push("localhost".into());
                }
                issue_into(&ca, &leaf(Role::Server, name, &hosts, days), &dir)?;
            }
            for name in &agents {
                issue_into(&ca, &leaf(Role::Agent, name, &[], days), &dir)?;
            }
            issue_into(&ca, &leaf(Role::Client, &client, &[], days), &dir)?;
            Ok(())
        }
        CertsCommand::Issue {
            ca_dir,
            role,
            name,
            dns,
            ip,
            days,
            out,
        } => {
            let ca = gantry_pki::load_ca(&ca_dir).map_err(fail)?;
            let spec = LeafSpec {
                identity: Identity { role, name },
                dns,
                ips: ip,
                days,
                backdate_days: 0,
            };
            issue_into(&ca, &spec, &out)
        }
    }
}
