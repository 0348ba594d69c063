//! Lazy mounts of eStargz and zstd:chunked images without an imgfs index, from the tables of
//! contents their layers carry: equal to umoci's unpacking (the format's own entries hidden),
//! layers read from whole streams once every span is here, a damaged chunk never served.

use super::*;

/// How a mount from eStargz TOCs differs from umoci's unpacking: the format's own entries
/// (the TOC, the landmark) are hidden, and mtimes are what the TOC keeps of them, rounded to
/// the second. Everything else is compared exactly.
pub(crate) fn estargz_entries() -> CompareOptions {
    CompareOptions {
        hidden: ["stargz.index.json", ".no.prefetch.landmark"]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        mtime_rounded: true,
        ..CompareOptions::default()
    }
}

/// A layer's TOC cannot name a non-UTF-8 file exactly (Go writes U+FFFD): its name comes
/// from its tar header, fetched by range, and the layer stays lazy: no layer is fetched whole.
#[track_caller]
fn assert_no_layer_fetched_whole(stderr: &str) {
    assert!(!stderr.contains("its TOC cannot be used"), "{stderr}");
}

/// An eStargz image made by ctr-remote, no imgfs index: the mount is ready from the layers'
/// TOCs (the names not UTF-8 in one layer read from their tar headers), walks its metadata without
/// fetching, reads two files with a fraction of the image, and equals umoci's unpacking once
/// everything is read, having fetched each byte at most once; a second mount fetches nothing.
#[test]
fn estargz_image_mounts_lazily_from_its_tocs() {
    let fx = estargz_fixtures();
    let layout = fx.path("OCI_ESTARGZ");
    let truth = fx.path("TRUTH_ESTARGZ");
    let img = registry_image(&layout, "layers", "imgfs-test/layers:estargz");
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, stderr) = mount(cache.path(), &img.source, &[]);
    assert_no_layer_fetched_whole(&stderr);
    let at_mount = blob_bytes(&img.front, &img.layers);
    // The TOCs and a few headers: no layer whole (the one with names not UTF-8 is 4%).
    assert!(
        at_mount * 50 <= img.total,
        "the mount fetched {at_mount} of {} bytes",
        img.total
    );
    let entries = walk_metadata(m.path());
    assert!(entries > 1000, "{entries} entries");
    assert_eq!(
        blob_bytes(&img.front, &img.layers),
        at_mount,
        "a metadata walk fetched layer bytes"
    );
    for f in ["etc/os-release", "usr/bin/python3"] {
        let got = std::fs::read(m.path().join(f)).unwrap();
        assert!(got == std::fs::read(truth.join(f)).unwrap(), "{f} differs");
    }
    let some = blob_bytes(&img.front, &img.layers);
    assert!(
        some > at_mount && some * 5 <= img.total,
        "reading two files fetched {some} of {} bytes",
        img.total
    );
    assert_trees_equal(&truth, m.path(), &estargz_entries());
    let all = blob_bytes(&img.front, &img.layers);
    assert!(
        all <= img.total,
        "reading everything fetched {all} bytes of a {}-byte image",
        img.total
    );
    drop(m);
    let (m, _) = mount(cache.path(), &img.source, &[]);
    drop_caches();
    assert_trees_equal(&truth, m.path(), &estargz_entries());
    assert_eq!(
        blob_bytes(&img.front, &img.layers),
        all,
        "a second mount fetched again"
    );
}

/// The stream copies (`layers/lazy-toc-*/stream`) in `cache` some process has open.
fn open_stream_copies(cache: &Path) -> HashSet<PathBuf> {
    let layers = cache.join("layers");
    let mut open = HashSet::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && target.starts_with(&layers)
                && target.file_name().is_some_and(|n| n == "stream")
            {
                open.insert(target);
            }
        }
    }
    open
}

/// Once `--prefetch all` has every span of a layer read through its TOC, the server writes
/// the layer's stream whole beside its sparse blob and reads it from there: with every sparse
/// blob wiped, in that mount and in the next, every file still equals umoci's unpacking and
/// nothing more is fetched; no temporary file is left.
#[test]
fn toc_layers_are_read_from_whole_streams_once_every_span_is_here() {
    let fx = estargz_fixtures();
    let img = registry_image(
        &fx.path("OCI_ESTARGZ"),
        "layers",
        "imgfs-test/layers:estargz",
    );
    let truth = fx.path("TRUTH_ESTARGZ");
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &img.source, &["--prefetch", "all"]);
    let toc_layers: Vec<PathBuf> = std::fs::read_dir(cache.path().join("layers"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("lazy-toc-"))
        .map(|e| e.path())
        .collect();
    // Every layer is read through its TOC, the one with names not UTF-8 included.
    assert_eq!(toc_layers.len(), img.layers.len(), "{toc_layers:?}");
    let streams: HashSet<PathBuf> = toc_layers.iter().map(|d| d.join("stream")).collect();
    let start = Instant::now();
    while !open_stream_copies(cache.path()).is_superset(&streams) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "streams open: {:?} of {streams:?}",
            open_stream_copies(cache.path())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fetched = blob_bytes(&img.front, &img.layers);
    let wipe = || {
        for d in &toc_layers {
            let blob = d.join("blob");
            let len = std::fs::metadata(&blob).unwrap().len();
            std::fs::write(&blob, vec![0u8; len as usize]).unwrap();
        }
    };
    wipe();
    drop_caches();
    assert_trees_equal(&truth, m.path(), &estargz_entries());
    drop(m);
    let (m, _) = mount(cache.path(), &img.source, &["--prefetch", "none"]);
    drop_caches();
    assert_trees_equal(&truth, m.path(), &estargz_entries());
    assert_eq!(
        blob_bytes(&img.front, &img.layers),
        fetched,
        "reads of layers with whole streams fetched spans"
    );
    assert!(
        common::cache_leftovers(cache.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains(".tmp")),
        "a temporary file was left"
    );
}

