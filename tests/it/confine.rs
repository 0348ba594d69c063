//! The confinement of `imgfs run` compared with `docker run` of the same image: capabilities,
//! seccomp, masked and read-only paths (the probe battery tests/fixtures/probe.py, run in both
//! with the same flags, must print the same lines), and the cgroup limits (both sandboxes
//! must stop the same programs the same way, and imgfs leaves no cgroup behind).

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{
    DEBIAN_IMAGE, TempDir, imgfs, repo_root, require, require_docker, run, shared_run_cache, text,
    wait_until,
};

/// Where the battery lives on the host; both sandboxes see it read-only at /probe.
fn probe_dir() -> PathBuf {
    repo_root().join("tests/fixtures")
}

fn probe_volume() -> String {
    format!("{}:/probe:ro", probe_dir().display())
}

/// `docker run --rm --network none -v FIXTURES:/probe:ro OPTS IMAGE ARGS`.
fn docker_run(opts: &[&str], args: &[&str]) -> Output {
    run(Command::new("docker")
        .args(["run", "--rm", "--network", "none", "-v", &probe_volume()])
        .args(opts)
        .arg(DEBIAN_IMAGE)
        .args(args))
}

/// `imgfs run --cache-dir SHARED --network none -v FIXTURES:/probe:ro OPTS IMAGE -- ARGS`,
/// as docker's above.
fn imgfs_command(opts: &[&str], args: &[&str]) -> Command {
    let mut cmd = imgfs();
    cmd.arg("run")
        .arg("--cache-dir")
        .arg(shared_run_cache())
        .args(["--network", "none", "-v", &probe_volume()])
        .args(opts)
        .arg(DEBIAN_IMAGE)
        .arg("--")
        .args(args);
    cmd
}

fn imgfs_run(opts: &[&str], args: &[&str]) -> Output {
    run(&mut imgfs_command(opts, args))
}

const BATTERY: [&str; 2] = ["python3", "/probe/probe.py"];

/// The battery's lines as (probe, value), in order.
type Probes = Vec<(String, String)>;

fn parse(stdout: &str) -> Probes {
    stdout
        .lines()
        .map(|l| match l.split_once(' ') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}stderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// The battery under docker with `opts`: the reference, so a failure to produce it is a
/// missing prerequisite, not a finding about imgfs.
fn docker_probes(opts: &[&str]) -> Probes {
    let out = docker_run(opts, &BATTERY);
    require(
        out.status.success(),
        &format!(
            "docker run {} ran the probe battery: {}",
            opts.join(" "),
            describe(&out)
        ),
    );
    parse(&text(&out.stdout))
}

fn imgfs_probes(opts: &[&str]) -> Probes {
    let out = imgfs_run(opts, &BATTERY);
    assert!(
        out.status.success(),
        "imgfs run {} did not finish the probe battery: {}",
        opts.join(" "),
        describe(&out)
    );
    parse(&text(&out.stdout))
}

/// docker's battery without flags, run once for the tests that set it against another.
fn docker_default() -> &'static Probes {
    static DEFAULT: OnceLock<Probes> = OnceLock::new();
    DEFAULT.get_or_init(|| docker_probes(&[]))
}

/// The probes whose values differ, as `probe: left X, right Y` lines (a probe printed on one
/// side only shows as `(missing)` on the other).
fn differences(left: (&str, &Probes), right: (&str, &Probes)) -> Vec<String> {
    let r: BTreeMap<&str, &str> = right.1.iter().map(|(k, v)| (&**k, &**v)).collect();
    let l: BTreeMap<&str, &str> = left.1.iter().map(|(k, v)| (&**k, &**v)).collect();
    let mut out = Vec::new();
    for (k, v) in left.1 {
        let w = r.get(&**k).copied().unwrap_or("(missing)");
        if w != v {
            out.push(format!("{k}: {} {v}, {} {w}", left.0, right.0));
        }
    }
    for (k, w) in right.1.iter().filter(|(k, _)| !l.contains_key(&**k)) {
        out.push(format!("{k}: {} (missing), {} {w}", left.0, right.0));
    }
    out
}

