//! The cache: one directory per image, filled once, immutable once complete.
//!
//! Root: `--cache-dir`, else `$IMGFS_CACHE_DIR`, else `$XDG_CACHE_HOME/imgfs`, else
//! `~/.cache/imgfs`. Each image id (or tar file identity) gets `images/<key>/` holding the
//! archive, its index, the image description and a `complete` marker written last, by rename.
//! A directory without the marker is leftovers of an interrupted fill: never used, removed by
//! the next fill. An exclusive lock (`locks/<key>.lock`, flock) keeps two processes from
//! filling the same entry; the second one waits and then finds the entry complete.
//!
//! Images made of layers share them: each layer's uncompressed tar is kept once, under
//! `layers/<diff id>/` ([`Cache::layer`]), with the same protocol (lock, marker written last),
//! and an image's entry holds only its merged index, its config and the list of its layers
//! ([`LAYERS_FILE`]). A layer goes only when no complete image lists it.
//!
//! Entries are keyed by kind and digest ([`key::EntryKey`]): a daemon's image by its id, an
//! image of layers by its config digest, a lazy image or layer apart from a whole one.

pub mod key;
pub mod lazy;
pub mod sparse;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::source::Layer;
use crate::sys::{self, Durability};

pub(crate) const ARCHIVE_FILE: &str = "archive.tar";
pub(crate) const INDEX_FILE: &str = "index";
pub(crate) const IMAGE_FILE: &str = "image.json";
pub(crate) const MARKER_FILE: &str = "complete";
/// Stamp of the index's last full checksum verification.
pub(crate) const VERIFIED_FILE: &str = "index.verified";
/// For an indexed tar file: the path it was indexed from.
pub(crate) const SOURCE_FILE: &str = "source";
/// For an image of layers: its layers' diff ids, bottom first, one per line.
pub(crate) const LAYERS_FILE: &str = "layers";
/// A layer's uncompressed tar, in its own entry.
pub(crate) const LAYER_FILE: &str = "layer.tar";
/// Where image entries live, under the root.
const IMAGES_DIR: &str = "images";
/// Where layer entries live, under the root.
const LAYERS_DIR: &str = "layers";

/// Where registry references are mapped to the entries they last resolved to.
const REFS_DIR: &str = "refs";

/// A reference's file name in [`REFS_DIR`]: its characters made safe, and a hash so that
/// two references made the same by that never share a file.
fn ref_file(reference: &str) -> String {
    let safe: String = reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    format!("{safe}-{:08x}", crc32fast::hash(reference.as_bytes()))
}

/// Layer fill locks are named apart from image ones.
const LAYER_LOCK_PREFIX: &str = "layer-";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("no cache directory: set --cache-dir, IMGFS_CACHE_DIR, XDG_CACHE_HOME or HOME")]
    NoRoot,
    #[error("cache {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        cause: source,
    }
}

