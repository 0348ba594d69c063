//! Images from registries: by tag and digest, multi-platform, htpasswd and token
//! authentication, tokens that expire, layers shared between images in one cache, `imgfs run`
//! of a registry's image and a layout's beside `docker run`; and the test registries checked
//! with skopeo alone.

use super::*;

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
