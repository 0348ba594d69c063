//! Where images come from, beyond an image dockerd already has: `--pull` from a real
//! registry (Debian's docker-registry on loopback), Podman's Docker-compatible service through
//! DOCKER_HOST, and the progress line a terminal shows meanwhile.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    Mount, Mounted, Registry, TempDir, extract_with_gnu_tar, fixture_archives, imgfs, lock,
    require, require_docker, run, text,
};

/// A small image imported into dockerd from a fixture archive.
const TINY: &str = "imgfs-test/tiny:pax-global";

fn tiny_tar() -> PathBuf {
    fixture_archives().join("pax-global.tar")
}

/// Makes sure dockerd has [`TINY`]; the caller holds dockerd's lock.
fn tiny_image(_docker: &lock::Held) -> &'static str {
    let have = run(Command::new("docker").args(["image", "inspect", TINY]));
    if !have.status.success() {
        let out = run(Command::new("docker")
            .arg("import")
            .arg(tiny_tar())
            .arg(TINY));
        assert!(out.status.success(), "docker import: {}", text(&out.stderr));
    }
    TINY
}

/// Runs `cmd` under script(1), on a pseudo-terminal; what the terminal showed.
fn on_a_terminal(cmd: &str) -> Output {
    run(Command::new("script").args(["-qec", cmd, "/dev/null"]))
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_imgfs")
}

/// Checks that every entry of `tar`, extracted by GNU tar, is in `mnt` with the same type,
/// mode, mtime and content (the mount may hold more: the daemon adds /dev, /etc/hosts, ...).
fn assert_holds(tar: &Path, mnt: &Path) {
    let truth = TempDir::new("imgfs-sources-truth");
    extract_with_gnu_tar(tar, truth.path());
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let e = std::fs::symlink_metadata(truth.path().join(&rel)).unwrap();
        let a = std::fs::symlink_metadata(mnt.join(&rel))
            .unwrap_or_else(|err| panic!("{}: {err}", rel.display()));
        // The root is the daemon's, not the archive's.
        if rel != Path::new("") {
            assert_eq!(e.mode(), a.mode(), "{}: mode", rel.display());
            assert_eq!(e.mtime(), a.mtime(), "{}: mtime", rel.display());
        }
        if e.is_file() {
            assert_eq!(
                std::fs::read(truth.path().join(&rel)).unwrap(),
                std::fs::read(mnt.join(&rel)).unwrap(),
                "{}: content",
                rel.display()
            );
        } else if e.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(truth.path().join(&rel)).unwrap(),
                std::fs::read_link(mnt.join(&rel)).unwrap()
            );
        } else if e.is_dir() {
            for c in std::fs::read_dir(truth.path().join(&rel))
                .unwrap()
                .flatten()
            {
                stack.push(rel.join(c.file_name()));
            }
        }
    }
}

#[test]
fn progress_shows_on_a_terminal_only() {
    let docker = require_docker();
    let image = tiny_image(&docker);
    let cache = TempDir::new("imgfs-progress-cache");
    let cmd = |extra: &str| {
        format!(
            "'{}' ls {extra} --cache-dir '{}' {image} / >/dev/null",
            bin(),
            cache.path().display()
        )
    };
    let shown = on_a_terminal(&cmd(""));
    assert!(shown.status.success(), "{}", text(&shown.stdout));
    let screen = text(&shown.stdout);
    let done = screen
        .split('\r')
        .find(|l| l.contains("imgfs: exported "))
        .unwrap_or_else(|| panic!("no progress line: {screen:?}"));
    // `exported imgfs-test/tiny:pax-global: 0.0 MB, 17 entries in 0.1 s`
    let entries: u64 = done
        .split(", ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{done:?}"));
    // Only the container made here is removed: a test beside this one may be exporting a
    // container of the same image (by another tag) right now.
    let members = run(Command::new("sh").arg("-c").arg(format!(
        "c=$(docker create {image} /x) && docker export \"$c\" | tar -t | wc -l; \
         docker rm \"$c\" >/dev/null"
    )));
    assert_eq!(
        entries,
        text(&members.stdout).trim().parse::<u64>().unwrap(),
        "{done}"
    );

    // Not on a pipe, and not with -q.
    std::fs::remove_dir_all(cache.path().join("images")).unwrap();
    let piped = run(Command::new("sh").arg("-c").arg(cmd("")));
    assert!(piped.status.success());
    assert!(text(&piped.stderr).is_empty(), "{}", text(&piped.stderr));
    std::fs::remove_dir_all(cache.path().join("images")).unwrap();
    let q = on_a_terminal(&cmd("-q"));
    assert!(q.status.success());
    assert!(!text(&q.stdout).contains("exported"), "{}", text(&q.stdout));
}

