use super::*;

const MOUNTINFO: &str = "\
25 30 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate
28 25 0:26 / /sys/fs/cgroup/memory rw,nosuid shared:6 - cgroup cgroup rw,memory
29 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:7 - cgroup cgroup rw,cpu,cpuacct
30 25 0:28 / /sys/fs/cgroup/pids rw,nosuid shared:8 - cgroup cgroup rw,pids
31 25 0:29 / /mnt/with\\040space rw - ext4 /dev/sda1 rw
";

#[test]
fn t24_hierarchies_are_found_in_mountinfo() {
    let found = mounts(MOUNTINFO);
    assert_eq!(
        found,
        vec![
            (Kind::V2, PathBuf::from("/sys/fs/cgroup/unified")),
            (Kind::V1Memory, PathBuf::from("/sys/fs/cgroup/memory")),
            (Kind::V1Cpu, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
            (Kind::V1Cpuacct, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
            (Kind::V1Pids, PathBuf::from("/sys/fs/cgroup/pids")),
        ]
    );
    let v2_only = "40 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    assert_eq!(
        mounts(v2_only),
        vec![(Kind::V2, PathBuf::from("/sys/fs/cgroup"))]
    );
}

#[test]
fn t24_names_are_one_safe_path_component() {
    assert_eq!(component("node-1.a_b"), "node-1.a_b");
    assert_eq!(component("../etc"), ".._etc");
    assert_eq!(component(".."), "_..");
    assert_eq!(component("a/b c"), "a_b_c");
    assert_eq!(component(""), "_");
}

/// A directory with the (empty) files the kernel would have made.
fn fake(dir: &Path, files: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for f in files {
        std::fs::write(dir.join(f), "").unwrap();
    }
}

fn read(dir: &Path, f: &str) -> String {
    std::fs::read_to_string(dir.join(f)).unwrap()
}

#[test]
fn t24_limits_are_written_in_each_hierarchys_terms() {
    let root = tempfile::tempdir().unwrap();
    let limits = Limits {
        memory_bytes: 64 << 20,
        cpu_millis: 250,
        pids: 100,
    };
    // cgroup v2: one directory, every controller.
    let v2 = root.path().join("v2/task");
    fake(
        &v2,
        &["memory.max", "memory.swap.max", "cpu.max", "pids.max"],
    );
    let task = TaskCgroup {
        dirs: vec![(Kind::V2, v2.clone())],
    };
    task.create(&limits).unwrap();
    assert_eq!(read(&v2, "memory.max"), "67108864");
    assert_eq!(read(&v2, "memory.swap.max"), "0");
    assert_eq!(read(&v2, "cpu.max"), "25000 100000");
    assert_eq!(read(&v2, "pids.max"), "100");

    // cgroup v1: a directory per controller; swap held by memsw.
    let mem = root.path().join("memory/task");
    let cpu = root.path().join("cpu/task");
    let pids = root.path().join("pids/task");
    fake(
        &mem,
        &["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
    );
    fake(&cpu, &["cpu.cfs_period_us", "cpu.cfs_quota_us"]);
    fake(&pids, &["pids.max"]);
    let task = TaskCgroup {
        dirs: vec![
            (Kind::V1Memory, mem.clone()),
            (Kind::V1Cpu, cpu.clone()),
            (Kind::V1Pids, pids.clone()),
        ],
    };
    task.create(&limits).unwrap();
    assert_eq!(read(&mem, "memory.limit_in_bytes"), "67108864");
    assert_eq!(read(&mem, "memory.memsw.limit_in_bytes"), "67108864");
    assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "25000");
    assert_eq!(read(&pids, "pids.max"), "100");

    // A slot used again without limits: each one is reset.
    task_v2_reset(&v2);
    task.create(&Limits::default()).unwrap();
    assert_eq!(read(&mem, "memory.limit_in_bytes"), "-1");
    assert_eq!(read(&mem, "memory.memsw.limit_in_bytes"), "-1");
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "-1");
    assert_eq!(read(&pids, "pids.max"), "max");
}

fn task_v2_reset(v2: &Path) {
    let task = TaskCgroup {
        dirs: vec![(Kind::V2, v2.to_path_buf())],
    };
    task.create(&Limits::default()).unwrap();
    assert_eq!(read(v2, "memory.max"), "max");
    assert_eq!(read(v2, "memory.swap.max"), "max");
    assert_eq!(read(v2, "cpu.max"), "max 100000");
    assert_eq!(read(v2, "pids.max"), "max");
}

#[test]
fn t24_oom_kills_and_usage_are_read_from_the_kernels_files() {
    let root = tempfile::tempdir().unwrap();
    let v2 = root.path().join("v2");
    fake(&v2, &[]);
    std::fs::write(
        v2.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
    )
    .unwrap();
    std::fs::write(v2.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
    let t = TaskCgroup {
        dirs: vec![(Kind::V2, v2.clone())],
    };
    assert_eq!(t.oom_kills(), 1);
    assert_eq!(t.cpu_usage_ns(), Some(1_500_000));
    std::fs::write(v2.join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
    assert_eq!(t.oom_kills(), 0);

    let mem = root.path().join("memory");
    let acct = root.path().join("cpuacct");
    fake(&mem, &[]);
    fake(&acct, &[]);
    std::fs::write(
        mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    .unwrap();
    std::fs::write(acct.join("cpuacct.usage"), "123456\n").unwrap();
    let t = TaskCgroup {
        dirs: vec![(Kind::V1Memory, mem), (Kind::V1Cpuacct, acct)],
    };
    assert_eq!(t.oom_kills(), 2);
    assert_eq!(t.cpu_usage_ns(), Some(123_456));
}

/// The kernel's cgroups, where this test may write them (root).
#[test]
fn t24_a_real_cgroup_holds_a_process_and_kill_all_empties_it() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to write cgroups");
        return;
    }
    let name = format!("unit-{}", std::process::id());
    let cgroups = match Cgroups::open(&name) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED: no usable cgroups here: {e}");
            return;
        }
    };
    let task = cgroups.task("t");
    task.create(&Limits {
        memory_bytes: 256 << 20,
        cpu_millis: 500,
        pids: 64,
    })
    .unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    for (_, d) in &task.dirs {
        std::fs::write(d.join("cgroup.procs"), pid.to_string()).unwrap();
    }
    assert_eq!(task.pids(), vec![pid]);
    assert!(
        task.kill_all(Duration::from_secs(5)),
        "the group is empty after kill_all"
    );
    let _ = child.wait();
    task.remove();
    assert!(task.dirs.iter().all(|(_, d)| !d.exists()));
    cgroups.remove_if_empty();
}
