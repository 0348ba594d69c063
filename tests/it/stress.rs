//! Load on one mount: 16 threads doing random reads, stats, readdirs and readlinks over the
//! Debian python image for a fixed time, every answer compared with GNU tar's extraction of
//! the same archive; the server's memory must stay flat meanwhile.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{TempDir, extract_with_gnu_tar, fixtures_dir, imgfs, require, text};

const THREADS: usize = 16;
const DURATION: Duration = Duration::from_secs(20);

/// Every path under `root`, relative, without following links.
fn all_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap().flatten() {
            let p = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// The pid of the imgfs server serving `mountpoint` (not its keeper).
fn server_of(mountpoint: &Path) -> i32 {
    match crate::common::servers_of(mountpoint).as_slice() {
        [pid] => *pid,
        other => panic!("servers of {}: {other:?}", mountpoint.display()),
    }
}

/// The server's anonymous resident memory (heap, stacks), in bytes.
fn anon_memory(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/PID/status");
    kib * 1024
}

/// A small fast generator; each thread its own, seeded differently.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// One random operation on `rel`, compared between the mount and the truth. Returns the bytes
/// compared, or what differed.
fn one_op(rng: &mut Rng, mnt: &Path, truth: &Path, rel: &Path) -> Result<u64, String> {
    let (m, t) = (mnt.join(rel), truth.join(rel));
    let tm = std::fs::symlink_metadata(&t).map_err(|e| format!("truth {rel:?}: {e}"))?;
    let mm = std::fs::symlink_metadata(&m).map_err(|e| format!("stat {rel:?}: {e}"))?;
    if tm.file_type() != mm.file_type() {
        return Err(format!("{rel:?}: type differs"));
    }
    if tm.file_type().is_file() {
        let same = (
            tm.len(),
            tm.mode(),
            tm.uid(),
            tm.gid(),
            tm.mtime(),
            tm.nlink(),
        ) == (
            mm.len(),
            mm.mode(),
            mm.uid(),
            mm.gid(),
            mm.mtime(),
            mm.nlink(),
        );
        if !same {
            return Err(format!("{rel:?}: metadata differs: {tm:?} / {mm:?}"));
        }
        let len = tm.len();
        let at = rng.below(len + 1);
        let want = 1 + rng.below(128 * 1024) as usize;
        let mut a = vec![0u8; want];
        let mut b = vec![0u8; want];
        let fa = std::fs::File::open(&t).map_err(|e| format!("truth {rel:?}: {e}"))?;
        let fb = std::fs::File::open(&m).map_err(|e| format!("open {rel:?}: {e}"))?;
        let na = read_full(&fa, &mut a, at).map_err(|e| format!("truth {rel:?}: {e}"))?;
        let nb = read_full(&fb, &mut b, at).map_err(|e| format!("read {rel:?}: {e}"))?;
        if a[..na] != b[..nb] {
            return Err(format!("{rel:?}: bytes differ at {at}, {want} bytes"));
        }
        return Ok(na as u64);
    }
    if tm.file_type().is_dir() {
        let names = |p: &Path| -> Result<BTreeSet<_>, String> {
            Ok(std::fs::read_dir(p)
                .map_err(|e| format!("readdir {rel:?}: {e}"))?
                .flatten()
                .map(|e| e.file_name())
                .collect())
        };
        if names(&t)? != names(&m)? {
            return Err(format!("{rel:?}: directory entries differ"));
        }
        return Ok(0);
    }
    if tm.file_type().is_symlink() {
        let a = std::fs::read_link(&t).map_err(|e| format!("truth {rel:?}: {e}"))?;
        let b = std::fs::read_link(&m).map_err(|e| format!("readlink {rel:?}: {e}"))?;
        if a != b {
            return Err(format!("{rel:?}: link target differs"));
        }
    }
    Ok(0)
}

fn read_full(f: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], at + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

#[test]
fn sixteen_threads_of_random_reads_match_tar_x_and_memory_stays_flat() {
    let archive = fixtures_dir().join("debian-python.tar");
    require(
        archive.exists(),
        "tests/fixtures/make-debian-image.sh has built debian-python.tar",
    );
    let truth = TempDir::new("imgfs-stress-truth");
    extract_with_gnu_tar(&archive, truth.path());
    let paths = Arc::new(all_paths(truth.path()));
    assert!(paths.len() > 5000, "{} paths", paths.len());

    let cache = TempDir::new("imgfs-stress-cache");
    let mnt = TempDir::new("imgfs-stress-mnt");
    let out = imgfs()
        .args(["mount", "--cache-dir"])
        .arg(cache.path())
        .arg(&archive)
        .arg(mnt.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let server = server_of(mnt.path());

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..THREADS)
        .map(|i| {
            let (stop, ops, bytes, failures, paths) = (
                stop.clone(),
                ops.clone(),
                bytes.clone(),
                failures.clone(),
                paths.clone(),
            );
            let (mnt, truth) = (mnt.path().to_path_buf(), truth.path().to_path_buf());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x2545_f491));
                while !stop.load(Ordering::Relaxed) {
                    let rel = &paths[rng.below(paths.len() as u64) as usize];
                    match one_op(&mut rng, &mnt, &truth, rel) {
                        Ok(n) => {
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Memory after a quarter of the time (caches filled), then at the end.
    let start = Instant::now();
    std::thread::sleep(DURATION / 4);
    let early = anon_memory(server);
    let mut peak = early;
    while start.elapsed() < DURATION {
        std::thread::sleep(Duration::from_millis(500));
        peak = peak.max(anon_memory(server));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let late = anon_memory(server);
    let umount = imgfs().arg("umount").arg(mnt.path()).output().unwrap();
    assert!(umount.status.success(), "{}", text(&umount.stderr));

    let failures = failures.lock().unwrap();
    let (ops, bytes) = (ops.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
    eprintln!(
        "stress: {THREADS} threads, {:?}: {ops} operations, {bytes} bytes compared, {} mismatches or errors; server anonymous memory {early} -> {late} bytes (peak {peak})",
        DURATION,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{:#?}",
        &failures[..failures.len().min(10)]
    );
    assert!(ops > 10_000, "only {ops} operations");
    assert!(
        peak <= early + (2 << 20),
        "server memory grew from {early} to {peak} bytes"
    );
}
