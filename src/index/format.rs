//! The on-disk index format, version 4. The field docs below are the specification.
//!
//! All integers are little-endian. The file is seven sections, back to back:
//!
//! | section  | size                    | contents                                        |
//! |----------|-------------------------|-------------------------------------------------|
//! | header   | [`HEADER_LEN`] bytes    | magic, version, counts, section lengths, CRC-32  |
//! | inodes   | count × [`INODE_LEN`]   | one record per inode; record 0 is the root      |
//! | dirents  | count × [`DIRENT_LEN`]  | each directory's children, contiguous, sorted   |
//! | owners   | count × [`OWNER_LEN`]   | the distinct (uid, gid) pairs                   |
//! | blobs    | count × [`BLOB_LEN`]    | the blobs holding the files' bytes (the table)  |
//! | names    | `names_len` bytes       | directory entry names, raw bytes, in dirent order |
//! | extra    | `extra_len` bytes       | symlink targets, sparse maps, xattrs, blob keys |
//!
//! Header: `0` magic `b"IMGFSIDX"`, `8` version u32, `12` header length u32, `16` inode count
//! u64, `24` dirent count u64, `32` names length u64, `40` extra length u64, `48` blob count
//! u64, `56` total blocks u64 (sum of the inodes' 512-byte blocks, for statfs), `64` owner
//! count u64, `72`..`124` zero, `124` CRC-32 (IEEE) of the whole file with this field taken
//! as zero.
//!
//! Blob record ([`BLOB_LEN`] = 16 bytes): `0` size u64 (the blob must be at least this long:
//! a truncated one is refused), `8` key offset u32 and `12` key length u32 (into extra). The
//! key names the blob to whoever opens the index: an uncompressed layer's digest
//! (`sha256:…`), or what a single-archive image was built from. A flat archive is one blob;
//! an image of layers has one blob per layer, bottom first.
//!
//! Inode record ([`INODE_LEN`] = 48 bytes): `0` mode u16 (type and permission bits, as
//! `st_mode`), `2` owner u16 (index into owners), `4` nlink u32, `8` size u64, `16` mtime i64
//! seconds, `24` mtime nanoseconds (bits 0–29) and the sparse flag (bit 31) u32, `28` xattrs
//! u32 (extra offset + 1, or 0 for none), `32` data u64, `40` blob u32 (index into the blob
//! table; zero for anything but a regular file), `44` zero u32. By type:
//! regular file — size = its size, data = offset of its bytes in its blob; with the sparse
//! flag, data = extra offset of (blob offset u64, map offset u64, segment count u32) and the
//! map is that many segments of (offset u64, length u64) in extra. Directory — size = parent
//! record (low 32 bits) and child count (high 32 bits), data = first dirent index; its
//! `st_size` is [`DIR_SIZE`]. Symlink — size = target length, data = extra offset of the
//! target. Device — data = major << 32 | minor. `st_blocks` is not stored: it is the size in
//! 512-byte units (for a sparse file, of its segments), [`DIR_SIZE`] for a directory, zero
//! otherwise.
//!
//! Dirent ([`DIRENT_LEN`] = 8 bytes): `0` inode record u32, `4` name offset u32 (into names).
//! A name ends where the next dirent's begins (the last one at the end of names).
//!
//! Owner ([`OWNER_LEN`] = 8 bytes): `0` uid u32, `4` gid u32.
//!
//! Xattrs: a length u32 (of what follows), then a run of (name length u32, value length u32,
//! name, value).
//!
//! [`Index::new`] checks the magic, version, layout and checksum once ([`Index::unchecked`]
//! all but the checksum, for an index verified since it last changed); after that every
//! accessor is bounds-checked and returns `None` rather than panic on hostile bytes.

use std::ops::Range;

use super::le::{PutLe, get_u32, set_u32, u16_at, u32_at, u64_at};
use super::scan::{Kind, Segment};

