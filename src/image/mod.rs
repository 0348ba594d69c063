//! The image reader: the library's view of one prepared image — resolve a path inside the
//! image root, attributes, directory entries, symlink targets, xattrs and reads at an offset
//! — over a memory-mapped index and the blobs that hold the files' bytes (one archive, or
//! one per layer).
//!
//! Takes a [`Ready`](crate::prepare::Ready) image. The FUSE adapter ([`crate::fs`]), the
//! inspection commands and the runner all read images through it. Records are addressed by
//! their index number (the root is record 0). The bytes come through [`Blob`], the seam a
//! blob reader fills: today a local file; a decompressing view or remote ranges fit it too.
//!
//! Guarantees: nothing here can panic on a damaged index or leave the image — every record
//! access is bounds-checked, every failure is a [`ReadError`] that says which errno it is,
//! and [`ImageReader::resolve`] keeps symlinks and `..` inside the image root.

mod guess;
pub mod lazy;
pub(crate) mod promote;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::index::format::{Index, InodeRecord};

/// `st_blksize`: the page size, which is what the kernel reads in anyway.
pub(crate) const BLOCK_SIZE: u32 = 4096;
/// The id reported for an owner the viewer's user namespace does not map: the kernel turns
/// `(uid_t)-1` into its invalid id, which every namespace shows as its overflow id (65534)
/// and treats as unmapped (no writes to such a file, no copy-up of it) — what a FUSE mount
/// made inside that namespace would give for the same owner.
const UNMAPPED_ID: u32 = u32::MAX;
/// The `PATH` docker gives a container whose image sets none: where a run finds its command,
/// and a guess the interpreter of a `#!/usr/bin/env NAME` line.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Most symlinks followed while resolving one path, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: u32 = 40;

/// Where an image's file bytes live: something of a known length that reads at an offset.
pub(crate) trait Blob: Send + Sync {
    /// Its length in bytes.
    fn size(&self) -> std::io::Result<u64>;
    /// Reads into `buf` from `offset`; fewer bytes only at the end, 0 past it.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
    /// A hint, before a read of `now`, that the rest of `file` (the bytes of the file being
    /// read) will likely be read soon: a remote blob may fetch it ahead. Nothing by default.
    fn will_read(&self, _file: std::ops::Range<u64>, _now: std::ops::Range<u64>) {}
}

impl Blob for File {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

/// Whose the image's files are, as the reader reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Owners {
    /// The ids recorded in the image.
    #[default]
    Recorded,
    /// As seen from a user namespace that maps root, and only root, to `uid`/`gid`: image
    /// root is reported as `uid`/`gid`, every other id as unmapped. A mount made outside
    /// that namespace then looks inside it exactly as one made inside it, so a sandbox of
    /// an unprivileged user can use a server that outlives it.
    RootAs { uid: u32, gid: u32 },
}

impl Owners {
    fn uid(self, id: u32) -> u32 {
        match self {
            Owners::Recorded => id,
            Owners::RootAs { uid, .. } if id == 0 => uid,
            Owners::RootAs { .. } => UNMAPPED_ID,
        }
    }

    fn gid(self, id: u32) -> u32 {
        match self {
            Owners::Recorded => id,
            Owners::RootAs { gid, .. } if id == 0 => gid,
            Owners::RootAs { .. } => UNMAPPED_ID,
        }
    }
}

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {cause}")]
    Io {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {cause}")]
    Index {
        path: std::path::PathBuf,
        cause: crate::index::format::FormatError,
    },
    #[error("{path} names {expected} blobs but {actual} were given")]
    BlobCount {
        path: std::path::PathBuf,
        actual: usize,
        expected: u32,
    },
    #[error(
        "{path} is {actual} bytes but its index expects at least {expected}: the archive is truncated"
    )]
    Truncated {
        path: std::path::PathBuf,
        actual: u64,
        expected: u64,
    },
}

