//! Random access into a compressed layer (the zran idea): a [`SeekTable`] cuts a compressed
//! blob into spans, each one decodable on its own from exactly its compressed bytes plus a
//! small checkpoint, so that a lazy mount fetches, verifies and inflates only the spans a read
//! touches.
//!
//! A checkpoint inside a gzip member needs the 32 KiB of output before it (the deflate
//! window). Windows are most of a table's weight, and a read needs only its own span's, so
//! they are kept apart from the table: in a **windows blob** of their own, zstd-compressed,
//! one after the other in span order, each named in its span's record by offset, length and
//! SHA-256. A mount fetches the table (small: a record per span) up front, and a window by
//! range only when a span that needs it is read and the window cannot be taken from the span
//! before it ([`SeekTable::derive_window`]); [`SeekTable::open_window`] checks its digest.
//!
//! [`SeekTable::build`] streams the blob once. For gzip (one or more members, RFC 1952 around
//! raw deflate) a span starts at a member's header or at a deflate block boundary; a block
//! boundary's checkpoint is the decoder's leftover bits and the last 32 KiB of output (the
//! deflate window, made sparse: see below), kept zstd-compressed. For zstd a span starts at a
//! frame; skippable frames fold into the span before them. An uncompressed blob is cut into
//! fixed pieces. A new span starts at the first possible point after at least `span` bytes of
//! output since the last one.
//!
//! **Sparse windows.** A window holds only the bytes its span refers to; every other byte is
//! zero, and it starts at the first byte referred to (so it may be shorter than 32 KiB, or
//! empty). Only the span's first 32 KiB of output can reach back past the span's start (a
//! back-reference spans at most 32 KiB); later output reaches only into those. The builder
//! finds what they refer to, directly or through earlier output, by decoding them three more
//! times over tagged windows (`sparse_window`): deflate's codes, lengths and distances depend
//! only on the compressed bits, never on the window's contents, so a byte no reference reaches
//! cannot change the span's output. That makes a sparse window exactly as good as the whole
//! output before the span, which [`SeekTable::derive_window`] takes instead: a reader cannot
//! tell them apart, and the format is the same. On the python test image at 256 KiB spans this
//! takes the windows blobs from 9.3% of the image's compressed size to 1.4%. A span whose
//! first 32 KiB of output lie beyond `MAX_PREFIX_INPUT` compressed bytes keeps its whole
//! window.
//!
//! **Where a span starts.** A deflate block can end inside a byte: its low bits close the block
//! before, its `num_bits` high bits begin the next. That byte belongs to the span before (whose
//! last block needs it); the span after starts at the following byte, the first with none of
//! its bits consumed, and its checkpoint carries the leftover bits (`num_bits`, `bit_buf`).
//! Spans are therefore contiguous and never share a byte, and [`SeekTable::decompress_span`]
//! needs nothing but the span's own bytes and the table.
//!
//! The encoding ([`SeekTable::encode`], [`SeekTable::decode`]) is specified here (version 2;
//! version 1 kept the windows inside the table). All integers are little-endian; three
//! sections back to back:
//!
//! | section  | size                        | contents                                   |
//! |----------|-----------------------------|--------------------------------------------|
//! | header   | [`HEADER_LEN`] bytes        | magic, version, compression, sizes, counts |
//! | spans    | count × [`SPAN_RECORD_LEN`] | one record per span, in order              |
//! | checksum | 4 bytes                     | CRC-32 (IEEE) of everything before it      |
//!
//! Header: `0` magic [`MAGIC`], `8` version u32, `12` compression u8 (0 none, 1 gzip,
//! 2 zstd), `13` three zero bytes, `16` compressed size u64, `24` uncompressed size u64,
//! `32` span count u64, `40` windows blob size u64.
//!
//! Span record: `0` compressed start u64, `8` compressed end u64, `16` uncompressed start
//! u64, `24` uncompressed end u64, `32` SHA-256 of the compressed bytes (32 bytes), `64` kind
//! u8 (0: a fresh start — blob start, gzip member, zstd frame; 1: a deflate block boundary,
//! gzip only), `65` num_bits u8 (0..=7), `66` bit_buf u8 (the leftover bits, in its low
//! `num_bits` bits), `67` zero u8, `68` window length u32 (uncompressed, at most
//! [`WINDOW`] and at most the uncompressed start: the window is that many bytes of output
//! before the span, possibly sparse), `72` window offset u64 (into the windows blob), `80`
//! window compressed length u32, `84` zero u32, `88` SHA-256 of the window's compressed bytes
//! (32 bytes). A span with no window (a fresh start, or a block boundary whose span refers to
//! no history) has window length, offset, compressed length and digest all zero; a window of
//! nonzero length has a nonzero compressed length. Spans are contiguous and ordered, each
//! non-empty in compressed bytes and output (a blob with no output at all has one span with
//! empty output; a zero-length blob has none), and they cover exactly the stated sizes.
//!
//! The windows blob is the windows, each zstd-compressed, packed in span order with no gap:
//! exactly the windows blob size of the header.
//!
//! [`SeekTable::decode`] checks all of that once; after it, nothing in the table can make
//! [`SeekTable::decompress_span`] (or [`SeekTable::open_window`],
//! [`SeekTable::decompress_span_with`]) panic, read out of bounds or allocate beyond the output
//! the span's bytes actually produce.

use std::io::{self, Read};
use std::ops::Range;

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY,
    TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{BlockBoundaryState, DecompressorOxide, decompress};
use sha2::{Digest, Sha256};
use zstd::zstd_safe::{self, DCtx, InBuffer, OutBuffer};

pub const MAGIC: &[u8; 8] = b"IMGFSEEK";
/// Bumped on any change to the layout; a table of another version is rebuilt.
pub const VERSION: u32 = 2;
pub const HEADER_LEN: usize = 48;
pub const SPAN_RECORD_LEN: usize = 120;
const CHECKSUM_LEN: usize = 4;
/// Deflate's largest back-reference distance: all the history a block boundary needs.
pub const WINDOW: usize = 32 << 10;
/// At least 4 KiB per span over a 64 TiB layer: far beyond any image, and the record table
/// it allows (1.4 GiB) is still checked against the bytes actually present before allocating.
pub const MAX_SPANS: u64 = 1 << 24;
/// Gzip FNAME and FCOMMENT are short texts; a longer one is a hostile header, not a layer.
const MAX_GZIP_STRING: usize = 64 << 10;
/// The zstd format's Block_Maximum_Size.
const MAX_ZSTD_BLOCK: usize = 128 << 10;
/// Compressed bytes read at a time while building: large enough that reads are few.
const IN_CHUNK: usize = 256 << 10;
/// Output decoded at a time after the window: the window is moved once per chunk.
const OUT_CHUNK: usize = 1 << 20;
/// Compressed bytes kept from a block checkpoint on to find what its span's first [`WINDOW`]
/// bytes of output refer to: that output takes at most ~61 KiB of deflate (15-bit codes) plus
/// block headers. A span that needs more (empty blocks, say) keeps its whole window.
const MAX_PREFIX_INPUT: usize = 256 << 10;
/// Compressed bytes past those consumed given to those re-decodes: the decoder may look ahead.
const PREFIX_LOOKAHEAD: usize = 64;
/// The level windows are compressed at. Sparse windows are mostly zeros, which every level
/// squeezes alike: on the python test image's layers (256 KiB spans) level 9 makes windows
/// 3.8% bigger than level 19 (1.44% of the image against 1.39%) in a thirtieth of the time,
/// and level 19 took most of an index build.
const WINDOW_ZSTD_LEVEL: i32 = 9;

const KIND_START: u8 = 0;
const KIND_BLOCK: u8 = 1;
const GZIP_TRAILER_LEN: usize = 8;
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const ZSTD_SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const ZSTD_SKIPPABLE: u32 = 0x184D_2A50;

/// How the blob a table describes is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekCompression {
    None,
    Gzip,
    Zstd,
}

impl SeekCompression {
    fn code(self) -> u8 {
        match self {
            SeekCompression::None => 0,
            SeekCompression::Gzip => 1,
            SeekCompression::Zstd => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(SeekCompression::None),
            1 => Some(SeekCompression::Gzip),
            2 => Some(SeekCompression::Zstd),
            _ => None,
        }
    }
}

/// One independently decodable piece of the compressed blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// The byte range in the compressed blob.
    pub compressed: Range<u64>,
    /// The bytes of the uncompressed stream it yields.
    pub uncompressed: Range<u64>,
    /// SHA-256 of the compressed bytes of `compressed`.
    pub digest: [u8; 32],
}

/// What a span's decoder starts from besides the span's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Checkpoint {
    /// A fresh start: the blob's start, a gzip member's header or a zstd frame.
    Start,
    /// Between two deflate blocks of a gzip member.
    Block {
        /// Bits of the byte before the span that begin this block (0..=7), and those bits.
        num_bits: u8,
        bit_buf: u8,
        /// Length of the window once decompressed: the output before the span from the first
        /// byte the span refers to (see the module docs on sparse windows).
        window_len: u32,
        /// The zstd-compressed window's place in the windows blob, and its SHA-256.
        window: Range<u64>,
        window_digest: [u8; 32],
    },
}

/// A compressed blob's spans and the checkpoints that make each one decodable alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeekTable {
    compression: SeekCompression,
    compressed_size: u64,
    uncompressed_size: u64,
    spans: Vec<Span>,
    checkpoints: Vec<Checkpoint>,
    /// The windows blob's size, and the blob itself when it is at hand: a table just built,
    /// or one given its blob ([`SeekTable::with_windows`]); empty for a table decoded alone.
    windows_size: u64,
    windows: Vec<u8>,
}

