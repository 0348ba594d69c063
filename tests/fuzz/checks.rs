//! What the fuzz targets check, shared with tests/it/fuzz_regressions.rs.
#![allow(dead_code)] // each target uses one of the checks

use imgfs::index::format::{self, HEADER_LEN, Index, MAGIC, VERSION};
use imgfs::index::scan::SliceInput;
use imgfs::index::seek::{self, SeekTable};
use imgfs::index::tree::BlobRef;

/// Any bytes as a tar archive. Whatever the scan makes of them, a tree that builds must write
/// an index that reads back, and every record of it must be reachable without a panic.
pub fn scan_any(data: &[u8]) {
    let Ok(tree) = imgfs::index::build_tree(&mut SliceInput::new(data)) else {
        return;
    };
    let bytes = tree
        .write_index(&[BlobRef::new(data.len() as u64, "archive")])
        .expect("a tree built from an archive writes its index");
    let index = Index::new(bytes).expect("a freshly written index reads back");
    walk(&index, true);
}

/// Any bytes as an index: the magic, version and header length are set and the checksum
/// sealed, so that what follows the checksum is tested, not the checksum.
pub fn read_any(data: &[u8]) {
    let mut b = data.to_vec();
    if b.len() >= HEADER_LEN {
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        format::seal(&mut b);
    }
    if let Ok(index) = Index::new(b) {
        walk(&index, false);
    }
}

/// Any bytes as two layers of an image — a u32 (little-endian) saying where the first ends,
/// then the layers back to back: each that scans is merged over the one below with whiteouts
/// applied, and the merged index reads back whole.
pub fn layers_any(data: &[u8]) {
    let Some((head, data)) = data.split_first_chunk::<4>() else {
        return;
    };
    let cut = (u32::from_le_bytes(*head) as usize).min(data.len());
    let mut tree = imgfs::index::tree::Tree::new();
    let mut blobs = Vec::new();
    for (i, part) in [&data[..cut], &data[cut..]].into_iter().enumerate() {
        let mut members = Vec::new();
        let scanned = imgfs::index::scan::scan(&mut SliceInput::new(part), &mut |_| {}, &mut |m| {
            members.push(m);
            Ok(())
        });
        if scanned.is_err() {
            continue;
        }
        tree.apply_layer(i as u32, members);
        blobs.push(BlobRef::new(part.len() as u64, format!("layer{i}")));
    }
    if blobs.is_empty() {
        return;
    }
    let bytes = tree
        .write_index(&blobs)
        .expect("merged layers write their index");
    let index = Index::new(bytes).expect("a freshly written index reads back");
    walk(&index, true);
}

/// Spans tried per seek input, and the largest span tried: enough to reach every kind of
/// checkpoint, small enough that an input runs in milliseconds.
const SEEK_SPANS_TRIED: usize = 64;
const SEEK_SPAN_MAX: u64 = 4 << 20;

