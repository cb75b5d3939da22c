//! The node's lease: how long the cluster is known not to have given this
//! node's tasks away (docs/architecture.md, "Fencing the node edge").

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Shared, supervisor};

/// The least time between a confirmation and the fence that the agent
/// accepts: below it every hiccup would stop the node's tasks.
pub const MIN_FENCE_WINDOW: Duration = Duration::from_secs(2);
/// The node grace assumed with a replica too old to say it.
const LEGACY_NODE_GRACE_MS: u64 = 10_000;

/// Heartbeats before the first confirmed lease come this often.
pub(crate) const FIRST_LEASE_POLL: Duration = Duration::from_millis(100);

/// How long a new attempt waits for the node's first confirmed lease.
pub(crate) const LEASE_WAIT: Duration = Duration::from_secs(10);

/// Logs when the lease lapses with attempts running (their supervisors stop
/// them) and when it is renewed again.
pub(crate) async fn fence_watch(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut lapsed = false;
    loop {
        tick.tick().await;
        let lease = *shared.lease.borrow();
        let now = supervisor::boot_ms();
        let running = shared.running.lock().await.len();
        // No lease yet (a fresh agent) is not a lapse.
        if lease != 0 && lease <= now && running > 0 && !lapsed {
            lapsed = true;
            tracing::error!(
                running,
                "the cluster has not confirmed this node in time: stopping its tasks before the cluster gives them to another node"
            );
        } else if lease > now && lapsed {
            lapsed = false;
            tracing::info!("the cluster confirms this node again");
        }
    }
}

/// Extends the lease from a pong. The heartbeat it answers left at `sent`
/// (CLOCK_BOOTTIME ms); the replica's report that the leader acknowledged
/// was sent `confirmed_ago` before the pong, so no earlier than
/// `sent - confirmed_ago`, and the leader's confirmation came later still.
/// The leader marks the node lost no sooner than a node grace after its
/// last confirmation: stopping the tasks a margin before that, measured
/// from this lower bound, is stopping them before the cluster can run them
/// elsewhere (docs/architecture.md, "Fencing").
pub(crate) fn renew_lease(shared: &Shared, sent: u64, confirmed_ago: Option<u64>) {
    let grace = shared.grace_ms.load(Ordering::Relaxed);
    let (at, grace) = match (grace, confirmed_ago) {
        // A replica from before leases: the pong itself is all there is.
        (0, _) => (sent, LEGACY_NODE_GRACE_MS),
        (g, Some(ago)) => (sent.saturating_sub(ago), g),
        (_, None) => return,
    };
    let margin = u64::try_from(shared.cfg.fence_margin.as_millis()).unwrap_or(u64::MAX);
    let lease = (at + grace).saturating_sub(margin);
    let now = supervisor::boot_ms();
    shared.lease.send_if_modified(|l| {
        if *l != 0 && *l <= now {
            shared.last_lapse.fetch_max(*l, Ordering::Relaxed);
        }
        let later = lease > *l;
        if later {
            *l = lease;
        }
        later
    });
}

/// The cluster's node grace must leave the fence margin room: refused on
/// the first connection, warned about on a later one (another replica's
/// setting) and the lease then kept short.
pub(crate) fn check_grace(shared: &Shared, grace_ms: u64) -> Result<(), tonic::Status> {
    let margin = shared.cfg.fence_margin;
    if margin < Duration::from_secs(1) {
        tracing::warn!(
            ?margin,
            "a fence margin under 1 s may not cover the time to stop a task and machines' clock differences"
        );
    }
    if grace_ms == 0 {
        tracing::warn!(
            "this replica does not say its node grace (an older release): fencing assumes 10 s"
        );
    }
    let grace = Duration::from_millis(grace_ms);
    if grace_ms > 0 && grace < margin + MIN_FENCE_WINDOW {
        let reason = format!(
            "the cluster's node grace ({grace:?}) leaves less than {MIN_FENCE_WINDOW:?} after this agent's fence margin ({margin:?}): tasks would be stopped at every hiccup. Lower --fence-margin on the agent or raise --node-grace-ms on the replicas"
        );
        if shared.stats.streams_opened.load(Ordering::Relaxed) <= 1 {
            tracing::error!("{reason}");
            shared.fatal.send_replace(Some(reason.clone()));
            return Err(tonic::Status::failed_precondition(reason));
        }
        tracing::warn!("{reason}");
    }
    shared.grace_ms.store(grace_ms, Ordering::Relaxed);
    Ok(())
}
