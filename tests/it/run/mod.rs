//! `imgfs run` end to end: real images in a real dockerd, real namespaces, real programs,
//! compared with `docker run` of the same image.
//!
//! Here are the helpers; the tests are in [`sandbox`] (what a sandbox is and does, beside
//! docker run), [`sharing`] (live mounts and shared servers), [`isolation`] (hostile
//! images and other users) and [`network`] (the sandbox's network).

mod isolation;
mod network;
mod sandbox;
mod sharing;

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::common::{
    TempDir, as_user, fixtures_dir, imgfs, lock, require, require_docker, text, wait_until,
};

/// Debian bookworm + python3, imported from a debootstrap tree.
const DEBIAN_IMAGE: &str = "imgfs-test/debian-python:bookworm";
/// The same with Env, WorkingDir, User and Cmd set, and CPython's test suite
/// (tests/fixtures/python-app.Dockerfile).
const APP_IMAGE: &str = "imgfs-test/python-app:bookworm";

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Checks that dockerd holds both images, and holds dockerd's lock for the test (see
/// [`require_docker`]).
#[track_caller]
fn require_images() -> lock::Held {
    let held = require_docker();
    let ok = Command::new("docker")
        .args(["image", "inspect", APP_IMAGE])
        .output();
    require(
        ok.is_ok_and(|o| o.status.success()),
        &format!(
            "the image {APP_IMAGE} in a running dockerd (tests/fixtures/make-debian-image.sh)"
        ),
    );
    held
}

/// The cache the tests of this binary share.
fn shared_cache() -> PathBuf {
    common::shared_run_cache()
}

/// `imgfs run --cache-dir SHARED IMAGE -- ARGS`, as root.
fn run_in(image: &str, opts: &[&str], args: &[&str]) -> Output {
    output(
        imgfs()
            .arg("run")
            .arg("--cache-dir")
            .arg(shared_cache())
            .args(opts)
            .arg(image)
            .arg("--")
            .args(args),
    )
}

fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Lines of the host's mount table that a sandbox left behind: anything mounted in a
/// sandbox's scratch directories (the image's FUSE mount, the overlay, /proc, ...), whose
/// parents are /run/imgfs for root and $XDG_RUNTIME_DIR/imgfs or /tmp/imgfs-UID otherwise.
/// Other imgfs mounts on the host (a user's own, the live-mount test's) are not the runner's.
fn imgfs_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            let point = l.split(' ').nth(4).unwrap_or("");
            is_scratch(point)
        })
        .map(str::to_string)
        .collect()
}

fn is_scratch(point: &str) -> bool {
    let digits_then_slash = |rest: &str| {
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        n > 0 && (rest.len() == n || rest.as_bytes()[n] == b'/')
    };
    if let Some(rest) = point.strip_prefix("/run/imgfs/") {
        // /run/imgfs/shared holds the shared servers' mounts, which outlive runs by design.
        return digits_then_slash(rest);
    }
    if point == "/run/imgfs" {
        return true;
    }
    if let Some(rest) = point.strip_prefix("/tmp/imgfs-") {
        // As root's, a user's shared servers (imgfs-UID/shared) outlive runs by design.
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        return digits_then_slash(rest) && !rest[n..].starts_with("/shared/");
    }
    if let Some(rest) = point.strip_prefix("/run/user/") {
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        let rest = &rest[n..];
        return n > 0
            && (rest == "/imgfs" || rest.starts_with("/imgfs/"))
            && !rest.starts_with("/imgfs/shared/");
    }
    false
}

#[test]
fn scratch_mountpoints_are_recognised() {
    assert!(is_scratch("/run/imgfs/123"));
    assert!(is_scratch("/run/imgfs/123/lower"));
    assert!(is_scratch("/tmp/imgfs-1000/55/lower"));
    assert!(is_scratch("/run/user/1000/imgfs/55"));
    assert!(!is_scratch("/tmp/imgfs-live-mount-1-2-3"));
    assert!(!is_scratch("/var/tmp/imgfs-bench-full/mnt/python-imgfs"));
    assert!(!is_scratch("/run/imgfsx"));
    assert!(!is_scratch("/run/imgfs/shared/sha256-9d5da1c6326e-77"));
    assert!(!is_scratch("/tmp/imgfs-1000/shared/sha256-9d5da1c6326e-77"));
    assert!(!is_scratch(
        "/run/user/1000/imgfs/shared/sha256-9d5da1c6326e-77"
    ));
}