/// The cache root.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Uses `explicit` when given, else the environment as described in the module docs.
    pub fn locate(explicit: Option<PathBuf>) -> Result<Cache, CacheError> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = explicit
            .or_else(|| env("IMGFS_CACHE_DIR"))
            .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("imgfs")))
            .or_else(|| env("HOME").map(|p| p.join(".cache/imgfs")))
            .ok_or(CacheError::NoRoot)?;
        Ok(Cache { root })
    }

    /// Removes what interrupted fills left: entry directories without a completion marker
    /// whose fill lock nobody holds. Best effort; called before a new fill.
    pub fn sweep_leftovers(&self) {
        self.sweep(IMAGES_DIR, "");
        self.sweep(LAYERS_DIR, LAYER_LOCK_PREFIX);
    }

    fn sweep(&self, kind: &str, lock_prefix: &str) {
        let Ok(dirs) = fs::read_dir(self.root.join(kind)) else {
            return;
        };
        let _ = fs::create_dir_all(self.root.join("locks"));
        for dir in dirs.flatten() {
            let name = dir.file_name();
            if name.to_string_lossy().starts_with(".removing-") {
                // An entry whose removal was interrupted.
                if mapping_under(&dir.path()).is_empty() {
                    let _ = fs::remove_dir_all(dir.path());
                }
                continue;
            }
            if dir.path().join(MARKER_FILE).exists() {
                continue;
            }
            let name = dir.file_name();
            let lock_path = self
                .root
                .join("locks")
                .join(format!("{lock_prefix}{}.lock", name.to_string_lossy()));
            let Ok(lock) = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
            else {
                continue;
            };
            // Looked at again under the lock: a fill that committed and unlocked since the
            // look above is complete, not a leftover.
            if sys::try_lock_exclusive(&lock).unwrap_or(false)
                && !dir.path().join(MARKER_FILE).exists()
            {
                log::info!(
                    "removing leftovers of an interrupted fill: {}",
                    dir.path().display()
                );
                let _ = fs::remove_dir_all(dir.path());
            }
        }
    }

    /// The image entry for a key ([`key::EntryKey`], or an entry's name); characters other
    /// than `[A-Za-z0-9._-]` become `-` so a key can never name a path outside the cache.
    pub fn entry(&self, key: &(impl fmt::Display + ?Sized)) -> Entry {
        self.item(IMAGES_DIR, "", &key.to_string())
    }

    /// The layer entry for a key: a layer kept whole by its diff id, a lazy one by its blob
    /// digest ([`key::EntryKey`]).
    pub(crate) fn layer(&self, key: &(impl fmt::Display + ?Sized)) -> Entry {
        self.item(LAYERS_DIR, LAYER_LOCK_PREFIX, &key.to_string())
    }

    /// Where the store keeps a layer's uncompressed tar.
    pub(crate) fn layer_path(&self, layer: &Layer) -> PathBuf {
        self.layer(&layer.store_key().0).dir().join(LAYER_FILE)
    }

    /// The complete layer entries, in name order.
    pub(crate) fn layers(&self) -> Vec<Entry> {
        self.complete(LAYERS_DIR)
            .iter()
            .map(|n| self.item(LAYERS_DIR, LAYER_LOCK_PREFIX, n))
            .collect()
    }

    fn item(&self, kind: &str, lock_prefix: &str, key: &str) -> Entry {
        let safe: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        // No leading dot: "." and ".." must not name the images directory or its parent.
        let safe = safe.trim_start_matches('.').to_string();
        let safe = if safe.is_empty() {
            "-".to_string()
        } else {
            safe
        };
        Entry {
            dir: self.root.join(kind).join(&safe),
            lock_path: self
                .root
                .join("locks")
                .join(format!("{lock_prefix}{safe}.lock")),
            written: std::sync::Arc::default(),
        }
    }
}

impl Cache {
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The complete entries, in name order.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        self.complete(IMAGES_DIR)
            .iter()
            .map(|n| self.entry(n))
            .collect()
    }

    /// The names of the complete entries of one kind, sorted.
    fn complete(&self, kind: &str) -> Vec<String> {
        let Ok(dirs) = fs::read_dir(self.root.join(kind)) else {
            return Vec::new();
        };
        let mut names: Vec<_> = dirs
            .flatten()
            .filter(|d| d.path().join(MARKER_FILE).exists())
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    /// Removes every complete layer no complete image lists and nothing uses; returns the
    /// bytes freed. Run after images are removed.
    /// While an image is being filled, nothing is collected: the layers it will list are not
    /// listed by a complete image yet.
    pub fn collect_layers(&self) -> u64 {
        if self.filling() {
            return 0;
        }
        let listed = self.layers_in_use();
        let mut freed = 0;
        for layer in self.layers() {
            let key = layer.marker().unwrap_or_default();
            if listed.contains(&key) {
                continue;
            }
            match layer.remove() {
                Ok(Removal::Removed(bytes)) => freed += bytes,
                Ok(_) => {}
                Err(e) => log::warn!("{e}"),
            }
        }
        freed
    }

    /// Whether some process is filling an image entry now (its fill lock is held).
    fn filling(&self) -> bool {
        let Ok(dirs) = fs::read_dir(self.root.join(IMAGES_DIR)) else {
            return false;
        };
        dirs.flatten()
            .filter(|d| !d.path().join(MARKER_FILE).exists())
            .any(|d| {
                let name = d.file_name().to_string_lossy().into_owned();
                let lock = self.root.join("locks").join(format!("{name}.lock"));
                OpenOptions::new()
                    .write(true)
                    .open(lock)
                    .is_ok_and(|f| !sys::try_lock_exclusive(&f).unwrap_or(true))
            })
    }

    /// Records that `reference` (a registry image) last resolved to the image entry `key`,
    /// so that it can be mounted from the cache while its registry cannot be reached.
    /// Best effort: a cache the caller cannot write to records nothing.
    pub(crate) fn remember_ref(&self, reference: &str, key: &str) {
        let dir = self.root.join(REFS_DIR);
        let path = dir.join(ref_file(reference));
        if fs::read_to_string(&path).is_ok_and(|k| k == key) {
            return;
        }
        let _ = fs::create_dir_all(&dir)
            .and_then(|()| sys::publish(&path, key.as_bytes(), Durability::Atomic));
    }

    /// The image entry key `reference` last resolved to, if recorded.
    pub(crate) fn recall_ref(&self, reference: &str) -> Option<String> {
        fs::read_to_string(self.root.join(REFS_DIR).join(ref_file(reference))).ok()
    }

    /// The layers that complete images list (their store keys).
    pub(crate) fn layers_in_use(&self) -> std::collections::HashSet<String> {
        self.entries()
            .iter()
            .filter_map(|e| fs::read_to_string(e.dir().join(LAYERS_FILE)).ok())
            .flat_map(|l| l.lines().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }
}

/// What became of a request to remove an entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// Gone; this many bytes freed.
    Removed(u64),
    /// These processes use it (a mount's server, a sandbox, an inspection).
    InUse(Vec<u32>),
    /// Another process is filling it right now.
    Filling,
}

