//! What every table of a layer's spans answers, whoever made it: imgfs's seek table of a
//! gzip or zstd blob ([`super::seek::SeekTable`]) or the pieces a layer's own TOC names
//! (eStargz, zstd:chunked: [`super::toc::ChunkTable`]).
//!
//! Takes a span's number and its compressed bytes; hands on where the span lies, compressed
//! and not, and its data. Guarantees: bytes are opened only once they match the span's
//! digest (a seek table) or the digests of the file data they decode to (a TOC); bytes that
//! do not are a [`SpanFault`].

use std::ops::Range;

use sha2::{Digest, Sha256};

use super::seek::{SeekError, SeekTable};
use super::toc::{ChunkError, ChunkTable};

/// Why stored or fetched bytes of a span cannot be served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SpanFault {
    /// They are not the span's bytes: fetch them again.
    Mismatch,
    /// They match, yet do not decode as the table says.
    Corrupt(String),
}

/// A layer's spans: each an independently decodable piece of the compressed blob.
pub(crate) trait SpanTable: Send + Sync {
    /// How many spans there are.
    #[allow(clippy::len_without_is_empty)]
    fn len(&self) -> usize;

    /// Span `i`'s bytes in the compressed blob (`i` below [`len`](Self::len)).
    fn compressed(&self, i: usize) -> Range<u64>;

    /// What span `i` yields of the stream the index addresses.
    fn uncompressed(&self, i: usize) -> Range<u64>;

    /// The span holding stream offset `at`; `None` past the end.
    fn span_at(&self, at: u64) -> Option<usize>;

    fn compressed_size(&self) -> u64;

    fn uncompressed_size(&self) -> u64;

    /// The size of the blob of windows some spans decode from; `None` when no span needs one
    /// (every span of a TOC is a whole gzip member or zstd frame).
    fn windows_size(&self) -> Option<u64> {
        None
    }

    /// Where span `i`'s window lies in the windows blob; `None` when it needs none.
    fn window_range(&self, _i: usize) -> Option<Range<u64>> {
        None
    }

    /// Span `i`'s window taken from the output of the span before it.
    fn derive_window(&self, _i: usize, _before: &[u8]) -> Option<Vec<u8>> {
        None
    }

    /// Span `i`'s window from its bytes in the windows blob, checked against its digest.
    fn open_window(&self, _i: usize, _compressed: &[u8]) -> Result<Vec<u8>, SeekError> {
        Ok(Vec::new())
    }

    /// Whether `bytes` are span `i`'s: `Some` with the span's data when checking them
    /// meant decoding them (a TOC's digests name the file data).
    fn check(&self, i: usize, bytes: &[u8]) -> Result<Option<Vec<u8>>, SpanFault>;

    /// Span `i`'s data from `bytes`, once they are checked to be its; `window` is its
    /// checkpoint's window from the windows blob, when the span needs one and it is at hand.
    fn open(&self, i: usize, bytes: &[u8], window: Option<&[u8]>) -> Result<Vec<u8>, SpanFault>;
}

impl SpanTable for SeekTable {
    fn len(&self) -> usize {
        self.spans().len()
    }

    fn compressed(&self, i: usize) -> Range<u64> {
        self.spans()[i].compressed.clone()
    }

    fn uncompressed(&self, i: usize) -> Range<u64> {
        self.spans()[i].uncompressed.clone()
    }

    fn span_at(&self, at: u64) -> Option<usize> {
        SeekTable::span_at(self, at)
    }

    fn compressed_size(&self) -> u64 {
        SeekTable::compressed_size(self)
    }

    fn uncompressed_size(&self) -> u64 {
        SeekTable::uncompressed_size(self)
    }

    fn windows_size(&self) -> Option<u64> {
        Some(SeekTable::windows_size(self))
    }

    fn window_range(&self, i: usize) -> Option<Range<u64>> {
        SeekTable::window_range(self, i)
    }

    fn derive_window(&self, i: usize, before: &[u8]) -> Option<Vec<u8>> {
        SeekTable::derive_window(self, i, before)
    }

    fn open_window(&self, i: usize, compressed: &[u8]) -> Result<Vec<u8>, SeekError> {
        SeekTable::open_window(self, i, compressed)
    }

    fn check(&self, i: usize, bytes: &[u8]) -> Result<Option<Vec<u8>>, SpanFault> {
        let span = self.spans().get(i).ok_or(SpanFault::Mismatch)?;
        if Sha256::digest(bytes).as_slice() == span.digest {
            Ok(None)
        } else {
            Err(SpanFault::Mismatch)
        }
    }

    fn open(&self, i: usize, bytes: &[u8], window: Option<&[u8]>) -> Result<Vec<u8>, SpanFault> {
        self.check(i, bytes)?;
        match window {
            Some(w) => self.decompress_span_with(i, bytes, w),
            None => self.decompress_span(i, bytes),
        }
        .map_err(|e| SpanFault::Corrupt(e.to_string()))
    }
}

impl SpanTable for ChunkTable {
    fn len(&self) -> usize {
        self.spans().len()
    }

    fn compressed(&self, i: usize) -> Range<u64> {
        self.spans()[i].compressed.clone()
    }

    fn uncompressed(&self, i: usize) -> Range<u64> {
        self.spans()[i].uncompressed.clone()
    }

    fn span_at(&self, at: u64) -> Option<usize> {
        ChunkTable::span_at(self, at)
    }

    fn compressed_size(&self) -> u64 {
        ChunkTable::compressed_size(self)
    }

    fn uncompressed_size(&self) -> u64 {
        ChunkTable::uncompressed_size(self)
    }

    /// Checking a TOC span's bytes means decoding them: the digests are of the file data.
    fn check(&self, i: usize, bytes: &[u8]) -> Result<Option<Vec<u8>>, SpanFault> {
        self.open(i, bytes, None).map(Some)
    }

    fn open(&self, i: usize, bytes: &[u8], _window: Option<&[u8]>) -> Result<Vec<u8>, SpanFault> {
        self.open_span(i, bytes).map_err(|e| match e {
            ChunkError::Mismatch(_) | ChunkError::Corrupt { .. } => SpanFault::Mismatch,
            ChunkError::NoSuchSpan(_) => SpanFault::Corrupt(e.to_string()),
        })
    }
}
