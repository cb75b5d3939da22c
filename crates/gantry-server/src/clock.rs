//! The one place a replica reads the wall clock. Proposers stamp commands
//! with it once per request; apply never reads it (invariant 5).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Past this, a replica's clock is reported as skewed (a warning, the
/// metric, `gantry cluster status`). Entry times never come from a
/// follower's clock, so a skew this large costs nothing but display.
pub const SKEW_WARN: Duration = Duration::from_millis(500);
/// How often a replica whose clock stays skewed says so again.
const SKEW_WARN_EVERY: Duration = Duration::from_secs(60);

/// The leader's clock for log entries: its wall clock, but never earlier
/// than the last time it stamped, nor than the latest entry time in the
/// state when it gained leadership (time in the log never goes back
/// across a change of leader).
#[derive(Default)]
pub struct EntryClock {
    last: AtomicU64,
}

impl EntryClock {
    /// The time to stamp the next entry with.
    pub fn stamp(&self) -> u64 {
        let now = now_ms();
        self.last.fetch_max(now, Ordering::Relaxed).max(now)
    }

    /// No later stamp is earlier than `t`.
    pub fn not_before(&self, t: u64) {
        self.last.fetch_max(t, Ordering::Relaxed);
    }
}

/// This replica's clock against the leader's, measured on the session
/// reports every replica sends the leader.
#[derive(Default)]
pub struct Skew {
    /// Leader minus this replica, in ms.
    offset_ms: AtomicI64,
    measured: AtomicBool,
    warned_at_ms: AtomicU64,
}

impl Skew {
    /// A round trip: sent at `sent_ms`, answered at `received_ms` (both by
    /// this replica's clock), the leader's clock reading `leader_ms` in
    /// between. The offset is taken against the midpoint.
    pub fn record(&self, sent_ms: u64, received_ms: u64, leader_ms: u64) {
        let mid = (i128::from(sent_ms) + i128::from(received_ms)) / 2;
        let offset = i64::try_from(i128::from(leader_ms) - mid).unwrap_or(i64::MAX);
        self.set(offset);
    }

    /// The leader measures nothing: its offset is 0 by definition.
    pub fn set(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
        self.measured.store(true, Ordering::Relaxed);
        if offset_ms.unsigned_abs() > SKEW_WARN.as_millis() as u64 {
            let now = now_ms();
            let last = self.warned_at_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= SKEW_WARN_EVERY.as_millis() as u64 {
                self.warned_at_ms.store(now, Ordering::Relaxed);
                tracing::warn!(
                    offset_ms,
                    bound_ms = SKEW_WARN.as_millis() as u64,
                    "this replica's clock differs from the leader's by more than the bound (offset = leader - this replica); entry times come from the leader, but fix the clock (NTP)"
                );
            }
        } else if self.warned_at_ms.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!(
                offset_ms,
                "this replica's clock agrees with the leader's again"
            );
        }
    }

    /// The last measured offset (leader minus this replica), if any.
    pub fn offset_ms(&self) -> Option<i64> {
        self.measured
            .load(Ordering::Relaxed)
            .then(|| self.offset_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_never_go_back() {
        let c = EntryClock::default();
        let future = now_ms() + 60_000;
        c.not_before(future);
        assert!(c.stamp() >= future);
        let a = c.stamp();
        let b = c.stamp();
        assert!(b >= a);
    }

    #[test]
    fn offset_against_the_midpoint() {
        let s = Skew::default();
        assert_eq!(s.offset_ms(), None);
        s.record(1_000, 1_010, 61_005);
        assert_eq!(s.offset_ms(), Some(60_000));
        s.record(1_000, 1_010, 1_005);
        assert_eq!(s.offset_ms(), Some(0));
        s.record(61_000, 61_010, 1_005);
        assert_eq!(s.offset_ms(), Some(-60_000));
    }
}
