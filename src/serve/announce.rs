//! A live mount's announcement in its image's cache entry: its server writes one while it
//! serves, `imgfs run` finds it and binds the mount (with its warm kernel caches) instead of
//! serving the image itself, under a lease that keeps an idle server from retiring meanwhile.
//!
//! Takes the entry directory, the index and how the image's owners are shown; hands on a
//! [`LiveMount`]. A caller only ever takes up an announcement of its own, of a server that
//! still runs, for a mount that is still its imgfs mount of the same index file, showing the
//! owners the same way; announcements of dead servers are removed on the way.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::find_mount;
use crate::fs::Owners;
use crate::sys::{self, euid};

/// Directory of an image's cache entry where its live mounts announce themselves: one file
/// per server, named by its pid, holding the identity of the index it serves and the
/// mountpoint. `imgfs run` uses such a mount, with its warm kernel caches, instead of starting
/// a server of its own.
pub(super) const REGISTRY_DIR: &str = "mounts";
/// Mode of an announcement whatever the umask: others may read it, only its owner rewrite it.
const ANNOUNCEMENT_MODE: u32 = 0o644;

/// A live mount's announcement, withdrawn when dropped.
pub(super) struct Registration(pub(super) PathBuf);

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

pub(super) fn register(
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
    pub(crate) fn lease(&self) -> io::Result<Lease> {
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
