use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::*;

fn probe(check: Check) -> Probe {
    Probe {
        check,
        warmup: Duration::from_secs(10),
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(2),
    }
}

fn exec_probe(argv: &[&str], dir: &Path) -> Probe {
    probe(Check::Exec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        dir: dir.to_owned(),
    })
}

/// A port nothing listens on: bound by the OS, then released.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Serves one HTTP request with `response`; hands back what was asked.
async fn one_shot_server(response: &'static str) -> (u16, oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before the end of its request");
            request.extend_from_slice(&buf[..n]);
        }
        conn.write_all(response.as_bytes()).await.unwrap();
        conn.shutdown().await.unwrap();
        let _ = tx.send(String::from_utf8_lossy(&request).into_owned());
    });
    (port, rx)
}

/// Whether `pid` is a live process (a zombie awaiting its reaper is not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

#[test]
fn t10_from_spec_applies_defaults_and_rejects_nonsense() {
    use pb::probe::Check as C;
    let dir = Path::new("/srv/task");
    let spec = pb::Probe {
        check: Some(C::Http(pb::HttpProbe {
            host: String::new(),
            port: 8080,
            path: String::new(),
        })),
        ..pb::Probe::default()
    };
    let p = Probe::from_spec(&spec, dir).unwrap();
    assert_eq!(
        p,
        Probe {
            check: Check::Http {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/".into()
            },
            warmup: DEFAULT_WARMUP,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
        }
    );
    assert_eq!(p.to_string(), "http GET http://127.0.0.1:8080/");

    let spec = pb::Probe {
        check: Some(C::Exec(pb::ExecProbe {
            argv: vec!["curl".into(), "-f".into(), "http://x/".into()],
        })),
        warmup_ms: 1500,
        interval_ms: 200,
        timeout_ms: 300,
    };
    let p = Probe::from_spec(&spec, dir).unwrap();
    assert_eq!(
        p.to_string(),
        r#"exec ["curl","-f","http://x/"] in /srv/task"#
    );
    assert_eq!(
        (p.warmup, p.interval, p.timeout),
        (
            Duration::from_millis(1500),
            Duration::from_millis(200),
            Duration::from_millis(300)
        )
    );

    let tcp = |host: &str, port| pb::Probe {
        check: Some(C::Tcp(pb::TcpProbe {
            host: host.into(),
            port,
        })),
        ..pb::Probe::default()
    };
    assert_eq!(
        Probe::from_spec(&tcp("[::1]", 9), dir).unwrap().to_string(),
        "tcp [::1]:9"
    );
    assert_eq!(
        Probe::from_spec(&tcp("", 0), dir),
        Err(ProbeError::BadPort(0))
    );
    assert_eq!(
        Probe::from_spec(&tcp("", 70000), dir),
        Err(ProbeError::BadPort(70000))
    );
    assert_eq!(
        Probe::from_spec(&pb::Probe::default(), dir),
        Err(ProbeError::NoCheck)
    );
    let empty = pb::Probe {
        check: Some(C::Exec(pb::ExecProbe::default())),
        ..pb::Probe::default()
    };
    assert_eq!(Probe::from_spec(&empty, dir), Err(ProbeError::EmptyArgv));
    let relative = pb::Probe {
        check: Some(C::Http(pb::HttpProbe {
            host: String::new(),
            port: 80,
            path: "health".into(),
        })),
        ..pb::Probe::default()
    };
    assert!(matches!(
        Probe::from_spec(&relative, dir),
        Err(ProbeError::BadPath(_))
    ));
}

#[tokio::test]
async fn t10_tcp_passes_when_listening_and_is_unreachable_when_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let outcome = probe(Check::Tcp {
        host: "127.0.0.1".into(),
        port,
    })
    .try_once()
    .await;
    assert!(outcome.passed(), "{outcome}");

    let port = closed_port().await;
    let outcome = probe(Check::Tcp {
        host: "127.0.0.1".into(),
        port,
    })
    .try_once()
    .await;
    assert!(matches!(outcome, Outcome::Unreachable(_)), "{outcome}");
}

