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

use std::io::{self, Read, Write};

/// Tar block size: every header and every data area is a multiple of it.
pub const BLOCK: u64 = 512;
/// Largest PAX record set or GNU long name accepted. Real ones hold a path and a few xattrs
/// (kilobytes); the bound stops a hostile size field from allocating gigabytes.
pub const MAX_META_LEN: u64 = 16 << 20;
/// Most sparse segments accepted for one file; each costs 16 bytes of index.
pub const MAX_SPARSE_SEGMENTS: usize = 1 << 20;
/// Read size when streaming: large enough that syscalls and cache writes stay cheap.
const STREAM_CHUNK: usize = 1 << 20;

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
    pub fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::File)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("I/O error at byte {offset}: {source}")]
    Io { offset: u64, source: io::Error },
    #[error("archive is truncated: {what} at byte {offset} ends early")]
    Truncated { what: String, offset: u64 },
    #[error("{0}")]
    NotTar(String),
    #[error("corrupt tar header at byte {offset}: end of archive right after an extension header")]
    EndAfterExtension { offset: u64 },
    #[error("corrupt tar header at byte {offset}: header checksum does not match")]
    HeaderChecksum { offset: u64 },
    #[error("entry '{name}' at byte {offset}: {reason}")]
    BadEntry {
        name: String,
        offset: u64,
        reason: EntryError,
    },
}

/// What is wrong with one member's headers (its own, or the extension headers before it): the
/// reason a [`ScanError::BadEntry`] gives after the member's name and offset.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("multi-volume archives are not supported")]
    MultiVolume,
    #[error("size overflows")]
    SizeOverflow,
    #[error("extension headers of one member exceed the {MAX_META_LEN}-byte limit")]
    ExtensionBudget,
    #[error("extension record of {size} bytes exceeds the {MAX_META_LEN}-byte limit")]
    ExtensionRecord { size: u64 },
    #[error("PAX record without a length")]
    PaxNoLength,
    #[error("PAX record with a bad length")]
    PaxBadLength,
    #[error("PAX record length {len} does not fit its data")]
    PaxLength { len: usize },
    #[error("PAX record without '='")]
    PaxNoEquals,
    #[error("PAX {key} is not a number: {value:?}")]
    PaxNumber { key: String, value: String },
    #[error("PAX mtime {value:?} is not a time")]
    PaxTime { value: String },
    #[error("base-256 field too long")]
    Base256Long,
    #[error("base-256 number overflows")]
    Base256Overflow,
    #[error("numeric field {field:?} is not octal")]
    NotOctal { field: String },
    #[error("numeric field overflows")]
    OctalOverflow,
    #[error("numeric field is negative ({value})")]
    Negative { value: i64 },
    #[error("{what} {value} does not fit in 32 bits")]
    Over32Bits { what: &'static str, value: u64 },
    #[error("sparse file without {key}")]
    SparseNoSize { key: String },
    #[error("sparse segment overflows")]
    SparseSegmentOverflow,
    #[error("sparse map is out of order or beyond the file size")]
    SparseOrder,
    #[error("sparse map overflows")]
    SparseMapOverflow,
    #[error("sparse map covers {covered} bytes but the archive stores {stored}")]
    SparseMapSize { covered: u64, stored: u64 },
    #[error("more than {MAX_SPARSE_SEGMENTS} sparse segments")]
    SparseSegments,
    #[error("sparse map has an odd number of values")]
    SparseMapOdd,
    #[error("{text:?} is not a number")]
    NotDecimal { text: String },
    #[error("sparse map runs past the entry's data")]
    SparseMapPastData,
    #[error("sparse map claims {count} segments")]
    SparseMapCount { count: u64 },
    #[error("sparse map holds something other than numbers")]
    SparseMapText,
}

/// A source of archive bytes with a position.
pub trait Input {
    /// Fills `buf` as far as the input goes; returns how many bytes were read.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Skips up to `n` bytes; returns how many were skipped (fewer only at the end).
    fn skip(&mut self, n: u64) -> io::Result<u64>;
    /// Bytes consumed so far.
    fn position(&self) -> u64;
}

/// An archive already in memory (a mapped tar file): skipping data costs nothing.
pub struct SliceInput<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> SliceInput<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        SliceInput { data, pos: 0 }
    }
}

impl Input for SliceInput<'_> {
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }

    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let rest = (self.data.len() - self.pos) as u64;
        let n = n.min(rest);
        self.pos += n as usize; // n <= rest, which fits in usize
        Ok(n)
    }

    fn position(&self) -> u64 {
        self.pos as u64
    }
}

/// A stream (a Docker export) written through to `sink` as it is scanned, in large chunks:
/// every byte is read once and written once, and the scan never waits for a second pass.
pub struct TeeInput<R, W> {
    reader: R,
    sink: W,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    pos: u64,
}

