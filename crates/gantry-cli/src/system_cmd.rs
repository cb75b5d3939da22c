//! `gantry system ...`: cluster-wide maintenance.

use crate::output::json;
use crate::{ClientArgs, Failure};

#[derive(clap::Subcommand)]
pub enum SystemCommand {
    /// Garbage-collect finished jobs now (the leader also does so every
    /// --gc-interval): those past their retention, or with --older-than
    /// every job finished at least that long ago, whatever its retention.
    Gc {
        /// Collect every job finished at least this long ago (0s: every
        /// finished job).
        #[arg(long, value_parser = crate::parse::duration_ms)]
        older_than: Option<u64>,
    },
}

pub async fn run(args: &ClientArgs, cmd: SystemCommand) -> Result<(), Failure> {
    match cmd {
        SystemCommand::Gc { older_than } => {
            let r = args.client()?.collect_garbage(older_than).await?;
            if args.json {
                // Both numbers always, zeros too.
                let out = serde_json::json!({"collected": r.collected, "remaining": r.remaining});
                return Ok(json(&out)?);
            }
            println!(
                "collected {} finished job(s); {} job(s) remain",
                r.collected, r.remaining
            );
            Ok(())
        }
    }
}
