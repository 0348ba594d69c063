//! The seek table's encoding, specified here: what [`SeekTable::encode`] writes beside a
//! layer and [`SeekTable::decode`] reads back from hostile bytes. It takes a table (or bytes)
//! and hands on bytes (or a table); decode validates everything once, so that a table it
//! returns is as sound as one just built.
//!
//! This is version 2 (version 1 kept the windows inside the table). All integers are
//! little-endian; three sections back to back:
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

use zstd::zstd_safe;

use crate::index::le::{PutLe, set_u32, u32_at, u64_at};

use super::{Checkpoint, MAX_SPANS, SeekCompression, SeekError, SeekTable, Span, WINDOW};

pub const MAGIC: &[u8; 8] = b"IMGFSEEK";
/// Bumped on any change to the layout; a table of another version is rebuilt.
pub const VERSION: u32 = 2;
pub const HEADER_LEN: usize = 48;
pub const SPAN_RECORD_LEN: usize = 120;
const CHECKSUM_LEN: usize = 4;
const KIND_START: u8 = 0;
const KIND_BLOCK: u8 = 1;

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

impl SeekTable {
    /// The encoding described in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(HEADER_LEN + self.spans.len() * SPAN_RECORD_LEN + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.put_u32(VERSION);
        out.extend_from_slice(&[self.compression.code(), 0, 0, 0]);
        out.put_u64(self.compressed_size);
        out.put_u64(self.uncompressed_size);
        out.put_u64(self.spans.len() as u64);
        out.put_u64(self.windows_size);
        for (span, checkpoint) in self.spans.iter().zip(&self.checkpoints) {
            for v in [
                span.compressed.start,
                span.compressed.end,
                span.uncompressed.start,
                span.uncompressed.end,
            ] {
                out.put_u64(v);
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
            out.put_u32(window_len);
            out.put_u64(window.start);
            out.put_u32((window.end - window.start) as u32);
            out.put_u32(0);
            out.extend_from_slice(&window_digest);
        }
        let crc = crc32fast::hash(&out);
        out.put_u32(crc);
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
        let stored = u32_at(stored, 0);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(SeekError::Checksum { stored, computed });
        }
        if &body[..8] != MAGIC {
            return Err(SeekError::Magic);
        }
        let version = u32_at(body, 8);
        if version != VERSION {
            return Err(SeekError::Version { version });
        }
        let compression = SeekCompression::from_code(body[12])
            .ok_or(SeekError::Compression { code: body[12] })?;
        if let Some(at) = (13..16).find(|&at| body[at] != 0) {
            return Err(SeekError::Reserved { at });
        }
        let compressed_size = u64_at(body, 16);
        let uncompressed_size = u64_at(body, 24);
        let count = u64_at(body, 32);
        let windows_size = u64_at(body, 40);
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
            let compressed = u64_at(r, 0)..u64_at(r, 8);
            let uncompressed = u64_at(r, 16)..u64_at(r, 24);
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
            if r[67] != 0 || u32_at(r, 84) != 0 {
                return Err(SeekError::Reserved {
                    at: offset + if r[67] != 0 { 67 } else { 84 },
                });
            }
            let (kind, num_bits, bit_buf) = (r[64], r[65], r[66]);
            let window_len = u32_at(r, 68);
            let window_at = u64_at(r, 72);
            let window_size = u64::from(u32_at(r, 80));
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
        set_u32(bytes, n, crc);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

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
    fn windows_live_outside_the_table() {
        let (_, t) = sample();
        let spans = t.spans().len();
        assert_eq!(
            t.encode().len(),
            HEADER_LEN + spans * SPAN_RECORD_LEN + CHECKSUM_LEN
        );
        assert!(t.windows_size() > 0);
    }
}
