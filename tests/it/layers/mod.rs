//! Images read layer by layer without a daemon: OCI layouts (gzip, zstd, zstd:chunked,
//! uncompressed), oci-archive and docker-archive files, multi-platform indexes and registries
//! (plain, htpasswd, token authentication). Each mount is compared, entry by entry and on
//! every property, with umoci's unpacking of the same image (tests/fixtures/make-layered.sh),
//! and for the images docker built also with `docker export`. dockerd is out of reach of imgfs
//! in all of them (DOCKER_HOST points nowhere).
//!
//! Here are the helpers; the tests are in [`files`] (the truth itself, OCI layouts, archive
//! files, multi-platform indexes), [`registries`] (registries, their authentication, layer
//! sharing, `imgfs run` of their images, and the test registries themselves) and
//! [`failures`].

mod failures;
mod files;
mod registries;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{
    CompareOptions, Front, FrontOptions, Layered, Mount, Mounted, Registry, RegistryConfig,
    TempDir, assert_matches_docker_export, assert_trees_equal, cache_leftovers,
    differences_from_docker_export, disk_usage, imgfs, layered_fixtures, require, require_docker,
    run, run_within, sha256_file, text, write_auth_file,
};

/// How long a mount that should fail may take (a dead registry included).
const FAILURE_LIMIT: Duration = Duration::from_secs(120);
/// How long a mount of a fixture image may take, downloads included.
const MOUNT_LIMIT: Duration = Duration::from_secs(300);

fn fx() -> &'static Layered {
    layered_fixtures()
}

/// `imgfs` with dockerd out of reach: a daemonless source must not need it.
fn imgfs_nodaemon() -> Command {
    let mut c = imgfs();
    c.env("DOCKER_HOST", "unix:///nonexistent");
    c
}

/// `oci:DIR:REF` (no `:REF` when `reference` is empty).
fn oci(dir: &Path, reference: &str) -> String {
    if reference.is_empty() {
        format!("oci:{}", dir.display())
    } else {
        format!("oci:{}:{reference}", dir.display())
    }
}

/// `imgfs mount --cache-dir CACHE [OPTS] SOURCE MNT` with `env` added, dockerd out of reach.
fn mounting(cache: &Path, source: &str, opts: &[&str], env: &[(&str, &OsStr)]) -> Mount {
    let mut m = Mount::new(cache, source).opts(opts).nodaemon();
    for (k, v) in env {
        m = m.env(k, v);
    }
    m
}

#[track_caller]
fn mount_with(cache: &Path, source: &str, opts: &[&str], env: &[(&str, &OsStr)]) -> Mounted {
    mounting(cache, source, opts, env).limit(MOUNT_LIMIT).done()
}

#[track_caller]
fn mount(cache: &Path, source: &str) -> Mounted {
    mount_with(cache, source, &[], &[])
}

/// A registry of its own, as `config` starts it, holding layers:1 of the gzip layout as
/// `imgfs-test/layers:1`; the image's reference.
#[track_caller]
fn layers_registry(config: RegistryConfig) -> (Registry, String) {
    Registry::with_image(
        &fx().path("OCI_GZIP"),
        "layers",
        "imgfs-test/layers:1",
        config,
    )
}

/// A failed mount: exit code 1, one line on stderr starting with "imgfs:" and holding each of
/// `mentions` (case-insensitive); returns that line.
#[track_caller]
fn mount_fails(
    cache: &Path,
    source: &str,
    opts: &[&str],
    env: &[(&str, &OsStr)],
    mentions: &[&str],
) -> String {
    let Err(failed) = mounting(cache, source, opts, env)
        .limit(FAILURE_LIMIT)
        .try_mount()
    else {
        panic!("imgfs mount {opts:?} {source} succeeded; it should fail");
    };
    let out = failed.output;
    assert_one_line_error(&out, mentions);
    text(&out.stderr).trim_end().to_string()
}

