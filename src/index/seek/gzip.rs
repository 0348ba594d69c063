//! Gzip (RFC 1952: one or more members, each a header, raw deflate and a trailer), walked one
//! step at a time by [`Gunzip`] over a [`Feed`]. Building ([`build_gzip`]), a span starts at
//! a member's header or at a deflate block boundary, whose checkpoint is the decoder's
//! leftover bits and the window before it; reading ([`inflate_span`]), one span is inflated
//! from its own bytes and that checkpoint. Headers, CRC-32s and sizes are checked as zlib
//! checks them, so a table is built only for a blob the whole-layer decoder accepts.
//!
//! **Where a span starts.** A deflate block can end inside a byte: its low bits close the block
//! before, its `num_bits` high bits begin the next. That byte belongs to the span before (whose
//! last block needs it); the span after starts at the following byte, the first with none of
//! its bits consumed, and its checkpoint carries the leftover bits (`num_bits`, `bit_buf`).
//! Spans are therefore contiguous and never share a byte, and [`SeekTable::decompress_span`]
//! needs nothing but the span's own bytes and the table.

use std::io::Read;

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY,
    TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{BlockBoundaryState, DecompressorOxide, decompress};

use crate::index::le::{u16_at, u32_at};

use super::builder::Builder;
use super::feed::{Feed, IN_CHUNK};
use super::{Checkpoint, OUT_CHUNK, SeekCompression, SeekError, SeekTable, Span, WINDOW};

/// Gzip FNAME and FCOMMENT are short texts; a longer one is a hostile header, not a layer.
pub(super) const MAX_GZIP_STRING: usize = 64 << 10;
const GZIP_TRAILER_LEN: usize = 8;

/// What a step of the gzip decoder reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Event {
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
pub(super) enum Phase {
    Member { announced: bool },
    Inflate,
}

/// A gzip stream decoded one step at a time: members, headers, raw deflate and trailers.
pub(super) struct Gunzip<R> {
    pub(super) feed: Feed<R>,
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
    pub(super) fn new(feed: Feed<R>, out_chunk: usize) -> Self {
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
    pub(super) fn resume(
        feed: Feed<R>,
        out_chunk: usize,
        state: &BlockBoundaryState,
        window: &[u8],
    ) -> Self {
        let mut g = Gunzip::new(feed, out_chunk);
        *g.inflater = DecompressorOxide::from_block_boundary_state(state);
        g.out[..window.len()].copy_from_slice(window);
        g.out_pos = window.len();
        g.phase = Phase::Inflate;
        g
    }

    pub(super) fn window(&self) -> &[u8] {
        &self.out[self.out_pos - self.out_pos.min(WINDOW)..self.out_pos]
    }

    /// The last `n` bytes of output.
    pub(super) fn produced(&self, n: usize) -> &[u8] {
        &self.out[self.out_pos - n..self.out_pos]
    }

    /// One step, producing at most `limit` (≥ 1) bytes: how many, and what was reached.
    pub(super) fn step(&mut self, limit: usize) -> Result<(usize, Event), SeekError> {
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

    pub(super) fn inflate(&mut self, limit: usize) -> Result<(usize, Event), SeekError> {
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

    pub(super) fn trailer(&mut self) -> Result<(), SeekError> {
        let t = self.feed.take(GZIP_TRAILER_LEN)?;
        let stored_crc = u32_at(t, 0);
        let stored_size = u32_at(t, 4);
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

    pub(super) fn boundary_state(&self) -> Result<BlockBoundaryState, SeekError> {
        self.inflater
            .block_boundary_state()
            .ok_or(SeekError::Inflate {
                offset: self.feed.pos(),
                status: TINFLStatus::BlockBoundary,
            })
    }
}

/// Reads a gzip member header (RFC 1952), leaving the feed at its deflate data.
pub(super) fn gzip_header<R: Read>(feed: &mut Feed<R>) -> Result<(), SeekError> {
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
        let len = u16_at(len, 0);
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
        let stored = u16_at(t, 0);
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

pub(super) fn build_gzip(reader: impl Read, span: u64) -> Result<SeekTable, SeekError> {
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
pub(super) fn next_block_stored<R: Read>(
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

pub(super) fn inflate_span(
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

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::super::test_support::*;
    use super::*;
    use crate::index::le::PutLe;

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
            blob.put_u16(stored);
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
}
