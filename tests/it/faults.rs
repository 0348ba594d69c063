//! Faults during an export: dockerd killed, imgfs killed, the cache's disk full. Each ends
//! with one clear error (or a dead process), no completion marker, and no export container
//! once the next run has swept; and the next run recovers by itself.
//!
//! The test that kills dockerd runs alone: it holds dockerd's lock by itself, and
//! tests/nextest.toml gives it every test slot.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    DEBIAN_IMAGE, TempDir, export_containers, imgfs, repo_root, require_docker,
    require_docker_alone, text,
};

fn spawn_mount(cache: &Path, mnt: &Path) -> Child {
    imgfs()
        .args(["mount", "--cache-dir"])
        .arg(cache)
        .arg(DEBIAN_IMAGE)
        .arg(mnt)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn imgfs mount")
}

/// `imgfs mount` to its end: the pid it ran as and its output.
fn mount(cache: &Path, mnt: &Path) -> (u32, Output) {
    let child = spawn_mount(cache, mnt);
    (child.id(), child.wait_with_output().unwrap())
}

fn umount(mnt: &Path) {
    let out = imgfs().arg("umount").arg(mnt).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The archive files being written in `cache`, with their sizes.
fn archives_in(cache: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(cache.join("images"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path().join("archive.tar");
            std::fs::metadata(&p).ok().map(|m| (p, m.len()))
        })
        .collect()
}

/// Waits until the export has written at least `bytes` into the cache.
fn wait_for_export(cache: &Path, bytes: u64, child: &mut Child) {
    let start = Instant::now();
    loop {
        if archives_in(cache).iter().any(|(_, n)| *n >= bytes) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("imgfs ended ({status}) before the export had written {bytes} bytes");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the export did not start"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Entry directories without a completion marker.
fn unfinished_entries(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache.join("images"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.join("complete").exists())
        .collect()
}

fn dockerd_pids() -> Vec<i32> {
    let out = Command::new("pidof").arg("dockerd").output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts dockerd again the way the suite's set-up does.
fn restart_dockerd() {
    let out = Command::new(repo_root().join("contrib/setup.sh"))
        .output()
        .expect("run contrib/setup.sh");
    assert!(
        out.status.success(),
        "contrib/setup.sh: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let start = Instant::now();
    while !docker_answers() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "dockerd did not come back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Exit of `child` within `limit`, or a failed test (a hang is a failure, not a wait).
fn wait_within(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("imgfs did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn dockerd_killed_during_an_export() {
    let _docker = require_docker_alone();
    let cache = TempDir::new("imgfs-fault-cache");
    let mnt = TempDir::new("imgfs-fault-mnt");
    let mut child = spawn_mount(cache.path(), mnt.path());
    let killed = child.id();
    wait_for_export(cache.path(), 1 << 20, &mut child);
    let pids = dockerd_pids();
    assert!(!pids.is_empty(), "no dockerd to kill");
    for pid in pids {
        // SAFETY: sending a signal to a pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let out = wait_within(child, Duration::from_secs(60));
    let err = text(&out.stderr);
    let start = Instant::now();
    while !dockerd_pids().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "dockerd did not die"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    restart_dockerd();
    assert!(!out.status.success(), "the mount succeeded: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("export"), "{err}");
    assert!(
        unfinished_entries(cache.path()).is_empty(),
        "{:?}",
        unfinished_entries(cache.path())
    );
    assert!(!mnt.path().join("usr").exists(), "something is mounted");
    // The next mount works, and sweeps the container the dead daemon kept.
    let (pid, out) = mount(cache.path(), mnt.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(mnt.path().join("usr/bin/python3").exists());
    umount(mnt.path());
    let left = export_containers(&[killed, pid]);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn imgfs_killed_during_an_export() {
    let _docker = require_docker();
    let cache = TempDir::new("imgfs-fault-cache");
    let mnt = TempDir::new("imgfs-fault-mnt");
    let mut child = spawn_mount(cache.path(), mnt.path());
    let killed = child.id();
    wait_for_export(cache.path(), 1 << 20, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    // What a SIGKILL leaves: an entry without a marker, a container in dockerd.
    assert!(!unfinished_entries(cache.path()).is_empty());
    // The next mount removes both, exports again and serves the image.
    let (pid, out) = mount(cache.path(), mnt.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(mnt.path().join("usr/bin/python3").exists());
    umount(mnt.path());
    assert!(unfinished_entries(cache.path()).is_empty());
    let left = export_containers(&[killed, pid]);
    assert!(left.is_empty(), "{left:?}");
}

/// A small tmpfs mounted at `dir`, unmounted when dropped.
struct SmallDisk(TempDir);

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = TempDir::new("imgfs-small-disk");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mount a tmpfs (needs root)");
        SmallDisk(dir)
    }
    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.0.path())
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn full_cache_disk() {
    let _docker = require_docker();
    // The image's export is about 176 MB: it cannot fit in 32 MiB.
    let disk = SmallDisk::new("32m");
    let cache = disk.0.path().join("cache");
    let mnt = TempDir::new("imgfs-fault-mnt");
    let (pid, out) = mount(&cache, mnt.path());
    let err = text(&out.stderr);
    assert!(!out.status.success(), "mounted on a full disk");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(&*cache.to_string_lossy()), "{err}");
    let left: Vec<_> = std::fs::read_dir(cache.join("images"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left on the full disk: {left:?}");
    let left = export_containers(&[pid]);
    assert!(left.is_empty(), "{left:?}");
    // With room again, the next mount just works.
    disk.resize("1g");
    let (_, out) = mount(&cache, mnt.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(mnt.path().join("usr/bin/python3").exists());
    umount(mnt.path());
}

/// A cached archive cut short (a disk that lost its tail, a tampered cache): a mount serving
/// it answers reads past the cut with an error, never zeros, and the next mount notices and
/// exports the image again.
#[test]
fn truncated_cached_archive_is_detected() {
    let _docker = require_docker();
    let cache = TempDir::new("imgfs-fault-cache");
    let mnt = TempDir::new("imgfs-fault-mnt");
    let (_, out) = mount(cache.path(), mnt.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let archives = archives_in(cache.path());
    let (archive, len) = archives.first().expect("a cached archive").clone();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&archive)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let python = mnt.path().join("usr/bin/python3.11");
    let err = std::fs::read(&python).expect_err("read past the end of a truncated archive");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    umount(mnt.path());

    let since = common::now();
    let (pid, out) = mount(cache.path(), mnt.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bytes = std::fs::read(&python).unwrap();
    umount(mnt.path());
    assert_eq!(std::fs::metadata(&archive).unwrap().len(), len);
    assert!(bytes.starts_with(b"\x7fELF") && bytes.len() > 1 << 20);
    common::wait_until("dockerd reports the export", || {
        common::export_events(&since, &[pid]) >= 1
    });
}
