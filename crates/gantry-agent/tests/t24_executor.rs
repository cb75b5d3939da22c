//! The executor and its supervisor, as the agent runs them: each attempt
//! under a `gantry-supervise` process (this crate's binary; the shipped
//! `gantry supervise` runs the same code). Tests that need root and cgroups
//! say SKIPPED otherwise.

// Tests may unwrap; measurements use std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gantry_agent::confine::{ConfineConfig, Confinement};
use gantry_agent::executor::{Execution, run};
use gantry_agent::supervisor;
use gantry_proto::v1::agent_message::Msg;
use gantry_proto::v1::{AgentMessage, AttemptFinished, AttemptToken, FailureClass, JobSpec};
use tokio::sync::{mpsc, oneshot, watch};

/// Whether `pid` is a live process (a zombie awaiting its reaper is not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

fn token() -> AttemptToken {
    AttemptToken {
        job_id: "job-1".into(),
        task: 0,
        attempt: 1,
    }
}

fn spec(argv: &[&str]) -> JobSpec {
    JobSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..JobSpec::default()
    }
}

/// Tasks as root where the agent is (the temporary directories are the
/// test's), without cgroups: what every node can do.
fn plain(root: &Path) -> Arc<Confinement> {
    confine(root, false, "root", u64::MAX)
}

fn confine(root: &Path, cgroups: bool, task_user: &str, node_id_salt: u64) -> Arc<Confinement> {
    let cfg = ConfineConfig {
        supervisor: vec![env!("CARGO_BIN_EXE_gantry-supervise").into()],
        cgroups,
        task_user: task_user.into(),
        // The tests' own directories, wherever the system keeps them.
        allowed_workdirs: vec![std::env::temp_dir()],
        ..ConfineConfig::default()
    };
    std::fs::create_dir_all(root.join("results")).unwrap();
    let node = format!("test-{}-{node_id_salt}", std::process::id());
    Arc::new(Confinement::resolve(&cfg, &node, root, 1024).unwrap())
}

/// A lease that lasts the test.
fn long_lease() -> watch::Receiver<u64> {
    watch::channel(supervisor::boot_ms() + 3_600_000).1
}

fn execution_in(
    spec: JobSpec,
    root: &Path,
    confinement: Arc<Confinement>,
    lease: watch::Receiver<u64>,
    gpus: Option<Vec<u32>>,
    events: mpsc::Sender<AgentMessage>,
    cancel: oneshot::Receiver<String>,
) -> Execution {
    let work = root.join("work");
    Execution {
        token: token(),
        spec,
        confinement,
        lease,
        scratch: Arc::new(gantry_agent::scratch::ScratchDirs::open(&work, &[]).unwrap()),
        kill_grace: Duration::from_secs(2),
        events,
        cancel,
        record: None,
        stats: Default::default(),
        gpus,
    }
}

fn execution(
    spec: JobSpec,
    root: &Path,
    gpus: Option<Vec<u32>>,
    events: mpsc::Sender<AgentMessage>,
    cancel: oneshot::Receiver<String>,
) -> Execution {
    execution_in(spec, root, plain(root), long_lease(), gpus, events, cancel)
}

async fn execute(
    spec: JobSpec,
    root: &Path,
) -> (
    AttemptFinished,
    mpsc::Receiver<AgentMessage>,
    oneshot::Sender<String>,
) {
    execute_on(spec, root, None).await
}

async fn execute_on(
    spec: JobSpec,
    root: &Path,
    gpus: Option<Vec<u32>>,
) -> (
    AttemptFinished,
    mpsc::Receiver<AgentMessage>,
    oneshot::Sender<String>,
) {
    let (events, rx) = mpsc::channel(1024);
    let (cancel_tx, cancel) = oneshot::channel();
    let report = run(execution(spec, root, gpus, events, cancel)).await;
    (report, rx, cancel_tx)
}