/// Why a seek table could not be built, decoded or used.
#[derive(Debug, thiserror::Error)]
pub enum SeekError {
    #[error("span size must be at least one byte")]
    ZeroSpanSize,
    #[error("compressing the window of the checkpoint at byte {offset}")]
    WindowCompress {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("reading the compressed blob at byte {offset}")]
    Read {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("the compressed blob ends early at byte {offset}")]
    Truncated { offset: u64 },
    #[error("more than {MAX_SPANS} spans at byte {offset}: choose a larger span size")]
    TooManySpans { offset: u64 },
    #[error("the blob is empty: it holds no {what}")]
    Empty { what: &'static str },
    #[error("no gzip member at byte {offset} (magic {magic:02x?})")]
    GzipMagic { offset: u64, magic: [u8; 2] },
    #[error("gzip member at byte {offset} uses compression method {method}, not deflate")]
    GzipMethod { offset: u64, method: u8 },
    #[error("gzip member at byte {offset} sets reserved flags {flags:#04x}")]
    GzipFlags { offset: u64, flags: u8 },
    #[error(
        "gzip member at byte {offset}: header CRC-16 {stored:#06x} stored, {computed:#06x} computed"
    )]
    GzipHeaderCrc {
        offset: u64,
        stored: u16,
        computed: u16,
    },
    #[error("zstd frame at byte {offset} declares {declared} bytes of content and makes {made}")]
    ZstdContentSize {
        offset: u64,
        declared: u64,
        made: u64,
    },
    #[error("gzip header text at byte {offset} is longer than {MAX_GZIP_STRING} bytes")]
    GzipHeaderText { offset: u64 },
    #[error("deflate data at byte {offset} is invalid ({status:?})")]
    Inflate { offset: u64, status: TINFLStatus },
    #[error(
        "gzip member ending at byte {offset}: CRC-32 {stored:#010x} stored, {computed:#010x} computed"
    )]
    GzipCrc {
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error(
        "gzip member ending at byte {offset}: size {stored} stored, {computed} decoded (mod 2^32)"
    )]
    GzipSize {
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("no zstd frame at byte {offset} (magic {magic:#010x})")]
    ZstdMagic { offset: u64, magic: u32 },
    #[error("zstd frame header at byte {offset} sets the reserved bit")]
    ZstdReservedBit { offset: u64 },
    #[error("zstd block at byte {offset} has the reserved type")]
    ZstdBlockType { offset: u64 },
    #[error("zstd block at byte {offset} is {size} bytes, over the format's {MAX_ZSTD_BLOCK}")]
    ZstdBlockSize { offset: u64, size: usize },
    #[error("zstd data near byte {offset} is invalid: {reason}")]
    Zstd { offset: u64, reason: &'static str },
    #[error("zstd frame ending at byte {offset} is not complete where its blocks end")]
    ZstdFrameEnd { offset: u64 },
    #[error("seek table is {len} bytes, shorter than its header and checksum")]
    EncodedShort { len: usize },
    #[error("seek table checksum {stored:#010x} does not match {computed:#010x}: it is corrupt")]
    Checksum { stored: u32, computed: u32 },
    #[error("not a seek table (bad magic)")]
    Magic,
    #[error("seek table version {version} is not {VERSION}")]
    Version { version: u32 },
    #[error("seek table names unknown compression {code}")]
    Compression { code: u8 },
    #[error("seek table has nonzero reserved bytes at byte {at}")]
    Reserved { at: usize },
    #[error("seek table has {count} spans, over the limit of {MAX_SPANS}")]
    SpanCount { count: u64 },
    #[error("seek table is {len} bytes, but its counts say {expected}")]
    EncodedLength { len: usize, expected: u128 },
    #[error("span {index} does not start where the one before ends")]
    NotContiguous { index: usize },
    #[error("span {index} is empty or reversed")]
    EmptySpan { index: usize },
    #[error("span {index} is not the same range of both streams, as an uncompressed blob needs")]
    UncompressedMismatch { index: usize },
    #[error("spans end at {compressed}/{uncompressed}, not at the stated sizes")]
    SizesNotCovered { compressed: u64, uncompressed: u64 },
    #[error("span {index} has checkpoint kind {kind}, not possible here")]
    CheckpointKind { index: usize, kind: u8 },
    #[error(
        "span {index} keeps {num_bits} leftover bits (bits {bit_buf:#04x}), over 7 or beyond them"
    )]
    Bits {
        index: usize,
        num_bits: u8,
        bit_buf: u8,
    },
    #[error("span {index} has a window of {len} bytes: over {WINDOW} or before the stream's start")]
    WindowSize { index: usize, len: u32 },
    #[error("span {index}'s window is not where the windows section says")]
    WindowPlace { index: usize },
    #[error("span {index}'s window does not decompress to its {len} bytes")]
    WindowCorrupt { index: usize, len: u32 },
    #[error("span {index}'s window does not match its digest")]
    WindowDigest { index: usize },
    #[error("span {index}'s window is {actual} bytes, not {expected}")]
    WindowInput {
        index: usize,
        expected: u64,
        actual: usize,
    },
    #[error("span {index} needs its window, which is not at hand")]
    WindowMissing { index: usize },
    #[error("the windows blob is {actual} bytes, the table says {expected}")]
    WindowsSize { expected: u64, actual: usize },
    #[error("no span {index}: the table has {count}")]
    NoSuchSpan { index: usize, count: usize },
    #[error("span {index} is {expected} compressed bytes, {actual} given")]
    SpanInput {
        index: usize,
        expected: u64,
        actual: usize,
    },
    #[error("span {index} decodes to more than its {expected} bytes")]
    SpanOutputLong { index: usize, expected: u64 },
    #[error("span {index} decodes to {actual} bytes, not its {expected}")]
    SpanOutputShort {
        index: usize,
        expected: u64,
        actual: u64,
    },
}

impl SeekTable {
    /// Streams the compressed blob once (a `Read`), building spans of about `span` bytes of
    /// uncompressed output each. The caller hashes the whole blob itself.
    pub fn build(
        compression: SeekCompression,
        reader: impl Read,
        span: u64,
    ) -> Result<SeekTable, SeekError> {
        if span == 0 {
            return Err(SeekError::ZeroSpanSize);
        }
        match compression {
            SeekCompression::None => build_none(reader, span),
            SeekCompression::Gzip => build_gzip(reader, span),
            SeekCompression::Zstd => build_zstd(reader, span),
        }
    }

    pub fn compression(&self) -> SeekCompression {
        self.compression
    }

    pub fn compressed_size(&self) -> u64 {
        self.compressed_size
    }

    pub fn uncompressed_size(&self) -> u64 {
        self.uncompressed_size
    }

    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Index of the span holding uncompressed offset `at` (binary search), None past the end.
    pub fn span_at(&self, at: u64) -> Option<usize> {
        let i = self.spans.partition_point(|s| s.uncompressed.end <= at);
        self.spans
            .get(i)
            .filter(|s| s.uncompressed.contains(&at))
            .map(|_| i)
    }

    /// The windows blob's size (see the module docs).
    pub fn windows_size(&self) -> u64 {
        self.windows_size
    }

    /// The windows blob of a table just built (what is pushed beside the table); empty for a
    /// table decoded without its blob.
    pub fn windows_blob(&self) -> &[u8] {
        &self.windows
    }

    /// The table with its windows blob at hand, so that [`decompress_span`](Self::decompress_span)
    /// needs nothing else; the blob must be as long as the table says (each window is still
    /// checked against its digest when used).
    pub fn with_windows(mut self, blob: Vec<u8>) -> Result<SeekTable, SeekError> {
        if blob.len() as u64 != self.windows_size {
            return Err(SeekError::WindowsSize {
                expected: self.windows_size,
                actual: blob.len(),
            });
        }
        self.windows = blob;
        Ok(self)
    }

    /// Where span `i`'s compressed window lies in the windows blob; None when it needs no
    /// window (or there is no span `i`).
    pub fn window_range(&self, i: usize) -> Option<Range<u64>> {
        match self.checkpoints.get(i)? {
            Checkpoint::Block {
                window_len, window, ..
            } if *window_len > 0 => Some(window.clone()),
            _ => None,
        }
    }

    /// Span `i`'s window taken from the output just before it (`before`, ending where span
    /// `i` starts: the previous span's output), when that holds all of it; None when `before`
    /// is too short, or the span needs no window.
    pub fn derive_window(&self, i: usize, before: &[u8]) -> Option<Vec<u8>> {
        let Some(Checkpoint::Block { window_len, .. }) = self.checkpoints.get(i) else {
            return None;
        };
        let len = *window_len as usize;
        let start = before.len().checked_sub(len)?;
        (len > 0).then(|| before[start..].to_vec())
    }

    /// Span `i`'s window from its compressed bytes as fetched from the windows blob: checked
    /// against the window's digest, then decompressed (bounded by its stated length). Empty
    /// for a span that needs no window.
    pub fn open_window(&self, i: usize, compressed: &[u8]) -> Result<Vec<u8>, SeekError> {
        let checkpoint = self.checkpoints.get(i).ok_or(SeekError::NoSuchSpan {
            index: i,
            count: self.spans.len(),
        })?;
        let Checkpoint::Block {
            window_len,
            window,
            window_digest,
            ..
        } = checkpoint
        else {
            return Ok(Vec::new());
        };
        if *window_len == 0 {
            return Ok(Vec::new());
        }
        if compressed.len() as u64 != window.end - window.start {
            return Err(SeekError::WindowInput {
                index: i,
                expected: window.end - window.start,
                actual: compressed.len(),
            });
        }
        if Sha256::digest(compressed).as_slice() != window_digest {
            return Err(SeekError::WindowDigest { index: i });
        }
        let corrupt = || SeekError::WindowCorrupt {
            index: i,
            len: *window_len,
        };
        let out =
            zstd::bulk::decompress(compressed, *window_len as usize).map_err(|_| corrupt())?;
        if out.len() != *window_len as usize {
            return Err(corrupt());
        }
        Ok(out)
    }

    /// Decompresses span `i` from exactly its compressed bytes (already verified by the
    /// caller), with its window from the blob at hand ([`with_windows`](Self::with_windows), or
    /// a table just built); see [`decompress_span_with`](Self::decompress_span_with).
    pub fn decompress_span(&self, i: usize, compressed: &[u8]) -> Result<Vec<u8>, SeekError> {
        let window = match self.window_range(i) {
            None => Vec::new(),
            Some(r) => {
                let bytes = usize::try_from(r.start)
                    .ok()
                    .zip(usize::try_from(r.end).ok())
                    .and_then(|(a, b)| self.windows.get(a..b))
                    .ok_or(SeekError::WindowMissing { index: i })?;
                self.open_window(i, bytes)?
            }
        };
        self.decompress_span_with(i, compressed, &window)
    }

    /// Decompresses span `i` from exactly its compressed bytes (already verified by the
    /// caller) and its window (from [`open_window`](Self::open_window) or
    /// [`derive_window`](Self::derive_window); empty when it needs none), returning exactly the
    /// span's uncompressed length, or an error. Output is allocated as it is produced, never
    /// more than the span's length plus one chunk.
    pub fn decompress_span_with(
        &self,
        i: usize,
        compressed: &[u8],
        window: &[u8],
    ) -> Result<Vec<u8>, SeekError> {
        let (span, checkpoint) =
            self.spans
                .get(i)
                .zip(self.checkpoints.get(i))
                .ok_or(SeekError::NoSuchSpan {
                    index: i,
                    count: self.spans.len(),
                })?;
        let expected = span.compressed.end - span.compressed.start;
        if compressed.len() as u64 != expected {
            return Err(SeekError::SpanInput {
                index: i,
                expected,
                actual: compressed.len(),
            });
        }
        let window_len = match checkpoint {
            Checkpoint::Block { window_len, .. } => *window_len as usize,
            Checkpoint::Start => 0,
        };
        if window.len() != window_len {
            return Err(SeekError::WindowInput {
                index: i,
                expected: window_len as u64,
                actual: window.len(),
            });
        }
        let want = span.uncompressed.end - span.uncompressed.start;
        let out = match self.compression {
            SeekCompression::None => compressed.to_vec(),
            SeekCompression::Gzip => inflate_span(i, span, checkpoint, window, compressed, want)?,
            SeekCompression::Zstd => unzstd_span(i, span, compressed, want)?,
        };
        if out.len() as u64 != want {
            return Err(SeekError::SpanOutputShort {
                index: i,
                expected: want,
                actual: out.len() as u64,
            });
        }
        Ok(out)
    }

