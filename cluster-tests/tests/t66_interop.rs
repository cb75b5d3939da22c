//! Clients nobody here wrote, against a 3-replica mTLS cluster: grpcurl
//! (reflection, then a submit), a Python grpcio client generated with
//! grpcio-tools from proto/ (submit, watch, read), and grpcio-health-checking
//! (SERVING, then NOT_SERVING on a replica cut off from its quorum). The
//! Python programs are docs/examples/, shown in docs/api.md.
//!
//! Needs `GANTRY_PYTHON` (a python with grpcio, grpcio-tools and
//! grpcio-health-checking) and `GANTRY_GRPCURL`; `.ci/run` installs them
//! into target/pyenv. Without them a developer's run says SKIPPED and why;
//! under CI it fails.

#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster_tests::{Cluster, Timings, wait_for};
use gantry_pki::Role;
use tokio::process::Command;

fn tool(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) if Path::new(&p).exists() => Some(PathBuf::from(p)),
        _ => {
            let why = format!("{var} is not set to an existing program (see .ci/run)");
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn output(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Python stubs generated from proto/ into a fresh directory.
async fn python_stubs(python: &Path) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let protos: Vec<PathBuf> = std::fs::read_dir(repo().join("proto/gantry/v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    let (ok, _, err) = output(
        Command::new(python)
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(repo().join("proto"))
            .arg(format!("--python_out={}", out.path().display()))
            .arg(format!("--grpc_python_out={}", out.path().display()))
            .args(&protos),
    )
    .await;
    assert!(ok, "grpc_tools.protoc failed: {err}");
    out
}

async fn secure_cluster() -> (Cluster, cluster_tests::TlsPaths) {
    let mut cluster = Cluster::start_secure(3, Timings::default()).await.unwrap();
    let admin = cluster.issue(Role::Client, "admin").unwrap();
    cluster.start_agent("a1", &[1, 2, 3]).unwrap();
    cluster.wait_nodes_ready(&["a1"]).await.unwrap();
    (cluster, admin)
}

fn tls_args(t: &cluster_tests::TlsPaths) -> Vec<String> {
    vec![
        t.ca.display().to_string(),
        t.cert.display().to_string(),
        t.key.display().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t66_grpcurl_lists_services_and_submits_over_mtls() {
    let Some(grpcurl) = tool("GANTRY_GRPCURL") else {
        return;
    };
    let (cluster, admin) = secure_cluster().await;
    let addr = cluster.replicas[&2].addr.clone();
    let base = |c: &mut Command| {
        c.arg("-cacert")
            .arg(&admin.ca)
            .arg("-cert")
            .arg(&admin.cert)
            .arg("-key")
            .arg(&admin.key);
    };
    // Reflection: no proto files given.
    let mut c = Command::new(&grpcurl);
    base(&mut c);
    let (ok, out, err) = output(c.args([addr.as_str(), "list"])).await;
    assert!(ok, "grpcurl list: {err}");
    for s in [
        "gantry.v1.JobService",
        "gantry.v1.ClusterService",
        "grpc.health.v1.Health",
    ] {
        assert!(out.lines().any(|l| l == s), "{s} not listed: {out}");
    }
    // A submit, as docs/api.md shows it.
    let mut c = Command::new(&grpcurl);
    base(&mut c);
    let (ok, out, err) = output(c.args([
        "-d",
        r#"{"jobs":[{"name":"from-grpcurl","argv":["/bin/echo","hi"]}]}"#,
        addr.as_str(),
        "gantry.v1.JobService/SubmitJobs",
    ]))
    .await;
    assert!(ok, "grpcurl submit: {err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = reply["jobs"][0]["jobId"].as_str().unwrap().to_owned();
    // And health, through the same tool.
    let mut c = Command::new(&grpcurl);
    base(&mut c);
    let (ok, out, err) = output(c.args([addr.as_str(), "grpc.health.v1.Health/Check"])).await;
    assert!(ok && out.contains("SERVING"), "grpcurl health: {out} {err}");
    // Without a client certificate the server refuses.
    let (ok, _, _) = output(
        Command::new(&grpcurl)
            .arg("-cacert")
            .arg(&admin.ca)
            .args([addr.as_str(), "list"]),
    )
    .await;
    assert!(!ok, "grpcurl without a client certificate was served");
    let client = cluster.client(&[1]).unwrap();
    let job = client.get_job(&id, false).await.unwrap();
    assert_eq!(job.spec.unwrap().name, "from-grpcurl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t66_python_client_submits_watches_and_reads() {
    let Some(python) = tool("GANTRY_PYTHON") else {
        return;
    };
    let stubs = python_stubs(&python).await;
    let (cluster, admin) = secure_cluster().await;
    let (ok, out, err) = output(
        Command::new(&python)
            .arg(repo().join("docs/examples/submit_watch.py"))
            .arg(&cluster.replicas[&3].addr)
            .args(tls_args(&admin))
            .env("PYTHONPATH", stubs.path()),
    )
    .await;
    assert!(ok, "python client failed: {err}");
    let job: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(job["state"], "JOB_STATE_COMPLETE", "{out}");
    assert_eq!(job["exit_code"], 0, "{out}");
    assert_eq!(job["node"], "a1", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t66_python_health_check_sees_serving_and_not_serving() {
    let Some(python) = tool("GANTRY_PYTHON") else {
        return;
    };
    let (mut cluster, admin) = secure_cluster().await;
    let check = |addr: String, service: &'static str| {
        let (python, tls) = (python.clone(), tls_args(&admin));
        async move {
            let (_, out, _) = output(
                Command::new(&python)
                    .arg(repo().join("docs/examples/health_check.py"))
                    .arg(addr)
                    .args(tls)
                    .arg(service),
            )
            .await;
            out.trim().to_owned()
        }
    };
    let addr = cluster.replicas[&1].addr.clone();
    wait_for("SERVING", Duration::from_secs(20), || {
        let f = check(addr.clone(), "gantry.v1.JobService");
        async move { (f.await == "SERVING").then_some(()) }
    })
    .await
    .unwrap();
    // Cut replica 1 off: stop the other two. It still answers, NOT_SERVING.
    for id in [2, 3] {
        cluster.kill(id).await.unwrap();
    }
    wait_for("NOT_SERVING", Duration::from_secs(20), || {
        let f = check(addr.clone(), "");
        async move { (f.await == "NOT_SERVING").then_some(()) }
    })
    .await
    .unwrap();
}