#[test]
fn pull_fetches_a_missing_image_from_its_registry() {
    let docker_lock = require_docker();
    let image = tiny_image(&docker_lock);
    let registry = Registry::start();
    let remote = format!("{}/imgfs-test/tiny:pax-global", registry.addr);
    let docker = |args: &[&str]| {
        let out = run(Command::new("docker").args(args));
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            text(&out.stderr)
        );
    };
    docker(&["tag", image, &remote]);
    docker(&["push", &remote]);
    docker(&["rmi", &remote]);
    let cache = TempDir::new("imgfs-pull-cache");
    let c = cache.path().to_str().unwrap();

    let refused = run(imgfs().args(["ls", "--cache-dir", c, &remote, "/"]));
    assert_eq!(refused.status.code(), Some(1));
    let why = text(&refused.stderr);
    assert!(why.contains(&remote) && why.contains("--pull"), "{why}");

    let dir = TempDir::new("imgfs-pull-mnt");
    let shown = on_a_terminal(&format!(
        "'{}' mount --pull --cache-dir '{c}' {remote} '{}'",
        bin(),
        dir.path().display()
    ));
    let mnt = Mounted::adopt(dir.path());
    assert!(shown.status.success(), "{}", text(&shown.stdout));
    assert!(
        text(&shown.stdout).contains(&format!("imgfs: pulling {remote}")),
        "{}",
        text(&shown.stdout)
    );
    assert!(
        run(Command::new("docker").args(["image", "inspect", &remote]))
            .status
            .success()
    );
    assert_holds(&tiny_tar(), mnt.path());
    drop(mnt);

    // A tag the registry does not have: one line naming it, nothing cached.
    let missing = format!("{}/imgfs-test/tiny:absent", registry.addr);
    let mnt = TempDir::new("imgfs-pull-mnt");
    let out = run(imgfs()
        .args(["mount", "--pull", "--cache-dir", c, &missing])
        .arg(mnt.path()));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&missing), "{err}");
    assert!(!common::is_mounted(mnt.path()));

    let entries = std::fs::read_dir(cache.path().join("images")).map_or(0, |d| d.count());
    assert_eq!(entries, 1, "only the pulled image is cached");

    // `imgfs run --pull`, with an image that has programs to run.
    let remote_py = format!("{}/imgfs-test/debian-python:bookworm", registry.addr);
    docker(&["tag", common::DEBIAN_IMAGE, &remote_py]);
    docker(&["push", &remote_py]);
    docker(&["rmi", &remote_py]);
    let out = run(imgfs()
        .args([
            "run",
            "--pull",
            "--linger",
            "0",
            "--cache-dir",
            c,
            &remote_py,
            "--",
        ])
        .args(["python3", "-c", "print(6 * 7)"]));
    assert!(out.status.success(), "run --pull: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "42\n");
    let _ = run(Command::new("docker").args(["rmi", &remote_py]));
    let _ = run(Command::new("docker").args(["rmi", &remote]));
}

#[test]
fn podman_serves_images_through_docker_host() {
    require(
        Path::new("/usr/bin/podman").exists(),
        "Debian's podman package (contrib/setup.sh installs it)",
    );
    let dir = TempDir::new("imgfs-podman");
    let socket = dir.path().join("podman.sock");
    let endpoint = format!("unix://{}", socket.display());
    let _service = Stopped(
        Command::new("podman")
            .args(["system", "service", "--time=0", &endpoint])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start podman system service"),
    );
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "podman's service does not answer at {endpoint}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let imported = run(Command::new("podman")
        .arg("import")
        .arg("--quiet")
        .arg(tiny_tar())
        .arg(TINY));
    assert!(
        imported.status.success(),
        "podman import: {}",
        text(&imported.stderr)
    );

    let cache = TempDir::new("imgfs-podman-cache");
    let mnt = Mount::new(cache.path(), TINY)
        .env("DOCKER_HOST", &endpoint)
        .done();
    assert_holds(&tiny_tar(), mnt.path());
    drop(mnt);
    // The export container is gone from podman too.
    let left =
        run(Command::new("podman").args(["ps", "-aq", "--filter", "label=io.imgfs.export-pid"]));
    assert!(
        text(&left.stdout).trim().is_empty(),
        "{}",
        text(&left.stdout)
    );
    let _ = run(Command::new("podman").args(["rmi", TINY]));
}

/// A service process, killed when dropped (a failing test included).
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
