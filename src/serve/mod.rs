//! The mount lifecycle, between the filesystem and its users: runs an [`ImageFs`] on a mountpoint until it is unmounted or the
//! process gets SIGTERM, SIGINT or SIGHUP, and unmounts cleanly in every case. Also the
//! `umount` side and the mount table queries both need.
//!
//! The mount is read-only, `nodev` and `nosuid` (an image's device nodes and setuid files
//! give no power on the host), with `default_permissions` so the kernel checks the image's
//! modes, and open to other users when the server runs as root.
//!
//! Shared servers for `imgfs run` are mounted where only their user reaches them: root's
//! under [`SHARED_DIR`], another user's in a private directory of their own (see
//! [`shared_dir`]), showing the image's owners as that user's sandboxes expect
//! ([`Owners::RootAs`]). A caller only ever takes up its own announcements and mounts.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};

use crate::fs::{ImageFs, Owners};
use crate::sys::process::SigSet;
use crate::sys::{self, euid, mountinfo};

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

/// Why no shared server could be found or started.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a private directory of uid {uid}: {reason}")]
    NotPrivate {
        path: PathBuf,
        uid: u32,
        reason: &'static str,
    },
    #[error("the index {0} has no cache entry directory")]
    NoEntry(PathBuf),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("the shared server did not announce itself")]
    NotAnnounced,
}

fn shared_io(path: &Path) -> impl FnOnce(io::Error) -> SharedError + '_ {
    move |source| SharedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Why a detached server could not be started or did not mount.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot find the imgfs executable: {0}")]
    Exe(io::Error),
    #[error("cannot resolve {path}: {source}")]
    Resolve { path: PathBuf, source: io::Error },
    #[error("cannot start the imgfs server: {0}")]
    Start(io::Error),
    #[error("no pipe to the imgfs server")]
    NoPipe,
    #[error("lost the imgfs server: {0}")]
    Lost(io::Error),
    #[error("the imgfs server exited ({0}) before the mount was ready")]
    Exited(std::process::ExitStatus),
    /// The server's own report of why it could not mount, relayed as it said it.
    #[error("{0}")]
    Server(String),
}

/// Where a detached server of a lazily read image writes its log, in the image's entry.
pub const SERVER_LOG: &str = "server.log";

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

/// Directory of an image's cache entry where its live mounts announce themselves: one file
/// per server, named by its pid, holding the identity of the index it serves and the
/// mountpoint. `imgfs run` uses such a mount, with its warm kernel caches, instead of starting
/// a server of its own.
const REGISTRY_DIR: &str = "mounts";
/// Lock file in [`REGISTRY_DIR`] taken while root's shared server is being started; another
/// user's is `.shared-UID.lock`, so that users of one cache never wait on each other.
const SHARED_LOCK: &str = ".shared.lock";
/// Mode of an announcement whatever the umask: others may read it, only its owner rewrite it.
const ANNOUNCEMENT_MODE: u32 = 0o644;

fn shared_lock_name(uid: u32) -> String {
    if uid == 0 {
        SHARED_LOCK.to_string()
    } else {
        format!(".shared-{uid}.lock")
    }
}

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

/// The first line of an announcement: which index is served, and how its owners are shown,
/// so that a sandbox only takes up a mount that shows the image as it would itself.
fn announcement_key(index: &Path, owners: Owners) -> io::Result<String> {
    let identity = index_identity(index)?;
    Ok(match owners {
        Owners::Recorded => identity,
        Owners::RootAs { uid, gid } => format!("{identity} root-as={uid}:{gid}"),
    })
}

fn register(
    entry_dir: &Path,
    index: &Path,
    mountpoint: &Path,
    owners: Owners,
) -> io::Result<Registration> {
    let dir = entry_dir.join(REGISTRY_DIR);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(std::process::id().to_string());
    let target = std::fs::canonicalize(mountpoint)?;
    let mut text = announcement_key(index, owners)?.into_bytes();
    text.push(b'\n');
    text.extend_from_slice(target.as_os_str().as_bytes());
    // A server's announcement dies with it: no need to reach the disk.
    sys::Publish::new(sys::Durability::Atomic)
        .mode(ANNOUNCEMENT_MODE)
        .bytes(&path, &text)?;
    Ok(Registration(path))
}

