//! Closed-loop load: concurrent callers, their latencies, and the figures
//! table every scenario prints.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use tokio::time::Instant;

use super::percentile_ms;

/// A scenario's figures: its rate and, where it has them, the sorted
/// per-request latencies.
pub struct Latencies {
    pub per_s: f64,
    pub sorted: Vec<Duration>,
}

impl Latencies {
    /// A figure that is only a rate (no per-request latencies).
    pub fn rate(per_s: f64) -> Self {
        Self {
            per_s,
            sorted: Vec::new(),
        }
    }

    /// One line of the figures table, under [`header`].
    pub fn row(&self, name: &str, unit: &str, baseline: &str) -> String {
        let q = |p: f64| {
            if self.sorted.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.2}", percentile_ms(&self.sorted, p))
            }
        };
        format!(
            "{name:<38} {:>9.0} {unit:<7} {:>8} {:>8} {:>8} {:>8}   {baseline}",
            self.per_s,
            q(0.5),
            q(0.95),
            q(0.99),
            q(1.0),
        )
    }
}

/// The figures table's header line.
pub fn header() -> String {
    format!(
        "{:<38} {:>9} {:<7} {:>8} {:>8} {:>8} {:>8}   baseline",
        "figure", "rate", "", "p50 ms", "p95 ms", "p99 ms", "max ms"
    )
}

/// `clients` concurrent callers of `call`, `requests` each, all released at once.
pub async fn concurrent<F, Fut>(
    clients: usize,
    requests: usize,
    per_request: usize,
    call: F,
) -> anyhow::Result<Latencies>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let barrier = barrier.clone();
        let calls: Vec<Fut> = (0..requests).map(|r| call(c * requests + r)).collect();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut lat = Vec::with_capacity(calls.len());
            for f in calls {
                let t = Instant::now();
                f.await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut sorted = Vec::new();
    for t in tasks {
        sorted.extend(t.await??);
    }
    let elapsed = start.elapsed();
    sorted.sort();
    Ok(Latencies {
        per_s: (clients * requests * per_request) as f64 / elapsed.as_secs_f64(),
        sorted,
    })
}
