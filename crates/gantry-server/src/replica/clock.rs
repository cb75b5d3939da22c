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

/// The leader's clock for log entries: its wall clock, moved forward by
/// as much as it was behind the latest entry in the state when it gained
/// leadership, and never earlier than the last time it stamped. Time in the
/// log never goes back across a change of leader, and goes on at the real
/// rate from the latest entry (a leader whose clock is behind does not
/// stall every backoff and deadline until its clock catches up).
pub struct EntryClock {
    last: AtomicU64,
    /// Added to the wall clock for this term.
    ahead_ms: AtomicU64,
    /// The term the clock is set for: a leader learns the latest entry time
    /// once per term, after applying what earlier leaders committed.
    term: AtomicU64,
    /// The wall clock (ms since the epoch): [`now_ms`], or the simulation's.
    wall: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl Default for EntryClock {
    fn default() -> Self {
        Self::with_wall(now_ms)
    }
}

impl EntryClock {
    /// A clock over another wall clock (the simulation's, skewed per replica).
    pub fn with_wall(wall: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self {
            last: AtomicU64::new(0),
            ahead_ms: AtomicU64::new(0),
            term: AtomicU64::new(0),
            wall: Box::new(wall),
        }
    }

    /// Whether the clock is set for `term`.
    pub fn established(&self, term: u64) -> bool {
        self.term.load(Ordering::Acquire) == term
    }

    /// Sets the clock for `term`, given the latest entry time in the state;
    /// returns how far the wall clock was behind it (ms).
    pub fn establish(&self, term: u64, latest_ms: u64) -> u64 {
        let behind = latest_ms.saturating_sub((self.wall)());
        self.ahead_ms.store(behind, Ordering::Relaxed);
        self.last.fetch_max(latest_ms, Ordering::Relaxed);
        self.term.store(term, Ordering::Release);
        behind
    }

    /// The wall clock this replica reads (ms since the epoch).
    pub fn wall(&self) -> u64 {
        (self.wall)()
    }

    /// The leader's time now: what deadlines in the state are compared with.
    pub fn now(&self) -> u64 {
        (self.wall)().saturating_add(self.ahead_ms.load(Ordering::Relaxed))
    }

    /// The time to stamp the next entry with.
    pub fn stamp(&self) -> u64 {
        if crate::plant::planted(crate::plant::Plant::RawEntryStamps) {
            return (self.wall)();
        }
        let now = self.now();
        self.last.fetch_max(now, Ordering::Relaxed).max(now)
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
    fn stamps_never_go_back_and_go_on_from_the_latest_entry() {
        let c = EntryClock::default();
        let a = c.stamp();
        assert!(c.stamp() >= a);
        // A new term on a replica whose clock is a minute behind the log.
        let latest = now_ms() + 60_000;
        let behind = c.establish(2, latest);
        assert!((59_000..=60_000).contains(&behind), "{behind}");
        assert!(c.established(2) && !c.established(3));
        let s = c.stamp();
        assert!(s >= latest, "no stamp before the latest entry");
        assert!(
            s < latest + 1_000,
            "time goes on from the latest entry, not stalled"
        );
        assert!(c.now() >= latest);
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