    /// The encoding described in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(HEADER_LEN + self.spans.len() * SPAN_RECORD_LEN + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&[self.compression.code(), 0, 0, 0]);
        out.extend_from_slice(&self.compressed_size.to_le_bytes());
        out.extend_from_slice(&self.uncompressed_size.to_le_bytes());
        out.extend_from_slice(&(self.spans.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.windows_size.to_le_bytes());
        for (span, checkpoint) in self.spans.iter().zip(&self.checkpoints) {
            for v in [
                span.compressed.start,
                span.compressed.end,
                span.uncompressed.start,
                span.uncompressed.end,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&span.digest);
            // A span without a window keeps all its window fields zero (see the builder).
            let (kind, num_bits, bit_buf, window_len, window, window_digest) = match checkpoint {
                Checkpoint::Start => (KIND_START, 0, 0, 0, 0..0, [0u8; 32]),
                Checkpoint::Block {
                    num_bits,
                    bit_buf,
                    window_len,
                    window,
                    window_digest,
                } => (
                    KIND_BLOCK,
                    *num_bits,
                    *bit_buf,
                    *window_len,
                    window.clone(),
                    *window_digest,
                ),
            };
            out.extend_from_slice(&[kind, num_bits, bit_buf, 0]);
            out.extend_from_slice(&window_len.to_le_bytes());
            out.extend_from_slice(&window.start.to_le_bytes());
            out.extend_from_slice(&((window.end - window.start) as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&window_digest);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes hostile bytes, checking everything the module docs promise.
    pub fn decode(bytes: &[u8]) -> Result<SeekTable, SeekError> {
        let Some((body, stored)) = bytes
            .split_last_chunk::<CHECKSUM_LEN>()
            .filter(|(body, _)| body.len() >= HEADER_LEN)
        else {
            return Err(SeekError::EncodedShort { len: bytes.len() });
        };
        let stored = u32::from_le_bytes(*stored);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(SeekError::Checksum { stored, computed });
        }
        if &body[..8] != MAGIC {
            return Err(SeekError::Magic);
        }
        let version = le32(body, 8);
        if version != VERSION {
            return Err(SeekError::Version { version });
        }
        let compression = SeekCompression::from_code(body[12])
            .ok_or(SeekError::Compression { code: body[12] })?;
        if let Some(at) = (13..16).find(|&at| body[at] != 0) {
            return Err(SeekError::Reserved { at });
        }
        let compressed_size = le64(body, 16);
        let uncompressed_size = le64(body, 24);
        let count = le64(body, 32);
        let windows_size = le64(body, 40);
        if count > MAX_SPANS {
            return Err(SeekError::SpanCount { count });
        }
        // In u128, so that no count can overflow before it is compared with what is there.
        let expected = HEADER_LEN as u128 + u128::from(count) * SPAN_RECORD_LEN as u128;
        if expected != body.len() as u128 {
            return Err(SeekError::EncodedLength {
                len: bytes.len(),
                expected: expected + CHECKSUM_LEN as u128,
            });
        }
        let count = count as usize;
        let mut spans = Vec::with_capacity(count);
        let mut checkpoints = Vec::with_capacity(count);
        let (mut c_at, mut u_at, mut w_at) = (0u64, 0u64, 0u64);
        for index in 0..count {
            let r = &body[HEADER_LEN + index * SPAN_RECORD_LEN..][..SPAN_RECORD_LEN];
            let compressed = le64(r, 0)..le64(r, 8);
            let uncompressed = le64(r, 16)..le64(r, 24);
            if compressed.start != c_at || uncompressed.start != u_at {
                return Err(SeekError::NotContiguous { index });
            }
            let empty_output_allowed = count == 1 && uncompressed_size == 0;
            if compressed.end <= compressed.start
                || uncompressed.end < uncompressed.start
                || (uncompressed.end == uncompressed.start && !empty_output_allowed)
            {
                return Err(SeekError::EmptySpan { index });
            }
            if compression == SeekCompression::None && compressed != uncompressed {
                return Err(SeekError::UncompressedMismatch { index });
            }
            let offset = HEADER_LEN + index * SPAN_RECORD_LEN;
            if r[67] != 0 || le32(r, 84) != 0 {
                return Err(SeekError::Reserved {
                    at: offset + if r[67] != 0 { 67 } else { 84 },
                });
            }
            let (kind, num_bits, bit_buf) = (r[64], r[65], r[66]);
            let window_len = le32(r, 68);
            let window_at = le64(r, 72);
            let window_size = u64::from(le32(r, 80));
            let mut window_digest = [0u8; 32];
            window_digest.copy_from_slice(&r[88..120]);
            let no_window = window_size == 0 && window_at == 0 && window_digest == [0u8; 32];
            let checkpoint = match kind {
                KIND_START if num_bits == 0 && bit_buf == 0 => {
                    if window_len != 0 {
                        return Err(SeekError::WindowSize {
                            index,
                            len: window_len,
                        });
                    }
                    if !no_window {
                        return Err(SeekError::WindowPlace { index });
                    }
                    Checkpoint::Start
                }
                KIND_START => {
                    return Err(SeekError::Bits {
                        index,
                        num_bits,
                        bit_buf,
                    });
                }
                KIND_BLOCK if compression == SeekCompression::Gzip && index > 0 => {
                    if num_bits > 7 || u16::from(bit_buf) >> num_bits != 0 {
                        return Err(SeekError::Bits {
                            index,
                            num_bits,
                            bit_buf,
                        });
                    }
                    if window_len as usize > WINDOW || u64::from(window_len) > uncompressed.start {
                        return Err(SeekError::WindowSize {
                            index,
                            len: window_len,
                        });
                    }
                    let placed = if window_len == 0 {
                        no_window
                    } else {
                        window_at == w_at
                            && window_size > 0
                            && window_size <= zstd_safe::compress_bound(WINDOW) as u64
                            && window_size <= windows_size - w_at
                    };
                    if !placed {
                        return Err(SeekError::WindowPlace { index });
                    }
                    Checkpoint::Block {
                        num_bits,
                        bit_buf,
                        window_len,
                        window: window_at..window_at + window_size,
                        window_digest,
                    }
                }
                _ => return Err(SeekError::CheckpointKind { index, kind }),
            };
            if let Checkpoint::Block { window, .. } = &checkpoint
                && window.end > window.start
            {
                w_at = window.end;
            }
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&r[32..64]);
            c_at = compressed.end;
            u_at = uncompressed.end;
            spans.push(Span {
                compressed,
                uncompressed,
                digest,
            });
            checkpoints.push(checkpoint);
        }
        if c_at != compressed_size || u_at != uncompressed_size || (count == 0 && c_at != 0) {
            return Err(SeekError::SizesNotCovered {
                compressed: c_at,
                uncompressed: u_at,
            });
        }
        if w_at != windows_size {
            return Err(SeekError::WindowPlace { index: count });
        }
        Ok(SeekTable {
            compression,
            compressed_size,
            uncompressed_size,
            spans,
            checkpoints,
            windows_size,
            windows: Vec::new(),
        })
    }
}

/// Writes the checksum (the last four bytes) over the rest of an encoded table: for tools and
/// tests that forge tables. Too short a slice is left alone.
pub fn seal(bytes: &mut [u8]) {
    if let Some(n) = bytes.len().checked_sub(CHECKSUM_LEN) {
        let crc = crc32fast::hash(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Compressed input, buffered, with its absolute position, hashing what it gives away so that
/// a span's digest can be taken at any cut without a second pass.
struct Feed<R> {
    reader: R,
    buf: Vec<u8>,
    /// First byte not consumed, end of the bytes read, and how much of `buf` is hashed.
    start: usize,
    end: usize,
    hashed: usize,
    /// Absolute offset of `buf[0]` in the blob.
    base: u64,
    eof: bool,
    hash: Option<Sha256>,
    /// The span before the last cut, still open in case the span after yields nothing.
    tentative: Option<Sha256>,
    /// The bytes consumed since a block checkpoint, while its window is pending (see
    /// [`Builder::settle`]); None when not kept, or past [`MAX_PREFIX_INPUT`].
    capture: Option<Vec<u8>>,
}

impl<R: Read> Feed<R> {
    fn new(reader: R, capacity: usize, hashing: bool) -> Self {
        Feed {
            reader,
            buf: vec![0; capacity.max(1)],
            start: 0,
            end: 0,
            hashed: 0,
            base: 0,
            eof: false,
            hash: hashing.then(Sha256::new),
            tentative: None,
            capture: None,
        }
    }

    fn pos(&self) -> u64 {
        self.base + self.start as u64
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    fn hash_consumed(&mut self) {
        let bytes = &self.buf[self.hashed..self.start];
        if let Some(h) = &mut self.hash {
            h.update(bytes);
        }
        if let Some(h) = &mut self.tentative {
            h.update(bytes);
        }
        if let Some(kept) = &mut self.capture {
            if kept.len() + bytes.len() <= MAX_PREFIX_INPUT {
                kept.extend_from_slice(bytes);
            } else {
                self.capture = None;
            }
        }
        self.hashed = self.start;
    }

    /// Reads more (once), moving what is left to the front first; false at the end.
    fn fill(&mut self) -> Result<bool, SeekError> {
        if self.eof {
            return Ok(false);
        }
        self.hash_consumed();
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
            self.hashed = 0;
        }
        loop {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SeekError::Read {
                        offset: self.base + self.end as u64,
                        source,
                    });
                }
            }
        }
    }

    /// Whether `n` bytes (at most the buffer's size) are available, reading as needed.
    fn ensure(&mut self, n: usize) -> Result<bool, SeekError> {
        while self.end - self.start < n {
            if self.buf.len() - self.start < n && self.start > 0 {
                self.hash_consumed();
                self.buf.copy_within(self.start..self.end, 0);
                self.base += self.start as u64;
                self.end -= self.start;
                self.start = 0;
                self.hashed = 0;
            }
            if !self.fill()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next `n` bytes (at most the buffer's size), consumed.
    fn take(&mut self, n: usize) -> Result<&[u8], SeekError> {
        if !self.ensure(n)? {
            return Err(SeekError::Truncated {
                offset: self.base + self.end as u64,
            });
        }
        let at = self.start;
        self.start += n;
        Ok(&self.buf[at..at + n])
    }

    /// Consumes `n` bytes, any number, handing each run to `each`.
    fn skip(
        &mut self,
        mut n: u64,
        mut each: impl FnMut(&[u8], u64, u64) -> Result<(), SeekError>,
    ) -> Result<(), SeekError> {
        while n > 0 {
            if self.start == self.end && !self.fill()? {
                return Err(SeekError::Truncated { offset: self.pos() });
            }
            let run = (self.end - self.start).min(usize::try_from(n).unwrap_or(usize::MAX));
            n -= run as u64;
            let at = self.pos();
            let range = self.start..self.start + run;
            self.start += run;
            each(&self.buf[range], at, n)?;
        }
        Ok(())
    }

    /// Ends the current span here: its digest. The hash is kept open in `tentative` until
    /// the next span yields output.
    fn cut(&mut self) -> [u8; 32] {
        self.hash_consumed();
        let hash = self.hash.get_or_insert_with(Sha256::new);
        self.tentative = Some(hash.clone());
        hash.finalize_reset().into()
    }

    /// The digest of the span before the last cut, continued to here: for folding an empty
    /// last span into it.
    fn uncut(&mut self) -> Option<[u8; 32]> {
        self.hash_consumed();
        self.tentative.take().map(|h| h.finalize().into())
    }
}

/// The spans as they are cut while streaming.
struct Builder {
    span: u64,
    spans: Vec<Span>,
    checkpoints: Vec<Checkpoint>,
    windows: Vec<u8>,
    /// The open span: where it starts and its checkpoint.
    start: (u64, u64, Checkpoint),
    /// The whole window of the open span's block checkpoint, until it is made sparse and
    /// packed ([`settle`](Self::settle)).
    pending: Option<Vec<u8>>,
    total: u64,
    since: u64,
}

impl Builder {
    fn new(span: u64) -> Self {
        Builder {
            span,
            spans: Vec::new(),
            checkpoints: Vec::new(),
            windows: Vec::new(),
            start: (0, 0, Checkpoint::Start),
            pending: None,
            total: 0,
            since: 0,
        }
    }

    fn output<R: Read>(&mut self, n: u64, feed: &mut Feed<R>) {
        if n > 0 {
            self.total += n;
            self.since += n;
            feed.tentative = None;
        }
    }

    fn due(&self) -> bool {
        self.since >= self.span
    }

    /// Ends the open span here (its window packed) and opens one at `next`.
    fn cut<R: Read>(&mut self, feed: &mut Feed<R>, next: Checkpoint) -> Result<(), SeekError> {
        let at = feed.pos();
        if self.spans.len() as u64 + 1 >= MAX_SPANS {
            return Err(SeekError::TooManySpans { offset: at });
        }
        self.settle(feed)?;
        let digest = feed.cut();
        let (c, u, checkpoint) = std::mem::replace(&mut self.start, (at, self.total, next));
        self.spans.push(Span {
            compressed: c..at,
            uncompressed: u..self.total,
            digest,
        });
        self.checkpoints.push(checkpoint);
        self.since = 0;
        Ok(())
    }

    /// Forgets the window of the open span's checkpoint (pending, or the last one packed):
    /// the span refers to no history.
    fn drop_window<R: Read>(&mut self, feed: &mut Feed<R>) {
        self.pending = None;
        feed.capture = None;
        if let Checkpoint::Block {
            window_len,
            window,
            window_digest,
            ..
        } = &mut self.start.2
        {
            if *window_len > 0 {
                self.windows.truncate(window.start as usize);
            }
            *window = 0..0;
            *window_len = 0;
            *window_digest = [0; 32];
        }
    }

    /// Cuts at a block boundary: the new span's checkpoint is the decoder's leftover bits, its
    /// window (the output before, `window`) pending until [`settle`](Self::settle).
    fn cut_block<R: Read>(
        &mut self,
        feed: &mut Feed<R>,
        state: &BlockBoundaryState,
        window: Vec<u8>,
    ) -> Result<(), SeekError> {
        let checkpoint = Checkpoint::Block {
            num_bits: state.num_bits,
            bit_buf: state.bit_buf & ((1u16 << state.num_bits) - 1) as u8,
            window_len: 0,
            window: 0..0,
            window_digest: [0; 32],
        };
        self.cut(feed, checkpoint)?;
        if !window.is_empty() {
            self.pending = Some(window);
            feed.capture = Some(Vec::new());
        }
        Ok(())
    }

    /// How much output may be decoded before the pending window must be settled: the rest of
    /// the open span's first [`WINDOW`] bytes (unbounded when nothing is pending).
    fn settle_after(&self) -> usize {
        match self.pending {
            Some(_) => WINDOW - self.since.min(WINDOW as u64) as usize,
            None => usize::MAX,
        }
    }

    /// Packs the open span's pending window, keeping only the bytes its span's output refers
    /// to ([`sparse_window`]); called once the span has made [`WINDOW`] bytes of output, or
    /// ends. When that cannot be worked out (too much input kept, or it does not decode as
    /// before) the whole window is packed.
    fn settle<R: Read>(&mut self, feed: &mut Feed<R>) -> Result<(), SeekError> {
        let Some(whole) = self.pending.take() else {
            return Ok(());
        };
        feed.hash_consumed();
        let kept = feed.capture.take();
        let Checkpoint::Block {
            num_bits,
            bit_buf,
            window_len,
            window,
            window_digest,
        } = &mut self.start.2
        else {
            return Ok(());
        };
        let sparse = match kept {
            Some(mut input) => {
                feed.ensure(PREFIX_LOOKAHEAD)?;
                let ahead = feed.avail();
                input.extend_from_slice(&ahead[..ahead.len().min(PREFIX_LOOKAHEAD)]);
                let seen = self.since.min(WINDOW as u64) as usize;
                sparse_window(*num_bits, *bit_buf, &whole, &input, seen)
            }
            None => None,
        };
        let packing = sparse.as_deref().unwrap_or(&whole);
        if packing.is_empty() {
            return Ok(());
        }
        let packed = zstd::bulk::compress(packing, WINDOW_ZSTD_LEVEL).map_err(|source| {
            SeekError::WindowCompress {
                offset: self.start.0,
                source,
            }
        })?;
        let at = self.windows.len() as u64;
        self.windows.extend_from_slice(&packed);
        *window = at..self.windows.len() as u64;
        *window_len = packing.len() as u32;
        *window_digest = Sha256::digest(&packed).into();
        Ok(())
    }

    fn finish<R: Read>(
        mut self,
        compression: SeekCompression,
        feed: &mut Feed<R>,
    ) -> Result<SeekTable, SeekError> {
        let end = feed.pos();
        if end > 0 {
            if self.since == 0
                && let Some(last) = self.spans.last_mut()
            {
                // The last cut was followed by no output: fold what follows into the span before.
                let digest = feed.uncut().unwrap_or_else(|| feed.cut());
                if let Checkpoint::Block {
                    window_len, window, ..
                } = &self.start.2
                    && *window_len > 0
                {
                    self.windows.truncate(window.start as usize);
                }
                last.compressed.end = end;
                last.digest = digest;
            } else {
                self.cut(feed, Checkpoint::Start)?;
            }
        }
        Ok(SeekTable {
            compression,
            compressed_size: end,
            uncompressed_size: self.total,
            spans: self.spans,
            checkpoints: self.checkpoints,
            windows_size: self.windows.len() as u64,
            windows: self.windows,
        })
    }
}

fn build_none(reader: impl Read, span: u64) -> Result<SeekTable, SeekError> {
    let mut feed = Feed::new(reader, IN_CHUNK, true);
    let mut b = Builder::new(span);
    loop {
        if feed.start == feed.end && !feed.fill()? {
            break;
        }
        let room = span - b.since;
        let run = (feed.end - feed.start).min(usize::try_from(room).unwrap_or(usize::MAX));
        feed.consume(run);
        b.output(run as u64, &mut feed);
        if b.due() {
            b.cut(&mut feed, Checkpoint::Start)?;
        }
    }
    b.finish(SeekCompression::None, &mut feed)
}

/// What a step of the gzip decoder reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// Output (possibly none); keep going.
    Output,
    /// A deflate block ended and another one follows in the same member.
    Boundary,
    /// A member header is next (the position is its first byte).
    MemberStart,
    /// The blob ended after a whole member.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Member { announced: bool },
    Inflate,
}

/// A gzip stream decoded one step at a time: members, headers, raw deflate and trailers.
struct Gunzip<R> {
    feed: Feed<R>,
    inflater: Box<DecompressorOxide>,
    /// Non-wrapping output: the window before `out_pos`, room after it.
    out: Vec<u8>,
    out_pos: usize,
    phase: Phase,
    /// The member's output so far and its CRC-32, when decoding started at its header.
    member_out: u64,
    crc: Option<crc32fast::Hasher>,
}

impl<R: Read> Gunzip<R> {
    fn new(feed: Feed<R>, out_chunk: usize) -> Self {
        Gunzip {
            feed,
            inflater: Box::default(),
            out: vec![0; WINDOW + out_chunk],
            out_pos: 0,
            phase: Phase::Member { announced: false },
            member_out: 0,
            crc: None,
        }
    }

    /// Decoding resumed at a block boundary, with the window that preceded it.
    fn resume(feed: Feed<R>, out_chunk: usize, state: &BlockBoundaryState, window: &[u8]) -> Self {
        let mut g = Gunzip::new(feed, out_chunk);
        *g.inflater = DecompressorOxide::from_block_boundary_state(state);
        g.out[..window.len()].copy_from_slice(window);
        g.out_pos = window.len();
        g.phase = Phase::Inflate;
        g
    }

    fn window(&self) -> &[u8] {
        &self.out[self.out_pos - self.out_pos.min(WINDOW)..self.out_pos]
    }

    /// The last `n` bytes of output.
    fn produced(&self, n: usize) -> &[u8] {
        &self.out[self.out_pos - n..self.out_pos]
    }

    /// One step, producing at most `limit` (≥ 1) bytes: how many, and what was reached.
    fn step(&mut self, limit: usize) -> Result<(usize, Event), SeekError> {
        loop {
            match self.phase {
                Phase::Member { announced } => {
                    if !self.feed.ensure(1)? {
                        return Ok((0, Event::End));
                    }
                    if !announced {
                        self.phase = Phase::Member { announced: true };
                        return Ok((0, Event::MemberStart));
                    }
                    gzip_header(&mut self.feed)?;
                    *self.inflater = DecompressorOxide::new();
                    self.out_pos = 0;
                    self.member_out = 0;
                    self.crc = Some(crc32fast::Hasher::new());
                    self.phase = Phase::Inflate;
                }
                Phase::Inflate => return self.inflate(limit),
            }
        }
    }

    fn inflate(&mut self, limit: usize) -> Result<(usize, Event), SeekError> {
        loop {
            if self.out_pos == self.out.len() {
                let keep = self.out_pos.min(WINDOW);
                self.out.copy_within(self.out_pos - keep..self.out_pos, 0);
                self.out_pos = keep;
            }
            if self.feed.start == self.feed.end {
                self.feed.fill()?;
            }
            let room = (self.out.len() - self.out_pos).min(limit.max(1));
            let mut flags =
                TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY;
            if !self.feed.eof {
                flags |= TINFL_FLAG_HAS_MORE_INPUT;
            }
            let at = self.feed.pos();
            let (status, used, made) = decompress(
                &mut self.inflater,
                self.feed.avail(),
                &mut self.out[..self.out_pos + room],
                self.out_pos,
                flags,
            );
            self.feed.consume(used);
            if let Some(crc) = &mut self.crc {
                crc.update(&self.out[self.out_pos..self.out_pos + made]);
            }
            self.out_pos += made;
            self.member_out += made as u64;
            match status {
                // At the end of input the next call, without HAS_MORE_INPUT, says truncated.
                TINFLStatus::NeedsMoreInput if made == 0 => {
                    self.feed.fill()?;
                }
                TINFLStatus::NeedsMoreInput | TINFLStatus::HasMoreOutput => {
                    return Ok((made, Event::Output));
                }
                TINFLStatus::BlockBoundary => return Ok((made, Event::Boundary)),
                TINFLStatus::Done => {
                    self.trailer()?;
                    self.phase = Phase::Member { announced: false };
                    return Ok((made, Event::Output));
                }
                TINFLStatus::FailedCannotMakeProgress => {
                    return Err(SeekError::Truncated {
                        offset: self.feed.pos(),
                    });
                }
                status => return Err(SeekError::Inflate { offset: at, status }),
            }
        }
    }

    fn trailer(&mut self) -> Result<(), SeekError> {
        let t = self.feed.take(GZIP_TRAILER_LEN)?;
        let stored_crc = le32(t, 0);
        let stored_size = le32(t, 4);
        let offset = self.feed.pos();
        if let Some(crc) = self.crc.take() {
            let computed = crc.finalize();
            if computed != stored_crc {
                return Err(SeekError::GzipCrc {
                    offset,
                    stored: stored_crc,
                    computed,
                });
            }
            if self.member_out as u32 != stored_size {
                return Err(SeekError::GzipSize {
                    offset,
                    stored: stored_size,
                    computed: self.member_out as u32,
                });
            }
        }
        Ok(())
    }

    fn boundary_state(&self) -> Result<BlockBoundaryState, SeekError> {
        self.inflater
            .block_boundary_state()
            .ok_or(SeekError::Inflate {
                offset: self.feed.pos(),
                status: TINFLStatus::BlockBoundary,
            })
    }
}

/// Reads a gzip member header (RFC 1952), leaving the feed at its deflate data.
fn gzip_header<R: Read>(feed: &mut Feed<R>) -> Result<(), SeekError> {
    const FHCRC: u8 = 1 << 1;
    const FEXTRA: u8 = 1 << 2;
    const FNAME: u8 = 1 << 3;
    const FCOMMENT: u8 = 1 << 4;
    const RESERVED: u8 = 0xe0;
    let offset = feed.pos();
    let whole = feed.ensure(10)?;
    let h = feed.avail();
    if let [a, b, ..] = *h
        && [a, b] != [0x1f, 0x8b]
    {
        return Err(SeekError::GzipMagic {
            offset,
            magic: [a, b],
        });
    }
    if !whole {
        return Err(SeekError::Truncated {
            offset: feed.base + feed.end as u64,
        });
    }
    let (method, flags) = (h[2], h[3]);
    if method != 8 {
        return Err(SeekError::GzipMethod { offset, method });
    }
    if flags & RESERVED != 0 {
        return Err(SeekError::GzipFlags { offset, flags });
    }
    // Every header byte, for the header's CRC-16 when it has one (zlib checks it, and so does
    // the whole-layer decoder).
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[..10]);
    feed.consume(10);
    if flags & FEXTRA != 0 {
        let len = feed.take(2)?;
        crc.update(len);
        let len = u16::from_le_bytes([len[0], len[1]]);
        feed.skip(u64::from(len), |b, _, _| {
            crc.update(b);
            Ok(())
        })?;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let at = feed.pos();
            let mut len = 0usize;
            loop {
                let b = feed.take(1)?[0];
                crc.update(&[b]);
                if b == 0 {
                    break;
                }
                len += 1;
                if len > MAX_GZIP_STRING {
                    return Err(SeekError::GzipHeaderText { offset: at });
                }
            }
        }
    }
    if flags & FHCRC != 0 {
        let t = feed.take(2)?;
        let stored = u16::from_le_bytes([t[0], t[1]]);
        let computed = (crc.finalize() & 0xffff) as u16;
        if stored != computed {
            return Err(SeekError::GzipHeaderCrc {
                offset,
                stored,
                computed,
            });
        }
    }
    Ok(())
}

fn build_gzip(reader: impl Read, span: u64) -> Result<SeekTable, SeekError> {
    let mut g = Gunzip::new(Feed::new(reader, IN_CHUNK, true), OUT_CHUNK);
    let mut b = Builder::new(span);
    let mut first = true;
    // Whether every block of the open span is known to be stored: such a span copies its
    // output from its own bytes and refers to no history, so its checkpoint needs no window
    // (incompressible layers — media, models, archives — are made of stored blocks).
    let mut stored_only = false;
    loop {
        let (made, event) = g.step(b.settle_after())?;
        b.output(made as u64, &mut g.feed);
        if b.settle_after() == 0 {
            b.settle(&mut g.feed)?;
        }
        match event {
            Event::Output => {}
            Event::Boundary if b.due() => {
                let state = g.boundary_state()?;
                if stored_only {
                    b.drop_window(&mut g.feed);
                }
                let window = g.window().to_vec();
                b.cut_block(&mut g.feed, &state, window)?;
                stored_only = next_block_stored(&mut g.feed, &state)?;
            }
            Event::Boundary => {
                let state = g.boundary_state()?;
                stored_only &= next_block_stored(&mut g.feed, &state)?;
            }
            Event::MemberStart if b.due() && !first => {
                if stored_only {
                    b.drop_window(&mut g.feed);
                }
                b.cut(&mut g.feed, Checkpoint::Start)?;
                stored_only = false;
            }
            Event::MemberStart => {
                // The member's first block is not seen at a boundary: its kind is unknown.
                first = false;
                stored_only = false;
            }
            Event::End if first => {
                return Err(SeekError::Empty {
                    what: "gzip member",
                });
            }
            Event::End => break,
        }
    }
    if stored_only {
        b.drop_window(&mut g.feed);
    }
    b.finish(SeekCompression::Gzip, &mut g.feed)
}

/// Whether the deflate block that starts at this boundary is a stored one: its header's
/// first three bits (BFINAL, then BTYPE, 00 for stored) follow the decoder's leftover bits.
fn next_block_stored<R: Read>(
    feed: &mut Feed<R>,
    state: &BlockBoundaryState,
) -> Result<bool, SeekError> {
    let bits = u32::from(state.num_bits);
    let mut header = u32::from(state.bit_buf) & ((1u32 << bits) - 1);
    if bits < 3 {
        if !feed.ensure(1)? {
            return Ok(false);
        }
        header |= u32::from(feed.avail()[0]) << bits;
    }
    Ok((header >> 1) & 3 == 0)
}

/// The window a span needs, sparse: `window` (the output before a block boundary) with every
/// byte that the span's first `seen` bytes of output (decoded from `input`, the compressed
/// bytes from the boundary on, with the leftover bits `num_bits`, `bit_buf`) do not refer to —
/// directly or through earlier output — set to zero, and cut to start at the first byte they
/// do refer to (empty when there is none). Later output can reach back only into those first
/// [`WINDOW`] bytes, so the span decodes the same from it. None when `input` does not decode
/// to `seen` bytes (or to the member's end).
///
/// How: deflate's codes, lengths and distances never depend on the window's contents, only
/// the output's values do. So the same bytes are decoded three times over tagged windows:
/// byte `j` holds `j`'s low byte, its high byte, and its high byte with the top bit set (a
/// window is at most [`WINDOW`] bytes: its high byte is below 128). Output that differs
/// between the last two runs was copied from the window, from the byte the first two name.
fn sparse_window(
    num_bits: u8,
    bit_buf: u8,
    window: &[u8],
    input: &[u8],
    seen: usize,
) -> Option<Vec<u8>> {
    if window.len() > WINDOW {
        return None;
    }
    let run =
        |tag: fn(usize) -> u8| tagged_inflate(num_bits, bit_buf, window.len(), tag, input, seen);
    let low = run(|j| j as u8)?;
    let high = run(|j| (j >> 8) as u8)?;
    let marked = run(|j| (j >> 8) as u8 | 0x80)?;
    if low.len() != high.len() || high.len() != marked.len() {
        return None;
    }
    let mut used = vec![false; window.len()];
    for ((&lo, &hi), &mark) in low.iter().zip(&high).zip(&marked) {
        if hi != mark {
            *used.get_mut(usize::from(lo) | usize::from(hi) << 8)? = true;
        }
    }
    let first = used.iter().position(|&u| u).unwrap_or(window.len());
    Some(
        window[first..]
            .iter()
            .zip(&used[first..])
            .map(|(&b, &u)| if u { b } else { 0 })
            .collect(),
    )
}

/// Raw deflate from a block boundary, over a window of `window_len` bytes with byte `j` set to
/// `tag(j)`: the first `want` bytes of output, fewer if the member ends first; None when the
/// input ends or fails before.
fn tagged_inflate(
    num_bits: u8,
    bit_buf: u8,
    window_len: usize,
    tag: fn(usize) -> u8,
    input: &[u8],
    want: usize,
) -> Option<Vec<u8>> {
    let mut out = vec![0u8; window_len + want];
    for (j, b) in out[..window_len].iter_mut().enumerate() {
        *b = tag(j);
    }
    let mut inflater = Box::new(DecompressorOxide::from_block_boundary_state(
        &BlockBoundaryState {
            num_bits,
            bit_buf,
            ..BlockBoundaryState::default()
        },
    ));
    let (mut in_at, mut out_at) = (0, window_len);
    while out_at < out.len() {
        let (status, used, made) = decompress(
            &mut inflater,
            input.get(in_at..)?,
            &mut out,
            out_at,
            TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | TINFL_FLAG_HAS_MORE_INPUT,
        );
        in_at += used;
        out_at += made;
        match status {
            TINFLStatus::Done => break,
            TINFLStatus::HasMoreOutput | TINFLStatus::NeedsMoreInput if used + made > 0 => {}
            _ => return None,
        }
    }
    Some(out.get(window_len..out_at)?.to_vec())
}

fn inflate_span(
    index: usize,
    span: &Span,
    checkpoint: &Checkpoint,
    window: &[u8],
    compressed: &[u8],
    want: u64,
) -> Result<Vec<u8>, SeekError> {
    let chunk = usize::try_from(want.saturating_add(1))
        .unwrap_or(usize::MAX)
        .min(OUT_CHUNK);
    let feed = Feed::new(compressed, compressed.len().min(IN_CHUNK), false);
    let mut g = match checkpoint {
        Checkpoint::Start => Gunzip::new(feed, chunk),
        Checkpoint::Block {
            num_bits, bit_buf, ..
        } => {
            let state = BlockBoundaryState {
                num_bits: *num_bits,
                bit_buf: *bit_buf,
                ..BlockBoundaryState::default()
            };
            Gunzip::resume(feed, chunk, &state, window)
        }
    };
    g.feed.base = span.compressed.start;
    let mut out = Vec::with_capacity(chunk.min(usize::try_from(want).unwrap_or(usize::MAX)));
    loop {
        let left = want - out.len() as u64;
        let limit = usize::try_from(left.saturating_add(1)).unwrap_or(usize::MAX);
        let (made, event) = g.step(limit)?;
        if made as u64 > left {
            return Err(SeekError::SpanOutputLong {
                index,
                expected: want,
            });
        }
        out.extend_from_slice(g.produced(made));
        match event {
            Event::End => break,
            Event::Boundary if out.len() as u64 == want && !g.feed.ensure(1)? => break,
            _ => {}
        }
    }
    Ok(out)
}

/// Decodes zstd bytes through `dctx`, handing each piece of output to `sink`; returns the
/// decoder's last answer (0 when a frame has just ended).
fn unzstd_run(
    dctx: &mut DCtx<'_>,
    input: &[u8],
    scratch: &mut [u8],
    offset: u64,
    mut sink: impl FnMut(&[u8]) -> Result<(), SeekError>,
) -> Result<usize, SeekError> {
    let mut inb = InBuffer::around(input);
    loop {
        let mut outb = OutBuffer::around(&mut scratch[..]);
        let hint = dctx
            .decompress_stream(&mut outb, &mut inb)
            .map_err(|code| SeekError::Zstd {
                offset: offset + inb.pos() as u64,
                reason: zstd_safe::get_error_name(code),
            })?;
        let made = outb.pos();
        sink(&scratch[..made])?;
        // A full output buffer may hide more output, unless the frame just ended (0).
        if inb.pos() == input.len() && (made < scratch.len() || hint == 0) {
            return Ok(hint);
        }
    }
}

/// A zstd decoder fed a frame piece by piece, counting its output and checking that the
/// frame ends exactly where its blocks say.
struct ZstdCounter<'a> {
    dctx: DCtx<'a>,
    scratch: Vec<u8>,
    made: u64,
}