#[tokio::test]
async fn t10_success_streams_output_and_keeps_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (report, mut rx, _) = execute(spec(&["/bin/echo", "hello", "$HOME"]), dir.path()).await;
    assert_eq!(
        report.failure,
        FailureClass::Unspecified as i32,
        "{report:?}"
    );
    assert_eq!(report.exit_code, Some(0));
    // argv is executed directly: no shell expands $HOME.
    assert_eq!(report.stdout_tail, "hello $HOME\n");
    let mut started = false;
    let mut output = Vec::new();
    while let Ok(m) = rx.try_recv() {
        match m.msg {
            Some(Msg::Started(_)) => started = true,
            Some(Msg::Output(c)) => output.extend(c.data),
            _ => {}
        }
    }
    assert!(started);
    assert_eq!(output, b"hello $HOME\n");
}

#[tokio::test]
async fn t10_exit_codes_spawn_failures_env_and_shell() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&["exit 3"]);
    s.shell = true;
    let (report, _, _) = execute(s, dir.path()).await;
    assert_eq!(report.failure, FailureClass::Workload as i32);
    assert_eq!(report.exit_code, Some(3));
    assert!(report.message.contains("code 3"));

    let (report, _, _) = execute(spec(&["/no/such/program"]), dir.path()).await;
    assert_eq!(report.failure, FailureClass::Workload as i32);
    assert!(
        report.message.contains("cannot start"),
        "{}",
        report.message
    );

    // A missing working directory is reported as such, not as the program missing.
    let mut s = spec(&["/bin/true"]);
    s.working_dir = dir.path().join("no-such-dir").display().to_string();
    let (report, _, _) = execute(s, dir.path()).await;
    assert_eq!(report.failure, FailureClass::Workload as i32);
    assert!(
        report.message.contains("working directory") && report.message.contains("does not exist"),
        "{}",
        report.message
    );

    let mut s = spec(&["echo \"$GREETING $1\" >&2", "world"]);
    s.shell = true;
    s.env.insert("GREETING".into(), "hello".into());
    let (report, _, _) = execute(s, dir.path()).await;
    assert_eq!(report.stderr_tail, "hello world\n");
}

#[tokio::test]
async fn t20_timeout_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&["/bin/sleep", "30"]);
    s.timeout_ms = 200;
    let (report, _, _) = execute(s, dir.path()).await;
    assert_eq!(report.failure, FailureClass::Timeout as i32);
    assert!(report.message.contains("timed out"));
}

