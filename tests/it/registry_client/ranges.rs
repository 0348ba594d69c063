//! Byte ranges of a blob: from the registry itself, through servers that answer ranges
//! otherwise, through token authentication and expiring storage links, and across dropped
//! connections and wrong answers.

use super::*;

/// Reads `ranges` of `blob` (stored under `digest`) and checks each against its slice.
#[track_caller]
fn check_ranges(registry: &Registry, digest: &str, blob: &[u8], ranges: &[std::ops::Range<u64>]) {
    let got = registry
        .fetch_ranges(&digest_of(digest), blob.len() as u64, ranges)
        .unwrap_or_else(|e| panic!("{ranges:?}: {e}"));
    assert_eq!(got.len(), ranges.len());
    for (g, r) in got.iter().zip(ranges) {
        assert!(
            g[..] == blob[r.start as usize..r.end as usize],
            "{r:?} differs"
        );
    }
}

/// Ranges spread over a blob of `size` bytes: the first and the last byte, and some between.
fn spread(size: u64) -> Vec<std::ops::Range<u64>> {
    vec![
        0..1,
        100..4196,
        (1 << 20)..(1 << 20) + 7,
        size / 2..size / 2 + 65_536,
        size - 5..size,
    ]
}

#[test]
fn reads_byte_ranges_of_a_blob() {
    let work = TempDir::new("imgfs-registry-ranges");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    let opts = options(auth_file(work.path(), &reg.addr, None));
    let registry = Registry::connect_repository(&format!("{}/{REPO}", reg.addr), &opts).unwrap();
    assert_eq!(registry.reference().repository, REPO);
    let (digest, blob) = &fixture.layers[1];
    let size = blob.len() as u64;
    check_ranges(&registry, digest, blob, &[10..20]);
    check_ranges(&registry, digest, blob, &[0..1]);
    check_ranges(&registry, digest, blob, &[size - 1..size]);
    check_ranges(&registry, digest, blob, &[size - 100_000..size]);
    check_ranges(&registry, digest, blob, &spread(size));
    // More ranges than one request asks for.
    let many: Vec<_> = (0..60u64)
        .map(|i| i * 500_000..i * 500_000 + 100 + i)
        .collect();
    check_ranges(&registry, digest, blob, &many);
    assert!(
        reg.log().contains("\" 206 "),
        "no partial answers in the registry's log"
    );
    // A small blob, whole.
    let (small_digest, small) = &fixture.layers[0];
    let s = small.len() as u64;
    check_ranges(&registry, small_digest, small, &[0..s]);
    // What cannot be asked.
    let d = digest_of(digest);
    for (bad, why) in [
        (vec![0..size + 1], "goes past the blob's end"),
        (vec![5..5], "is empty"),
        (vec![10..20, 0..5], "overlaps or precedes"),
    ] {
        let e = registry
            .fetch_ranges(&d, size, &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("docker://{}/{REPO}: blob {digest}: ", reg.addr))
                && e.contains(why),
            "{e}"
        );
    }
    // A size larger than the blob's: the registry refuses the range past its end.
    let past = registry
        .fetch_ranges(&d, size + 100, &[size + 10..size + 20])
        .unwrap_err()
        .to_string();
    assert!(past.contains("416"), "{past}");
    println!("{past}");
}

/// A front answering ranges in `mode` (and optionally redirecting to expiring storage links)
/// in front of a registry holding the fixture; a client for it.
fn ranges_front(
    reg: &RealRegistry,
    work: &Path,
    ranges: Option<&str>,
    storage: bool,
) -> (Front, Registry) {
    let front = Front::start(
        &reg.addr,
        &FrontOptions {
            ranges: ranges.map(str::to_string),
            storage,
            expired_links: u32::from(storage),
            ..FrontOptions::default()
        },
    );
    let opts = options(auth_file(work, &front.addr, None));
    let registry = Registry::connect_repository(&format!("{}/{REPO}", front.addr), &opts).unwrap();
    (front, registry)
}

