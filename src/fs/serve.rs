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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};

use super::ImageFs;
use crate::cache::sys;

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
    /// Unmount once unused for this long (shared servers of `imgfs run`).
    pub idle_exit: Option<Duration>,
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
/// per server, named by its pid, holding the identity of the index it serves and the
/// mountpoint. `imgfs run` uses such a mount, with its warm kernel caches, instead of starting
/// a server of its own.
const REGISTRY_DIR: &str = "mounts";
/// Lock file in [`REGISTRY_DIR`] taken while a shared server is being started.
const SHARED_LOCK: &str = ".shared.lock";

/// A live mount's announcement, withdrawn when dropped.
struct Registration(PathBuf);

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What tells one index file from another: a rebuilt index is a new file (written, then
/// renamed over the old one), so a mount serving the old one is never taken for the new.
fn index_identity(index: &Path) -> io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(index)?;
    Ok(format!("{}:{}", m.dev(), m.ino()))
}

fn register(entry_dir: &Path, index: &Path, mountpoint: &Path) -> io::Result<Registration> {
    let dir = entry_dir.join(REGISTRY_DIR);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(std::process::id().to_string());
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let target = std::fs::canonicalize(mountpoint)?;
    let mut text = index_identity(index)?.into_bytes();
    text.push(b'\n');
    text.extend_from_slice(target.as_os_str().as_bytes());
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(Registration(path))
}

/// A live imgfs mount of an image, found through its announcement.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveMount {
    pub mountpoint: PathBuf,
    /// The announcement, which a user of the mount holds locked (see [`LiveMount::lease`]).
    pub registry: PathBuf,
}

/// A hold on a live mount: while it lasts, a server that is idle does not go away, and
/// taking it marks the mount as just used.
pub struct Lease {
    _announcement: std::fs::File,
}

impl LiveMount {
    /// Takes a lease on the mount, or says why it is gone. Bind the mount while holding it:
    /// once bound, the mount lives as long as the binding, whatever its server decides.
    pub fn lease(&self) -> io::Result<Lease> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::open(&self.registry)?;
        sys::lock_shared(&file)?;
        // A server retiring unlinks its announcement under the exclusive lock.
        if file.metadata()?.nlink() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the mount went away",
            ));
        }
        // The server's idle clock; failing to set it only lets the server retire sooner.
        let _ = file.set_modified(std::time::SystemTime::now());
        Ok(Lease {
            _announcement: file,
        })
    }
}

/// A live imgfs mount of the image whose cache entry is `entry_dir` and whose index is
/// `index`, if one is announced and its server still runs. Announcements of dead servers are
/// removed.
pub fn live_mount(entry_dir: &Path, index: &Path) -> Option<LiveMount> {
    let identity = index_identity(index).ok()?;
    let entries = std::fs::read_dir(entry_dir.join(REGISTRY_DIR)).ok()?;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let Ok(text) = std::fs::read(e.path()) else {
            continue;
        };
        let Some(nl) = text.iter().position(|&b| b == b'\n') else {
            continue;
        };
        if text[..nl] != *identity.as_bytes() {
            continue;
        }
        let mountpoint = PathBuf::from(std::ffi::OsStr::from_bytes(&text[nl + 1..]));
        if find_mount(&mountpoint).is_some_and(|m| m.is_imgfs()) {
            return Some(LiveMount {
                mountpoint,
                registry: e.path(),
            });
        }
    }
    None
}

/// Request threads for a server of its own: twice the CPUs, 2 to 8.
pub fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cpus * 2).clamp(2, 8)
}

/// What the background server prints on stdout once the mount answers.
const READY: &str = "ready";

/// Where the ready line or the error goes: the stdout of `imgfs __serve`.
pub fn report(text: &str) {
    use std::io::Write;
    let mut out = io::stdout();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Reports readiness (see [`spawn_detached`]).
pub fn report_ready() {
    report(READY);
}

/// Where to serve an image.
pub struct Served<'a> {
    pub index: &'a Path,
    pub archive: &'a Path,
    pub mountpoint: &'a Path,
    pub options: &'a ServeOptions,
}