impl<R: Read, W: Write> TeeInput<R, W> {
    pub fn new(reader: R, sink: W) -> Self {
        TeeInput {
            reader,
            sink,
            buf: vec![0; STREAM_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            pos: 0,
        }
    }

    /// Refills the buffer; false at the end of the stream.
    fn fill(&mut self) -> io::Result<bool> {
        let n = loop {
            match self.reader.read(&mut self.buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(false);
        }
        self.sink.write_all(&self.buf[..n])?;
        self.start = 0;
        self.end = n;
        Ok(true)
    }

    /// Copies what is left of the stream (the end-of-archive padding) and hands back the sink
    /// with the total length written.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let mut total = self.pos + (self.end - self.start) as u64;
        while self.fill()? {
            total += self.end as u64;
        }
        self.sink.flush()?;
        Ok((self.sink, total))
    }
}

impl<R: Read, W: Write> Input for TeeInput<R, W> {
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            if self.start == self.end && !self.fill()? {
                break;
            }
            let n = (self.end - self.start).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            done += n;
        }
        self.pos += done as u64;
        Ok(done)
    }

    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let mut done = 0u64;
        while done < n {
            if self.start == self.end && !self.fill()? {
                break;
            }
            let avail = (self.end - self.start) as u64;
            let k = avail.min(n - done);
            self.start += k as usize; // k <= avail, a buffer length
            done += k;
        }
        self.pos += done;
        Ok(done)
    }

    fn position(&self) -> u64 {
        self.pos
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

/// What one kept PAX record costs beyond its bytes (two vectors and their allocations).
const PAX_RECORD_COST: u64 = 64;

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
            .map_err(|source| ScanError::Io { offset, source })?;
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

fn bad_header(offset: u64, block: &[u8; BLOCK as usize], reason: EntryError) -> ScanError {
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
    let got = input
        .skip(want)
        .map_err(|source| ScanError::Io { offset: at, source })?;
    if got < want {
        return Err(truncated(block, offset));
    }
    Ok(())
}

fn truncated(block: &[u8; BLOCK as usize], offset: u64) -> ScanError {
    let name = tar::Header::from_byte_slice(block).path_bytes();
    ScanError::Truncated {
        what: format!("data of '{}'", String::from_utf8_lossy(&name)),
        offset,
    }
}

/// Reads a bounded extension record (PAX or GNU long name) and its padding.
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
    let n = input
        .read_full(&mut data)
        .map_err(|source| ScanError::Io { offset: at, source })?;
    if n < data.len() {
        return Err(truncated(block, offset));
    }
    let pad = padded(size).unwrap_or(size) - size;
    let at = input.position();
    let skipped = input
        .skip(pad)
        .map_err(|source| ScanError::Io { offset: at, source })?;
    if skipped < pad {
        return Err(truncated(block, offset));
    }
    Ok(data)
}

/// Parses PAX records (`LEN KEY=VALUE\n`) by their length prefix, so values may hold any
/// byte (binary xattrs hold newlines and NULs). Later keys override earlier ones.
fn parse_pax(
    mut data: &[u8],
    out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    cost: &mut u64,
) -> Result<(), EntryError> {
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break; // some writers pad the record set with NULs
        }
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or(EntryError::PaxNoLength)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(EntryError::PaxBadLength)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(EntryError::PaxLength { len });
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or(EntryError::PaxNoEquals)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        // Every record is kept, in order (sparse 0.0 repeats its offset/numbytes pairs); a
        // lookup takes the last record of a key, which overrides earlier ones. The member's
        // extension budget bounds how many there are.
        *cost = cost.saturating_add(PAX_RECORD_COST);
        if *cost > MAX_META_LEN {
            return Err(EntryError::ExtensionBudget);
        }
        out.push((key.to_vec(), value.to_vec()));
        data = &data[len..];
    }
    Ok(())
}

fn pax_get<'a>(pax: &'a [(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<&'a [u8]> {
    pax.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
}

fn pax_u64(pax: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<Result<u64, EntryError>> {
    pax_get(pax, key).map(|v| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| EntryError::PaxNumber {
                key: String::from_utf8_lossy(key).into_owned(),
                value: String::from_utf8_lossy(v).into_owned(),
            })
    })
}

/// Parses a PAX time: decimal seconds, optionally negative, with up to 9 fraction digits.
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some((secs, nsec));
    }
    // -1.25 is 1.25 s before the epoch: seconds -2, nanoseconds 0.75e9.
    if nsec == 0 {
        Some((secs.checked_neg()?, 0))
    } else {
        Some((secs.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nsec))
    }
}