#[test]
fn byte_ranges_from_servers_that_answer_otherwise() {
    let work = TempDir::new("imgfs-registry-ranges-odd");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    let (digest, blob) = &fixture.layers[1];
    let size = blob.len() as u64;
    let ranges = spread(size);
    let lines = |front: &Front, prefix: &str| -> Vec<String> {
        front
            .log_lines()
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .collect()
    };

    // Range ignored: the whole blob, read as far as the last range; the registry is then
    // asked once for everything.
    let (front, registry) = ranges_front(&reg, work.path(), Some("ignore"), false);
    check_ranges(&registry, digest, blob, &ranges);
    check_ranges(&registry, digest, blob, &[0..10, 20..30]);
    let ignored = lines(&front, "ranges ignore ");
    assert_eq!(ignored.len(), 2, "{ignored:?}");
    assert!(ignored[1].ends_with(" bytes=0-29"), "{ignored:?}");

    // Several ranges refused: one request per range, from then on.
    let (front, registry) = ranges_front(&reg, work.path(), Some("single-only"), false);
    check_ranges(&registry, digest, blob, &ranges);
    check_ranges(&registry, digest, blob, &[0..10, 20..30]);
    assert_eq!(lines(&front, "ranges single-only ").len(), 1);
    let blob_gets = lines(&front, "REQ GET ")
        .iter()
        .filter(|l| l.contains("/blobs/") && l.ends_with(" 206"))
        .count();
    assert_eq!(blob_gets, ranges.len() + 2);

    // Parts last first, or merged into one.
    for mode in ["shuffle", "coalesce"] {
        let (front, registry) = ranges_front(&reg, work.path(), Some(mode), false);
        check_ranges(&registry, digest, blob, &ranges[..3]);
        assert_eq!(lines(&front, &format!("ranges {mode} ")).len(), 1);
    }

    // A part that was not asked for.
    let (_front, registry) = ranges_front(&reg, work.path(), Some("outside"), false);
    let e = registry
        .fetch_ranges(&digest_of(digest), size, &[10..20, 30..40])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "docker://{}/{REPO}: blob {digest}: reading bytes=10-19,30-39: the answer holds \
             bytes 40-49 where bytes=10-19,30-39 was asked for",
            registry.reference().registry
        )
    );
    println!("{e}");

    // Blobs in storage on another origin, behind a signed link that has expired at the first
    // try: the registry is asked again, and storage never sees the registry's Authorization.
    let (front, registry) = ranges_front(&reg, work.path(), None, true);
    check_ranges(&registry, digest, blob, &ranges);
    check_ranges(&registry, digest, blob, &[7..8]);
    assert_eq!(
        front.count("storage-expired "),
        1,
        "{:?}",
        front.log_lines()
    );
    assert_eq!(front.count("redirect "), 3, "{:?}", front.log_lines());
    assert_eq!(
        front.count("storage /storage/v2/"),
        2,
        "{:?}",
        front.log_lines()
    );
    assert_eq!(front.count("storage-auth "), 0);
}

#[test]
fn byte_ranges_through_token_auth_and_storage() {
    let work = TempDir::new("imgfs-registry-ranges-auth");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    let front = Front::start(
        &reg.addr,
        &FrontOptions {
            credentials: Some((USER.into(), PASSWORD.into())),
            token_ttl: Some(1.0),
            storage: true,
            ranges: Some("shuffle".into()),
            ..FrontOptions::default()
        },
    );
    let opts = options(auth_file(work.path(), &front.addr, Some((USER, PASSWORD))));
    let registry = Registry::connect_repository(&format!("{}/{REPO}", front.addr), &opts).unwrap();
    let (digest, blob) = &fixture.layers[1];
    let ranges = spread(blob.len() as u64);
    check_ranges(&registry, digest, blob, &ranges);
    // The token expires: renewed on the 401, and still kept from storage.
    std::thread::sleep(Duration::from_millis(1200));
    check_ranges(&registry, digest, blob, &ranges);
    assert_eq!(front.count("token "), 2, "{:?}", front.log_lines());
    assert_eq!(front.count("ranges shuffle "), 2);
    assert_eq!(front.count("storage-auth "), 0);
}

#[test]
fn byte_ranges_survive_drops_and_refuse_wrong_answers() {
    let work = TempDir::new("imgfs-registry-ranges-fake");
    let blob = noise(10_000, 11);
    let calls = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let addr = ranges_faker(blob.clone(), calls.clone());
    let opts = options(auth_file(work.path(), &addr, None));
    let digest = sha256(&blob);
    let fetch = |repo: &str| {
        let registry = Registry::connect_repository(&format!("{addr}/{repo}"), &opts).unwrap();
        registry.fetch_ranges(&digest_of(&digest), blob.len() as u64, &[100..200])
    };
    // A 503, then a whole blob that stops short, then the range.
    let got = fetch("flaky").unwrap();
    assert!(got[0] == blob[100..200]);
    assert_eq!(calls.lock().unwrap()["flaky"], 3);
    let head = format!("docker://{addr}/");
    let cases = [
        (
            "long",
            "reading bytes=100-199: a partial answer of 150 bytes for Content-Range 'bytes \
             100-199/10000'"
                .to_string(),
        ),
        (
            "norange",
            "reading bytes=100-199: a partial answer without Content-Range".to_string(),
        ),
        (
            "wrongsize",
            "reading bytes=100-199: the whole blob came as 5000 bytes, but it has 10000"
                .to_string(),
        ),
        (
            "dropping",
            "reading bytes=100-199: the connection broke 4 times: ".to_string(),
        ),
    ];
    for (repo, want) in cases {
        let e = fetch(repo).unwrap_err().to_string();
        let want = format!("{head}{repo}: blob {digest}: {want}");
        if want.ends_with(": ") {
            assert!(e.starts_with(&want), "{e}");
        } else {
            assert_eq!(e, want);
        }
        println!("{e}");
    }
    // Storage that refuses its link is tried twice, the registry asked again in between.
    let e = fetch("expired").unwrap_err().to_string();
    assert!(e.ends_with(" answered 403: forbidden"), "{e}");
    assert_eq!(calls.lock().unwrap()["expired"], 2);
    assert_eq!(calls.lock().unwrap()["storage"], 2);
}
