//! Lazy mounts from a registry: `imgfs index push` publishes an image's index beside it, and a
//! mount from an empty cache is then ready with none of the layers' bytes, fetches the spans
//! reads need and nothing more, and still equals umoci's unpacking of the image on every
//! property. The registry is Debian's docker-registry; a front (tests/fixtures/registry-front.py)
//! counts the bytes of each blob it serves. Once every span of a layer is here, the server
//! reads it from a whole copy in the store. Faults: the registry gone after the mount, a span
//! damaged in the registry, a damaged index, several cold mounts at once, a layer copy that
//! fails its diff id or does not fit the disk.

use crate::common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{
    CompareOptions, Front, FrontOptions, Layered, Mount, Mounted, Registry, RegistryConfig, Seed,
    TempDir, assert_trees_equal, estargz_fixtures, imgfs, is_mounted, layered_fixtures, run_within,
    servers_of, text, wait_until,
};

/// How long a mount or an index push may take, downloads included.
const LIMIT: Duration = Duration::from_secs(300);

fn fx() -> &'static Layered {
    layered_fixtures()
}

/// `imgfs` with dockerd out of reach.
fn imgfs_nodaemon() -> Command {
    let mut c = imgfs();
    c.env("DOCKER_HOST", "unix:///nonexistent");
    c
}

fn oci(dir: &Path, reference: &str) -> String {
    format!("oci:{}:{reference}", dir.display())
}

/// The layers (digest, size) of `reference` in the OCI layout `dir`, and its manifest digest.
fn layers_of(dir: &Path, reference: &str) -> (Vec<(String, u64)>, String) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == reference)
        .unwrap_or_else(|| panic!("no ref {reference} in {}", dir.display()))
        .clone();
    let digest = entry["digest"].as_str().unwrap().to_string();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap())
            .unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    (layers, digest)
}

