//! Per-identity limits that protect a replica from one busy or misbehaving
//! peer: a token bucket of submit requests per client identity, and a cap on
//! concurrent agent streams per node.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Concurrent agent streams one node may hold on one replica (a reconnect
/// briefly overlaps the dying stream; more than this is a misbehaving agent).
pub const MAX_STREAMS_PER_NODE: usize = 4;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per key: `rate` per second, holding at most `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate_per_s: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate_per_s),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub async fn take(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().await;
        if buckets.len() > 100_000 {
            // Forget idle callers rather than grow without bound.
            buckets.retain(|_, b| now.duration_since(b.last) < Duration::from_secs(60));
        }
        // One lookup per request; the key is copied only for a new caller.
        if let Some(b) = buckets.get_mut(key) {
            return self.take_from(b, now);
        }
        let mut b = Bucket {
            tokens: self.burst,
            last: now,
        };
        let taken = self.take_from(&mut b, now);
        buckets.insert(key.to_owned(), b);
        taken
    }

    /// Refills `b` up to `now` and takes a token from it.
    fn take_from(&self, b: &mut Bucket, now: Instant) -> Result<(), Duration> {
        let refill = now.duration_since(b.last).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else if self.rate > 0.0 {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        } else {
            Err(Duration::from_secs(1))
        }
    }
}

/// Concurrent streams per node on this replica.
#[derive(Default)]
pub struct StreamCounter {
    open: Mutex<HashMap<String, usize>>,
}

impl StreamCounter {
    /// Counts a new stream for `node`, unless it already has the maximum.
    pub async fn open(&self, node: &str) -> bool {
        let mut open = self.open.lock().await;
        let n = open.entry(node.to_owned()).or_default();
        if *n >= MAX_STREAMS_PER_NODE {
            return false;
        }
        *n += 1;
        true
    }

    pub async fn close(&self, node: &str) {
        let mut open = self.open.lock().await;
        if let Some(n) = open.get_mut(node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn t10_bucket_refills_at_the_rate() {
        let l = RateLimiter::new(10, 2);
        assert!(l.take("a").await.is_ok());
        assert!(l.take("a").await.is_ok());
        let wait = l.take("a").await.unwrap_err();
        assert!(wait <= Duration::from_millis(100));
        // Another identity has its own bucket.
        assert!(l.take("b").await.is_ok());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(l.take("a").await.is_ok());
    }

    #[tokio::test]
    async fn t10_streams_per_node_are_capped() {
        let c = StreamCounter::default();
        for _ in 0..MAX_STREAMS_PER_NODE {
            assert!(c.open("n").await);
        }
        assert!(!c.open("n").await);
        c.close("n").await;
        assert!(c.open("n").await);
    }
}
