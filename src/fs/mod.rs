//! The filesystem: a thin FUSE adapter over the [image reader](crate::image).
//!
//! Inode number = index record + 1 (the root is record 0, FUSE's inode 1). Every request is
//! answered by the reader; this module only speaks FUSE: it converts attributes, maps every
//! failure to an errno in one place (`reply_error`, logged at debug, a damaged index or a
//! failed archive read at warn), and tells the kernel to cache everything for as long as it
//! likes, since the image never changes: long entry and attribute TTLs, cached misses, no
//! OPEN round trips, readdirplus.
//!
//! Guarantees: no request can panic the server or escape the image (the reader's own).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::image::{Attr, BLOCK_SIZE, ImageReader, Kind, ReadError};
pub(crate) use crate::image::{ImageError as FsError, Owners};
use crate::sys::trace;

/// How long the kernel may trust entries and attributes: the image is immutable, so the only
/// limit is that the kernel stores the TTL in jiffies; a year is safely inside that.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest name the index holds (`NAME_MAX`), reported by statfs.
const NAME_MAX: u32 = 255;

/// The mounted image.
pub struct ImageFs {
    image: ImageReader,
    /// Requests answered so far, watched by a server that exits when idle.
    requests: Arc<AtomicU64>,
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::RegularFile => FileType::RegularFile,
        Kind::Directory => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::NamedPipe => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: ino_of(a.rec),
        size: a.size,
        blocks: a.blocks,
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn ino_of(rec: u32) -> INodeNo {
    INodeNo(u64::from(rec) + 1)
}

/// The record of inode `ino`; inode 0 has none.
fn record_of(ino: INodeNo) -> Result<u32, ReadError> {
    ino.0
        .checked_sub(1)
        .and_then(|r| u32::try_from(r).ok())
        .ok_or(ReadError::Missing)
}

/// The errno for a failed request, and why, in the log.
fn errno(e: ReadError, op: &str, ino: INodeNo) -> Errno {
    match &e {
        ReadError::Corrupt(_) | ReadError::Io(_) => log::warn!("{op} inode {}: {e}", ino.0),
        _ => {}
    }
    let n = Errno::from_i32(e.errno());
    log::debug!("{op} inode {}: {n:?}", ino.0);
    n
}

impl ImageFs {
    /// Opens the image to serve (see [`ImageReader::open`]).
    pub(crate) fn open(
        index_path: &Path,
        blobs: &[std::path::PathBuf],
    ) -> Result<ImageFs, FsError> {
        Ok(ImageFs::new(ImageReader::open(index_path, blobs)?))
    }

    /// [`open`](Self::open), with lazily read layers behaving as `lazy` says.
    pub fn open_with(
        index_path: &Path,
        blobs: &[std::path::PathBuf],
        lazy: &crate::image::lazy::LazyOptions,
    ) -> Result<ImageFs, FsError> {
        Ok(ImageFs::new(ImageReader::open_with(
            index_path, blobs, lazy,
        )?))
    }

    pub(crate) fn new(image: ImageReader) -> ImageFs {
        ImageFs {
            image,
            requests: Arc::default(),
        }
    }

    /// Reports the image's owners as `owners` says (the default: as recorded).
    pub fn with_owners(self, owners: Owners) -> ImageFs {
        ImageFs {
            image: self.image.with_owners(owners),
            ..self
        }
    }

    /// How the image's owners are reported.
    pub(crate) fn owners(&self) -> Owners {
        self.image.owners()
    }

    /// A counter of the requests this filesystem answers, to tell when it is idle.
    pub(crate) fn requests(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.requests)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Answers an xattr request: the size when asked for it, else the bytes.
fn reply_xattr(reply: ReplyXattr, size: u32, bytes: Vec<u8>) {
    if size == 0 {
        reply.size(bytes.len() as u32);
    } else {
        reply.data(&bytes);
    }
}

/// What a lookup that found nothing answers: inode 0 with a TTL, so the kernel caches the miss.
fn miss() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_NO_OPEN_SUPPORT
            | InitFlags::FUSE_NO_OPENDIR_SUPPORT
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_MAX_PAGES;
        let _ = config.add_capabilities(wanted & config.capabilities());
        // Take the largest readahead the kernel offers; the value it rejects tells the max.
        if let Err(max) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(max);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.count();
        let found = record_of(parent).and_then(|p| self.image.lookup(p, name.as_bytes()));
        match found {
            Ok(Some(attr)) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
            Ok(None) => reply.entry(&TTL, &miss(), Generation(0)),
            Err(e) => reply.error(errno(e, "lookup", parent)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.count();
        match record_of(ino).and_then(|rec| self.image.metadata(rec)) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(e, "getattr", ino)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.count();
        match record_of(ino).and_then(|rec| self.image.readlink(rec)) {
            Ok(t) => reply.data(t),
            Err(e) => reply.error(errno(e, "readlink", ino)),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS turns OPEN off for the whole mount (FUSE_NO_OPEN_SUPPORT): the kernel then
        // opens without asking and keeps the page cache across opens.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        self.count();
        let start = trace::now();
        match record_of(ino).and_then(|rec| self.image.read_at(rec, offset, size)) {
            Ok(data) => {
                reply.data(&data);
                if trace::on() {
                    let fields = format!(
                        "\"ino\":{},\"offset\":{offset},\"bytes\":{}",
                        ino.0,
                        data.len()
                    );
                    trace::event("read", start, &fields);
                }
            }
            Err(e) => reply.error(errno(e, "read", ino)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.count();
        let result = record_of(ino).and_then(|rec| {
            self.image.dir_entries(rec, offset, |next, rec, name| {
                let kind = self
                    .image
                    .inode(rec)
                    .map_or(FileType::RegularFile, |r| file_type(Kind::of(&r)));
                reply.add(ino_of(rec), next, kind, OsStr::from_bytes(name))
            })
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e, "readdir", ino)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.count();
        let result = record_of(ino).and_then(|rec| {
            self.image.dir_entries(rec, offset, |next, rec, name| {
                let Some(r) = self.image.inode(rec) else {
                    return false;
                };
                let attr = file_attr(&self.image.attr_of(rec, &r));
                reply.add(
                    attr.ino,
                    next,
                    OsStr::from_bytes(name),
                    &TTL,
                    &attr,
                    Generation(0),
                )
            })
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e, "readdirplus", ino)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let index = self.image.index();
        let blocks = index.total_blocks().div_ceil(u64::from(BLOCK_SIZE) / 512);
        reply.statfs(
            blocks,
            0,
            0,
            u64::from(index.inode_count()),
            0,
            BLOCK_SIZE,
            NAME_MAX,
            BLOCK_SIZE,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match record_of(ino).and_then(|rec| self.image.getxattr(rec, name.as_bytes(), size)) {
            Ok(v) => reply_xattr(reply, size, v),
            Err(e) => reply.error(errno(e, "getxattr", ino)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match record_of(ino).and_then(|rec| self.image.listxattr(rec, size)) {
            Ok(v) => reply_xattr(reply, size, v),
            Err(e) => reply.error(errno(e, "listxattr", ino)),
        }
    }
}
