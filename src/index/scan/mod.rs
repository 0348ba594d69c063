//! The tar scanner: turns the bytes of an archive into [`Entry`] records that carry the
//! archive offset of each entry's data, without ever copying the data.
//!
//! It takes an [`Input`] — a byte slice of a tar file on disk ([`SliceInput`]) or a stream
//! that is written through to the cache as it is read ([`TeeInput`]) — so the archive passes
//! through memory once. It understands every header a real export or rootfs tar uses: ustar,
//! GNU long names and links (`L`/`K`), old GNU sparse files (`S`), PAX extended headers
//! (path, linkpath, size, uid, gid, mtime with nanoseconds, device numbers, `SCHILY.xattr.*`,
//! GNU sparse 0.0, 0.1 and 1.0), and skips PAX global headers and volume labels.
//!
//! Guarantees: arithmetic is checked, metadata records are bounded by [`MAX_META_LEN`], and
//! any bytes give entries or one [`ScanError`] naming the entry and byte offset — never a
//! panic. Paths are handed on raw; the tree builder normalizes and confines them.
//!
//! One concern per file: `input.rs` holds the sources of bytes, `error.rs` what can be wrong,
//! `fields.rs` the text of header fields (numbers, PAX records and times), `sparse.rs` the
//! four encodings of a sparse file's map; this file walks the headers and builds members.

mod error;
mod fields;
mod input;
mod sparse;

pub use error::{EntryError, ScanError};
pub use input::{Input, SliceInput, TeeInput};

use fields::{numeric, numeric_i64, parse_pax, parse_pax_time, pax_get, pax_u64, to_u32};
use sparse::{check_segments, old_gnu_sparse, sparse_real_size, sparse_v0_map, sparse_v1_map};

/// Tar block size: every header and every data area is a multiple of it.
pub(crate) const BLOCK: u64 = 512;
/// Largest PAX record set or GNU long name accepted. Real ones hold a path and a few xattrs
/// (kilobytes); the bound stops a hostile size field from allocating gigabytes.
pub(crate) const MAX_META_LEN: u64 = 16 << 20;
/// Most sparse segments accepted for one file; each costs 16 bytes of index.
pub(crate) const MAX_SPARSE_SEGMENTS: usize = 1 << 20;

/// What a tar entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
}

/// One stretch of a sparse file that holds data; everything between segments reads as zeros.
/// Segment data is stored back to back in the archive, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset in the file as seen by a reader.
    pub offset: u64,
    pub len: u64,
}

/// One archive member with its metadata resolved from every extension header before it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Byte offset of the member's first header (extension headers included): used in messages.
    pub header_offset: u64,
    pub path: Vec<u8>,
    pub kind: Option<Kind>,
    /// Symlink target or hard-link target path, raw.
    pub link: Vec<u8>,
    /// Permission bits, including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Size as seen by a reader (the real size of a sparse file).
    pub size: u64,
    /// Archive offset of the first data byte.
    pub data_offset: u64,
    /// Data segments of a sparse file; `None` for a contiguous file.
    pub sparse: Option<Vec<Segment>>,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    pub(crate) fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::File)
    }
}

/// Extension records that apply to the next real member.
#[derive(Default)]
struct Pending {
    first_offset: Option<u64>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Vec<(Vec<u8>, Vec<u8>)>,
    /// What the extension headers read so far cost in memory, bounded by [`MAX_META_LEN`]
    /// however many headers precede the member.
    cost: u64,
}

