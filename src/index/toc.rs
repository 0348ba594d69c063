//! The tables of contents lazy layer formats carry: eStargz's `stargz.index.json` (a gzip
//! member near the blob's end, found through its footer) and zstd:chunked's manifest (a
//! skippable zstd frame, found through the layer's annotations). Both are JSON lists of the
//! layer's tar entries in archive order, each regular file's data in compressed pieces that
//! decode on their own — an eStargz gzip member, a zstd:chunked zstd frame — with a SHA-256 of
//! the uncompressed data.
//!
//! [`parse`] takes the verified JSON (the caller checks it against the digest the manifest
//! names) and hands on the layer's [`Entry`] records, ready for [`super::tree::Tree`], and a
//! [`ChunkTable`]: the pieces as spans. A TOC has no offsets into the uncompressed tar, so the
//! entries' data offsets address a stream of imgfs's own — the spans' data back to back, as
//! much of each piece as its files use — and the table maps that stream to the blob. A span
//! is verified by the digests of the file data in it, never served before.
//!
//! Guarantees: any bytes give a table or one [`TocError`], never a panic; counts, sizes and
//! offsets are checked (spans in blob order, inside the blob, each file's pieces back to back
//! in the stream), allocation is bounded by the JSON's own size. Kinds of data imgfs does not
//! know are refused: the caller then fetches the layer whole.
//!
//! A name the TOC cannot say exactly (Go's JSON writes bytes that are not UTF-8 as U+FFFD) is
//! read from the layer's own tar header: [`Toc::unsaid`] names the compressed bytes that hold
//! it (from the member or frame of the last file data before it to the next), and
//! [`say_exactly`] takes the header's name there only when it reads as the TOC's does, byte
//! for byte where the TOC's is UTF-8. So such a name keeps the TOC's text and places; the bytes
//! the TOC replaced are the header's.

use std::io::Read;
use std::ops::Range;

use sha2::{Digest, Sha256};

use super::scan::{Entry, Kind};

/// eStargz's footer: an empty gzip member whose extra field names the TOC's offset.
pub(crate) const ESTARGZ_FOOTER_LEN: u64 = 51;
/// The TOC's name inside its gzip member, and the landmarks: entries of the format, not of
/// the image, which a mount hides (as stargz-snapshotter does).
pub(crate) const ESTARGZ_TOC_NAME: &str = "stargz.index.json";
pub(crate) const ESTARGZ_LANDMARKS: [&str; 2] = [".prefetch.landmark", ".no.prefetch.landmark"];
const ESTARGZ_PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// The layer annotation that marks an eStargz layer: the digest of its TOC's JSON.
pub(crate) const ESTARGZ_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

/// Whether an eStargz layer's entry at `path` is one of the format's (the TOC, a landmark).
pub(crate) fn is_format_entry(path: &[u8]) -> bool {
    let mut p = path;
    while let Some(rest) = p.strip_prefix(b"./").or_else(|| p.strip_prefix(b"/")) {
        p = rest;
    }
    p == ESTARGZ_TOC_NAME.as_bytes() || ESTARGZ_LANDMARKS.iter().any(|l| p == l.as_bytes())
}
/// Largest TOC accepted, uncompressed: a layer of a million files has a TOC of a few hundred
/// megabytes at most; the bound stops a hostile size from allocating more.
pub(crate) const MAX_TOC: u64 = 512 << 20;
/// Longest name or link target accepted (Linux's PATH_MAX is 4 KiB; tar allows longer).
const MAX_NAME: usize = 64 << 10;

/// Which format a TOC is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TocFormat {
    /// eStargz: gzip members; a TOC offset bounds the last one.
    Estargz,
    /// zstd:chunked: zstd frames with their exact ends.
    ZstdChunked,
}

impl TocFormat {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TocFormat::Estargz => "estargz",
            TocFormat::ZstdChunked => "zstd-chunked",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<TocFormat> {
        match name {
            "estargz" => Some(TocFormat::Estargz),
            "zstd-chunked" => Some(TocFormat::ZstdChunked),
            _ => None,
        }
    }
}

/// Why a TOC cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    #[error("the TOC is not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("TOC version {0} is not one imgfs reads")]
    Version(i64),
    #[error("TOC entry {index}: {what}")]
    Entry { index: usize, what: String },
    #[error(
        "TOC entry {index} ('{name}'): its name is not UTF-8 in the tar, and no tar header there says it"
    )]
    Lossy { index: usize, name: String },
    #[error(
        "TOC entry {index}: data at {offset} is out of order or outside the blob ({size} bytes)"
    )]
    Offset {
        index: usize,
        offset: u64,
        size: u64,
    },
    #[error("TOC entry {index}: the file's pieces do not follow each other")]
    Discontiguous { index: usize },
    #[error("the eStargz footer is not one: {0}")]
    Footer(&'static str),
}

impl From<serde_json::Error> for TocError {
    /// The message quotes the parser's, so it is not also the error's source.
    fn from(e: serde_json::Error) -> TocError {
        TocError::Json(e)
    }
}

