//! Mounts that outlive their servers: a server killed outright while programs read is
//! replaced and no read fails; `imgfs mounts --restart` replaces every server with the
//! binary now installed, under load, and no read fails; a mount whose keeper died with its
//! server is cleared by the next `imgfs mounts`. The truth is the source files' bytes, read
//! before the mount (sha256 and whole contents), and the kernel's own view of processes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::{
    Mounted, TempDir, imgfs, is_mounted, keepers_of, next_server, run, servers_of, text, wait_until,
};

/// Small files in the test archive, beside `big`.
const SMALL_FILES: usize = 200;

/// A tar of a 256 MiB file of random bytes (`big`) and [`SMALL_FILES`] small ones (`d/fN`)
/// in `dir`; the sha256 of `big`.
fn make_archive(dir: &Path) -> (PathBuf, String) {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let out = run(Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", src.join("big").display()))
        .args(["bs=1M", "count=256", "status=none"]));
    assert!(out.status.success(), "dd: {}", text(&out.stderr));
    for i in 0..SMALL_FILES {
        std::fs::write(
            src.join(format!("d/f{i}")),
            format!("file {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    let tar = dir.join("img.tar");
    let out = run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    assert!(out.status.success(), "tar: {}", text(&out.stderr));
    let mut big = std::fs::File::open(src.join("big")).unwrap();
    (tar, hex_sha256(&mut big, Duration::ZERO).unwrap())
}

/// The sha256 of what `reader` gives, read a MiB at a time with `pause` after each.
fn hex_sha256(reader: &mut impl Read, pause: Duration) -> std::io::Result<String> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        std::thread::sleep(pause);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads the small files of `root` over and over until `stop`, each against what it must
/// hold, and lists the directory each round; what failed.
fn walk_until(root: &Path, stop: &AtomicBool) -> Vec<String> {
    let mut failures = Vec::new();
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) || round == 0 {
        match std::fs::read_dir(root.join("d")).map(Iterator::count) {
            Ok(SMALL_FILES) => {}
            Ok(_) => failures.push("a listing missed files".to_string()),
            Err(e) => failures.push(format!("listing: {e}")),
        }
        for i in 0..SMALL_FILES {
            let want = format!("file {i}\n").repeat(i + 1);
            match std::fs::read_to_string(root.join(format!("d/f{i}"))) {
                Ok(got) if got == want => {}
                Ok(_) => failures.push(format!("d/f{i}: wrong bytes")),
                Err(e) => failures.push(format!("d/f{i}: {e}")),
            }
        }
        round += 1;
    }
    failures
}

fn drop_caches() {
    let _ = run(&mut Command::new("sync"));
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches");
}

/// `imgfs mounts --json`, as JSON.
fn mounts_json(cmd: &mut Command) -> Vec<serde_json::Value> {
    let out = run(cmd.args(["mounts", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn entry_for<'a>(list: &'a [serde_json::Value], mountpoint: &Path) -> &'a serde_json::Value {
    list.iter()
        .find(|m| m["Mountpoint"] == mountpoint.display().to_string())
        .unwrap_or_else(|| panic!("{} not listed: {list:?}", mountpoint.display()))
}

/// `kill -9` of a detached mount's server, three times, while one reader streams a 256 MiB
/// file slowly and another walks the tree: both finish with the right bytes and no error,
/// and `imgfs mounts --json` names the last server as the mount's `Pid`.
#[test]
fn a_killed_server_is_replaced_and_no_read_fails() {
    let work = TempDir::new("imgfs-survive");
    let (tar, big_sha) = make_archive(work.path());
    let cache = TempDir::new("imgfs-cache");
    let m = Mounted::new(cache.path(), &tar);
    assert_eq!(keepers_of(m.path()).len(), 1, "a mount has a keeper");
    drop_caches();

    let stop = Arc::new(AtomicBool::new(false));
    let big = m.path().join("big");
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::open(&big)?;
        hex_sha256(&mut f, Duration::from_millis(8))
    });
    let root = m.path().to_path_buf();
    let stop_walk = stop.clone();
    let walker = std::thread::spawn(move || walk_until(&root, &stop_walk));

    let mut killed = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        let server = next_server(m.path(), &killed);
        // SAFETY: killing a server this test started.
        assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
        killed.push(server);
    }
    let last = next_server(m.path(), &killed);
    let read = reader.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let failures = walker.join().unwrap();
    assert_eq!(read.expect("the reader's read failed"), big_sha);
    assert!(failures.is_empty(), "{failures:?}");

    let list = mounts_json(&mut imgfs());
    let entry = entry_for(&list, m.path());
    assert_eq!(entry["Pid"], last, "{entry}");
    assert_eq!(entry["State"], "live", "{entry}");
    let dir = m.path().to_path_buf();
    m.umount();
    wait_until("the keeper ends with the mount", || {
        keepers_of(&dir).is_empty()
    });
}

/// `imgfs mounts --restart MOUNTPOINT...` with a new binary installed where the servers were
/// started from: every keeper and server of those mounts runs the new one, while programs
/// read, and no read fails.
#[test]
fn restart_replaces_every_server_with_the_installed_binary_under_load() {
    let work = TempDir::new("imgfs-survive");
    let (tar, _) = make_archive(work.path());
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let installed = bin.join("imgfs");
    let imgfs_path = PathBuf::from(env!("CARGO_BIN_EXE_imgfs"));
    std::fs::copy(&imgfs_path, &installed).unwrap();
    let cache = TempDir::new("imgfs-cache");
    let mounts: Vec<TempDir> = (0..2).map(|_| TempDir::new("imgfs-mnt")).collect();
    let mut guards = Vec::new();
    for dir in &mounts {
        let out = run(Command::new(&installed)
            .arg("mount")
            .arg("--cache-dir")
            .arg(cache.path())
            .arg(&tar)
            .arg(dir.path()));
        assert!(out.status.success(), "{}", text(&out.stderr));
        guards.push(Mounted::adopt(dir.path()));
    }
    let before: Vec<i32> = mounts.iter().flat_map(|d| servers_of(d.path())).collect();
    assert_eq!(before.len(), 2);

    // A new binary at the same path: a new file renamed over the old, as installers do.
    let staged = bin.join("imgfs.new");
    std::fs::copy(&imgfs_path, &staged).unwrap();
    std::fs::rename(&staged, &installed).unwrap();
    let new_inode = std::fs::metadata(&installed).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let walkers: Vec<_> = mounts
        .iter()
        .map(|d| {
            let root = d.path().to_path_buf();
            let stop = stop.clone();
            std::thread::spawn(move || walk_until(&root, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // Only these mounts: every server of root's would include those of tests running beside.
    let out = run(Command::new(&installed)
        .args(["mounts", "--restart"])
        .args(mounts.iter().map(|d| d.path())));
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for w in walkers {
        let failures = w.join().unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }
    use std::os::unix::fs::MetadataExt;
    for dir in &mounts {
        let server = next_server(dir.path(), &before);
        for pid in [keepers_of(dir.path()), vec![server]].concat() {
            let exe = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
            assert_eq!(
                (exe.dev(), exe.ino()),
                (new_inode.dev(), new_inode.ino()),
                "process {pid} of {} does not run the installed binary",
                dir.path().display()
            );
        }
    }
    drop(guards);
}

/// A mount whose keeper and server were both killed is left with nothing answering it: the
/// next `imgfs mounts` shows it dead and clears it, and nothing answers ENOTCONN after.
#[test]
fn a_mount_nothing_serves_is_cleared_by_the_next_imgfs_mounts() {
    let work = TempDir::new("imgfs-survive");
    let tar = work.path().join("small.tar");
    std::fs::write(work.path().join("a"), "a\n").unwrap();
    let out = run(Command::new("tar")
        .arg("-C")
        .arg(work.path())
        .arg("-cf")
        .arg(&tar)
        .arg("a"));
    assert!(out.status.success());
    let cache = TempDir::new("imgfs-cache");
    let m = Mounted::new(cache.path(), &tar);
    // The root's attributes in the kernel's cache, as any listing of its parent leaves them:
    // the probe must not take them for an answer.
    assert!(std::fs::metadata(m.path()).unwrap().is_dir());
    let pids = [keepers_of(m.path()), servers_of(m.path())].concat();
    assert_eq!(pids.len(), 2, "{pids:?}");
    for pid in pids {
        // SAFETY: killing processes this test started, the keeper first.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    }
    wait_until("the keeper and the server are gone", || {
        keepers_of(m.path()).is_empty() && servers_of(m.path()).is_empty()
    });
    let err = std::fs::metadata(m.path().join("a")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let start = Instant::now();
    let list = mounts_json(&mut imgfs());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "imgfs mounts hung"
    );
    let entry = entry_for(&list, m.path());
    assert_eq!(entry["State"], "dead", "{entry}");
    assert_eq!(entry["Cleared"], true, "{entry}");
    assert!(!is_mounted(m.path()), "the dead mount is still there");
    assert!(std::fs::read_dir(m.path()).is_ok());
}

/// Servers that die as soon as they start (here killed the moment each appears, as a request
/// that crashes every server it reaches would): the keeper waits longer before each, then
/// detaches the mount and ends, leaving no mount that answers ENOTCONN.
#[test]
fn a_keeper_whose_servers_keep_dying_young_detaches_the_mount() {
    let work = TempDir::new("imgfs-survive");
    let tar = work.path().join("small.tar");
    std::fs::write(work.path().join("a"), "a\n").unwrap();
    let out = run(Command::new("tar")
        .arg("-C")
        .arg(work.path())
        .arg("-cf")
        .arg(&tar)
        .arg("a"));
    assert!(out.status.success());
    let cache = TempDir::new("imgfs-cache");
    let m = Mounted::new(cache.path(), &tar);
    let dir = m.path().to_path_buf();
    let start = Instant::now();
    let mut killed = Vec::new();
    while is_mounted(&dir) {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "still mounted after {} kills",
            killed.len()
        );
        match servers_of(&dir).as_slice() {
            [pid] if !killed.contains(pid) => {
                // SAFETY: killing a server this test started.
                assert_eq!(unsafe { libc::kill(*pid, libc::SIGKILL) }, 0);
                killed.push(*pid);
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    assert!(
        killed.len() >= 20,
        "detached after only {} deaths",
        killed.len()
    );
    wait_until("the keeper ends", || keepers_of(&dir).is_empty());
    assert!(
        std::fs::read_dir(&dir).is_ok(),
        "the mountpoint is left unusable"
    );
    drop(m);
}