/// Parses a numeric header field: octal text (space or NUL terminated), or base-256 when the
/// high bit of the first byte is set (GNU's encoding for large and negative values).
fn numeric_i64(field: &[u8]) -> Result<i64, EntryError> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        // Big-endian two's complement; bit 0x40 of the first byte is the sign.
        let negative = field[0] & 0x40 != 0;
        if field.len() > 15 {
            return Err(EntryError::Base256Long);
        }
        let mut v: i128 = if negative { -1 } else { 0 };
        for (i, &b) in field.iter().enumerate() {
            let b = if i == 0 && !negative { b & 0x7f } else { b };
            v = (v << 8) | i128::from(b);
        }
        return i64::try_from(v).map_err(|_| EntryError::Base256Overflow);
    }
    // Octal digits, after optional leading spaces, up to a NUL or space.
    let mut v: i64 = 0;
    let digits = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != 0 && b != b' ');
    for &b in digits {
        if !(b'0'..=b'7').contains(&b) {
            return Err(EntryError::NotOctal {
                field: String::from_utf8_lossy(field).into_owned(),
            });
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or(EntryError::OctalOverflow)?;
    }
    Ok(v)
}

fn numeric(field: &[u8]) -> Result<u64, EntryError> {
    let v = numeric_i64(field)?;
    u64::try_from(v).map_err(|_| EntryError::Negative { value: v })
}