/// One piece of the blob that decodes on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    /// Its bytes in the compressed blob.
    pub compressed: Range<u64>,
    /// What it yields in imgfs's stream (the first bytes of its output).
    pub uncompressed: Range<u64>,
    /// The file data in it: a range of its output and the data's SHA-256.
    checks: Vec<(Range<u64>, [u8; 32])>,
}

/// A layer's pieces in blob order, with what each must decode to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkTable {
    format: TocFormat,
    compressed_size: u64,
    uncompressed_size: u64,
    spans: Vec<ChunkSpan>,
}

/// Why a span's bytes cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("span {0} does not exist")]
    NoSuchSpan(usize),
    #[error("span {index} does not decode: {why}")]
    Corrupt { index: usize, why: String },
    #[error("span {0} does not match its digests")]
    Mismatch(usize),
}

impl ChunkTable {
    pub(crate) fn compressed_size(&self) -> u64 {
        self.compressed_size
    }

    pub fn uncompressed_size(&self) -> u64 {
        self.uncompressed_size
    }

    pub fn spans(&self) -> &[ChunkSpan] {
        &self.spans
    }

    /// Index of the span holding stream offset `at`, None past the end.
    pub fn span_at(&self, at: u64) -> Option<usize> {
        let i = self.spans.partition_point(|s| s.uncompressed.end <= at);
        self.spans
            .get(i)
            .filter(|s| s.uncompressed.contains(&at))
            .map(|_| i)
    }

    /// Decodes span `i` from its compressed bytes and checks every file digest in it:
    /// exactly the span's output, or an error.
    pub fn open_span(&self, i: usize, compressed: &[u8]) -> Result<Vec<u8>, ChunkError> {
        let span = self.spans.get(i).ok_or(ChunkError::NoSuchSpan(i))?;
        let want = span.uncompressed.end - span.uncompressed.start;
        let corrupt = |why: String| ChunkError::Corrupt { index: i, why };
        let mut out = Vec::with_capacity(want.min(compressed.len() as u64 * 8) as usize);
        match self.format {
            TocFormat::Estargz => {
                // One gzip member: what follows the piece in it (tar padding, the next
                // headers) is not wanted.
                flate2::read::GzDecoder::new(compressed)
                    .take(want)
                    .read_to_end(&mut out)
                    .map_err(|e| corrupt(e.to_string()))?;
            }
            TocFormat::ZstdChunked => {
                zstd::stream::read::Decoder::new(compressed)
                    .map_err(|e| corrupt(e.to_string()))?
                    .single_frame()
                    .take(want)
                    .read_to_end(&mut out)
                    .map_err(|e| corrupt(e.to_string()))?;
            }
        }
        if out.len() as u64 != want {
            return Err(corrupt(format!("{} bytes of {want}", out.len())));
        }
        for (range, digest) in &span.checks {
            let data = &out[range.start as usize..range.end as usize];
            if Sha256::digest(data).as_slice() != digest {
                return Err(ChunkError::Mismatch(i));
            }
        }
        Ok(out)
    }
}

/// A layer's entries and pieces, from its TOC.
#[derive(Debug)]
pub struct Toc {
    /// The layer's entries in archive order, data offsets into the table's stream.
    pub entries: Vec<Entry>,
    pub table: ChunkTable,
    /// Spans before eStargz's prefetch landmark: what the image's producer asks to have first.
    pub prefetch: Vec<usize>,
    /// Where the tar headers of entries whose names (or link targets) the TOC cannot say lie,
    /// in blob order; [`say_exactly`] reads them.
    pub unsaid: Vec<Unsaid>,
}

/// Compressed bytes of a layer that hold the tar headers of entries the TOC names inexactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsaid {
    /// Whole gzip members or zstd frames: from the one holding the last file data before the
    /// entries to the next that starts file data (or where file data ends).
    pub compressed: Range<u64>,
    /// Bytes of their output before the first header: the rest of that file's data, padded.
    pub skip: u64,
    /// The entries (indices into [`Toc::entries`]) whose headers are there, in archive order.
    pub entries: Vec<usize>,
}

/// One TOC entry as both formats write it (eStargz's `TOCEntry`, zstd:chunked's
/// `FileMetadata`: the same JSON names for what imgfs uses).
#[derive(serde::Deserialize)]
struct JsonEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    modtime: Option<String>,
    #[serde(default, rename = "linkName")]
    link_name: String,
    #[serde(default)]
    mode: i64,
    #[serde(default)]
    uid: i64,
    #[serde(default)]
    gid: i64,
    #[serde(default)]
    offset: i64,
    #[serde(default, rename = "endOffset")]
    end_offset: i64,
    #[serde(default, rename = "innerOffset")]
    inner_offset: i64,
    #[serde(default, rename = "devMajor")]
    dev_major: i64,
    #[serde(default, rename = "devMinor")]
    dev_minor: i64,
    #[serde(default)]
    xattrs: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default, rename = "chunkOffset")]
    chunk_offset: i64,
    #[serde(default, rename = "chunkSize")]
    chunk_size: i64,
    #[serde(default, rename = "chunkDigest")]
    chunk_digest: Option<String>,
    #[serde(default, rename = "chunkType")]
    chunk_type: Option<String>,
}

