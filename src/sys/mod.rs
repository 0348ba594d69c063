//! The one room where imgfs talks to the kernel: every system call any stage makes goes
//! through a safe function here, so that `unsafe` is confined to three files of this module
//! and `#![deny(unsafe_code)]` holds in every other.
//!
//! - [`fs`]: mounts, pivot_root, descriptors opened by path, inside a root or in memory,
//!   file locks and read-only memory maps, filesystem types, the hostname and the kernel's
//!   release.
//! - [`process`]: fork and clone, exit, kill and wait, namespaces, signal sets and masks, ids,
//!   the calls a forked child makes before exec (no_new_privs and the seccomp filter among
//!   them), the CPU affinity, the loopback interface, and the process that removes a
//!   sandbox's cgroups after it.
//! - [`term`]: pseudo-terminals, terminal modes and window sizes, and the C library's
//!   local time and shell patterns.
//! - [`mountinfo`] parses the mount table, [`publish`](mod@publish) writes a file whole
//!   or not at all and [`trace`] records a timeline when asked; all are safe code over
//!   `std`.
//!
//! This file holds what they share: [`SysError`], which names the failed call and what it was
//! applied to, C string helpers, exit statuses, and small checks on processes by pid.
//! Nothing here uses a later stage. No crate stands between imgfs and libc: each wrapper is
//! one call with its safety argument beside it, and costs nothing a direct call does not.

pub(crate) mod fs;
pub(crate) mod mountinfo;
pub(crate) mod process;
pub(crate) mod publish;
pub(crate) mod term;
pub mod trace;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub(crate) use fs::{lock_exclusive, lock_shared, map, try_lock_exclusive};
pub(crate) use process::{effective_ids, euid};
pub(crate) use publish::{Durability, Publish, publish};

/// Exit status when the sandbox could not be set up (docker run uses the same).
pub const EXIT_SETUP: i32 = 125;
/// The command exists but could not be started.
pub(crate) const EXIT_CANNOT_EXEC: i32 = 126;
/// The command was not found.
pub(crate) const EXIT_NOT_FOUND: i32 = 127;

/// A system call that failed, with what it was doing and on what.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SysError {
    #[error("{0:?} holds a NUL byte")]
    Nul(String),
    #[error("{0} is not UTF-8")]
    NotUtf8(PathBuf),
    #[error("cannot mount {what} on {target}: {cause}")]
    Mount {
        what: String,
        target: String,
        cause: io::Error,
    },
    #[error("cannot {op} {path}: {cause}")]
    Path {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("cannot {op}: {cause}")]
    Call { op: &'static str, cause: io::Error },
    #[error("cannot {op}: the process has more than one thread")]
    Threads { op: &'static str },
}

impl SysError {
    /// The failed call `op`, with errno as it is now.
    pub(crate) fn last(op: &'static str) -> SysError {
        SysError::Call {
            op,
            cause: io::Error::last_os_error(),
        }
    }

    /// The failed call `op` on `path`, with errno as it is now.
    pub(crate) fn last_on(op: &'static str, path: impl Into<PathBuf>) -> SysError {
        SysError::Path {
            op,
            path: path.into(),
            cause: io::Error::last_os_error(),
        }
    }

    /// Names the failed call `op` of an `io::Error` (for `map_err`).
    pub(crate) fn call(op: &'static str) -> impl FnOnce(io::Error) -> SysError {
        move |source| SysError::Call { op, cause: source }
    }

    /// The errno behind the failure, if there is one.
    pub(crate) fn raw_os_error(&self) -> Option<i32> {
        match self {
            SysError::Mount { cause, .. }
            | SysError::Path { cause, .. }
            | SysError::Call { cause, .. } => cause.raw_os_error(),
            SysError::Nul(_) | SysError::NotUtf8(_) | SysError::Threads { .. } => None,
        }
    }
}

pub(crate) fn cstr(p: impl AsRef<[u8]>) -> Result<CString, SysError> {
    CString::new(p.as_ref())
        .map_err(|_| SysError::Nul(String::from_utf8_lossy(p.as_ref()).into_owned()))
}

pub(crate) fn path_cstr(p: &Path) -> Result<CString, SysError> {
    cstr(p.as_os_str().as_bytes())
}

pub(crate) fn path_str(p: &Path) -> Result<&str, SysError> {
    p.to_str().ok_or_else(|| SysError::NotUtf8(p.to_path_buf()))
}

/// Exit status a shell would show for a wait status.
pub(crate) fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        EXIT_SETUP
    }
}

pub(crate) fn write_file(path: &Path, contents: &str) -> Result<(), SysError> {
    std::fs::write(path, contents).map_err(|source| SysError::Path {
        op: "write",
        path: path.to_path_buf(),
        cause: source,
    })
}

/// Maps the caller, `uid` and `gid` outside, to root in the user namespace this process has
/// just made: what a process may do once, for itself alone, without privilege.
pub(crate) fn map_caller_to_root(uid: u32, gid: u32) -> Result<(), SysError> {
    write_file(Path::new("/proc/self/setgroups"), "deny")?;
    write_file(Path::new("/proc/self/uid_map"), &format!("0 {uid} 1"))?;
    write_file(Path::new("/proc/self/gid_map"), &format!("0 {gid} 1"))
}

pub(crate) fn mkdir(path: &Path) -> Result<(), SysError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|source| SysError::Path {
            op: "create",
            path: path.to_path_buf(),
            cause: source,
        })
}

/// The magic link that names what `fd` is open on.
pub(crate) fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Whether this process has a single thread: only then may it unshare a user namespace or
/// fork a child that runs Rust code.
pub(crate) fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .is_some_and(|n| n.trim() == "1")
    })
}

/// The process id a directory entry is named by (`1234`), if it is named by one.
pub(crate) fn pid_name(name: &std::ffi::OsStr) -> Option<u32> {
    name.to_str().and_then(|n| n.parse().ok())
}

/// Field `n` of /proc/PID/stat, numbered as proc(5) numbers them from the state on (3: the
/// state, 4: the parent, 22: the start time); read after the last `)`, as the command name
/// before it may hold spaces and parentheses.
fn stat_field<T: std::str::FromStr>(pid: u32, n: usize) -> Option<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// Whether the process `pid` still runs: a zombie (dead, not yet reaped) does not.
pub(crate) fn alive(pid: u32) -> bool {
    stat_field::<char>(pid, 3).is_some_and(|state| state != 'Z' && state != 'X')
}

/// The parent of process `pid`.
pub(crate) fn parent_pid(pid: u32) -> Option<i32> {
    stat_field(pid, 4)
}

/// The start time of process `pid` (clock ticks after boot): with the pid, what tells a
/// process from a later one given the same pid.
pub(crate) fn process_start_time(pid: i32) -> Option<u64> {
    stat_field(u32::try_from(pid).ok()?, 22)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_of_wait_statuses() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(libc::SIGKILL), 128 + libc::SIGKILL);
    }

    #[test]
    fn pids_by_name() {
        assert_eq!(pid_name(std::ffi::OsStr::new("1234")), Some(1234));
        assert_eq!(pid_name(std::ffi::OsStr::new("shared")), None);
        assert!(alive(std::process::id()));
        assert_eq!(
            parent_pid(std::process::id()),
            Some(std::os::unix::process::parent_id() as i32)
        );
        assert!(process_start_time(std::process::id() as i32).is_some());
    }

    #[test]
    fn nul_bytes_are_refused() {
        assert!(matches!(cstr("a\0b"), Err(SysError::Nul(_))));
        assert_eq!(cstr("ab").unwrap().as_bytes(), b"ab");
    }
}