pub const MAGIC: &[u8; 8] = b"IMGFSIDX";
/// Bumped on any change to the layout; an index of another version is rebuilt.
pub const VERSION: u32 = 4;
pub const HEADER_LEN: usize = 128;
pub(crate) const INODE_LEN: usize = 48;
pub(crate) const DIRENT_LEN: usize = 8;
pub(crate) const OWNER_LEN: usize = 8;
pub(crate) const BLOB_LEN: usize = 16;
/// Most blobs one index may name: far above the 127 layers an image can have.
pub(crate) const MAX_BLOBS: u64 = 4096;
const CRC_AT: usize = 124;
/// Bit of the nanoseconds field that marks a sparse file (nanoseconds need 30 bits).
const SPARSE_FLAG: u32 = 1 << 31;
/// Length of a sparse file's (blob offset, map offset, segment count) in extra.
const SPARSE_HEADER_LEN: u64 = 20;
/// `st_size` reported for directories, as on most disk filesystems.
pub(crate) const DIR_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not an imgfs index (bad magic)")]
    Magic,
    #[error("index version {0} is not {VERSION}")]
    Version(u32),
    #[error("index is {0}")]
    Layout(&'static str),
    #[error("index checksum does not match: the file is corrupt")]
    Checksum,
    #[error("too many {0} for the index format")]
    TooLarge(&'static str),
}

/// One inode as the reader presents it (the stored record is more compact: owners are
/// shared, blocks derived, the parent kept for directories only); see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeRecord {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub parent: u32,
    pub data: u64,
    /// The blob (its number in the table) that holds a regular file's bytes.
    pub blob: u32,
    pub extra_off: u64,
    pub extra_len: u32,
    pub xattr_len: u32,
    pub xattr_off: u64,
    pub blocks: u64,
}

impl InodeRecord {
    pub(crate) fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }
    pub(crate) fn is_sparse(&self) -> bool {
        self.file_type() == libc::S_IFREG && self.extra_len > 0
    }
}

pub(crate) fn type_bits(kind: Kind) -> u32 {
    match kind {
        Kind::File | Kind::HardLink => libc::S_IFREG,
        Kind::Directory => libc::S_IFDIR,
        Kind::Symlink => libc::S_IFLNK,
        Kind::CharDevice => libc::S_IFCHR,
        Kind::BlockDevice => libc::S_IFBLK,
        Kind::Fifo => libc::S_IFIFO,
    }
}

/// Accumulates the sections; [`Writer::finish`] returns the finished file.
#[derive(Default)]
pub(crate) struct Writer {
    total_blocks: u64,
    inodes: Vec<u8>,
    dirents: Vec<u8>,
    owners: Vec<(u32, u32)>,
    owner_index: std::collections::HashMap<(u32, u32), u16>,
    names: Vec<u8>,
    extra: Vec<u8>,
    blobs: Vec<(u64, u32, u32)>,
}

fn fits_u32(v: u64, what: &'static str) -> Result<u32, FormatError> {
    u32::try_from(v).map_err(|_| FormatError::TooLarge(what))
}

