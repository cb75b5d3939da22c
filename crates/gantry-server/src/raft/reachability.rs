//! Whether a peer replica answers, and how long to wait before trying it
//! again when it does not.
//!
//! openraft opens a new replication stream as soon as the last one failed,
//! and its own backoff only paces requests inside a stream that opened: to a
//! replica that refuses connections the leader would reconnect (and log)
//! thousands of times a second. The Raft network asks [`Reachability::wait`]
//! before each connection, so failures back off exponentially up to a cap and
//! a success resets them; what happened is logged once when a peer becomes
//! unreachable, once when it is back, and as a summary in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The first pause after a failure; each further failure doubles it.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// The longest pause: how late, at most, a leader notices a peer is back.
pub const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// How often a peer that stays unreachable is mentioned in the log.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// One peer's record, shared by the clients openraft makes for it.
#[derive(Clone)]
pub struct Reachability {
    target: u64,
    addr: Arc<str>,
    /// Consecutive failures; read without the lock on every success.
    failures: Arc<AtomicU32>,
    down: Arc<Mutex<Option<Down>>>,
    /// Test-only: no backoff at all, to prove the cost checks can fail.
    no_backoff: bool,
}

/// Since when a peer has not answered, and what was said about it.
struct Down {
    since: Instant,
    next_try: Instant,
    attempts_since_summary: u64,
    last_summary: Instant,
    last_error: String,
}

/// The pause before the next try after `failures` consecutive failures.
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_CAP)
}

impl Reachability {
    pub fn new(target: u64, addr: &str) -> Self {
        Self {
            target,
            addr: addr.into(),
            failures: Arc::default(),
            down: Arc::default(),
            no_backoff: no_backoff_switch(),
        }
    }

    /// Waits until the peer may be tried again (at once when it last answered).
    pub async fn wait(&self) {
        if self.no_backoff || self.failures.load(Ordering::Relaxed) == 0 {
            return;
        }
        let next_try = self.down.lock().await.as_ref().map(|d| d.next_try);
        if let Some(t) = next_try {
            tokio::time::sleep_until(t).await;
        }
    }

    /// The peer answered: back to no delay; logs its return if it was down.
    pub async fn succeeded(&self) {
        if self.failures.swap(0, Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(d) = self.down.lock().await.take() {
            tracing::info!(
                target_replica = self.target,
                addr = %self.addr,
                down_for = ?d.since.elapsed(),
                "peer replica reachable again"
            );
        }
    }

    /// A try failed: the next waits longer. Logs the first failure, then a
    /// summary at most every [`SUMMARY_EVERY`].
    pub async fn failed(&self, error: &(dyn std::fmt::Display + Sync)) {
        let error = error.to_string();
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let now = Instant::now();
        let next_try = now + delay(failures);
        let mut down = self.down.lock().await;
        match down.as_mut() {
            None => {
                tracing::warn!(
                    target_replica = self.target,
                    addr = %self.addr,
                    error = %error,
                    "peer replica unreachable; retrying with backoff up to {BACKOFF_CAP:?} (a summary every {SUMMARY_EVERY:?} until it answers)"
                );
                *down = Some(Down {
                    since: now,
                    next_try,
                    attempts_since_summary: 0,
                    last_summary: now,
                    last_error: error,
                });
            }
            Some(d) => {
                d.next_try = next_try;
                d.attempts_since_summary += 1;
                d.last_error = error;
                if now.duration_since(d.last_summary) >= SUMMARY_EVERY {
                    tracing::warn!(
                        target_replica = self.target,
                        addr = %self.addr,
                        down_for = ?now.duration_since(d.since),
                        attempts = d.attempts_since_summary,
                        last_error = %d.last_error,
                        "peer replica still unreachable"
                    );
                    d.attempts_since_summary = 0;
                    d.last_summary = now;
                }
            }
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Consecutive failures so far (0 while the peer answers).
    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// `GANTRY_TEST_NO_PEER_BACKOFF=1` removes the backoff in debug builds, so a
/// test can show that the cost checks catch a replica that spins. A release
/// build ignores it.
fn no_backoff_switch() -> bool {
    cfg!(debug_assertions)
        && std::env::var_os("GANTRY_TEST_NO_PEER_BACKOFF").is_some_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        assert_eq!(delay(1), BACKOFF_FIRST);
        assert_eq!(delay(2), BACKOFF_FIRST * 2);
        assert_eq!(delay(3), BACKOFF_FIRST * 4);
        assert_eq!(delay(10), BACKOFF_CAP);
        assert_eq!(delay(u32::MAX), BACKOFF_CAP);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_a_success_resets() {
        let r = Reachability::new(2, "127.0.0.1:1");
        let start = Instant::now();
        r.wait().await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "no wait before any failure"
        );
        for _ in 0..5 {
            r.failed(&"connection refused").await;
        }
        let before = Instant::now();
        r.wait().await;
        assert_eq!(before.elapsed(), delay(5));
        assert_eq!(r.failures(), 5);
        r.succeeded().await;
        assert_eq!(r.failures(), 0);
        let before = Instant::now();
        r.wait().await;
        assert_eq!(
            before.elapsed(),
            Duration::ZERO,
            "a success resets the backoff"
        );
    }

    /// A peer down for a minute is tried about once per cap, not thousands
    /// of times: count the tries a minute of paused time allows.
    #[tokio::test(start_paused = true)]
    async fn a_dead_peer_is_tried_about_once_per_cap() {
        let r = Reachability::new(2, "127.0.0.1:1");
        let start = Instant::now();
        let mut tries = 0u32;
        while start.elapsed() < Duration::from_secs(60) {
            r.wait().await;
            tries += 1;
            r.failed(&"connection refused").await;
        }
        assert!((55..=70).contains(&tries), "{tries} tries in a minute");
    }
}