impl ZstdCounter<'_> {
    /// Decodes `bytes` (at `offset`), `frame_left` bytes before the frame's end.
    fn run(&mut self, bytes: &[u8], offset: u64, frame_left: u64) -> Result<(), SeekError> {
        let made = &mut self.made;
        let hint = unzstd_run(&mut self.dctx, bytes, &mut self.scratch, offset, |o| {
            *made += o.len() as u64;
            Ok(())
        })?;
        if (hint == 0) != (frame_left == 0) {
            return Err(SeekError::ZstdFrameEnd {
                offset: offset + bytes.len() as u64,
            });
        }
        Ok(())
    }
}

fn build_zstd(reader: impl Read, span: u64) -> Result<SeekTable, SeekError> {
    let mut feed = Feed::new(reader, IN_CHUNK, true);
    let mut b = Builder::new(span);
    let mut z = ZstdCounter {
        dctx: DCtx::create(),
        scratch: vec![0u8; OUT_CHUNK],
        made: 0,
    };
    if !feed.ensure(1)? {
        return Err(SeekError::Empty { what: "zstd frame" });
    }
    while feed.ensure(1)? {
        let offset = feed.pos();
        if !feed.ensure(4)? {
            return Err(SeekError::Truncated {
                offset: feed.base + feed.end as u64,
            });
        }
        let magic = le32(feed.avail(), 0);
        if magic & ZSTD_SKIPPABLE_MASK == ZSTD_SKIPPABLE {
            let size = le32(feed.take(8)?, 4);
            feed.skip(u64::from(size), |_, _, _| Ok(()))?;
            continue;
        }
        if magic != ZSTD_MAGIC {
            return Err(SeekError::ZstdMagic { offset, magic });
        }
        if b.due() && offset > 0 {
            b.cut(&mut feed, Checkpoint::Start)?;
        }
        z.made = 0;
        z.run(feed.take(4)?, offset, 1)?;
        let header = zstd_frame_header_len(&mut feed, offset)?;
        let at = feed.pos();
        let h = feed.take(header)?;
        let checksum = h[0] & 0x04 != 0;
        let declared = zstd_frame_content_size(h);
        z.run(h, at, 1)?;
        loop {
            let at = feed.pos();
            let bh = feed.take(3)?;
            let (is_last, kind, size) = (
                bh[0] & 1 != 0,
                (bh[0] >> 1) & 3,
                (usize::from(bh[0]) >> 3) | usize::from(bh[1]) << 5 | usize::from(bh[2]) << 13,
            );
            let content = match kind {
                0 | 2 => size,
                1 => 1,
                _ => return Err(SeekError::ZstdBlockType { offset: at }),
            };
            if size > MAX_ZSTD_BLOCK {
                return Err(SeekError::ZstdBlockSize { offset: at, size });
            }
            let tail = if !is_last {
                1
            } else if checksum {
                4
            } else {
                0
            };
            z.run(bh, at, content as u64 + tail)?;
            feed.skip(content as u64, |bytes, at, left| {
                z.run(bytes, at, left + tail)
            })?;
            if is_last {
                break;
            }
        }
        if checksum {
            let at = feed.pos();
            z.run(feed.take(4)?, at, 0)?;
        }
        // zstd's decoder refuses a frame whose content is not the size its header declares.
        if let Some(declared) = declared
            && declared != z.made
        {
            return Err(SeekError::ZstdContentSize {
                offset,
                declared,
                made: z.made,
            });
        }
        b.output(z.made, &mut feed);
    }
    b.finish(SeekCompression::Zstd, &mut feed)
}

