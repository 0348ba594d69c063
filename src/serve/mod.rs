//! The mount lifecycle, between the filesystem and its users: runs an [`ImageFs`] on a
//! mountpoint until it is unmounted or the process gets SIGTERM, SIGINT or SIGHUP, and
//! unmounts cleanly in every case. Also the `umount` side and the mount table queries both
//! need.
//!
//! The mount is read-only, `nodev` and `nosuid` (an image's device nodes and setuid files
//! give no power on the host), with `default_permissions` so the kernel checks the image's
//! modes, and open to other users when the server runs as root.
//!
//! Beside it: [`announce`] (a live mount's announcement, found and leased by `imgfs run`),
//! [`detached`] (servers started in the background) and [`shared`] (the shared servers of
//! `imgfs run`, mounted where only their user reaches them: root's under [`SHARED_DIR`],
//! another user's in a private directory of their own, see [`shared_dir`]). A caller only
//! ever takes up its own announcements and mounts.

pub(crate) mod announce;
pub(crate) mod detached;
pub(crate) mod keeper;
pub(crate) mod shared;
pub(crate) mod status;

use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};

use crate::fs::ImageFs;
use crate::sys::process::SigSet;
use crate::sys::{self, euid, mountinfo};
use announce::register;

pub use announce::{Lease, LiveMount, live_mount};
pub use detached::{
    SERVER_LOG, Served, SpawnError, exec_foreground, report, report_ready, spawn_detached,
    spawn_detached_child,
};
pub use keeper::{Connection, Held, ServerRecord, keep, restart_all, server_records};
pub use shared::{SHARED_DIR, SharedError, is_shared_mountpoint, shared_dir, shared_mount};
pub use status::{MountStatus, Restarted, State, mount_statuses, restart_servers};

/// Filesystem subtype, and the prefix of the source name every imgfs mount shows in the
/// mount table (`imgfs:IMAGE`), which is how an imgfs mount is recognised.
pub const SUBTYPE: &str = "imgfs";
pub const SOURCE_PREFIX: &str = "imgfs:";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("mountpoint {path}: {reason}")]
    Mountpoint { path: PathBuf, reason: String },
    #[error("cannot mount at {path}: {cause}")]
    Mount { path: PathBuf, cause: io::Error },
    #[error("serving {path} failed: {cause}")]
    Session { path: PathBuf, cause: io::Error },
    #[error("cannot unmount {path}: {reason}")]
    Unmount { path: PathBuf, reason: String },
}

pub struct ServeOptions {
    /// Source name shown in the mount table, e.g. `imgfs:python:3.12`.
    pub fsname: String,
    /// Request-handling threads.
    pub threads: usize,
    /// Unmount once unused for this long (shared servers of `imgfs run`).
    pub idle_exit: Option<Duration>,
    /// How reads of lazily fetched layers wait for their registry.
    pub lazy: crate::image::lazy::LazyOptions,
}

/// Signals that end serving; blocked in every thread and taken by one with sigwait.
fn stop_signals() -> SigSet {
    SigSet::of(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
}

/// Blocks the signals that end serving in the calling thread and so in every thread it starts
/// from then on: only [`serve`]'s sigwait thread takes them, and unmounts. Call it before
/// opening the image to serve: a lazy image starts threads as it opens (fetches, prefetch,
/// promotion), and a signal taken by one of those would end the server with the default
/// action, leaving its mount behind, dead.
pub fn block_stop_signals() {
    sys::process::block_in_thread(&stop_signals());
}

fn is_root() -> bool {
    euid() == 0
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

/// Request threads for a server of its own: twice the CPUs, 2 to 8.
pub fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cpus * 2).clamp(2, 8)
}