#[derive(serde::Deserialize)]
struct JsonToc {
    version: i64,
    entries: Vec<JsonEntry>,
}

/// A piece of file data as the TOC places it.
struct Piece {
    /// The entry it came from, for messages; the file it belongs to (index into entries).
    index: usize,
    file: usize,
    /// Where its decodable piece starts in the blob; where its file's last piece ends, when
    /// the format says (zstd:chunked's `endOffset`).
    offset: u64,
    file_end: Option<u64>,
    /// Its place in the piece's output, and in the file.
    inner: u64,
    chunk_offset: u64,
    size: u64,
    digest: [u8; 32],
}

/// Reads a TOC (already verified against its digest). `data_end` is where file data ends in
/// the blob: the TOC's own offset for eStargz, the blob's size otherwise.
pub fn parse(
    format: TocFormat,
    json: &[u8],
    blob_size: u64,
    data_end: u64,
) -> Result<Toc, TocError> {
    let toc: JsonToc = serde_json::from_slice(json)?;
    if toc.version != 1 {
        return Err(TocError::Version(toc.version));
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(toc.entries.len());
    let mut pieces: Vec<Piece> = Vec::new();
    // The regular file the next "chunk" entries continue, with its size and data's end.
    let mut open_file: Option<(usize, u64, Option<u64>)> = None;
    let mut landmark: Option<u64> = None;
    // Entries whose name or link target is not the tar's exact bytes: JSON index, entry.
    let mut lossy: Vec<(usize, usize)> = Vec::new();
    let bad = |index: usize, what: &str| TocError::Entry {
        index,
        what: what.to_string(),
    };
    for (index, e) in toc.entries.iter().enumerate() {
        if e.kind == "chunk" {
            let (file, size, end) =
                open_file.ok_or_else(|| bad(index, "a chunk follows no file"))?;
            pieces.push(piece(format, index, (file, size, end), e)?);
            continue;
        }
        open_file = None;
        let name = checked_name(index, &e.name)?;
        if format == TocFormat::Estargz && is_format_entry(name.as_bytes()) {
            if name.trim_start_matches(['.', '/']) == &ESTARGZ_PREFETCH_LANDMARK[1..] {
                landmark = Some(nonneg(index, e.offset, "offset")?);
            }
            continue;
        }
        let kind = match e.kind.as_str() {
            "reg" => Kind::File,
            "dir" => Kind::Directory,
            "symlink" => Kind::Symlink,
            "hardlink" => Kind::HardLink,
            "char" => Kind::CharDevice,
            "block" => Kind::BlockDevice,
            "fifo" => Kind::Fifo,
            other => return Err(bad(index, &format!("unknown type '{other}'"))),
        };
        let size = if kind == Kind::File {
            nonneg(index, e.size, "size")?
        } else {
            0
        };
        let link = match kind {
            Kind::Symlink | Kind::HardLink => {
                checked_name(index, &e.link_name)?.as_bytes().to_vec()
            }
            _ => Vec::new(),
        };
        let (mtime, mtime_nsec) = match e.modtime.as_deref() {
            None | Some("") => (0, 0),
            Some(t) => parse_rfc3339(t).ok_or_else(|| bad(index, &format!("bad modtime '{t}'")))?,
        };
        let mut xattrs = Vec::new();
        for (k, v) in e.xattrs.iter().flatten() {
            use base64::Engine as _;
            let value = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|_| bad(index, &format!("xattr '{k}' is not base64")))?;
            xattrs.push((k.as_bytes().to_vec(), value));
        }
        let file = entries.len();
        if is_lossy(name) || is_lossy(&e.link_name) {
            lossy.push((index, file));
        }
        entries.push(Entry {
            header_offset: index as u64,
            path: name.as_bytes().to_vec(),
            kind: Some(kind),
            link,
            mode: (e.mode & 0o7777) as u32,
            uid: id(index, e.uid, "uid")?,
            gid: id(index, e.gid, "gid")?,
            mtime,
            mtime_nsec,
            size,
            data_offset: 0,
            sparse: None,
            dev_major: id(index, e.dev_major, "devMajor")?,
            dev_minor: id(index, e.dev_minor, "devMinor")?,
            xattrs,
        });
        if kind == Kind::File && size > 0 {
            let end = match format {
                TocFormat::Estargz => None,
                TocFormat::ZstdChunked => Some(nonneg(index, e.end_offset, "endOffset")?),
            };
            pieces.push(piece(format, index, (file, size, end), e)?);
            open_file = Some((file, size, end));
        }
    }
    let (table, prefetch) = lay_out(format, &mut entries, &pieces, blob_size, data_end, landmark)?;
    let unsaid = header_ranges(&lossy, &pieces, &entries, &table.spans, data_end)?;
    Ok(Toc {
        entries,
        table,
        prefetch,
        unsaid,
    })
}