/// The length of a zstd frame header after its magic (RFC 8878 3.1.1.1), which `feed` is at.
fn zstd_frame_header_len<R: Read>(feed: &mut Feed<R>, offset: u64) -> Result<usize, SeekError> {
    if !feed.ensure(1)? {
        return Err(SeekError::Truncated { offset: feed.pos() });
    }
    let descriptor = feed.avail()[0];
    if descriptor & 0x08 != 0 {
        return Err(SeekError::ZstdReservedBit { offset });
    }
    let (at, width) = zstd_content_size_field(descriptor);
    Ok(at + width)
}

/// Where a zstd frame header (after the magic) keeps its content size, read from the header's
/// descriptor byte: the field's offset and width. The header ends with that field.
fn zstd_content_size_field(descriptor: u8) -> (usize, usize) {
    let single_segment = descriptor & 0x20 != 0;
    let dictionary = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let width = match descriptor >> 6 {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    (1 + usize::from(!single_segment) + dictionary, width)
}

/// The content size a zstd frame header (`h`, after the magic, as long as
/// [`zstd_frame_header_len`] says) declares, when it declares one.
fn zstd_frame_content_size(h: &[u8]) -> Option<u64> {
    let (at, width) = zstd_content_size_field(*h.first()?);
    if width == 0 {
        return None;
    }
    let mut bytes = [0u8; 8];
    bytes[..width].copy_from_slice(h.get(at..at + width)?);
    let size = u64::from_le_bytes(bytes);
    // A two-byte field counts from 256 (RFC 8878 3.1.1.1.4).
    Some(if width == 2 { size + 256 } else { size })
}

fn unzstd_span(
    index: usize,
    span: &Span,
    compressed: &[u8],
    want: u64,
) -> Result<Vec<u8>, SeekError> {
    let mut dctx = DCtx::create();
    let chunk = usize::try_from(want.saturating_add(1))
        .unwrap_or(usize::MAX)
        .min(OUT_CHUNK);
    let mut scratch = vec![0u8; chunk];
    let mut out = Vec::with_capacity(chunk.min(usize::try_from(want).unwrap_or(usize::MAX)));
    let last = unzstd_run(
        &mut dctx,
        compressed,
        &mut scratch,
        span.compressed.start,
        |o| {
            if (out.len() + o.len()) as u64 > want {
                return Err(SeekError::SpanOutputLong {
                    index,
                    expected: want,
                });
            }
            out.extend_from_slice(o);
            Ok(())
        },
    )?;
    if last != 0 {
        return Err(SeekError::ZstdFrameEnd {
            offset: span.compressed.end,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Deterministic text-like bytes: words from a small vocabulary, with random noise, so that
    /// deflate makes dynamic blocks with both literals and matches.
    fn text(len: usize, seed: u64) -> Vec<u8> {
        let words: [&[u8]; 12] = [
            b"layer ",
            b"image ",
            b"usr/lib/",
            b"\n",
            b"0123 ",
            b"seek ",
            b"span ",
            b"zran ",
            b"a",
            b"b",
            b"c",
            b"d",
        ];
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                out.push((x >> 24) as u8);
            } else {
                out.extend_from_slice(words[(x >> 40) as usize % words.len()]);
            }
        }
        out.truncate(len);
        out
    }

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn gunzip_whole(blob: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn zstd_frame(data: &[u8], checksum: bool) -> Vec<u8> {
        let mut e = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        e.include_checksum(checksum).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn skippable(n: u8, len: usize) -> Vec<u8> {
        let mut out = (ZSTD_SKIPPABLE | u32::from(n)).to_le_bytes().to_vec();
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend(std::iter::repeat_n(0xa5, len));
        out
    }

    /// Builds a table and checks it against the whole-stream truth: every span decompressed
    /// alone is its slice of the whole, and the table survives encode and decode.
    fn check(compression: SeekCompression, blob: &[u8], whole: &[u8], span: u64) -> SeekTable {
        let t = SeekTable::build(compression, blob, span).unwrap();
        assert_eq!(t.compressed_size(), blob.len() as u64);
        assert_eq!(t.uncompressed_size(), whole.len() as u64);
        let (mut c, mut u) = (0, 0);
        for (i, s) in t.spans().iter().enumerate() {
            assert_eq!(
                (s.compressed.start, s.uncompressed.start),
                (c, u),
                "span {i}"
            );
            (c, u) = (s.compressed.end, s.uncompressed.end);
            let bytes = &blob[s.compressed.start as usize..s.compressed.end as usize];
            let digest: [u8; 32] = Sha256::digest(bytes).into();
            assert_eq!(digest, s.digest, "span {i} digest");
            let out = t
                .decompress_span(i, bytes)
                .unwrap_or_else(|e| panic!("span {i}: {e}"));
            assert!(
                out == whole[s.uncompressed.start as usize..s.uncompressed.end as usize],
                "span {i} output"
            );
            if !out.is_empty() {
                assert_eq!(t.span_at(s.uncompressed.start), Some(i));
                assert_eq!(t.span_at(s.uncompressed.end - 1), Some(i));
            }
        }
        assert_eq!((c, u), (blob.len() as u64, whole.len() as u64));
        assert_eq!(t.span_at(whole.len() as u64), None);
        let encoded = t.encode();
        let decoded = SeekTable::decode(&encoded).unwrap();
        assert_eq!(decoded.windows_size(), t.windows_blob().len() as u64);
        assert!(decoded.windows_blob().is_empty());
        for (i, s) in t.spans().iter().enumerate() {
            let bytes = &blob[s.compressed.start as usize..s.compressed.end as usize];
            let window = match decoded.window_range(i) {
                Some(r) => decoded
                    .open_window(i, &t.windows_blob()[r.start as usize..r.end as usize])
                    .unwrap(),
                None => Vec::new(),
            };
            let out = decoded.decompress_span_with(i, bytes, &window).unwrap();
            // The derived window is the whole output before; the stored one may be sparse:
            // equal where it is not zero, and both decode the span.
            if i > 0
                && let Some(derived) =
                    decoded.derive_window(i, &whole[..s.uncompressed.start as usize])
            {
                assert_eq!(derived.len(), window.len(), "span {i}: the derived window");
                assert!(
                    derived.iter().zip(&window).all(|(d, w)| *w == 0 || d == w),
                    "span {i}: the derived window"
                );
                let from_derived = decoded.decompress_span_with(i, bytes, &derived).unwrap();
                assert!(
                    from_derived
                        == whole[s.uncompressed.start as usize..s.uncompressed.end as usize]
                );
            }
            assert!(out == whole[s.uncompressed.start as usize..s.uncompressed.end as usize]);
        }
        let decoded = decoded.with_windows(t.windows_blob().to_vec()).unwrap();
        assert_eq!(decoded, t);
        t
    }

    #[test]
    fn gzip_round_trips() {
        let small = text(1 << 20, 1);
        let big = text(3 << 20, 2);
        let zeros = vec![0u8; 8 << 20];
        let mut multi = Vec::new();
        let mut multi_whole = Vec::new();
        for (i, level) in [1, 9, 0, 6, 6].into_iter().enumerate() {
            let part = if i == 3 {
                Vec::new()
            } else {
                text(400_000, 10 + i as u64)
            };
            multi.extend(gzip(&part, level));
            multi_whole.extend(part);
        }
        let cases: Vec<(&str, Vec<u8>, Vec<u8>, u64)> = vec![
            ("level 1", gzip(&big, 1), big.clone(), 256 << 10),
            ("level 9", gzip(&big, 9), big.clone(), 256 << 10),
            ("level 6, span 1", gzip(&small, 6), small.clone(), 1),
            ("stored", gzip(&big, 0), big.clone(), 100_000),
            ("one span", gzip(&big, 6), big.clone(), 1 << 40),
            ("empty", gzip(&[], 6), Vec::new(), 1024),
            ("long blocks", gzip(&zeros, 9), zeros.clone(), 64 << 10),
            (
                "multi-member",
                multi.clone(),
                multi_whole.clone(),
                128 << 10,
            ),
            (
                "multi-member, small spans",
                multi.clone(),
                multi_whole.clone(),
                4096,
            ),
        ];
        for (name, blob, whole, span) in cases {
            eprintln!("{name}");
            assert_eq!(gunzip_whole(&blob), whole, "{name}: flate2 disagrees");
            let t = check(SeekCompression::Gzip, &blob, &whole, span);
            eprintln!("{name}: {} spans", t.spans().len());
            if name.starts_with("level") {
                assert!(t.spans().len() > 4, "{name}: {} spans", t.spans().len());
            }
        }
    }

    #[test]
    fn gzip_blocks_checkpoints_carry_bits_and_windows() {
        let data = text(2 << 20, 3);
        let t = SeekTable::build(SeekCompression::Gzip, &gzip(&data, 6)[..], 64 << 10).unwrap();
        let blocks = t
            .checkpoints
            .iter()
            .filter(|c| matches!(c, Checkpoint::Block { .. }));
        assert!(blocks.clone().count() > 10);
        assert!(
            blocks
                .clone()
                .any(|c| matches!(c, Checkpoint::Block { num_bits, .. } if *num_bits > 0))
        );
        assert!(blocks.clone().all(
            |c| matches!(c, Checkpoint::Block { window_len, .. } if *window_len as usize <= WINDOW)
        ));
        assert!(
            blocks
                .clone()
                .any(|c| matches!(c, Checkpoint::Block { window_len, .. } if *window_len > 0))
        );
    }

    /// Incompressible data is deflated into stored blocks, which refer to no history: spans
    /// made only of them keep no window; a span that mixes in compressed blocks keeps one.
    #[test]
    fn stored_spans_keep_no_window() {
        let mut noise = vec![0u8; 3 << 20];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let t = check(SeekCompression::Gzip, &gzip(&noise, 6), &noise, 256 << 10);
        let blocks: Vec<_> = t
            .checkpoints
            .iter()
            .filter(|c| matches!(c, Checkpoint::Block { .. }))
            .collect();
        assert!(blocks.len() > 5, "{} block checkpoints", blocks.len());
        assert!(
            blocks
                .iter()
                .all(|c| matches!(c, Checkpoint::Block { window_len: 0, .. })),
            "a stored span kept a window"
        );
        assert!(t.encode().len() < 64 << 10, "{} bytes", t.encode().len());
        // Noise, then text: the text's spans refer back and keep their windows.
        let mut mixed = noise[..1 << 20].to_vec();
        mixed.extend(text(2 << 20, 9));
        let t = check(SeekCompression::Gzip, &gzip(&mixed, 6), &mixed, 256 << 10);
        assert!(
            t.checkpoints
                .iter()
                .any(|c| matches!(c, Checkpoint::Block { window_len, .. } if *window_len > 0))
        );
        assert!(
            t.checkpoints
                .iter()
                .any(|c| matches!(c, Checkpoint::Block { window_len: 0, .. }))
        );
    }

    /// Gzip of `data` by the `gzip` program, when it is installed: another encoder than
    /// flate2's, with its own block layout.
    fn gzip_program(data: &[u8], level: u32) -> Option<Vec<u8>> {
        use std::process::{Command, Stdio};
        let mut child = Command::new("gzip")
            .arg(format!("-{level}"))
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let input = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().ok()?;
        writer.join().ok()?.ok()?;
        out.status.success().then_some(out.stdout)
    }

    /// Up to `limit` bytes of the regular files under `dir`, in name order.
    fn files_under(dir: &std::path::Path, limit: usize, out: &mut Vec<u8>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if out.len() >= limit {
                return;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                files_under(&path, limit, out);
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(&path)
            {
                out.extend_from_slice(&bytes[..bytes.len().min(limit - out.len())]);
            }
        }
    }

    /// Windows keep only the bytes their span's output refers to: every span decodes from its
    /// sparse window (through the windows blob) as flate2 decodes the whole stream, the windows
    /// are far from whole, and every byte kept matters.
    #[test]
    fn sparse_windows_decode_like_the_whole_stream() {
        let mut inputs = vec![("text".to_string(), text(2 << 20, 11))];
        for dir in ["/usr/bin", "/usr/share"] {
            let mut data = Vec::new();
            files_under(std::path::Path::new(dir), 2 << 20, &mut data);
            if data.len() >= 1 << 20 {
                inputs.push((dir.to_string(), data));
            } else {
                eprintln!("{dir}: only {} bytes, left out", data.len());
            }
        }
        for (name, data) in &inputs {
            let mut blobs = vec![
                ("flate2 -1", gzip(data, 1)),
                ("flate2 -6", gzip(data, 6)),
                ("flate2 -9", gzip(data, 9)),
            ];
            for level in [6, 9] {
                match gzip_program(data, level) {
                    Some(blob) => {
                        blobs.push((if level == 6 { "gzip -6" } else { "gzip -9" }, blob))
                    }
                    None => eprintln!("no gzip program: its case is left out"),
                }
            }
            for (encoder, blob) in &blobs {
                let whole = gunzip_whole(blob);
                assert!(whole == *data, "{name}, {encoder}: flate2 disagrees");
                // Spans of one block (under the window's length) and of several.
                for span in [4096, 256 << 10] {
                    let t = check(SeekCompression::Gzip, blob, &whole, span);
                    let (mut kept, mut whole_nonzero, mut windows) = (0, 0, 0);
                    let mut flips = 0;
                    for (i, s) in t.spans().iter().enumerate() {
                        let Some(r) = t.window_range(i) else {
                            continue;
                        };
                        windows += 1;
                        let window = t
                            .open_window(i, &t.windows_blob()[r.start as usize..r.end as usize])
                            .unwrap();
                        let start = s.uncompressed.start as usize;
                        let before = &whole[start - start.min(WINDOW)..start];
                        whole_nonzero += before.iter().filter(|&&b| b != 0).count();
                        kept += window.iter().filter(|&&b| b != 0).count();
                        // A byte kept is one the span copies: changing it changes the output.
                        let bytes = &blob[s.compressed.start as usize..s.compressed.end as usize];
                        let truth = &whole[start..s.uncompressed.end as usize];
                        let positions: Vec<usize> =
                            (0..window.len()).filter(|&j| window[j] != 0).collect();
                        if flips < 24 {
                            for &j in positions.iter().step_by(positions.len() / 8 + 1) {
                                let mut changed = window.clone();
                                changed[j] ^= 0xff;
                                let out = t.decompress_span_with(i, bytes, &changed).unwrap();
                                assert!(out != truth, "{name}, {encoder}, span {i}: byte {j}");
                                flips += 1;
                            }
                        }
                    }
                    eprintln!(
                        "{name}, {encoder}, span {span}: {} spans, {windows} windows, \
                         {kept} of {whole_nonzero} nonzero window bytes kept, {} bytes packed",
                        t.spans().len(),
                        t.windows_size()
                    );
                    assert!(windows > 0, "{name}, {encoder}: no windows");
                    assert!(
                        kept * 2 < whole_nonzero,
                        "{name}, {encoder}, span {span}: {kept} of {whole_nonzero} kept"
                    );
                }
            }
        }
    }

    /// A span whose first output lies beyond [`MAX_PREFIX_INPUT`] compressed bytes (here
    /// behind empty stored blocks, one per flush) keeps its whole window, and still decodes.
    #[test]
    fn windows_stay_whole_past_the_input_kept() {
        let data = text(256 << 10, 12);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(&data).unwrap();
        for _ in 0..MAX_PREFIX_INPUT / 5 + 1000 {
            e.flush().unwrap();
        }
        e.write_all(&data[..64 << 10]).unwrap();
        let blob = e.finish().unwrap();
        assert!(blob.len() > MAX_PREFIX_INPUT, "{} bytes", blob.len());
        let mut whole = data.clone();
        whole.extend_from_slice(&data[..64 << 10]);
        assert_eq!(gunzip_whole(&blob), whole);
        let t = check(SeekCompression::Gzip, &blob, &whole, 256 << 10);
        assert_eq!(t.spans().len(), 2, "{:?}", t.spans());
        let r = t.window_range(1).expect("a window");
        let window = t
            .open_window(1, &t.windows_blob()[r.start as usize..r.end as usize])
            .unwrap();
        assert!(window == data[data.len() - WINDOW..], "the window is whole");
        // With the same bytes kept in full, the window is sparse.
        let s = &t.spans()[1];
        let Checkpoint::Block {
            num_bits, bit_buf, ..
        } = t.checkpoints[1]
        else {
            panic!("a block checkpoint");
        };
        let input = &blob[s.compressed.start as usize..];
        let sparse = sparse_window(num_bits, bit_buf, &window, input, WINDOW).unwrap();
        assert!(sparse.len() <= WINDOW && sparse.iter().filter(|&&b| b == 0).count() > 1000);
        // Too few bytes to reach the output asked for: no answer.
        assert_eq!(
            sparse_window(num_bits, bit_buf, &window, &input[..1000], WINDOW),
            None
        );
        assert_eq!(sparse_window(num_bits, bit_buf, &window, &[], 1), None);
    }

    #[test]
    fn zstd_round_trips() {
        let big = text(3 << 20, 4);
        let mut frames = skippable(0, 10);
        let mut whole = Vec::new();
        for i in 0..20 {
            let part = if i == 7 {
                Vec::new()
            } else {
                text(50_000 + i * 1000, 20 + i as u64)
            };
            frames.extend(zstd_frame(&part, i % 2 == 0));
            if i % 3 == 0 {
                frames.extend(skippable((i % 16) as u8, i * 7));
            }
            whole.extend(part);
        }
        let cases: Vec<(&str, Vec<u8>, Vec<u8>, u64)> = vec![
            (
                "single frame",
                zstd_frame(&big, true),
                big.clone(),
                256 << 10,
            ),
            ("many frames", frames.clone(), whole.clone(), 120_000),
            ("frame per span", frames.clone(), whole.clone(), 1),
            ("one span", frames.clone(), whole.clone(), 1 << 40),
            ("empty frame", zstd_frame(&[], false), Vec::new(), 1),
            ("only skippable", skippable(3, 100), Vec::new(), 1),
        ];
        for (name, blob, whole, span) in cases {
            eprintln!("{name}");
            assert_eq!(
                zstd::stream::decode_all(&blob[..]).unwrap(),
                whole,
                "{name}"
            );
            let t = check(SeekCompression::Zstd, &blob, &whole, span);
            if name == "frame per span" {
                assert_eq!(
                    t.spans().len(),
                    19,
                    "the empty frame folds into the one before"
                );
            }
        }
    }

    /// A zero-length gzip or zstd blob has no table: the whole-layer decoders refuse it too
    /// (zstd's accepts a blob of skippable frames only: that one builds, see above), so a lazy
    /// mount cannot show a layer that a whole fetch refuses.
    #[test]
    fn zero_length_blobs_are_refused_as_the_decoders_refuse_them() {
        let empty: &[u8] = &[];
        assert!(
            flate2::read::MultiGzDecoder::new(empty)
                .read_to_end(&mut Vec::new())
                .is_err()
        );
        assert!(matches!(
            SeekTable::build(SeekCompression::Gzip, empty, 1024),
            Err(SeekError::Empty { .. })
        ));
        assert!(zstd::stream::decode_all(empty).is_err());
        assert!(matches!(
            SeekTable::build(SeekCompression::Zstd, empty, 1),
            Err(SeekError::Empty { .. })
        ));
    }

    /// A gzip header with a CRC-16 (FHCRC) is checked as zlib checks it: right, the member
    /// builds and decodes like flate2's; wrong, both refuse it.
    #[test]
    fn gzip_header_crcs_are_checked_as_zlib_checks_them() {
        let data = text(100_000, 7);
        let plain = gzip(&data, 6);
        let mut header = plain[..10].to_vec();
        header[3] |= 1 << 1; // FHCRC
        let crc = (crc32fast::hash(&header) & 0xffff) as u16;
        for (stored, good) in [(crc, true), (crc ^ 0x0100, false)] {
            let mut blob = header.clone();
            blob.extend_from_slice(&stored.to_le_bytes());
            blob.extend_from_slice(&plain[10..]);
            let flate2_ok = flate2::read::MultiGzDecoder::new(&blob[..])
                .read_to_end(&mut Vec::new())
                .is_ok();
            assert_eq!(flate2_ok, good, "flate2 and the stored CRC {stored:#06x}");
            if good {
                check(SeekCompression::Gzip, &blob, &data, 16 << 10);
            } else {
                assert!(matches!(
                    SeekTable::build(SeekCompression::Gzip, &blob[..], 16 << 10),
                    Err(SeekError::GzipHeaderCrc { .. })
                ));
            }
        }
    }

    /// A zstd frame whose header declares a content size its blocks do not make is refused, as
    /// zstd's decoder refuses it; frames of every content-size field width that do build.
    #[test]
    fn zstd_frame_content_sizes_are_checked() {
        // Magic, single segment with a 1-byte size of 4, then one last raw block of 0 bytes.
        let lying = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x04, 0x01, 0x00, 0x00];
        assert!(zstd::stream::decode_all(&lying[..]).is_err());
        assert!(matches!(
            SeekTable::build(SeekCompression::Zstd, &lying[..], 1),
            Err(SeekError::ZstdContentSize {
                declared: 4,
                made: 0,
                ..
            })
        ));
        for len in [0, 100, 300, 70_000] {
            let data = text(len, 9);
            let blob = zstd::bulk::compress(&data, 3).unwrap();
            assert_eq!(zstd_frame_content_size(&blob[4..]), Some(len as u64));
            check(SeekCompression::Zstd, &blob, &data, 1 << 20);
        }
    }

    #[test]
    fn none_round_trips() {
        for (len, span) in [
            (0, 10),
            (1, 10),
            (100, 10),
            (105, 10),
            (1 << 20, 4096),
            (5, 1 << 30),
        ] {
            let data = text(len, 5);
            let t = check(SeekCompression::None, &data, &data, span);
            assert_eq!(t.spans().len(), len.div_ceil(span as usize));
        }
    }

    #[test]
    fn build_refuses_bad_streams() {
        let good = gzip(&text(300_000, 6), 6);
        let mut crc = good.clone();
        let n = crc.len();
        crc[n - 8] ^= 1;
        let mut size = good.clone();
        size[n - 1] ^= 1;
        let mut garbage = good.clone();
        garbage.extend_from_slice(b"garbage!!!");
        let mut method = good.clone();
        method[2] = 7;
        let mut flags = good.clone();
        flags[3] = 0x80;
        let mut name = vec![0x1f, 0x8b, 8, 1 << 3, 0, 0, 0, 0, 0, 3];
        name.extend(std::iter::repeat_n(b'a', MAX_GZIP_STRING + 1));
        let frame = zstd_frame(&text(100_000, 7), true);
        let mut zcut = frame.clone();
        zcut.truncate(frame.len() - 1);
        let mut zbad = frame.clone();
        zbad[frame.len() / 2] ^= 0xff;
        let cases: Vec<(&str, SeekCompression, Vec<u8>, u64)> = vec![
            ("span 0", SeekCompression::None, vec![1], 0),
            (
                "truncated",
                SeekCompression::Gzip,
                good[..good.len() / 2].to_vec(),
                1024,
            ),
            (
                "trailer cut",
                SeekCompression::Gzip,
                good[..good.len() - 3].to_vec(),
                1024,
            ),
            ("crc", SeekCompression::Gzip, crc, 1024),
            ("size", SeekCompression::Gzip, size, 1024),
            ("garbage after", SeekCompression::Gzip, garbage, 1024),
            ("method", SeekCompression::Gzip, method, 1024),
            ("flags", SeekCompression::Gzip, flags, 1024),
            ("long name", SeekCompression::Gzip, name, 1024),
            ("not gzip", SeekCompression::Gzip, b"hello".to_vec(), 1024),
            ("one byte", SeekCompression::Gzip, vec![0x1f], 1024),
            ("zstd cut", SeekCompression::Zstd, zcut, 1024),
            ("zstd damaged", SeekCompression::Zstd, zbad, 1024),
            (
                "zstd magic",
                SeekCompression::Zstd,
                b"not zstd".to_vec(),
                1024,
            ),
            ("zstd short", SeekCompression::Zstd, vec![0x28, 0xb5], 1024),
        ];
        for (name, compression, blob, span) in cases {
            let e = SeekTable::build(compression, &blob[..], span);
            assert!(e.is_err(), "{name}: built");
            eprintln!("{name}: {}", e.unwrap_err());
        }
    }

    fn sample() -> (Vec<u8>, SeekTable) {
        let data = text(1 << 20, 8);
        let blob = gzip(&data, 6);
        let t = SeekTable::build(SeekCompression::Gzip, &blob[..], 128 << 10).unwrap();
        assert!(t.spans().len() >= 4);
        (blob, t)
    }

    #[test]
    fn decode_refuses_damage() {
        let (_, t) = sample();
        let good = t.encode();
        let rec = |i: usize, at: usize| HEADER_LEN + i * SPAN_RECORD_LEN + at;
        type Edit = Box<dyn Fn(&mut Vec<u8>)>;
        let put64 = |at: usize, v: u64| -> Edit {
            Box::new(move |b| b[at..at + 8].copy_from_slice(&v.to_le_bytes()))
        };
        let put32 = |at: usize, v: u32| -> Edit {
            Box::new(move |b| b[at..at + 4].copy_from_slice(&v.to_le_bytes()))
        };
        let put8 = |at: usize, v: u8| -> Edit { Box::new(move |b| b[at] = v) };
        let s1 = &t.spans()[1];
        let cases: Vec<(&str, Edit)> = vec![
            ("magic", put8(0, b'X')),
            ("version", put32(8, VERSION + 1)),
            ("compression", put8(12, 9)),
            ("reserved", put8(13, 1)),
            ("count overflows", put64(32, u64::MAX / 8)),
            ("count over the limit", put64(32, MAX_SPANS + 1)),
            ("count one more", put64(32, t.spans().len() as u64 + 1)),
            ("windows length", put64(40, u64::MAX)),
            ("gap", put64(rec(1, 0), s1.compressed.start + 1)),
            ("overlap", put64(rec(1, 0), s1.compressed.start - 1)),
            ("output gap", put64(rec(1, 16), s1.uncompressed.start + 1)),
            ("reversed", put64(rec(1, 8), s1.compressed.start)),
            ("sizes", put64(16, t.compressed_size() + 1)),
            ("output size", put64(24, t.uncompressed_size() - 1)),
            ("bits over 7", put8(rec(1, 65), 8)),
            ("bits beyond count", put8(rec(1, 66), 0xff)),
            ("window over 32 KiB", put32(rec(1, 68), WINDOW as u32 + 1)),
            ("window place", put64(rec(1, 72), 1)),
            ("window size", put32(rec(1, 80), u32::MAX)),
            ("kind", put8(rec(1, 64), 7)),
            ("first span a block", put8(rec(0, 64), KIND_BLOCK)),
            ("record reserved", put8(rec(1, 67), 1)),
            ("window digest of a fresh start", put8(rec(0, 100), 1)),
            ("window offset of a fresh start", put64(rec(0, 72), 1)),
            ("window without its length", put32(rec(1, 68), 0)),
            ("window length without a window", put32(rec(1, 80), 0)),
            ("windows blob size short", put64(40, t.windows_size() - 1)),
            ("windows blob size long", put64(40, t.windows_size() + 1)),
        ];
        for (name, edit) in cases {
            let mut b = good.clone();
            edit(&mut b);
            seal(&mut b);
            let e = SeekTable::decode(&b);
            assert!(e.is_err(), "{name}: decoded");
            eprintln!("{name}: {}", e.unwrap_err());
        }
        let mut b = good.clone();
        b[HEADER_LEN] ^= 1;
        assert!(matches!(
            SeekTable::decode(&b),
            Err(SeekError::Checksum { .. })
        ));
        for cut in 0..good.len() {
            assert!(SeekTable::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn decompress_span_refuses_wrong_bytes() {
        let (blob, t) = sample();
        for (i, s) in t.spans().iter().enumerate() {
            let bytes = &blob[s.compressed.start as usize..s.compressed.end as usize];
            assert!(t.decompress_span(i, &bytes[1..]).is_err());
            // Another span's bytes, cut or padded to this one's length.
            let other = &blob[..bytes.len()];
            if i > 0 {
                assert!(
                    t.decompress_span(i, other).is_err(),
                    "span {i} took span 0's bytes"
                );
            }
            for at in (0..bytes.len()).step_by(bytes.len() / 50 + 1) {
                let mut damaged = bytes.to_vec();
                damaged[at] ^= 0x5a;
                let _ = t.decompress_span(i, &damaged);
            }
        }
        assert!(t.decompress_span(t.spans().len(), &[]).is_err());
    }

    #[test]
    fn windows_are_checked_before_use() {
        let (blob, t) = sample();
        let decoded = SeekTable::decode(&t.encode()).unwrap();
        let i = (1..t.spans().len())
            .find(|&i| t.window_range(i).is_some())
            .expect("a span with a window");
        let s = &t.spans()[i];
        let bytes = &blob[s.compressed.start as usize..s.compressed.end as usize];
        // Without its blob, a decoded table cannot decompress a span that needs a window.
        assert!(matches!(
            decoded.decompress_span(i, bytes),
            Err(SeekError::WindowMissing { .. })
        ));
        let r = t.window_range(i).unwrap();
        let good = &t.windows_blob()[r.start as usize..r.end as usize];
        let window = decoded.open_window(i, good).unwrap();
        let Checkpoint::Block { window_len, .. } = decoded.checkpoints[i] else {
            panic!("span {i} is not a block checkpoint");
        };
        assert!(window_len > 0 && window_len as usize == window.len());
        // Every damaged byte, a cut and a longer input are refused by the digest or length.
        for at in 0..good.len() {
            let mut damaged = good.to_vec();
            damaged[at] ^= 0x01;
            assert!(matches!(
                decoded.open_window(i, &damaged),
                Err(SeekError::WindowDigest { .. })
            ));
        }
        assert!(decoded.open_window(i, &good[1..]).is_err());
        assert!(decoded.open_window(i, &[good, b"x"].concat()).is_err());
        assert!(decoded.open_window(t.spans().len(), good).is_err());
        // Another span's window is refused too.
        if let Some(j) = (i + 1..t.spans().len()).find(|&j| t.window_range(j).is_some()) {
            let r = t.window_range(j).unwrap();
            assert!(
                decoded
                    .open_window(i, &t.windows_blob()[r.start as usize..r.end as usize])
                    .is_err()
            );
        }
        // A window of the wrong length, or none where one is needed, is an error.
        assert!(
            decoded
                .decompress_span_with(i, bytes, &window[1..])
                .is_err()
        );
        assert!(decoded.decompress_span_with(i, bytes, &[]).is_err());
        assert!(
            decoded
                .decompress_span_with(0, &blob[..t.spans()[0].compressed.end as usize], &window)
                .is_err()
        );
        // A wrong window of the right length gives wrong output or an error, never a panic.
        let mut wrong = window.clone();
        wrong.reverse();
        let _ = decoded.decompress_span_with(i, bytes, &wrong);
        // The blob must be as long as the table says.
        let short = t.windows_blob()[1..].to_vec();
        assert!(decoded.clone().with_windows(short).is_err());
        // A damaged blob attached is caught by the window's digest.
        let mut damaged = t.windows_blob().to_vec();
        damaged[r.start as usize] ^= 0xff;
        let attached = decoded.with_windows(damaged).unwrap();
        assert!(matches!(
            attached.decompress_span(i, bytes),
            Err(SeekError::WindowDigest { .. })
        ));
    }

    #[test]
    fn windows_live_outside_the_table() {
        let (_, t) = sample();
        let spans = t.spans().len();
        assert_eq!(
            t.encode().len(),
            HEADER_LEN + spans * SPAN_RECORD_LEN + CHECKSUM_LEN
        );
        assert!(t.windows_size() > 0);
    }

    #[test]
    fn decompress_span_bounds_output_from_a_lying_table() {
        // A table claiming a tiny span of a long stream, as a hostile decode would give.
        let data = vec![7u8; 1 << 20];
        let blob = gzip(&data, 9);
        let mut t = SeekTable::build(SeekCompression::Gzip, &blob[..], 1 << 40).unwrap();
        t.spans[0].uncompressed.end = 10;
        assert!(matches!(
            t.decompress_span(0, &blob),
            Err(SeekError::SpanOutputLong { .. })
        ));
        let frame = zstd_frame(&data, false);
        let mut t = SeekTable::build(SeekCompression::Zstd, &frame[..], 1 << 40).unwrap();
        t.spans[0].uncompressed.end = 10;
        assert!(t.decompress_span(0, &frame).is_err());
    }
}
