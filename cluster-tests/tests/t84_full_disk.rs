//! A full disk is an alarm, not a death: replicas on a small filesystem
//! refuse new submissions once free space falls below their reserve (reads
//! go on, nothing acknowledged is lost) and take them again when space
//! returns, without a restart. A replica whose storage fails anyway exits
//! with its documented code, and comes back with everything once restarted.
//!
//! Needs root (it mounts a tmpfs); says SKIPPED otherwise.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster_tests::{Cluster, Timings, all_jobs, http_get, sample, wait_for};
use gantry_client::{Client, api};
use tonic::Code;

/// The replicas' data dirs share one filesystem of this size, as replicas
/// with the same data fill their disks together.
const FS_MIB: u64 = 96;
const RESERVE_MIB: u64 = 24;
/// `gantry server`'s exit code when its Raft core stopped.
const EXIT_STORAGE: i32 = 74;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, mib: u64) -> Result<Self, String> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Self(dir.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn free_mib(dir: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.blocks_available()) * u64::from(st.fragment_size());
    free / (1024 * 1024)
}

/// Grows `path` until the filesystem has `leave_mib` free (or less).
fn fill(path: &Path, leave_mib: u64) {
    let dir = path.parent().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let chunk = vec![0x5au8; 1024 * 1024];
    while free_mib(dir) > leave_mib {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = f.flush();
}

fn job() -> api::JobSpec {
    api::JobSpec {
        argv: vec!["/bin/true".into()],
        ..Default::default()
    }
}

async fn submit(client: &Client) -> Result<String, gantry_client::ClientError> {
    let r = client.submit_jobs(vec![job()]).await?;
    Ok(r.jobs[0].job_id.clone())
}

async fn metric(cluster: &Cluster, id: u64, series: &str) -> Option<f64> {
    let (_, text) = http_get(&cluster.replicas[&id].metrics_addr, "/metrics")
        .await
        .ok()?;
    sample(&text, series)
}

#[tokio::test(flavor = "multi_thread")]
async fn t84_a_full_disk_refuses_new_work_and_recovers_when_space_returns() {
    let root = tempfile::tempdir().unwrap();
    let _mount = match Mount::tmpfs(root.path(), FS_MIB) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here ({e}); the full-disk test needs root");
            return;
        }
    };
    let env = vec![(
        "GANTRY_DISK_RESERVE_MIB".to_owned(),
        RESERVE_MIB.to_string(),
    )];
    let mut cluster = Cluster::start_with_data_root(3, Timings::default(), env, root.path())
        .await
        .unwrap();
    let client = cluster.client(&[1, 2, 3]).unwrap();
    let mut acknowledged = Vec::new();
    for _ in 0..20 {
        acknowledged.push(submit(&client).await.unwrap());
    }
    // Jobs to cancel later, when the disk is full to the last byte.
    let mut to_cancel = Vec::new();
    for _ in 0..20 {
        let r = client.submit_jobs(vec![job(); 100]).await.unwrap();
        to_cancel.extend(r.jobs.into_iter().map(|j| j.job_id));
    }
    acknowledged.extend(to_cancel.iter().cloned());

    // Someone else fills the disk: every replica raises its alarm, and
    // new submissions are refused at once, naming the replica and its space.
    let filler = root.path().join("filler");
    fill(&filler, RESERVE_MIB / 2);
    tracing::info!(free_mib = free_mib(root.path()), "disk filled");
    wait_for(
        "every replica to raise the NOSPACE alarm",
        Duration::from_secs(10),
        || async {
            for id in 1..=3 {
                if metric(&cluster, id, "gantry_nospace_alarm").await != Some(1.0) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .unwrap();
    for _ in 0..5 {
        let err = submit(&client).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
        assert!(err.to_string().contains("low on disk"), "{err}");
    }
    // Reads and operators' writes that are not new work still go through.
    for id in &acknowledged {
        let job = client.get_job(id, false).await.unwrap();
        assert_eq!(job.id, *id);
    }
    assert_eq!(all_jobs(&client).await.unwrap().len(), acknowledged.len());
    for id in 1..=3 {
        assert!(
            cluster.exited(id).is_none(),
            "replica {id} exited while the disk was low"
        );
    }

    // Space returns: submissions are taken again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let id = wait_for(
        "submissions to be taken again",
        Duration::from_secs(10),
        || async { submit(&client).await.ok() },
    )
    .await
    .unwrap();
    acknowledged.push(id);

    // A disk filled to the last byte: a write that is not new work (a
    // cancel) fails in storage. The replicas must not live on with a dead
    // Raft core: they exit with the storage code, and a restart after the
    // space is back finds every acknowledged job.
    fill(&filler, 0);
    let mut exits: BTreeMap<u64, Option<i32>> = BTreeMap::new();
    let mut note_exits = |cluster: &mut Cluster| {
        for id in 1..=3 {
            if let Some(s) = cluster.exited(id) {
                exits.insert(id, s.code());
            }
        }
        !exits.is_empty()
    };
    let mut refused = 0;
    for id in &to_cancel {
        if client.cancel_job(id, "disk full").await.is_err() {
            refused += 1;
        }
        if note_exits(&mut cluster) || refused > 10 {
            break;
        }
    }
    let codes = wait_for(
        "a replica whose storage failed to exit",
        Duration::from_secs(30),
        || {
            let done = note_exits(&mut cluster);
            async move { done.then_some(()) }
        },
    )
    .await
    .map(|()| exits.clone());
    std::fs::remove_file(&filler).unwrap();
    let codes = match codes {
        Ok(c) => c,
        Err(e) => panic!("{e}{}", cluster.diagnose()),
    };
    for (id, code) in &codes {
        assert_eq!(
            *code,
            Some(EXIT_STORAGE),
            "replica {id} exited with {code:?}"
        );
    }
    for id in 1..=3 {
        let _ = cluster.exited(id);
        if cluster.pid(id).is_none() {
            cluster.restart(id).unwrap();
        }
    }
    let client = cluster.client(&[1, 2, 3]).unwrap();
    let jobs = wait_for(
        "the restarted cluster to answer",
        Duration::from_secs(30),
        || async { all_jobs(&client).await.ok() },
    )
    .await
    .unwrap();
    for id in &acknowledged {
        assert!(
            jobs.iter().any(|j| j.id == *id),
            "acknowledged job {id} lost"
        );
    }
}
