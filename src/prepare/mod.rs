//! Getting an image ready to serve — archive in the cache, index beside it — from a
//! source, with the cache's fill protocol.
//!
//! For a Docker image the export stream is written to the cache and scanned in the same pass
//! ([`TeeInput`]), so indexing costs no second read. A tar file on disk is scanned in place
//! (its headers only) and only the index goes to the cache, keyed by the file's identity and
//! rebuilt when the file changes. A complete entry is reused as long as its index validates
//! and the archive is as long as the index says; anything else is rebuilt.
//!
//! An image of layers (`layered.rs`) gets each missing layer decompressed into the store while
//! it is scanned, layers in parallel, and an index merged from the layers' entries.
//!
//! Hands on [`Ready`]: the paths the image reader serves from.

pub mod artifact;
mod layered;
pub mod lazy;
mod seeking;
mod toc;

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cache::{self, Cache, CacheError, Entry};
use crate::index::format::{FormatError, Index};
use crate::index::scan::{ScanError, TeeInput};
use crate::index::tree::BlobRef;
use crate::index::{FileInput, build_tree, build_tree_with};
use crate::source::ImageRef;
use crate::source::docker::{Docker, DockerError};

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error("{what}: {source}")]
    Layer { what: String, source: ScanError },
    #[error("{what}: {source}")]
    LayerIo { what: String, source: io::Error },
    #[error("{path}: {source}")]
    Scan { path: String, source: ScanError },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("cannot write the index for {path}: {source}")]
    Format { path: String, source: FormatError },
}

/// An image ready to be served.
#[derive(Clone, Debug)]
pub struct Ready {
    pub index_path: PathBuf,
    /// The files holding the index's blobs, in its table order.
    pub blobs: Vec<PathBuf>,
    /// The image description from the daemon, when the source has one.
    pub image_path: Option<PathBuf>,
    /// The image id, or the tar file's path.
    pub id: String,
    /// True when this call built the entry (a cold mount).
    pub built: bool,
    /// What the build noticed about the archive (dropped or rewritten entries).
    pub warnings: Vec<String>,
}

/// What a cold start has done so far, for a progress line.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Bytes of the export written to the cache.
    pub bytes: u64,
    /// Archive members scanned.
    pub entries: u64,
    pub elapsed: Duration,
    /// For an image of layers: how many are in the store, and how many it has (else 0).
    pub layers_done: u32,
    pub layers_total: u32,
}

/// What [`prepare_with`] reports while it works.
pub enum Event<'a> {
    /// A line of the daemon's pull progress.
    Pulling(&'a str),
    /// The export and its indexing, about every tenth of a second.
    Exporting(Progress),
    /// The export is complete and indexed.
    Exported(Progress),
}

/// How [`prepare_with`] goes about it.
#[derive(Default)]
pub struct Options<'a> {
    /// Ask the daemon to pull an image it does not have.
    pub pull: bool,
    /// The platform to pick from a multi-platform image (the host's when `None`).
    pub platform: Option<crate::source::Platform>,
    /// Registries: accept any certificate, and plain HTTP (`--tls-verify=false`).
    pub insecure: bool,
    /// Registries: take credentials from this file only (`--authfile`).
    pub auth_file: Option<PathBuf>,
    /// Told of progress; nothing is reported without it.
    pub report: Option<&'a mut dyn FnMut(Event)>,
}

/// Resolves `image` and makes sure its cache entry is complete.
pub fn prepare(image: &ImageRef, cache: &Cache) -> Result<Ready, PrepareError> {
    prepare_with(image, cache, Options::default())
}