impl Writer {
    pub(crate) fn push_inode(&mut self, r: &InodeRecord) -> Result<(), FormatError> {
        self.total_blocks = self.total_blocks.saturating_add(r.blocks);
        let owner = match self.owner_index.get(&(r.uid, r.gid)) {
            Some(&i) => i,
            None => {
                let i = u16::try_from(self.owners.len())
                    .map_err(|_| FormatError::TooLarge("distinct owners"))?;
                self.owners.push((r.uid, r.gid));
                self.owner_index.insert((r.uid, r.gid), i);
                i
            }
        };
        let mode = u16::try_from(r.mode).map_err(|_| FormatError::TooLarge("mode bits"))?;
        let xattrs = if r.xattr_len == 0 {
            0
        } else {
            fits_u32(r.xattr_off + 1, "extra bytes")?
        };
        let mut nsec = r.mtime_nsec.min(999_999_999);
        let (size, data) = match r.file_type() {
            libc::S_IFDIR => (u64::from(r.parent) | (u64::from(r.extra_len) << 32), r.data),
            libc::S_IFLNK => (u64::from(r.extra_len), r.extra_off),
            libc::S_IFREG if r.is_sparse() => {
                nsec |= SPARSE_FLAG;
                let at = self.extra.len() as u64;
                self.extra.put_u64(r.data);
                self.extra.put_u64(r.extra_off);
                self.extra.put_u32(r.extra_len);
                (r.size, at)
            }
            _ => (r.size, r.data),
        };
        let b = &mut self.inodes;
        b.put_u16(mode);
        b.put_u16(owner);
        b.put_u32(r.nlink);
        b.put_u64(size);
        b.put_i64(r.mtime);
        b.put_u32(nsec);
        b.put_u32(xattrs);
        b.put_u64(data);
        let blob = if r.file_type() == libc::S_IFREG {
            r.blob
        } else {
            0
        };
        b.put_u32(blob);
        b.put_u32(0);
        Ok(())
    }

    /// Adds a directory entry; entries must come in index order (names follow them).
    pub(crate) fn push_dirent(&mut self, record: u32, name: &[u8]) -> Result<(), FormatError> {
        let off = fits_u32(self.names.len() as u64, "name bytes")?;
        self.names.extend_from_slice(name);
        self.dirents.put_u32(record);
        self.dirents.put_u32(off);
        Ok(())
    }

    /// Adds a blob to the table: one that must be at least `size` bytes long, named `key`.
    /// Blobs are numbered in the order they are added, from zero.
    pub(crate) fn push_blob_ref(&mut self, size: u64, key: &[u8]) -> Result<u32, FormatError> {
        if self.blobs.len() as u64 >= MAX_BLOBS {
            return Err(FormatError::TooLarge("blobs"));
        }
        let len = fits_u32(key.len() as u64, "extra bytes")?;
        let off = fits_u32(self.push_extra(key)?, "extra bytes")?;
        self.blobs.push((size, off, len));
        Ok((self.blobs.len() - 1) as u32)
    }

    pub(crate) fn push_extra(&mut self, bytes: &[u8]) -> Result<u64, FormatError> {
        let off = self.extra.len() as u64;
        self.extra.extend_from_slice(bytes);
        Ok(off)
    }

    pub(crate) fn push_segments(
        &mut self,
        segments: &[Segment],
    ) -> Result<(u64, u32), FormatError> {
        let n = u32::try_from(segments.len()).map_err(|_| FormatError::TooLarge("segments"))?;
        let off = self.extra.len() as u64;
        for s in segments {
            self.extra.put_u64(s.offset);
            self.extra.put_u64(s.len);
        }
        Ok((off, n))
    }

