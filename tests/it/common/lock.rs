//! Locks between tests that share something machine-wide and run at the same time, in this
//! process (`cargo test`) or in others (cargo-nextest, a process per test): a test that
//! stops dockerd holds [`DOCKERD`] alone while every test using dockerd holds it shared.
//!
//! A lock is an flock(2) on a file under `$IMGFS_FIXTURES/locks`, held until the [`Held`]
//! is dropped; the kernel releases it when a test process dies. flock conflicts between two
//! opens of one file in one process too, so threads lock each other as processes do.
//! tests/nextest.toml keeps such tests apart in the first place, so that under nextest a
//! test seldom waits here holding a slot; the locks make it right under any runner.

use std::fs::{self, File};
use std::os::fd::AsRawFd;

use super::fixtures_dir;

/// dockerd: taken shared by every test that uses it ([`super::require_docker`]), alone by
/// the test that kills it.
pub const DOCKERD: &str = "dockerd";
/// /etc/passwd and /etc/group, while a test account is made.
pub const USERS: &str = "users";

/// A lock taken; released when dropped.
#[must_use = "the lock is released when this is dropped"]
pub struct Held(File);

/// Takes `name` shared: beside other shared holders, never beside an exclusive one.
#[track_caller]
pub fn shared(name: &str) -> Held {
    take(name, libc::LOCK_SH)
}

/// Takes `name` alone.
#[track_caller]
pub fn exclusive(name: &str) -> Held {
    take(name, libc::LOCK_EX)
}

#[track_caller]
fn take(name: &str, how: libc::c_int) -> Held {
    let dir = fixtures_dir().join("locks");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(name);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
            return Held(file);
        }
        let e = std::io::Error::last_os_error();
        assert!(
            e.kind() == std::io::ErrorKind::Interrupted,
            "flock {}: {e}",
            path.display()
        );
    }
}
