//! A lazy layer's table of spans ([`SpanTable`]: imgfs's seek table of the blob or the
//! table the layer's own TOC gives), and how neighbouring spans join into the ranges one
//! fetch asks for.

use std::ops::Range;

use crate::index::span::SpanTable;

/// A lazy layer's spans: imgfs's seek table of the blob, or the pieces the layer's own TOC
/// (eStargz, zstd:chunked) names.
pub(crate) type Table = Box<dyn SpanTable>;

/// Runs of neighbouring spans of `table` among `spans` (ascending), each to be fetched as one
/// range of at most `most` compressed bytes; a span alone larger than that is a run of its
/// own.
pub(super) fn runs(
    table: &dyn SpanTable,
    spans: impl IntoIterator<Item = usize>,
    most: u64,
) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for i in spans {
        match runs.last_mut() {
            Some(run)
                if run.end == i
                    && table.compressed(i).end - table.compressed(run.start).start <= most =>
            {
                run.end = i + 1
            }
            _ => runs.push(i..i + 1),
        }
    }
    runs
}

#[cfg(test)]
// Lists of one run are among the cases.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::index::seek::{SeekCompression, SeekTable};

    const SPAN: u64 = 1 << 10;

    /// The spans given, the most compressed bytes of a run, the runs wanted.
    type Case = (&'static [usize], u64, &'static [Range<usize>]);

    #[test]
    fn runs_join_neighbours_up_to_a_size() {
        let data: Vec<u8> = (0..8 * SPAN as u32).map(|i| (i % 251) as u8).collect();
        let table = SeekTable::build(SeekCompression::None, &data[..], SPAN).unwrap();
        let cases: &[Case] = &[
            (&[], SPAN, &[]),
            (&[0, 1, 2, 4, 5], 8 * SPAN, &[0..3, 4..6]),
            (&[0, 1, 2, 4, 5], 2 * SPAN, &[0..2, 2..3, 4..6]),
            (&[3, 4], SPAN / 2, &[3..4, 4..5]),
            (&[7], SPAN / 2, &[7..8]),
        ];
        for (spans, most, want) in cases {
            assert_eq!(
                runs(&table, spans.iter().copied(), *most),
                *want,
                "{spans:?} at most {most}"
            );
        }
    }
}