/// The diff ids of `reference`'s layers in the OCI layout `dir`, bottom first, from its config.
fn diff_ids_of(dir: &Path, reference: &str) -> Vec<String> {
    let (_, manifest) = layers_of(dir, reference);
    let blob = |d: &str| -> serde_json::Value {
        let hex = d.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let config = blob(blob(&manifest)["config"]["digest"].as_str().unwrap());
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// `imgfs index push` of `source` with a cache of its own; the artifact's digest.
#[track_caller]
fn push_index(source: &str, opts: &[&str]) -> String {
    let cache = TempDir::new("imgfs-lazy-push");
    let out = run_within(
        imgfs_nodaemon()
            .args(["index", "push", "--cache-dir"])
            .arg(cache.path())
            .arg(source)
            .args(opts),
        LIMIT,
    );
    assert!(
        out.status.success(),
        "index push {source}: {}",
        text(&out.stderr)
    );
    let digest = text(&out.stdout).trim().to_string();
    assert!(
        digest.starts_with("sha256:"),
        "index push printed {digest:?}"
    );
    digest
}

/// Mounts `source` with `cache`, dockerd out of reach; the mount and what the command
/// printed on stderr.
#[track_caller]
fn mount(cache: &Path, source: &str, opts: &[&str]) -> (Mounted, String) {
    let m = Mount::new(cache, source)
        .opts(opts)
        .nodaemon()
        .limit(LIMIT)
        .done();
    let stderr = m.stderr.clone();
    (m, stderr)
}

/// Bytes of the blobs `digests` the front sent, in all, since it started: the lengths of the
/// ranges asked for (multipart framing not counted), or the whole body.
fn blob_bytes(front: &Front, digests: &HashSet<String>) -> u64 {
    front
        .log_lines()
        .iter()
        .filter_map(|l| {
            let mut w = l.split(' ');
            (w.next() == Some("sent")).then_some(())?;
            let path = w.next()?;
            let sent: u64 = w.next()?.parse().ok()?;
            let range = w.next()?;
            let digest = path.rsplit('/').next()?;
            if !(path.contains("/blobs/") && digests.contains(digest)) {
                return None;
            }
            Some(match range.strip_prefix("bytes=") {
                Some(spec) => spec
                    .split(',')
                    .map(|r| {
                        let (a, b) = r.trim().split_once('-').unwrap();
                        b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1
                    })
                    .sum(),
                None => sent,
            })
        })
        .sum()
}

/// Waits until the front has sent at least `bytes` of the blobs `digests` (a prefetch at
/// work, no read asking), failing after `limit`.
#[track_caller]
fn wait_for_bytes(front: &Front, digests: &HashSet<String>, bytes: u64, limit: Duration) {
    let start = Instant::now();
    while blob_bytes(front, digests) < bytes {
        assert!(
            start.elapsed() < limit,
            "prefetched {} of the {bytes} bytes awaited",
            blob_bytes(front, digests)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the front has sent nothing of the blobs `digests` for a second (a read-ahead
/// done), for at most a minute.
fn settle(front: &Front, digests: &HashSet<String>) {
    let start = Instant::now();
    let mut last = blob_bytes(front, digests);
    while start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(1));
        let now = blob_bytes(front, digests);
        if now == last {
            break;
        }
        last = now;
    }
}

/// Every entry under `root`, stat'ed without reading any file.
fn walk_metadata(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            n += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    n
}

/// The regular files under `root`, largest first.
fn files_by_size(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                out.push((e.path().strip_prefix(root).unwrap().to_path_buf(), m.len()));
            }
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// Drops the page cache, so that reads reach the filesystem again.
fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Reads every regular file of `truth` (but `hidden`) through the mount `mount`: each reads
/// `truth`'s bytes or fails with EIO, never anything else; the files that failed.
fn read_every_file(
    mount: &Path,
    truth: &Path,
    hidden: &std::collections::BTreeSet<PathBuf>,
) -> Vec<PathBuf> {
    let mut failed = Vec::new();
    for (f, _) in files_by_size(truth) {
        if hidden.contains(&f) {
            continue;
        }
        match std::fs::read(mount.join(&f)) {
            Ok(got) => assert!(
                got == std::fs::read(truth.join(&f)).unwrap(),
                "{} read wrong bytes",
                f.display()
            ),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{}: {e}", f.display());
                failed.push(f);
            }
        }
    }
    failed
}

/// The files `failed` now read `truth`'s bytes through the mount `mount`.
fn assert_repaired(mount: &Path, truth: &Path, failed: &[PathBuf]) {
    for f in failed {
        let got = std::fs::read(mount.join(f)).expect("repaired");
        assert!(
            got == std::fs::read(truth.join(f)).unwrap(),
            "{}",
            f.display()
        );
    }
}

/// The registry image of the gzip layout, with an imgfs index pushed, behind a counting front.
struct LazyImage {
    registry: Registry,
    front: Front,
    /// `docker://FRONT/imgfs-test/layers:1`.
    source: String,
    layers: HashSet<String>,
    total: u64,
}

/// [`registry_image`] with imgfs's index of the image pushed beside it.
fn lazy_image(layout: &str, reference: &str, name: &str) -> LazyImage {
    image_behind_front(
        seeded_registry(&fx().path(layout), reference, name, true).0,
        &fx().path(layout),
        reference,
        name,
    )
}

/// The image `reference` of the layout `layout` in a registry, without an imgfs index,
/// behind a counting front.
fn registry_image(layout: &Path, reference: &str, name: &str) -> LazyImage {
    image_behind_front(
        seeded_registry(layout, reference, name, false).0,
        layout,
        reference,
        name,
    )
}

fn image_behind_front(registry: Registry, layout: &Path, reference: &str, name: &str) -> LazyImage {
    let front = Front::start(&registry.addr, &FrontOptions::default());
    let (layers, _) = layers_of(layout, reference);
    LazyImage {
        registry,
        source: format!("docker://{}/{name}", front.addr),
        front,
        total: layers.iter().map(|(_, s)| s).sum(),
        layers: layers.into_iter().map(|(d, _)| d).collect(),
    }
}

/// A registry of its own holding `reference` of the OCI layout `layout` as `name`, and with
/// `indexed` imgfs's index of it beside it, whose digest comes with it (empty without). It
/// starts on a copy of a storage tree filled once (skopeo's push, then `imgfs index push`)
/// for this build of imgfs: the pushes take seconds that the tests here do not test (the
/// index push has tests of its own), and a test may damage its copy as it likes.
fn seeded_registry(
    layout: &Path,
    reference: &str,
    name: &str,
    indexed: bool,
) -> (Registry, String) {
    if !indexed {
        let (registry, _) =
            Registry::with_image(layout, reference, name, RegistryConfig::default());
        return (registry, String::new());
    }
    let seed = Seed::of_layout("indexed", layout, &format!("{reference} {name}")).of_this_build();
    Registry::seeded(&seed, RegistryConfig::default(), |registry| {
        registry.push(&oci(layout, reference), name);
        push_index(&registry.reference(name), &[])
    })
}

/// After `imgfs index push`, a cold mount fetches no layer bytes until a file is read; a
/// program's few reads fetch a fraction; reading everything equals umoci's unpacking and
/// fetches each byte of each layer at most once (all but spans of files that upper layers
/// hide); a second mount with the same cache fetches nothing.
#[test]
fn lazy_mount_fetches_only_what_is_read_and_matches_umoci() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &img.source, &[]);
    let entries = walk_metadata(m.path());
    assert!(entries > 1000, "{entries} entries");
    assert_eq!(
        blob_bytes(&img.front, &img.layers),
        0,
        "a metadata walk fetched layer bytes"
    );
    let truth = fx().path("TRUTH_LAYERS");
    for f in ["etc/os-release", "usr/bin/python3"] {
        let got = std::fs::read(m.path().join(f)).unwrap();
        let want = std::fs::read(truth.join(f)).unwrap();
        assert!(got == want, "{f} differs from umoci's");
    }
    let some = blob_bytes(&img.front, &img.layers);
    assert!(
        some > 0 && some * 5 <= img.total,
        "reading two files fetched {some} of {} bytes",
        img.total
    );
    assert_trees_equal(&truth, m.path(), &CompareOptions::default());
    // Nothing twice; everything but the spans whose files later layers replace or delete (in
    // this image a run of about 620 kB of the bottom layer's tar), which no read needs.
    let all = blob_bytes(&img.front, &img.layers);
    assert!(
        all <= img.total && all * 100 >= img.total * 99,
        "reading everything fetched {all} of {} layer bytes",
        img.total
    );
    drop(m);
    let (m, _) = mount(cache.path(), &img.source, &[]);
    drop_caches();
    assert_trees_equal(&truth, m.path(), &CompareOptions::default());
    assert_eq!(
        blob_bytes(&img.front, &img.layers),
        all,
        "a second mount fetched again"
    );
}

/// Once a byte of a small file is read, the rest of it is fetched in the background: reading
/// all of it afterwards fetches nothing more, and gives umoci's bytes.
#[test]
fn a_small_file_is_fetched_whole_once_it_is_read() {
    use std::io::Read;
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let truth = fx().path("TRUTH_LAYERS");
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &img.source, &["--prefetch", "none"]);
    let (f, size) = files_by_size(&truth)
        .into_iter()
        .find(|(_, size)| (2 << 20..=6 << 20).contains(size))
        .expect("a file of 2 to 6 MiB in the image");
    let want = std::fs::read(truth.join(&f)).unwrap();
    let mut head = [0u8; 4096];
    std::fs::File::open(m.path().join(&f))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert!(
        head[..] == want[..4096],
        "{}: the first bytes differ",
        f.display()
    );
    settle(&img.front, &img.layers);
    let before = blob_bytes(&img.front, &img.layers);
    assert!(
        before > 0 && before < size,
        "{}: {before} bytes fetched",
        f.display()
    );
    let got = std::fs::read(m.path().join(&f)).unwrap();
    assert!(got == want, "{} differs from umoci's", f.display());
    assert_eq!(
        blob_bytes(&img.front, &img.layers),
        before,
        "reading the rest of {} ({size} bytes) fetched more",
        f.display()
    );
}