    /// Stores an inode's xattrs; returns (offset, length) for the record, (0, 0) for none.
    pub(crate) fn push_xattrs(
        &mut self,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(u64, u32), FormatError> {
        if xattrs.is_empty() {
            return Ok((0, 0));
        }
        let mut run = Vec::new();
        for (name, value) in xattrs {
            run.put_u32(fits_u32(name.len() as u64, "xattr bytes")?);
            run.put_u32(fits_u32(value.len() as u64, "xattr bytes")?);
            run.extend_from_slice(name);
            run.extend_from_slice(value);
        }
        let len = fits_u32(run.len() as u64, "xattr bytes")?;
        let off = self.extra.len() as u64;
        self.extra.put_u32(len);
        self.extra.extend_from_slice(&run);
        Ok((off, len))
    }

    pub(crate) fn finish(self) -> Result<Vec<u8>, FormatError> {
        if self.blobs.is_empty() {
            return Err(FormatError::TooLarge("files without a blob"));
        }
        let total = HEADER_LEN
            + self.inodes.len()
            + self.dirents.len()
            + self.owners.len() * OWNER_LEN
            + self.blobs.len() * BLOB_LEN
            + self.names.len()
            + self.extra.len();
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(MAGIC);
        out.put_u32(VERSION);
        out.put_u32(HEADER_LEN as u32);
        out.put_u64((self.inodes.len() / INODE_LEN) as u64);
        out.put_u64((self.dirents.len() / DIRENT_LEN) as u64);
        out.put_u64(self.names.len() as u64);
        out.put_u64(self.extra.len() as u64);
        out.put_u64(self.blobs.len() as u64);
        out.put_u64(self.total_blocks);
        out.put_u64(self.owners.len() as u64);
        out.resize(HEADER_LEN, 0);
        out.extend_from_slice(&self.inodes);
        out.extend_from_slice(&self.dirents);
        for (uid, gid) in &self.owners {
            out.put_u32(*uid);
            out.put_u32(*gid);
        }
        for (size, off, len) in &self.blobs {
            out.put_u64(*size);
            out.put_u32(*off);
            out.put_u32(*len);
        }
        out.extend_from_slice(&self.names);
        out.extend_from_slice(&self.extra);
        seal(&mut out);
        Ok(out)
    }
}

/// Whether the checksum in the header matches the bytes (false for anything too short).
pub(crate) fn checksum_matches(b: &[u8]) -> bool {
    if b.len() < HEADER_LEN {
        return false;
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&b[..CRC_AT]);
    crc.update(&[0; 4]);
    crc.update(&b[CRC_AT + 4..]);
    crc.finalize() == u32_at(b, CRC_AT)
}

/// Writes the checksum of a whole index into its header (a no-op on anything shorter than a
/// header). The writer's last step; fuzzing uses it to get arbitrary bytes past the check.
pub fn seal(bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    set_u32(bytes, CRC_AT, 0);
    let crc = crc32fast::hash(bytes);
    set_u32(bytes, CRC_AT, crc);
}

/// A validated index over any byte container (a memory map in the filesystem, a vector in
/// tests).
pub struct Index<B> {
    bytes: B,
    inode_count: u32,
    dirent_count: u64,
    inodes: Range<usize>,
    dirents: Range<usize>,
    owners: Range<usize>,
    blobs: Range<usize>,
    names: Range<usize>,
    extra: Range<usize>,
    blob_count: u32,
}

/// One directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirent<'a> {
    pub record: u32,
    pub name: &'a [u8],
}

impl<B: AsRef<[u8]>> Index<B> {
    /// Validates the header, the layout and the checksum.
    pub fn new(bytes: B) -> Result<Self, FormatError> {
        let matches = checksum_matches(bytes.as_ref());
        // The layout's own errors say more about a foreign or truncated file.
        let index = Self::unchecked(bytes)?;
        if !matches {
            return Err(FormatError::Checksum);
        }
        Ok(index)
    }