/// Why a read of the image failed; [`ReadError::errno`] is the errno it stands for.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// No such record or name.
    #[error("no such entry")]
    Missing,
    /// The request does not apply to this kind of entry (the errno says how).
    #[error("not for this kind of entry (errno {0})")]
    Kind(i32),
    /// A record that does not hold together; the index is damaged.
    #[error("damaged index: {0}")]
    Corrupt(&'static str),
    /// Reading the blob failed.
    #[error("archive read failed: {0}")]
    Io(std::io::Error),
    /// The caller's buffer is too small.
    #[error("the value does not fit the buffer")]
    Range,
}

impl ReadError {
    pub(crate) fn errno(&self) -> i32 {
        match self {
            ReadError::Missing => libc::ENOENT,
            ReadError::Kind(e) => *e,
            ReadError::Corrupt(_) => libc::EIO,
            ReadError::Io(_) => libc::EIO,
            ReadError::Range => libc::ERANGE,
        }
    }
}

impl From<ReadError> for std::io::Error {
    fn from(e: ReadError) -> std::io::Error {
        match e {
            ReadError::Io(e) => e,
            e => std::io::Error::from_raw_os_error(e.errno()),
        }
    }
}

fn errno(e: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(e)
}

/// The kind of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    RegularFile,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    NamedPipe,
    Socket,
}

impl Kind {
    pub(crate) fn of(r: &InodeRecord) -> Kind {
        match r.file_type() {
            libc::S_IFDIR => Kind::Directory,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            libc::S_IFIFO => Kind::NamedPipe,
            libc::S_IFSOCK => Kind::Socket,
            _ => Kind::RegularFile,
        }
    }
}

/// An entry's attributes, as `stat` shows them on a mount of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attr {
    /// The record number (the inode number on a mount is one more).
    pub rec: u32,
    pub size: u64,
    pub blocks: u64,
    pub mtime: SystemTime,
    pub kind: Kind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

fn to_time(secs: i64, nsec: u32) -> SystemTime {
    let nsec = nsec.min(999_999_999);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        // secs.unsigned_abs() seconds before the epoch, then nsec forward.
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsec.into())
    }
}

/// One prepared image, read in place.
pub struct ImageReader {
    index: Index<memmap2::Mmap>,
    /// The index's blob table, opened: blob `i` holds the bytes of files whose record says `i`.
    blobs: Vec<Box<dyn Blob>>,
    owners: Owners,
}

impl ImageReader {
    /// Opens the index (its layout validated; its checksum was verified when the image was
    /// prepared, see [`crate::prepare::prepare_with`]) and the files of its blob table, in table
    /// order, checking that each is as long as the table says.
    pub fn open(index_path: &Path, blob_paths: &[PathBuf]) -> Result<ImageReader, ImageError> {
        // Only a server fetches ahead of reads: a reader for one look fetches what it reads.
        let lazy = lazy::LazyOptions {
            prefetch: lazy::Prefetch::None,
            promote: false,
            ..lazy::LazyOptions::default()
        };
        ImageReader::open_with(index_path, blob_paths, &lazy)
    }

