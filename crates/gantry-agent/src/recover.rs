//! A restarted agent's first step: what became of the attempts its previous
//! run left open (docs/architecture.md, "Agent restarts").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gantry_proto::v1::{AttemptFinished, AttemptToken, JobSpec};

use super::{Key, Running, Shared, confine, execution, executor, finish, journal, key, supervisor};

/// An attempt a previous run of the agent left running under its supervisor.
pub(crate) struct Resumed {
    token: AttemptToken,
    link: executor::Link,
    started: supervisor::Started,
    pub(crate) dir: PathBuf,
    slot: Option<u32>,
}

/// What a restarted agent found of its previous life's attempts.
pub(crate) struct Recovered {
    pub(crate) running: Vec<Resumed>,
    /// Cgroup slots not to hand out: attempts still running, or processes
    /// that would not die.
    pub(crate) busy: std::collections::BTreeSet<u32>,
    pub(crate) reports: BTreeMap<Key, AttemptFinished>,
}

/// Finds the attempts a previous run left open: re-attaches to supervisors
/// still running, takes results they left on disk, and kills (by cgroup and
/// process group) what is left of the others, reporting them as
/// infrastructure failures.
pub(crate) async fn recover(
    c: &confine::Confinement,
    open: BTreeMap<Key, journal::Record>,
) -> Recovered {
    let mut found = Recovered {
        running: Vec::new(),
        busy: std::collections::BTreeSet::new(),
        reports: BTreeMap::new(),
    };
    // Every attempt this restart found gone is one event for the node.
    let restart = format!("agent-restart:{}", supervisor::boot_ms());
    for (key, journal::Record { pgid, slot }) in open {
        let (job_id, task, attempt) = key.clone();
        let token = AttemptToken {
            job_id,
            task,
            attempt,
        };
        let mut outcome = executor::take_result_file(&c.result_file(&token));
        if outcome.is_none()
            && let Ok(stream) = supervisor::connect(&c.socket_name(&token)).await
        {
            let (mut rd, wr) = stream.into_split();
            let first =
                tokio::time::timeout(Duration::from_secs(2), supervisor::read_frame(&mut rd)).await;
            let stream = rd.reunite(wr).ok();
            match (first, stream) {
                (Ok(Ok(Some(supervisor::Frame::Started(st)))), Some(stream)) => {
                    tracing::info!(attempt = ?key, pid = st.pid, "re-attached to an attempt still running from the agent's previous run");
                    found.busy.extend(slot);
                    found.running.push(Resumed {
                        token,
                        dir: st.dir.clone(),
                        link: executor::Link { pid: pgid, stream },
                        started: *st,
                        slot,
                    });
                    continue;
                }
                (Ok(Ok(Some(supervisor::Frame::Finished(o)))), Some(mut stream)) => {
                    let _ = supervisor::write_frame(&mut stream, &supervisor::Frame::Ack).await;
                    outcome = Some(*o);
                }
                _ => {}
            }
        }
        let report = match outcome {
            Some(o) => {
                tracing::info!(attempt = ?key, "an attempt ended while the agent was away: reporting its result");
                executor::report(&token, &o, None, &JobSpec::default())
            }
            None => {
                if let Some(task) = slot.and_then(|n| c.slot_cgroup(n))
                    && !task.kill_all(Duration::from_secs(5))
                {
                    found.busy.extend(slot);
                }
                if pgid > 1 {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                tracing::warn!(attempt = ?key, pgid, "attempt left by a previous agent run with no supervisor: killed what was left of it");
                AttemptFinished {
                    attempt: Some(token),
                    failure: gantry_proto::v1::FailureClass::Infra as i32,
                    message: "the agent restarted while the attempt ran and its supervisor was gone; what was left of it was killed".into(),
                    infra_event: restart.clone(),
                    ..AttemptFinished::default()
                }
            }
        };
        found.reports.insert(key, report);
    }
    found
}

/// Follows an attempt re-attached after a restart like one it started.
pub(crate) async fn resume(shared: &Arc<Shared>, r: Resumed) {
    let Resumed {
        token,
        link,
        started,
        dir,
        slot,
    } = r;
    let spec = JobSpec {
        timeout_ms: started.timeout_ms,
        ..JobSpec::default()
    };
    let k = key(&token);
    let (exec, cancel_tx) = execution(shared, token.clone(), spec, Vec::new());
    let shared2 = shared.clone();
    let first = supervisor::Frame::Started(Box::new(started));
    let handle = tokio::spawn(async move {
        let report = executor::resume(exec, link, first, dir, slot).await;
        finish(&shared2, token, report).await;
    });
    shared.running.lock().await.insert(
        k,
        Running {
            cancel: Some(cancel_tx),
            handle,
            waiting_on: None,
        },
    );
}
