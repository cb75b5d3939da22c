//! Apply rules newer than the first release's are turned on by the leader
//! (`Command::EnableRules`) only once every voter says its release knows
//! them: during a rolling upgrade the old and the new release apply every
//! entry the same way, and the new rules start at one index on all.

use std::sync::Arc;
use std::time::Duration;

use gantry_core::{Command, RULES};
use openraft::async_runtime::WatchReceiver;
use tokio::time::Instant;

use crate::replica::Replica;

/// How often the leader asks the voters until they all know the rules.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// On the leader: proposes `EnableRules` once every voter knows [`RULES`].
pub async fn enable_when_all_know(replica: Arc<Replica>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    let mut waiting_logged = false;
    loop {
        tick.tick().await;
        if replica.state.read(|s, _| s.rules()).await >= RULES {
            return;
        }
        let voters: Vec<(u64, String)> = {
            let rx = replica.raft.metrics();
            let m = rx.borrow_watched();
            let membership = m.membership_config.membership();
            let ids: Vec<u64> = membership.voter_ids().collect();
            membership
                .nodes()
                .filter(|(id, _)| ids.contains(id))
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect()
        };
        let mut behind = Vec::new();
        for (id, addr) in &voters {
            if *id == replica.id {
                continue;
            }
            if known_rules(&replica, *id, addr).await < RULES {
                behind.push(*id);
            }
        }
        if !behind.is_empty() {
            if !waiting_logged {
                tracing::info!(
                    ?behind,
                    rules = RULES,
                    "not every replica runs a release with this one's apply rules yet: keeping the older rules"
                );
                waiting_logged = true;
            }
            continue;
        }
        let deadline = Instant::now() + replica.config.request_timeout();
        let cmd = Command::EnableRules {
            now_ms: replica.now_ms(),
            rules: RULES,
        };
        match replica.write(cmd, deadline).await {
            Ok(_) => {
                tracing::info!(
                    rules = RULES,
                    "every replica knows apply rules {RULES}: turned on"
                );
                return;
            }
            Err(e) => tracing::warn!(error = %e, "could not turn on the new apply rules; retrying"),
        }
    }
}

/// The rules a peer's release knows (0 when it does not say: an older one,
/// or no answer).
async fn known_rules(replica: &Replica, peer: u64, addr: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(1);
    let asked = replica.port.local_status(peer, addr, deadline);
    match tokio::time::timeout_at(deadline, asked).await {
        Ok(Ok(r)) => r.rules,
        _ => 0,
    }
}
