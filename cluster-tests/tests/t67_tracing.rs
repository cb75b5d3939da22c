//! One trace per job, across processes: an OTLP receiver built on the
//! official opentelemetry-proto definitions (cluster-tests/py/otlp_receiver.py,
//! Python grpcio) collects the spans of the `gantry` CLI, 3 replicas and an
//! agent pointed at it with the standard `OTEL_EXPORTER_OTLP_ENDPOINT`; a job
//! submitted with the CLI records the trace id, `gantry job status` prints
//! it, and the receiver holds that one trace: the CLI's span at the root, a
//! replica's SubmitJobs span its child, the dispatch on the replica, the
//! agent's run under the dispatch, and the result's commit.
//!
//! Needs `GANTRY_PYTHON` with grpcio and opentelemetry-proto (`.ci/run`
//! installs them); without it a developer's run says SKIPPED, CI fails.

#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster_tests::{Cluster, Timings, gantry_bin, wait_for};
use gantry_client::api;
use tokio::process::Command;

fn python() -> Option<PathBuf> {
    match std::env::var_os("GANTRY_PYTHON") {
        Some(p) if Path::new(&p).exists() => Some(PathBuf::from(p)),
        _ => {
            let why = "GANTRY_PYTHON is not set to an existing python (see .ci/run)";
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct Span {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    service: String,
}

fn spans(file: &Path) -> Vec<Span> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t67_a_submitted_job_is_one_trace_from_the_cli_through_the_replicas() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (port_file, out) = (dir.path().join("port"), dir.path().join("spans.jsonl"));
    let receiver_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/otlp_receiver.py");
    let mut receiver = Command::new(&python)
        .arg(&receiver_script)
        .arg(&port_file)
        .arg(&out)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let port = wait_for(
        "the OTLP receiver's port",
        Duration::from_secs(20),
        || async {
            std::fs::read_to_string(&port_file)
                .ok()?
                .trim()
                .parse::<u16>()
                .ok()
        },
    )
    .await
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let otel = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.clone()),
        // Export quickly: the batch processor's default delay is 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
    ];
    let mut cluster = Cluster::start_with_env(3, Timings::default(), otel.clone())
        .await
        .unwrap();
    cluster.start_agent("a1", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a1"]).await.unwrap();

    // The CLI submits: its own span is the root of the job's trace.
    let servers = cluster.replicas[&2].addr.clone();
    let cli = |args: &[&str]| {
        let mut c = Command::new(gantry_bin().unwrap());
        c.args(["job", "--servers", &servers, "--insecure"])
            .args(args)
            .envs(otel.iter().map(|(k, v)| (k, v)));
        c
    };
    let out_submit = cli(&["submit", "--", "/bin/echo", "traced"])
        .output()
        .await
        .unwrap();
    assert!(out_submit.status.success(), "{out_submit:?}");
    let job_id = String::from_utf8_lossy(&out_submit.stdout)
        .trim()
        .to_owned();

    let client = cluster.client(&[1]).unwrap();
    let job = wait_for("the job to complete", Duration::from_secs(30), || async {
        let j = client.get_job(&job_id, false).await.ok()?;
        (j.state == api::JobState::Complete as i32).then_some(j)
    })
    .await
    .unwrap();
    let trace_id = job.trace_id.clone();
    assert_eq!(trace_id.len(), 32, "the job recorded no trace id: {job:?}");
    let status = cli(&["status", &job_id]).output().await.unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&trace_id),
        "gantry job status does not print the trace id {trace_id}: {status:?}"
    );

    // The receiver holds the trace: the CLI's root span, a replica's
    // request span under it.
    let found = wait_for(
        "the job's spans at the receiver",
        Duration::from_secs(30),
        || async {
            let all: Vec<Span> = spans(&out)
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            let root = all
                .iter()
                .find(|s| s.service == "gantry-cli" && s.parent_span_id.is_empty())?;
            let by_id: BTreeMap<&str, &Span> =
                all.iter().map(|s| (s.span_id.as_str(), s)).collect();
            let server_child = all.iter().find(|s| {
                s.service == "gantry-server"
                    && s.name.contains("SubmitJobs")
                    && by_id
                        .get(s.parent_span_id.as_str())
                        .is_some_and(|p| p.service == "gantry-cli")
            })?;
            let run = all.iter().find(|s| {
                s.service == "gantry-agent"
                    && s.name == "run"
                    && by_id
                        .get(s.parent_span_id.as_str())
                        .is_some_and(|p| p.service == "gantry-server" && p.name == "dispatch")
            })?;
            all.iter()
                .find(|s| s.service == "gantry-server" && s.name == "result committed")?;
            // Every span leads back to the CLI's root.
            let rooted = all.iter().all(|s| {
                let mut cur: &Span = s;
                for _ in 0..32 {
                    if cur.span_id == root.span_id {
                        return true;
                    }
                    match by_id.get(cur.parent_span_id.as_str()) {
                        Some(p) => cur = *p,
                        None => return false,
                    }
                }
                false
            });
            rooted.then(|| {
                (
                    root.name.clone(),
                    server_child.name.clone(),
                    run.name.clone(),
                    all.len(),
                )
            })
        },
    )
    .await;
    let _ = receiver.kill().await;
    let (root, child, run, n) =
        found.unwrap_or_else(|e| panic!("{e}; spans received: {:#?}", spans(&out)));
    assert_eq!(root, "gantry job");
    assert!(
        child.contains("/gantry.v1.JobService/SubmitJobs"),
        "{child}"
    );
    assert_eq!(run, "run");
    assert!(n >= 5, "{n} spans");
}
