//! Sparse windows: which bytes of the output before a deflate block boundary the span after
//! it refers to. It takes a whole window, the leftover bits of the boundary and the compressed
//! bytes after it, and hands on the window with every other byte zero; the span decodes from
//! it exactly as from the whole one.
//!
//! A window holds only the bytes its span refers to; every other byte is zero, and it starts
//! at the first byte referred to (so it may be shorter than 32 KiB, or empty). Only the span's
//! first 32 KiB of output can reach back past the span's start (a back-reference spans at
//! most 32 KiB); later output reaches only into those. The builder finds what they refer to,
//! directly or through earlier output, by decoding them three more times over tagged windows
//! ([`sparse_window`]): deflate's codes, lengths and distances depend only on the compressed
//! bits, never on the window's contents, so a byte no reference reaches cannot change the
//! span's output. That makes a sparse window exactly as good as the whole output before the
//! span, which [`SeekTable::derive_window`](super::SeekTable::derive_window) takes instead: a
//! reader cannot tell them apart, and the format is the same. On the python test image at
//! 256 KiB spans this takes the windows blobs from 9.3% of the image's compressed size to
//! 1.4%. A span whose first 32 KiB of output lie beyond [`MAX_PREFIX_INPUT`] compressed bytes
//! keeps its whole window.

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{BlockBoundaryState, DecompressorOxide, decompress};

use super::WINDOW;

/// Compressed bytes kept from a block checkpoint on to find what its span's first [`WINDOW`]
/// bytes of output refer to: that output takes at most ~61 KiB of deflate (15-bit codes) plus
/// block headers. A span that needs more (empty blocks, say) keeps its whole window.
pub(super) const MAX_PREFIX_INPUT: usize = 256 << 10;
/// Compressed bytes past those consumed given to those re-decodes: the decoder may look ahead.
pub(super) const PREFIX_LOOKAHEAD: usize = 64;

/// The window a span needs, sparse: `window` (the output before a block boundary) with every
/// byte that the span's first `seen` bytes of output (decoded from `input`, the compressed
/// bytes from the boundary on, with the leftover bits `num_bits`, `bit_buf`) do not refer to —
/// directly or through earlier output — set to zero, and cut to start at the first byte they
/// do refer to (empty when there is none). Later output can reach back only into those first
/// [`WINDOW`] bytes, so the span decodes the same from it. None when `input` does not decode
/// to `seen` bytes (or to the member's end).
///
/// How: deflate's codes, lengths and distances never depend on the window's contents, only
/// the output's values do. So the same bytes are decoded three times over tagged windows:
/// byte `j` holds `j`'s low byte, its high byte, and its high byte with the top bit set (a
/// window is at most [`WINDOW`] bytes: its high byte is below 128). Output that differs
/// between the last two runs was copied from the window, from the byte the first two name.
pub(super) fn sparse_window(
    num_bits: u8,
    bit_buf: u8,
    window: &[u8],
    input: &[u8],
    seen: usize,
) -> Option<Vec<u8>> {
    if window.len() > WINDOW {
        return None;
    }
    let run =
        |tag: fn(usize) -> u8| tagged_inflate(num_bits, bit_buf, window.len(), tag, input, seen);
    let low = run(|j| j as u8)?;
    let high = run(|j| (j >> 8) as u8)?;
    let marked = run(|j| (j >> 8) as u8 | 0x80)?;
    if low.len() != high.len() || high.len() != marked.len() {
        return None;
    }
    let mut used = vec![false; window.len()];
    for ((&lo, &hi), &mark) in low.iter().zip(&high).zip(&marked) {
        if hi != mark {
            *used.get_mut(usize::from(lo) | usize::from(hi) << 8)? = true;
        }
    }
    let first = used.iter().position(|&u| u).unwrap_or(window.len());
    Some(
        window[first..]
            .iter()
            .zip(&used[first..])
            .map(|(&b, &u)| if u { b } else { 0 })
            .collect(),
    )
}