/// [`prepare`], pulling a missing image when asked to and reporting progress.
pub fn prepare_with(
    image: &ImageRef,
    cache: &Cache,
    options: Options,
) -> Result<Ready, PrepareError> {
    let ready = match image {
        ImageRef::Docker(reference) => prepare_docker(reference, cache, options),
        ImageRef::TarFile(path) => prepare_tar(path, cache),
        layered => layered::prepare(layered, cache, options),
    }?;
    // For `imgfs images` and `imgfs prune --older-than`.
    if let Some(name) = ready.index_path.parent().and_then(Path::file_name) {
        cache.entry(&name.to_string_lossy()).touch();
    }
    Ok(ready)
}

/// A complete entry whose index validates against blobs at least as long as it says.
/// The checksum is read in full only when the index changed since it was last verified, which
/// a stamp beside it records (`index.verified`: the file's inode, size, mtime and ctime); a
/// cache the caller cannot write to is verified every time.
pub(crate) fn usable(index_path: &Path, blobs: &[PathBuf]) -> bool {
    let check = || -> io::Result<bool> {
        let file = File::open(index_path)?;
        let stamp = verified_stamp(&file.metadata()?);
        let stamp_path = index_path.with_file_name(cache::VERIFIED_FILE);
        let map = cache::sys::map(&file)?;
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
    use crate::cache::sparse::{REMOTE_FILE, Remote};
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

/// The cache key of a reference that is a full image id (`sha256:` and 64 hex digits):
/// an id names immutable content, so a complete entry needs no daemon at all.
fn full_image_id(reference: &str) -> Option<&str> {
    let hex = reference.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(reference)
}

/// Rate-limits progress reports; shared by the archive writer and the scanner.
struct Reporter<'a> {
    report: Option<&'a mut dyn FnMut(Event)>,
    progress: Progress,
    start: Instant,
    last: Instant,
}

/// Time between two progress reports.
const REPORT_EVERY: Duration = Duration::from_millis(100);

impl Reporter<'_> {
    fn tick(&mut self) {
        if self.report.is_some() && self.last.elapsed() >= REPORT_EVERY {
            self.last = Instant::now();
            self.progress.elapsed = self.start.elapsed();
            if let Some(r) = self.report.as_mut() {
                r(Event::Exporting(self.progress));
            }
        }
    }

    fn finish(&mut self) {
        self.progress.elapsed = self.start.elapsed();
        let p = self.progress;
        if let Some(r) = self.report.as_mut() {
            r(Event::Exported(p));
        }
    }
}