/// Reads an announcement if it is the caller's own: a regular file owned by the caller
/// (another user's could name any mount). Never blocks or follows a link planted there.
fn read_own_announcement(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != euid() {
        return None;
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text).ok()?;
    Some(text)
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
/// `index`, showing its owners as `owners` says, if the caller announced one, its server
/// still runs and the mount is the caller's. Announcements of dead servers are removed.
pub fn live_mount(entry_dir: &Path, index: &Path, owners: Owners) -> Option<LiveMount> {
    let identity = announcement_key(index, owners).ok()?;
    let entries = std::fs::read_dir(entry_dir.join(REGISTRY_DIR)).ok()?;
    for e in entries.flatten() {
        let Some(pid) = sys::pid_name(&e.file_name()) else {
            continue;
        };
        if !sys::alive(pid) {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let Some(text) = read_own_announcement(&e.path()) else {
            continue;
        };
        let Some(nl) = text.iter().position(|&b| b == b'\n') else {
            continue;
        };
        if text[..nl] != *identity.as_bytes() {
            continue;
        }
        let mountpoint = PathBuf::from(std::ffi::OsStr::from_bytes(&text[nl + 1..]));
        if find_mount(&mountpoint).is_some_and(|m| m.is_imgfs() && m.user_id == Some(euid())) {
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
    /// The index's blobs, in table order.
    pub blobs: &'a [std::path::PathBuf],
    pub mountpoint: &'a Path,
    pub options: &'a ServeOptions,
    pub owners: Owners,
}

/// Starts `imgfs __serve` detached (own process group, no terminal) and waits until it says
/// the mount is ready, or relays why it could not mount.
pub fn spawn_detached(what: &Served) -> Result<(), SpawnError> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().map_err(SpawnError::Exe)?;
    // Absolute paths, and `/` as the working directory: a server that lives on must not
    // keep the caller's directory busy.
    let absolute = |p: &Path| {
        std::fs::canonicalize(p).map_err(|source| SpawnError::Resolve {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut cmd = Command::new(exe);
    cmd.arg("__serve").arg("--index").arg(absolute(what.index)?);
    for blob in what.blobs {
        cmd.arg("--blob").arg(absolute(blob)?);
    }
    cmd.arg("--fsname")
        .arg(&what.options.fsname)
        .arg("--threads")
        .arg(what.options.threads.to_string());
    if let Some(idle) = what.options.idle_exit {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        cmd.arg("--idle-exit-ms").arg(ms.to_string());
    }
    if let Owners::RootAs { uid, gid } = what.owners {
        cmd.arg("--root-as").arg(format!("{uid}:{gid}"));
    }
    let timeout = u64::try_from(what.options.lazy.fetch_timeout.as_millis()).unwrap_or(u64::MAX);
    cmd.arg("--fetch-timeout-ms").arg(timeout.to_string());
    cmd.arg("--prefetch").arg(match what.options.lazy.prefetch {
        crate::image::lazy::Prefetch::None => "none",
        crate::image::lazy::Prefetch::Recorded => "recorded",
        crate::image::lazy::Prefetch::All => "all",
    });
    // A server reading layers lazily logs what it could not fetch beside the image's index.
    let log = what
        .index
        .parent()
        .map(|d| d.join(SERVER_LOG))
        .and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
    let stderr = match log {
        Some(f)
            if what
                .blobs
                .iter()
                .any(|b| b.ends_with(crate::cache::sparse::REMOTE_FILE)) =>
        {
            Stdio::from(f)
        }
        _ => Stdio::null(),
    };
    let mut child = cmd
        .arg(absolute(what.mountpoint)?)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(SpawnError::Start)?;
    let stdout = child.stdout.take().ok_or(SpawnError::NoPipe)?;
    let mut line = String::new();
    io::BufReader::new(stdout).read_line(&mut line).ok();
    if line.trim_end() == READY {
        return Ok(()); // the server lives on; its stdout pipe closes when we exit
    }
    let status = child.wait().map_err(SpawnError::Lost)?;
    let message = line
        .trim_end()
        .strip_prefix("error: ")
        .unwrap_or(line.trim_end());
    if message.is_empty() {
        return Err(SpawnError::Exited(status));
    }
    Err(SpawnError::Server(message.to_string()))
}

/// Parent of the mountpoints of root's shared servers.
pub const SHARED_DIR: &str = "/run/imgfs/shared";
/// Name of the directory of shared servers in a runtime directory.
const SHARED_LEAF: &str = "shared";
/// Mode of the directory of shared servers: its owner's alone.
const SHARED_DIR_MODE: u32 = 0o700;
/// Mode bits that would let another user rename or replace what a directory holds.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Whether `path` is the mountpoint of a shared server (root's or a user's).
pub fn is_shared_mountpoint(path: &Path) -> bool {
    let Some(dir) = path.parent() else {
        return false;
    };
    dir.file_name().is_some_and(|n| n == SHARED_LEAF)
        && dir
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "imgfs" || n.starts_with("imgfs-"))
}

/// Where the caller's shared servers are mounted, created when missing: root's
/// [`SHARED_DIR`]; for another user `$XDG_RUNTIME_DIR/imgfs/shared` when that runtime
/// directory is theirs, else `imgfs-UID/shared` in the temporary directory. Each directory
/// made here must be the caller's own, a real directory and not writable by others, and the
/// last is 0700: no other user reaches a mount in it (nor could they use it: a user's FUSE
/// mount answers its owner only). Anything else is refused rather than repaired.
pub fn shared_dir() -> Result<PathBuf, SharedError> {
    use std::os::unix::fs::MetadataExt;
    let uid = euid();
    if uid == 0 {
        let dir = PathBuf::from(SHARED_DIR);
        private_dir(&dir, uid, true, true)?;
        return Ok(dir);
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .filter(|d| std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.uid() == uid));
    let (mut dir, own) = match runtime {
        Some(d) => (d, "imgfs".to_string()),
        None => (std::env::temp_dir(), format!("imgfs-{uid}")),
    };
    dir.push(own);
    private_dir(&dir, uid, false, false)?;
    dir.push(SHARED_LEAF);
    private_dir(&dir, uid, false, true)?;
    Ok(dir)
}

/// Makes `dir` (with its parents when `parents`) if missing and checks it is the caller's:
/// see [`shared_dir`]. With `last`, its mode becomes [`SHARED_DIR_MODE`].
fn private_dir(dir: &Path, uid: u32, parents: bool, last: bool) -> Result<(), SharedError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let refuse = |reason| SharedError::NotPrivate {
        path: dir.to_path_buf(),
        uid,
        reason,
    };
    match std::fs::DirBuilder::new()
        .recursive(parents)
        .mode(SHARED_DIR_MODE)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(shared_io(dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(shared_io(dir))?;
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link"));
    }
    if !meta.is_dir() {
        return Err(refuse("it is not a directory"));
    }
    if meta.uid() != uid {
        return Err(refuse("another user owns it"));
    }
    if meta.mode() & WRITABLE_BY_OTHERS != 0 {
        return Err(refuse("other users may write to it"));
    }
    if last && meta.mode() & 0o777 != SHARED_DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(SHARED_DIR_MODE))
            .map_err(shared_io(dir))?;
    }
    Ok(())
}

/// A live mount of the image for a sandbox: the caller's one already announced, or a new
/// shared server's, which exits once nothing has used it for `linger`. Serialized per image
/// and user, so sandboxes started together share one server. `owners` is how the sandbox
/// sees the image's owners (see [`Owners`]).
pub fn shared_mount(
    index: &Path,
    blobs: &[std::path::PathBuf],
    fsname: &str,
    linger: Duration,
    owners: Owners,
    lazy: &crate::image::lazy::LazyOptions,
) -> Result<LiveMount, SharedError> {
    let entry = index
        .parent()
        .ok_or_else(|| SharedError::NoEntry(index.to_path_buf()))?;
    let registry = entry.join(REGISTRY_DIR);
    std::fs::create_dir_all(&registry).map_err(shared_io(&registry))?;
    let lock_path = registry.join(shared_lock_name(euid()));
    let lock = std::fs::File::create(&lock_path).map_err(shared_io(&lock_path))?;
    // Released when `lock` is closed.
    sys::lock_exclusive(&lock).map_err(shared_io(&lock_path))?;
    if let Some(live) = live_mount(entry, index, owners) {
        return Ok(live);
    }
    let parent = shared_dir()?;
    // Mountpoints left by killed servers: removing a mounted one fails (EBUSY), and one whose
    // run still lives (`NAME-PID`) may be about to be mounted by another cache's server.
    if let Ok(dirs) = std::fs::read_dir(&parent) {
        for d in dirs.flatten() {
            let name = d.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.rsplit_once('-'))
                .and_then(|(_, pid)| sys::pid_name(std::ffi::OsStr::new(pid)));
            if pid.is_some_and(sys::alive) {
                continue;
            }
            let _ = std::fs::remove_dir(d.path());
        }
    }
    let name = entry.file_name().map_or_else(
        || "image".into(),
        |n| n.to_string_lossy().chars().take(19).collect::<String>(),
    );
    let mountpoint = new_mountpoint(&parent, &name)?;
    let options = ServeOptions {
        fsname: fsname.to_string(),
        threads: default_threads(),
        idle_exit: Some(linger),
        lazy: lazy.clone(),
    };
    let served = Served {
        index,
        blobs,
        mountpoint: &mountpoint,
        options: &options,
        owners,
    };
    if let Err(e) = spawn_detached(&served) {
        let _ = std::fs::remove_dir(&mountpoint);
        return Err(e.into());
    }
    live_mount(entry, index, owners).ok_or(SharedError::NotAnnounced)
}

/// Makes the mountpoint of this run's shared server in `parent`: `NAME-PID`, or when a server
/// killed long ago left that name mounted (its run had this pid), `NAME.N-PID` with the first
/// N free. The pid stays last: the sweep of leftovers above keeps a live run's mountpoint.
fn new_mountpoint(parent: &Path, name: &str) -> Result<PathBuf, SharedError> {
    let pid = std::process::id();
    let mut n = 0;
    loop {
        let mountpoint = match n {
            0 => parent.join(format!("{name}-{pid}")),
            _ => parent.join(format!("{name}.{n}-{pid}")),
        };
        match std::fs::create_dir(&mountpoint) {
            Ok(()) => return Ok(mountpoint),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(shared_io(&mountpoint)(e)),
        }
    }
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
    on_ready: impl FnOnce(),
) -> Result<(), ServeError> {
    // Threads `fs` started before this must have been started with them blocked too.
    block_stop_signals();
    let set = stop_signals();

    let requests = fs.requests();
    let owners = fs.owners();
    let background = spawn(fs, mountpoint, options)?;
    let thread_failed = |source| ServeError::Session {
        path: mountpoint.to_path_buf(),
        source,
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
    let text = std::fs::read_to_string(mountinfo::SELF).ok()?;
    mountinfo::parse(&text)
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == path.as_path())
        .map(MountInfo::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared server's mountpoint never lands on a leftover of a run that had this pid.
    #[test]
    fn a_new_mountpoint_steps_over_a_dead_runs_leftover() {
        let parent = std::env::temp_dir().join(format!("imgfs-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir_all(&parent).unwrap();
        let pid = std::process::id();
        let first = new_mountpoint(&parent, "img").unwrap();
        assert_eq!(first, parent.join(format!("img-{pid}")));
        // `first` is now what a killed server left mounted under this pid.
        let second = new_mountpoint(&parent, "img").unwrap();
        assert_eq!(second, parent.join(format!("img.1-{pid}")));
        assert!(second.is_dir());
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn mountinfo_lines() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.imgfs imgfs:py ro,user_id=1001,group_id=1001\n\
                    37 35 98:0 / /x rw - ext4 /dev/vda rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "fuse.imgfs");
        assert_eq!(m[0].source, "imgfs:py");
        assert_eq!(m[0].user_id, Some(1001));
        assert_eq!(m[1].fstype, "ext4");
        assert_eq!(m[1].user_id, None);
    }

    #[test]
    fn shared_mountpoints() {
        for (path, shared) in [
            ("/run/imgfs/shared/abc-12", true),
            ("/run/user/1001/imgfs/shared/abc-12", true),
            ("/tmp/imgfs-1001/shared/abc-12", true),
            ("/tmp/shared/abc-12", false),
            ("/mnt/image", false),
            ("/", false),
        ] {
            assert_eq!(is_shared_mountpoint(Path::new(path)), shared, "{path}");
        }
    }
}