#[tokio::test]
async fn t20_cancel_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    // The task starts a background child and waits: cancel must reach both.
    let mut s = spec(&[&format!(
        "sleep 300 & echo $! > {}; wait",
        pidfile.display()
    )]);
    s.shell = true;
    let (events, _rx) = mpsc::channel(1024);
    let (cancel_tx, cancel) = oneshot::channel();
    let handle = tokio::spawn(run(execution(s, dir.path(), None, events, cancel)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let child_pid = loop {
        if let Ok(text) = std::fs::read_to_string(&pidfile)
            && let Ok(pid) = text.trim().parse::<i32>()
        {
            break pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task never started its child"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    cancel_tx.send("test".into()).unwrap();
    let report = handle.await.unwrap();
    assert_eq!(report.failure, FailureClass::Cancelled as i32);
    // The whole group was sent SIGKILL; on a busy machine the kernel may
    // take a moment to finish the background child off.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alive(child_pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background child {child_pid} survived the cancel"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port nothing listens on: bound by the OS, then released.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn readiness(check: gantry_proto::v1::probe::Check, warmup_ms: u64) -> gantry_proto::v1::Probe {
    gantry_proto::v1::Probe {
        check: Some(check),
        warmup_ms,
        interval_ms: 50,
        timeout_ms: 1000,
    }
}

fn tcp_check(port: u16) -> gantry_proto::v1::probe::Check {
    gantry_proto::v1::probe::Check::Tcp(gantry_proto::v1::TcpProbe {
        host: String::new(),
        port: port.into(),
    })
}

#[tokio::test]
async fn t30_service_becomes_ready_then_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = spec(&[
        "python3",
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ]);
    s.readiness = Some(readiness(
        gantry_proto::v1::probe::Check::Http(gantry_proto::v1::HttpProbe {
            host: String::new(),
            port: port.into(),
            path: "/".into(),
        }),
        30_000,
    ));
    let (events, mut rx) = mpsc::channel(1024);
    let (cancel_tx, cancel) = oneshot::channel();
    let handle = tokio::spawn(run(execution(s, dir.path(), None, events, cancel)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let msg = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no Ready event before the deadline")
            .expect("the events channel closed before Ready");
        if let Some(Msg::Ready(r)) = msg.msg {
            break r;
        }
    };
    assert_eq!(ready.attempt, Some(token()));
    let probe = format!("http GET http://127.0.0.1:{port}/: ready after ");
    assert!(
        ready.diagnostics.starts_with(&probe),
        "{}",
        ready.diagnostics
    );
    assert!(
        // http.server answers in HTTP/1.0.
        ready.diagnostics.contains("last: passed: HTTP/1.0 200 OK"),
        "{}",
        ready.diagnostics
    );

    cancel_tx.send("test".into()).unwrap();
    let report = handle.await.unwrap();
    assert_eq!(report.failure, FailureClass::Cancelled as i32);
    assert_eq!(report.diagnostics, ready.diagnostics);
}

#[tokio::test]
async fn t30_service_not_ready_within_warm_up_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = spec(&["/bin/sleep", "30"]);
    s.readiness = Some(readiness(tcp_check(port), 1000));
    let (report, mut rx, _) = execute(s, dir.path()).await;
    assert_eq!(report.failure, FailureClass::WarmUp as i32);
    assert!(
        report
            .message
            .starts_with("not ready within 1s warm-up: unreachable: "),
        "{}",
        report.message
    );
    // SIGTERM ends it within the grace period.
    assert_eq!(report.signal, Some(15));
    assert!(
        report
            .diagnostics
            .contains(&format!("tcp 127.0.0.1:{port}")),
        "{}",
        report.diagnostics
    );
    assert!(
        report.diagnostics.contains("unreachable"),
        "{}",
        report.diagnostics
    );
    while let Ok(m) = rx.try_recv() {
        assert!(!matches!(m.msg, Some(Msg::Ready(_))), "reported ready");
    }
}

#[tokio::test]
async fn t30_exit_before_ready_keeps_its_result_and_the_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&["exit 4"]);
    s.shell = true;
    s.readiness = Some(readiness(tcp_check(free_port()), 30_000));
    let (report, _, _) = execute(s, dir.path()).await;
    assert_eq!(report.failure, FailureClass::Workload as i32);
    assert_eq!(report.exit_code, Some(4));
    assert!(
        report.diagnostics.starts_with("tcp 127.0.0.1:"),
        "{}",
        report.diagnostics
    );

    // A probe that cannot work fails the attempt before it starts.
    let mut s = spec(&["/bin/true"]);
    s.readiness = Some(readiness(tcp_check(0), 30_000));
    let (report, mut rx, _) = execute(s, dir.path()).await;
    assert_eq!(report.failure, FailureClass::Workload as i32);
    assert!(
        report.message.contains("invalid readiness probe"),
        "{}",
        report.message
    );
    assert!(rx.try_recv().is_err(), "the task should not have started");
}

#[tokio::test]
async fn t30_gpus_are_pinned_over_the_jobs_env() {
    let dir = tempfile::tempdir().unwrap();
    let mut s =
        spec(&["echo \"$CUDA_VISIBLE_DEVICES|$NVIDIA_VISIBLE_DEVICES|$CUDA_DEVICE_ORDER\""]);
    s.shell = true;
    s.env.insert("CUDA_VISIBLE_DEVICES".into(), "0".into());
    s.env.insert("NVIDIA_VISIBLE_DEVICES".into(), "all".into());
    s.env
        .insert("CUDA_DEVICE_ORDER".into(), "FASTEST_FIRST".into());

    let (report, _, _) = execute_on(s.clone(), dir.path(), Some(vec![1, 3])).await;
    assert_eq!(report.stdout_tail, "1,3|1,3|PCI_BUS_ID\n");

    // Given no GPUs on a GPU node, the task sees none.
    let (report, _, _) = execute_on(s.clone(), dir.path(), Some(vec![])).await;
    assert_eq!(report.stdout_tail, "||PCI_BUS_ID\n");

    // A node without GPUs leaves the environment as the job set it.
    let (report, _, _) = execute_on(s, dir.path(), None).await;
    assert_eq!(report.stdout_tail, "0|all|FASTEST_FIRST\n");
}

