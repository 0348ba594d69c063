//! The filesystem: a read-only FUSE view of an index and its archive.
//!
//! Takes a [`Ready`](crate::index::Ready) image. Inode number = index record + 1 (the root is
//! record 0, FUSE's inode 1). Lookup is a binary search of the parent's sorted children,
//! readdir a walk of them, and a read a positional read of the archive at the entry's data
//! offset (sparse files assemble their segments and zeros). The image never changes, so the
//! kernel is told to cache everything for as long as it likes: long entry and attribute TTLs,
//! cached misses, no OPEN round trips, readdirplus.
//!
//! Guarantees: no request can panic the server or escape the index — every record access is
//! bounds-checked, and any failure becomes an errno through one mapping (`Failure`), logged at debug.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::cache;
use crate::index::format::{Index, InodeRecord};

/// How long the kernel may trust entries and attributes: the image is immutable, so the only
/// limit is that the kernel stores the TTL in jiffies; a year is safely inside that.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// `st_blksize`: the page size, which is what the kernel reads in anyway.
const BLOCK_SIZE: u32 = 4096;
/// Longest name the index holds (`NAME_MAX`), reported by statfs.
const NAME_MAX: u32 = 255;
/// The id reported for an owner the viewer's user namespace does not map: the kernel turns
/// `(uid_t)-1` into its invalid id, which every namespace shows as its overflow id (65534)
/// and treats as unmapped (no writes to such a file, no copy-up of it) — what a FUSE mount
/// made inside that namespace would give for the same owner.
const UNMAPPED_ID: u32 = u32::MAX;

