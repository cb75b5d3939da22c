//! The real `gantry` binary as a user runs it: configuration errors, a
//! replica configured by TOML and environment, the job and cluster commands,
//! and `gantry dev`.

// Tests may unwrap; synchronous helpers poll with std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};

const GANTRY: &str = env!("CARGO_BIN_EXE_gantry");

fn gantry(args: &[&str], servers: &str) -> Output {
    Command::new(GANTRY)
        .args(args)
        .env("GANTRY_SERVERS", servers)
        .env("GANTRY_INSECURE", "true")
        .output()
        .expect("running gantry")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Runs `gantry` until `done` holds for its output, or panics at the deadline.
fn until(args: &[&str], servers: &str, done: impl Fn(&Output) -> bool) -> Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let o = gantry(args, servers);
        if done(&o) {
            return o;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gantry {args:?} never succeeded: {}",
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn t10_bad_configuration_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--peers",
                "1=127.0.0.1:1",
                "--data-dir",
                data,
            ],
            "id: is required",
        ),
        (
            vec![
                "--id",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--peers",
                "2=127.0.0.1:1",
                "--data-dir",
                data,
            ],
            "peers: does not contain this replica's id 1",
        ),
        (
            vec![
                "--id",
                "1",
                "--listen",
                "nowhere",
                "--peers",
                "1=127.0.0.1:1",
                "--data-dir",
                data,
            ],
            "--listen",
        ),
        (
            vec![
                "--id",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--peers",
                "1=127.0.0.1:1",
                "--data-dir",
                data,
                "--election-timeout-min-ms",
                "10",
            ],
            "raft.election_timeout_min_ms",
        ),
    ];
    for (args, expect) in cases {
        let mut full = vec!["server"];
        full.extend(args);
        let o = gantry(&full, "");
        assert_eq!(o.status.code(), Some(64), "{full:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(expect), "{full:?}: {}", stderr(&o));
    }
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(
        &bad_toml,
        "id = 1\nlisten = \"127.0.0.1:0\"\nbogus = true\n",
    )
    .unwrap();
    let o = gantry(&["server", "--config", bad_toml.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("bogus"), "{}", stderr(&o));
}

#[test]
fn t10_shipped_example_config_is_valid() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/systemd/server.toml.example"
    );
    let o = Command::new(GANTRY)
        .args(["server", "--config", example, "--check"])
        .env_remove("GANTRY_INSECURE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("heartbeat_ms: 50"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("server-replica-1.pem"),
        "{}",
        stdout(&o)
    );
    // Without TLS files and without --insecure a replica refuses to start.
    let bare = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-tls.toml");
    std::fs::write(
        &bare,
        "id = 1\nlisten = \"127.0.0.1:0\"\npeers = \"1=127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n",
    )
    .unwrap();
    let o = Command::new(GANTRY)
        .args(["server", "--config", bare.to_str().unwrap(), "--check"])
        .env_remove("GANTRY_INSECURE")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("tls"), "{}", stderr(&o));
}