/// A seek input as [`seek_any`] reads it: a u32 (little-endian) saying how long the encoded
/// table is, the table, a u32 saying how long its windows blob is, the windows blob, then the
/// blob its spans index.
pub fn seek_input(table: &[u8], windows: &[u8], blob: &[u8]) -> Vec<u8> {
    let mut out = (table.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(table);
    out.extend_from_slice(&(windows.len() as u32).to_le_bytes());
    out.extend_from_slice(windows);
    out.extend_from_slice(blob);
    out
}

/// Any bytes as a seek table, its windows blob and a blob (see [`seek_input`]); the table's
/// magic and version are set and its checksum sealed, so that the checks behind them are what
/// is tested. A table that decodes encodes back to the same bytes, and every span (up to a
/// bound) decompresses from the blob's bytes and its window from the windows blob — their own
/// ranges, or whatever bytes are there — to exactly its length or to an error, never a panic.
pub fn seek_any(data: &[u8]) {
    let (table, rest) = split_len(data);
    let (windows, blob) = split_len(rest);
    let mut t = table.to_vec();
    if t.len() >= seek::HEADER_LEN + 4 {
        t[..8].copy_from_slice(seek::MAGIC);
        t[8..12].copy_from_slice(&seek::VERSION.to_le_bytes());
        seek::seal(&mut t);
    }
    let Ok(table) = SeekTable::decode(&t) else {
        return;
    };
    assert_eq!(
        table.encode(),
        t,
        "a decoded table encodes to the same bytes"
    );
    for at in [0, table.uncompressed_size() / 2, table.uncompressed_size()] {
        if let Some(i) = table.span_at(at) {
            assert!(table.spans()[i].uncompressed.contains(&at));
        }
    }
    let with_windows = table.clone().with_windows(windows.to_vec()).ok();
    let mut before: Vec<u8> = Vec::new();
    for (i, span) in table.spans().iter().enumerate().take(SEEK_SPANS_TRIED) {
        let len = span.compressed.end - span.compressed.start;
        let want = span.uncompressed.end - span.uncompressed.start;
        if len > SEEK_SPAN_MAX || want > SEEK_SPAN_MAX {
            continue;
        }
        let bytes: Vec<u8> =
            match blob.get(span.compressed.start as usize..span.compressed.end as usize) {
                Some(own) => own.to_vec(),
                None => blob.iter().copied().cycle().take(len as usize).collect(),
            };
        if bytes.len() as u64 != len {
            assert!(
                table.decompress_span(i, &bytes).is_err(),
                "span {i} from too few bytes"
            );
            continue;
        }
        // The window: its own range of the windows blob, or whatever bytes are there.
        let window = match table.window_range(i) {
            None => Vec::new(),
            Some(r) => {
                let wlen = (r.end - r.start) as usize;
                let wbytes: Vec<u8> = match windows.get(r.start as usize..r.end as usize) {
                    Some(own) => own.to_vec(),
                    None => windows.iter().copied().cycle().take(wlen).collect(),
                };
                match table.open_window(i, &wbytes) {
                    Ok(w) => w,
                    Err(_) => continue,
                }
            }
        };
        if let Some(derived) = table.derive_window(i, &before) {
            let _ = table.decompress_span_with(i, &bytes, &derived);
        }
        if let Some(t) = &with_windows {
            let _ = t.decompress_span(i, &bytes);
        }
        if let Ok(out) = table.decompress_span_with(i, &bytes, &window) {
            assert_eq!(
                out.len() as u64,
                want,
                "span {i} decompresses to its length"
            );
        }
        assert!(
            table.decompress_span_with(i, &bytes[1..], &window).is_err(),
            "span {i} from one byte less"
        );
        before = bytes;
    }
}

/// The most output a build input may decompress to, and the most spans its table is cut into:
/// a compression bomb or a tiny span would only make the input slow, not test more.
const BUILD_OUTPUT_MAX: u64 = 1 << 20;
const BUILD_SPANS_MAX: u64 = 256;

/// A build input as [`build_any`] reads it: the compression (0 gzip, 1 zstd, 2 none), a byte
/// for the span size, then the blob.
pub fn build_input(compression: seek::SeekCompression, span: u8, blob: &[u8]) -> Vec<u8> {
    let kind = match compression {
        seek::SeekCompression::Gzip => 0,
        seek::SeekCompression::Zstd => 1,
        seek::SeekCompression::None => 2,
    };
    let mut out = vec![kind, span];
    out.extend_from_slice(blob);
    out
}

/// Any bytes as a layer blob (see [`build_input`]), checked against the decoders a whole
/// layer is read with (flate2's multi-member gzip, zstd's streaming decoder): when a seek table
/// builds for the blob, the blob decodes whole too, and every span — decompressed from its own
/// compressed bytes and its window as stored in the windows blob (sparse), as a lazy read
/// does — is exactly that output's bytes at the span's place. The table also encodes and
/// decodes back to itself. Never a panic, hang or unbounded allocation.
pub fn build_any(data: &[u8]) {
    use std::io::Read;
    let [kind, span_byte, blob @ ..] = data else {
        return;
    };
    let compression = match kind % 3 {
        0 => seek::SeekCompression::Gzip,
        1 => seek::SeekCompression::Zstd,
        _ => seek::SeekCompression::None,
    };
    let reader: Box<dyn Read + '_> = match compression {
        seek::SeekCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        seek::SeekCompression::Zstd => match zstd::stream::read::Decoder::new(blob) {
            Ok(d) => Box::new(d),
            Err(_) => return,
        },
        seek::SeekCompression::None => Box::new(blob),
    };
    let mut whole = Vec::new();
    let decoded = reader
        .take(BUILD_OUTPUT_MAX + 1)
        .read_to_end(&mut whole)
        .is_ok();
    if whole.len() as u64 > BUILD_OUTPUT_MAX {
        return;
    }
    let span = (64 * (u64::from(*span_byte) + 1)).max(whole.len() as u64 / BUILD_SPANS_MAX);
    let Ok(table) = SeekTable::build(compression, blob, span) else {
        return;
    };
    assert!(
        decoded,
        "a seek table builds for a blob the whole-layer decoder refuses"
    );
    assert_eq!(
        table.uncompressed_size(),
        whole.len() as u64,
        "the output's size"
    );
    assert_eq!(
        table.compressed_size(),
        blob.len() as u64,
        "the blob's size"
    );
    let again = SeekTable::decode(&table.encode())
        .expect("a table just built decodes")
        .with_windows(table.windows_blob().to_vec())
        .expect("a table just built takes its own windows");
    assert_eq!(again.encode(), table.encode(), "a table decodes to itself");
    let mut next = 0;
    for (i, span) in table.spans().iter().enumerate() {
        assert_eq!(
            span.uncompressed.start, next,
            "span {i} follows the one before"
        );
        next = span.uncompressed.end;
        let bytes = blob
            .get(span.compressed.start as usize..span.compressed.end as usize)
            .unwrap_or_else(|| panic!("span {i}'s compressed range lies in the blob"));
        let window = match table.window_range(i) {
            None => Vec::new(),
            Some(r) => {
                let stored = table
                    .windows_blob()
                    .get(r.start as usize..r.end as usize)
                    .unwrap_or_else(|| panic!("span {i}'s window lies in the windows blob"));
                table
                    .open_window(i, stored)
                    .unwrap_or_else(|e| panic!("span {i}'s own window opens: {e}"))
            }
        };
        let out = table
            .decompress_span_with(i, bytes, &window)
            .unwrap_or_else(|e| panic!("span {i} decompresses: {e}"));
        assert!(
            out == whole[span.uncompressed.start as usize..span.uncompressed.end as usize],
            "span {i} ({:?} of the output) decompresses to the whole decode's bytes",
            span.uncompressed
        );
    }
    assert_eq!(next, whole.len() as u64, "the spans cover the output");
}

