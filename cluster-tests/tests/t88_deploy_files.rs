//! The deployment files pass their own tools' checks: `systemd-analyze
//! verify` on the units, `kubernetes-validate --strict` on the manifests.
//! Where a tool is missing the test says it was skipped and why; under CI
//! (`CI=true`, where .ci/run installs both) a missing tool is a failure.

// Tests may unwrap.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use cluster_tests::{gantry_bin, repo_root};

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no .{ext} files in {dir}");
    found
}

fn skip_or_fail(what: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what}: {why} (CI installs it: see .ci/run)"
    );
    let _ = writeln!(std::io::stderr(), "{what} SKIPPED: {why}");
}

#[test]
fn t88_systemd_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        skip_or_fail("systemd-analyze verify", "systemd-analyze is not installed");
        return;
    }
    // verify checks that ExecStart's program exists: point it at this build.
    let tmp = tempfile::tempdir().unwrap();
    let bin = gantry_bin().unwrap();
    let mut units = Vec::new();
    for unit in files("deploy/systemd", "service") {
        let text = std::fs::read_to_string(&unit).unwrap();
        assert!(
            text.contains("ExecStart=/usr/local/bin/gantry "),
            "{}",
            unit.display()
        );
        let copy = tmp.path().join(unit.file_name().unwrap());
        std::fs::write(
            &copy,
            text.replace("/usr/local/bin/gantry", bin.to_str().unwrap()),
        )
        .unwrap();
        units.push(copy);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

#[test]
fn t88_kubernetes_manifests_validate() {
    let Ok(tool) = std::env::var("GANTRY_K8S_VALIDATE") else {
        skip_or_fail(
            "kubernetes-validate",
            "GANTRY_K8S_VALIDATE (the path of kubernetes-validate) is not set",
        );
        return;
    };
    let manifests = files("deploy/kubernetes", "yaml");
    let out = Command::new(&tool)
        .arg("--strict")
        .args(&manifests)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // Every resource the guide describes was checked.
    for kind in [
        "statefulset/gantry",
        "service/gantry",
        "poddisruptionbudget/gantry",
        "daemonset/gantry-agent",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind} ")),
            "{text}"
        );
    }
}
