//! Images from files: umoci's unpacking (the truth here) against `docker export`, OCI
//! layouts in every compression, oci-archive and docker-archive files, multi-platform
//! indexes.

use super::*;

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
