//! One clock for the state: a replica whose clock runs a minute ahead
//! (libfaketime) holds an agent's stream. Entry times come from the
//! leader, so the agent's attempts are not stamped in the future, a
//! timed-out task's retry starts within its backoff, the node's last-seen
//! time is not in the future, and the skew is reported.
//!
//! Needs Debian's faketime package (libfaketime); says SKIPPED without it.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_tests::{Cluster, Timings, http_get, sample, wait_for};
use gantry_client::api;

const SKEW: &str = "+60s";

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// libfaketime, as Debian's faketime package installs it. The replica runs
/// with it preloaded through `env`, which execs: the replica stays the
/// harness's own child (the `faketime` wrapper forks, and killing it would
/// leave the replica running).
fn libfaketime() -> Option<PathBuf> {
    let lib = std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(Result::ok)
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .chain(std::iter::once(PathBuf::from(
            "/usr/lib/faketime/libfaketime.so.1",
        )))
        .find(|p| p.exists())?;
    let works = std::process::Command::new("env")
        .arg(format!("LD_PRELOAD={}", lib.display()))
        .arg(format!("FAKETIME={SKEW}"))
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    works.then_some(lib)
}

#[tokio::test(flavor = "multi_thread")]
async fn t86_a_replica_a_minute_ahead_does_not_move_the_states_times() {
    let Some(lib) = libfaketime() else {
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install faketime)");
        return;
    };
    let mut cluster = Cluster::start(3, Timings::default()).await.unwrap();
    // Replica 3 leads rarely (its clock is the one under test): wait for a
    // leader among 1 and 2 before skewing 3.
    let leader = cluster.leader().await.unwrap();
    let skewed = if leader == 3 { 2 } else { 3 };
    cluster.stop(skewed).await.unwrap();
    let preload = format!("LD_PRELOAD={}", lib.display());
    let faketime = format!("FAKETIME={SKEW}");
    cluster.set_wrapper(skewed, &["env", &preload, &faketime]);
    cluster.restart(skewed).unwrap();
    cluster.start_agent("b", &[skewed]).unwrap();
    cluster.wait_nodes_ready(&["b"]).await.unwrap();
    let client = cluster.client(&[1, 2, 3]).unwrap();

    let spec = api::JobSpec {
        argv: vec!["/bin/sleep".into(), "30".into()],
        timeout_ms: 1_000,
        max_attempts: 2,
        ..Default::default()
    };
    let id = client.submit_jobs(vec![spec]).await.unwrap().jobs[0]
        .job_id
        .clone();
    let job = wait_for(
        "the second attempt to start",
        Duration::from_secs(60),
        || async {
            let j = client.get_job(&id, false).await.ok()?;
            let task = j.tasks.first()?;
            (task.attempts.len() >= 2 && task.attempts[1].started_at_ms > 0).then_some(j)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}{}", cluster.diagnose()));
    let now = wall_ms();
    let task = &job.tasks[0];
    let (first, second) = (&task.attempts[0], &task.attempts[1]);
    assert_eq!(first.failure_class, "timeout", "{first:?}");
    for a in [first, second] {
        for t in [a.assigned_at_ms, a.started_at_ms, a.finished_at_ms] {
            assert!(
                t <= now + 1_000,
                "attempt {} has a time {} ms in the future: {a:?}",
                a.number,
                t.saturating_sub(now)
            );
        }
    }
    // The retry waits out its backoff (a second or two here), not the skew.
    let waited = second.assigned_at_ms.saturating_sub(first.finished_at_ms);
    assert!(
        waited < 20_000,
        "the retry was assigned {waited} ms after the first attempt ended (the skew is 60 s)"
    );

    let nodes = client.list_nodes(false).await.unwrap();
    let b = nodes.iter().find(|n| n.id == "b").unwrap();
    assert!(
        b.last_seen_ms <= now + 1_000,
        "node b last seen {} ms in the future",
        b.last_seen_ms - now
    );

    // The skew is measured and shown.
    let offset = wait_for(
        "the skewed replica to measure its clock",
        Duration::from_secs(10),
        || async {
            let status = client.cluster_status().await.ok()?;
            let r = status.replicas.iter().find(|r| r.id == skewed)?;
            r.clock_offset_ms.filter(|ms| *ms < -50_000)
        },
    )
    .await
    .unwrap();
    assert!(offset > -70_000, "offset {offset} ms");
    let (_, metrics) = http_get(&cluster.replicas[&skewed].metrics_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        sample(&metrics, "gantry_clock_offset_ms").is_some_and(|ms| ms < -50_000.0),
        "{metrics}"
    );
    assert!(
        cluster
            .log_text(skewed)
            .contains("clock differs from the leader's"),
        "the skewed replica warns"
    );
}