// --- Confinement: needs root and cgroups -----------------------------------

/// Removes the test agent's (empty) cgroup directories at the end.
struct CgroupCleanup(Arc<Confinement>);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        if let Some(cg) = &self.0.cgroups {
            cg.remove_if_empty();
        }
    }
}

/// Root, cgroups and the given task user, or `None` (the test says SKIPPED).
fn confined(root: &Path, task_user: &str, salt: u64) -> Option<Arc<Confinement>> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root (cgroups, another task user)");
        return None;
    }
    let c = confine(root, true, task_user, salt);
    if let Some(why) = &c.why_not {
        eprintln!("SKIPPED: no usable cgroups here: {why}");
        return None;
    }
    Some(c)
}

/// A temporary directory others may pass through (the task user is not root).
fn shared_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

async fn run_confined(
    s: JobSpec,
    root: &Path,
    c: Arc<Confinement>,
) -> (AttemptFinished, mpsc::Receiver<AgentMessage>) {
    let (events, rx) = mpsc::channel(1024);
    let (_cancel_tx, cancel) = oneshot::channel();
    let report = run(execution_in(s, root, c, long_lease(), None, events, cancel)).await;
    (report, rx)
}

/// Processes whose command line has `marker` as one of its arguments.
fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.split(|b| *b == 0).any(|a| a == marker.as_bytes()) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// A `sleep` argument no other test uses.
fn marker(n: u32) -> String {
    format!("{n}.{}", std::process::id())
}

async fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn t24_children_that_left_the_process_group_end_with_the_task() {
    let dir = shared_tempdir();
    let Some(c) = confined(dir.path(), "nobody", 1) else {
        return;
    };
    let _cleanup = CgroupCleanup(c.clone());
    let (m1, m2) = (marker(1001), marker(1002));
    let mut s = spec(&[&format!(
        "setsid sh -c 'sleep {m1} &'; (sleep {m2} &); echo spawned"
    )]);
    s.shell = true;
    let (report, _) = run_confined(s, dir.path(), c).await;
    assert_eq!(
        report.failure,
        FailureClass::Unspecified as i32,
        "{report:?}"
    );
    assert_eq!(report.stdout_tail, "spawned\n");
    // The task is over when its shell exits; what it left was killed with it.
    wait_until("the strays are gone", Duration::from_secs(5), || {
        processes_with(&m1).is_empty() && processes_with(&m2).is_empty()
    })
    .await;
}

#[tokio::test]
async fn t24_cancel_kills_setsid_grandchildren() {
    let dir = shared_tempdir();
    let Some(c) = confined(dir.path(), "nobody", 2) else {
        return;
    };
    let _cleanup = CgroupCleanup(c.clone());
    let m = marker(1003);
    let mut s = spec(&[&format!("setsid sh -c 'sleep {m} & wait' & wait")]);
    s.shell = true;
    let (events, _rx) = mpsc::channel(1024);
    let (cancel_tx, cancel) = oneshot::channel();
    let handle = tokio::spawn(run(execution_in(
        s,
        dir.path(),
        c,
        long_lease(),
        None,
        events,
        cancel,
    )));
    wait_until("the grandchild runs", Duration::from_secs(10), || {
        !processes_with(&m).is_empty()
    })
    .await;
    cancel_tx.send("test".into()).unwrap();
    let report = handle.await.unwrap();
    assert_eq!(report.failure, FailureClass::Cancelled as i32, "{report:?}");
    wait_until("no process is left", Duration::from_secs(5), || {
        processes_with(&m).is_empty()
    })
    .await;
}