/// Whose the image's files are, as the filesystem reports them.
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

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Index {
        path: std::path::PathBuf,
        source: crate::index::format::FormatError,
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

/// Why a request failed, turned into an errno in one place.
enum Failure {
    /// No such inode or name.
    Missing,
    /// The request does not apply to this kind of inode.
    Kind(Errno),
    /// A record that does not hold together; the index is damaged.
    Corrupt(&'static str),
    /// Reading the archive failed.
    Io(std::io::Error),
    /// The caller's buffer is too small.
    Range,
}

impl Failure {
    fn errno(self, op: &str, ino: INodeNo) -> Errno {
        let e = match &self {
            Failure::Missing => Errno::ENOENT,
            Failure::Kind(e) => *e,
            Failure::Corrupt(what) => {
                log::warn!("{op} inode {}: damaged index: {what}", ino.0);
                Errno::EIO
            }
            Failure::Io(err) => {
                log::warn!("{op} inode {}: archive read failed: {err}", ino.0);
                Errno::EIO
            }
            Failure::Range => Errno::ERANGE,
        };
        log::debug!("{op} inode {}: {e:?}", ino.0);
        e
    }
}

/// The mounted image.
pub struct ImageFs {
    index: Index<memmap2::Mmap>,
    archive: File,
    owners: Owners,
    /// Requests answered so far, watched by a server that exits when idle.
    requests: Arc<AtomicU64>,
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

fn file_type(r: &InodeRecord) -> FileType {
    match r.file_type() {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn record_of(ino: INodeNo) -> Option<u32> {
    ino.0.checked_sub(1).and_then(|r| u32::try_from(r).ok())
}

impl ImageFs {
    /// Opens the index (its layout validated; its checksum was verified when the image was
    /// prepared, see [`crate::index::prepare`]) and checks that the archive is as long as it
    /// says.
    pub fn open(index_path: &Path, archive_path: &Path) -> Result<ImageFs, FsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FsError::Io { path, source }
        };
        let file = File::open(index_path).map_err(io(index_path))?;
        let map = cache::sys::map(&file).map_err(io(index_path))?;
        let index = Index::unchecked(map).map_err(|source| FsError::Index {
            path: index_path.to_path_buf(),
            source,
        })?;
        let archive = File::open(archive_path).map_err(io(archive_path))?;
        let actual = archive.metadata().map_err(io(archive_path))?.len();
        if actual < index.archive_size() {
            return Err(FsError::Truncated {
                path: archive_path.to_path_buf(),
                actual,
                expected: index.archive_size(),
            });
        }
        Ok(ImageFs {
            index,
            archive,
            owners: Owners::Recorded,
            requests: Arc::default(),
        })
    }

    /// Reports the image's owners as `owners` says (the default: as recorded).
    pub fn with_owners(mut self, owners: Owners) -> ImageFs {
        self.owners = owners;
        self
    }

    /// How the image's owners are reported.
    pub fn owners(&self) -> Owners {
        self.owners
    }

    /// A counter of the requests this filesystem answers, to tell when it is idle.
    pub fn requests(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.requests)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, ino: INodeNo) -> Result<(u32, InodeRecord), Failure> {
        let rec = record_of(ino).ok_or(Failure::Missing)?;
        let r = self.index.inode(rec).ok_or(Failure::Missing)?;
        Ok((rec, r))
    }

    fn attr(&self, rec: u32, r: &InodeRecord) -> FileAttr {
        let mtime = to_time(r.mtime, r.mtime_nsec);
        let rdev = match r.file_type() {
            libc::S_IFCHR | libc::S_IFBLK => {
                libc::makedev((r.data >> 32) as u32, r.data as u32) as u32
            }
            _ => 0,
        };
        FileAttr {
            ino: INodeNo(u64::from(rec) + 1),
            size: r.size,
            blocks: r.blocks,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: file_type(r),
            perm: (r.mode & 0o7777) as u16,
            nlink: r.nlink,
            uid: self.owners.uid(r.uid),
            gid: self.owners.gid(r.gid),
            rdev,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Result<Option<FileAttr>, Failure> {
        let (_, dir) = self.record(parent)?;
        if !dir.is_dir() {
            return Err(Failure::Kind(Errno::ENOTDIR));
        }
        let Some(rec) = self.index.lookup(&dir, name.as_bytes()) else {
            return Ok(None);
        };
        let r = self
            .index
            .inode(rec)
            .ok_or(Failure::Corrupt("dirent names a missing inode"))?;
        Ok(Some(self.attr(rec, &r)))
    }

    fn do_read(&self, ino: INodeNo, offset: u64, size: u32) -> Result<Vec<u8>, Failure> {
        let (_, r) = self.record(ino)?;
        match r.file_type() {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(Failure::Kind(Errno::EISDIR)),
            _ => return Err(Failure::Kind(Errno::EINVAL)),
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
                .ok_or(Failure::Corrupt("data offset overflows"))?;
            self.read_archive(at, &mut buf)?;
        }
        Ok(buf)
    }

    fn read_archive(&self, mut at: u64, mut buf: &mut [u8]) -> Result<(), Failure> {
        while !buf.is_empty() {
            match self.archive.read_at(buf, at) {
                Ok(0) => return Err(Failure::Corrupt("data lies past the end of the archive")),
                Ok(n) => {
                    buf = &mut buf[n..];
                    at += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(e)),
            }
        }
        Ok(())
    }

    /// Fills `buf` (already zeroed) with the segments that overlap [offset, offset+len).
    fn read_sparse(&self, r: &InodeRecord, offset: u64, buf: &mut [u8]) -> Result<(), Failure> {
        let end = offset + buf.len() as u64;
        let mut stored = r.data; // archive offset of the current segment's data
        let segments = self
            .index
            .segments(r)
            .ok_or(Failure::Corrupt("sparse map out of bounds"))?;
        for s in segments {
            let s_end = s
                .offset
                .checked_add(s.len)
                .ok_or(Failure::Corrupt("segment overflows"))?;
            if s_end > offset && s.offset < end {
                let from = s.offset.max(offset);
                let to = s_end.min(end);
                let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
                let src = stored
                    .checked_add(from - s.offset)
                    .ok_or(Failure::Corrupt("segment overflows"))?;
                self.read_archive(src, dst)?;
            }
            if s.offset >= end {
                break;
            }
            stored = stored
                .checked_add(s.len)
                .ok_or(Failure::Corrupt("segment overflows"))?;
        }
        Ok(())
    }

    /// The directory's entries from position `offset`: ".", "..", then its children.
    fn dir_entries(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(u64, u32, &[u8]) -> bool,
    ) -> Result<(), Failure> {
        let (rec, dir) = self.record(ino)?;
        if !dir.is_dir() {
            return Err(Failure::Kind(Errno::ENOTDIR));
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
                break; // the reply buffer is full
            }
        }
        Ok(())
    }

    fn do_getxattr(&self, ino: INodeNo, name: &OsStr, size: u32) -> Result<Vec<u8>, Failure> {
        let (_, r) = self.record(ino)?;
        let value = self
            .index
            .xattrs(&r)
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
            .ok_or(Failure::Kind(Errno::ENODATA))?;
        if size != 0 && (value.len() as u64) > u64::from(size) {
            return Err(Failure::Range);
        }
        Ok(value.to_vec())
    }

    fn do_listxattr(&self, ino: INodeNo, size: u32) -> Result<Vec<u8>, Failure> {
        let (_, r) = self.record(ino)?;
        let mut list = Vec::new();
        for (name, _) in self.index.xattrs(&r) {
            list.extend_from_slice(name);
            list.push(0);
        }
        if size != 0 && (list.len() as u64) > u64::from(size) {
            return Err(Failure::Range);
        }
        Ok(list)
    }
}

/// Most symlinks followed while resolving one path, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: u32 = 40;

fn errno(e: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(e)
}

impl ImageFs {
    /// Resolves `path` inside the image the way the kernel would with the image as root:
    /// absolute symlinks restart at the image root and `..` stops there, so no path leaves
    /// the image. The last component's symlink is followed when `follow` is set.
    pub fn resolve(&self, path: &[u8], follow: bool) -> std::io::Result<u32> {
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

    /// The inode record `resolve` returned.
    pub fn inode(&self, rec: u32) -> Option<InodeRecord> {
        self.index.inode(rec)
    }

    /// Reads a whole regular file of the image, following symlinks.
    pub fn read_file(&self, path: &[u8]) -> std::io::Result<Vec<u8>> {
        let rec = self.resolve(path, true)?;
        let size = self.index.inode(rec).map_or(0, |r| r.size);
        let size = u32::try_from(size).map_err(|_| errno(libc::EFBIG))?;
        self.read_at(rec, 0, size)
    }

    /// Reads up to `size` bytes of the regular file `rec` from `offset`; empty at the end.
    pub fn read_at(&self, rec: u32, offset: u64, size: u32) -> std::io::Result<Vec<u8>> {
        self.do_read(ino_of(rec), offset, size).map_err(io_error)
    }

    /// The attributes of `rec`, as `stat` would show them on a mount.
    pub fn metadata(&self, rec: u32) -> std::io::Result<FileAttr> {
        let (rec, r) = self.record(ino_of(rec)).map_err(io_error)?;
        Ok(self.attr(rec, &r))
    }

    /// The entries of the directory `rec` (without `.` and `..`), sorted by name.
    pub fn children(&self, rec: u32) -> std::io::Result<Vec<(&[u8], u32)>> {
        let (_, dir) = self.record(ino_of(rec)).map_err(io_error)?;
        if !dir.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        Ok((0..)
            .map_while(|i| self.index.child(&dir, i))
            .map(|d| (d.name, d.record))
            .collect())
    }

    /// The target of the symlink `rec`.
    pub fn readlink(&self, rec: u32) -> std::io::Result<&[u8]> {
        let (_, r) = self.record(ino_of(rec)).map_err(io_error)?;
        if r.file_type() != libc::S_IFLNK {
            return Err(errno(libc::EINVAL));
        }
        self.index
            .symlink_target(&r)
            .ok_or_else(|| errno(libc::EIO))
    }

    /// The extended attributes of `rec`: name and value.
    pub fn xattrs(&self, rec: u32) -> std::io::Result<Vec<(&[u8], &[u8])>> {
        let (_, r) = self.record(ino_of(rec)).map_err(io_error)?;
        Ok(self.index.xattrs(&r).collect())
    }

    /// Records in the index (inodes, hard links counted once).
    pub fn inode_count(&self) -> u32 {
        self.index.inode_count()
    }
}

fn ino_of(rec: u32) -> INodeNo {
    INodeNo(u64::from(rec) + 1)
}

fn io_error(f: Failure) -> std::io::Error {
    match f {
        Failure::Missing => errno(libc::ENOENT),
        Failure::Kind(e) => errno(e.code()),
        Failure::Io(e) => e,
        Failure::Corrupt(_) => errno(libc::EIO),
        Failure::Range => errno(libc::ERANGE),
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
        match self.do_lookup(parent, name) {
            Ok(Some(attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Ok(None) => {
                // Inode 0 with a TTL: the kernel caches the miss.
                let mut miss = self.attr(0, &InodeRecord::default());
                miss.ino = INodeNo(0);
                reply.entry(&TTL, &miss, Generation(0));
            }
            Err(f) => reply.error(f.errno("lookup", parent)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.count();
        match self.record(ino) {
            Ok((rec, r)) => reply.attr(&TTL, &self.attr(rec, &r)),
            Err(f) => reply.error(f.errno("getattr", ino)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.count();
        let target = self.record(ino).and_then(|(_, r)| {
            if r.file_type() != libc::S_IFLNK {
                return Err(Failure::Kind(Errno::EINVAL));
            }
            self.index
                .symlink_target(&r)
                .ok_or(Failure::Corrupt("symlink target out of bounds"))
        });
        match target {
            Ok(t) => reply.data(t),
            Err(f) => reply.error(f.errno("readlink", ino)),
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
        match self.do_read(ino, offset, size) {
            Ok(data) => reply.data(&data),
            Err(f) => reply.error(f.errno("read", ino)),
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
        let result = self.dir_entries(ino, offset, |next, rec, name| {
            let kind = self
                .index
                .inode(rec)
                .map_or(FileType::RegularFile, |r| file_type(&r));
            reply.add(
                INodeNo(u64::from(rec) + 1),
                next,
                kind,
                OsStr::from_bytes(name),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(f.errno("readdir", ino)),
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
        let result = self.dir_entries(ino, offset, |next, rec, name| {
            let Some(r) = self.index.inode(rec) else {
                return false;
            };
            let attr = self.attr(rec, &r);
            reply.add(
                attr.ino,
                next,
                OsStr::from_bytes(name),
                &TTL,
                &attr,
                Generation(0),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(f.errno("readdirplus", ino)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self
            .index
            .total_blocks()
            .div_ceil(u64::from(BLOCK_SIZE) / 512);
        reply.statfs(
            blocks,
            0,
            0,
            u64::from(self.index.inode_count()),
            0,
            BLOCK_SIZE,
            NAME_MAX,
            BLOCK_SIZE,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.do_getxattr(ino, name, size) {
            Ok(v) => reply_xattr(reply, size, v),
            Err(f) => reply.error(f.errno("getxattr", ino)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.do_listxattr(ino, size) {
            Ok(v) => reply_xattr(reply, size, v),
            Err(f) => reply.error(f.errno("listxattr", ino)),
        }
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