/// Where the headers of the `lossy` entries (JSON index, entry) are: after the last piece of
/// file data before each, in its member or frame and those up to the next piece's.
fn header_ranges(
    lossy: &[(usize, usize)],
    pieces: &[Piece],
    entries: &[Entry],
    spans: &[ChunkSpan],
    data_end: u64,
) -> Result<Vec<Unsaid>, TocError> {
    let mut out: Vec<Unsaid> = Vec::new();
    for &(index, entry) in lossy {
        let unsaid = || TocError::Lossy {
            index,
            name: String::from_utf8_lossy(&entries[entry].path).into_owned(),
        };
        let (compressed, skip) = match pieces.partition_point(|p| p.index < index) {
            // No file data before it: its header is in the blob's first members.
            0 => (0..spans.first().map_or(data_end, |s| s.compressed.start), 0),
            k => {
                let at = pieces[k - 1].offset;
                let s = spans.partition_point(|s| s.compressed.start < at);
                let span = spans.get(s).filter(|s| s.compressed.start == at);
                // The member's output starts with the data of its first piece, and runs to
                // that file's end: the file's later pieces, had it any, would lie between.
                let first = &pieces[pieces.partition_point(|p| p.offset < at)];
                let (Some(span), 0) = (span, first.inner) else {
                    return Err(unsaid());
                };
                let size = entries[first.file].size;
                let end = spans.get(s + 1).map_or(data_end, |n| n.compressed.start);
                (
                    span.compressed.start..end,
                    size - first.chunk_offset + size.wrapping_neg() % 512,
                )
            }
        };
        match out.last_mut() {
            Some(u) if u.compressed == compressed => u.entries.push(entry),
            _ => out.push(Unsaid {
                compressed,
                skip,
                entries: vec![entry],
            }),
        }
    }
    Ok(out)
}

/// Most output read from an [`Unsaid`]'s bytes: the headers are within its file data and
/// padding, which a hostile blob could make a decompression bomb of.
const MAX_UNSAID_OUTPUT: u64 = 1 << 30;

/// Gives `unsaid`'s entries the names (and link targets) of their tar headers, read from
/// `compressed` (the bytes of [`Unsaid::compressed`]). A header is taken for the next entry
/// still unsaid when its name and target read as the entry's do, Go's way (each byte that is
/// not UTF-8 one U+FFFD) or Rust's; the TOC keeps archive order, so two names alike but for
/// such bytes go to their own entries. An entry no header says is an error.
pub fn say_exactly(
    format: TocFormat,
    entries: &mut [Entry],
    unsaid: &Unsaid,
    compressed: &[u8],
) -> Result<(), TocError> {
    let decoder: Box<dyn Read + '_> = match format {
        TocFormat::Estargz => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        TocFormat::ZstdChunked => match zstd::stream::read::Decoder::new(compressed) {
            Ok(d) => Box::new(d),
            Err(_) => Box::new(std::io::empty()),
        },
    };
    let mut output = decoder.take(MAX_UNSAID_OUTPUT);
    let skipped = std::io::copy(&mut output.by_ref().take(unsaid.skip), &mut std::io::sink());
    let mut want = unsaid.entries.iter().copied().peekable();
    if skipped.ok() == Some(unsaid.skip) {
        let mut archive = tar::Archive::new(output);
        if let Ok(headers) = archive.entries() {
            for header in headers {
                let (Some(&i), Ok(header)) = (want.peek(), header) else {
                    break;
                };
                let path = header.path_bytes();
                let link = header.link_name_bytes();
                let e = &entries[i];
                let link_says = match &link {
                    Some(l) => reads_as(l, &e.link),
                    None => e.link.is_empty(),
                };
                if reads_as(&path, &e.path) && link_says {
                    let e = &mut entries[i];
                    e.path = path.into_owned();
                    if let Some(l) = link {
                        e.link = l.into_owned();
                    }
                    want.next();
                }
            }
        }
    }
    match want.next() {
        None => Ok(()),
        Some(i) => Err(TocError::Lossy {
            index: entries[i].header_offset as usize,
            name: String::from_utf8_lossy(&entries[i].path).into_owned(),
        }),
    }
}

/// Whether a name from a tar header reads as the TOC's `said` once its bytes that are not
/// UTF-8 are replaced, leading `./` and `/` and trailing `/` aside.
fn reads_as(exact: &[u8], said: &[u8]) -> bool {
    fn trimmed(mut p: &[u8]) -> &[u8] {
        while let Some(rest) = p.strip_prefix(b"./").or_else(|| p.strip_prefix(b"/")) {
            p = rest;
        }
        while let Some(rest) = p.strip_suffix(b"/") {
            p = rest;
        }
        p
    }
    let (exact, said) = (trimmed(exact), trimmed(said));
    go_lossy(exact).as_bytes() == said || String::from_utf8_lossy(exact).as_bytes() == said
}

/// `bytes` as Go's JSON writes them: each byte that does not start a UTF-8 character is U+FFFD.
fn go_lossy(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, bad) = bytes.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                out.push('\u{FFFD}');
                bytes = &bad[1..];
            }
        }
    }
}