/// Mounts `fs` at `mountpoint` and serves until unmounted or signalled. `on_ready` runs once
/// the mount answers requests. The mount is announced in the cache entry of `index` while it
/// lives (see [`live_mount`]). With `options.idle_exit`, a mount that no request and
/// no lease has touched for that long is detached; the server ends when the last sandbox
/// bound to it does, and removes its mountpoint. Open `fs` after [`block_stop_signals`].
pub fn serve(
    fs: ImageFs,
    index: &Path,
    mountpoint: &Path,
    options: &ServeOptions,
    connection: Connection,
    on_ready: impl FnOnce(),
) -> Result<(), ServeError> {
    // Threads `fs` started before this must have been started with them blocked too.
    block_stop_signals();
    let set = stop_signals();

    let requests = fs.requests();
    let owners = fs.owners();
    let mut kept = true;
    let session = match connection {
        Connection::Mount { handover } => {
            let session = mount(fs, mountpoint, options)?;
            kept = match handover {
                Some(keeper) => match sys::fs::send_fd(keeper.as_fd(), session.as_fd()) {
                    Ok(()) => true,
                    Err(e) => {
                        log::warn!("{}: no keeper holds the mount: {e}", mountpoint.display());
                        false
                    }
                },
                None => false,
            };
            session
        }
        Connection::Resume(fd) => resume(fs, fd, options),
    };
    let background = start(session, mountpoint)?;
    if kept {
        keeper::server_ready();
    }
    let thread_failed = |source| ServeError::Session {
        path: mountpoint.to_path_buf(),
        cause: source,
    };

    let target = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("imgfs-signals".into())
        .spawn(move || {
            if let Ok(signo) = sys::process::sigwait(&set) {
                log::info!("signal {signo}: unmounting {}", target.display());
                // Lazy: open files keep working; the session ends when the last one closes.
                if let Err(e) = unmount(&target, true) {
                    log::warn!("{e}");
                }
            }
        })
        .map_err(thread_failed)?;

    let announced = index
        .parent()
        .and_then(|dir| match register(dir, index, mountpoint, owners) {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("cannot announce the mount in {}: {e}", dir.display());
                None
            }
        });
    if let Some(idle) = options.idle_exit {
        let registry = announced.as_ref().map(|r| r.0.clone());
        let target = mountpoint.to_path_buf();
        std::thread::Builder::new()
            .name("imgfs-idle".into())
            .spawn(move || retire_when_idle(idle, &requests, registry.as_deref(), &target))
            .map_err(thread_failed)?;
    }
    on_ready();
    let result = background.join().map_err(thread_failed);
    if options.idle_exit.is_some() {
        let _ = std::fs::remove_dir(mountpoint);
    }
    result
}

/// When the mount was last used: its request count and its announcement's mtime, which a
/// lease sets.
fn usage(requests: &AtomicU64, registry: Option<&Path>) -> (u64, Option<std::time::SystemTime>) {
    let touched = registry.and_then(|r| std::fs::metadata(r).and_then(|m| m.modified()).ok());
    (requests.load(Ordering::Relaxed), touched)
}

/// Detaches the mount once it has gone `idle` without a request or a lease. The exclusive
/// lock on the announcement waits out a sandbox that is binding the mount right now.
fn retire_when_idle(idle: Duration, requests: &AtomicU64, registry: Option<&Path>, target: &Path) {
    let tick = (idle / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
    let mut seen = usage(requests, registry);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(tick);
        let now = usage(requests, registry);
        if now != seen {
            seen = now;
            since = Instant::now();
            continue;
        }
        if since.elapsed() < idle {
            continue;
        }
        let held = registry.map(std::fs::File::open).transpose();
        let free = match &held {
            Ok(Some(f)) => sys::try_lock_exclusive(f).unwrap_or(false),
            Ok(None) | Err(_) => true,
        };
        if !free {
            since = Instant::now();
            continue;
        }
        if let Some(r) = registry {
            let _ = std::fs::remove_file(r);
        }
        log::info!("idle for {idle:?}: unmounting {}", target.display());
        if let Err(e) = unmount(target, true) {
            log::warn!("{e}");
        }
        return;
    }
}

/// Mounts `fs` without starting a thread: requests wait until [`start`]. The process stays
/// single-threaded in between, so it may still fork and go on running Rust in the child.
pub(crate) fn mount(
    fs: ImageFs,
    mountpoint: &Path,
    options: &ServeOptions,
) -> Result<fuser::Session<ImageFs>, ServeError> {
    fuser::Session::new(fs, mountpoint, &config(options)).map_err(|source| ServeError::Mount {
        path: mountpoint.to_path_buf(),
        cause: source,
    })
}

/// A session on the live connection `fd`, which a server of the same image initialized (see
/// [`keeper`]); the kernel is asked to send again what that server read and did not answer.
fn resume(
    fs: ImageFs,
    fd: std::os::fd::OwnedFd,
    options: &ServeOptions,
) -> fuser::Session<ImageFs> {
    let acl = config(options).acl;
    let session = fuser::Session::resume(fs, fd, acl, config(options));
    match session.notifier().resend() {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => log::warn!(
            "this kernel cannot resend requests (Linux 6.9 and later can): those the last \
             server read and did not answer stay unanswered"
        ),
        Err(e) => log::warn!("asking the kernel to resend requests: {e}"),
    }
    session
}

