//! What every strategy does with the entries it fills: the fill protocol's start
//! ([`claim`]), the judgement of a complete entry ([`usable`]), an image entry's records
//! written and committed ([`write_records`]), and where a layer's blob is read from
//! ([`blob_path`]).
//!
//! Takes the cache's entries and the paths of an index and its blobs; guarantees that an
//! entry is used only when its index validates against blobs at least as long as it says.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::PrepareError;
use crate::cache::key::EntryKey;
use crate::cache::sparse::{REMOTE_FILE, Remote};
use crate::cache::{self, Cache, Entry};
use crate::index::format::Index;
use crate::source::{Image, SourceError};

/// A complete entry whose index validates against blobs at least as long as it says.
/// The checksum is read in full only when the index changed since it was last verified, which
/// a stamp beside it records (`index.verified`: the file's inode, size, mtime and ctime); a
/// cache the caller cannot write to is verified every time.
pub(crate) fn usable(index_path: &Path, blobs: &[PathBuf]) -> bool {
    let check = || -> io::Result<bool> {
        let file = File::open(index_path)?;
        let stamp = verified_stamp(&file.metadata()?);
        let stamp_path = index_path.with_file_name(cache::VERIFIED_FILE);
        let map = crate::sys::map(&file)?;
        let trusted = std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp);
        let index = if trusted {
            Index::unchecked(&map[..])
        } else {
            Index::new(&map[..])
        };
        let Ok(index) = index else {
            return Ok(false);
        };
        if blobs.len() != index.blob_count() as usize {
            return Ok(false);
        }
        for (i, path) in blobs.iter().enumerate() {
            let size = index.blob(i as u32).map_or(u64::MAX, |(size, _)| size);
            if blob_len(path)? < size {
                return Ok(false);
            }
        }
        if !trusted {
            let _ = std::fs::write(&stamp_path, stamp);
        }
        Ok(true)
    };
    check().unwrap_or(false)
}

/// The start of the fill protocol, the same for every kind of entry: `None` when the entry
/// is complete (already, or once another process filled it while this one waited for the
/// lock); else the held fill lock, leftovers swept and the entry emptied.
pub(crate) fn claim(
    cache: &Cache,
    entry: &Entry,
    complete: impl Fn(&Entry) -> bool,
) -> Result<Option<cache::Lock>, PrepareError> {
    if complete(entry) {
        return Ok(None);
    }
    cache.sweep_leftovers();
    let lock = entry.lock()?;
    if complete(entry) {
        return Ok(None);
    }
    entry.reset(&lock)?;
    Ok(Some(lock))
}

/// The length of the blob at `path`: a file's, or for a lazy layer, its tar's as its entry
/// records it.
fn blob_len(path: &Path) -> io::Result<u64> {
    if path.file_name() == Some(std::ffi::OsStr::new(REMOTE_FILE)) {
        let remote: Remote = serde_json::from_slice(&std::fs::read(path)?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        return Ok(remote.uncompressed_size);
    }
    Ok(std::fs::metadata(path)?.len())
}

/// What identifies an index file's current contents, for [`usable`]'s stamp.
fn verified_stamp(m: &std::fs::Metadata) -> String {
    format!(
        "ino={} size={} mtime={}.{:09} ctime={}.{:09}",
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// Where a store key's blob is read from: a lazy layer's description, or a layer's tar.
pub(crate) fn blob_path(cache: &Cache, key: &EntryKey) -> PathBuf {
    let dir = cache.layer(key).dir().to_path_buf();
    if key.is_lazy() {
        dir.join(REMOTE_FILE)
    } else {
        dir.join(cache::LAYER_FILE)
    }
}

/// Writes an image entry's records — its merged index, its config as `docker inspect`
/// shows it, the store keys of its layers — and commits it.
pub(super) fn write_records(
    what: &str,
    img: &Image,
    entry: &Entry,
    lock: &cache::Lock,
    index: &[u8],
    keys: &[EntryKey],
) -> Result<(), PrepareError> {
    let config: serde_json::Value =
        serde_json::from_slice(&img.config).map_err(|source| SourceError::Json {
            what: what.to_string(),
            doc: "image config",
            source,
        })?;
    let inspect = serde_json::json!({
        "Id": img.config_digest,
        "RepoTags": [what],
        "RepoDigests": img.manifest_digest.iter().collect::<Vec<_>>(),
        "Created": config["created"],
        "Architecture": config["architecture"],
        "Os": config["os"],
        "Config": config.get("config").cloned().unwrap_or_else(|| serde_json::json!({})),
    });
    let layers: String = keys.iter().map(|k| format!("{k}\n")).collect();
    entry.write_file(cache::INDEX_FILE, index)?;
    entry.write_file(cache::IMAGE_FILE, inspect.to_string().as_bytes())?;
    entry.write_file(cache::LAYERS_FILE, layers.as_bytes())?;
    entry.commit(lock, &img.config_digest)?;
    Ok(())
}
