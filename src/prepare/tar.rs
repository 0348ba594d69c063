//! A tar file on disk: scanned in place (its headers only), and only the index goes to the
//! cache, keyed by the file's identity (device and inode) and rebuilt when the file changes.
//!
//! Takes the file's path; hands on the [`Ready`] image, whose one blob is the file itself.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::entry::{claim, usable};
use super::{PrepareError, Ready};
use crate::cache::key::EntryKey;
use crate::cache::{self, Cache, Entry};
use crate::index::tree::BlobRef;
use crate::index::{FileInput, build_tree};

/// What identifies a tar file's contents without reading them; a change means a rebuild.
fn tar_identity(meta: &std::fs::Metadata) -> String {
    format!(
        "tar dev={} ino={} size={} mtime={}.{:09} ctime={}.{:09}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

pub(super) fn prepare_tar(path: &Path, cache: &Cache) -> Result<Ready, PrepareError> {
    let io_err = |source| PrepareError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    let path = std::fs::canonicalize(path).map_err(io_err)?;
    let file = File::open(&path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(PrepareError::NotAFile { path });
    }
    let identity = tar_identity(&meta);
    let entry = cache.entry(&EntryKey::TarFile {
        dev: meta.dev(),
        ino: meta.ino(),
    });
    let ready = |built, warnings| Ready {
        entry: entry.clone(),
        index_path: entry.index_path(),
        blobs: vec![path.clone()],
        image_path: None,
        id: path.display().to_string(),
        built,
        warnings,
    };
    let complete = |e: &Entry| {
        e.marker().as_deref() == Some(identity.as_str())
            && usable(&e.index_path(), std::slice::from_ref(&path))
    };
    let Some(lock) = claim(cache, &entry, complete)? else {
        return Ok(ready(false, Vec::new()));
    };
    let mut input = FileInput::new(&file, meta.len());
    let tree = build_tree(&mut input).map_err(|source| PrepareError::Scan {
        path: path.display().to_string(),
        cause: source,
    });
    let result = tree.and_then(|tree| {
        let bytes = tree
            .write_index(&[BlobRef {
                size: meta.len(),
                key: path.as_os_str().as_encoded_bytes().to_vec(),
            }])
            .map_err(|source| PrepareError::Format {
                path: path.display().to_string(),
                cause: source,
            })?;
        entry.write_file(cache::INDEX_FILE, &bytes)?;
        entry.write_file(cache::SOURCE_FILE, path.as_os_str().as_encoded_bytes())?;
        entry.commit(&lock, &identity)?;
        Ok(tree.warnings())
    });
    match result {
        Ok(warnings) => Ok(ready(true, warnings)),
        Err(e) => {
            entry.discard();
            Err(e)
        }
    }
}
