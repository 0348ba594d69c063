//! Images read layer by layer without a daemon: OCI layouts (gzip, zstd, zstd:chunked,
//! uncompressed), oci-archive and docker-archive files, multi-platform indexes and registries
//! (plain, htpasswd, token authentication). Each mount is compared, entry by entry and on
//! every property, with umoci's unpacking of the same image (tests/fixtures/make-layered.sh),
//! and for the images docker built also with `docker export`. dockerd is out of reach of imgfs
//! in all of them (DOCKER_HOST points nowhere).

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

// ---------------------------------------------------------------------------------------------
// The truth itself.

/// umoci's unpacking (the truth of every test here) agrees with `docker export` of the images
/// docker built: the layers are merged the same way.
#[test]
fn umoci_truth_matches_docker_export() {
    let _docker = require_docker();
    let fx = fx();
    for (image, truth) in [
        (fx.var("LAYERS_IMAGE"), fx.path("TRUTH_LAYERS")),
        (fx.var("APP_IMAGE"), fx.path("TRUTH_APP")),
    ] {
        let diffs = differences_from_docker_export(image, &truth);
        assert!(
            diffs.is_empty(),
            "{image}: umoci's unpacking differs from docker export:\n  {}",
            diffs.join("\n  ")
        );
    }
    // The layers hold what the tests rely on.
    let whiteouts = std::fs::read_to_string(fx.path("WHITEOUTS")).unwrap();
    for entry in [
        "data/del/.wh.gone",
        "data/.wh.deldir",
        "data/opq/.wh..wh..opq",
        "data/f2d/.wh..wh..opq",
        "var/log/.wh..wh..opq",
    ] {
        assert!(
            whiteouts.lines().any(|l| l.ends_with(&format!(" {entry}"))),
            "{entry} not in the layers: {whiteouts}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// OCI layouts.

#[test]
fn oci_layout_gzip_matches_umoci_and_docker_export() {
    let _docker = require_docker();
    let fx = fx();
    let cache = TempDir::new("imgfs-layers-cache");
    let m = mount(cache.path(), &oci(&fx.path("OCI_GZIP"), "layers"));
    assert_matches(&fx.path("TRUTH_LAYERS"), &m);
    assert_matches_docker_export(fx.var("LAYERS_IMAGE"), m.path());
    m.umount();
    let m = mount(cache.path(), &oci(&fx.path("OCI_GZIP"), "layers-app"));
    assert_matches(&fx.path("TRUTH_APP"), &m);
    m.umount();
}

#[test]
fn oci_layout_zstd_matches_umoci() {
    let fx = fx();
    mount_and_compare(
        &oci(&fx.path("OCI_ZSTD"), "layers"),
        &[],
        &fx.path("TRUTH_LAYERS"),
    );
}

/// skopeo 1.9.3's zstd:chunked: zstd frames per file and a table of contents in a skippable
/// frame, annotated `io.containers.zstd-chunked.manifest-checksum` / `-position`.
#[test]
fn oci_layout_zstd_chunked_matches_umoci() {
    let fx = fx();
    mount_and_compare(
        &oci(&fx.path("OCI_ZSTD_CHUNKED"), "layers"),
        &[],
        &fx.path("TRUTH_LAYERS"),
    );
    mount_and_compare(
        &oci(&fx.path("OCI_ZSTD_CHUNKED"), "layers-app"),
        &[],
        &fx.path("TRUTH_APP"),
    );
}

#[test]
fn oci_layout_uncompressed_matches_umoci() {
    let fx = fx();
    mount_and_compare(
        &oci(&fx.path("OCI_PLAIN"), "layers"),
        &[],
        &fx.path("TRUTH_LAYERS"),
    );
}

/// Without `:REF` a layout must hold one image; a ref it lacks is named in the error.
#[test]
fn oci_layout_reference_is_required_when_ambiguous() {
    let fx = fx();
    let cache = TempDir::new("imgfs-layers-cache");
    mount_fails(
        cache.path(),
        &oci(&fx.path("OCI_GZIP"), ""),
        &[],
        &[],
        &["imgfs:"],
    );
    mount_fails(
        cache.path(),
        &oci(&fx.path("OCI_GZIP"), "absent"),
        &[],
        &[],
        &["absent"],
    );
    assert_cache_empty(cache.path());
    // A layout with a single ref needs none.
    let (manifest, _) = manifest_of(&fx.path("OCI_GZIP"), "layers-app");
    let single = layout_with_manifest(&fx.path("OCI_GZIP"), &manifest, "only");
    mount_and_compare(&oci(single.path(), ""), &[], &fx.path("TRUTH_APP"));
}

// ---------------------------------------------------------------------------------------------
// Archive files.

#[test]
fn oci_archive_matches_umoci() {
    let fx = fx();
    let archive = fx.path("OCI_ARCHIVE");
    mount_and_compare(
        &format!("oci-archive:{}", archive.display()),
        &[],
        &fx.path("TRUTH_LAYERS"),
    );
    mount_and_compare(
        &format!("oci-archive:{}:layers", archive.display()),
        &[],
        &fx.path("TRUTH_LAYERS"),
    );
}

#[test]
fn docker_archive_of_one_image_matches_umoci_and_docker_export() {
    let _docker = require_docker();
    let fx = fx();
    let cache = TempDir::new("imgfs-layers-cache");
    let archive = fx.path("DOCKER_ARCHIVE");
    let m = mount(
        cache.path(),
        &format!("docker-archive:{}", archive.display()),
    );
    assert_matches(&fx.path("TRUTH_LAYERS"), &m);
    assert_matches_docker_export(fx.var("LAYERS_IMAGE"), m.path());
    m.umount();
}

/// `docker save` of two images: NAME:TAG picks one; without it the choice is refused.
#[test]
fn docker_archive_of_two_images_by_name_and_tag() {
    let fx = fx();
    let archive = fx.path("DOCKER_ARCHIVE_BOTH");
    for (name, truth) in [
        (fx.var("APP_IMAGE"), fx.path("TRUTH_APP")),
        (fx.var("LAYERS_IMAGE"), fx.path("TRUTH_LAYERS")),
    ] {
        mount_and_compare(
            &format!("docker-archive:{}:{name}", archive.display()),
            &[],
            &truth,
        );
    }
    let cache = TempDir::new("imgfs-layers-cache");
    mount_fails(
        cache.path(),
        &format!("docker-archive:{}", archive.display()),
        &[],
        &[],
        &["imgfs:"],
    );
    mount_fails(
        cache.path(),
        &format!("docker-archive:{}:imgfs-test/absent:1", archive.display()),
        &[],
        &[],
        &["imgfs-test/absent:1"],
    );
    assert_cache_empty(cache.path());
}

// ---------------------------------------------------------------------------------------------
// Multi-platform indexes.

/// An index of linux/amd64 (layers:1) and linux/arm64 (a small umoci-made image): amd64 by
/// default on this machine, arm64 with --platform; both when the ref names two manifests and
/// when it names a nested image index.
#[test]
fn multi_platform_index_picks_the_platform() {
    let fx = fx();
    let reference = fx.var("MULTI_REF");
    for layout in [fx.path("MULTI_FLAT"), fx.path("MULTI_NESTED")] {
        mount_and_compare(&oci(&layout, reference), &[], &fx.path("TRUTH_LAYERS"));
        mount_and_compare(
            &oci(&layout, reference),
            &["--platform", "linux/arm64"],
            &fx.path("TRUTH_ARM64"),
        );
        mount_and_compare(
            &oci(&layout, reference),
            &["--platform", "linux/amd64"],
            &fx.path("TRUTH_LAYERS"),
        );
        let cache = TempDir::new("imgfs-layers-cache");
        mount_fails(
            cache.path(),
            &oci(&layout, reference),
            &["--platform", "linux/s390x"],
            &[],
            &["linux/s390x"],
        );
        assert_cache_empty(cache.path());
    }
    // The nested index is the layout's only image: no ref needed.
    mount_and_compare(
        &oci(&fx.path("MULTI_NESTED"), ""),
        &["--platform", "linux/arm64"],
        &fx.path("TRUTH_ARM64"),
    );
}

// ---------------------------------------------------------------------------------------------
// Registries.

#[test]
fn registry_image_matches_umoci_by_tag_and_digest() {
    let fx = fx();
    let (registry, source) = layers_registry(RegistryConfig::default());
    mount_and_compare(&source, &[], &fx.path("TRUTH_LAYERS"));
    let (_, digest) = manifest_of(&fx.path("OCI_GZIP"), "layers");
    mount_and_compare(
        &registry.reference(&format!("imgfs-test/layers@{digest}")),
        &[],
        &fx.path("TRUTH_LAYERS"),
    );
    // zstd layers from a registry too.
    let zstd = registry.push(
        &oci(&fx.path("OCI_ZSTD_CHUNKED"), "layers-app"),
        "imgfs-test/layers-app:chunked",
    );
    mount_and_compare(&zstd, &[], &fx.path("TRUTH_APP"));
}

#[test]
fn registry_multi_platform_index_picks_the_platform() {
    let fx = fx();
    let registry = Registry::start();
    let source = registry.push(
        &oci(&fx.path("MULTI_NESTED"), fx.var("MULTI_REF")),
        "imgfs-test/multi:1",
    );
    mount_and_compare(&source, &[], &fx.path("TRUTH_LAYERS"));
    mount_and_compare(
        &source,
        &["--platform", "linux/arm64"],
        &fx.path("TRUTH_ARM64"),
    );
}

/// A registry with htpasswd: credentials from ~/.docker/config.json (HOME), from
/// $DOCKER_CONFIG/config.json and from $REGISTRY_AUTH_FILE; none, or wrong ones, give one line.
#[test]
fn registry_with_basic_auth_takes_credentials_from_config_files() {
    let fx = fx();
    let (registry, source) = layers_registry(RegistryConfig {
        htpasswd: Some(("imgfs".into(), "s3cret".into())),
        ..RegistryConfig::default()
    });
    let truth = fx.path("TRUTH_LAYERS");
    let files = TempDir::new("imgfs-layers-creds");
    let empty_home = files.path().join("empty-home");
    std::fs::create_dir_all(&empty_home).unwrap();

    // No credentials anywhere.
    let cache = TempDir::new("imgfs-layers-cache");
    let line = mount_fails(
        cache.path(),
        &source,
        &[],
        &[("HOME", empty_home.as_os_str())],
        &[],
    );
    assert_mentions_any(
        &line,
        &["401", "unauthorized", "authentication", "credentials"],
    );
    assert_cache_empty(cache.path());

    let home = files.path().join("home");
    write_auth_file(
        &home.join(".docker/config.json"),
        &registry.addr,
        "imgfs",
        "s3cret",
    );
    let docker_config = files.path().join("docker-config");
    write_auth_file(
        &docker_config.join("config.json"),
        &registry.addr,
        "imgfs",
        "s3cret",
    );
    let auth_file = files.path().join("auth.json");
    write_auth_file(&auth_file, &registry.addr, "imgfs", "s3cret");
    let bad_home = files.path().join("bad-home");
    write_auth_file(
        &bad_home.join(".docker/config.json"),
        &registry.addr,
        "imgfs",
        "wrong",
    );

    for env in [
        vec![("HOME", home.as_os_str())],
        vec![
            ("HOME", empty_home.as_os_str()),
            ("DOCKER_CONFIG", docker_config.as_os_str()),
        ],
        vec![
            ("HOME", empty_home.as_os_str()),
            ("REGISTRY_AUTH_FILE", auth_file.as_os_str()),
        ],
    ] {
        let cache = TempDir::new("imgfs-layers-cache");
        let m = mount_with(cache.path(), &source, &[], &env);
        assert_matches(&truth, &m);
        m.umount();
    }

    let cache = TempDir::new("imgfs-layers-cache");
    let line = mount_fails(
        cache.path(),
        &source,
        &[],
        &[("HOME", bad_home.as_os_str())],
        &[],
    );
    assert_mentions_any(
        &line,
        &["401", "unauthorized", "authentication", "credentials"],
    );
    assert_cache_empty(cache.path());
}

/// Token authentication (a Bearer challenge, a token from the realm for the repository's
/// scope), through tests/fixtures/registry-front.py; wrong credentials give one line.
#[test]
fn registry_token_authentication() {
    let fx = fx();
    let (registry, _) = layers_registry(RegistryConfig::default());
    let front = Front::start(
        &registry.addr,
        &FrontOptions {
            credentials: Some(("imgfs".into(), "t0ken-pass".into())),
            ..Default::default()
        },
    );
    let source = format!("docker://{}/imgfs-test/layers:1", front.addr);
    let files = TempDir::new("imgfs-layers-creds");
    let good = files.path().join("good.json");
    write_auth_file(&good, &front.addr, "imgfs", "t0ken-pass");
    let bad = files.path().join("bad.json");
    write_auth_file(&bad, &front.addr, "imgfs", "nope");

    let cache = TempDir::new("imgfs-layers-cache");
    let m = mount_with(
        cache.path(),
        &source,
        &[],
        &[("REGISTRY_AUTH_FILE", good.as_os_str())],
    );
    assert_matches(&fx.path("TRUTH_LAYERS"), &m);
    m.umount();
    assert!(front.count("token ") >= 1, "{:?}", front.log_lines());
    assert!(
        front
            .log_lines()
            .iter()
            .any(|l| l.starts_with("token ") && l.contains("repository:imgfs-test/layers:pull")),
        "no token for the repository's pull scope: {:?}",
        front.log_lines()
    );

    let cache = TempDir::new("imgfs-layers-cache");
    let line = mount_fails(
        cache.path(),
        &source,
        &[],
        &[("REGISTRY_AUTH_FILE", bad.as_os_str())],
        &[],
    );
    assert_mentions_any(
        &line,
        &["401", "unauthorized", "authentication", "credentials"],
    );
    assert_cache_empty(cache.path());
}

/// A token that expires part-way through a pull (valid 2 s, and the manifest takes 3 s to
/// arrive): before the layers, a new token is fetched (on its expiry, or on the 401 the stale
/// one gets), and the mount succeeds.
#[test]
fn registry_token_expiry_is_met_by_a_new_token() {
    let fx = fx();
    let (registry, _) = layers_registry(RegistryConfig::default());
    let front = Front::start(
        &registry.addr,
        &FrontOptions {
            credentials: Some(("imgfs".into(), "t0ken-pass".into())),
            token_ttl: Some(2.0),
            manifest_delay_ms: 3000,
            ..Default::default()
        },
    );
    let files = TempDir::new("imgfs-layers-creds");
    let auth = files.path().join("auth.json");
    write_auth_file(&auth, &front.addr, "imgfs", "t0ken-pass");
    let cache = TempDir::new("imgfs-layers-cache");
    let m = mount_with(
        cache.path(),
        &format!("docker://{}/imgfs-test/layers:1", front.addr),
        &[],
        &[("REGISTRY_AUTH_FILE", auth.as_os_str())],
    );
    assert_matches(&fx.path("TRUTH_LAYERS"), &m);
    m.umount();
    assert!(
        front.count("token ") >= 2,
        "the token expired, yet no new one was asked for: {:?}",
        front.log_lines()
    );
}

/// Mounts `base` (layers:1), then `app` (layers-app:1, the same layers and one more) into one
/// cache: the second adds about its own layer only. With `downloads`, the first must have put
/// its layers in the cache (a registry's layers are nowhere else).
#[track_caller]
fn assert_second_image_adds_its_own_layer(base: &str, app: &str, downloads: bool) {
    let fx = fx();
    let own: u64 = fx.var("APP_OWN_LAYER_BYTES").parse().unwrap();
    let cache = TempDir::new("imgfs-layers-cache");
    let m = mount(cache.path(), base);
    assert_matches(&fx.path("TRUTH_LAYERS"), &m);
    m.umount();
    let first = disk_usage(cache.path());
    let m = mount(cache.path(), app);
    assert_matches(&fx.path("TRUTH_APP"), &m);
    m.umount();
    let grown = disk_usage(cache.path()).saturating_sub(first);
    // The app's layer is 1 MiB of random bytes (it does not compress); allow it three times
    // over (compressed, uncompressed, an index) plus 4 MiB for the image's own records.
    let allowed = 3 * own + 4 * 1024 * 1024;
    assert!(
        grown <= allowed,
        "the cache grew by {grown} bytes for the app image (first image: {first}, own layer: \
         {own}, allowed {allowed}): lower layers were not shared"
    );
    if downloads {
        assert!(
            first > 20 * own,
            "the first image took only {first} bytes of cache"
        );
    }
}

/// Layer sharing between two images of a registry.
#[test]
fn layers_are_shared_between_registry_images_in_one_cache() {
    let fx = fx();
    let registry = Registry::start();
    let base = registry.push(&oci(&fx.path("OCI_GZIP"), "layers"), "imgfs-test/layers:1");
    let app = registry.push(
        &oci(&fx.path("OCI_GZIP"), "layers-app"),
        "imgfs-test/layers-app:1",
    );
    assert_second_image_adds_its_own_layer(&base, &app, true);
}

/// Layer sharing between two images of an OCI layout.
#[test]
fn layers_are_shared_between_layout_images_in_one_cache() {
    let fx = fx();
    assert_second_image_adds_its_own_layer(
        &oci(&fx.path("OCI_GZIP"), "layers"),
        &oci(&fx.path("OCI_GZIP"), "layers-app"),
        false,
    );
}

// ---------------------------------------------------------------------------------------------
// imgfs run.

/// `imgfs run SOURCE [-- ARGS]` (SOURCE: layers:1) prints what `docker run` of the image
/// prints: its Entrypoint, Cmd, Env, WorkingDir and User applied; ARGS replace Cmd only.
#[track_caller]
fn assert_runs_like_docker_run(source: &str) {
    let fx = fx();
    let _docker = require_docker();
    let image = fx.var("LAYERS_IMAGE");
    let cache = TempDir::new("imgfs-layers-cache");
    for args in [&[][..], &["one", "two words"][..]] {
        let docker = run(Command::new("docker")
            .args(["run", "--rm", image])
            .args(args));
        assert!(
            docker.status.success(),
            "docker run: {}",
            text(&docker.stderr)
        );
        let expected = text(&docker.stdout);
        if args.is_empty() {
            assert!(expected.starts_with("args: default args\n"), "{expected}");
        }
        assert!(expected.contains("user: 1500:1500 runner"), "{expected}");
        let mut cmd = imgfs_nodaemon();
        cmd.arg("run")
            .arg("--cache-dir")
            .arg(cache.path())
            .args(["--linger", "0"])
            .arg(source);
        if !args.is_empty() {
            cmd.arg("--").args(args);
        }
        let out = run_within(&mut cmd, MOUNT_LIMIT);
        assert!(
            out.status.success(),
            "imgfs run {source}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), expected, "imgfs run {source} {args:?}");
    }
}

#[test]
fn run_of_a_registry_image_applies_its_config_like_docker_run() {
    let (_registry, source) = layers_registry(RegistryConfig::default());
    assert_runs_like_docker_run(&source);
}

#[test]
fn run_of_a_layout_image_applies_its_config_like_docker_run() {
    assert_runs_like_docker_run(&oci(&fx().path("OCI_GZIP"), "layers"));
}

// ---------------------------------------------------------------------------------------------
// Failures: one line, exit 1, nothing half-made in the cache, and the next try works.

#[test]
fn unknown_tag_fails_cleanly_and_the_next_mount_works() {
    let fx = fx();
    let (registry, good) = layers_registry(RegistryConfig::default());
    let cache = TempDir::new("imgfs-layers-cache");
    let absent = registry.reference("imgfs-test/layers:absent");
    mount_fails(
        cache.path(),
        &absent,
        &[],
        &[],
        &["imgfs-test/layers", "absent"],
    );
    assert_cache_empty(cache.path());
    let missing_repo = registry.reference("imgfs-test/nothing-here:1");
    mount_fails(cache.path(), &missing_repo, &[], &[], &["nothing-here"]);
    assert_cache_empty(cache.path());
    let m = mount(cache.path(), &good);
    assert_matches(&fx.path("TRUTH_LAYERS"), &m);
    m.umount();
}

/// A tag that moves in the registry: a mount takes what the cache has under it, as `docker
/// run` takes a local image, until `--pull` asks the registry again.
#[test]
fn a_moved_tag_is_seen_with_pull() {
    let fx = fx();
    let registry = Registry::start();
    let tag = registry.push(&oci(&fx.path("OCI_GZIP"), "layers"), "imgfs-test/moving:1");
    let cache = TempDir::new("imgfs-layers-cache");
    mount(cache.path(), &tag).umount();
    registry.push(
        &oci(&fx.path("OCI_GZIP"), "layers-app"),
        "imgfs-test/moving:1",
    );
    let m = mount(cache.path(), &tag);
    assert_matches(&fx.path("TRUTH_LAYERS"), &m);
    m.umount();
    let m = mount_with(cache.path(), &tag, &["--pull"], &[]);
    assert_matches(&fx.path("TRUTH_APP"), &m);
    m.umount();
    // And from then on, without --pull, the tag names the new image.
    let m = mount(cache.path(), &tag);
    assert_matches(&fx.path("TRUTH_APP"), &m);
    m.umount();
}

/// A registry that cannot be reached: an image mounted from it before still mounts from the
/// cache (tag and digest alike, equal to the truth), one never mounted fails in one line; a
/// digest reference needs no registry at all once cached.
#[test]
fn cached_registry_images_mount_while_the_registry_is_down() {
    let fx = fx();
    let (mut registry, tagged) = layers_registry(RegistryConfig::default());
    let (_, digest) = manifest_of(&fx.path("OCI_GZIP"), "layers");
    let pinned = registry.reference(&format!("imgfs-test/layers@{digest}"));
    let never = registry.reference("imgfs-test/layers:never-mounted");
    let cache = TempDir::new("imgfs-layers-cache");
    mount(cache.path(), &tagged).umount();
    mount(cache.path(), &pinned).umount();
    registry.kill();
    for source in [&tagged, &pinned] {
        let m = mount(cache.path(), source);
        assert_matches(&fx.path("TRUTH_LAYERS"), &m);
        m.umount();
    }
    // Asked to look again, and the registry gone: the cached image, with a warning.
    let dir = TempDir::new("imgfs-layers-mnt");
    let out = run(imgfs_nodaemon()
        .args(["mount", "--pull", "--cache-dir"])
        .arg(cache.path())
        .arg(&tagged)
        .arg(dir.path()));
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "--pull with the registry down: {stderr}"
    );
    assert!(stderr.contains("cannot connect"), "no warning: {stderr}");
    assert_trees_equal(
        &fx.path("TRUTH_LAYERS"),
        dir.path(),
        &CompareOptions::default(),
    );
    run(imgfs_nodaemon().arg("umount").arg(dir.path()));
    mount_fails(cache.path(), &never, &[], &[], &["cannot connect"]);
    // Another platform was never resolved: not taken from the cache for this one.
    mount_fails(
        cache.path(),
        &pinned,
        &["--platform", "linux/arm64"],
        &[],
        &["cannot connect"],
    );
}

/// The layer a wrong-digest test damages (the COPY layer of /data/copied: small, so any
/// reading strategy fetches all of it), and the first 12 hex digits of its digest.
fn victim_layer(layout: &Path) -> (String, String) {
    let victim = layer_digests(layout, "layers")[3].clone();
    let short = victim["sha256:".len().."sha256:".len() + 12].to_string();
    (victim, short)
}

/// A registry's layer whose bytes do not hash to its digest (the gzip header's time changed:
/// the same size, the same files inside) is refused by digest; once the blob is right again
/// the same cache mounts the image.
#[test]
fn registry_blob_with_a_wrong_digest_is_refused() {
    let fx = fx();
    let layout = fx.path("OCI_GZIP");
    let (victim, short) = victim_layer(&layout);
    let (registry, source) = layers_registry(RegistryConfig::default());
    let data = registry.blob_data(&victim);
    require(
        data.exists(),
        &format!("blob {} in the registry", data.display()),
    );
    let original = retime_gzip(&data);
    let cache = TempDir::new("imgfs-layers-cache");
    let line = mount_fails(cache.path(), &source, &[], &[], &[&short]);
    assert_mentions_any(&line, &["digest", "sha256"]);
    std::fs::write(&data, &original).unwrap();
    let m = mount(cache.path(), &source);
    assert_matches(&fx.path("TRUTH_LAYERS"), &m);
    m.umount();
}

/// The same in an OCI layout.
#[test]
fn layout_blob_with_a_wrong_digest_is_refused() {
    let fx = fx();
    let layout = fx.path("OCI_GZIP");
    let (victim, short) = victim_layer(&layout);
    let (manifest, _) = manifest_of(&layout, "layers");
    let copy = layout_with_manifest(&layout, &manifest, "layers");
    let blob = blob_path(copy.path(), &victim);
    // A file of its own: the copy's blobs are hard links to the fixture's.
    let bytes = std::fs::read(&blob).unwrap();
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    retime_gzip(&blob);
    let cache = TempDir::new("imgfs-layers-cache");
    let source = oci(copy.path(), "layers");
    let line = mount_fails(cache.path(), &source, &[], &[], &[&short]);
    assert_mentions_any(&line, &["digest", "sha256"]);
    std::fs::write(&blob, &bytes).unwrap();
    let m = mount(cache.path(), &source);
    assert_matches(&fx.path("TRUTH_LAYERS"), &m);
    m.umount();
}

/// The registry dies part-way through a layer (the front exits after 256 KiB of blobs): the
/// mount fails with one line within the time limit, and the same cache later mounts the image
/// from a live registry.
#[test]
fn registry_dying_mid_blob_fails_cleanly() {
    let fx = fx();
    let (registry, direct) = layers_registry(RegistryConfig::default());
    let mut front = Front::start(
        &registry.addr,
        &FrontOptions {
            rate: 4 * 1024 * 1024,
            die_after: 256 * 1024,
            ..Default::default()
        },
    );
    let cache = TempDir::new("imgfs-layers-cache");
    let through_front = format!("docker://{}/imgfs-test/layers:1", front.addr);
    mount_fails(cache.path(), &through_front, &[], &[], &[]);
    assert!(
        !front.is_running() && front.count("die ") == 1,
        "the front did not die mid-blob: {:?}",
        front.log_lines()
    );
    let m = mount(cache.path(), &direct);
    assert_matches(&fx.path("TRUTH_LAYERS"), &m);
    m.umount();
}

/// A layer with a media type imgfs does not know is refused by name.
#[test]
fn unknown_layer_media_type_is_refused() {
    let fx = fx();
    let layout = fx.path("OCI_GZIP");
    let (mut manifest, _) = manifest_of(&layout, "layers");
    let odd = "application/vnd.example.unknown.layer.v1+tar";
    manifest["layers"][1]["mediaType"] = serde_json::Value::from(odd);
    let copy = layout_with_manifest(&layout, &manifest, "layers");
    let cache = TempDir::new("imgfs-layers-cache");
    mount_fails(cache.path(), &oci(copy.path(), "layers"), &[], &[], &[odd]);
    assert_cache_empty(cache.path());
}

// ---------------------------------------------------------------------------------------------
// The test registries themselves, checked with skopeo (no imgfs involved).

/// The registry helpers serve what skopeo can pull: plain, htpasswd (and 401 without
/// credentials), the token front (and its refusals), and the front that dies mid-blob.
#[test]
fn test_registries_serve_skopeo() {
    let fx = fx();
    let pull = |source: &str, extra: &[&str]| -> Output {
        let dest = TempDir::new("imgfs-layers-pulled");
        run(Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .args(extra)
            .arg(source)
            .arg(format!("oci:{}:x", dest.path().display())))
    };
    let ok = |out: Output, what: &str| {
        assert!(out.status.success(), "{what}: {}", text(&out.stderr));
    };
    let (registry, source) = layers_registry(RegistryConfig::default());
    ok(pull(&source, &[]), "plain registry");
    let blob = registry.blob_data(&layer_digests(&fx.path("OCI_GZIP"), "layers")[0]);
    assert!(blob.is_file(), "{}", blob.display());

    let basic = Registry::start_with_htpasswd("imgfs", "s3cret");
    let source = basic.push(&oci(&fx.path("OCI_GZIP"), "layers-app"), "imgfs-test/app:1");
    ok(pull(&source, &["--src-creds", "imgfs:s3cret"]), "htpasswd");
    assert!(
        !pull(&source, &["--src-creds", "imgfs:wrong"])
            .status
            .success()
    );
    assert!(!pull(&source, &[]).status.success());

    let front = Front::start(
        &registry.addr,
        &FrontOptions {
            credentials: Some(("imgfs".into(), "t0ken-pass".into())),
            ..Default::default()
        },
    );
    let source = format!("docker://{}/imgfs-test/layers:1", front.addr);
    ok(
        pull(&source, &["--src-creds", "imgfs:t0ken-pass"]),
        "token front",
    );
    assert!(front.count("401 ") >= 1 && front.count("token ") >= 1);
    assert!(
        !pull(&source, &["--src-creds", "imgfs:nope"])
            .status
            .success()
    );
    assert!(front.count("token-refused") >= 1);

    let mut dying = Front::start(
        &registry.addr,
        &FrontOptions {
            die_after: 256 * 1024,
            ..Default::default()
        },
    );
    let source = format!("docker://{}/imgfs-test/layers:1", dying.addr);
    assert!(!pull(&source, &[]).status.success());
    assert!(!dying.is_running() && dying.count("die ") == 1);
}
