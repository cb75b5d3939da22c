//! Node health, GPU placement, host reputation and readiness probes, with
//! real replicas and agents: a node failing its disk check gets no tasks and
//! says why; GPU jobs land where the inventory fits and see their GPUs in
//! CUDA_VISIBLE_DEVICES; a host whose tasks keep failing for infra reasons is
//! blacklisted while one whose jobs exit 1 is not; a service task with an
//! HTTP probe becomes ready, and one that never listens ends `warm-up`.

// Tests may unwrap; synchronous helpers poll with std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::time::Duration;

use cluster_tests::{Cluster, Timings, http_get, run_cli, sample, wait_for};
use gantry_client::{Client, api};

const WAIT: Duration = Duration::from_secs(60);

fn shell(script: &str) -> api::JobSpec {
    api::JobSpec {
        argv: vec![script.to_owned()],
        shell: true,
        max_attempts: 1,
        ..Default::default()
    }
}

fn state(j: &api::Job) -> api::JobState {
    api::JobState::try_from(j.state).unwrap()
}

async fn submit(client: &Client, specs: Vec<api::JobSpec>) -> Vec<String> {
    client
        .submit_jobs(specs)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.job_id)
        .collect()
}

async fn wait_state(client: &Client, id: &str, want: api::JobState) -> api::Job {
    wait_for(&format!("job {id} to be {want:?}"), WAIT, || async {
        let j = client.get_job(id, false).await.ok()?;
        (state(&j) == want).then_some(j)
    })
    .await
    .unwrap()
}

async fn node(client: &Client, id: &str) -> api::Node {
    client
        .list_nodes(false)
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.id == id)
        .unwrap()
}

