//! Mounting and serving: runs an [`ImageFs`] on a mountpoint until it is unmounted or the
//! process gets SIGTERM, SIGINT or SIGHUP, and unmounts cleanly in every case. Also the
//! `umount` side and the mount table queries both need.
//!
//! The mount is read-only, `nodev` and `nosuid` (an image's device nodes and setuid files
//! give no power on the host), with `default_permissions` so the kernel checks the image's
//! modes, and open to other users when the server runs as root.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use fuser::{Config, MountOption, SessionACL};

use super::ImageFs;

/// Filesystem subtype, and the prefix of the source name every imgfs mount shows in the
/// mount table (`imgfs:IMAGE`), which is how an imgfs mount is recognised.
pub const SUBTYPE: &str = "imgfs";
pub const SOURCE_PREFIX: &str = "imgfs:";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("mountpoint {path}: {reason}")]
    Mountpoint { path: PathBuf, reason: String },
    #[error("cannot mount at {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("serving {path} failed: {source}")]
    Session { path: PathBuf, source: io::Error },
    #[error("cannot unmount {path}: {reason}")]
    Unmount { path: PathBuf, reason: String },
}

pub struct ServeOptions {
    /// Source name shown in the mount table, e.g. `imgfs:python:3.12`.
    pub fsname: String,
    /// Request-handling threads.
    pub threads: usize,
}

/// Signals that end serving; blocked in every thread and taken by one with sigwait.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Checks the mountpoint before mounting: an existing directory, not already an imgfs mount.
/// A dead imgfs mount there (its server was killed) is cleared first.
pub fn check_mountpoint(path: &Path) -> Result<(), ServeError> {
    let bad = |reason: String| ServeError::Mountpoint {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("not a directory".into())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            log::info!("clearing a dead mount at {}", path.display());
            unmount(path, true)?;
        }
        Err(e) => return Err(bad(e.to_string())),
    }
    if find_mount(path).is_some_and(|m| m.is_imgfs()) {
        return Err(bad(
            "an imgfs image is already mounted here (imgfs umount it first)".into(),
        ));
    }
    Ok(())
}

/// Directory of an image's cache entry where its live mounts announce themselves: one file
/// per server, named by its pid, holding the mountpoint. `imgfs run` uses such a mount, with
/// its warm kernel caches, instead of starting a server of its own.
const REGISTRY_DIR: &str = "mounts";

/// A live mount's announcement, withdrawn when dropped.
struct Registration(PathBuf);

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn register(entry_dir: &Path, mountpoint: &Path) -> io::Result<Registration> {
    let dir = entry_dir.join(REGISTRY_DIR);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(std::process::id().to_string());
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let target = std::fs::canonicalize(mountpoint)?;
    std::fs::write(&tmp, target.as_os_str().as_bytes())?;
    std::fs::rename(&tmp, &path)?;
    Ok(Registration(path))
}

/// A live imgfs mount of the image whose cache entry is `entry_dir`, if one is announced and
/// its server still runs. Announcements of dead servers are removed.
pub fn live_mount(entry_dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(entry_dir.join(REGISTRY_DIR)).ok()?;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let Ok(target) = std::fs::read(e.path()) else {
            continue;
        };
        let mountpoint = PathBuf::from(std::ffi::OsStr::from_bytes(&target));
        if find_mount(&mountpoint).is_some_and(|m| m.is_imgfs()) {
            return Some(mountpoint);
        }
    }
    None
}