/// `len` bytes of text made of words drawn from a small vocabulary by a fixed generator: it
/// compresses into many deflate blocks whose output copies from the blocks before, so that
/// gzip spans need windows (the fixture archives, mostly zeros, make one or two blocks).
pub fn word_text(len: usize) -> Vec<u8> {
    const WORDS: &str = "layer span window index tar gzip zstd block mount read fetch digest \
                         tree inode blob range cache image frame seek deflate checkpoint";
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(words[(state % words.len() as u64) as usize].as_bytes());
        out.push(if state.is_multiple_of(11) {
            b'\n'
        } else {
            b' '
        });
    }
    out.truncate(len);
    out
}

/// Build inputs (see [`build_input`]) for the bytes of a file: the blobs [`seek_seeds`]
/// indexes, each at a small span and at about a sixth of the file.
pub fn build_seeds(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, compression, blob) in seed_blobs(data) {
        for span in [0u8, ((data.len() / 6 / 64).min(255)) as u8] {
            out.push((
                format!("{name}-{span}"),
                build_input(compression, span, &blob),
            ));
        }
    }
    out
}

/// Seek inputs (see [`seek_input`]) for the bytes of a file, compressed the ways
/// [`seed_blobs`] does, each table cut into about six spans.
pub fn seek_seeds(data: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let span = (data.len() as u64 / 6).max(1);
    let mut out = Vec::new();
    for (name, compression, blob) in seed_blobs(data) {
        let table = SeekTable::build(compression, &blob[..], span)
            .expect("a table builds for bytes just compressed");
        out.push((
            name,
            seek_input(&table.encode(), table.windows_blob(), &blob),
        ));
    }
    out
}