#[test]
fn t20_replica_from_toml_and_env_serves_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config = dir.path().join("gantry.toml");
    std::fs::write(
        &config,
        format!(
            "id = 1\nlisten = \"{addr}\"\ndata_dir = \"{}\"\n\n[peers]\n\"1\" = \"{addr}\"\n\n[raft]\nheartbeat_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    // GANTRY_* variables win over the file: the file's request timeout is unset,
    // the environment's is used; both paths end in one valid config.
    let mut server = Command::new(GANTRY)
        .args(["server", "--config", config.to_str().unwrap()])
        .env("GANTRY_REQUEST_TIMEOUT_MS", "5000")
        .env("GANTRY_INSECURE", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = until(&["cluster", "status", "--json"], &addr, |o| {
        o.status.success() && stdout(o).contains("\"leaderId\": \"1\"")
    });
    assert!(stdout(&status).contains("leader"), "{}", stdout(&status));

    let o = gantry(
        &[
            "job", "submit", "--name", "greet", "--count", "2", "--cpu", "500m", "--mem", "1Gi",
            "--label", "zone=a", "--", "echo", "hello",
        ],
        &addr,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    assert_eq!(id.len(), 36, "expected a job id, got {id:?}");

    let o = gantry(&["job", "status", &id, "--json"], &addr);
    let job: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(job["state"], "JOB_STATE_PENDING");
    assert_eq!(job["spec"]["argv"], serde_json::json!(["echo", "hello"]));
    assert_eq!(job["spec"]["resources"]["memoryMib"], "1024");
    assert_eq!(job["tasks"].as_array().unwrap().len(), 2);

    let o = gantry(&["job", "list"], &addr);
    assert!(
        stdout(&o).contains(&id) && stdout(&o).contains("greet"),
        "{}",
        stdout(&o)
    );
    let o = gantry(&["job", "cancel", &id, "--reason", "done"], &addr);
    assert!(stdout(&o).contains("cancelled"), "{}", stdout(&o));
    let o = gantry(&["job", "list", "--state", "cancelled", "--json"], &addr);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Errors are clear and exit non-zero.
    let o = gantry(&["job", "status", "no-such-job"], &addr);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    let o = gantry(&["job", "list", "--state", "sleeping"], &addr);
    assert_eq!(o.status.code(), Some(64));
    let o = gantry(&["job", "list"], "");
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("GANTRY_SERVERS"), "{}", stderr(&o));
    server.kill().unwrap();
    server.wait().unwrap();
    // Nothing listens now: the CLI reports the replica unavailable (exit 69).
    let o = Command::new(GANTRY)
        .args(["job", "list", "--retry-seconds", "1"])
        .env("GANTRY_SERVERS", &addr)
        .env("GANTRY_INSECURE", "true")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
}

/// The variables `. DIR/env` would set.
fn dev_env(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Runs `gantry` as a user who sourced the dev cluster's env file.
fn gantry_dev(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(GANTRY)
        .args(args)
        .env_remove("GANTRY_INSECURE")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running gantry")
}

#[tokio::test]
async fn t30_dev_runs_a_cluster_and_stops_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let mut dev = tokio::process::Command::new(GANTRY)
        .args([
            "dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--replicas",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("Ctrl-C stops the cluster") {
                return;
            }
        }
        panic!("gantry dev exited before the cluster was ready");
    });
    ready.await.expect("gantry dev did not become ready");

    let env = dev_env(&data);
    // The dev cluster runs mTLS with certificates it made for itself.
    assert!(env.iter().any(|(k, _)| k == "GANTRY_CERT"), "{env:?}");
    assert!(!env.iter().any(|(k, _)| k == "GANTRY_INSECURE"), "{env:?}");
    let members: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("cluster.json")).unwrap()).unwrap();
    let pids: Vec<i32> = members["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(pids.len(), 3);
    let agent_pids: Vec<i32> = members["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(agent_pids.len(), 2);
    let o = gantry_dev(&["job", "submit", "--", "echo", "hello"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = gantry_dev(&["cluster", "status"], &env);
    assert_eq!(stdout(&o).matches("yes").count(), 3, "{}", stdout(&o));
    // The dev agents run work right away: `job run` streams output and
    // exits with the task's code.
    let o = gantry_dev(&["job", "run", "--", "echo", "hello"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello\n");
    let o = gantry_dev(
        &["job", "run", "--shell", "--", "echo oops >&2; exit 5"],
        &env,
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("oops"), "{}", stderr(&o));
    let o = gantry_dev(&["node", "list"], &env);
    assert!(
        stdout(&o).contains("dev-agent-1") && stdout(&o).contains("dev-agent-2"),
        "{}",
        stdout(&o)
    );

    kill(Pid::from_raw(dev.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), dev.wait())
        .await
        .expect("gantry dev did not stop")
        .unwrap();
    assert!(status.success());
    for pid in pids.into_iter().chain(agent_pids) {
        // Signal 0 probes for existence: the children are gone (reaped by dev).
        assert!(
            kill(Pid::from_raw(pid), None).is_err(),
            "replica {pid} still running"
        );
    }
}

#[test]
fn t40_certs_init_and_issue_write_private_keys_and_never_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let pki_s = pki.to_str().unwrap();
    let o = gantry(
        &[
            "certs",
            "init",
            "--dir",
            pki_s,
            "--server",
            "replica-1=127.0.0.1",
            "--agent",
            "gpu-01",
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "ca.pem",
        "ca-key.pem",
        "server-replica-1.pem",
        "agent-gpu-01.pem",
        "client-admin.pem",
    ] {
        assert!(pki.join(f).is_file(), "{f} missing");
    }
    for key in [
        "ca-key.pem",
        "server-replica-1-key.pem",
        "agent-gpu-01-key.pem",
        "client-admin-key.pem",
    ] {
        let mode = std::fs::metadata(pki.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let o = gantry(&["certs", "init", "--dir", pki_s], "");
    assert_eq!(o.status.code(), Some(64));
    assert!(
        stderr(&o).contains("refusing to overwrite"),
        "{}",
        stderr(&o)
    );

    let out = dir.path().join("issued");
    let out_s = out.to_str().unwrap();
    let issue = [
        "certs", "issue", "--ca-dir", pki_s, "--role", "agent", "--name", "gpu-02", "--out", out_s,
    ];
    let o = gantry(&issue, "");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("spiffe://gantry/agent/gpu-02"),
        "{}",
        stdout(&o)
    );
    let pem = std::fs::read(out.join("agent-gpu-02.pem")).unwrap();
    let (_, parsed) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let id = gantry_pki::identity_from_der(&parsed.contents).unwrap();
    assert_eq!(
        (id.role, id.name.as_str()),
        (gantry_pki::Role::Agent, "gpu-02")
    );
    // Again into the same place: refused, the first files untouched.
    let o = gantry(&issue, "");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("refusing to overwrite"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(out.join("agent-gpu-02.pem")).unwrap(), pem);
    let o = gantry(
        &[
            "certs", "issue", "--ca-dir", pki_s, "--role", "root", "--name", "x", "--out", out_s,
        ],
        "",
    );
    assert_eq!(
        o.status.code(),
        Some(64),
        "clap refuses an unknown role: a usage error"
    );
}

#[test]
fn t50_submit_rate_is_limited_per_client() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut server = Command::new(GANTRY)
        .args([
            "server",
            "--id",
            "1",
            "--listen",
            &addr,
            "--peers",
            &format!("1={addr}"),
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--submit-rate", "1", "--submit-burst", "2", "--insecure"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until(&["cluster", "status", "--json"], &addr, |o| {
        o.status.success() && stdout(o).contains("\"leaderId\": \"1\"")
    });
    // `cluster status` is no submit: the bucket is still full.
    let submit = ["job", "submit", "--", "/bin/true"];
    assert!(gantry(&submit, &addr).status.success());
    assert!(gantry(&submit, &addr).status.success());
    // Refused for now (RESOURCE_EXHAUSTED): exit 75, "try again later".
    let o = gantry(&submit, &addr);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(stderr(&o).contains("rate limit"), "{}", stderr(&o));
    let o = gantry(&["job", "list", "--json"], &addr);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "the refused submit changed nothing"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}
