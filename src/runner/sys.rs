//! The system calls every stage of the sandbox start makes, wrapped once: C strings, mount,
//! detach, signal sets, exit statuses, descriptors by path. Each failure is a [`SysError`]
//! naming the call and what it was applied to.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Exit status when the sandbox could not be set up (docker run uses the same).
pub const EXIT_SETUP: i32 = 125;
/// The command exists but could not be started.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// A system call that failed, with what it was doing and on what.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{0:?} holds a NUL byte")]
    Nul(String),
    #[error("{0} is not UTF-8")]
    NotUtf8(PathBuf),
    #[error("cannot mount {what} on {target}: {source}")]
    Mount {
        what: String,
        target: String,
        source: io::Error,
    },
    #[error("cannot {op} {path}: {source}")]
    Path {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot {op}: {source}")]
    Call { op: &'static str, source: io::Error },
}

impl SysError {
    /// The failed call `op`, with errno as it is now.
    pub fn last(op: &'static str) -> SysError {
        SysError::Call {
            op,
            source: io::Error::last_os_error(),
        }
    }

    /// The failed call `op` on `path`, with errno as it is now.
    pub fn last_on(op: &'static str, path: impl Into<PathBuf>) -> SysError {
        SysError::Path {
            op,
            path: path.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// The errno behind the failure, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            SysError::Mount { source, .. }
            | SysError::Path { source, .. }
            | SysError::Call { source, .. } => source.raw_os_error(),
            SysError::Nul(_) | SysError::NotUtf8(_) => None,
        }
    }
}

pub fn cstr(p: impl AsRef<[u8]>) -> Result<CString, SysError> {
    CString::new(p.as_ref())
        .map_err(|_| SysError::Nul(String::from_utf8_lossy(p.as_ref()).into_owned()))
}

pub fn path_cstr(p: &Path) -> Result<CString, SysError> {
    cstr(p.as_os_str().as_bytes())
}

pub fn path_str(p: &Path) -> Result<&str, SysError> {
    p.to_str().ok_or_else(|| SysError::NotUtf8(p.to_path_buf()))
}

/// `Ok` for a non-negative return value, else the failed call `op` with errno.
pub fn check(rc: libc::c_int, op: &'static str) -> Result<(), SysError> {
    if rc < 0 {
        Err(SysError::last(op))
    } else {
        Ok(())
    }
}

/// mount(2). `source`/`fstype`/`data` may be absent; the error names the target as `shown`.
pub fn mount_as(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
    shown: &str,
) -> Result<(), SysError> {
    let src = source.map(cstr).transpose()?;
    let tgt = path_cstr(target)?;
    let ty = fstype.map(cstr).transpose()?;
    let dat = data.map(cstr).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string alive for the call.
    let rc = unsafe { libc::mount(ptr(&src), tgt.as_ptr(), ptr(&ty), flags, ptr(&dat).cast()) };
    if rc < 0 {
        return Err(SysError::Mount {
            what: fstype.or(source).unwrap_or("a remount").to_string(),
            target: shown.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// mount(2) on a host path, named as such in errors.
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), SysError> {
    mount_as(
        source,
        target,
        fstype,
        flags,
        data,
        &target.display().to_string(),
    )
}

/// Detaches the mount at `path`, ignoring failure (it is only ever cleanup).
pub fn detach(path: &Path) {
    if let Ok(c) = path_cstr(path) {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

pub fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks `signals` for this thread (and every thread or child started after).
pub fn block(signals: &[i32]) {
    let set = sigset(signals);
    // SAFETY: `set` is initialised.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Exit status a shell would show for a wait status.
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        EXIT_SETUP
    }
}

pub fn write_file(path: &Path, contents: &str) -> Result<(), SysError> {
    fs::write(path, contents).map_err(|source| SysError::Path {
        op: "write",
        path: path.to_path_buf(),
        source,
    })
}

pub fn mkdir(path: &Path) -> Result<(), SysError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|source| SysError::Path {
            op: "create",
            path: path.to_path_buf(),
            source,
        })
}

/// An `O_PATH` descriptor of the directory `p`.
pub fn open_dir(p: &Path) -> Result<OwnedFd, SysError> {
    let c = path_cstr(p)?;
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(SysError::last_on("open", p));
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The magic link that names what `fd` is open on.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Whether this process has a single thread: only then may it unshare a user namespace or
/// fork a child that runs Rust code.
pub fn single_threaded() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .is_some_and(|n| n.trim() == "1")
    })
}

pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}
