//! What a sandbox's cgroup costs on this machine: creating a group with memory, pids and cpu
//! limits, adding a process, removing it with the process alive and empty, detecting the
//! host's layout, sweeping stale groups, and starting and finishing the cleaner. It takes the
//! limits `imgfs run --memory 64m --pids-limit 64 --cpus 0.5` asks for, and prints the mean
//! of 20 runs of each step; it checks nothing (the unit tests of `runner::confine::cgroup`
//! do).
//!
//! `cargo bench --bench cgroup_costs` (as root, on a host with those controllers).

use std::time::{Duration, Instant};

use imgfs::runner::confine::cgroup::{Cgroup, Host, Layout, Limits, remove_stale};

const RUNS: u32 = 20;

fn sleeper() -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep")
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert!(unsafe { libc::geteuid() } == 0, "cgroup_costs needs root");
    let l = Limits::from_flags(Some("64m"), None, Some("64"), Some("0.5")).expect("limits");
    let name = format!("bench-{}-cost", std::process::id());
    let [mut create, mut add, mut remove, mut empty] = [Duration::ZERO; 4];
    let mut children = Vec::new();
    for _ in 0..RUNS {
        let mut child = sleeper();
        let t = Instant::now();
        let cg = Cgroup::create(&l, &name).expect("create a cgroup");
        create += t.elapsed();
        let t = Instant::now();
        cg.add(child.id() as libc::pid_t).expect("add a process");
        add += t.elapsed();
        let t = Instant::now();
        cg.remove();
        remove += t.elapsed();
        let _ = child.wait();
        children.push(child);
        let t = Instant::now();
        Cgroup::create(&l, &name).expect("create a cgroup").remove();
        empty += t.elapsed();
    }
    let cg = Cgroup::create(&l, &name).expect("create a cgroup");
    let t = Instant::now();
    let cleaner = cg.spawn_cleaner().expect("spawn the cleaner");
    let spawn = t.elapsed();
    let t = Instant::now();
    cg.remove();
    cleaner.finish();
    let finish = t.elapsed();
    let t = Instant::now();
    remove_stale();
    let stale = t.elapsed();
    let t = Instant::now();
    let host = Host::detect().expect("detect the cgroups");
    let detect = t.elapsed();
    println!(
        "cgroup costs ({}, mean of {RUNS}): create {:?}, add {:?}, remove with a live process \
         {:?}; create+remove empty {:?}; detect {detect:?}; remove_stale {stale:?}; \
         spawn_cleaner {spawn:?}, remove+finish with a cleaner {finish:?}",
        match host.layout {
            Layout::V1 { .. } => "v1",
            Layout::V2 { .. } => "v2",
        },
        create / RUNS,
        add / RUNS,
        remove / RUNS,
        empty / RUNS,
    );
}