#[tokio::test]
async fn t10_http_passes_on_200_and_fails_on_500() {
    let (port, request) =
        one_shot_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await;
    let outcome = probe(Check::Http {
        host: "127.0.0.1".into(),
        port,
        path: "/health?deep=1".into(),
    })
    .try_once()
    .await;
    assert_eq!(outcome, Outcome::Passed("HTTP/1.1 200 OK".into()));
    let request = request.await.unwrap();
    assert!(
        request.starts_with("GET /health?deep=1 HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request
            .to_ascii_lowercase()
            .contains(&format!("host: 127.0.0.1:{port}\r\n")),
        "{request}"
    );

    let (port, _) = one_shot_server(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 14\r\nConnection: close\r\n\r\ndatabase down\n",
    )
    .await;
    let outcome = probe(Check::Http {
        host: "127.0.0.1".into(),
        port,
        path: "/".into(),
    })
    .try_once()
    .await;
    assert_eq!(
        outcome,
        Outcome::Failed("HTTP/1.1 500 Internal Server Error; body: database down".into())
    );

    let port = closed_port().await;
    let outcome = probe(Check::Http {
        host: "127.0.0.1".into(),
        port,
        path: "/".into(),
    })
    .try_once()
    .await;
    assert!(matches!(outcome, Outcome::Unreachable(_)), "{outcome}");
}

#[tokio::test]
async fn t10_exec_passes_fails_or_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = exec_probe(&["true"], dir.path()).try_once().await;
    assert!(outcome.passed(), "{outcome}");

    let outcome = exec_probe(&["false"], dir.path()).try_once().await;
    assert!(matches!(outcome, Outcome::Failed(_)), "{outcome}");
    assert!(outcome.detail().contains("code 1"), "{outcome}");

    let outcome = exec_probe(&["/no/such/probe"], dir.path()).try_once().await;
    assert!(matches!(outcome, Outcome::Unreachable(_)), "{outcome}");
    assert!(outcome.detail().contains("/no/such/probe"), "{outcome}");
}

#[tokio::test]
async fn t10_exec_reports_output_and_runs_in_the_directory_without_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("marker"), "").unwrap();
    // stdout and stderr share one pipe: both show, in order.
    let outcome = exec_probe(&["sh", "-c", "ls; echo 'db down' >&2; exit 3"], dir.path())
        .try_once()
        .await;
    assert_eq!(
        outcome,
        Outcome::Failed("exited with code 3; output: marker\ndb down".into())
    );

    // argv is run directly: "$HOME" is not expanded.
    let outcome = exec_probe(&["echo", "$HOME"], dir.path()).try_once().await;
    assert_eq!(
        outcome,
        Outcome::Passed("exited with code 0; output: $HOME".into())
    );

    // Only the start of long output is kept.
    let outcome = exec_probe(&["sh", "-c", "yes | head -c 100000; exit 1"], dir.path())
        .try_once()
        .await;
    assert!(matches!(outcome, Outcome::Failed(_)), "{outcome}");
    assert!(outcome.detail().len() < DETAIL_BYTES + 100, "{outcome}");
    assert!(outcome.detail().ends_with('…'), "{outcome}");
}

#[tokio::test]
async fn t20_exec_timeout_kills_the_probe_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let mut p = exec_probe(&["sh", "-c", &script], dir.path());
    p.timeout = Duration::from_millis(1500);
    let outcome = p.try_once().await;
    assert!(matches!(outcome, Outcome::Unreachable(_)), "{outcome}");
    assert!(outcome.detail().contains("timed out"), "{outcome}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SIGKILL is delivered asynchronously: wait for it with a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the probe's background child {pid} survived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn t20_wait_ready_passes_on_the_first_good_try() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let p = probe(Check::Tcp {
        host: "127.0.0.1".into(),
        port,
    });
    let mut tally = Tally::new(&p);
    let diagnostics = wait_ready(&p, &mut tally).await.unwrap();
    assert!(tally.ready());
    assert_eq!(
        diagnostics,
        format!(
            "tcp 127.0.0.1:{port}: ready after 1 try (0 unreachable, 0 failed); \
             last: passed: connected to 127.0.0.1:{port}"
        )
    );
}

#[tokio::test]
async fn t20_wait_ready_gives_up_after_the_warm_up_naming_the_probe() {
    let port = closed_port().await;
    let mut p = probe(Check::Tcp {
        host: String::from("127.0.0.1"),
        port,
    });
    p.warmup = Duration::from_millis(300);
    let mut tally = Tally::new(&p);
    let began = Instant::now();
    let diagnostics = wait_ready(&p, &mut tally).await.unwrap_err();
    assert!(began.elapsed() >= p.warmup);
    assert!(!tally.ready());
    assert!(
        diagnostics.starts_with(&format!(
            "tcp 127.0.0.1:{port}: not ready within 300ms warm-up after "
        )),
        "{diagnostics}"
    );
    assert!(
        diagnostics.contains(" unreachable, 0 failed)"),
        "{diagnostics}"
    );
    assert!(
        diagnostics.contains("last: unreachable: connect to"),
        "{diagnostics}"
    );
    assert!(
        tally
            .warm_up_failure()
            .starts_with("not ready within 300ms warm-up: unreachable: connect to"),
        "{}",
        tally.warm_up_failure()
    );
}

#[test]
fn t30_diagnostics_stay_bounded() {
    let long = "x".repeat(10_000);
    let p = exec_probe(&[&long, &long], Path::new("/"));
    let mut tally = Tally::new(&p);
    assert!(tally.diagnostics().len() <= DIAGNOSTICS_BYTES);
    tally.record(Outcome::Failed("é".repeat(5_000)));
    let d = tally.diagnostics();
    assert!(d.len() <= DIAGNOSTICS_BYTES, "{}", d.len());
    assert!(d.ends_with('…'));
    assert!(tally.warm_up_failure().len() < 400);
}