/// Where imgfs is knowingly stricter than the docker it is compared with, each as (probe,
/// docker's value, imgfs's value): only exactly that pair is let through, so imgfs being
/// looser, or any other change, still fails.
const STRICTER: [(&str, &str, &str); 3] = [
    // The profile is docker's current one, which refuses io_uring; Debian 12's docker 20.10
    // still allowed it.
    ("io_uring_setup.bad", "EFAULT", "EPERM"),
    // The sandbox's root and /tmp are nodev, so no device node made inside can be opened;
    // docker lets a container open those its devices cgroup allows (null among them).
    ("mknod.null", "ok", "open:EACCES"),
    ("mknod.fuse", "open:EPERM", "open:EACCES"),
];

/// The differences `differences` found, less the known, stricter ones of [`STRICTER`].
fn unexpected(docker: &Probes, mine: &Probes) -> Vec<String> {
    let stricter: Vec<String> = STRICTER
        .iter()
        .map(|(probe, d, i)| format!("{probe}: docker {d}, imgfs {i}"))
        .collect();
    differences(("docker", docker), ("imgfs", mine))
        .into_iter()
        .filter(|d| !stricter.contains(d))
        .collect()
}

/// Runs the battery under both with `opts` and fails with the differing probes. The flags
/// must also change what docker shows, so a flag that does nothing cannot pass unnoticed.
#[track_caller]
fn assert_confined_like_docker(opts: &[&str]) {
    assert_confined_like(opts, opts);
}

/// [`assert_confined_like_docker`] where docker needs other flags (`docker_opts`) for what
/// imgfs does with `opts`.
#[track_caller]
fn assert_confined_like(opts: &[&str], docker_opts: &[&str]) {
    let _docker = require_docker();
    let docker = docker_probes(docker_opts);
    let mine = imgfs_probes(opts);
    if !opts.is_empty() {
        assert!(
            !differences(("default", docker_default()), ("flagged", &docker)).is_empty(),
            "docker run {} shows the same as without the flags: the probes miss what they do",
            docker_opts.join(" ")
        );
    }
    let diff = unexpected(&docker, &mine);
    assert!(
        diff.is_empty(),
        "imgfs run {} is confined unlike docker run ({} of {} probes differ):\n  {}",
        opts.join(" "),
        diff.len(),
        docker.len(),
        diff.join("\n  ")
    );
}

fn value<'a>(probes: &'a Probes, name: &str) -> &'a str {
    probes
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the battery printed no {name}"))
}

/// The reference itself is confined, and lifting the confinement shows in many probes: the
/// comparisons below cannot pass by both sides printing nothing of interest.
#[test]
fn the_battery_tells_docker_confinement_apart() {
    let _docker = require_docker();
    let default = docker_default();
    assert!(default.len() >= 30, "{default:?}");
    assert_eq!(value(default, "status.Seccomp"), "2", "a seccomp filter");
    let caps = |hex: &str| {
        u64::from_str_radix(hex, 16)
            .expect("a capability set")
            .count_ones()
    };
    let host = std::fs::read_to_string("/proc/self/status").expect("read status");
    let host_eff = host
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff");
    assert!(
        caps(value(default, "status.CapEff")) < caps(host_eff.trim()),
        "fewer capabilities than root on the host"
    );
    assert_eq!(value(default, "mount.tmpfs"), "EPERM");
    assert_eq!(value(default, "path./proc/sys"), "dir,proc,ro,entries");
    let masked = default.iter().filter(|(k, v)| {
        k.starts_with("path.") && (v.starts_with("chr:1:3,") || v.contains(",tmpfs,ro,empty"))
    });
    assert!(masked.count() >= 2, "masked paths: {default:?}");
    let unconfined = docker_probes(&["--security-opt", "seccomp=unconfined"]);
    let lifted = differences(("default", default), ("unconfined", &unconfined));
    assert!(lifted.len() >= 5, "{lifted:?}");
    let admin = docker_probes(&["--cap-add", "SYS_ADMIN"]);
    let lifted = differences(("default", default), ("sys_admin", &admin));
    assert!(lifted.len() >= 5, "{lifted:?}");
}

#[test]
fn default_confinement_matches_docker() {
    assert_confined_like_docker(&[]);
}

#[test]
fn non_root_user_matches_docker() {
    assert_confined_like_docker(&["-u", "1000"]);
}