/// Mounts `fs` at `mountpoint` and serves until unmounted or signalled. `on_ready` runs once
/// the mount answers requests. With `entry_dir`, the mount is announced in that cache entry
/// while it lives (see [`live_mount`]).
pub fn serve(
    fs: ImageFs,
    mountpoint: &Path,
    options: &ServeOptions,
    entry_dir: Option<&Path>,
    on_ready: impl FnOnce(),
) -> Result<(), ServeError> {
    let set = stop_signals();
    // SAFETY: `set` is initialised; blocking before any thread starts makes every thread
    // inherit the mask, so only the sigwait thread below ever takes these signals.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let background = spawn(fs, mountpoint, options)?;

    let target = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("imgfs-signals".into())
        .spawn(move || {
            let mut signo = 0;
            // SAFETY: `set` is initialised and `signo` is a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut signo) } == 0 {
                log::info!("signal {signo}: unmounting {}", target.display());
                // Lazy: open files keep working; the session ends when the last one closes.
                if let Err(e) = unmount(&target, true) {
                    log::warn!("{e}");
                }
            }
        })
        .map_err(|source| ServeError::Session {
            path: mountpoint.to_path_buf(),
            source,
        })?;

    let _announced = entry_dir.and_then(|dir| match register(dir, mountpoint) {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!("cannot announce the mount in {}: {e}", dir.display());
            None
        }
    });
    on_ready();
    background.join().map_err(|source| ServeError::Session {
        path: mountpoint.to_path_buf(),
        source,
    })
}

/// Mounts `fs` and starts its request threads; the mount lasts as long as the returned
/// session (dropping it unmounts).
pub fn spawn(
    fs: ImageFs,
    mountpoint: &Path,
    options: &ServeOptions,
) -> Result<fuser::BackgroundSession, ServeError> {
    start(mount(fs, mountpoint, options)?, mountpoint)
}

/// Mounts `fs` without starting a thread: requests wait until [`start`]. The process stays
/// single-threaded in between, so it may still fork and go on running Rust in the child.
pub fn mount(
    fs: ImageFs,
    mountpoint: &Path,
    options: &ServeOptions,
) -> Result<fuser::Session<ImageFs>, ServeError> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
        MountOption::FSName(options.fsname.clone()),
        MountOption::Subtype(SUBTYPE.into()),
    ];
    config.acl = if is_root() {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    fuser::Session::new(fs, mountpoint, &config).map_err(|source| ServeError::Mount {
        path: mountpoint.to_path_buf(),
        source,
    })
}

/// Starts the request threads of a session made by [`mount`].
pub fn start(
    session: fuser::Session<ImageFs>,
    mountpoint: &Path,
) -> Result<fuser::BackgroundSession, ServeError> {
    session.spawn().map_err(|source| ServeError::Session {
        path: mountpoint.to_path_buf(),
        source,
    })
}

/// Unmounts an imgfs mount. Without `lazy`, a busy mount is an error naming the mountpoint;
/// with it the mount is detached now and goes away when its last file is closed.
pub fn unmount(path: &Path, lazy: bool) -> Result<(), ServeError> {
    let fail = |reason: String| ServeError::Unmount {
        path: path.to_path_buf(),
        reason,
    };
    if !is_root() {
        let flag = if lazy { "-uz" } else { "-u" };
        let out = std::process::Command::new("fusermount3")
            .arg(flag)
            .arg(path)
            .output()
            .map_err(|e| fail(format!("cannot run fusermount3 (install fuse3): {e}")))?;
        if !out.status.success() {
            return Err(fail(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        return Ok(());
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| fail("path holds a NUL byte".into()))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    Err(fail(match err.raw_os_error() {
        Some(libc::EBUSY) => {
            "target is busy (files are open there; close them or use --lazy)".into()
        }
        Some(libc::EINVAL) => "not a mountpoint".into(),
        _ => err.to_string(),
    }))
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl MountInfo {
    pub fn is_imgfs(&self) -> bool {
        self.fstype.starts_with("fuse") && self.source.starts_with(SOURCE_PREFIX)
    }
}

/// Unescapes the octal escapes (`\040`) the kernel uses in mountinfo fields.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let mountpoint = std::ffi::OsStr::from_bytes(&unescape(fields.get(4)?)).into();
            Some(MountInfo {
                mountpoint,
                fstype: fields.get(sep + 1)?.to_string(),
                source: String::from_utf8_lossy(&unescape(fields.get(sep + 2)?)).into_owned(),
            })
        })
        .collect()
}

/// The topmost mount at `path` (canonicalized when possible), if any.
pub fn find_mount(path: &Path) -> Option<MountInfo> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.imgfs imgfs:py rw\n\
                    37 35 98:0 / /x rw - ext4 /dev/vda rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "fuse.imgfs");
        assert_eq!(m[0].source, "imgfs:py");
        assert_eq!(m[1].fstype, "ext4");
    }
}