/// How imgfs mounts: read-only, no devices or setuid, the kernel checking modes; open to all
/// when the server is root's. One device for all request threads: a server taking over
/// (see [`keeper`]) finds every request the dead one had read on the one connection a keeper
/// holds, where cloned devices would have ended them with the server.
fn config(options: &ServeOptions) -> Config {
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
    config.clone_fd = false;
    config
}

/// Starts the request threads of a session made by [`mount`].
pub(crate) fn start(
    session: fuser::Session<ImageFs>,
    mountpoint: &Path,
) -> Result<fuser::BackgroundSession, ServeError> {
    session.spawn().map_err(|source| ServeError::Session {
        path: mountpoint.to_path_buf(),
        cause: source,
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
    // The mountpoint itself is never followed if it became a symbolic link meanwhile.
    let flags = libc::UMOUNT_NOFOLLOW | if lazy { libc::MNT_DETACH } else { 0 };
    let Err(err) = sys::fs::umount(&c, flags) else {
        return Ok(());
    };
    Err(fail(match err.raw_os_error() {
        Some(libc::EBUSY) => {
            "target is busy (files are open there; close them or use --lazy)".into()
        }
        Some(libc::EINVAL) => "not a mountpoint".into(),
        _ => err.to_string(),
    }))
}

/// An entry of the mount table, as serving and unmounting need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// `major:minor`; for a FUSE mount, the number of its connection.
    pub device: String,
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    /// The owner of a FUSE mount (`user_id=` of its options): the one user it answers,
    /// unless mounted to answer all.
    pub user_id: Option<u32>,
}

impl MountInfo {
    pub fn is_imgfs(&self) -> bool {
        self.fstype.starts_with("fuse") && self.source.starts_with(SOURCE_PREFIX)
    }
}

impl From<mountinfo::Mount<'_>> for MountInfo {
    fn from(m: mountinfo::Mount) -> MountInfo {
        let user_id = m.super_option("user_id").and_then(|id| id.parse().ok());
        MountInfo {
            device: m.device.to_string(),
            mountpoint: m.mountpoint.into_owned(),
            fstype: m.fstype.into_owned(),
            source: m.source.into_owned(),
            user_id,
        }
    }
}

/// Parses mountinfo text (see [`mountinfo::parse`]).
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    mountinfo::parse(text)
        .into_iter()
        .map(MountInfo::from)
        .collect()
}

/// The topmost mount at `path` (canonicalized when possible), if any.
pub fn find_mount(path: &Path) -> Option<MountInfo> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mount_at(&path)
}

/// The topmost mount at `path`, an absolute path with no link in it, found in the mount
/// table alone: nothing is asked of the filesystem mounted there, which may be one whose
/// server is gone.
pub(crate) fn mount_at(path: &Path) -> Option<MountInfo> {
    let text = std::fs::read_to_string(mountinfo::SELF).ok()?;
    mountinfo::parse(&text)
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == path)
        .map(MountInfo::from)
}

/// How long [`is_dead`] waits for a mount's answer before taking it for alive (and busy).
const DEAD_PROBE_WAIT: Duration = Duration::from_secs(2);

/// Whether the mount at `mountpoint` is one nothing answers: a FUSE connection nobody holds
/// fails every request at once, with `ENOTCONN`. Asked with statfs, which the kernel never
/// answers from its caches (a lookup or getattr of the root may be), and only of the caller's
/// own mounts (`user_id` of the mount); a mount that does not answer within
/// [`DEAD_PROBE_WAIT`] is taken for alive, its probe left waiting on a thread of its own.
pub(crate) fn is_dead(mount: &MountInfo) -> bool {
    if mount.user_id.is_some_and(|u| u != euid()) {
        return false;
    }
    let path = mount.mountpoint.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let probe = std::thread::Builder::new()
        .name("imgfs-probe".into())
        .spawn(move || {
            let dead =
                sys::fs::fs_type(&path).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
            let _ = tx.send(dead);
        });
    probe.is_ok() && rx.recv_timeout(DEAD_PROBE_WAIT).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.imgfs imgfs:py ro,user_id=1001,group_id=1001\n\
                    37 35 98:0 / /x rw - ext4 /dev/vda rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].device, "98:0");
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "fuse.imgfs");
        assert_eq!(m[0].source, "imgfs:py");
        assert_eq!(m[0].user_id, Some(1001));
        assert_eq!(m[1].fstype, "ext4");
        assert_eq!(m[1].user_id, None);
    }
}