#[tokio::test]
async fn t24_memory_over_the_limit_is_an_oom_kill_reported_as_such() {
    let dir = shared_tempdir();
    let Some(c) = confined(dir.path(), "nobody", 3) else {
        return;
    };
    let _cleanup = CgroupCleanup(c.clone());
    // 1 GiB written (not just reserved) under a 64 MiB limit.
    let mut s = spec(&["python3", "-c", "b = b'x' * (1 << 30); print(len(b))"]);
    s.resources = Some(gantry_proto::v1::Resources {
        memory_mib: 64,
        ..Default::default()
    });
    let (report, _) = run_confined(s, dir.path(), c).await;
    assert_eq!(report.failure, FailureClass::Workload as i32, "{report:?}");
    assert!(
        report.message.starts_with("out of memory: limit 64 MiB"),
        "{}",
        report.message
    );
    assert_eq!(report.signal, Some(9), "killed by the kernel: {report:?}");
}

#[tokio::test]
async fn t24_a_cpu_quota_holds_a_busy_loop_to_its_share() {
    let dir = shared_tempdir();
    let Some(c) = confined(dir.path(), "nobody", 4) else {
        return;
    };
    let _cleanup = CgroupCleanup(c.clone());
    let cgroup = c.slot_cgroup(0).unwrap();
    let mut s = spec(&["while :; do :; done"]);
    s.shell = true;
    s.resources = Some(gantry_proto::v1::Resources {
        cpu_millis: 100,
        ..Default::default()
    });
    let (events, _rx) = mpsc::channel(1024);
    let (cancel_tx, cancel) = oneshot::channel();
    let handle = tokio::spawn(run(execution_in(
        s,
        dir.path(),
        c,
        long_lease(),
        None,
        events,
        cancel,
    )));
    wait_until(
        "the loop runs in its cgroup",
        Duration::from_secs(10),
        || !cgroup.pids().is_empty(),
    )
    .await;
    // The cgroup's own counter over a measured window.
    let (t0, u0) = (std::time::Instant::now(), cgroup.cpu_usage_ns().unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (t1, u1) = (std::time::Instant::now(), cgroup.cpu_usage_ns().unwrap());
    let share = (u1 - u0) as f64 / (t1 - t0).as_nanos() as f64;
    cancel_tx.send("test".into()).unwrap();
    let _ = handle.await.unwrap();
    println!("cpu share under a 100m quota: {share:.3} of a core");
    assert!(share < 0.2, "a 100m quota used {share:.3} of a core");
    assert!(share > 0.02, "the loop hardly ran: {share:.3}");
}

#[tokio::test]
async fn t24_tasks_run_unprivileged_and_cannot_read_the_agents_keys() {
    use std::os::unix::fs::PermissionsExt;
    let dir = shared_tempdir();
    let Some(c) = confined(dir.path(), "nobody", 5) else {
        return;
    };
    let _cleanup = CgroupCleanup(c.clone());
    let key = dir.path().join("agent.key");
    std::fs::write(&key, "secret").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut s = spec(&[&format!(
        "id -u; echo \"$HOME|$GANTRY_JOB_ID|$GANTRY_TASK_INDEX|$GANTRY_ATTEMPT|${{SECRET_FROM_AGENT:-unset}}\"; cat {} || echo unreadable; touch mine && echo writable",
        key.display()
    )]);
    s.shell = true;
    let (report, _) = run_confined(s, dir.path(), c).await;
    let lines: Vec<&str> = report.stdout_tail.lines().collect();
    assert_ne!(lines[0], "0", "the task ran as root: {report:?}");
    assert!(lines[1].ends_with("|job-1|0|1|unset"), "{}", lines[1]);
    assert!(
        lines[1].starts_with(dir.path().join("work").to_str().unwrap()),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2], "unreadable", "{report:?}");
    assert_eq!(lines[3], "writable", "its own work dir: {report:?}");
}