/// The bytes of a file compressed as one gzip member, as one with a sync flush every eighth,
/// as three (levels 1, 9 and stored), as four zstd frames around a skippable one, and not at
/// all.
fn seed_blobs(data: &[u8]) -> Vec<(&'static str, seek::SeekCompression, Vec<u8>)> {
    use std::io::Write;
    let gzip = |part: &[u8], level| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(part).expect("gzip into memory");
        e.finish().expect("gzip into memory")
    };
    let third = data.len() / 3;
    let quarter = data.len() / 4;
    let mut members = Vec::new();
    for (part, level) in data.chunks(third.max(1)).zip([1, 9, 0, 6]) {
        members.extend(gzip(part, level));
    }
    let mut frames = Vec::new();
    for (i, part) in data.chunks(quarter.max(1)).enumerate() {
        if i == 1 {
            frames.extend_from_slice(&0x184D_2A53u32.to_le_bytes());
            frames.extend_from_slice(&3u32.to_le_bytes());
            frames.extend_from_slice(b"pad");
        }
        frames.extend(zstd::bulk::compress(part, 3).expect("zstd into memory"));
    }
    // Sync flushes end a deflate block every eighth of the data without resetting the
    // history: small blobs with many block boundaries whose spans need windows.
    let mut flushed = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    for part in data.chunks((data.len() / 8).max(1)) {
        flushed.write_all(part).expect("gzip into memory");
        flushed.flush().expect("gzip into memory");
    }
    let flushed = flushed.finish().expect("gzip into memory");
    vec![
        ("gzip", seek::SeekCompression::Gzip, gzip(data, 6)),
        ("gzip-flushed", seek::SeekCompression::Gzip, flushed),
        ("gzip-members", seek::SeekCompression::Gzip, members),
        ("zstd-frames", seek::SeekCompression::Zstd, frames),
        ("none", seek::SeekCompression::None, data.to_vec()),
    ]
}

/// Documents that are all the same bytes, whatever their digest says: the parsers see
/// hostile JSON at every level of an index, a manifest and a config.
struct Same<'a>(&'a [u8]);

impl imgfs::source::manifest::Documents for Same<'_> {
    fn document(
        &self,
        _: &oci_spec::image::Descriptor,
    ) -> Result<Vec<u8>, imgfs::source::SourceError> {
        Ok(self.0.to_vec())
    }
}

/// Any bytes as a manifest, an index or a config: an image or a clear error, never a panic
/// or a loop.
pub fn manifest_any(data: &[u8]) {
    use imgfs::source::{Platform, manifest};
    for media_type in [
        None,
        Some(manifest::OCI_INDEX),
        Some(manifest::DOCKER_MANIFEST),
    ] {
        let _ = manifest::resolve(
            &Same(data),
            "fuzz",
            media_type,
            data.to_vec(),
            String::new(),
            &Platform::host(),
        );
    }
}

