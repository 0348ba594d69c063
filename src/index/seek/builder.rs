//! The span cutter. While a decoder walks the blob through a [`Feed`] (gzip's, zstd's, or
//! none for an uncompressed blob: [`build_none`] here), the [`Builder`] counts the output,
//! ends a span at the first possible point after `span` bytes of it, and records each span's
//! ranges, digest and checkpoint; a block checkpoint's window waits until the span has made
//! its first [`WINDOW`] bytes of output (or ended), is made sparse ([`sparse_window`]) and
//! packed into the windows blob. It hands on the finished [`SeekTable`], whose spans are
//! contiguous and non-empty (an empty last span folds into the one before), at most
//! [`MAX_SPANS`], with their windows packed in span order with no gap.

use std::io::Read;

use miniz_oxide::inflate::core::BlockBoundaryState;
use sha2::{Digest, Sha256};

use super::feed::{Feed, IN_CHUNK};
use super::sparse::{PREFIX_LOOKAHEAD, sparse_window};
use super::{Checkpoint, MAX_SPANS, SeekCompression, SeekError, SeekTable, Span, WINDOW};

/// The level windows are compressed at. Sparse windows are mostly zeros, which every level
/// squeezes alike: on the python test image's layers (256 KiB spans) level 9 makes windows
/// 3.8% bigger than level 19 (1.44% of the image against 1.39%) in a thirtieth of the time,
/// and level 19 took most of an index build.
const WINDOW_ZSTD_LEVEL: i32 = 9;

/// The spans as they are cut while streaming.
pub(super) struct Builder {
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
    pub(super) fn new(span: u64) -> Self {
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

    pub(super) fn output<R: Read>(&mut self, n: u64, feed: &mut Feed<R>) {
        if n > 0 {
            self.total += n;
            self.since += n;
            feed.tentative = None;
        }
    }

    pub(super) fn due(&self) -> bool {
        self.since >= self.span
    }

    /// Ends the open span here (its window packed) and opens one at `next`.
    pub(super) fn cut<R: Read>(
        &mut self,
        feed: &mut Feed<R>,
        next: Checkpoint,
    ) -> Result<(), SeekError> {
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
    pub(super) fn drop_window<R: Read>(&mut self, feed: &mut Feed<R>) {
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
    pub(super) fn cut_block<R: Read>(
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
    pub(super) fn settle_after(&self) -> usize {
        match self.pending {
            Some(_) => WINDOW - self.since.min(WINDOW as u64) as usize,
            None => usize::MAX,
        }
    }

    /// Packs the open span's pending window, keeping only the bytes its span's output refers
    /// to ([`sparse_window`]); called once the span has made [`WINDOW`] bytes of output, or
    /// ends. When that cannot be worked out (too much input kept, or it does not decode as
    /// before) the whole window is packed.
    pub(super) fn settle<R: Read>(&mut self, feed: &mut Feed<R>) -> Result<(), SeekError> {
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

    pub(super) fn finish<R: Read>(
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

pub(super) fn build_none(reader: impl Read, span: u64) -> Result<SeekTable, SeekError> {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

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
}