/// zstd:chunked layers (many zstd frames) with an imgfs index: the same equality.
#[test]
fn lazy_mount_of_zstd_chunked_layers_matches_umoci() {
    let img = lazy_image(
        "OCI_ZSTD_CHUNKED",
        "layers-app",
        "imgfs-test/layers-app:chunked",
    );
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &img.source, &[]);
    walk_metadata(m.path());
    assert_eq!(blob_bytes(&img.front, &img.layers), 0);
    assert_trees_equal(
        &fx().path("TRUTH_APP"),
        m.path(),
        &CompareOptions::default(),
    );
    // Every file read, each span fetched once: no more than the layers, and all of them but
    // the frames no file lies in (the chunked TOC, the tar's end).
    let got = blob_bytes(&img.front, &img.layers);
    assert!(
        got <= img.total && got * 100 >= img.total * 99,
        "{got} of {} bytes fetched",
        img.total
    );
}

/// A lazy image's server stops on SIGTERM and SIGINT as any other does, unmounting: the
/// threads the image starts as it opens (prefetch, promotion, fetches) take no signal, which
/// would end the server and leave its mount dead.
#[test]
fn a_lazy_server_unmounts_when_signalled() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let cache = TempDir::new("imgfs-lazy-cache");
        let (m, _) = mount(cache.path(), &img.source, &["--prefetch", "all"]);
        let pids = servers_of(m.path());
        assert_eq!(pids.len(), 1, "one server per mount");
        // SAFETY: sending a signal to a server this test started.
        assert_eq!(unsafe { libc::kill(pids[0], signal) }, 0);
        wait_until("the signalled server exits", || {
            servers_of(m.path()).is_empty()
        });
        assert!(
            !is_mounted(m.path()),
            "signal {signal}: the server is gone and its mount left behind"
        );
    }
}

/// `--prefetch all` fills the rest of the image in the background after the mount: every
/// layer byte once; reads then fetch nothing.
#[test]
fn prefetch_all_fetches_the_image_once_in_the_background() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &img.source, &["--prefetch", "all"]);
    wait_for_bytes(&img.front, &img.layers, img.total, Duration::from_secs(120));
    assert_trees_equal(
        &fx().path("TRUTH_LAYERS"),
        m.path(),
        &CompareOptions::default(),
    );
    assert_eq!(blob_bytes(&img.front, &img.layers), img.total);
    // Every span here: the next mount makes the image whole in the store (each layer
    // checked against its digest and diff id) and reads it like a local one.
    drop(m);
    let (m, _) = mount(cache.path(), &img.source, &[]);
    let whole: Vec<_> = std::fs::read_dir(cache.path().join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("oci-"))
        .collect();
    assert_eq!(
        whole.len(),
        1,
        "no whole image after every span was fetched"
    );
    let marker = cache.path().join("images").join(&whole[0]).join("complete");
    assert!(marker.exists(), "{}", marker.display());
    assert_trees_equal(
        &fx().path("TRUTH_LAYERS"),
        m.path(),
        &CompareOptions::default(),
    );
    assert_eq!(blob_bytes(&img.front, &img.layers), img.total);
}

/// The whole layer tars of a cache (`layers/KEY/layer.tar`, KEY a diff id) some process
/// has open: a server reading them.
fn open_layer_tars(cache: &Path) -> HashSet<PathBuf> {
    let layers = cache.join("layers");
    let mut open = HashSet::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && target.starts_with(&layers)
                && target.file_name().is_some_and(|n| n == "layer.tar")
            {
                open.insert(target);
            }
        }
    }
    open
}

