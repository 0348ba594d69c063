//! Lazy mounts from a registry: `imgfs index push` publishes an image's index beside it, and a
//! mount from an empty cache is then ready with none of the layers' bytes, fetches the spans
//! reads need and nothing more, and still equals umoci's unpacking of the image on every
//! property. The registry is Debian's docker-registry; a front (tests/fixtures/registry-front.py)
//! counts the bytes of each blob it serves. Once every span of a layer is here, the server
//! reads it from a whole copy in the store.
//!
//! Here are the helpers; the tests are in [`index`] (images with an imgfs index: what is
//! fetched and when, prefetch, promotion to whole layers, several mounts at once, odd
//! registries), [`toc`] (eStargz and zstd:chunked images mounted from their own tables of
//! contents) and [`faults`] (the registry gone, damaged spans, windows and indexes).

mod faults;
mod index;
mod toc;

pub(crate) use toc::estargz_entries;

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

pub(crate) fn fx() -> &'static Layered {
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
pub(crate) fn layers_of(dir: &Path, reference: &str) -> (Vec<(String, u64)>, String) {
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
pub(crate) fn diff_ids_of(dir: &Path, reference: &str) -> Vec<String> {
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
pub(crate) fn blob_bytes(front: &Front, digests: &HashSet<String>) -> u64 {
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
pub(crate) fn drop_caches() {
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
pub(crate) struct LazyImage {
    pub registry: Registry,
    pub front: Front,
    /// `docker://FRONT/imgfs-test/layers:1`.
    pub source: String,
    pub layers: HashSet<String>,
    pub total: u64,
}

/// [`registry_image`] with imgfs's index of the image pushed beside it.
pub(crate) fn lazy_image(layout: &str, reference: &str, name: &str) -> LazyImage {
    image_behind_front(
        seeded_registry(&fx().path(layout), reference, name, true).0,
        &fx().path(layout),
        reference,
        name,
    )
}

/// The image `reference` of the layout `layout` in a registry, without an imgfs index,
/// behind a counting front.
pub(crate) fn registry_image(layout: &Path, reference: &str, name: &str) -> LazyImage {
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