/// Processes with a file under `dir` mapped (every user of an image entry maps its index)
/// or open (a server reads layers through open files).
fn mapping_under(dir: &Path) -> Vec<u32> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut prefix = dir.as_os_str().as_encoded_bytes().to_vec();
    prefix.push(b'/');
    let mut pids = Vec::new();
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(maps) = fs::read(p.path().join("maps")) else {
            continue;
        };
        let uses = maps
            .split(|&b| b == b'\n')
            .any(|line| line.windows(prefix.len()).any(|w| w == prefix.as_slice()))
            || fs::read_dir(p.path().join("fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    fs::read_link(fd.path())
                        .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(&prefix))
                })
            });
        if uses {
            pids.push(pid);
        }
    }
    pids
}

/// Bytes a directory's files take on disk (allocated blocks), one level of subdirectories.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(items) = fs::read_dir(dir) else {
        return 0;
    };
    items
        .flatten()
        .filter_map(|i| i.metadata().ok().map(|m| (i, m)))
        .map(|(i, m)| {
            if m.is_dir() {
                disk_usage(&i.path())
            } else {
                m.blocks() * 512
            }
        })
        .sum()
}

/// One image's directory in the cache.
#[derive(Clone, Debug)]
pub struct Entry {
    dir: PathBuf,
    lock_path: PathBuf,
    /// The files [`write_file`](Self::write_file) wrote, made durable together by
    /// [`commit`](Self::commit).
    written: std::sync::Arc<parking_lot::Mutex<Vec<PathBuf>>>,
}

/// Held while an entry is being filled; released on drop (or by the kernel on exit).
pub(crate) struct Lock {
    _file: File,
}

impl Entry {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub(crate) fn archive_path(&self) -> PathBuf {
        self.dir.join(ARCHIVE_FILE)
    }
    pub(crate) fn index_path(&self) -> PathBuf {
        self.dir.join(INDEX_FILE)
    }
    pub(crate) fn image_path(&self) -> PathBuf {
        self.dir.join(IMAGE_FILE)
    }

    /// The marker's contents if the entry is complete.
    pub(crate) fn marker(&self) -> Option<String> {
        fs::read_to_string(self.dir.join(MARKER_FILE)).ok()
    }

    /// The file whose flock is the entry's fill lock, created when missing.
    fn lock_file(&self) -> Result<File, CacheError> {
        let parent = self.lock_path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(io_err(&self.lock_path))
    }