/// zstd:chunked layers written by skopeo, no imgfs index: mounted from their TOCs (the
/// manifests in skippable frames), equal to umoci's unpacking, each byte fetched at most once.
#[test]
fn zstd_chunked_image_mounts_lazily_from_its_tocs() {
    let layout = fx().path("OCI_ZSTD_CHUNKED");
    let img = registry_image(&layout, "layers-app", "imgfs-test/layers-app:chunked");
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, stderr) = mount(cache.path(), &img.source, &[]);
    assert_no_layer_fetched_whole(&stderr);
    let at_mount = blob_bytes(&img.front, &img.layers);
    walk_metadata(m.path());
    assert_eq!(blob_bytes(&img.front, &img.layers), at_mount);
    assert!(at_mount * 50 <= img.total, "{at_mount} of {}", img.total);
    assert_trees_equal(
        &fx().path("TRUTH_APP"),
        m.path(),
        &CompareOptions::default(),
    );
    let all = blob_bytes(&img.front, &img.layers);
    assert!(all <= img.total, "{all} of {} bytes", img.total);
}

/// A regular file of the eStargz layer `blob` that the image shows as the layer has it (same
/// size in `truth`, at least 16 KiB), and a byte in the middle of the compressed bytes of its
/// first chunk — from the chunk's offset to the next offset the layer's TOC names. Found
/// through the TOC (the footer's offset, then the `stargz.index.json` member), so the damage
/// lands in data a read of that file must decompress, whatever the producer's layout.
fn estargz_file_chunk(blob: &[u8], truth: &Path) -> (String, usize) {
    use std::io::Read;
    let footer = &blob[blob.len() - 51..];
    let mark = footer
        .windows(6)
        .position(|w| w == b"STARGZ")
        .expect("an eStargz footer");
    let hex = std::str::from_utf8(&footer[mark - 16..mark]).unwrap();
    let toc_at = usize::from_str_radix(hex, 16).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&blob[toc_at..]));
    let mut json = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().as_os_str() == "stargz.index.json" {
            e.read_to_end(&mut json).unwrap();
            break;
        }
    }
    let toc: serde_json::Value = serde_json::from_slice(&json).expect("the layer's TOC");
    let entries = toc["entries"].as_array().expect("TOC entries");
    let mut offsets: Vec<usize> = entries
        .iter()
        .filter_map(|e| e["offset"].as_u64())
        .map(|o| o as usize)
        .filter(|&o| o > 0)
        .collect();
    offsets.push(toc_at);
    offsets.sort_unstable();
    for e in entries {
        let (Some(name), Some(size), Some(offset)) =
            (e["name"].as_str(), e["size"].as_u64(), e["offset"].as_u64())
        else {
            continue;
        };
        if e["type"] != "reg" || size < 16 << 10 || offset == 0 {
            continue;
        }
        let shown = std::fs::symlink_metadata(truth.join(name));
        if !shown.is_ok_and(|m| m.is_file() && m.len() == size) {
            continue;
        }
        let start = offset as usize;
        let end = *offsets.iter().find(|&&o| o > start).unwrap();
        return (
            name.trim_start_matches("./").to_string(),
            start + (end - start) / 2,
        );
    }
    panic!("no regular file of 16 KiB or more in the layer's TOC is shown by the image");
}

/// A byte of file data damaged in the registry's copy of an eStargz layer: the chunk holding
/// it fails its digest and is never served (EIO), every other file reads right, and once the
/// registry's copy is repaired the same reads succeed.
#[test]
fn damaged_estargz_chunk_is_never_served() {
    let fx = estargz_fixtures();
    let layout = fx.path("OCI_ESTARGZ");
    let truth = fx.path("TRUTH_ESTARGZ");
    let img = registry_image(&layout, "layers", "imgfs-test/layers:estargz");
    let (layers, _) = layers_of(&layout, "layers");
    let (victim, _) = layers.iter().max_by_key(|(_, s)| *s).unwrap().clone();
    let data = img.registry.blob_data(&victim);
    let original = std::fs::read(&data).unwrap();
    let (name, at) = estargz_file_chunk(&original, &truth);
    let mut damaged = original.clone();
    damaged[at] ^= 0x55;
    std::fs::write(&data, &damaged).unwrap();
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &img.source, &["--fetch-timeout", "2"]);
    let failed = read_every_file(m.path(), &truth, &estargz_entries().hidden);
    assert!(
        failed.iter().any(|f| f.ends_with(&name)),
        "no read of {name} met its damaged chunk (byte {at}); failed: {failed:?}"
    );
    std::fs::write(&data, &original).unwrap();
    assert_repaired(m.path(), &truth, &failed);
}