/// The store's whole copy of the layer whose diff id is `diff_id`, if its entry is complete.
fn whole_layer(cache: &Path, diff_id: &str) -> Option<PathBuf> {
    let dir = cache.join("layers").join(diff_id.replace(':', "-"));
    dir.join("complete").exists().then(|| dir.join("layer.tar"))
}

/// Once `--prefetch all` has every span of a layer, the server makes the layer whole in the
/// store (the entry a whole fetch fills, under its diff id) and reads it from there: each
/// layer's tar hashes to its diff id and is open in the server, and with every sparse blob
/// wiped, reading every file fetches nothing and still equals umoci's unpacking. A server
/// started with every span present makes a missing copy at once.
#[test]
fn prefetched_layers_are_read_from_whole_copies_in_the_mount() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let diff_ids = diff_ids_of(&fx().path("OCI_GZIP"), "layers");
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &img.source, &["--prefetch", "all"]);
    wait_for_bytes(&img.front, &img.layers, img.total, Duration::from_secs(120));
    let start = Instant::now();
    let copies: Vec<PathBuf> = loop {
        let copies: Vec<PathBuf> = diff_ids
            .iter()
            .filter_map(|d| whole_layer(cache.path(), d))
            .collect();
        let open = open_layer_tars(cache.path());
        if copies.len() == diff_ids.len() && copies.iter().all(|c| open.contains(c)) {
            break copies;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "whole copies {copies:?}, open {open:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for (copy, diff_id) in copies.iter().zip(&diff_ids) {
        assert_eq!(&common::sha256_file(copy), diff_id, "{}", copy.display());
    }
    // A server that starts with every span here makes the missing copy at once (`--pull`:
    // the mount itself does not make the image whole).
    drop(m);
    std::fs::remove_dir_all(copies[0].parent().unwrap()).unwrap();
    let (m, _) = mount(cache.path(), &img.source, &["--pull", "--prefetch", "none"]);
    let start = Instant::now();
    while !(copies[0].exists() && open_layer_tars(cache.path()).len() == copies.len()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the copy of {} was not made again",
            diff_ids[0]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(&common::sha256_file(&copies[0]), &diff_ids[0]);
    let whole_images = std::fs::read_dir(cache.path().join("images"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("oci-"))
        .count();
    assert_eq!(whole_images, 0, "the mount made the image whole itself");
    // Reads no longer look at the spans: wiped, they would be fetched again.
    for e in std::fs::read_dir(cache.path().join("layers"))
        .unwrap()
        .flatten()
    {
        let blob = e.path().join("blob");
        if e.file_name().to_string_lossy().starts_with("lazy-") {
            let len = std::fs::metadata(&blob).unwrap().len();
            std::fs::write(&blob, vec![0u8; len as usize]).unwrap();
        }
    }
    drop_caches();
    assert_trees_equal(
        &fx().path("TRUTH_LAYERS"),
        m.path(),
        &CompareOptions::default(),
    );
    assert_eq!(
        blob_bytes(&img.front, &img.layers),
        img.total,
        "reads of promoted layers fetched spans"
    );
    assert!(
        common::cache_leftovers(cache.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains(".tmp")),
        "a temporary file was left"
    );
}

/// A layer whose copy does not match the diff id its image records (here the record is
/// altered) is never read from that copy: every other layer is promoted, that one stays lazy
/// with one line in the server's log, no entry of it is left in the store, and every file
/// still equals umoci's unpacking.
#[test]
fn a_layer_failing_its_diff_id_stays_lazy() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let diff_ids = diff_ids_of(&fx().path("OCI_GZIP"), "layers");
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &img.source, &["--prefetch", "none"]);
    drop(m);
    let info = cache_file_named(cache.path(), "layers.json");
    let victim = diff_ids[diff_ids.len() / 2].clone();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let text = std::fs::read_to_string(&info).unwrap();
    assert!(text.contains(&victim), "{text}");
    std::fs::write(&info, text.replace(&victim, &wrong)).unwrap();
    let (m, _) = mount(cache.path(), &img.source, &["--prefetch", "all"]);
    wait_for_bytes(&img.front, &img.layers, img.total, Duration::from_secs(120));
    let log_path = cache_file_named(cache.path(), "server.log");
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let promoted = diff_ids
            .iter()
            .filter(|d| whole_layer(cache.path(), d).is_some())
            .count();
        if log.contains("cannot be made whole") && promoted == diff_ids.len() - 1 {
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("made whole")).collect();
            assert_eq!(lines.len(), 1, "{log}");
            assert!(lines[0].contains("diff id"), "{}", lines[0]);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{promoted} layers promoted; log: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(whole_layer(cache.path(), &victim).is_none());
    assert!(
        !cache
            .path()
            .join("layers")
            .join(wrong.replace(':', "-"))
            .exists()
    );
    drop_caches();
    assert_trees_equal(
        &fx().path("TRUTH_LAYERS"),
        m.path(),
        &CompareOptions::default(),
    );
    assert_eq!(blob_bytes(&img.front, &img.layers), img.total);
}

