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
    let (events, rx) = mpsc::channel(1024);
    let (cancel_tx, cancel) = oneshot::channel();
    let report = run(Execution {
        token: token(),
        spec,
        work_root: root.to_owned(),
        kill_grace: Duration::from_secs(2),
        events,
        cancel,
        record: None,
        stats: Default::default(),
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
        work_root: dir.path().to_owned(),
        kill_grace: Duration::from_secs(2),
        events,
        cancel,
        record: None,
        stats: Default::default(),
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
    assert!(
        !alive(child_pid),
        "the background child {child_pid} survived the cancel"
    );
}
