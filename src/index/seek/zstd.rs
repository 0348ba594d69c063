//! Zstd (RFC 8878), walked frame by frame and block by block over a [`Feed`]. Building
//! ([`build_zstd`]), a span starts at a frame, and skippable frames fold into the span before
//! them; every frame is decoded as it goes by, to count its output and to refuse what zstd's
//! own decoder refuses (a bad block, a frame that ends elsewhere than its blocks say, a
//! content size its header declares and its blocks do not make). Reading ([`unzstd_span`]),
//! a span's frames are decoded from its own bytes, never past the span's length.

use std::io::Read;

use zstd::zstd_safe::{self, DCtx, InBuffer, OutBuffer};

use crate::index::le::{get_uint, u32_at};

use super::builder::Builder;
use super::feed::{Feed, IN_CHUNK};
use super::{Checkpoint, OUT_CHUNK, SeekCompression, SeekError, SeekTable, Span};

/// The zstd format's Block_Maximum_Size.
pub(super) const MAX_ZSTD_BLOCK: usize = 128 << 10;
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const ZSTD_SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const ZSTD_SKIPPABLE: u32 = 0x184D_2A50;

/// Decodes zstd bytes through `dctx`, handing each piece of output to `sink`; returns the
/// decoder's last answer (0 when a frame has just ended).
pub(super) fn unzstd_run(
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
pub(super) struct ZstdCounter<'a> {
    dctx: DCtx<'a>,
    scratch: Vec<u8>,
    made: u64,
}

impl ZstdCounter<'_> {
    /// Decodes `bytes` (at `offset`), `frame_left` bytes before the frame's end.
    pub(super) fn run(
        &mut self,
        bytes: &[u8],
        offset: u64,
        frame_left: u64,
    ) -> Result<(), SeekError> {
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

pub(super) fn build_zstd(reader: impl Read, span: u64) -> Result<SeekTable, SeekError> {
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
        let magic = u32_at(feed.avail(), 0);
        if magic & ZSTD_SKIPPABLE_MASK == ZSTD_SKIPPABLE {
            let size = u32_at(feed.take(8)?, 4);
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
pub(super) fn zstd_frame_header_len<R: Read>(
    feed: &mut Feed<R>,
    offset: u64,
) -> Result<usize, SeekError> {
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
pub(super) fn zstd_content_size_field(descriptor: u8) -> (usize, usize) {
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
pub(super) fn zstd_frame_content_size(h: &[u8]) -> Option<u64> {
    let (at, width) = zstd_content_size_field(*h.first()?);
    if width == 0 {
        return None;
    }
    let size = get_uint(h, at, width)?;
    // A two-byte field counts from 256 (RFC 8878 3.1.1.1.4).
    Some(if width == 2 { size + 256 } else { size })
}

pub(super) fn unzstd_span(
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
    use super::super::test_support::*;
    use super::*;
    use crate::index::le::PutLe;

    fn skippable(n: u8, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_u32(ZSTD_SKIPPABLE | u32::from(n));
        out.put_u32(len as u32);
        out.extend(std::iter::repeat_n(0xa5, len));
        out
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
}