/// Visits every directory reachable from the root once, and every accessor of every entry.
/// An index imgfs wrote (`written`) must also find each listed name by lookup; a forged one
/// may have unsorted names, which only makes lookups miss.
pub fn walk<B: AsRef<[u8]>>(index: &Index<B>, written: bool) {
    let mut seen = vec![false; index.inode_count() as usize];
    let mut stack = vec![0u32];
    while let Some(rec) = stack.pop() {
        let Some(seen_it) = seen.get_mut(rec as usize) else {
            continue;
        };
        if std::mem::replace(seen_it, true) {
            continue;
        }
        let Some(r) = index.inode(rec) else {
            continue;
        };
        let _ = index.symlink_target(&r);
        if let Some(segments) = index.segments(&r) {
            segments.take(1 << 16).for_each(drop);
        }
        index.xattrs(&r).take(1 << 16).for_each(drop);
        if !r.is_dir() {
            continue;
        }
        let mut i = 0;
        while let Some(d) = index.child(&r, i) {
            let found = index.lookup(&r, d.name);
            if written {
                assert_eq!(found, Some(d.record), "lookup of a listed name");
            }
            stack.push(d.record);
            i += 1;
        }
    }
}

/// The layer of the one-layer image the artifact check reads artifacts for.
const ARTIFACT_LAYER: &str =
    "sha256:abababababababababababababababababababababababababababababababab";
const ARTIFACT_DIFF_ID: &str =
    "sha256:cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";
const ARTIFACT_SUBJECT: &str =
    "sha256:efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef";

/// The image an artifact input describes: one gzip layer of `size` bytes.
fn artifact_image(size: u64) -> imgfs::source::Image {
    imgfs::source::Image {
        manifest_digest: Some(ARTIFACT_SUBJECT.into()),
        manifest_media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
        manifest_size: Some(1000),
        config_digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000"
            .into(),
        config: b"{}".to_vec(),
        layers: vec![imgfs::source::Layer {
            locator: ARTIFACT_LAYER.into(),
            digest: ARTIFACT_LAYER.parse().ok(),
            size: Some(size),
            compression: imgfs::source::Compression::Gzip,
            diff_id: ARTIFACT_DIFF_ID.parse().expect("a digest"),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            annotations: Default::default(),
        }],
    }
}

/// Splits `[u32 LE length][that many bytes][rest]`; a short input gives what there is.
fn split_len(data: &[u8]) -> (&[u8], &[u8]) {
    let Some(len) = data.get(..4) else {
        return (data, &[]);
    };
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    let rest = &data[4..];
    rest.split_at(len.min(rest.len()))
}

/// An artifact input: `[u64 LE layer size][u32 len][manifest][u32 len][tree, zstd][seek table]`.
pub fn artifact_input(layer_size: u64, manifest: &[u8], tree: &[u8], seek: &[u8]) -> Vec<u8> {
    let mut out = layer_size.to_le_bytes().to_vec();
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(&(tree.len() as u32).to_le_bytes());
    out.extend_from_slice(tree);
    out.extend_from_slice(seek);
    out
}

/// A consistent artifact input for the layer `data` (gzip-compressed here) and its seek table
/// at `span`: what the artifact check should accept whole.
pub fn artifact_seed(data: &[u8], span: u64) -> Vec<u8> {
    use imgfs::prepare::artifact;
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).expect("gzip into memory");
    let blob = e.finish().expect("gzip into memory");
    let table = SeekTable::build(seek::SeekCompression::Gzip, &blob[..], span)
        .expect("a seek table of our own gzip");
    let tree = imgfs::index::tree::Tree::new()
        .write_index(&[BlobRef::new(data.len() as u64, ARTIFACT_DIFF_ID)])
        .expect("an empty tree's index");
    let tree = zstd::bulk::compress(&tree, 3).expect("zstd into memory");
    let seek = table.encode();
    let windows = table.windows_blob();
    let subject = oci_spec::image::Descriptor::new(
        oci_spec::image::MediaType::ImageManifest,
        1000,
        ARTIFACT_SUBJECT
            .parse::<oci_spec::image::Digest>()
            .expect("a digest"),
    );
    let annotations = [(
        artifact::LAYER_ANNOTATION.to_string(),
        ARTIFACT_LAYER.to_string(),
    )];
    let mut d = artifact::descriptor(artifact::SEEK_MEDIA_TYPE, &seek);
    d.set_annotations(Some(annotations.clone().into()));
    let mut w = artifact::descriptor(artifact::WINDOWS_MEDIA_TYPE, windows);
    w.set_annotations(Some(annotations.into()));
    let tree_d = artifact::descriptor(artifact::TREE_MEDIA_TYPE, &tree);
    let prefetch = artifact::descriptor(artifact::PREFETCH_MEDIA_TYPE, b"0 0\n");
    let manifest = artifact::manifest(&subject, &tree_d, &[d], &[w], Some(&prefetch), span);
    artifact_input(blob.len() as u64, &manifest, &tree, &seek)
}

