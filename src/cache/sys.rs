//! The cache's system calls that need `unsafe` — read-only memory maps and file locks — and
//! the one test of whether a process a file or directory is named after still runs, which
//! the cache's announcements and the runner's leftovers rely on.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Maps a whole file read-only.
pub fn map(file: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: the cache only maps files it wrote and never modifies in place (updates are
    // written under a new name and renamed over), so the mapped bytes do not change under us.
    unsafe { memmap2::Mmap::map(file) }
}

/// Blocks until this process holds the exclusive flock on `file`.
pub fn lock_exclusive(file: &File) -> io::Result<()> {
    flock(file, libc::LOCK_EX)
}

/// Blocks until this process holds a shared flock on `file`.
pub fn lock_shared(file: &File) -> io::Result<()> {
    flock(file, libc::LOCK_SH)
}

/// Takes the exclusive flock on `file` if nobody holds it; false when somebody does.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    match flock(file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

fn flock(file: &File, operation: libc::c_int) -> io::Result<()> {
    // SAFETY: flock reads only the descriptor number, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The process id a directory entry is named by (`1234`), if it is named by one.
pub fn pid_name(name: &std::ffi::OsStr) -> Option<u32> {
    name.to_str().and_then(|n| n.parse().ok())
}

/// Whether the process `pid` still runs (a zombie counts until it is reaped).
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