    /// Validates the header and the layout but not the checksum, for an index whose checksum
    /// was verified since it last changed: reading a whole large index costs more than the
    /// rest of a warm mount. Every accessor stays bounds-checked either way.
    pub(crate) fn unchecked(bytes: B) -> Result<Self, FormatError> {
        let b = bytes.as_ref();
        if b.len() < HEADER_LEN || &b[..8] != MAGIC {
            return Err(FormatError::Magic);
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        if u32_at(b, 12) as usize != HEADER_LEN {
            return Err(FormatError::Layout("of an unknown header length"));
        }
        // Sections follow the header in a fixed order; each length is count × unit.
        let too_large = FormatError::Layout("too large");
        let mut at = HEADER_LEN;
        let mut next = |count: u64, unit: usize| -> Result<Range<usize>, FormatError> {
            let len = usize::try_from(count)
                .ok()
                .and_then(|c| c.checked_mul(unit))
                .ok_or(FormatError::Layout("too large"))?;
            let end = at
                .checked_add(len)
                .ok_or(FormatError::Layout("too large"))?;
            let range = at..end;
            at = end;
            Ok(range)
        };
        let inodes = next(u64_at(b, 16), INODE_LEN)?;
        let dirents = next(u64_at(b, 24), DIRENT_LEN)?;
        let owners = next(u64_at(b, 64), OWNER_LEN)?;
        if u64_at(b, 48) == 0 || u64_at(b, 48) > MAX_BLOBS {
            return Err(FormatError::Layout("without a valid blob table"));
        }
        let blobs = next(u64_at(b, 48), BLOB_LEN)?;
        let names = next(u64_at(b, 32), 1)?;
        let extra = next(u64_at(b, 40), 1)?;
        if extra.end != b.len() {
            return Err(FormatError::Layout(
                "truncated or has inconsistent section sizes",
            ));
        }
        if u64_at(b, 64) > u64::from(u16::MAX) + 1 {
            return Err(too_large);
        }
        let inode_count =
            u32::try_from(u64_at(b, 16)).map_err(|_| FormatError::Layout("too large"))?;
        if inode_count == 0 || inode_count == u32::MAX {
            return Err(FormatError::Layout("without a root directory"));
        }
        let index = Index {
            inode_count,
            dirent_count: u64_at(b, 24),
            inodes,
            dirents,
            owners,
            blobs,
            names,
            extra,
            blob_count: u64_at(b, 48) as u32, // at most MAX_BLOBS
            bytes,
        };
        if !index.inode(0).is_some_and(|r| r.is_dir()) {
            return Err(FormatError::Layout("without a root directory"));
        }
        Ok(index)
    }

    pub fn inode_count(&self) -> u32 {
        self.inode_count
    }

    /// How many blobs the table names (at least one).
    pub(crate) fn blob_count(&self) -> u32 {
        self.blob_count
    }

    /// Blob `i` of the table: the length it must have at least, and its key.
    pub(crate) fn blob(&self, i: u32) -> Option<(u64, &[u8])> {
        if i >= self.blob_count {
            return None;
        }
        let at = self.blobs.start + i as usize * BLOB_LEN;
        let b = self.bytes.as_ref();
        let (size, off, len) = (u64_at(b, at), u32_at(b, at + 8), u32_at(b, at + 12));
        let key = self.section_slice(&self.extra, off.into(), len.into())?;
        Some((size, key))
    }

    /// Sum of all inodes' 512-byte blocks.
    pub(crate) fn total_blocks(&self) -> u64 {
        u64_at(self.bytes.as_ref(), 56)
    }

    pub fn inode(&self, record: u32) -> Option<InodeRecord> {
        if record >= self.inode_count {
            return None;
        }
        let bytes = self.bytes.as_ref();
        let at = self.inodes.start + record as usize * INODE_LEN;
        let b = bytes.get(at..at + INODE_LEN)?;
        let mode = u32::from(u16_at(b, 0));
        let owner = usize::from(u16_at(b, 2));
        let o = self.owners.start.checked_add(owner * OWNER_LEN)?;
        if o + OWNER_LEN > self.owners.end {
            return None;
        }
        let (uid, gid) = (u32_at(bytes, o), u32_at(bytes, o + 4));
        let xattrs = u32_at(b, 28);
        let (xattr_off, xattr_len) = match xattrs.checked_sub(1) {
            None => (0, 0),
            Some(off) => {
                let len = self.section_slice(&self.extra, u64::from(off), 4)?;
                (u64::from(off) + 4, get_u32(len, 0)?)
            }
        };
        let nsec = u32_at(b, 24);
        let size = u64_at(b, 8);
        let mut r = InodeRecord {
            mode,
            uid,
            gid,
            nlink: u32_at(b, 4),
            size,
            mtime: u64_at(b, 16) as i64,
            mtime_nsec: nsec & !SPARSE_FLAG,
            parent: 0,
            data: u64_at(b, 32),
            blob: u32_at(b, 40),
            extra_off: 0,
            extra_len: 0,
            xattr_len,
            xattr_off,
            blocks: 0,
        };
        match r.file_type() {
            libc::S_IFDIR => {
                r.parent = size as u32;
                r.extra_len = (size >> 32) as u32;
                r.size = DIR_SIZE;
                r.blocks = DIR_SIZE / 512;
            }
            libc::S_IFLNK => {
                r.extra_off = r.data;
                r.extra_len = u32::try_from(size).ok()?;
                r.data = 0;
            }
            libc::S_IFREG if nsec & SPARSE_FLAG != 0 => {
                let h = self.section_slice(&self.extra, r.data, SPARSE_HEADER_LEN)?;
                r.data = u64_at(h, 0);
                r.extra_off = u64_at(h, 8);
                r.extra_len = u32_at(h, 16);
                if r.extra_len == 0 {
                    return None; // a sparse file always has a map
                }
                r.blocks = self.segments(&r)?.map(|s| s.len.div_ceil(512)).sum();
            }
            libc::S_IFREG => r.blocks = r.size.div_ceil(512),
            _ => {}
        }
        Some(r)
    }

    fn section_slice(&self, section: &Range<usize>, off: u64, len: u64) -> Option<&[u8]> {
        let start = section.start.checked_add(usize::try_from(off).ok()?)?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        if end > section.end {
            return None;
        }
        self.bytes.as_ref().get(start..end)
    }

    fn dirent_at(&self, i: u64) -> Option<Dirent<'_>> {
        if i >= self.dirent_count {
            return None;
        }
        let bytes = self.bytes.as_ref();
        let at = self.dirents.start + usize::try_from(i).ok()? * DIRENT_LEN;
        let b = bytes.get(at..at + DIRENT_LEN)?;
        let start = u64::from(u32_at(b, 4));
        // A name ends where the next one begins.
        let end = if i + 1 < self.dirent_count {
            u64::from(u32_at(bytes, at + DIRENT_LEN + 4))
        } else {
            (self.names.end - self.names.start) as u64
        };
        let name = self.section_slice(&self.names, start, end.checked_sub(start)?)?;
        Some(Dirent {
            record: u32_at(b, 0),
            name,
        })
    }