/// A data entry's piece, checked on its own.
fn piece(
    format: TocFormat,
    index: usize,
    (file, file_size, file_end): (usize, u64, Option<u64>),
    e: &JsonEntry,
) -> Result<Piece, TocError> {
    let bad = |what: &str| TocError::Entry {
        index,
        what: what.to_string(),
    };
    // zstd:chunked marks a chunk of zeros ("zeros"), yet writes its frame all the same.
    if e.chunk_type
        .as_deref()
        .is_some_and(|t| !["", "data", "zeros"].contains(&t))
    {
        return Err(bad("a chunk type other than data or zeros"));
    }
    let chunk_offset = nonneg(index, e.chunk_offset, "chunkOffset")?;
    let chunk_size = nonneg(index, e.chunk_size, "chunkSize")?;
    if chunk_offset >= file_size {
        return Err(bad("a chunk past the file's end"));
    }
    // A chunk size of zero: to the end of the file.
    let size = if chunk_size == 0 {
        file_size - chunk_offset
    } else {
        chunk_size
    };
    if size > file_size - chunk_offset {
        return Err(bad("a chunk past the file's end"));
    }
    let digest = match (&e.chunk_digest, &e.digest) {
        (Some(d), _) => d,
        (None, Some(d)) if chunk_offset == 0 && size == file_size => d,
        _ => return Err(bad("data without a digest")),
    };
    let digest = sha256_of(digest).ok_or_else(|| bad(&format!("digest '{digest}'")))?;
    let offset = nonneg(index, e.offset, "offset")?;
    let inner = match format {
        TocFormat::Estargz => nonneg(index, e.inner_offset, "innerOffset")?,
        TocFormat::ZstdChunked => 0,
    };
    Ok(Piece {
        index,
        file,
        offset,
        file_end,
        inner,
        chunk_offset,
        size,
        digest,
    })
}

/// Makes spans of the pieces (one per decodable piece of the blob, in blob order) and sets
/// each file's data offset into the stream they make.
fn lay_out(
    format: TocFormat,
    entries: &mut [Entry],
    pieces: &[Piece],
    blob_size: u64,
    data_end: u64,
    landmark: Option<u64>,
) -> Result<(ChunkTable, Vec<usize>), TocError> {
    let mut spans: Vec<ChunkSpan> = Vec::new();
    // Where each piece lands in the stream.
    let mut placed: Vec<u64> = Vec::with_capacity(pieces.len());
    let out_of_order = |p: &Piece| TocError::Offset {
        index: p.index,
        offset: p.offset,
        size: blob_size,
    };
    for (k, p) in pieces.iter().enumerate() {
        if p.offset >= data_end {
            return Err(out_of_order(p));
        }
        let same = spans.last().is_some_and(|s| s.compressed.start == p.offset);
        if !same {
            if spans
                .last()
                .is_some_and(|last| last.compressed.end > p.offset)
            {
                return Err(out_of_order(p));
            }
            // A piece ends where the next begins: eStargz's next gzip member (what lies
            // between is the next entries' headers), zstd:chunked's file's next chunk or else
            // the file's end.
            let next = pieces[k + 1..].iter().find(|q| q.offset != p.offset);
            let end = match (format, next) {
                (TocFormat::Estargz, Some(q)) => q.offset,
                (TocFormat::Estargz, None) => data_end,
                (TocFormat::ZstdChunked, Some(q)) if q.file == p.file => q.offset,
                (TocFormat::ZstdChunked, _) => p.file_end.unwrap_or(0),
            };
            if end <= p.offset || end > data_end {
                return Err(out_of_order(p));
            }
            let start = spans.last().map_or(0, |s| s.uncompressed.end);
            spans.push(ChunkSpan {
                compressed: p.offset..end,
                uncompressed: start..start,
                checks: Vec::new(),
            });
        } else if format == TocFormat::ZstdChunked {
            // A zstd frame holds one piece.
            return Err(out_of_order(p));
        }
        let span = spans.last_mut().expect("a span was pushed above");
        let piece_end = p.inner.checked_add(p.size).ok_or_else(|| out_of_order(p))?;
        let span_len = span.uncompressed.end - span.uncompressed.start;
        // Pieces of one span are in order; a later span starts where this one's data ends,
        // so a span only grows while it is the last.
        if piece_end > span_len {
            span.uncompressed.end = span
                .uncompressed
                .start
                .checked_add(piece_end)
                .ok_or_else(|| out_of_order(p))?;
        }
        span.checks.push((p.inner..piece_end, p.digest));
        placed.push(span.uncompressed.start + p.inner);
    }
    // Each file's pieces back to back from its first, covering the file.
    let mut next: Option<(usize, u64, u64)> = None; // file, stream offset, file offset
    for (p, &at) in pieces.iter().zip(&placed) {
        match next {
            Some((file, want_at, want_off)) if file == p.file => {
                if at != want_at || p.chunk_offset != want_off {
                    return Err(TocError::Discontiguous { index: p.index });
                }
            }
            _ => {
                if p.chunk_offset != 0 {
                    return Err(TocError::Discontiguous { index: p.index });
                }
                entries[p.file].data_offset = at;
            }
        }
        next = Some((p.file, at + p.size, p.chunk_offset + p.size));
    }
    // Every file's pieces reach its end.
    let mut reached = vec![0u64; entries.len()];
    for p in pieces {
        reached[p.file] = reached[p.file].max(p.chunk_offset + p.size);
    }
    for (file, e) in entries.iter().enumerate() {
        if e.kind() == Kind::File && e.size > 0 && reached[file] != e.size {
            return Err(TocError::Discontiguous {
                index: e.header_offset as usize,
            });
        }
    }
    let prefetch = match landmark {
        Some(end) => (0..spans.len())
            .filter(|&i| spans[i].compressed.start < end)
            .collect(),
        None => Vec::new(),
    };
    let uncompressed_size = spans.last().map_or(0, |s| s.uncompressed.end);
    Ok((
        ChunkTable {
            format,
            compressed_size: blob_size,
            uncompressed_size,
            spans,
        },
        prefetch,
    ))
}