#[test]
fn cap_add_sys_admin_matches_docker() {
    assert_confined_like_docker(&["--cap-add", "SYS_ADMIN"]);
}

#[test]
fn cap_drop_all_then_add_chown_matches_docker() {
    assert_confined_like_docker(&["--cap-drop", "ALL", "--cap-add", "CHOWN"]);
}

#[test]
fn cap_names_with_and_without_prefix_match_docker() {
    assert_confined_like_docker(&["--cap-drop", "NET_RAW", "--cap-drop", "cap_mknod"]);
}

#[test]
fn seccomp_unconfined_matches_docker() {
    assert_confined_like_docker(&["--security-opt", "seccomp=unconfined"]);
}

/// A profile in docker's format: everything allowed but two calls, one refused with the
/// default errno and one with its own.
const CUSTOM_PROFILE: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"},
    {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
  ]
}"#;

#[test]
fn custom_seccomp_profile_matches_docker() {
    let dir = TempDir::new("imgfs-seccomp-profile");
    let profile = dir.path().join("profile.json");
    std::fs::write(&profile, CUSTOM_PROFILE).unwrap();
    let opt = format!("seccomp={}", profile.display());
    assert_confined_like_docker(&["--security-opt", &opt]);
}

#[test]
fn systempaths_unconfined_matches_docker() {
    assert_confined_like_docker(&["--security-opt", "systempaths=unconfined"]);
}

/// Without root, the sandbox's root is the caller in a user namespace of its own, and the
/// same rules apply there: the capability sets, no_new_privs and seccomp mode equal docker's,
/// and so does every probe that docker's seccomp filter decides (those that
/// `seccomp=unconfined` changes under docker).
#[test]
fn unprivileged_runs_are_confined_like_docker() {
    let _docker = require_docker();
    let user = common::test_user();
    // The user's own cache and a copy of the battery it can read.
    let cache = TempDir::new("imgfs-confine-user-cache");
    let probe = TempDir::new("imgfs-confine-user-probe");
    std::fs::copy(probe_dir().join("probe.py"), probe.path().join("probe.py")).unwrap();
    for (path, mode) in [(cache.path(), "0700"), (probe.path(), "0755")] {
        let chown = Command::new("chown").arg(user).arg(path).status();
        require(chown.is_ok_and(|s| s.success()), "chown to the test user");
        let chmod = Command::new("chmod").arg(mode).arg(path).status();
        require(
            chmod.is_ok_and(|s| s.success()),
            "chmod of a test directory",
        );
    }
    let out = run(common::as_user(user)
        .arg(env!("CARGO_BIN_EXE_imgfs"))
        .arg("run")
        .arg("--cache-dir")
        .arg(cache.path())
        .arg("-v")
        .arg(format!("{}:/probe:ro", probe.path().display()))
        .arg(common::fixtures_dir().join("debian-python.tar"))
        .arg("--")
        .args(BATTERY));
    assert!(out.status.success(), "{}", describe(&out));
    let mine = parse(&text(&out.stdout));
    let docker = docker_default();
    let unconfined = docker_probes(&["--security-opt", "seccomp=unconfined"]);
    let by_seccomp: Vec<String> = differences(("default", docker), ("unconfined", &unconfined))
        .iter()
        .filter_map(|d| d.split_once(':').map(|(k, _)| k.to_string()))
        .collect();
    assert!(by_seccomp.len() >= 5, "{by_seccomp:?}");
    let compared = |k: &str| k.starts_with("status.") || by_seccomp.iter().any(|b| b == k);
    let pick = |p: &Probes| -> Probes { p.iter().filter(|(k, _)| compared(k)).cloned().collect() };
    let diff = unexpected(&pick(docker), &pick(&mine));
    assert!(
        diff.is_empty(),
        "an unprivileged imgfs run is confined unlike docker run:\n  {}",
        diff.join("\n  ")
    );
}

#[test]
fn no_new_privileges_matches_docker() {
    assert_confined_like_docker(&["--security-opt", "no-new-privileges"]);
}

/// This process's bounding set.
fn own_bounding_set() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("CapBnd is hex"))
        .expect("CapBnd in /proc/self/status")
}