/// Any bytes as an imgfs index artifact of a one-layer image (see [`artifact_input`]): its
/// manifest read against the image, its tree and seek table opened and checked against each
/// other — accepted (true) or a clear error, never a panic or an unbounded allocation.
pub fn artifact_any(data: &[u8]) -> bool {
    use imgfs::prepare::artifact;
    let Some(size) = data.get(..8) else {
        return false;
    };
    let image = artifact_image(u64::from_le_bytes(size.try_into().expect("8 bytes")));
    let (manifest, rest) = split_len(&data[8..]);
    let (tree, seek) = split_len(rest);
    let parsed = artifact::parse(manifest, &image, ARTIFACT_SUBJECT);
    // The windows blob's size as the manifest states it (any, when it is refused).
    let windows = match &parsed {
        Ok(a) => a.windows.first().map_or(0, |d| d.size()),
        Err(_) => seek.len() as u64,
    };
    let parsed = parsed.is_ok();
    match artifact::open_tree(tree, &image) {
        Ok(tree) => match artifact::open_seek(seek, &image, 0, &tree, windows) {
            Ok(table) => {
                assert_eq!(table.compressed_size(), image.layers[0].size.unwrap_or(0));
                parsed
            }
            Err(_) => false,
        },
        Err(_) => {
            let _ = artifact::open_seek(seek, &image, 0, tree, windows);
            false
        }
    }
}

/// The blob size the TOC checks assume, and where its file data ends.
const TOC_BLOB: u64 = 1 << 20;
const TOC_DATA_END: u64 = TOC_BLOB - 4096;
/// Spans decoded per input, and the most bytes given to one.
const TOC_SPANS_TRIED: usize = 8;
const TOC_SPAN_MAX: u64 = 1 << 16;

