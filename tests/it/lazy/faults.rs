//! Lazy mounts when the registry fails them: gone after the mount, a span, a window or the
//! index damaged in its storage, an index of an older format beside the image; and when
//! their server is killed again and again in the middle of fetches.

use super::*;

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

/// A lazy mount's server killed outright at random instants (ten times, each while
/// fetches from a slow registry and writes of spans to the store are under way) while a
/// program reads every file: every read returns umoci's bytes, none fails; and after the
/// kills, with the page cache dropped, what the store holds reads the same again (no span
/// marked present whose bytes are not there and right).
#[test]
fn a_lazy_server_killed_again_and_again_serves_only_the_truth() {
    let layout = fx().path("OCI_GZIP");
    let (registry, _) = seeded_registry(&layout, "layers", "imgfs-test/layers:1", true);
    let front = Front::start(
        &registry.addr,
        &FrontOptions {
            rate: 16 << 20,
            ..FrontOptions::default()
        },
    );
    let source = format!("docker://{}/imgfs-test/layers:1", front.addr);
    let cache = TempDir::new("imgfs-lazy-cache");
    let (m, _) = mount(cache.path(), &source, &["--prefetch", "none"]);
    let truth = fx().path("TRUTH_LAYERS");
    let (root, truth_root) = (m.path().to_path_buf(), truth.clone());
    let reader = std::thread::spawn(move || {
        let mut failures = Vec::new();
        for (f, _) in files_by_size(&truth_root) {
            match std::fs::read(root.join(&f)) {
                Ok(got) if got == std::fs::read(truth_root.join(&f)).unwrap() => {}
                Ok(_) => failures.push(format!("{}: wrong bytes", f.display())),
                Err(e) => failures.push(format!("{}: {e}", f.display())),
            }
        }
        failures
    });
    // Instants from the clock, printed so that a failure can be looked into.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    eprintln!("kill instants from seed {seed}");
    let mut killed = Vec::new();
    while killed.len() < 10 && !reader.is_finished() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 300));
        let server = common::next_server(m.path(), &killed);
        // SAFETY: killing a server this test started.
        assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
        killed.push(server);
    }
    let failures = reader.join().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        killed.len() >= 3,
        "the reads ended after {} kills: the registry was not slow enough",
        killed.len()
    );
    common::next_server(m.path(), &killed);
    drop_caches();
    assert_trees_equal(&truth, m.path(), &CompareOptions::default());
    assert!(
        read_every_file(m.path(), &truth, &Default::default()).is_empty(),
        "a file failed to read after the kills"
    );
}

/// A lazily read image whose shared server cannot start (here the user's runtime directory
/// for shared mounts is open to others, which imgfs refuses): `imgfs run` fails at once with
/// exit status 125 and the reason — a sandbox cannot fetch from its own network namespace, so
/// serving the image itself would only fail reads with EIO after --fetch-timeout.
#[test]
fn a_lazy_run_that_gets_no_server_fails_at_once() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let user = common::test_user();
    let work = TempDir::new("imgfs-lazy-noserver");
    let _ = Command::new("chmod").arg("0777").arg(work.path()).status();
    let runtime = work.path().join("runtime");
    let cache = work.path().join("cache");
    let shared = runtime.join("imgfs/shared");
    for (args, what) in [
        (vec!["mkdir", "-p"], &shared),
        (vec!["mkdir", "-p"], &cache),
        (vec!["chmod", "0700"], &runtime),
        (vec!["chmod", "0777"], &shared),
    ] {
        let out = common::run(common::as_user(user).args(&args).arg(what));
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let start = Instant::now();
    let out = run_within(
        common::as_user(user)
            .arg("env")
            .arg(format!("XDG_RUNTIME_DIR={}", runtime.display()))
            .arg("DOCKER_HOST=unix:///nonexistent")
            .arg(env!("CARGO_BIN_EXE_imgfs"))
            .args(["run", "--user", "0", "--fetch-timeout", "60", "--cache-dir"])
            .arg(&cache)
            .arg(&img.source)
            .args(["--", "true"]),
        LIMIT,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("needs a server outside the sandbox") && err.contains("other users may write"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "the run took {:?}: it waited for reads to time out",
        start.elapsed()
    );
}
