use std::time::Duration;

use super::*;

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
    let report = run(Execution {
        token: token(),
        spec,
        scratch: std::sync::Arc::new(crate::scratch::ScratchDirs::open(root).unwrap()),
        kill_grace: Duration::from_secs(2),
        events,
        cancel,
        record: None,
        stats: Default::default(),
        gpus,
    })
    .await;
    (report, rx, cancel_tx)
}

#[tokio::test]
async fn t10_success_streams_output_and_keeps_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (report, mut rx, _) = execute(spec(&["/bin/echo", "hello", "$HOME"]), dir.path()).await;
    assert_eq!(report.failure, FailureClass::Unspecified as i32);
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
    let handle = tokio::spawn(run(Execution {
        token: token(),
        spec: s,
        scratch: std::sync::Arc::new(crate::scratch::ScratchDirs::open(dir.path()).unwrap()),
        kill_grace: Duration::from_secs(2),
        events,
        cancel,
        record: None,
        stats: Default::default(),
        gpus: None,
    }));
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
    let handle = tokio::spawn(run(Execution {
        token: token(),
        spec: s,
        scratch: std::sync::Arc::new(crate::scratch::ScratchDirs::open(dir.path()).unwrap()),
        kill_grace: Duration::from_secs(2),
        events,
        cancel,
        record: None,
        stats: Default::default(),
        gpus: None,
    }));
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
