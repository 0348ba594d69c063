//! Shared helpers for the imgfs integration tests.
//!
//! The truth for every archive is GNU tar's own extraction of it
//! ([`extract_with_gnu_tar`]); [`compare_trees`] then checks an imgfs mount
//! against that tree. Tests never skip: missing prerequisites fail loudly
//! through [`require`]. Here: paths, temporary directories, running commands and
//! waiting; the submodules hold the trees, fixtures, dockerd, registries, mounts and the
//! locks between tests that share something machine-wide.
#![allow(dead_code)]

pub mod docker;
pub mod fixtures;
pub mod lock;
pub mod mount;
pub mod registry;
pub mod tree;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use docker::*;
pub use fixtures::*;
pub use mount::*;
pub use registry::*;
pub use tree::*;

/// Where cached fixtures live: `$IMGFS_FIXTURES` or `/var/tmp/imgfs-fixtures`.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("IMGFS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/imgfs-fixtures"))
}

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fail the test loudly when a prerequisite is not met. Tests never skip.
#[track_caller]
pub fn require(cond: bool, reason: &str) {
    if !cond {
        panic!("REQUIREMENT NOT MET: {reason}");
    }
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Bytes as text, for messages.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `cond` every 50 ms; fails the test after 20 s, naming `what`.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The file `name` of the one image entry in an imgfs cache directory.
#[track_caller]
pub fn cache_file(cache: &Path, name: &str) -> PathBuf {
    fs::read_dir(cache.join("images"))
        .unwrap_or_else(|e| panic!("{}: {e}", cache.display()))
        .flatten()
        .map(|e| e.path().join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no {name} in the cache {}", cache.display()))
}

/// An unprivileged account for the tests, made when missing.
#[track_caller]
pub fn test_user() -> &'static str {
    make_user("imgfs-test")
}

/// The unprivileged account `name`, made when missing.
#[track_caller]
pub fn make_user(name: &'static str) -> &'static str {
    let _users = lock::exclusive(lock::USERS);
    let exists = Command::new("id")
        .arg(name)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        let made = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", name])
            .status();
        require(
            made.is_ok_and(|s| s.success()),
            &format!("useradd of the unprivileged test user {name}"),
        );
    }
    name
}

/// The imgfs binary under test.
pub fn imgfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgfs"))
}

/// Runs `cmd` to completion, capturing its output.
pub fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Whether `path` is a mountpoint now, from the kernel's mount table.
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// `setpriv` set to run what follows as `user` (uid, gid and groups), environment reset.
pub fn as_user(user: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        user,
        "--regid",
        user,
        "--init-groups",
        "--reset-env",
    ]);
    c
}

/// Runs `cmd` to completion like [`run`], but kills it and fails the test after `limit`.
#[track_caller]
pub fn run_within(cmd: &mut Command, limit: std::time::Duration) -> std::process::Output {
    run_within_pid(cmd, limit).1
}

/// [`run_within`], also giving the pid the command ran as.
#[track_caller]
pub fn run_within_pid(
    cmd: &mut Command,
    limit: std::time::Duration,
) -> (u32, std::process::Output) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(limit) {
        Ok(status) => status.expect("wait for the child"),
        Err(_) => {
            // SAFETY: kill(2) with a pid this test spawned and has not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    };
    let output = std::process::Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    };
    (pid, output)
}

/// A free TCP port on 127.0.0.1 now (another process may take it before it is used).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// What a failed fill must not leave in a cache directory: any file, and any directory below
/// the top level (the top-level directories themselves, e.g. `images/`, may stay); the fill
/// locks (`locks/`) aside.
pub fn cache_leftovers(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(cache.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p == cache.join("locks") {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if depth >= 1 {
                    found.push(p.clone());
                }
                stack.push((p, depth + 1));
            } else {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

/// Bytes a tree takes on disk (allocated blocks; a file with several links counted once).
pub fn disk_usage(root: &Path) -> u64 {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert((m.dev(), m.ino())) {
            total += m.blocks() * 512;
        }
        if m.is_dir()
            && let Ok(rd) = fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    total
}

/// The sha256 of a file, as `sha256:HEX`.
#[track_caller]
pub fn sha256_file(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    assert!(out.status.success(), "sha256sum {}", path.display());
    format!(
        "sha256:{}",
        text(&out.stdout).split(' ').next().unwrap_or_default()
    )
}

/// Pids of the imgfs servers serving `mountpoint`: each `__serve` process for it whose
/// parent is another, its keeper (the process that holds the mount's connection and forks
/// its servers).
pub fn servers_of(mountpoint: &Path) -> Vec<i32> {
    let all = serve_processes(mountpoint);
    all.iter()
        .filter(|(_, parent)| all.iter().any(|(pid, _)| pid == parent))
        .map(|(pid, _)| *pid)
        .collect()
}

/// The one server of `mountpoint`, once there is one other than those in `not` (servers
/// killed before).
#[track_caller]
pub fn next_server(mountpoint: &Path, not: &[i32]) -> i32 {
    let start = std::time::Instant::now();
    loop {
        let now = serve_processes(mountpoint);
        if let [pid] = servers_of(mountpoint).as_slice()
            && !not.contains(pid)
        {
            return *pid;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "no new server of {} took over from {not:?}: serving processes (pid, parent) {now:?}",
            mountpoint.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The pids of the keepers of `mountpoint`: each `__serve` process for it whose parent is
/// not one.
pub fn keepers_of(mountpoint: &Path) -> Vec<i32> {
    let all = serve_processes(mountpoint);
    all.iter()
        .filter(|(_, parent)| !all.iter().any(|(pid, _)| pid == parent))
        .map(|(pid, _)| *pid)
        .collect()
}

/// Live (not zombie) `__serve` processes for `mountpoint`, with their parents' pids.
fn serve_processes(mountpoint: &Path) -> Vec<(i32, i32)> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_server = args.iter().any(|a| *a == b"__serve");
        let status = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) S ppid ...`
        let after = status.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let mut fields = after.split_whitespace();
        let zombie = fields.next() == Some("Z");
        let parent = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if is_server && !zombie && args.contains(&mountpoint.as_os_str().as_encoded_bytes()) {
            pids.push((pid, parent));
        }
    }
    pids
}