#[tokio::test]
async fn t24_a_lease_that_runs_out_stops_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let c = plain(dir.path());
    let m = marker(1004);
    // Renewed once, then never again: the agent "froze".
    let (lease_tx, lease) = watch::channel(supervisor::boot_ms() + 1_000);
    let (events, _rx) = mpsc::channel(1024);
    let (_cancel_tx, cancel) = oneshot::channel();
    let s = spec(&["sleep", &m]);
    let handle = tokio::spawn(run(execution_in(
        s,
        dir.path(),
        c,
        lease,
        None,
        events,
        cancel,
    )));
    let report = tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .expect("the task outlived its lease")
        .unwrap();
    drop(lease_tx);
    assert_eq!(report.failure, FailureClass::Infra as i32, "{report:?}");
    assert!(
        report.message.contains("lease ran out"),
        "{}",
        report.message
    );
    assert!(processes_with(&m).is_empty());
}

#[tokio::test]
async fn t24_the_supervisor_outlives_its_agent_and_fences_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let c = plain(dir.path());
    let m = marker(1005);
    let beat = dir.path().join("beat");
    let mut s = spec(&[&format!(
        "while :; do date +%s%N > {}; sleep 0.05; done & sleep {m}; wait",
        beat.display()
    )]);
    s.shell = true;
    let (_lease_tx, lease) = watch::channel(supervisor::boot_ms() + 2_000);
    let (events, _rx) = mpsc::channel(1024);
    let (_cancel_tx, cancel) = oneshot::channel();
    let agent = tokio::spawn(run(execution_in(
        s,
        dir.path(),
        c.clone(),
        lease,
        None,
        events,
        cancel,
    )));
    wait_until("the task beats", Duration::from_secs(10), || beat.exists()).await;
    // The agent dies: its side of the supervisor's socket goes with it.
    agent.abort();
    let _ = agent.await;
    assert!(
        !processes_with(&m).is_empty(),
        "the task runs on without the agent"
    );
    // At the lease's end the supervisor kills the task and leaves its result.
    let result = c.result_file(&token());
    wait_until(
        "the result is left on disk",
        Duration::from_secs(15),
        || result.exists(),
    )
    .await;
    assert!(processes_with(&m).is_empty());
    let last = std::fs::read_to_string(&beat).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        std::fs::read_to_string(&beat).unwrap(),
        last,
        "the beat stopped for good"
    );
    let o = gantry_agent::executor::take_result_file(&result).unwrap();
    assert!(o.fenced.is_some(), "{o:?}");
}

#[tokio::test]
async fn t24_a_relative_workdir_is_inside_the_tasks_own_directory_and_absolute_ones_need_leave() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&["pwd"]);
    s.working_dir = "build/out".into();
    let (report, _, _) = execute(s, dir.path()).await;
    assert_eq!(
        report.failure,
        FailureClass::Unspecified as i32,
        "{report:?}"
    );
    let pwd = report.stdout_tail.trim();
    assert!(
        pwd.starts_with(dir.path().join("work").to_str().unwrap()),
        "{pwd}"
    );
    assert!(pwd.ends_with("/build/out"), "{pwd}");

    // A node that allows no absolute work dirs refuses /etc, and says how.
    let c = Arc::new(
        Confinement::resolve(
            &ConfineConfig {
                supervisor: vec![env!("CARGO_BIN_EXE_gantry-supervise").into()],
                cgroups: false,
                task_user: "root".into(),
                ..ConfineConfig::default()
            },
            "strict-node",
            dir.path(),
            1024,
        )
        .unwrap(),
    );
    let mut s = spec(&["pwd"]);
    s.working_dir = "/etc".into();
    let (events, _rx) = mpsc::channel(1024);
    let (_cancel_tx, cancel) = oneshot::channel();
    let report = run(execution_in(
        s,
        dir.path(),
        c,
        long_lease(),
        None,
        events,
        cancel,
    ))
    .await;
    assert_eq!(report.failure, FailureClass::Workload as i32, "{report:?}");
    assert!(
        report.message.contains("outside what this node allows")
            && report.message.contains("--allow-workdir"),
        "{}",
        report.message
    );
}