/// Capabilities the kernel knows that this process's bounding set lacks, by number.
fn missing_capabilities() -> Vec<u32> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .expect("read cap_last_cap")
        .trim()
        .parse()
        .expect("cap_last_cap is a number");
    let bounding = own_bounding_set();
    (0..=last).filter(|c| bounding & (1 << c) == 0).collect()
}

#[test]
fn privileged_matches_docker() {
    let _docker = require_docker();
    // docker gives a privileged container every capability the kernel knows, and cannot start
    // one where the bounding set it runs under lacks some (runc: "unable to apply caps"), as
    // on machines that run inside a container themselves. imgfs gives what it holds. There,
    // docker is asked for the same by name: every capability it can give, no seccomp, no
    // masked paths; what that cannot ask for (a writable /sys, no devices cgroup) is checked
    // on imgfs alone. The capability sets are compared as sets: imgfs gives all it holds,
    // docker 20.10 none it does not know. Device nodes stay unusable under imgfs (nodev).
    let missing = missing_capabilities();
    let docker_opts: Vec<String> = if missing.is_empty() {
        vec!["--privileged".into()]
    } else {
        let mut o: Vec<String> = ["--cap-add", "ALL", "--security-opt", "seccomp=unconfined"]
            .map(String::from)
            .to_vec();
        o.extend(["--security-opt".into(), "systempaths=unconfined".into()]);
        for c in &missing {
            o.extend(["--cap-drop".into(), capability_name(*c)]);
        }
        o
    };
    let docker_opts: Vec<&str> = docker_opts.iter().map(String::as_str).collect();
    let docker = docker_probes(&docker_opts);
    let lifted = differences(("default", docker_default()), ("privileged", &docker));
    assert!(lifted.len() >= 10, "{lifted:?}");
    let mine = imgfs_probes(&["--privileged"]);
    let by_name: BTreeMap<&str, &str> = mine.iter().map(|(k, v)| (&**k, &**v)).collect();
    let differ: Vec<String> = unexpected(&docker, &mine)
        .into_iter()
        .filter(|d| {
            !d.starts_with("path./sys")
                && !d.starts_with("open_w./sys/")
                && !d.starts_with("mknod.")
                && !d.starts_with("status.Cap")
        })
        .collect();
    assert!(
        differ.is_empty(),
        "imgfs run --privileged differs from docker run {}:\n  {}",
        docker_opts.join(" "),
        differ.join("\n  ")
    );
    // The capabilities: all imgfs holds, which covers all docker could give (docker 20.10
    // knows none past AUDIT_READ).
    let own = own_bounding_set();
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        let probe = format!("status.{set}");
        let hex = |v: &str| u64::from_str_radix(v, 16).unwrap_or_else(|_| panic!("{probe}: {v}"));
        let theirs = hex(value(&docker, &probe));
        let ours = hex(value(&mine, &probe));
        assert_eq!(ours, own, "{probe} under imgfs run --privileged");
        assert_eq!(
            theirs & !ours,
            0,
            "{probe}: docker {theirs:x}, imgfs {ours:x}"
        );
    }
    assert!(
        by_name
            .get("open_w./sys/kernel/mm/transparent_hugepage/enabled")
            .is_some_and(|v| *v != "EROFS"),
        "imgfs run --privileged left /sys read-only: {by_name:?}"
    );
}