    /// Waits for the fill lock of this entry.
    pub(crate) fn lock(&self) -> Result<Lock, CacheError> {
        let file = self.lock_file()?;
        loop {
            match sys::lock_exclusive(&file) {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&self.lock_path)(e)),
            }
        }
    }

    /// Starts a fill: removes whatever an interrupted fill left and makes an empty directory.
    pub(crate) fn reset(&self, _lock: &Lock) -> Result<(), CacheError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&self.dir)(e)),
        }
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))
    }

    /// Removes the entry (a failed fill), best effort.
    pub(crate) fn discard(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }

    /// Writes a file of the entry atomically (temporary name, then rename); it reaches the
    /// disk by the time the entry is committed.
    pub(crate) fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), CacheError> {
        let path = self.dir.join(name);
        sys::publish(&path, bytes, Durability::Atomic).map_err(io_err(&path))?;
        self.written.lock().push(path);
        Ok(())
    }

    /// The entry's name in the cache (its key, made safe for a file name).
    pub(crate) fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Records a use now (the marker's modification time); best effort, as the cache may be
    /// another user's, readable only.
    pub(crate) fn touch(&self) {
        if let Ok(f) = File::options().write(true).open(self.dir.join(MARKER_FILE)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// When the entry was last used (or filled).
    pub(crate) fn last_used(&self) -> Option<std::time::SystemTime> {
        fs::metadata(self.dir.join(MARKER_FILE))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Bytes the entry takes on disk.
    pub(crate) fn disk_usage(&self) -> u64 {
        disk_usage(&self.dir)
    }

    /// Processes using the entry now.
    pub(crate) fn users(&self) -> Vec<u32> {
        mapping_under(&self.dir)
    }

    /// Removes the entry unless it is in use or being filled. It is first renamed out of the
    /// way under the fill lock, so nothing starts using it meanwhile, and put back if a user
    /// showed up just before.
    pub fn remove(&self) -> Result<Removal, CacheError> {
        let lock = self.lock_file()?;
        if !sys::try_lock_exclusive(&lock).map_err(io_err(&self.lock_path))? {
            return Ok(Removal::Filling);
        }
        let users = self.users();
        if !users.is_empty() {
            return Ok(Removal::InUse(users));
        }
        let size = self.disk_usage();
        let aside =
            self.dir
                .with_file_name(format!(".removing-{}-{}", self.name(), std::process::id()));
        fs::rename(&self.dir, &aside).map_err(io_err(&self.dir))?;
        let users = mapping_under(&aside);
        if !users.is_empty() {
            fs::rename(&aside, &self.dir).map_err(io_err(&self.dir))?;
            return Ok(Removal::InUse(users));
        }
        fs::remove_dir_all(&aside).map_err(io_err(&aside))?;
        Ok(Removal::Removed(size))
    }

    /// Marks the entry complete once the files it wrote are on disk; `contents` lets a source
    /// record what it was built from. The files are synced together, not each as it is
    /// written: the first sync commits the file system's journal with all of them, and a
    /// cold start waits for one commit, not one per file.
    pub(crate) fn commit(&self, _lock: &Lock, contents: &str) -> Result<(), CacheError> {
        for path in std::mem::take(&mut *self.written.lock()) {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&path))?;
        }
        let path = self.dir.join(MARKER_FILE);
        sys::publish(&path, contents.as_bytes(), Durability::Synced).map_err(io_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape() {
        let c = Cache { root: "/c".into() };
        for key in ["../../etc", "sha256:ab/../x", "..", "a\0b"] {
            let e = c.entry(key);
            assert!(e.dir().starts_with("/c/images/"), "{key}: {:?}", e.dir());
            assert_eq!(e.dir().components().count(), 4, "{key}: {:?}", e.dir());
        }
        assert_eq!(c.entry("sha256:ab").dir(), Path::new("/c/images/sha256-ab"));
    }

    /// Fills committed while another thread sweeps leftovers (as the parallel fills of one
    /// image's layers do, each sweeping before it locks) are never removed: a fill that
    /// commits and unlocks between the sweep's look for its marker and the sweep's lock is
    /// complete, not a leftover.
    #[test]
    fn a_sweep_never_removes_a_fill_committed_meanwhile() {
        let root = std::env::temp_dir().join(format!("imgfs-sweep-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let cache = Cache { root: root.clone() };
        const FILLS: usize = 3000;
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    cache.sweep_leftovers();
                }
            });
            for i in 0..FILLS {
                let entry = cache.layer(&format!("k{i}"));
                let lock = entry.lock().unwrap();
                entry.reset(&lock).unwrap();
                entry.write_file("data", b"x").unwrap();
                entry.commit(&lock, "k").unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let lost: Vec<usize> = (0..FILLS)
            .filter(|i| cache.layer(&format!("k{i}")).marker().is_none())
            .collect();
        let _ = fs::remove_dir_all(&root);
        assert!(
            lost.is_empty(),
            "{} of {FILLS} committed fills swept: {lost:?}",
            lost.len()
        );
    }
}