/// Any bytes as a layer's TOC: the first byte picks the format (even: eStargz, odd:
/// zstd:chunked), the rest is its JSON. A TOC that is accepted must describe spans in blob
/// order inside the data, back to back in the stream, files inside the stream; and decoding a
/// span from any bytes gives its exact output or an error. Whether it was accepted.
pub fn toc_any(data: &[u8]) -> bool {
    use imgfs::index::toc::{self, TocFormat};
    let Some((&pick, json)) = data.split_first() else {
        return false;
    };
    let format = if pick % 2 == 0 {
        TocFormat::Estargz
    } else {
        TocFormat::ZstdChunked
    };
    let Ok(parsed) = toc::parse(format, json, TOC_BLOB, TOC_DATA_END) else {
        return false;
    };
    let table = &parsed.table;
    let mut compressed_end = 0;
    let mut uncompressed_end = 0;
    for s in table.spans() {
        assert!(s.compressed.start >= compressed_end && s.compressed.start < s.compressed.end);
        assert!(s.compressed.end <= TOC_DATA_END);
        assert_eq!(s.uncompressed.start, uncompressed_end);
        assert!(s.uncompressed.end >= s.uncompressed.start);
        compressed_end = s.compressed.end;
        uncompressed_end = s.uncompressed.end;
    }
    assert_eq!(table.uncompressed_size(), uncompressed_end);
    for e in &parsed.entries {
        assert!(e.data_offset + e.size <= uncompressed_end || e.size == 0);
        if e.size > 0 {
            let i = table
                .span_at(e.data_offset)
                .expect("a file's first byte has a span");
            assert!(table.spans()[i].uncompressed.contains(&e.data_offset));
        }
    }
    for (i, s) in table.spans().iter().enumerate().take(TOC_SPANS_TRIED) {
        let len = (s.compressed.end - s.compressed.start).min(TOC_SPAN_MAX) as usize;
        let bytes: Vec<u8> = json.iter().copied().cycle().take(len).collect();
        if let Ok(out) = table.open_span(i, &bytes) {
            assert_eq!(out.len() as u64, s.uncompressed.end - s.uncompressed.start);
        }
    }
    // The headers of names the TOC cannot say: ranges in blob order, inside the data, read
    // from any bytes into the names they say or an error.
    let mut entries = parsed.entries.clone();
    let mut unsaid_end = 0;
    for u in &parsed.unsaid {
        assert!(u.compressed.start >= unsaid_end && u.compressed.end <= TOC_DATA_END);
        assert!(u.entries.iter().all(|&i| i < entries.len()));
        unsaid_end = u.compressed.end;
        let len = (u.compressed.end - u.compressed.start).min(TOC_SPAN_MAX) as usize;
        let bytes: Vec<u8> = json.iter().copied().cycle().take(len).collect();
        let _ = toc::say_exactly(format, &mut entries, u, &bytes);
    }
    true
}

/// A TOC in `format` (0 eStargz, 1 zstd:chunked) that [`toc_any`] accepts: directories, files
/// of one and several chunks, a hard link, a symlink, a device, xattrs, whiteouts.
pub fn toc_seed(format: u8) -> Vec<u8> {
    let d = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
    let chunked = format == 1;
    let end = |e: u64| {
        if chunked {
            format!(r#","endOffset":{e}"#)
        } else {
            String::new()
        }
    };
    let entries = [
        r#"{"type":"dir","name":"etc/","mode":16877,"modtime":"2026-11-30T20:26:42Z"}"#.to_string(),
        format!(
            r#"{{"type":"reg","name":"etc/a","mode":33188,"size":10,"uid":1000,"gid":1000,"modtime":"2026-11-30T20:26:42.5Z","offset":100{},"digest":"{}","xattrs":{{"user.x":"eA=="}}}}"#,
            end(150),
            d(1)
        ),
        format!(
            r#"{{"type":"reg","name":"etc/big","mode":420,"size":300,"offset":200{},"chunkSize":100,"chunkDigest":"{}","digest":"{}"}}"#,
            end(400),
            d(2),
            d(9)
        ),
        format!(r#"{{"type":"chunk","name":"etc/big","offset":300,"chunkOffset":100,"chunkSize":100,"chunkDigest":"{}"}}"#, d(3)),
        format!(r#"{{"type":"chunk","name":"etc/big","offset":350,"chunkOffset":200,"chunkDigest":"{}","chunkType":"zeros"}}"#, d(4)),
        r#"{"type":"hardlink","name":"etc/b","linkName":"etc/a"}"#.to_string(),
        r#"{"type":"symlink","name":"etc/s","linkName":"../x","modtime":"2001-02-03T04:05:06+01:00"}"#.to_string(),
        r#"{"type":"char","name":"dev/null","mode":438,"devMajor":1,"devMinor":3}"#.to_string(),
        r#"{"type":"reg","name":"etc/.wh.gone","mode":0}"#.to_string(),
        r#"{"type":"fifo","name":"run/p","mode":4480}"#.to_string(),
        r#"{"type":"dir","name":"run/\ufffd/","mode":16877}"#.to_string(),
    ];
    let mut out = vec![format];
    out.extend_from_slice(
        format!(r#"{{"version":1,"entries":[{}]}}"#, entries.join(",")).as_bytes(),
    );
    out
}