fn nonneg(index: usize, v: i64, what: &str) -> Result<u64, TocError> {
    u64::try_from(v).map_err(|_| TocError::Entry {
        index,
        what: format!("negative {what}"),
    })
}

fn id(index: usize, v: i64, what: &str) -> Result<u32, TocError> {
    u32::try_from(v).map_err(|_| TocError::Entry {
        index,
        what: format!("{what} {v} is out of range"),
    })
}

/// Whether a name as the TOC gives it may not be the tar's bytes: Go's JSON writes each byte
/// that is not UTF-8 as U+FFFD.
fn is_lossy(name: &str) -> bool {
    name.contains('\u{FFFD}')
}

/// A name as the TOC gives it, refused when too long or with a NUL.
fn checked_name(index: usize, name: &str) -> Result<&str, TocError> {
    if name.len() > MAX_NAME || name.contains('\0') {
        return Err(TocError::Entry {
            index,
            what: "a name too long or with a NUL".to_string(),
        });
    }
    Ok(name)
}

/// The 32 bytes of a `sha256:<64 hex>` digest.
fn sha256_of(digest: &str) -> Option<[u8; 32]> {
    let hex = digest.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Seconds and nanoseconds since the epoch of an RFC 3339 time (`2026-11-30T20:26:42Z`,
/// `…42.123456789+02:00`), as Go writes them.
pub(crate) fn parse_rfc3339(t: &str) -> Option<(i64, u32)> {
    let b = t.as_bytes();
    let num = |r: Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut at = 19;
    let mut nsec: u32 = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        let digits = &t[start..at];
        if digits.is_empty() {
            return None;
        }
        let mut n: u32 = 0;
        for (i, c) in digits.bytes().take(9).enumerate() {
            n += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
        }
        nsec = n;
    }
    let offset = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |x: u8, y: u8| -> Option<i64> {
                (x.is_ascii_digit() && y.is_ascii_digit())
                    .then(|| i64::from(x - b'0') * 10 + i64::from(y - b'0'))
            };
            let secs = two(*h1, *h2)? * 3600 + two(*m1, *m2)? * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3600 + min * 60 + sec - offset, nsec))
}

/// The TOC's offset from an eStargz footer (the blob's last [`ESTARGZ_FOOTER_LEN`] bytes):
/// an empty gzip member whose extra field holds `%016x` of the offset then `STARGZ`.
pub(crate) fn estargz_footer(footer: &[u8]) -> Result<u64, TocError> {
    if footer.len() as u64 != ESTARGZ_FOOTER_LEN {
        return Err(TocError::Footer("not 51 bytes"));
    }
    if footer[..4] != [0x1f, 0x8b, 0x08, 0x04] {
        return Err(TocError::Footer("not a gzip header with an extra field"));
    }
    // XLEN 26, then subfield 'S' 'G' of length 22.
    if footer[10..16] != [26, 0, b'S', b'G', 22, 0] || &footer[32..38] != b"STARGZ" {
        return Err(TocError::Footer("no STARGZ extra field"));
    }
    let hex = std::str::from_utf8(&footer[16..32]).map_err(|_| TocError::Footer("offset"))?;
    u64::from_str_radix(hex, 16).map_err(|_| TocError::Footer("offset"))
}