    /// [`open`](Self::open), where a blob path naming a lazy layer's
    /// [`REMOTE_FILE`](crate::cache::sparse::REMOTE_FILE) opens that layer lazily, as `lazy` says.
    pub(crate) fn open_with(
        index_path: &Path,
        blob_paths: &[PathBuf],
        lazy: &lazy::LazyOptions,
    ) -> Result<ImageReader, ImageError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Io {
                path,
                cause: source,
            }
        };
        let file = File::open(index_path).map_err(io(index_path))?;
        let map = crate::sys::map(&file).map_err(io(index_path))?;
        let index = Index::unchecked(map).map_err(|source| ImageError::Index {
            path: index_path.to_path_buf(),
            cause: source,
        })?;
        let mut blobs: Vec<(Box<dyn Blob>, PathBuf)> = Vec::with_capacity(blob_paths.len());
        // The same blobs again, for the guess at what a program's start reads (only when
        // there is one to make): its reads share the served layers' fetches and store.
        let guessing = lazy.program.is_some() && lazy.prefetch != lazy::Prefetch::None;
        let mut guess_blobs: Vec<(Box<dyn Blob>, PathBuf)> = Vec::new();
        let spans = std::sync::Arc::new(lazy::SpanCache::new(lazy::SPAN_CACHE_BYTES));
        // By layer: a lazy image may have layers fetched whole (those a TOC cannot describe).
        let mut lazy_blobs = Vec::new();
        let mut promotable = Vec::new();
        let is_lazy = |p: &PathBuf| {
            p.file_name() == Some(std::ffi::OsStr::new(crate::cache::sparse::REMOTE_FILE))
        };
        let demand = std::sync::Arc::new(lazy::Demand::new());
        let recorder = blob_paths.iter().any(is_lazy).then(|| {
            let dir = index_path.parent().unwrap_or(Path::new("/"));
            std::sync::Arc::new(lazy::Recorder::open(&dir.join(lazy::RECORD_FILE)))
        });
        for (i, path) in blob_paths.iter().enumerate() {
            if is_lazy(path) {
                let mut blob = lazy::open(path, i as u32, &spans, lazy)
                    .map_err(io(path))?
                    .with_demand(demand.clone());
                if let Some(r) = &recorder {
                    blob = blob.with_recorder(r.clone());
                }
                let blob = std::sync::Arc::new(blob);
                lazy_blobs.push(Some(blob.clone()));
                let served = std::sync::Arc::new(promote::Promotable::new(blob));
                promotable.push(served.clone());
                if guessing {
                    guess_blobs.push((Box::new(served.clone()), path.clone()));
                }
                blobs.push((Box::new(served), path.clone()));
                continue;
            }
            let file = File::open(path).map_err(io(path))?;
            if guessing && let Ok(twin) = file.try_clone() {
                guess_blobs.push((Box::new(twin), path.clone()));
            }
            blobs.push((Box::new(file), path.clone()));
            lazy_blobs.push(None);
        }
        let reader = ImageReader::with_blobs(index, index_path, blobs)?;
        if !promotable.is_empty() {
            promote::start(lazy.store.as_ref(), &promotable, lazy.promote);
        }
        if lazy_blobs.iter().any(Option::is_some) {
            let dir = index_path.parent().unwrap_or(Path::new("/"));
            match lazy.prefetch {
                lazy::Prefetch::All => {
                    lazy::prefetch_all(lazy_blobs.into_iter().flatten().collect(), demand)
                }
                lazy::Prefetch::Recorded => {
                    if let Ok(text) = std::fs::read_to_string(dir.join(lazy::PREFETCH_FILE)) {
                        let list = lazy::parse_spans(&text, lazy_blobs.len());
                        lazy::prefetch_recorded(lazy_blobs, list);
                    }
                }
                lazy::Prefetch::None => {}
            }
            if let (Some(program), true) = (&lazy.program, guessing) {
                let twin = crate::sys::map(&file)
                    .ok()
                    .and_then(|map| Index::unchecked(map).ok())
                    .and_then(|index| ImageReader::with_blobs(index, index_path, guess_blobs).ok());
                if let Some(twin) = twin {
                    guess::start(twin, program.as_os_str().as_encoded_bytes().to_vec());
                }
            }
        }
        Ok(reader)
    }

    /// An index already opened, over blob readers of any kind (local files, decompressing
    /// views, remote ranges), each named by a path for messages; checks that each is as long
    /// as the index's blob table says.
    pub(crate) fn with_blobs(
        index: Index<memmap2::Mmap>,
        index_path: &Path,
        blobs: Vec<(Box<dyn Blob>, PathBuf)>,
    ) -> Result<ImageReader, ImageError> {
        if blobs.len() != index.blob_count() as usize {
            return Err(ImageError::BlobCount {
                path: index_path.to_path_buf(),
                actual: blobs.len(),
                expected: index.blob_count(),
            });
        }
        let mut readers = Vec::with_capacity(blobs.len());
        for (i, (blob, path)) in blobs.into_iter().enumerate() {
            let actual = blob.size().map_err(|source| ImageError::Io {
                path: path.clone(),
                cause: source,
            })?;
            let expected = index.blob(i as u32).map_or(u64::MAX, |(size, _)| size);
            if actual < expected {
                return Err(ImageError::Truncated {
                    path,
                    actual,
                    expected,
                });
            }
            readers.push(blob);
        }
        Ok(ImageReader {
            index,
            blobs: readers,
            owners: Owners::Recorded,
        })
    }

    /// Reports the image's owners as `owners` says (the default: as recorded).
    pub(crate) fn with_owners(mut self, owners: Owners) -> ImageReader {
        self.owners = owners;
        self
    }

    /// How the image's owners are reported.
    pub(crate) fn owners(&self) -> Owners {
        self.owners
    }

    /// The index itself, for what only needs its totals.
    pub(crate) fn index(&self) -> &Index<memmap2::Mmap> {
        &self.index
    }

    /// The record `rec`, or [`ReadError::Missing`].
    pub(crate) fn record(&self, rec: u32) -> Result<InodeRecord, ReadError> {
        self.index.inode(rec).ok_or(ReadError::Missing)
    }

    /// The attributes of the record `rec` holding `r`.
    pub(crate) fn attr_of(&self, rec: u32, r: &InodeRecord) -> Attr {
        let rdev = match r.file_type() {
            libc::S_IFCHR | libc::S_IFBLK => {
                libc::makedev((r.data >> 32) as u32, r.data as u32) as u32
            }
            _ => 0,
        };
        Attr {
            rec,
            size: r.size,
            blocks: r.blocks,
            mtime: to_time(r.mtime, r.mtime_nsec),
            kind: Kind::of(r),
            perm: (r.mode & 0o7777) as u16,
            nlink: r.nlink,
            uid: self.owners.uid(r.uid),
            gid: self.owners.gid(r.gid),
            rdev,
            blksize: BLOCK_SIZE,
        }
    }

    /// The attributes of `rec`, as `stat` shows them on a mount.
    pub(crate) fn metadata(&self, rec: u32) -> Result<Attr, ReadError> {
        let r = self.record(rec)?;
        Ok(self.attr_of(rec, &r))
    }

    /// The child `name` of the directory `parent`, with its attributes, if there is one.
    pub(crate) fn lookup(&self, parent: u32, name: &[u8]) -> Result<Option<Attr>, ReadError> {
        let dir = self.record(parent)?;
        if !dir.is_dir() {
            return Err(ReadError::Kind(libc::ENOTDIR));
        }
        let Some(rec) = self.index.lookup(&dir, name) else {
            return Ok(None);
        };
        let r = self
            .index
            .inode(rec)
            .ok_or(ReadError::Corrupt("dirent names a missing inode"))?;
        Ok(Some(self.attr_of(rec, &r)))
    }

    /// Up to `size` bytes of the regular file `rec` from `offset`; empty at the end. A lazy
    /// layer is told the file is being read, and may fetch the rest of it ahead.
    pub(crate) fn read_at(&self, rec: u32, offset: u64, size: u32) -> Result<Vec<u8>, ReadError> {
        self.read_hinted(rec, offset, size, true)
    }

    /// [`read_at`](Self::read_at), telling the file's layer of the read only with `hint`.
    pub(crate) fn read_hinted(
        &self,
        rec: u32,
        offset: u64,
        size: u32,
        hint: bool,
    ) -> Result<Vec<u8>, ReadError> {
        let r = self.record(rec)?;
        match r.file_type() {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(ReadError::Kind(libc::EISDIR)),
            _ => return Err(ReadError::Kind(libc::EINVAL)),
        }
        if offset >= r.size {
            return Ok(Vec::new());
        }
        let len = (r.size - offset).min(u64::from(size)) as usize; // <= size, a u32
        let mut buf = vec![0u8; len];
        if r.is_sparse() {
            self.read_sparse(&r, offset, &mut buf)?;
        } else {
            let at = r
                .data
                .checked_add(offset)
                .ok_or(ReadError::Corrupt("data offset overflows"))?;
            if let (Some(blob), Some(end), true) = (
                self.blobs.get(r.blob as usize),
                r.data.checked_add(r.size),
                hint,
            ) {
                blob.will_read(r.data..end, at..at + len as u64);
            }
            self.read_blob(r.blob, at, &mut buf)?;
        }
        Ok(buf)
    }

    fn read_blob(&self, blob: u32, mut at: u64, mut buf: &mut [u8]) -> Result<(), ReadError> {
        let blob = self
            .blobs
            .get(blob as usize)
            .ok_or(ReadError::Corrupt("a file names a blob the table lacks"))?;
        while !buf.is_empty() {
            match blob.read_at(buf, at) {
                Ok(0) => return Err(ReadError::Corrupt("data lies past the end of the archive")),
                Ok(n) => {
                    buf = &mut buf[n..];
                    at += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        Ok(())
    }

    /// Fills `buf` (already zeroed) with the segments that overlap [offset, offset+len).
    fn read_sparse(&self, r: &InodeRecord, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let end = offset + buf.len() as u64;
        let mut stored = r.data; // archive offset of the current segment's data
        let segments = self
            .index
            .segments(r)
            .ok_or(ReadError::Corrupt("sparse map out of bounds"))?;
        for s in segments {
            let s_end = s
                .offset
                .checked_add(s.len)
                .ok_or(ReadError::Corrupt("segment overflows"))?;
            if s_end > offset && s.offset < end {
                let from = s.offset.max(offset);
                let to = s_end.min(end);
                let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
                let src = stored
                    .checked_add(from - s.offset)
                    .ok_or(ReadError::Corrupt("segment overflows"))?;
                self.read_blob(r.blob, src, dst)?;
            }
            if s.offset >= end {
                break;
            }
            stored = stored
                .checked_add(s.len)
                .ok_or(ReadError::Corrupt("segment overflows"))?;
        }
        Ok(())
    }

    /// The directory's entries from position `offset`: ".", "..", then its children; `add`
    /// gets the next position, the record and the name, and returns true once it is full.
    pub(crate) fn dir_entries(
        &self,
        rec: u32,
        offset: u64,
        mut add: impl FnMut(u64, u32, &[u8]) -> bool,
    ) -> Result<(), ReadError> {
        let dir = self.record(rec)?;
        if !dir.is_dir() {
            return Err(ReadError::Kind(libc::ENOTDIR));
        }
        let mut pos = offset;
        loop {
            let (target, name): (u32, &[u8]) = match pos {
                0 => (rec, b"."),
                1 => (dir.parent, b".."),
                i => match self.index.child(&dir, i - 2) {
                    Some(d) => (d.record, d.name),
                    None => break,
                },
            };
            pos += 1;
            if add(pos, target, name) {
                break; // the caller's buffer is full
            }
        }
        Ok(())
    }

    /// The target of the symlink `rec`.
    pub(crate) fn readlink(&self, rec: u32) -> Result<&[u8], ReadError> {
        let r = self.record(rec)?;
        if r.file_type() != libc::S_IFLNK {
            return Err(ReadError::Kind(libc::EINVAL));
        }
        self.index
            .symlink_target(&r)
            .ok_or(ReadError::Corrupt("symlink target out of bounds"))
    }

    /// The value of the extended attribute `name` of `rec`; [`ReadError::Range`] when it is
    /// longer than a non-zero `size`.
    pub(crate) fn getxattr(&self, rec: u32, name: &[u8], size: u32) -> Result<Vec<u8>, ReadError> {
        let r = self.record(rec)?;
        let value = self
            .index
            .xattrs(&r)
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .ok_or(ReadError::Kind(libc::ENODATA))?;
        if size != 0 && (value.len() as u64) > u64::from(size) {
            return Err(ReadError::Range);
        }
        Ok(value.to_vec())
    }

    /// The names of the extended attributes of `rec`, each ended by NUL, as listxattr(2)
    /// gives them; [`ReadError::Range`] when longer than a non-zero `size`.
    pub(crate) fn listxattr(&self, rec: u32, size: u32) -> Result<Vec<u8>, ReadError> {
        let r = self.record(rec)?;
        let mut list = Vec::new();
        for (name, _) in self.index.xattrs(&r) {
            list.extend_from_slice(name);
            list.push(0);
        }
        if size != 0 && (list.len() as u64) > u64::from(size) {
            return Err(ReadError::Range);
        }
        Ok(list)
    }

    /// Resolves `path` inside the image the way the kernel would with the image as root:
    /// absolute symlinks restart at the image root and `..` stops there, so no path leaves
    /// the image. The last component's symlink is followed when `follow` is set.
    pub(crate) fn resolve(&self, path: &[u8], follow: bool) -> std::io::Result<u32> {
        let mut chain: Vec<u32> = vec![0]; // directories from the root, for `..`
        let mut pending: Vec<Vec<u8>> = path.rsplit(|&b| b == b'/').map(<[u8]>::to_vec).collect();
        let mut links = 0;
        while let Some(comp) = pending.pop() {
            match comp.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if chain.len() > 1 {
                        chain.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let dir_rec = *chain.last().unwrap_or(&0);
            let dir = self.index.inode(dir_rec).ok_or_else(|| errno(libc::EIO))?;
            if !dir.is_dir() {
                return Err(errno(libc::ENOTDIR));
            }
            let rec = self
                .index
                .lookup(&dir, &comp)
                .ok_or_else(|| errno(libc::ENOENT))?;
            let r = self.index.inode(rec).ok_or_else(|| errno(libc::EIO))?;
            let last = pending.iter().all(|c| c.is_empty() || c == b".");
            if r.file_type() == libc::S_IFLNK && (follow || !last) {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(errno(libc::ELOOP));
                }
                let target = self
                    .index
                    .symlink_target(&r)
                    .ok_or_else(|| errno(libc::EIO))?;
                if target.first() == Some(&b'/') {
                    chain.truncate(1);
                }
                pending.extend(target.rsplit(|&b| b == b'/').map(<[u8]>::to_vec));
                continue;
            }
            chain.push(rec);
        }
        Ok(*chain.last().unwrap_or(&0))
    }

    /// Tells the layer of the regular file `rec` that all of it will be read soon: a lazy
    /// layer fetches it ahead (see [`Blob::will_read`]).
    pub(crate) fn will_read(&self, rec: u32) {
        let Ok(r) = self.record(rec) else { return };
        if r.file_type() != libc::S_IFREG || r.is_sparse() {
            return;
        }
        if let (Some(blob), Some(end)) =
            (self.blobs.get(r.blob as usize), r.data.checked_add(r.size))
        {
            blob.will_read(r.data..end, r.data..r.data);
        }
    }

    /// The inode record `resolve` returned.
    pub(crate) fn inode(&self, rec: u32) -> Option<InodeRecord> {
        self.index.inode(rec)
    }

    /// Reads a whole regular file of the image, following symlinks.
    pub fn read_file(&self, path: &[u8]) -> std::io::Result<Vec<u8>> {
        let rec = self.resolve(path, true)?;
        let size = self.index.inode(rec).map_or(0, |r| r.size);
        let size = u32::try_from(size).map_err(|_| errno(libc::EFBIG))?;
        Ok(self.read_at(rec, 0, size)?)
    }

    /// The entries of the directory `rec` (without `.` and `..`), sorted by name.
    pub(crate) fn children(&self, rec: u32) -> std::io::Result<Vec<(&[u8], u32)>> {
        let dir = self.record(rec)?;
        if !dir.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        Ok((0..)
            .map_while(|i| self.index.child(&dir, i))
            .map(|d| (d.name, d.record))
            .collect())
    }

    /// Records in the index (inodes, hard links counted once).
    pub(crate) fn inode_count(&self) -> u32 {
        self.index.inode_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_as_a_namespace_mapping_only_root_shows_them() {
        let caller = Owners::RootAs {
            uid: 1001,
            gid: 1002,
        };
        // (image id, uid shown, gid shown)
        let table = [
            (0, 1001, 1002),
            (1001, UNMAPPED_ID, UNMAPPED_ID), // the caller's own id must not alias root
            (42, UNMAPPED_ID, UNMAPPED_ID),
            (65534, UNMAPPED_ID, UNMAPPED_ID),
        ];
        for (id, uid, gid) in table {
            assert_eq!(
                (caller.uid(id), caller.gid(id)),
                (uid, gid),
                "image id {id}"
            );
            assert_eq!(
                (Owners::Recorded.uid(id), Owners::Recorded.gid(id)),
                (id, id)
            );
        }
    }
}