fn prepare_docker(reference: &str, cache: &Cache, options: Options) -> Result<Ready, PrepareError> {
    let Options {
        pull, mut report, ..
    } = options;
    if let Some(id) = full_image_id(reference) {
        let entry = cache.entry(id);
        if entry.marker().is_some() && usable(&entry.index_path(), &[entry.archive_path()]) {
            return Ok(Ready {
                index_path: entry.index_path(),
                blobs: vec![entry.archive_path()],
                image_path: Some(entry.image_path()),
                id: id.to_string(),
                built: false,
                warnings: Vec::new(),
            });
        }
    }
    let mut docker = Docker::connect()?;
    let image = match docker.resolve(reference) {
        Err(DockerError::NotFound(_)) if pull => {
            docker.pull(reference, &mut |line| {
                if let Some(r) = report.as_mut() {
                    r(Event::Pulling(line));
                }
            })?;
            docker.resolve(reference)?
        }
        resolved => resolved?,
    };
    let entry = cache.entry(&image.id);
    let ready = |built, warnings| Ready {
        index_path: entry.index_path(),
        blobs: vec![entry.archive_path()],
        image_path: Some(entry.image_path()),
        id: image.id.clone(),
        built,
        warnings,
    };
    let complete = |e: &Entry| e.marker().is_some() && usable(&e.index_path(), &[e.archive_path()]);
    let Some(lock) = claim(cache, &entry, complete)? else {
        return Ok(ready(false, Vec::new()));
    };
    let archive_path = entry.archive_path();
    let file = File::create(&archive_path).map_err(|source| PrepareError::Io {
        path: archive_path.clone(),
        source,
    })?;
    let leftovers = entry.dir().to_path_buf();
    let now = Instant::now();
    let reporter = RefCell::new(Reporter {
        report,
        progress: Progress {
            bytes: 0,
            entries: 0,
            elapsed: Duration::ZERO,
            layers_done: 0,
            layers_total: 0,
        },
        start: now,
        last: now,
    });
    let built = docker.export(
        &image,
        move || {
            let _ = std::fs::remove_dir_all(leftovers);
        },
        |stream| {
            let mut input = TeeInput::new(
                stream,
                CacheWriter {
                    file,
                    path: &archive_path,
                    reporter: &reporter,
                },
            );
            let tree = build_tree_with(&mut input, &mut || {
                let mut r = reporter.borrow_mut();
                r.progress.entries += 1;
                r.tick();
            });
            let (_, total) = input.finish()?;
            Ok(tree.map(|t| (t, total)))
        },
    );
    let describe = || format!("export of image '{reference}'");
    let (tree, total) = match built {
        Ok(Ok(Ok(done))) => done,
        Ok(Ok(Err(source))) => {
            entry.discard();
            return Err(PrepareError::Scan {
                path: describe(),
                source,
            });
        }
        Ok(Err(source)) => {
            entry.discard();
            return Err(PrepareError::Scan {
                path: describe(),
                source: ScanError::Io { offset: 0, source },
            });
        }
        Err(e) => {
            entry.discard();
            return Err(e.into());
        }
    };
    let result = (|| {
        let bytes = tree
            .write_index(&[BlobRef {
                size: total,
                key: cache::ARCHIVE_FILE.as_bytes().to_vec(),
            }])
            .map_err(|source| PrepareError::Format {
                path: describe(),
                source,
            })?;
        entry.write_file(cache::INDEX_FILE, &bytes)?;
        entry.write_file(cache::IMAGE_FILE, &image.inspect_json)?;
        entry.commit(&lock, &image.id)?;
        Ok(())
    })();
    reporter.borrow_mut().finish();
    if let Err(e) = result {
        entry.discard();
        return Err(e);
    }
    Ok(ready(true, tree.warnings()))
}

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

fn prepare_tar(path: &Path, cache: &Cache) -> Result<Ready, PrepareError> {
    let io_err = |source| PrepareError::Io {
        path: path.to_path_buf(),
        source,
    };
    let path = std::fs::canonicalize(path).map_err(io_err)?;
    let file = File::open(&path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(PrepareError::NotAFile { path });
    }
    let identity = tar_identity(&meta);
    let entry = cache.entry(&format!("tar-{:x}-{:x}", meta.dev(), meta.ino()));
    let ready = |built, warnings| Ready {
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
        source,
    });
    let result = tree.and_then(|tree| {
        let bytes = tree
            .write_index(&[BlobRef {
                size: meta.len(),
                key: path.as_os_str().as_encoded_bytes().to_vec(),
            }])
            .map_err(|source| PrepareError::Format {
                path: path.display().to_string(),
                source,
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
/// The cache's archive file, naming itself in write errors (a full disk says where), and
/// counting what it writes for the progress line.
struct CacheWriter<'a, 'r> {
    file: File,
    path: &'a Path,
    reporter: &'a RefCell<Reporter<'r>>,
}

impl io::Write for CacheWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot write {}: {e}", self.path.display()),
            )
        })?;
        let mut r = self.reporter.borrow_mut();
        r.progress.bytes += n as u64;
        r.tick();
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
#[cfg(test)]
mod tests {
    #[test]
    fn full_image_ids() {
        let id = format!("sha256:{}", "ab01".repeat(16));
        assert_eq!(super::full_image_id(&id), Some(id.as_str()));
        for not in ["python:3.12", "sha256:abc", &id.to_uppercase(), &id[7..]] {
            assert_eq!(super::full_image_id(not), None, "{not}");
        }
    }
}