/// A full disk: the cache on a tmpfs that holds the fetched blobs (72 MB) but not the largest
/// layer's tar as well (about 170 MB). That layer's copy fails and is removed, with one line
/// in the server's log; the layer stays lazy, and every file still equals umoci's unpacking
/// without a byte fetched again.
#[test]
fn a_full_disk_leaves_the_layer_lazy() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let diff_ids = diff_ids_of(&fx().path("OCI_GZIP"), "layers");
    let disk = TempDir::new("imgfs-lazy-disk");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=120m", "tmpfs"])
        .arg(disk.path())
        .status()
        .unwrap();
    assert!(ok.success(), "mount a tmpfs (needs root)");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _disk = Unmount(disk.path());
    let cache = disk.path().join("cache");
    let (m, _) = mount(&cache, &img.source, &["--prefetch", "all"]);
    wait_for_bytes(&img.front, &img.layers, img.total, Duration::from_secs(120));
    let log_path = cache_file_named(&cache, "server.log");
    let start = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let promoted = diff_ids
            .iter()
            .filter(|d| whole_layer(&cache, d).is_some())
            .count();
        if log.contains("cannot be made whole") && promoted == diff_ids.len() - 1 {
            break log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{promoted} layers promoted; log: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("made whole")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("No space left"), "{}", lines[0]);
    let lazy_layer = diff_ids
        .iter()
        .find(|d| whole_layer(&cache, d).is_none())
        .unwrap();
    assert!(
        !cache
            .join("layers")
            .join(lazy_layer.replace(':', "-"))
            .exists(),
        "the failed copy's entry was left"
    );
    drop_caches();
    assert_trees_equal(
        &fx().path("TRUTH_LAYERS"),
        m.path(),
        &CompareOptions::default(),
    );
    assert_eq!(blob_bytes(&img.front, &img.layers), img.total);
    drop(m);
}

/// The file `name` of the lazy image entry in `cache`.
fn cache_file_named(cache: &Path, name: &str) -> PathBuf {
    std::fs::read_dir(cache.join("images"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("lazy-"))
        .map(|e| e.path().join(name))
        .next()
        .unwrap()
}

/// The registry gone after the mount: what was fetched is still served; what was not fails
/// with EIO once --fetch-timeout is spent, naming the layer in the server's log; once the
/// registry is back, the same read succeeds.
#[test]
fn registry_gone_after_a_lazy_mount() {
    let mut img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    // Straight to the registry: it is the one that goes away and comes back on its port.
    let source = img.registry.reference("imgfs-test/layers:1");
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &source, &["--fetch-timeout", "3"]);
    let truth = fx().path("TRUTH_LAYERS");
    let present = "etc/os-release";
    let want = std::fs::read(truth.join(present)).unwrap();
    assert_eq!(std::fs::read(m.path().join(present)).unwrap(), want);
    let (missing, _) = files_by_size(&truth).into_iter().next().unwrap();
    img.registry.kill();
    drop_caches();
    assert_eq!(
        std::fs::read(m.path().join(present)).unwrap(),
        want,
        "data already fetched must be served without the registry"
    );
    let start = Instant::now();
    let err = std::fs::read(m.path().join(&missing)).expect_err("read of a missing span");
    let took = start.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(60),
        "EIO after {took:?}"
    );
    let log = std::fs::read_dir(cache.path().join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("server.log"))
        .find(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("layer sha256:") && l.contains("bytes ")),
        "no log line naming the layer and range: {log:?}"
    );
    // Metadata never waits for the network.
    let start = Instant::now();
    walk_metadata(m.path());
    assert!(start.elapsed() < Duration::from_secs(5));
    img.registry.restart();
    let got = std::fs::read(m.path().join(&missing)).expect("the registry is back");
    assert!(got == std::fs::read(truth.join(&missing)).unwrap());
}

/// A span damaged in the registry is never served: reads of files in it fail with EIO and
/// every file that reads at all reads right; once the blob is repaired they read again.
#[test]
fn damaged_span_in_the_registry_is_never_served() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let (layers, _) = layers_of(&fx().path("OCI_GZIP"), "layers");
    let (victim, size) = layers.iter().max_by_key(|(_, s)| *s).unwrap().clone();
    let data = img.registry.blob_data(&victim);
    let original = std::fs::read(&data).unwrap();
    assert_eq!(original.len() as u64, size);
    let mut damaged = original.clone();
    damaged[original.len() / 2] ^= 0x55;
    std::fs::write(&data, &damaged).unwrap();
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &img.source, &["--fetch-timeout", "2"]);
    let truth = fx().path("TRUTH_LAYERS");
    let failed = read_every_file(m.path(), &truth, &Default::default());
    assert!(!failed.is_empty(), "no read met the damaged span");
    std::fs::write(&data, &original).unwrap();
    assert_repaired(m.path(), &truth, &failed);
}