    /// The directory's children in name order, as (first dirent, count).
    fn child_range(&self, dir: &InodeRecord) -> Option<(u64, u64)> {
        if !dir.is_dir() {
            return None;
        }
        let count = u64::from(dir.extra_len);
        let end = dir.data.checked_add(count)?;
        (end <= self.dirent_count).then_some((dir.data, count))
    }

    /// The `i`-th child of a directory.
    pub fn child(&self, dir: &InodeRecord, i: u64) -> Option<Dirent<'_>> {
        let (first, count) = self.child_range(dir)?;
        if i >= count {
            return None;
        }
        self.dirent_at(first + i)
    }

    /// Binary search of a directory for `name`.
    pub fn lookup(&self, dir: &InodeRecord, name: &[u8]) -> Option<u32> {
        let (first, count) = self.child_range(dir)?;
        let (mut lo, mut hi) = (0u64, count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let d = self.dirent_at(first + mid)?;
            match d.name.cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(d.record),
            }
        }
        None
    }

    pub fn symlink_target(&self, r: &InodeRecord) -> Option<&[u8]> {
        if r.file_type() != libc::S_IFLNK {
            return None;
        }
        self.section_slice(&self.extra, r.extra_off, u64::from(r.extra_len))
    }

    /// A sparse file's data segments; `None` if the map is out of bounds.
    pub fn segments(&self, r: &InodeRecord) -> Option<impl Iterator<Item = Segment> + '_> {
        let b = self.section_slice(&self.extra, r.extra_off, u64::from(r.extra_len) * 16)?;
        Some(b.chunks_exact(16).map(|c| Segment {
            offset: u64_at(c, 0),
            len: u64_at(c, 8),
        }))
    }

    /// The inode's xattrs as (name, value); stops at the first malformed one.
    pub fn xattrs(&self, r: &InodeRecord) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let mut rest = self
            .section_slice(&self.extra, r.xattr_off, u64::from(r.xattr_len))
            .unwrap_or(&[]);
        std::iter::from_fn(move || {
            let nl = get_u32(rest, 0)? as usize;
            let vl = get_u32(rest, 4)? as usize;
            let name = rest.get(8..8usize.checked_add(nl)?)?;
            let end = (8 + nl).checked_add(vl)?;
            let value = rest.get(8 + nl..end)?;
            rest = &rest[end..];
            Some((name, value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::default();
        let (xo, xl) = w
            .push_xattrs(&[(b"user.a".to_vec(), b"1\n2".to_vec())])
            .unwrap();
        w.push_inode(&InodeRecord {
            mode: libc::S_IFDIR | 0o755,
            nlink: 2,
            extra_len: 2,
            xattr_off: xo,
            xattr_len: xl,
            ..Default::default()
        })
        .unwrap();
        let t = w.push_extra(b"target").unwrap();
        w.push_inode(&InodeRecord {
            mode: libc::S_IFLNK | 0o777,
            extra_off: t,
            extra_len: 6,
            ..Default::default()
        })
        .unwrap();
        w.push_inode(&InodeRecord {
            mode: libc::S_IFREG | 0o644,
            size: 5,
            data: 512,
            uid: 1000,
            gid: 100,
            blob: 1,
            ..Default::default()
        })
        .unwrap();
        w.push_dirent(2, b"a").unwrap();
        w.push_dirent(1, b"b").unwrap();
        w.push_blob_ref(100, b"first").unwrap();
        w.push_blob_ref(2048, b"sha256:ab").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let idx = Index::new(sample()).unwrap();
        let root = idx.inode(0).unwrap();
        let file = idx.inode(2).unwrap();
        assert_eq!(
            (file.uid, file.gid, file.size, file.blocks),
            (1000, 100, 5, 1)
        );
        assert_eq!((root.uid, root.nlink, root.parent), (0, 2, 0));
        assert_eq!(idx.lookup(&root, b"a"), Some(2));
        assert_eq!(idx.lookup(&root, b"b"), Some(1));
        assert_eq!(idx.lookup(&root, b"c"), None);
        assert_eq!(idx.lookup(&root, b""), None);
        assert_eq!(idx.child(&root, 1).unwrap().name, b"b");
        assert_eq!(idx.child(&root, 2), None);
        let link = idx.inode(1).unwrap();
        assert_eq!(idx.symlink_target(&link), Some(&b"target"[..]));
        let x: Vec<_> = idx.xattrs(&root).collect();
        assert_eq!(x, vec![(&b"user.a"[..], &b"1\n2"[..])]);
        assert_eq!(idx.blob_count(), 2);
        assert_eq!(idx.blob(1), Some((2048, &b"sha256:ab"[..])));
        assert_eq!(file.blob, 1);
        assert_eq!(idx.blob(2), None);
        assert_eq!(idx.inode(3), None);
    }

    /// The bytes sit where the module docs say: a change to the layout fails here first.
    #[test]
    fn layout_matches_the_spec() {
        let b = sample();
        let u16le = |at: usize| u16_at(&b, at);
        let u32le = |at: usize| u32_at(&b, at);
        let u64le = |at: usize| u64_at(&b, at);
        assert_eq!(&b[0..8], b"IMGFSIDX");
        assert_eq!((u32le(8), u32le(12)), (4, 128));
        // inodes, dirents, names, owners
        assert_eq!((u64le(16), u64le(24), u64le(32), u64le(64)), (3, 2, 2, 2));
        let xattr_record = 4 + 4 + 4 + 6 + 3; // length prefix, lengths, name, value
        let extra_len = xattr_record + 6 + 5 + 9; // then the symlink target, the blob keys
        assert_eq!((u64le(40), u64le(48)), (extra_len, 2));
        assert_eq!(
            b.len(),
            128 + 3 * 48 + 2 * 8 + 2 * 8 + 2 * 16 + 2 + extra_len as usize
        );
        let root = 128;
        assert_eq!(u16le(root), (libc::S_IFDIR | 0o755) as u16);
        assert_eq!((u16le(root + 2), u32le(root + 4)), (0, 2)); // owner 0, nlink
        assert_eq!(u32le(root + 28), 1); // xattrs at blob offset 0, plus one
        assert_eq!((u32le(root + 8), u32le(root + 12)), (0, 2)); // parent, child count
        assert_eq!(u64le(root + 32), 0); // first dirent
        let file = 128 + 2 * 48;
        assert_eq!(u16le(file + 2), 1); // second owner
        assert_eq!((u64le(file + 8), u64le(file + 32)), (5, 512)); // size, data offset
        assert_eq!((u32le(file + 40), u32le(file + 44)), (1, 0)); // blob, zero
        let dirents = 128 + 3 * 48;
        assert_eq!((u32le(dirents), u32le(dirents + 4)), (2, 0));
        assert_eq!((u32le(dirents + 8), u32le(dirents + 12)), (1, 1));
        let owners = dirents + 16;
        assert_eq!((u32le(owners), u32le(owners + 4)), (0, 0));
        assert_eq!((u32le(owners + 8), u32le(owners + 12)), (1000, 100));
        let blobs = owners + 16;
        let keys = xattr_record + 6;
        assert_eq!(
            (u64le(blobs), u32le(blobs + 8), u32le(blobs + 12)),
            (100, keys as u32, 5)
        );
        let second = (2048, keys as u32 + 5, 9);
        assert_eq!(
            (u64le(blobs + 16), u32le(blobs + 24), u32le(blobs + 28)),
            second
        );
        let names = blobs + 32;
        assert_eq!(&b[names..names + 2], b"ab");
        assert_eq!(u32le(names + 2), 4 + 4 + 6 + 3); // xattr run length
        let crc = u32le(124);
        let mut zeroed = b.clone();
        zeroed[124..128].fill(0);
        assert_eq!(crc, crc32fast::hash(&zeroed));
    }

    #[test]
    fn rejects_damage() {
        let good = sample();
        assert!(matches!(
            Index::new(good[..good.len() - 1].to_vec()),
            Err(FormatError::Layout(_))
        ));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(Index::new(flipped), Err(FormatError::Checksum)));
        let mut old = good.clone();
        old[8] = 0;
        assert!(matches!(Index::new(old), Err(FormatError::Version(0))));
        assert!(matches!(
            Index::new(b"not an index".to_vec()),
            Err(FormatError::Magic)
        ));
        assert!(matches!(Index::new(Vec::new()), Err(FormatError::Magic)));
    }

    /// Accessors on an index whose checksum was forged over hostile records never panic.
    #[test]
    fn hostile_records_do_not_panic() {
        let good = sample();
        for i in HEADER_LEN..good.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let crc = {
                    let mut h = crc32fast::Hasher::new();
                    h.update(&b[..CRC_AT]);
                    h.update(&[0; 4]);
                    h.update(&b[CRC_AT + 4..]);
                    h.finalize()
                };
                set_u32(&mut b, CRC_AT, crc);
                let Ok(idx) = Index::new(b) else { continue };
                for r in 0..4 {
                    if let Some(rec) = idx.inode(r) {
                        let _ = idx.lookup(&rec, b"a");
                        let _ = idx.child(&rec, 0);
                        let _ = idx.symlink_target(&rec);
                        let _ = idx.xattrs(&rec).count();
                        let _ = idx.segments(&rec).map(|s| s.count());
                    }
                }
            }
        }
    }
}
