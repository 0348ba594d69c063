//! What the seek tests share: deterministic text-like data, gzip and zstd blobs made by other
//! encoders than ours, and [`check`], which holds a built table against the whole-stream
//! truth (every span alone, and the table through its encoding).

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

use super::{SeekCompression, SeekTable};

/// Deterministic text-like bytes: words from a small vocabulary, with random noise, so that
/// deflate makes dynamic blocks with both literals and matches.
pub(super) fn text(len: usize, seed: u64) -> Vec<u8> {
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

pub(super) fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub(super) fn gunzip_whole(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(blob)
        .read_to_end(&mut out)
        .unwrap();
    out
}

pub(super) fn zstd_frame(data: &[u8], checksum: bool) -> Vec<u8> {
    let mut e = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    e.include_checksum(checksum).unwrap();
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Builds a table and checks it against the whole-stream truth: every span decompressed
/// alone is its slice of the whole, and the table survives encode and decode.
pub(super) fn check(
    compression: SeekCompression,
    blob: &[u8],
    whole: &[u8],
    span: u64,
) -> SeekTable {
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
            && let Some(derived) = decoded.derive_window(i, &whole[..s.uncompressed.start as usize])
        {
            assert_eq!(derived.len(), window.len(), "span {i}: the derived window");
            assert!(
                derived.iter().zip(&window).all(|(d, w)| *w == 0 || d == w),
                "span {i}: the derived window"
            );
            let from_derived = decoded.decompress_span_with(i, bytes, &derived).unwrap();
            assert!(
                from_derived == whole[s.uncompressed.start as usize..s.uncompressed.end as usize]
            );
        }
        assert!(out == whole[s.uncompressed.start as usize..s.uncompressed.end as usize]);
    }
    let decoded = decoded.with_windows(t.windows_blob().to_vec()).unwrap();
    assert_eq!(decoded, t);
    t
}

/// A gzip blob of text and its table: at least four spans.
pub(super) fn sample() -> (Vec<u8>, SeekTable) {
    let data = text(1 << 20, 8);
    let blob = gzip(&data, 6);
    let t = SeekTable::build(SeekCompression::Gzip, &blob[..], 128 << 10).unwrap();
    assert!(t.spans().len() >= 4);
    (blob, t)
}