/// Scans the whole archive, calling `visit` for each member in archive order. Warnings about
/// members that were read but are unusual go to `warn`.
pub fn scan<I: Input>(
    input: &mut I,
    warn: &mut dyn FnMut(String),
    visit: &mut dyn FnMut(Entry) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    let mut pending = Pending::default();
    let mut block = [0u8; BLOCK as usize];
    loop {
        let offset = input.position();
        let n = input
            .read_full(&mut block)
            .map_err(|source| ScanError::Io {
                offset,
                cause: source,
            })?;
        if n == 0 && offset == 0 {
            return Err(ScanError::NotTar(
                "not a tar archive (the file is empty)".into(),
            ));
        }
        if n == 0 && pending.first_offset.is_none() {
            return Ok(()); // end of input without end-of-archive blocks: accepted, as tar does
        }
        if n < block.len() && offset == 0 {
            return Err(ScanError::NotTar(format!(
                "not a tar archive (only {n} bytes long)"
            )));
        }
        if n < block.len() {
            return Err(ScanError::Truncated {
                what: "header".into(),
                offset,
            });
        }
        if block.iter().all(|&b| b == 0) {
            if pending.first_offset.is_some() {
                return Err(ScanError::EndAfterExtension { offset });
            }
            return Ok(());
        }
        check_header(&block, offset)?;
        pending.first_offset.get_or_insert(offset);
        let typeflag = block[156];
        let size = pax_u64(&pending.pax, b"size")
            .unwrap_or_else(|| numeric(&block[124..136]))
            .map_err(|reason| bad_header(offset, &block, reason))?;
        match typeflag {
            b'L' | b'K' => {
                charge(&mut pending.cost, size, offset, &block)?;
                let mut data = read_meta(input, size, offset, &block)?;
                while data.last() == Some(&0) {
                    data.pop();
                }
                if typeflag == b'L' {
                    pending.long_name = Some(data);
                } else {
                    pending.long_link = Some(data);
                }
            }
            b'x' | b'X' => {
                charge(&mut pending.cost, size, offset, &block)?;
                let data = read_meta(input, size, offset, &block)?;
                parse_pax(&data, &mut pending.pax, &mut pending.cost)
                    .map_err(|reason| bad_header(offset, &block, reason))?;
            }
            b'g' | b'V' => skip_data(input, size, offset, &block)?,
            b'M' => {
                return Err(bad_header(offset, &block, EntryError::MultiVolume));
            }
            _ => {
                let p = std::mem::take(&mut pending);
                let entry = member(input, &block, offset, size, p, warn)?;
                visit(entry)?;
            }
        }
    }
}

/// Verifies the header checksum; at byte 0 a failure means "not a tar", said precisely.
fn check_header(block: &[u8; BLOCK as usize], offset: u64) -> Result<(), ScanError> {
    let stored = numeric(&block[148..156]).ok();
    // The checksum field counts as eight spaces. POSIX sums bytes as unsigned; some old
    // writers summed them as signed, which differs by 256 for every byte >= 128.
    let field_unsigned: u32 = block[148..156].iter().map(|&b| u32::from(b)).sum();
    let unsigned =
        block.iter().map(|&b| u32::from(b)).sum::<u32>() - field_unsigned + 8 * u32::from(b' ');
    let unsigned = u64::from(unsigned);
    let signed = || {
        let high = |bytes: &[u8]| bytes.iter().filter(|&&b| b >= 0x80).count() as i64;
        unsigned as i64 - 256 * (high(&block[..]) - high(&block[148..156]))
    };
    let ok = stored.is_some_and(|s| s == unsigned || Some(s) == u64::try_from(signed()).ok());
    if ok {
        return Ok(());
    }
    if offset == 0 {
        return Err(ScanError::NotTar(not_tar_reason(block)));
    }
    Err(ScanError::HeaderChecksum { offset })
}