/// Starts `imgfs __serve` detached (own process group, no terminal) and waits until it says
/// the mount is ready, or relays why it could not mount.
pub fn spawn_detached(what: &Served) -> Result<(), String> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the imgfs executable: {e}"))?;
    // Absolute paths, and `/` as the working directory: a server that lives on must not
    // keep the caller's directory busy.
    let absolute = |p: &Path| {
        std::fs::canonicalize(p).map_err(|e| format!("cannot resolve {}: {e}", p.display()))
    };
    let mut cmd = Command::new(exe);
    cmd.arg("__serve")
        .arg("--index")
        .arg(absolute(what.index)?)
        .arg("--archive")
        .arg(absolute(what.archive)?)
        .arg("--fsname")
        .arg(&what.options.fsname)
        .arg("--threads")
        .arg(what.options.threads.to_string());
    if let Some(idle) = what.options.idle_exit {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        cmd.arg("--idle-exit-ms").arg(ms.to_string());
    }
    let mut child = cmd
        .arg(absolute(what.mountpoint)?)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the imgfs server: {e}"))?;
    let stdout = child.stdout.take().ok_or("no pipe to the imgfs server")?;
    let mut line = String::new();
    io::BufReader::new(stdout).read_line(&mut line).ok();
    if line.trim_end() == READY {
        return Ok(()); // the server lives on; its stdout pipe closes when we exit
    }
    let status = child
        .wait()
        .map_err(|e| format!("lost the imgfs server: {e}"))?;
    let message = line
        .trim_end()
        .strip_prefix("error: ")
        .unwrap_or(line.trim_end());
    if message.is_empty() {
        return Err(format!(
            "the imgfs server exited ({status}) before the mount was ready"
        ));
    }
    Err(message.to_string())
}

/// Parent of the mountpoints of shared servers: root's only.
pub const SHARED_DIR: &str = "/run/imgfs/shared";

/// A live mount of the image for a sandbox: the one already announced, or a new shared
/// server's, which exits once nothing has used it for `linger`. Serialized per image, so
/// sandboxes started together share one server.
pub fn shared_mount(
    index: &Path,
    archive: &Path,
    fsname: &str,
    linger: Duration,
) -> Result<LiveMount, String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let entry = index.parent().ok_or("the index has no directory")?;
    let registry = entry.join(REGISTRY_DIR);
    std::fs::create_dir_all(&registry)
        .map_err(|e| format!("cannot create {}: {e}", registry.display()))?;
    let lock_path = registry.join(SHARED_LOCK);
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    // Released when `lock` is closed.
    sys::lock_exclusive(&lock).map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    if let Some(live) = live_mount(entry, index) {
        return Ok(live);
    }
    let parent = Path::new(SHARED_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .and_then(|()| std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    // Mountpoints left by killed servers: removing a live one fails (EBUSY).
    if let Ok(dirs) = std::fs::read_dir(parent) {
        for d in dirs.flatten() {
            let _ = std::fs::remove_dir(d.path());
        }
    }
    let name = entry.file_name().map_or_else(
        || "image".into(),
        |n| n.to_string_lossy().chars().take(19).collect::<String>(),
    );
    let mountpoint = parent.join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir(&mountpoint)
        .map_err(|e| format!("cannot create {}: {e}", mountpoint.display()))?;
    let options = ServeOptions {
        fsname: fsname.to_string(),
        threads: default_threads(),
        idle_exit: Some(linger),
    };
    let served = Served {
        index,
        archive,
        mountpoint: &mountpoint,
        options: &options,
    };
    if let Err(e) = spawn_detached(&served) {
        let _ = std::fs::remove_dir(&mountpoint);
        return Err(e);
    }
    live_mount(entry, index).ok_or_else(|| "the shared server did not announce itself".into())
}

/// Mounts `fs` at `mountpoint` and serves until unmounted or signalled. `on_ready` runs once
/// the mount answers requests. The mount is announced in the cache entry of `index` while it
/// lives (see [`live_mount`]). With `options.idle_exit`, a mount that no request and
/// no lease has touched for that long is detached; the server ends when the last sandbox
/// bound to it does, and removes its mountpoint.
pub fn serve(
    fs: ImageFs,
    index: &Path,
    mountpoint: &Path,
    options: &ServeOptions,
    on_ready: impl FnOnce(),
) -> Result<(), ServeError> {
    let set = stop_signals();
    // SAFETY: `set` is initialised; blocking before any thread starts makes every thread
    // inherit the mask, so only the sigwait thread below ever takes these signals.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let requests = fs.requests();
    let background = spawn(fs, mountpoint, options)?;
    let thread_failed = |source| ServeError::Session {
        path: mountpoint.to_path_buf(),
        source,
    };

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
        .map_err(thread_failed)?;

    let announced = index
        .parent()
        .and_then(|dir| match register(dir, index, mountpoint) {
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
