//! Lazy mounts of images with an imgfs index beside them: a cold mount fetches what reads
//! need and nothing twice, small files whole, the rest with `--prefetch`, the recorded spans
//! first; prefetched layers become whole copies in the store (and stay lazy when the copy
//! fails its diff id or the disk is full); several cold mounts and runs at once; registries
//! that answer ranges in their own ways.

use super::*;

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

/// `IMGFS_TRACE=FILE`: the server of a lazy mount records each exchange with the registry and
/// each read it answers. What the registry's front sent of the layers, and the file read, are
/// the truth: the ranges traced for the layers' blobs hold exactly the bytes the front sent of
/// them, and the reads traced hold the file's bytes.
#[test]
fn the_trace_holds_what_was_fetched_and_read() {
    let fx = fx();
    let (registry, _) =
        seeded_registry(&fx.path("OCI_GZIP"), "layers", "imgfs-test/layers:1", false);
    push_index(&registry.reference("imgfs-test/layers:1"), &[]);
    let front = Front::start(&registry.addr, &FrontOptions::default());
    let source = format!("docker://{}/imgfs-test/layers:1", front.addr);
    let (layers, _) = layers_of(&fx.path("OCI_GZIP"), "layers");
    let layers: HashSet<String> = layers.into_iter().map(|(d, _)| d).collect();
    let cache = TempDir::new("imgfs-lazy-cache");
    let traces = TempDir::new("imgfs-trace");
    let trace = traces.path().join("trace.jsonl");
    let m = Mount::new(cache.path(), &source)
        .opts(&["--prefetch", "none"])
        .nodaemon()
        .limit(LIMIT)
        .env("IMGFS_TRACE", &trace)
        .done();
    let file = "etc/os-release";
    let want = std::fs::read(fx.path("TRUTH_LAYERS").join(file)).unwrap();
    assert_eq!(std::fs::read(m.path().join(file)).unwrap(), want);
    settle(&front, &layers);
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    for e in &events {
        assert!(
            e["t0"].as_u64().unwrap() <= e["t1"].as_u64().unwrap(),
            "{e}"
        );
        assert!(e["pid"].as_u64().unwrap() > 0, "{e}");
    }
    let of = |kind: &'static str| events.iter().filter(move |e| e["kind"] == kind);
    let short: HashSet<String> = layers
        .iter()
        .map(|d| d.trim_start_matches("sha256:")[..12].to_string())
        .collect();
    let fetched: u64 = of("ranges")
        .filter(|e| short.contains(e["blob"].as_str().unwrap()))
        .map(|e| e["bytes"].as_u64().unwrap())
        .sum();
    assert!(fetched > 0, "no range of a layer traced: {events:?}");
    assert_eq!(fetched, blob_bytes(&front, &layers));
    let read: u64 = of("read").map(|e| e["bytes"].as_u64().unwrap()).sum();
    assert_eq!(read, want.len() as u64, "{events:?}");
}

/// Without a recording, the server of a lazy run guesses what the command's start reads: the
/// program found in the image's `PATH`, the interpreter and libraries its ELF headers name,
/// and theirs. The truth is the image's own dynamic loader: `ldd` of the program, run in the
/// unpacked image (chroot), every path resolved there; the guess must name the same files.
/// It fetches them whole from the server's start, before any read: here the run fails before
/// its command starts (its working directory is a file), yet every byte of those files is in
/// the cache afterwards, so that reading them all through a mount of that cache fetches
/// nothing, and they equal the unpacked image's.
#[test]
fn a_run_fetches_its_program_and_libraries_at_once() {
    let img = lazy_image("OCI_GZIP", "layers", "imgfs-test/layers:1");
    let truth = fx().path("TRUTH_LAYERS");
    let cache = TempDir::new("imgfs-lazy-cache");
    let traces = TempDir::new("imgfs-trace");
    let trace = traces.path().join("trace.jsonl");
    let out = run_within(
        imgfs_nodaemon()
            .env("IMGFS_TRACE", &trace)
            // The server stays a while after the failed run: the guess ends on its own.
            .args(["run", "--linger", "10", "--workdir", "/etc/passwd"])
            .args(["--entrypoint", "", "--cache-dir"])
            .arg(cache.path())
            .arg(&img.source)
            .args(["--", "python3", "-c", "pass"]),
        LIMIT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("working directory"), "{stderr}");
    let events = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    };
    let start = Instant::now();
    while !events().iter().any(|e| e["kind"] == "guess") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the guess did not end: {:?}",
            events()
                .iter()
                .map(|e| format!("{} {} {} {}", e["kind"], e["pid"], e["t0"], e["t1"]))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    settle(&img.front, &img.layers);
    let events = events();
    let guess = events.iter().find(|e| e["kind"] == "guess").unwrap();
    let guessed: Vec<String> = guess["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert!(
        events.iter().all(|e| e["kind"] != "read"),
        "the command read: {events:?}"
    );
    // The truth: the program and what the image's loader loads for it, resolved in the image.
    let in_image = |args: &[&str]| {
        let out = run_within(Command::new("chroot").arg(&truth).args(args), LIMIT);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let resolved = |paths: &[String]| -> HashSet<String> {
        let script = r#"for f in "$@"; do readlink -f "$f"; done"#;
        let args: Vec<&str> = ["/bin/sh", "-c", script, "-"]
            .into_iter()
            .chain(paths.iter().map(String::as_str))
            .collect();
        in_image(&args).lines().map(str::to_string).collect()
    };
    let mut loaded: Vec<String> = in_image(&["/usr/bin/ldd", "/usr/bin/python3"])
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(str::to_string)
        .collect();
    loaded.push("/usr/bin/python3".into());
    let want = resolved(&loaded);
    assert!(want.len() >= 4, "ldd named {loaded:?}");
    assert_eq!(resolved(&guessed), want, "guessed {guessed:?}");
    // Every byte of them is here: reading them all fetches nothing more.
    let before = blob_bytes(&img.front, &img.layers);
    assert!(before > 0, "the guess fetched nothing");
    let (m, _) = mount(cache.path(), &img.source, &["--prefetch", "none"]);
    for path in &want {
        let inside = path.trim_start_matches('/');
        assert_eq!(
            std::fs::read(m.path().join(inside)).unwrap(),
            std::fs::read(truth.join(inside)).unwrap(),
            "{path}"
        );
    }
    assert_eq!(
        blob_bytes(&img.front, &img.layers),
        before,
        "reading the guessed files fetched what the guess had not"
    );
}
