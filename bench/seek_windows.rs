//! How sparse the gzip seek tables' windows are on real files: 2 MiB of this machine's
//! /usr/bin and of /usr/share each, compressed by flate2 (levels 1, 6, 9) and by the gzip
//! program (6, 9), with spans of one block and of several. For each it checks that every span
//! decodes from its stored window as the whole stream does, and prints how many of the
//! window bytes a span could refer to the table keeps, and how many bytes it packs them in.
//! The unit tests of `index::seek` check the same on generated text; this is the sweep over
//! whatever the machine has.
//!
//! `cargo bench --bench seek_windows`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use imgfs::index::seek::{SeekCompression, SeekTable, WINDOW};

/// Bytes taken of each directory.
const TAKE: usize = 2 << 20;

/// Up to `limit` bytes of the regular files under `dir`, in name order.
fn files_under(dir: &Path, limit: usize, out: &mut Vec<u8>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if out.len() >= limit {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            files_under(&path, limit, out);
        } else if meta.is_file()
            && let Ok(bytes) = std::fs::read(&path)
        {
            out.extend_from_slice(&bytes[..bytes.len().min(limit - out.len())]);
        }
    }
}

fn flate2_gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Gzip of `data` by the `gzip` program, when it is installed: another encoder than flate2's,
/// with its own block layout.
fn gzip_program(data: &[u8], level: u32) -> Option<Vec<u8>> {
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

fn gunzip_whole(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(blob)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn main() {
    for dir in ["/usr/bin", "/usr/share"] {
        let mut data = Vec::new();
        files_under(Path::new(dir), TAKE, &mut data);
        if data.len() < 1 << 20 {
            println!("{dir}: only {} bytes, left out", data.len());
            continue;
        }
        let mut blobs = vec![
            ("flate2 -1", flate2_gzip(&data, 1)),
            ("flate2 -6", flate2_gzip(&data, 6)),
            ("flate2 -9", flate2_gzip(&data, 9)),
        ];
        for (name, level) in [("gzip -6", 6), ("gzip -9", 9)] {
            match gzip_program(&data, level) {
                Some(blob) => blobs.push((name, blob)),
                None => println!("no gzip program: {name} left out"),
            }
        }
        for (encoder, blob) in &blobs {
            let whole = gunzip_whole(blob);
            assert!(whole == data, "{dir}, {encoder}: flate2 disagrees");
            for span in [4096, 256 << 10] {
                let t = SeekTable::build(SeekCompression::Gzip, &blob[..], span)
                    .unwrap_or_else(|e| panic!("{dir}, {encoder}: {e}"));
                let (mut kept, mut whole_nonzero, mut windows) = (0, 0, 0);
                for (i, s) in t.spans().iter().enumerate() {
                    let bytes = &blob[s.compressed.start as usize..s.compressed.end as usize];
                    let start = s.uncompressed.start as usize;
                    let truth = &whole[start..s.uncompressed.end as usize];
                    let window = match t.window_range(i) {
                        Some(r) => {
                            windows += 1;
                            t.open_window(i, &t.windows_blob()[r.start as usize..r.end as usize])
                                .unwrap()
                        }
                        None => Vec::new(),
                    };
                    let out = t.decompress_span_with(i, bytes, &window).unwrap();
                    assert!(out == truth, "{dir}, {encoder}, span {i}: wrong output");
                    let before = &whole[start - start.min(WINDOW)..start];
                    whole_nonzero += before.iter().filter(|&&b| b != 0).count();
                    kept += window.iter().filter(|&&b| b != 0).count();
                }
                println!(
                    "{dir}, {encoder}, span {span}: {} spans, {windows} windows, {kept} of \
                     {whole_nonzero} nonzero window bytes kept, {} bytes packed",
                    t.spans().len(),
                    t.windows_size()
                );
            }
        }
    }
}
