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
//! deflate window, made sparse), kept zstd-compressed. For zstd a span starts at a frame;
//! skippable frames fold into the span before them. An uncompressed blob is cut into fixed
//! pieces. A new span starts at the first possible point after at least `span` bytes of
//! output since the last one.
//!
//! **Sparse windows.** A window holds only the bytes its span refers to, every other byte zero,
//! so it is exactly as good as the whole output before the span, which
//! [`SeekTable::derive_window`] takes instead: a reader cannot tell them apart. How the
//! builder finds those bytes is in `sparse.rs`.
//!
//! One concern per file: [`codec`] specifies the table's encoding and implements it; `feed.rs`
//! buffers and hashes the compressed input as it streams past; `builder.rs` cuts the spans and
//! packs their windows; `gzip.rs` and `zstd.rs` walk each format while building and decode one
//! span when reading; `sparse.rs` finds what a window's span refers to. This file holds the
//! table, its errors and what a reader does with it: find a span, open its window, decompress
//! it. Nothing in a table that [`SeekTable::decode`] accepted can make those panic, read out
//! of bounds or allocate beyond the output the span's bytes actually produce.

use std::io::{self, Read};
use std::ops::Range;

use miniz_oxide::inflate::TINFLStatus;
use sha2::{Digest, Sha256};

mod builder;
pub(crate) mod codec;
mod feed;
mod gzip;
mod sparse;
mod zstd;

pub use codec::{HEADER_LEN, MAGIC, SPAN_RECORD_LEN, VERSION, seal};

use self::zstd::{MAX_ZSTD_BLOCK, build_zstd, unzstd_span};
use builder::build_none;
use gzip::{MAX_GZIP_STRING, build_gzip, inflate_span};

/// Deflate's largest back-reference distance: all the history a block boundary needs.
pub const WINDOW: usize = 32 << 10;
/// At least 4 KiB per span over a 64 TiB layer: far beyond any image, and the record table
/// it allows (1.4 GiB) is still checked against the bytes actually present before allocating.
pub(crate) const MAX_SPANS: u64 = 1 << 24;
/// Output decoded at a time after the window: the window is moved once per chunk.
const OUT_CHUNK: usize = 1 << 20;

/// How the blob a table describes is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekCompression {
    None,
    Gzip,
    Zstd,
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

    pub(crate) fn compression(&self) -> SeekCompression {
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
            ::zstd::bulk::decompress(compressed, *window_len as usize).map_err(|_| corrupt())?;
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
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    /// A zero-length gzip or zstd blob has no table: the whole-layer decoders refuse it too
    /// (zstd's accepts a blob of skippable frames only: that one builds, see
    /// `zstd_round_trips`), so a lazy mount cannot show a layer that a whole fetch refuses.
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
        assert!(::zstd::stream::decode_all(empty).is_err());
        assert!(matches!(
            SeekTable::build(SeekCompression::Zstd, empty, 1),
            Err(SeekError::Empty { .. })
        ));
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