/// Host processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = text(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .unwrap_or_default()
            .contains(") Z ");
        if cmd.contains(needle) && !zombie {
            found.push(cmd);
        }
    }
    found
}

/// Whether process `pid` holds /dev/fuse open, i.e. serves a FUSE mount itself.
fn serves_fuse(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|t| t == std::path::Path::new("/dev/fuse"))
            })
        })
        .unwrap_or(false)
}

/// The Debian image as a tar file (indexed in place in whichever cache is given: quick to
/// give a test its own cache, and with it its own servers).
fn debian_tar() -> PathBuf {
    let tar = fixtures_dir().join("debian-python.tar");
    require(
        tar.exists(),
        "debian-python.tar (tests/fixtures/make-debian-image.sh)",
    );
    tar
}

/// `imgfs run --cache-dir CACHE OPTS IMAGE -- ARGS`.
fn run_cached(cache: &std::path::Path, image: &std::path::Path, opts: &[&str]) -> Command {
    let mut cmd = imgfs();
    cmd.arg("run")
        .arg("--cache-dir")
        .arg(cache)
        .args(opts)
        .arg(image)
        .arg("--");
    cmd
}

/// Starts a sleeping sandbox and says whether `imgfs run` serves FUSE itself.
fn run_serves_fuse(cache: &std::path::Path, image: &std::path::Path, opts: &[&str]) -> bool {
    // A tag of this test process and call: tests running beside it (and other runs of the
    // suite on the machine) start sleepers of their own.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
    sleeping_run_serves_fuse(
        run_cached(cache, image, opts),
        std::process::id() * 10 + call + 10,
    )
}

/// The shared servers (`imgfs __serve --idle-exit-ms`) of the images in `cache`: pid and
/// mountpoint. Each serving process (whose parent is its keeper, another `__serve`), not its
/// keeper.
fn shared_servers(cache: &std::path::Path) -> Vec<(u32, PathBuf)> {
    let all = shared_serve_processes(cache);
    all.iter()
        .filter(|(_, parent, _)| all.iter().any(|(pid, _, _)| pid == parent))
        .map(|(pid, _, mnt)| (*pid, mnt.clone()))
        .collect()
}

/// Every `__serve` process of a shared server of the images in `cache`, keepers included:
/// pid, parent's pid and mountpoint.
fn shared_serve_processes(cache: &std::path::Path) -> Vec<(u32, u32, PathBuf)> {
    let cache = std::fs::canonicalize(cache).unwrap();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(text)
            .collect();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // `pid (comm) S ppid ...`
        let mut after = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .unwrap_or_default()
            .split_whitespace();
        let zombie = after.next() == Some("Z");
        let parent = after.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let shared = args.iter().any(|a| a == "__serve")
            && args.iter().any(|a| a == "--idle-exit-ms")
            && args.iter().any(|a| a.starts_with(cache.to_str().unwrap()));
        if shared && !zombie {
            found.push((pid, parent, PathBuf::from(args.last().unwrap())));
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Starts `run` (an `imgfs run ... --` without its command) with a sleeping command and says
/// whether the run serves FUSE itself.
/// `tag` tells its sleeper from those of tests running beside it.
fn sleeping_run_serves_fuse(mut run: Command, tag: u32) -> bool {
    // Written split in the command line, so only the sleep itself matches.
    // Tags of one width, so that one is never the start of another.
    let marker = format!("sleep 9000{tag:010}");
    let mut child = run
        .args(["sh", "-c", &format!("n=9000; exec sleep ${{n}}{tag:010}")])
        .spawn()
        .unwrap();
    wait_until("the command runs", || !processes_with(&marker).is_empty());
    let serving = serves_fuse(child.id());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    serving
}