/// Raw deflate from a block boundary, over a window of `window_len` bytes with byte `j` set to
/// `tag(j)`: the first `want` bytes of output, fewer if the member ends first; None when the
/// input ends or fails before.
pub(super) fn tagged_inflate(
    num_bits: u8,
    bit_buf: u8,
    window_len: usize,
    tag: fn(usize) -> u8,
    input: &[u8],
    want: usize,
) -> Option<Vec<u8>> {
    let mut out = vec![0u8; window_len + want];
    for (j, b) in out[..window_len].iter_mut().enumerate() {
        *b = tag(j);
    }
    let mut inflater = Box::new(DecompressorOxide::from_block_boundary_state(
        &BlockBoundaryState {
            num_bits,
            bit_buf,
            ..BlockBoundaryState::default()
        },
    ));
    let (mut in_at, mut out_at) = (0, window_len);
    while out_at < out.len() {
        let (status, used, made) = decompress(
            &mut inflater,
            input.get(in_at..)?,
            &mut out,
            out_at,
            TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | TINFL_FLAG_HAS_MORE_INPUT,
        );
        in_at += used;
        out_at += made;
        match status {
            TINFLStatus::Done => break,
            TINFLStatus::HasMoreOutput | TINFLStatus::NeedsMoreInput if used + made > 0 => {}
            _ => return None,
        }
    }
    Some(out.get(window_len..out_at)?.to_vec())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::test_support::*;
    use super::super::{Checkpoint, SeekCompression};
    use super::*;

    /// Gzip of `data` by the `gzip` program, when it is installed: another encoder than
    /// flate2's, with its own block layout.
    fn gzip_program(data: &[u8], level: u32) -> Option<Vec<u8>> {
        use std::process::{Command, Stdio};
        let mut child = Command::new("gzip")
            .arg(format!("-{level}"))
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let input = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().ok()?;
        writer.join().ok()?.ok()?;
        out.status.success().then_some(out.stdout)
    }

    /// Windows keep only the bytes their span's output refers to: every span decodes from its
    /// sparse window (through the windows blob) as flate2 decodes the whole stream, the windows
    /// are far from whole, and every byte kept matters.
    #[test]
    fn sparse_windows_decode_like_the_whole_stream() {
        // The same over this machine's /usr is bench/seek_windows.rs.
        let inputs = vec![("text".to_string(), text(2 << 20, 11))];
        for (name, data) in &inputs {
            let mut blobs = vec![
                ("flate2 -1", gzip(data, 1)),
                ("flate2 -6", gzip(data, 6)),
                ("flate2 -9", gzip(data, 9)),
            ];
            for level in [6, 9] {
                match gzip_program(data, level) {
                    Some(blob) => {
                        blobs.push((if level == 6 { "gzip -6" } else { "gzip -9" }, blob))
                    }
                    None => eprintln!("no gzip program: its case is left out"),
                }
            }
            for (encoder, blob) in &blobs {
                let whole = gunzip_whole(blob);
                assert!(whole == *data, "{name}, {encoder}: flate2 disagrees");
                // Spans of one block (under the window's length) and of several.
                for span in [4096, 256 << 10] {
                    let t = check(SeekCompression::Gzip, blob, &whole, span);
                    let (mut kept, mut whole_nonzero, mut windows) = (0, 0, 0);
                    let mut flips = 0;
                    for (i, s) in t.spans().iter().enumerate() {
                        let Some(r) = t.window_range(i) else {
                            continue;
                        };
                        windows += 1;
                        let window = t
                            .open_window(i, &t.windows_blob()[r.start as usize..r.end as usize])
                            .unwrap();
                        let start = s.uncompressed.start as usize;
                        let before = &whole[start - start.min(WINDOW)..start];
                        whole_nonzero += before.iter().filter(|&&b| b != 0).count();
                        kept += window.iter().filter(|&&b| b != 0).count();
                        // A byte kept is one the span copies: changing it changes the output.
                        let bytes = &blob[s.compressed.start as usize..s.compressed.end as usize];
                        let truth = &whole[start..s.uncompressed.end as usize];
                        let positions: Vec<usize> =
                            (0..window.len()).filter(|&j| window[j] != 0).collect();
                        if flips < 24 {
                            for &j in positions.iter().step_by(positions.len() / 8 + 1) {
                                let mut changed = window.clone();
                                changed[j] ^= 0xff;
                                let out = t.decompress_span_with(i, bytes, &changed).unwrap();
                                assert!(out != truth, "{name}, {encoder}, span {i}: byte {j}");
                                flips += 1;
                            }
                        }
                    }
                    eprintln!(
                        "{name}, {encoder}, span {span}: {} spans, {windows} windows, \
                         {kept} of {whole_nonzero} nonzero window bytes kept, {} bytes packed",
                        t.spans().len(),
                        t.windows_size()
                    );
                    assert!(windows > 0, "{name}, {encoder}: no windows");
                    assert!(
                        kept * 2 < whole_nonzero,
                        "{name}, {encoder}, span {span}: {kept} of {whole_nonzero} kept"
                    );
                }
            }
        }
    }

    /// A span whose first output lies beyond [`MAX_PREFIX_INPUT`] compressed bytes (here
    /// behind empty stored blocks, one per flush) keeps its whole window, and still decodes.
    #[test]
    fn windows_stay_whole_past_the_input_kept() {
        let data = text(256 << 10, 12);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(&data).unwrap();
        for _ in 0..MAX_PREFIX_INPUT / 5 + 1000 {
            e.flush().unwrap();
        }
        e.write_all(&data[..64 << 10]).unwrap();
        let blob = e.finish().unwrap();
        assert!(blob.len() > MAX_PREFIX_INPUT, "{} bytes", blob.len());
        let mut whole = data.clone();
        whole.extend_from_slice(&data[..64 << 10]);
        assert_eq!(gunzip_whole(&blob), whole);
        let t = check(SeekCompression::Gzip, &blob, &whole, 256 << 10);
        assert_eq!(t.spans().len(), 2, "{:?}", t.spans());
        let r = t.window_range(1).expect("a window");
        let window = t
            .open_window(1, &t.windows_blob()[r.start as usize..r.end as usize])
            .unwrap();
        assert!(window == data[data.len() - WINDOW..], "the window is whole");
        // With the same bytes kept in full, the window is sparse.
        let s = &t.spans()[1];
        let Checkpoint::Block {
            num_bits, bit_buf, ..
        } = t.checkpoints[1]
        else {
            panic!("a block checkpoint");
        };
        let input = &blob[s.compressed.start as usize..];
        let sparse = sparse_window(num_bits, bit_buf, &window, input, WINDOW).unwrap();
        assert!(sparse.len() <= WINDOW && sparse.iter().filter(|&&b| b == 0).count() > 1000);
        // Too few bytes to reach the output asked for: no answer.
        assert_eq!(
            sparse_window(num_bits, bit_buf, &window, &input[..1000], WINDOW),
            None
        );
        assert_eq!(sparse_window(num_bits, bit_buf, &window, &[], 1), None);
    }
}