/// docker's name for capability number `n` (capabilities(7)).
fn capability_name(n: u32) -> String {
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES.get(n as usize).map_or_else(
        || panic!("capability {n} unknown to this test"),
        |s| s.to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// Limits

/// The group of the `imgfs run` with this pid, in every hierarchy that has one: v2's
/// /sys/fs/cgroup/imgfs/PID, or v1's /sys/fs/cgroup/CONTROLLERS/imgfs/PID.
fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut found = Vec::new();
    let v2 = root.join("imgfs").join(pid.to_string());
    if v2.is_dir() {
        found.push(v2);
    }
    for entry in std::fs::read_dir(root)
        .expect("read /sys/fs/cgroup")
        .flatten()
    {
        let group = entry.path().join("imgfs").join(pid.to_string());
        if group.is_dir() {
            found.push(group);
        }
    }
    found
}

#[track_caller]
fn assert_no_cgroup_left(pid: u32) {
    let left = cgroups_of(pid);
    assert!(left.is_empty(), "imgfs run left its cgroup: {left:?}");
}

/// A child process killed (by its pid) if a test fails while it runs.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `imgfs run` with `opts` to completion, then no cgroup of it may remain.
fn imgfs_limited(opts: &[&str], args: &[&str]) -> Output {
    let child = imgfs_command(opts, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start imgfs run");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for imgfs run");
    assert_no_cgroup_left(pid);
    out
}

/// Takes 512 MiB and touches every page of it.
const ALLOCATE: &str = r#"
b = bytearray(512 << 20)
for i in range(0, len(b), 4096):
    b[i] = 1
print("allocated")
"#;

#[test]
fn memory_limit_kills_like_docker() {
    let _docker = require_docker();
    let opts = ["--memory", "64m", "--memory-swap", "64m"];
    let args = ["python3", "-c", ALLOCATE];
    let docker = docker_run(&opts, &args);
    let mine = imgfs_limited(&opts, &args);
    assert_eq!(
        docker.status.code(),
        Some(137),
        "docker's reference: {}",
        describe(&docker)
    );
    assert_eq!(
        mine.status.code(),
        docker.status.code(),
        "imgfs run {}: {}",
        opts.join(" "),
        describe(&mine)
    );
}

/// Forks up to 200 children that wait, then reports how many it got and whether a fork was
/// refused for lack of room (EAGAIN); the children are killed before it exits.
const FORK_LOOP: &str = r#"
import os, signal, time
children, refused = [], False
for _ in range(200):
    try:
        pid = os.fork()
    except BlockingIOError:
        refused = True
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print(len(children), refused)
"#;

/// The `COUNT REFUSED` line of [`FORK_LOOP`].
fn forks(out: &Output, who: &str) -> (u32, bool) {
    assert!(out.status.success(), "{who}: {}", describe(out));
    let stdout = text(&out.stdout);
    let mut words = stdout.split_whitespace();
    let count = words.next().and_then(|w| w.parse().ok());
    let refused = words.next().map(|w| w == "True");
    match (count, refused) {
        (Some(c), Some(r)) => (c, r),
        _ => panic!("{who}: unexpected output {stdout:?}"),
    }
}

#[test]
fn pids_limit_refuses_forks_like_docker() {
    let _docker = require_docker();
    let opts = ["--pids-limit", "64"];
    let args = ["python3", "-c", FORK_LOOP];
    // The limit counts every task of the group, so the counts may differ by the few tasks
    // each runtime keeps in it; both must stop the loop short of the limit.
    let docker = forks(&docker_run(&opts, &args), "docker run");
    let mine = forks(&imgfs_limited(&opts, &args), "imgfs run");
    assert!(docker.1 && docker.0 < 64, "docker's reference: {docker:?}");
    assert!(
        mine.1 && mine.0 < 64,
        "imgfs run: {mine:?}, docker run: {docker:?}"
    );
}

/// Spins for 3 s of wall time; prints `start` as it begins, then its CPU time per second of
/// wall time.
const BUSY: &str = r#"
import time
print("start", flush=True)
w, c = time.monotonic(), time.process_time()
while time.monotonic() - w < 3:
    pass
print("%.3f" % ((time.process_time() - c) / (time.monotonic() - w)))
"#;

/// Share of one CPU a `--cpus 0.5` sandbox may show: the CFS quota is exact per 100 ms period,
/// the slack is for the sampling and a busy host.
const HALF_A_CPU: std::ops::RangeInclusive<f64> = 0.35..=0.65;

/// CPU time used so far by the group of `imgfs run` `pid`, in nanoseconds: v2's cpu.stat,
/// v1's cpuacct.usage where the group has cpuacct, else the time of the tasks in its cpu
/// group (a v1 cpu hierarchy apart from cpuacct accounts no usage).
fn cpu_used_ns(pid: u32) -> u64 {
    let groups = cgroups_of(pid);
    for g in &groups {
        if let Ok(stat) = std::fs::read_to_string(g.join("cpu.stat"))
            && let Some(us) = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))
        {
            return us.trim().parse::<u64>().expect("usage_usec") * 1000;
        }
        if let Ok(ns) = std::fs::read_to_string(g.join("cpuacct.usage")) {
            return ns.trim().parse().expect("cpuacct.usage");
        }
    }
    let cpu = groups
        .iter()
        .find(|g| g.join("cpu.cfs_quota_us").exists())
        .unwrap_or_else(|| panic!("no cpu group for imgfs run {pid} among {groups:?}"));
    let tasks = std::fs::read_to_string(cpu.join("tasks")).expect("read tasks");
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    tasks
        .split_whitespace()
        .filter_map(|tid| std::fs::read_to_string(format!("/proc/{tid}/stat")).ok())
        .map(|stat| {
            // utime and stime are the 14th and 15th fields; the 2nd, (comm), may hold spaces.
            let after_comm = &stat[stat.rfind(')').expect("stat has (comm)") + 2..];
            let f: Vec<u64> = after_comm
                .split(' ')
                .skip(11)
                .take(2)
                .map(|v| v.parse().expect("stat field"))
                .collect();
            (f[0] + f[1]) * 1_000_000_000 / ticks
        })
        .sum()
}