/// Names what the first bytes are, so "compressed" is said clearly rather than "corrupt".
fn not_tar_reason(head: &[u8]) -> String {
    let compressed = [
        (&b"\x1f\x8b"[..], "gzip", "gunzip"),
        (b"BZh", "bzip2", "bunzip2"),
        (b"\xfd7zXZ\0", "xz", "unxz"),
        (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
        (b"\x04\x22\x4d\x18", "lz4", "unlz4"),
    ];
    for (magic, name, tool) in compressed {
        if head.starts_with(magic) {
            return format!(
                "this is a {name}-compressed file; imgfs reads an uncompressed tar archive \
                 (decompress it first, e.g. with {tool})"
            );
        }
    }
    "not a tar archive (the first header's checksum does not match)".into()
}

pub(super) fn bad_header(
    offset: u64,
    block: &[u8; BLOCK as usize],
    reason: EntryError,
) -> ScanError {
    let name = tar::Header::from_byte_slice(block).path_bytes();
    ScanError::BadEntry {
        name: String::from_utf8_lossy(&name).into_owned(),
        offset,
        reason,
    }
}

/// Rounds a data length up to whole blocks.
fn padded(size: u64) -> Option<u64> {
    size.checked_add(BLOCK - 1).map(|s| s / BLOCK * BLOCK)
}

fn skip_data<I: Input>(
    input: &mut I,
    size: u64,
    offset: u64,
    block: &[u8; BLOCK as usize],
) -> Result<(), ScanError> {
    let want = padded(size).ok_or_else(|| bad_header(offset, block, EntryError::SizeOverflow))?;
    let at = input.position();
    let got = input.skip(want).map_err(|source| ScanError::Io {
        offset: at,
        cause: source,
    })?;
    if got < want {
        return Err(truncated(block, offset));
    }
    Ok(())
}

pub(super) fn truncated(block: &[u8; BLOCK as usize], offset: u64) -> ScanError {
    let name = tar::Header::from_byte_slice(block).path_bytes();
    ScanError::Truncated {
        what: format!("data of '{}'", String::from_utf8_lossy(&name)),
        offset,
    }
}

/// Adds `cost` to a member's extension budget; past [`MAX_META_LEN`] the archive is refused.
fn charge(
    total: &mut u64,
    cost: u64,
    offset: u64,
    block: &[u8; BLOCK as usize],
) -> Result<(), ScanError> {
    *total = total.saturating_add(cost);
    if *total > MAX_META_LEN {
        return Err(bad_header(offset, block, EntryError::ExtensionBudget));
    }
    Ok(())
}

/// Reads a bounded extension record (PAX or GNU long name) and its padding.
fn read_meta<I: Input>(
    input: &mut I,
    size: u64,
    offset: u64,
    block: &[u8; BLOCK as usize],
) -> Result<Vec<u8>, ScanError> {
    if size > MAX_META_LEN {
        return Err(bad_header(
            offset,
            block,
            EntryError::ExtensionRecord { size },
        ));
    }
    let mut data = vec![0u8; size as usize]; // bounded just above
    let at = input.position();
    let n = input.read_full(&mut data).map_err(|source| ScanError::Io {
        offset: at,
        cause: source,
    })?;
    if n < data.len() {
        return Err(truncated(block, offset));
    }
    let pad = padded(size).unwrap_or(size) - size;
    let at = input.position();
    let skipped = input.skip(pad).map_err(|source| ScanError::Io {
        offset: at,
        cause: source,
    })?;
    if skipped < pad {
        return Err(truncated(block, offset));
    }
    Ok(data)
}

/// Builds a member from its header and the extension records before it, and moves past
/// its data.
fn member<I: Input>(
    input: &mut I,
    block: &[u8; BLOCK as usize],
    offset: u64,
    size: u64,
    p: Pending,
    warn: &mut dyn FnMut(String),
) -> Result<Entry, ScanError> {
    let header = tar::Header::from_byte_slice(block);
    let pax = &p.pax;
    let err = |reason: EntryError| bad_header(offset, block, reason);
    let path = pax_get(pax, b"GNU.sparse.name")
        .or_else(|| pax_get(pax, b"path"))
        .map(<[u8]>::to_vec)
        .or(p.long_name)
        .unwrap_or_else(|| header.path_bytes().into_owned());
    let link = pax_get(pax, b"linkpath")
        .map(<[u8]>::to_vec)
        .or(p.long_link)
        .or_else(|| header.link_name_bytes().map(|l| l.into_owned()))
        .unwrap_or_default();
    let typeflag = block[156];
    let kind = match typeflag {
        b'0' | b'7' | b'S' => Kind::File,
        0 if path.ends_with(b"/") => Kind::Directory,
        0 => Kind::File,
        b'1' => Kind::HardLink,
        b'2' => Kind::Symlink,
        b'3' => Kind::CharDevice,
        b'4' => Kind::BlockDevice,
        b'5' | b'D' => Kind::Directory,
        b'6' => Kind::Fifo,
        other => {
            warn(format!(
                "entry '{}' at byte {offset}: unknown type '{}', read as a regular file",
                String::from_utf8_lossy(&path),
                other.escape_ascii()
            ));
            Kind::File
        }
    };
    let mode = (numeric(&block[100..108]).map_err(&err)? & 0o7777) as u32;
    let uid = match pax_u64(pax, b"uid") {
        Some(v) => v.map_err(&err)?,
        None => numeric(&block[108..116]).map_err(&err)?,
    };
    let gid = match pax_u64(pax, b"gid") {
        Some(v) => v.map_err(&err)?,
        None => numeric(&block[116..124]).map_err(&err)?,
    };
    let (mtime, mtime_nsec) = match pax_get(pax, b"mtime") {
        Some(v) => parse_pax_time(v).ok_or_else(|| {
            err(EntryError::PaxTime {
                value: String::from_utf8_lossy(v).into_owned(),
            })
        })?,
        None => (numeric_i64(&block[136..148]).map_err(&err)?, 0),
    };
    let (mut dev_major, mut dev_minor) = (0, 0);
    if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
        dev_major = match pax_u64(pax, b"SCHILY.devmajor") {
            Some(v) => v.map_err(&err)?,
            None => numeric(&block[329..337]).map_err(&err)?,
        };
        dev_minor = match pax_u64(pax, b"SCHILY.devminor") {
            Some(v) => v.map_err(&err)?,
            None => numeric(&block[337..345]).map_err(&err)?,
        };
    }
    // One value per name, the last one given.
    let xattrs: std::collections::BTreeMap<&[u8], &[u8]> = pax
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(b"SCHILY.xattr.")?, v.as_slice())))
        .collect();
    let xattrs = xattrs
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();

    let mut entry = Entry {
        header_offset: p.first_offset.unwrap_or(offset),
        path,
        kind: Some(kind),
        link,
        mode,
        uid: to_u32(uid, "uid").map_err(&err)?,
        gid: to_u32(gid, "gid").map_err(&err)?,
        mtime,
        mtime_nsec,
        size,
        data_offset: 0,
        sparse: None,
        dev_major: to_u32(dev_major, "device major").map_err(&err)?,
        dev_minor: to_u32(dev_minor, "device minor").map_err(&err)?,
        xattrs,
    };

    // Where the stored data begins and how much of it there is.
    let mut stored = size;
    if typeflag == b'S' {
        let (segments, real) = old_gnu_sparse(input, block, offset)?;
        entry.sparse = Some(segments);
        entry.size = real;
    } else if pax_get(pax, b"GNU.sparse.major") == Some(b"1") {
        let (segments, map_len) = sparse_v1_map(input, size, offset, block)?;
        stored = size - map_len; // map_len <= size, checked by sparse_v1_map
        entry.sparse = Some(segments);
        entry.size = sparse_real_size(pax, b"GNU.sparse.realsize").map_err(&err)?;
    } else if pax_get(pax, b"GNU.sparse.map").is_some()
        || pax_get(pax, b"GNU.sparse.offset").is_some()
    {
        entry.sparse = Some(sparse_v0_map(pax).map_err(&err)?);
        entry.size = sparse_real_size(pax, b"GNU.sparse.size").map_err(&err)?;
    }
    if let Some(segments) = &entry.sparse {
        check_segments(segments, entry.size, stored).map_err(&err)?;
    }
    entry.data_offset = input.position();
    if kind != Kind::File {
        entry.size = 0;
    }
    skip_data(input, stored, offset, block)?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::sparse::decimal;
    use super::*;

    /// The reasons read as they did when they were strings: messages are matched by people and
    /// by tests of the command line.
    #[test]
    fn entry_errors_keep_their_words() {
        let cases: Vec<(EntryError, &str)> = vec![
            (
                EntryError::PaxNumber {
                    key: "uid".into(),
                    value: "1 2".into(),
                },
                "PAX uid is not a number: \"1 2\"",
            ),
            (
                numeric_i64(b"12x4\0").unwrap_err(),
                "numeric field \"12x4\\0\" is not octal",
            ),
            (
                numeric(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").unwrap_err(),
                "numeric field is negative (-1)",
            ),
            (
                to_u32(1 << 32, "uid").unwrap_err(),
                "uid 4294967296 does not fit in 32 bits",
            ),
            (decimal(b"1a").unwrap_err(), "\"1a\" is not a number"),
            (
                EntryError::SparseMapSize {
                    covered: 3,
                    stored: 4,
                },
                "sparse map covers 3 bytes but the archive stores 4",
            ),
            (
                EntryError::ExtensionBudget,
                "extension headers of one member exceed the 16777216-byte limit",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
        let e = bad_header(0, &[0; BLOCK as usize], EntryError::SizeOverflow);
        assert_eq!(e.to_string(), "entry '' at byte 0: size overflows");
    }

    #[test]
    fn detects_compressed_input() {
        let mut gz = vec![0x1f, 0x8b, 8, 0];
        gz.resize(1024, 0);
        let e = scan(&mut SliceInput::new(&gz), &mut |_| {}, &mut |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("gzip"), "{e}");
    }

    #[test]
    fn truncated_header_and_data() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1000);
        h.set_cksum();
        b.append_data(&mut h, "f", &[7u8; 1000][..]).unwrap();
        let full = b.into_inner().unwrap();
        let e = scan(&mut SliceInput::new(&full[..100]), &mut |_| {}, &mut |_| {
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(e, ScanError::NotTar(_)), "{e}");
        for cut in [700, 1200] {
            let e = scan(&mut SliceInput::new(&full[..cut]), &mut |_| {}, &mut |_| {
                Ok(())
            })
            .unwrap_err();
            assert!(matches!(e, ScanError::Truncated { .. }), "{cut}: {e}");
        }
    }
}
