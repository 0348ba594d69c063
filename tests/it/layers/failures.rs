//! Failures: one line, exit 1, nothing half-made in the cache, and the next try works.

use super::*;

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