/// Runs the `gantry` CLI against the cluster; returns stdout.
fn cli(cluster: &Cluster, args: &[&str]) -> String {
    let out = run_cli(&cluster.live_addrs(), args).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "gantry {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn attempts(j: &api::Job) -> Vec<&api::Attempt> {
    j.tasks.iter().flat_map(|t| &t.attempts).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t68_a_node_failing_its_disk_check_gets_no_tasks_and_says_why() {
    let mut cluster = Cluster::start(1, Timings::default()).await.unwrap();
    // Asks for ~95 TiB free: more than any test machine has.
    cluster
        .start_agent_with("full", &[1], &["--health-min-free-disk", "100000000"])
        .unwrap();
    cluster.start_agent("roomy", &[1]).unwrap();
    cluster.wait_nodes_ready(&["full", "roomy"]).await.unwrap();
    let client = cluster.client(&[1]).unwrap();

    // The verdict arrives with the hello: the node is unhealthy from the start.
    let full = node(&client, "full").await;
    assert!(!full.healthy, "{full:?}");
    assert!(full.health_score < 90);
    let disk = full
        .failing_checks
        .iter()
        .find(|c| c.name == "disk")
        .expect("the disk check fails");
    assert!(disk.detail.contains("free"), "{}", disk.detail);
    assert!(node(&client, "roomy").await.healthy);
    // The leader hears when the checks last ran.
    wait_for("the last check time", WAIT, || async {
        (node(&client, "full").await.last_check_ms > 0).then_some(())
    })
    .await
    .unwrap();

    // "full" sorts first, so bin-packing would pick it on a tie: health decides.
    let ids = submit(&client, (0..6).map(|_| shell("true")).collect()).await;
    for id in &ids {
        let j = wait_state(&client, id, api::JobState::Complete).await;
        for a in attempts(&j) {
            assert_eq!(a.node_id, "roomy", "job {id} ran on an unhealthy node");
        }
    }

    let status = cli(&cluster, &["node", "status", "full"]);
    assert!(status.contains("unhealthy"), "{status}");
    assert!(
        status.contains("Failing checks") && status.contains("disk"),
        "{status}"
    );
    let list = cli(&cluster, &["node", "list"]);
    assert!(list.contains("unhealthy"), "{list}");

    // And as metrics: the replica's count, the agent's own verdict.
    let (_, text) = http_get(&cluster.replicas[&1].metrics_addr, "/metrics")
        .await
        .unwrap();
    assert_eq!(sample(&text, "gantry_nodes_unhealthy"), Some(1.0), "{text}");
    let agent_metrics = wait_for("the agent's health metrics", WAIT, || async {
        let (_, text) = http_get(&cluster.agents["full"].metrics_addr, "/metrics")
            .await
            .ok()?;
        sample(&text, "gantry_agent_healthy").map(|_| text)
    })
    .await
    .unwrap();
    assert_eq!(sample(&agent_metrics, "gantry_agent_healthy"), Some(0.0));
    assert!(
        agent_metrics.contains("gantry_agent_health_check_passed{check=\"disk\"} 0"),
        "{agent_metrics}"
    );
}

fn inventory(gpus: &[(&str, u64)]) -> String {
    let gpus: Vec<String> = gpus
        .iter()
        .enumerate()
        .map(|(i, (model, mem))| {
            format!(
                r#"{{"uuid":"GPU-{i}-{model}","model":"{model}","memory_total_mib":{mem},"temperature_c":40,"utilization_percent":7}}"#
            )
        })
        .collect();
    format!(r#"{{"gpus":[{}]}}"#, gpus.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t68_gpu_jobs_land_where_the_inventory_fits_and_see_their_gpus() {
    let mut cluster = Cluster::start(1, Timings::default()).await.unwrap();
    let dir = cluster.dir().to_owned();
    let a100 = dir.join("a100.json");
    std::fs::write(
        &a100,
        inventory(&[
            ("NVIDIA A100-SXM4-80GB", 81_920),
            ("NVIDIA A100-SXM4-80GB", 81_920),
        ]),
    )
    .unwrap();
    let t4 = dir.join("t4.json");
    std::fs::write(&t4, inventory(&[("Tesla T4", 15_360)])).unwrap();
    let a100_s = a100.to_str().unwrap();
    let t4_s = t4.to_str().unwrap();
    cluster
        .start_agent_with("gpu-a100", &[1], &["--gpu-inventory", a100_s])
        .unwrap();
    cluster
        .start_agent_with("gpu-t4", &[1], &["--gpu-inventory", t4_s])
        .unwrap();
    cluster.start_agent("cpu-only", &[1]).unwrap();
    cluster
        .wait_nodes_ready(&["gpu-a100", "gpu-t4", "cpu-only"])
        .await
        .unwrap();
    let client = cluster.client(&[1]).unwrap();
    let n = node(&client, "gpu-a100").await;
    assert_eq!(n.capacity.unwrap().gpus, 2);
    assert_eq!(n.gpus.len(), 2);
    assert_eq!(n.gpus[0].model, "NVIDIA A100-SXM4-80GB");

    let gpu_job = |gpus: u32, model: &str, min_mem: u64, script: &str| api::JobSpec {
        resources: Some(api::Resources {
            gpus,
            ..Default::default()
        }),
        gpu_model: model.into(),
        gpu_min_memory_mib: min_mem,
        ..shell(script)
    };
    let echo = "echo \"$CUDA_VISIBLE_DEVICES|$NVIDIA_VISIBLE_DEVICES\"; sleep 1";
    // Four one-A100 jobs compete for two A100s; a T4 job; a 40 GiB job (only
    // A100s have that); a CPU job that must see no GPU; a job nobody fits.
    let a100_jobs = submit(
        &client,
        (0..4).map(|_| gpu_job(1, "a100", 0, echo)).collect(),
    )
    .await;
    let t4_job = submit(&client, vec![gpu_job(1, "T4", 0, echo)]).await;
    let big_mem = submit(&client, vec![gpu_job(1, "", 40_000, echo)]).await;
    let both = submit(&client, vec![gpu_job(2, "A100", 0, echo)]).await;
    let cpu = submit(&client, vec![shell("echo \"[$CUDA_VISIBLE_DEVICES]\"")]).await;
    let never = submit(&client, vec![gpu_job(3, "", 0, "true")]).await;

    let mut a100_attempts = Vec::new();
    for id in a100_jobs.iter().chain(&big_mem).chain(&both) {
        let j = wait_state(&client, id, api::JobState::Complete).await;
        let a = attempts(&j)[0].clone();
        assert_eq!(a.node_id, "gpu-a100");
        let gpus: Vec<String> = a.gpus.iter().map(u32::to_string).collect();
        let want = gpus.join(",");
        assert_eq!(
            a.stdout_tail.trim(),
            format!("{want}|{want}"),
            "job {id} sees exactly its GPUs"
        );
        a100_attempts.push(a);
    }
    assert_eq!(a100_attempts.last().unwrap().gpus, vec![0, 1]);
    // Attempts whose lives overlapped never shared a GPU.
    for (i, x) in a100_attempts.iter().enumerate() {
        for y in &a100_attempts[i + 1..] {
            let overlap =
                x.assigned_at_ms < y.finished_at_ms && y.assigned_at_ms < x.finished_at_ms;
            if overlap {
                assert!(
                    x.gpus.iter().all(|g| !y.gpus.contains(g)),
                    "overlapping attempts shared a GPU: {x:?} {y:?}"
                );
            }
        }
    }
    let j = wait_state(&client, &t4_job[0], api::JobState::Complete).await;
    assert_eq!(attempts(&j)[0].node_id, "gpu-t4");
    assert_eq!(attempts(&j)[0].stdout_tail.trim(), "0|0");
    let j = wait_state(&client, &cpu[0], api::JobState::Complete).await;
    assert!(
        attempts(&j)[0].stdout_tail.contains("[]"),
        "a task given no GPU sees none: {:?}",
        attempts(&j)[0].stdout_tail
    );
    // Nobody has three GPUs: it stays pending.
    let j = client.get_job(&never[0], false).await.unwrap();
    assert_eq!(state(&j), api::JobState::Pending);

    // Node status shows the inventory with its telemetry.
    let status = cli(&cluster, &["node", "status", "gpu-a100"]);
    assert!(status.contains("NVIDIA A100-SXM4-80GB"), "{status}");
    assert!(status.contains("GPU-1-NVIDIA A100-SXM4-80GB"), "{status}");
    wait_for("GPU telemetry at the leader", WAIT, || async {
        let n = node(&client, "gpu-a100").await;
        (n.gpus.iter().all(|g| g.temperature_c == 40)).then_some(())
    })
    .await
    .unwrap();
    let (_, text) = http_get(&cluster.agents["gpu-a100"].metrics_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("gantry_agent_gpu_temperature_celsius{")
                && l.contains("gpu=\"1\"")
                && l.ends_with(" 40.0")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t68_infra_failures_blacklist_a_host_workload_failures_do_not() {
    let mut cluster = Cluster::start(1, Timings::default()).await.unwrap();
    cluster.start_agent("broken", &[1]).unwrap();
    cluster.wait_nodes_ready(&["broken"]).await.unwrap();
    let client = cluster.client(&[1]).unwrap();
    // The host's work directory turns into a file: no attempt can get a
    // directory there, an infrastructure failure (the health check's
    // runtime probe notices too, so only `aggressive` jobs still go there).
    let work = cluster.agents["broken"].data_dir.join("work");
    std::fs::remove_dir_all(&work).unwrap();
    std::fs::write(&work, "not a directory").unwrap();
    let aggressive = |script: &str| api::JobSpec {
        placement: "aggressive".into(),
        max_attempts: 3,
        ..shell(script)
    };
    let true_jobs = submit(&client, (0..3).map(|_| aggressive("true")).collect()).await;
    let broken = wait_for("node broken to be blacklisted", WAIT, || async {
        let n = node(&client, "broken").await;
        n.blacklisted.then_some(n)
    })
    .await
    .unwrap();
    assert!(
        broken.blacklist_reason.contains("infra failures"),
        "{}",
        broken.blacklist_reason
    );
    assert!(
        broken.blacklisted_until_ms > 0,
        "an automatic blacklist expires"
    );
    assert!(broken.infra_failures >= 2.9, "{broken:?}");

    // A healthy host whose jobs exit 1: workload failures never count.
    cluster.start_agent("steady", &[1]).unwrap();
    cluster.wait_nodes_ready(&["steady"]).await.unwrap();
    let failing = submit(
        &client,
        (0..4)
            .map(|_| api::JobSpec {
                max_attempts: 2,
                ..aggressive("exit 1")
            })
            .collect(),
    )
    .await;
    for id in &failing {
        let j = wait_state(&client, id, api::JobState::Failed).await;
        for a in attempts(&j) {
            assert_eq!(a.node_id, "steady");
            assert_eq!(a.failure_class, "workload");
        }
    }
    // The tasks that failed on the broken host ran on the steady one.
    for id in &true_jobs {
        let j = wait_state(&client, id, api::JobState::Complete).await;
        let all = attempts(&j);
        assert_eq!(all.last().unwrap().node_id, "steady");
        assert!(
            all[..all.len() - 1]
                .iter()
                .all(|a| a.failure_class == "infra")
        );
    }
    let steady = node(&client, "steady").await;
    assert!(!steady.blacklisted, "{steady:?}");
    assert_eq!(steady.infra_failures, 0.0);
    assert!(steady.successes >= 2.9, "{steady:?}");

    // Operators: the reason shows in node status; whitelisting clears it
    // and the node's infra record.
    let out = cli(&cluster, &["node", "status", "broken"]);
    assert!(out.contains("infra failures"), "{out}");
    cli(&cluster, &["node", "whitelist", "broken"]);
    let broken = node(&client, "broken").await;
    assert!(
        !broken.blacklisted && broken.infra_failures == 0.0,
        "{broken:?}"
    );
    cli(
        &cluster,
        &["node", "blacklist", "steady", "--reason", "failing DIMM"],
    );
    let out = cli(&cluster, &["node", "status", "steady"]);
    assert!(
        out.contains("until whitelisted") && out.contains("failing DIMM"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t68_service_probe_ready_and_warm_up_with_diagnostics() {
    let mut cluster = Cluster::start(1, Timings::default()).await.unwrap();
    cluster.start_agent("svc", &[1]).unwrap();
    cluster.wait_nodes_ready(&["svc"]).await.unwrap();
    let client = cluster.client(&[1]).unwrap();
    let ports = cluster_tests::free_addrs(2).unwrap();
    let port = |addr: &str| addr.rsplit_once(':').unwrap().1.parse::<u32>().unwrap();
    let (serving, silent) = (port(&ports[0]), port(&ports[1]));
    let http_probe = |p: u32, warmup_ms: u64| api::Probe {
        check: Some(api::probe::Check::Http(api::HttpProbe {
            host: String::new(),
            port: p,
            path: "/".into(),
        })),
        warmup_ms,
        interval_ms: 200,
        timeout_ms: 0,
    };
    let service = submit(
        &client,
        vec![api::JobSpec {
            readiness: Some(http_probe(serving, 30_000)),
            ..shell(&format!(
                "exec python3 -m http.server {serving} --bind 127.0.0.1"
            ))
        }],
    )
    .await;
    let never = submit(
        &client,
        vec![api::JobSpec {
            readiness: Some(http_probe(silent, 2_000)),
            ..shell("exec sleep 300")
        }],
    )
    .await;

    let ready = wait_for("the service to be ready", WAIT, || async {
        let j = client.get_job(&service[0], false).await.ok()?;
        let a = attempts(&j).last().cloned().cloned()?;
        (a.ready_at_ms > 0).then_some(a)
    })
    .await
    .unwrap();
    assert_eq!(ready.state, "running");
    assert!(
        ready
            .diagnostics
            .contains(&format!("http GET http://127.0.0.1:{serving}/")),
        "{}",
        ready.diagnostics
    );

    let j = wait_state(&client, &never[0], api::JobState::Failed).await;
    let a = attempts(&j)[0];
    assert_eq!(a.failure_class, "warm-up");
    assert!(
        a.diagnostics
            .contains(&format!("http GET http://127.0.0.1:{silent}/")),
        "{}",
        a.diagnostics
    );
    assert!(a.diagnostics.contains("unreachable"), "{}", a.diagnostics);
    // A warm-up failure is the job's, not the host's.
    let n = node(&client, "svc").await;
    assert_eq!(n.infra_failures, 0.0);
    assert!(!n.blacklisted);
    let out = cli(&cluster, &["job", "status", &never[0]]);
    assert!(
        out.contains("warm-up") && out.contains("Diagnostics"),
        "{out}"
    );

    client.cancel_job(&service[0], "test over").await.unwrap();
    wait_state(&client, &service[0], api::JobState::Cancelled).await;
}
