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

    /// Runs of neighbouring spans among `spans` (ascending), each to be fetched as one range
    /// of at most `most` compressed bytes; a span alone larger than that is a run of its own.
    pub(super) fn runs(
        &self,
        spans: impl IntoIterator<Item = usize>,
        most: u64,
    ) -> Vec<Range<usize>> {
        let mut runs: Vec<Range<usize>> = Vec::new();
        for i in spans {
            match runs.last_mut() {
                Some(run)
                    if run.end == i
                        && self.compressed(i).end - self.compressed(run.start).start <= most =>
                {
                    run.end = i + 1
                }
                _ => runs.push(i..i + 1),
            }
        }
        runs
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

#[cfg(test)]
// Lists of one run are among the cases.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::index::seek::SeekCompression;

    const SPAN: u64 = 1 << 10;

    /// The spans given, the most compressed bytes of a run, the runs wanted.
    type Case = (&'static [usize], u64, &'static [Range<usize>]);

    #[test]
    fn runs_join_neighbours_up_to_a_size() {
        let data: Vec<u8> = (0..8 * SPAN as u32).map(|i| (i % 251) as u8).collect();
        let table = Table::Seek(SeekTable::build(SeekCompression::None, &data[..], SPAN).unwrap());
        let cases: &[Case] = &[
            (&[], SPAN, &[]),
            (&[0, 1, 2, 4, 5], 8 * SPAN, &[0..3, 4..6]),
            (&[0, 1, 2, 4, 5], 2 * SPAN, &[0..2, 2..3, 4..6]),
            (&[3, 4], SPAN / 2, &[3..4, 4..5]),
            (&[7], SPAN / 2, &[7..8]),
        ];
        for (spans, most, want) in cases {
            assert_eq!(
                table.runs(spans.iter().copied(), *most),
                *want,
                "{spans:?} at most {most}"
            );
        }
    }
}
