//! A lazy layer's table of spans, and the check that bytes are a span's.
//!
//! Takes imgfs's seek table of the blob ([`SeekTable`]) or the table the layer's own TOC
//! (eStargz, zstd:chunked) gives ([`ChunkTable`]); hands on one [`Table`] that says where each
//! span lies, compressed and not, and opens a span's bytes into its data. Guarantees: bytes
//! are opened only once they match the span's digest (a seek table) or the digests of the
//! file data they decode to (a TOC); bytes that do not are [`Unservable`].

use std::ops::Range;

use sha2::Digest as _;

use crate::index::seek::SeekTable;
use crate::index::toc::{ChunkError, ChunkTable};

/// A lazy layer's spans: imgfs's seek table of the blob, or the pieces the layer's own TOC
/// (eStargz, zstd:chunked) names.
pub enum Table {
    Seek(SeekTable),
    Toc(ChunkTable),
}

/// Why stored or fetched bytes of a span cannot be served.
pub(super) enum Unservable {
    /// They are not the span's bytes: fetch them again.
    Mismatch,
    /// They match, yet do not decode as the table says.
    Corrupt(String),
}

impl Table {
    pub fn len(&self) -> usize {
        match self {
            Table::Seek(t) => t.spans().len(),
            Table::Toc(t) => t.spans().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Span `i`'s bytes in the compressed blob (`i` below [`len`](Self::len)).
    pub fn compressed(&self, i: usize) -> Range<u64> {
        match self {
            Table::Seek(t) => t.spans()[i].compressed.clone(),
            Table::Toc(t) => t.spans()[i].compressed.clone(),
        }
    }

    /// What span `i` yields of the stream the index addresses.
    pub fn uncompressed(&self, i: usize) -> Range<u64> {
        match self {
            Table::Seek(t) => t.spans()[i].uncompressed.clone(),
            Table::Toc(t) => t.spans()[i].uncompressed.clone(),
        }
    }

    pub fn span_at(&self, at: u64) -> Option<usize> {
        match self {
            Table::Seek(t) => t.span_at(at),
            Table::Toc(t) => t.span_at(at),
        }
    }

    pub fn compressed_size(&self) -> u64 {
        match self {
            Table::Seek(t) => t.compressed_size(),
            Table::Toc(t) => t.compressed_size(),
        }
    }

    pub fn uncompressed_size(&self) -> u64 {
        match self {
            Table::Seek(t) => t.uncompressed_size(),
            Table::Toc(t) => t.uncompressed_size(),
        }
    }

    /// Where span `i`'s window lies in the layer's windows blob; `None` when it needs none (a
    /// fresh start, any TOC span).
    pub fn window_range(&self, i: usize) -> Option<Range<u64>> {
        match self {
            Table::Seek(t) => t.window_range(i),
            Table::Toc(_) => None,
        }
    }

    /// Span `i`'s window taken from the output of the span before it.
    pub fn derive_window(&self, i: usize, before: &[u8]) -> Option<Vec<u8>> {
        match self {
            Table::Seek(t) => t.derive_window(i, before),
            Table::Toc(_) => None,
        }
    }

    /// Span `i`'s window from its bytes in the windows blob, checked against its digest.
    pub fn open_window(
        &self,
        i: usize,
        compressed: &[u8],
    ) -> Result<Vec<u8>, crate::index::seek::SeekError> {
        match self {
            Table::Seek(t) => t.open_window(i, compressed),
            Table::Toc(_) => Ok(Vec::new()),
        }
    }

    /// Whether `bytes` are span `i`'s: its digest (a seek table), or the digests of the
    /// file data it decodes to (a TOC: then that data too, decoded once).
    pub(super) fn check(&self, i: usize, bytes: &[u8]) -> Result<Option<Vec<u8>>, Unservable> {
        match self {
            Table::Seek(t) if sha2::Sha256::digest(bytes).as_slice() == t.spans()[i].digest => {
                Ok(None)
            }
            Table::Seek(_) => Err(Unservable::Mismatch),
            Table::Toc(_) => self.open(i, bytes, None).map(Some),
        }
    }

    /// Span `i` decompressed from `bytes`, once they are checked to be its.
    /// A seek table's span decodes from its checkpoint's `window` (from the windows blob)
    /// when given, else from the table's own.
    pub(super) fn open(
        &self,
        i: usize,
        bytes: &[u8],
        window: Option<&[u8]>,
    ) -> Result<Vec<u8>, Unservable> {
        match self {
            Table::Seek(t) => {
                if sha2::Sha256::digest(bytes).as_slice() != t.spans()[i].digest {
                    return Err(Unservable::Mismatch);
                }
                match window {
                    Some(w) => t.decompress_span_with(i, bytes, w),
                    None => t.decompress_span(i, bytes),
                }
                .map_err(|e| Unservable::Corrupt(e.to_string()))
            }
            Table::Toc(t) => t.open_span(i, bytes).map_err(|e| match e {
                ChunkError::Mismatch(_) | ChunkError::Corrupt { .. } => Unservable::Mismatch,
                ChunkError::NoSuchSpan(_) => Unservable::Corrupt(e.to_string()),
            }),
        }
    }
}