/// The JSON of an eStargz TOC from its gzip member (a tar holding [`ESTARGZ_TOC_NAME`]),
/// read no further than [`MAX_TOC`].
pub(crate) fn estargz_toc_json(member: &[u8]) -> Result<Vec<u8>, TocError> {
    let gz = flate2::read::GzDecoder::new(member).take(MAX_TOC + 4096);
    let mut archive = tar::Archive::new(gz);
    let entries = archive
        .entries()
        .map_err(|_| TocError::Footer("the TOC member is not a tar"))?;
    for entry in entries {
        let mut entry = entry.map_err(|_| TocError::Footer("the TOC member is not a tar"))?;
        let is_toc = entry
            .path_bytes()
            .as_ref()
            .strip_prefix(b"./")
            .unwrap_or(&entry.path_bytes())
            == ESTARGZ_TOC_NAME.as_bytes();
        if is_toc {
            let mut json = Vec::new();
            entry
                .by_ref()
                .take(MAX_TOC)
                .read_to_end(&mut json)
                .map_err(|_| TocError::Footer("the TOC does not decompress"))?;
            return Ok(json);
        }
    }
    Err(TocError::Footer("the TOC member has no stargz.index.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn estargz(entries: &[String]) -> Result<Toc, TocError> {
        let json = format!(r#"{{"version":1,"entries":[{}]}}"#, entries.join(","));
        parse(TocFormat::Estargz, json.as_bytes(), 10_000, 9_000)
    }

    fn file(name: &str, size: u64, offset: u64) -> String {
        format!(
            r#"{{"type":"reg","name":"{name}","size":{size},"offset":{offset},"chunkDigest":"{}"}}"#,
            digest(1)
        )
    }

    #[test]
    fn files_are_laid_out_back_to_back_and_landmark_entries_hidden() {
        let toc = estargz(&[
            r#"{"type":"dir","name":"a/","mode":16877}"#.into(),
            file("a/x", 10, 100),
            file(".prefetch.landmark", 1, 200),
            file("a/y", 5, 300),
            r#"{"type":"reg","name":"stargz.index.json","size":3,"offset":400}"#.into(),
        ])
        .unwrap();
        let names: Vec<&[u8]> = toc.entries.iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(names, [&b"a/"[..], b"a/x", b"a/y"]);
        assert_eq!(toc.entries[0].mode, 0o755);
        assert_eq!(
            (toc.entries[1].data_offset, toc.entries[2].data_offset),
            (0, 10)
        );
        let spans = toc.table.spans();
        assert_eq!(spans.len(), 2);
        assert_eq!(
            (spans[0].compressed.clone(), spans[1].compressed.clone()),
            (100..300, 300..9_000)
        );
        assert_eq!(toc.table.uncompressed_size(), 15);
        // The files before the landmark (at 200) are the producer's prefetch.
        assert_eq!(toc.prefetch, [0]);
    }

    #[test]
    fn what_a_toc_cannot_say_is_refused() {
        let cases: [(&str, Vec<String>); 5] = [
            ("out of order", vec![file("a", 1, 300), file("b", 1, 100)]),
            ("past the data", vec![file("a", 1, 9_500)]),
            (
                "no digest",
                vec![r#"{"type":"reg","name":"a","size":1,"offset":100}"#.into()],
            ),
            (
                "chunk without file",
                vec![r#"{"type":"chunk","name":"a","offset":100}"#.into()],
            ),
            (
                "gap between chunks",
                vec![
                    format!(
                        r#"{{"type":"reg","name":"a","size":10,"offset":100,"chunkSize":4,"chunkDigest":"{}"}}"#,
                        digest(1)
                    ),
                    format!(
                        r#"{{"type":"chunk","name":"a","offset":200,"chunkOffset":5,"chunkDigest":"{}"}}"#,
                        digest(2)
                    ),
                ],
            ),
        ];
        for (what, entries) in cases {
            assert!(estargz(&entries).is_err(), "{what} was accepted");
        }
    }

    /// A layer as both formats lay one out, from tar entries (name, kind, data, link): the tar
    /// stream cut where each file's data starts (and, for zstd:chunked, ends), each piece
    /// compressed on its own; and the TOC the format's Go writer would make of it.
    fn layer(format: TocFormat, items: &[Item]) -> (Vec<u8>, String) {
        use std::os::unix::ffi::OsStrExt;
        let path = |b: &[u8]| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b));
        let mut builder = tar::Builder::new(Vec::new());
        // Where each entry's data starts and ends in the tar.
        let mut cuts = Vec::new();
        for (name, kind, data, link) in items {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if link.is_empty() {
                builder.append_data(&mut h, path(name), *data).unwrap();
            } else {
                builder.append_link(&mut h, path(name), path(link)).unwrap();
            }
            let end = builder.get_ref().len();
            let start = end - data.len().next_multiple_of(512);
            cuts.push((start, start + data.len()));
        }
        let tar = builder.into_inner().unwrap();
        let mut bounds = vec![0];
        for ((_, _, data, _), cut) in items.iter().zip(&cuts) {
            if !data.is_empty() {
                bounds.push(cut.0);
                if format == TocFormat::ZstdChunked {
                    bounds.push(cut.1);
                }
            }
        }
        bounds.push(tar.len());
        let mut blob = Vec::new();
        let mut at = std::collections::HashMap::new();
        for w in bounds.windows(2) {
            at.insert(w[0], blob.len());
            let piece = &tar[w[0]..w[1]];
            match format {
                TocFormat::Estargz => {
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    std::io::Write::write_all(&mut gz, piece).unwrap();
                    blob.extend(gz.finish().unwrap());
                }
                TocFormat::ZstdChunked => blob.extend(zstd::bulk::compress(piece, 1).unwrap()),
            }
        }
        at.insert(tar.len(), blob.len());
        let entries: Vec<String> = items
            .iter()
            .zip(&cuts)
            .map(|((name, kind, data, link), cut)| {
                let kind = match kind {
                    tar::EntryType::Regular => "reg",
                    tar::EntryType::Directory => "dir",
                    tar::EntryType::Symlink => "symlink",
                    _ => "hardlink",
                };
                let (offset, end) = match data.is_empty() {
                    true => (0, 0),
                    false => (at[&cut.0], at.get(&cut.1).copied().unwrap_or(0)),
                };
                let hex: String = Sha256::digest(data)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                serde_json::json!({
                    "type": kind, "name": go_lossy(name), "linkName": go_lossy(link),
                    "size": data.len(), "offset": offset, "endOffset": end,
                    "digest": format!("sha256:{hex}"),
                })
                .to_string()
            })
            .collect();
        let json = format!(r#"{{"version":1,"entries":[{}]}}"#, entries.join(","));
        (blob, json)
    }

    /// A tar entry: name, kind, data, link target.
    type Item<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

    /// Reads `json` over `blob` as imgfs does: the TOC, then the headers of what it cannot say.
    fn read_layer(format: TocFormat, blob: &[u8], json: &str) -> Result<Toc, TocError> {
        let size = blob.len() as u64;
        let mut toc = parse(format, json.as_bytes(), size, size)?;
        for u in &toc.unsaid {
            let bytes = &blob[u.compressed.start as usize..u.compressed.end as usize];
            say_exactly(format, &mut toc.entries, u, bytes)?;
        }
        Ok(toc)
    }

    #[test]
    fn names_a_toc_cannot_say_are_read_from_their_headers() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let long: Vec<u8> = [b'd'; 150].iter().chain(b"/\xff-long").copied().collect();
        let items: [Item; 10] = [
            (b"d\xe9/", Directory, b"", b""),
            (b"ok", Regular, &[7u8; 700], b""),
            (b"d\xe9/a\xe9", Regular, b"first", b""),
            (b"d\xe9/a\xf6", Regular, b"second", b""),
            (b"d\xe9/empty\xfc", Regular, b"", b""),
            (b"d\xe9/to-a", Symlink, b"", b"a\xe9"),
            (b"d\xe9/hard", Link, b"", b"d\xe9/a\xf6"),
            (b"d\xe9/\xef\xbf\xbd", Regular, b"a U+FFFD of its own", b""),
            (&long, Regular, b"long", b""),
            (b"last\xc3", Directory, b"", b""),
        ];
        for format in [TocFormat::Estargz, TocFormat::ZstdChunked] {
            let (blob, json) = layer(format, &items);
            let toc = read_layer(format, &blob, &json).unwrap();
            assert_eq!(toc.unsaid.len(), 6, "{format:?}: {:?}", toc.unsaid);
            let got: Vec<(&[u8], &[u8])> = toc
                .entries
                .iter()
                .map(|e| (e.path.as_slice(), e.link.as_slice()))
                .collect();
            let want: Vec<(&[u8], &[u8])> = items.iter().map(|i| (i.0, i.3)).collect();
            assert_eq!(got, want, "{format:?}");
            assert_eq!(toc.table.uncompressed_size(), 700 + 5 + 6 + 19 + 4);
        }
    }

    #[test]
    fn a_header_that_does_not_read_as_the_toc_is_refused() {
        let items: [Item; 2] = [
            (b"ok", tar::EntryType::Regular, b"data", b""),
            (b"a\xe9", tar::EntryType::Regular, b"x", b""),
        ];
        for format in [TocFormat::Estargz, TocFormat::ZstdChunked] {
            let (blob, json) = layer(format, &items);
            for to in ["b\u{fffd}", "a\u{fffd}\u{fffd}"] {
                let json = json.replace("a\u{fffd}", to);
                let err = read_layer(format, &blob, &json).unwrap_err();
                assert!(matches!(err, TocError::Lossy { index: 1, .. }), "{err}");
            }
            // The bytes where the header is, damaged: refused, never a panic.
            let size = blob.len() as u64;
            let there = parse(format, json.as_bytes(), size, size).unwrap().unsaid[0]
                .compressed
                .clone();
            let mut damaged = blob.clone();
            damaged[(there.start + there.end) as usize / 2..there.end as usize].fill(0xAA);
            let err = read_layer(format, &damaged, &json).unwrap_err();
            assert!(matches!(err, TocError::Lossy { index: 1, .. }), "{err}");
        }
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_rfc3339("2026-11-30T20:26:42Z"),
            Some((1_796_070_402, 0))
        );
        assert_eq!(
            parse_rfc3339("2026-11-30T22:26:42.5+02:00"),
            Some((1_796_070_402, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339("0001-01-01T00:00:00Z").map(|t| t.0),
            Some(-62_135_596_800)
        );
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-11-30 20:26:42Z",
            "2026-11-30T20:26:42",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
