//! Shared servers for `imgfs run`: one per image and user, started when a sandbox needs one
//! and gone once nothing has used it for `--linger`. Root's are mounted under
//! [`SHARED_DIR`], another user's in a private directory of their own ([`shared_dir`]),
//! showing the image's owners as that user's sandboxes expect ([`Owners::RootAs`]).
//!
//! Takes the index, its blobs and how the owners are shown; hands on a [`LiveMount`].
//! Starting one is serialized per image and user, so sandboxes started together share one
//! server; a directory that is not the caller's own is refused rather than repaired.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::announce::{LiveMount, REGISTRY_DIR, live_mount};
use super::detached::{Served, SpawnError, spawn_detached};
use super::{ServeOptions, default_threads};
use crate::fs::Owners;
use crate::sys::{self, euid};

/// Why no shared server could be found or started.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
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
        cause: source,
    }
}

/// Lock file in [`REGISTRY_DIR`] taken while root's shared server is being started; another
/// user's is `.shared-UID.lock`, so that users of one cache never wait on each other.
const SHARED_LOCK: &str = ".shared.lock";

fn shared_lock_name(uid: u32) -> String {
    if uid == 0 {
        SHARED_LOCK.to_string()
    } else {
        format!(".shared-{uid}.lock")
    }
}

/// Parent of the mountpoints of root's shared servers.
pub const SHARED_DIR: &str = "/run/imgfs/shared";
/// Where root's runtime directories are ([`runtime_dir`]); [`SHARED_DIR`] is one of them.
const ROOT_RUNTIME_DIR: &str = "/run/imgfs";
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
    runtime_dir(SHARED_LEAF)
}

/// The caller's directory `leaf` for what lives only while the machine runs: root's under
/// `/run/imgfs`, another user's as for [`shared_dir`] (which is `runtime_dir("shared")`),
/// made and checked the same way.
pub(crate) fn runtime_dir(leaf: &str) -> Result<PathBuf, SharedError> {
    use std::os::unix::fs::MetadataExt;
    let uid = euid();
    if uid == 0 {
        let dir = Path::new(ROOT_RUNTIME_DIR).join(leaf);
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
    dir.push(leaf);
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
    // run still lives (`NAME-PID`) may be about to be mounted by another cache's server. A
    // mount nothing serves any more (its keeper died with its server) is detached first.
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
            let path = d.path();
            if super::mount_at(&path).is_some_and(|m| m.is_imgfs() && super::is_dead(&m)) {
                log::info!("clearing a dead shared mount at {}", path.display());
                if let Err(e) = super::unmount(&path, true) {
                    log::warn!("{e}");
                }
            }
            let _ = std::fs::remove_dir(&path);
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