/// Windows damaged in the registry are never used: a read that needs one fails with EIO, every
/// file that reads at all reads right (its spans start fresh or take their window from the
/// span before), and once the windows blob is repaired the failed files read right.
#[test]
fn damaged_window_in_the_registry_is_never_used() {
    let fx = fx();
    let (registry, _) =
        seeded_registry(&fx.path("OCI_GZIP"), "layers", "imgfs-test/layers:1", false);
    let direct = registry.reference("imgfs-test/layers:1");
    let artifact = push_index(&direct, &["--span", "256K"]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(registry.blob_data(&artifact)).unwrap()).unwrap();
    let blobs = manifest["layers"].as_array().unwrap();
    let (layers, _) = layers_of(&fx.path("OCI_GZIP"), "layers");
    let biggest = (0..layers.len()).max_by_key(|&i| layers[i].1).unwrap();
    let windows = &blobs[1 + layers.len() + biggest];
    assert_eq!(
        windows["mediaType"].as_str(),
        Some("application/vnd.imgfs.index.windows.v1")
    );
    let data = registry.blob_data(windows["digest"].as_str().unwrap());
    let original = std::fs::read(&data).unwrap();
    // Every byte: every window of the layer is damaged, however short (a sparse window can
    // take a few dozen bytes).
    let damaged: Vec<u8> = original.iter().map(|b| b ^ 0x55).collect();
    std::fs::write(&data, &damaged).unwrap();
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &direct, &["--fetch-timeout", "2"]);
    let truth = fx.path("TRUTH_LAYERS");
    let failed = read_every_file(m.path(), &truth, &Default::default());
    let read = files_by_size(&truth).len() - failed.len();
    assert!(!failed.is_empty(), "no read needed a damaged window");
    assert!(read > 0, "no file read at all");
    std::fs::write(&data, &original).unwrap();
    assert_repaired(m.path(), &truth, &failed);
}

/// An index whose seek table was damaged in the registry is refused with a warning, and the
/// image is fetched whole instead — and still equals umoci's.
#[test]
fn damaged_index_falls_back_to_a_whole_fetch() {
    let fx = fx();
    let (registry, artifact) =
        seeded_registry(&fx.path("OCI_GZIP"), "layers", "imgfs-test/layers:1", true);
    let direct = registry.reference("imgfs-test/layers:1");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(registry.blob_data(&artifact)).unwrap()).unwrap();
    let seek = manifest["layers"][1]["digest"].as_str().unwrap();
    let data = registry.blob_data(seek);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&data, &bytes).unwrap();
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, stderr) = mount(cache.path(), &direct, &[]);
    assert!(
        stderr.contains("imgfs index") && stderr.contains("whole image"),
        "no warning: {stderr}"
    );
    assert_trees_equal(
        &fx.path("TRUTH_LAYERS"),
        m.path(),
        &CompareOptions::default(),
    );
}

/// An index of the older artifact type beside the image is reported, not used: the mount says
/// to push the index again, fetches the image whole and equals umoci's unpacking.
#[test]
fn index_of_an_older_format_is_reported_and_not_used() {
    use imgfs::source::registry::{Registry as Client, RegistryOptions};
    let fx = fx();
    let (registry, _) =
        seeded_registry(&fx.path("OCI_GZIP"), "layers", "imgfs-test/layers:1", false);
    let direct = registry.reference("imgfs-test/layers:1");
    let repository = format!("{}/imgfs-test/layers", registry.addr);
    let client = Client::connect_repository(&repository, &RegistryOptions::default()).unwrap();
    let (_, manifest_digest) = layers_of(&fx.path("OCI_GZIP"), "layers");
    let subject: oci_spec::image::Digest = manifest_digest.parse().unwrap();
    let (subject_bytes, subject_type) = client.manifest_by_digest(&subject).unwrap();
    let empty = client.push_blob(b"{}").unwrap();
    let payload_bytes = b"an index of the first format";
    let payload = client.push_blob(payload_bytes).unwrap();
    let old = "application/vnd.imgfs.index.v1";
    let artifact = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": old,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": empty.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.imgfs.index.tree.v1+zstd",
                    "digest": payload.to_string(), "size": payload_bytes.len()}],
        "subject": {"mediaType": subject_type.unwrap(), "digest": manifest_digest,
                    "size": subject_bytes.len()},
    }))
    .unwrap();
    client.push_referrer(&subject, &artifact, old).unwrap();

    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, stderr) = mount(cache.path(), &direct, &[]);
    assert!(
        stderr.contains("older format") && stderr.contains("imgfs index push"),
        "no warning: {stderr}"
    );
    assert_trees_equal(
        &fx.path("TRUTH_LAYERS"),
        m.path(),
        &CompareOptions::default(),
    );
}

/// Eight cold mounts of one image at once, each with its own cache: each reads right, and
/// together they fetch eight times what one does.
#[test]
fn eight_concurrent_cold_mounts() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let truth = fx().path("TRUTH_LAYERS");
    let files = ["etc/os-release", "usr/bin/python3", "etc/passwd"];
    let read_all = |m: &Mounted| {
        for f in files {
            let got = std::fs::read(m.path().join(f)).unwrap();
            assert!(got == std::fs::read(truth.join(f)).unwrap(), "{f}");
        }
    };
    // A read of a small file fetches the rest of it in the background: each mount is left
    // until the front sends nothing more, so that every mount counts all it fetches.
    let settle = || settle(&img.front, &img.layers);
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &img.source, &[]);
    read_all(&m);
    settle();
    let one = blob_bytes(&img.front, &img.layers);
    drop(m);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let cache = TempDir::new("imgfs-lazy-cache");
                let (m, _) = mount(cache.path(), &img.source, &[]);
                read_all(&m);
                settle();
            });
        }
    });
    let eight = blob_bytes(&img.front, &img.layers) - one;
    assert!(
        eight <= 8 * one,
        "8 cold mounts fetched {eight} bytes, one fetched {one}"
    );
}