/// The share of a CPU the sandbox's own process saw, from [`BUSY`]'s last line.
fn busy_share(stdout: &str, who: &str) -> f64 {
    stdout
        .lines()
        .last()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{who}: unexpected output {stdout:?}"))
}

#[test]
fn cpus_limit_throttles_like_docker() {
    let _docker = require_docker();
    let opts = ["--cpus", "0.5"];
    let args = ["python3", "-c", BUSY];

    let docker = docker_run(&opts, &args);
    assert!(docker.status.success(), "{}", describe(&docker));
    let docker_share = busy_share(&text(&docker.stdout), "docker run");
    assert!(
        HALF_A_CPU.contains(&docker_share),
        "docker's reference used {docker_share} of a CPU"
    );

    let mut child = Running(
        imgfs_command(&opts, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start imgfs run"),
    );
    let pid = child.0.id();
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("read imgfs run's output");
    assert_eq!(line, "start\n", "imgfs run {}", opts.join(" "));
    // The loop runs 3 s from here; sample the group over 2 s of it.
    let (t0, used0) = (Instant::now(), cpu_used_ns(pid));
    std::thread::sleep(Duration::from_secs(2));
    let (t1, used1) = (Instant::now(), cpu_used_ns(pid));
    let group_share = (used1 - used0) as f64 / (t1 - t0).as_nanos() as f64;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.0.wait().expect("wait for imgfs run");
    assert!(status.success(), "imgfs run {}: {status}", opts.join(" "));
    assert_no_cgroup_left(pid);
    let share = busy_share(&rest, "imgfs run");
    assert!(
        HALF_A_CPU.contains(&group_share) && HALF_A_CPU.contains(&share),
        "imgfs run used {group_share} of a CPU by its cgroup, {share} by its own count; \
         docker run used {docker_share}"
    );
}

#[test]
fn killed_runner_leaves_no_cgroup() {
    let _docker = require_docker();
    let mut child = Running(
        imgfs_command(&["--memory", "64m"], &["sleep", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start imgfs run"),
    );
    let pid = child.0.id();
    let limited =
        |g: &PathBuf| g.join("memory.limit_in_bytes").exists() || g.join("memory.max").exists();
    wait_until("imgfs run has a memory cgroup", || {
        cgroups_of(pid).iter().any(limited)
    });
    child.0.kill().expect("kill -9 imgfs run");
    child.0.wait().expect("reap imgfs run");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cgroups_of(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "5 s after kill -9 of imgfs run its cgroup remains: {:?}",
            cgroups_of(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn too_little_memory_is_refused_like_docker() {
    let _docker = require_docker();
    // docker's least is 6 MiB.
    let opts = ["--memory", "4m"];
    let docker = docker_run(&opts, &["true"]);
    let mine = imgfs_limited(&opts, &["true"]);
    assert_eq!(docker.status.code(), Some(125), "{}", describe(&docker));
    assert_eq!(
        mine.status.code(),
        docker.status.code(),
        "{}",
        describe(&mine)
    );
    let err = text(&mine.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(mine.stdout.is_empty(), "{}", describe(&mine));
}