#[track_caller]
fn assert_one_line_error(out: &Output, mentions: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr, not: {err}");
    assert!(err.starts_with("imgfs:"), "{err}");
    let lower = err.to_lowercase();
    for m in mentions {
        assert!(lower.contains(&m.to_lowercase()), "{m:?} not in: {err}");
    }
}

/// Like [`assert_one_line_error`], for failures whose wording is free as long as one of
/// `any_of` appears.
#[track_caller]
fn assert_mentions_any(line: &str, any_of: &[&str]) {
    let lower = line.to_lowercase();
    assert!(
        any_of.iter().any(|m| lower.contains(&m.to_lowercase())),
        "none of {any_of:?} in: {line}"
    );
}

/// The cache holds nothing but fill locks (and empty top-level directories).
#[track_caller]
fn assert_cache_empty(cache: &Path) {
    let left = cache_leftovers(cache);
    assert!(
        left.is_empty(),
        "a failed mount left in the cache: {left:?}"
    );
}

/// The mount is umoci's unpacking of the same image, on every property, the root included.
#[track_caller]
fn assert_matches(truth: &Path, mnt: &Mounted) {
    assert_trees_equal(truth, mnt.path(), &CompareOptions::default());
}

/// Mounts `source` into a new empty cache, compares it with `truth`, unmounts.
#[track_caller]
fn mount_and_compare(source: &str, opts: &[&str], truth: &Path) {
    let cache = TempDir::new("imgfs-layers-cache");
    let m = mount_with(cache.path(), source, opts, &[]);
    assert_matches(truth, &m);
    m.umount();
}

/// Writes `bytes` as a blob of the OCI layout `dir`; its digest.
fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let tmp = dir.join("blobs/sha256/.new-blob");
    std::fs::write(&tmp, bytes).unwrap();
    let digest = sha256_file(&tmp);
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::rename(&tmp, dir.join("blobs/sha256").join(hex)).unwrap();
    digest
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// The manifest that `reference` names in the OCI layout `dir`, and its digest.
fn manifest_of(dir: &Path, reference: &str) -> (serde_json::Value, String) {
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
    let manifest =
        serde_json::from_slice(&std::fs::read(blob_path(dir, &digest)).unwrap()).unwrap();
    (manifest, digest)
}

/// A copy of the OCI layout `src` (blobs hard-linked: never modify one in place, write a new
/// file) whose index names only `manifest`, under `reference`.
fn layout_with_manifest(src: &Path, manifest: &serde_json::Value, reference: &str) -> TempDir {
    let copy = TempDir::new("imgfs-layers-layout");
    let out = run(Command::new("cp")
        .arg("-al")
        .arg(src.join("blobs"))
        .arg(src.join("oci-layout"))
        .arg(copy.path()));
    assert!(out.status.success(), "cp -al: {}", text(&out.stderr));
    let bytes = serde_json::to_vec(manifest).unwrap();
    let digest = put_blob(copy.path(), &bytes);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": reference},
        }],
    });
    std::fs::write(
        copy.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    copy
}

/// The digests of the layers of `reference` in the OCI layout `dir`, lowest first.
fn layer_digests(dir: &Path, reference: &str) -> Vec<String> {
    let (manifest, _) = manifest_of(dir, reference);
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Rewrites the gzip header's modification time of the gzip file `path` in place (a new file,
/// renamed over it): the same size and the same decompressed bytes, another digest.
fn retime_gzip(path: &Path) -> Vec<u8> {
    let original = std::fs::read(path).unwrap();
    assert_eq!(
        &original[..2],
        b"\x1f\x8b",
        "{} is not gzip",
        path.display()
    );
    let mut changed = original.clone();
    for b in &mut changed[4..8] {
        *b ^= 0x5a;
    }
    let tmp = path.with_extension("retimed");
    std::fs::write(&tmp, &changed).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    original
}