/// Registries answer ranges in their own ways: ignoring Range (the whole blob), refusing
/// several ranges in one request, sending parts out of order, redirecting blobs to storage
/// links that expire, tokens that expire. A lazy mount through each reads right.
#[test]
fn lazy_mounts_through_odd_registries() {
    let fx = fx();
    let (registry, _) =
        seeded_registry(&fx.path("OCI_GZIP"), "layers", "imgfs-test/layers:1", true);
    let truth = fx.path("TRUTH_LAYERS");
    let files = ["etc/os-release", "usr/bin/python3", "etc/passwd"];
    let fronts = [
        (
            "ignore",
            FrontOptions {
                ranges: Some("ignore".into()),
                ..FrontOptions::default()
            },
        ),
        (
            "single-only",
            FrontOptions {
                ranges: Some("single-only".into()),
                ..FrontOptions::default()
            },
        ),
        (
            "shuffle",
            FrontOptions {
                ranges: Some("shuffle".into()),
                ..FrontOptions::default()
            },
        ),
        (
            "storage",
            FrontOptions {
                storage: true,
                expired_links: 1,
                credentials: Some(("imgfs".into(), "s3cret".into())),
                token_ttl: Some(1.0),
                ..FrontOptions::default()
            },
        ),
    ];
    for (name, opts) in fronts {
        let front = Front::start(&registry.addr, &opts);
        let dir = TempDir::new("imgfs-lazy-auth");
        let mut env: Vec<(&str, &std::ffi::OsStr)> = Vec::new();
        let auth = dir.path().join("auth.json");
        if opts.credentials.is_some() {
            common::write_auth_file(&auth, &front.addr, "imgfs", "s3cret");
            env.push(("REGISTRY_AUTH_FILE", auth.as_os_str()));
        }
        let cache = TempDir::new("imgfs-lazy-cache");
        let mut mount = Mount::new(
            cache.path(),
            format!("docker://{}/imgfs-test/layers:1", front.addr),
        )
        .nodaemon()
        .limit(LIMIT);
        for (k, v) in &env {
            mount = mount.env(k, v);
        }
        let m = match mount.try_mount() {
            Ok(m) => m,
            Err(f) => panic!("{name}: {}", text(&f.output.stderr)),
        };
        std::thread::sleep(Duration::from_millis(1500)); // the token expires meanwhile
        for f in files {
            let got =
                std::fs::read(m.path().join(f)).unwrap_or_else(|e| panic!("{name}: {f}: {e}"));
            assert!(got == std::fs::read(truth.join(f)).unwrap(), "{name}: {f}");
        }
        if name == "single-only" || name == "storage" {
            assert_trees_equal(&truth, m.path(), &CompareOptions::default());
        }
    }
}

/// `imgfs index push --record -- CMD` publishes the spans CMD read; a cold mount then fetches
/// them at once, before any read (`--prefetch recorded`, the default): running CMD in the
/// image then fetches nothing more, and `--prefetch none` fetches nothing until a read.
#[test]
fn recorded_spans_are_fetched_first() {
    let fx = fx();
    let (registry, _) =
        seeded_registry(&fx.path("OCI_GZIP"), "layers", "imgfs-test/layers:1", false);
    let direct = registry.reference("imgfs-test/layers:1");
    let command = ["python3", "-c", "pass"];
    push_index(&direct, &[&["--record", "--"][..], &command].concat());
    let front = Front::start(&registry.addr, &FrontOptions::default());
    let source = format!("docker://{}/imgfs-test/layers:1", front.addr);
    let (layers, _) = layers_of(&fx.path("OCI_GZIP"), "layers");
    let layers: HashSet<String> = layers.into_iter().map(|(d, _)| d).collect();
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &source, &["--prefetch", "none"]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(blob_bytes(&front, &layers), 0, "--prefetch none fetched");
    drop(m);
    let cache = TempDir::new("imgfs-lazy-cache");
    let (_m, _) = mount(cache.path(), &source, &[]);
    wait_for_bytes(&front, &layers, 1, Duration::from_secs(30));
    settle(&front, &layers);
    let prefetched = blob_bytes(&front, &layers);
    let listed = std::fs::read_dir(cache.path().join("images"))
        .unwrap()
        .flatten()
        .any(|e| e.path().join("prefetch").exists());
    assert!(listed, "the image entry has no prefetch list");
    // The truth of what the command reads is the command itself, run again (the image's
    // entrypoint given it as arguments, as in the recording; served by the live mount): all
    // of it is here already.
    let out = run_within(
        imgfs_nodaemon()
            .args(["run", "--linger", "0", "--cache-dir"])
            .arg(cache.path())
            .arg(&source)
            .arg("--")
            .args(command),
        LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("args: python3 -c pass\n"), "{stdout}");
    assert_eq!(
        blob_bytes(&front, &layers),
        prefetched,
        "the recorded command fetched what the prefetch had not"
    );
}