fn to_u32(v: u64, what: &'static str) -> Result<u32, EntryError> {
    u32::try_from(v).map_err(|_| EntryError::Over32Bits { what, value: v })
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

fn sparse_real_size(pax: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> Result<u64, EntryError> {
    pax_u64(pax, key).unwrap_or_else(|| {
        Err(EntryError::SparseNoSize {
            key: String::from_utf8_lossy(key).into_owned(),
        })
    })
}

/// Segments must be in order, inside the file, and add up to the stored data.
fn check_segments(segments: &[Segment], real_size: u64, stored: u64) -> Result<(), EntryError> {
    let mut end = 0u64;
    let mut total = 0u64;
    for s in segments {
        let s_end = s
            .offset
            .checked_add(s.len)
            .ok_or(EntryError::SparseSegmentOverflow)?;
        if s.offset < end || s_end > real_size {
            return Err(EntryError::SparseOrder);
        }
        end = s_end;
        total = total
            .checked_add(s.len)
            .ok_or(EntryError::SparseMapOverflow)?;
    }
    if total != stored {
        return Err(EntryError::SparseMapSize {
            covered: total,
            stored,
        });
    }
    Ok(())
}

fn push_segment(segments: &mut Vec<Segment>, offset: u64, len: u64) -> Result<(), EntryError> {
    if segments.len() >= MAX_SPARSE_SEGMENTS {
        return Err(EntryError::SparseSegments);
    }
    // GNU tar ends every map with a zero-length segment at the real size: not data.
    if len > 0 {
        segments.push(Segment { offset, len });
    }
    Ok(())
}

/// Old GNU sparse: four map slots in the header, then extension blocks of 21 slots each.
fn old_gnu_sparse<I: Input>(
    input: &mut I,
    block: &[u8; BLOCK as usize],
    offset: u64,
) -> Result<(Vec<Segment>, u64), ScanError> {
    let err = |reason: EntryError| bad_header(offset, block, reason);
    let mut segments = Vec::new();
    let mut read_slots = |slots: &[u8]| -> Result<(), EntryError> {
        for slot in slots.chunks_exact(24) {
            if slot[0] == 0 {
                break;
            }
            push_segment(
                &mut segments,
                numeric(&slot[..12])?,
                numeric(&slot[12..24])?,
            )?;
        }
        Ok(())
    };
    read_slots(&block[386..482]).map_err(err)?;
    let real = numeric(&block[483..495]).map_err(err)?;
    let mut extended = block[482] != 0;
    let mut ext = [0u8; BLOCK as usize];
    while extended {
        let at = input.position();
        let n = input
            .read_full(&mut ext)
            .map_err(|source| ScanError::Io { offset: at, source })?;
        if n < ext.len() {
            return Err(truncated(block, offset));
        }
        read_slots(&ext[..504]).map_err(err)?;
        extended = ext[504] != 0;
    }
    Ok((segments, real))
}

/// PAX sparse 0.0 (repeated offset/numbytes keys) and 0.1 (one comma-separated map).
fn sparse_v0_map(pax: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<Segment>, EntryError> {
    let mut numbers = Vec::new();
    if let Some(map) = pax_get(pax, b"GNU.sparse.map") {
        for n in map.split(|&b| b == b',').filter(|n| !n.is_empty()) {
            numbers.push(decimal(n)?);
        }
    } else {
        for (k, v) in pax {
            if k == b"GNU.sparse.offset" || k == b"GNU.sparse.numbytes" {
                numbers.push(decimal(v)?);
            }
        }
    }
    if numbers.len() % 2 != 0 {
        return Err(EntryError::SparseMapOdd);
    }
    let mut segments = Vec::new();
    for pair in numbers.chunks_exact(2) {
        push_segment(&mut segments, pair[0], pair[1])?;
    }
    Ok(segments)
}

fn decimal(v: &[u8]) -> Result<u64, EntryError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| EntryError::NotDecimal {
            text: String::from_utf8_lossy(v).into_owned(),
        })
}

/// PAX sparse 1.0: the map is decimal text at the start of the data (a count, then offset and
/// length pairs, one per line), padded to a block. Returns the map and its padded length.
fn sparse_v1_map<I: Input>(
    input: &mut I,
    size: u64,
    offset: u64,
    block: &[u8; BLOCK as usize],
) -> Result<(Vec<Segment>, u64), ScanError> {
    let err = |reason: EntryError| bad_header(offset, block, reason);
    let mut text = [0u8; BLOCK as usize];
    let mut used = 0u64; // map bytes read, whole blocks
    let mut numbers: Vec<u64> = Vec::new();
    let mut digits: Vec<u8> = Vec::new();
    let mut count: Option<u64> = None;
    loop {
        if used >= size {
            return Err(err(EntryError::SparseMapPastData));
        }
        let at = input.position();
        let n = input
            .read_full(&mut text)
            .map_err(|source| ScanError::Io { offset: at, source })?;
        if n < text.len() {
            return Err(truncated(block, offset));
        }
        used += BLOCK;
        for &b in &text {
            if b == b'\n' {
                let v = decimal(&digits).map_err(err)?;
                digits.clear();
                match count {
                    None => {
                        if v > MAX_SPARSE_SEGMENTS as u64 {
                            return Err(err(EntryError::SparseMapCount { count: v }));
                        }
                        count = Some(v);
                    }
                    Some(_) => numbers.push(v),
                }
            } else if b.is_ascii_digit() && digits.len() < 20 {
                digits.push(b);
            } else {
                return Err(err(EntryError::SparseMapText));
            }
            if count.is_some_and(|c| numbers.len() as u64 == c * 2) {
                let mut segments = Vec::new();
                for pair in numbers.chunks_exact(2) {
                    push_segment(&mut segments, pair[0], pair[1]).map_err(err)?;
                }
                return Ok((segments, used));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields() {
        let cases: &[(&[u8], Result<i64, ()>)] = &[
            (b"0000644\0", Ok(0o644)),
            (b"   755 \0", Ok(0o755)),
            (b"\0\0\0\0\0\0\0\0", Ok(0)),
            (b"\x80\0\0\0\0\0\0\0\0\0\x01\x00", Ok(256)),
            (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", Ok(-1)),
            (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe", Ok(-2)),
            (b"12x4\0", Err(())),
        ];
        for (field, want) in cases {
            assert_eq!(numeric_i64(field).map_err(|_| ()), *want, "{field:?}");
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(
            parse_pax_time(b"981173106.123456789"),
            Some((981173106, 123456789))
        );
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"7"), Some((7, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.2x"), None);
    }

    #[test]
    fn pax_records_keep_binary_values() {
        let value = b"a\nb\0c";
        let rec = [b"15 SCHILY.x=".as_slice(), value, b"\n"].concat();
        assert_eq!(rec.len(), 18);
        let rec = [b"18 SCHILY.x=".as_slice(), value, b"\n"].concat();
        let mut out = Vec::new();
        parse_pax(&rec, &mut out, &mut 0).unwrap();
        assert_eq!(out, vec![(b"SCHILY.x".to_vec(), value.to_vec())]);
        for bad in [&b"5 a=b\n"[..], b"99 a=b\n", b"x a=b\n", b"7 ab\nxx"] {
            assert!(parse_pax(bad, &mut Vec::new(), &mut 0).is_err(), "{bad:?}");
        }
    }

    /// Endless extension headers before one member cost bounded memory, then an error.
    #[test]
    fn extension_headers_are_bounded_per_member() {
        let mut records = Vec::new();
        for i in 0..300_000u32 {
            let r = format!(" c{i}=x\n");
            let n = (1..8)
                .map(|d| r.len() + d)
                .find(|n| n.to_string().len() + r.len() == *n)
                .unwrap();
            records.extend(format!("{n}{r}").into_bytes());
        }
        let mut out = Vec::new();
        let e = parse_pax(&records, &mut out, &mut 0).unwrap_err();
        assert!(matches!(e, EntryError::ExtensionBudget), "{e}");
        assert!(e.to_string().contains("exceed"), "{e}");
        assert!(
            out.len() as u64 <= MAX_META_LEN / PAX_RECORD_COST,
            "{}",
            out.len()
        );
    }

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