/// `imgfs index push --recorded` takes the spans earlier mounts read, as the cache recorded
/// them: after one mount read a file, the index lists what it read, and a cold mount fetches
/// that before any read, so that the same read then fetches nothing.
#[test]
fn spans_recorded_by_earlier_mounts_are_published() {
    let fx = fx();
    let (registry, _) =
        seeded_registry(&fx.path("OCI_GZIP"), "layers", "imgfs-test/layers:1", true);
    let direct = registry.reference("imgfs-test/layers:1");
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &direct, &["--prefetch", "none"]);
    let file = "etc/os-release";
    let want = std::fs::read(fx.path("TRUTH_LAYERS").join(file)).unwrap();
    assert_eq!(std::fs::read(m.path().join(file)).unwrap(), want);
    drop(m);
    let out = run_within(
        imgfs_nodaemon()
            .args(["index", "push", "--cache-dir"])
            .arg(cache.path())
            .arg(&direct)
            .arg("--recorded"),
        LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains(" 0 to prefetch"),
        "nothing recorded: {stderr}"
    );
    let front = Front::start(&registry.addr, &FrontOptions::default());
    let (layers, _) = layers_of(&fx.path("OCI_GZIP"), "layers");
    let layers: HashSet<String> = layers.into_iter().map(|(d, _)| d).collect();
    let cold = TempDir::new("imgfs-lazy-cache");
    let source = format!("docker://{}/imgfs-test/layers:1", front.addr);
    let (m, _) = mount(cold.path(), &source, &[]);
    wait_for_bytes(&front, &layers, 1, Duration::from_secs(30));
    settle(&front, &layers);
    let prefetched = blob_bytes(&front, &layers);
    drop_caches();
    assert_eq!(std::fs::read(m.path().join(file)).unwrap(), want);
    assert_eq!(
        blob_bytes(&front, &layers),
        prefetched,
        "the read the earlier mount made fetched what the prefetch had not"
    );
}

/// Eight cold `imgfs run`s of a lazy image at once, each with its own cache: each gets a
/// server of its own outside its sandbox (none may take another's mountpoint away) and runs
/// the image's entrypoint (a shell script calling `id` and `pwd`, all read lazily), which
/// prints what it was given and as whom it runs (the image's user, as docker runs it).
#[test]
fn eight_concurrent_cold_runs() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let cache = TempDir::new("imgfs-lazy-cache");
                let out = run_within(
                    imgfs_nodaemon()
                        .args(["run", "--linger", "0", "--cache-dir"])
                        .arg(cache.path())
                        .arg(&img.source)
                        .args(["--", "one", "two"]),
                    LIMIT,
                );
                let stdout = text(&out.stdout);
                assert!(out.status.success(), "{}", text(&out.stderr));
                assert!(
                    stdout.contains("args: one two\n")
                        && stdout.contains("user: 1500:1500 runner")
                        && stdout.contains("cwd: /home/runner/work"),
                    "{stdout}"
                );
            });
        }
    });
}

/// How a mount from eStargz TOCs differs from umoci's unpacking: the format's own entries
/// (the TOC, the landmark) are hidden, and mtimes are what the TOC keeps of them, rounded to
/// the second. Everything else is compared exactly.
fn estargz_entries() -> CompareOptions {
    CompareOptions {
        hidden: ["stargz.index.json", ".no.prefetch.landmark"]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        mtime_rounded: true,
        ..CompareOptions::default()
    }
}

/// A layer's TOC cannot name a non-UTF-8 file exactly (Go writes U+FFFD): that layer is
/// fetched whole, with one warning.
#[track_caller]
fn assert_one_layer_fetched_whole(stderr: &str) {
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("its TOC cannot be used"))
        .collect();
    assert!(
        warnings.len() == 1 && warnings[0].contains("not UTF-8") && warnings[0].contains("whole"),
        "{stderr}"
    );
}

/// An eStargz image made by ctr-remote, no imgfs index: the mount is ready from the layers'
/// TOCs (the layer whose names the TOC cannot say fetched whole), walks its metadata without
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
    assert_one_layer_fetched_whole(&stderr);
    let at_mount = blob_bytes(&img.front, &img.layers);
    assert!(
        at_mount * 10 <= img.total,
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
    // One layer of the fixture has a name its TOC cannot hold: it is fetched whole.
    assert!(toc_layers.len() >= 2, "{toc_layers:?}");
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
    assert_one_layer_fetched_whole(&stderr);
    let at_mount = blob_bytes(&img.front, &img.layers);
    walk_metadata(m.path());
    assert_eq!(blob_bytes(&img.front, &img.layers), at_mount);
    assert!(at_mount * 10 <= img.total, "{at_mount} of {}", img.total);
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

/// `imgfs index push` from an empty cache downloads each layer once: the fill that stores a
/// layer whole builds its seek table on the way. The index it pushes then serves a lazy mount
/// equal to umoci's unpacking.
#[test]
fn index_push_downloads_each_layer_once() {
    let img = registry_image(&fx().path("OCI_GZIP"), "layers", "imgfs-test/layers:1");
    push_index(&img.source, &[]);
    let sent = blob_bytes(&img.front, &img.layers);
    assert_eq!(
        sent, img.total,
        "index push fetched {sent} bytes of a {}-byte image",
        img.total
    );
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &img.source, &[]);
    assert_trees_equal(
        &fx().path("TRUTH_LAYERS"),
        m.path(),
        &CompareOptions::default(),
    );
}
