//! Pulls: anonymous by tag, digest and platform; unknown names and dead registries; Basic
//! and Bearer authentication; a corrupt blob, a registry killed mid-blob, odd answers,
//! broken streams, and a loopback registry speaking HTTPS.

use super::*;

#[test]
fn pulls_anonymously_by_tag_digest_and_platform() {
    let work = TempDir::new("imgfs-registry-anon");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    push(&reg, &fixture, "multi");
    let opts = options(auth_file(work.path(), &reg.addr, None));
    let registry = pull_and_check(&format!("{}/{REPO}:1", reg.addr), &opts, &fixture);
    assert_eq!(
        registry.describe(),
        format!("docker://{}/{REPO}:1", reg.addr)
    );
    pull_and_check(
        &format!("{}/{REPO}@{}", reg.addr, fixture.manifest_digest),
        &opts,
        &fixture,
    );
    // The index: this machine's image, or the other platform's when asked for.
    pull_and_check(&format!("{}/{REPO}:multi", reg.addr), &opts, &fixture);
    let (other, other_config) = &fixture.other;
    let (image, _) = registry::open(
        &format!("{}/{REPO}:multi", reg.addr),
        &RegistryOptions {
            platform: other.clone(),
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(&image.config_digest, other_config);
    let none = error_of(registry::open(
        &format!("{}/{REPO}:multi", reg.addr),
        &RegistryOptions {
            platform: Platform::parse("linux/mips64le").unwrap(),
            ..opts.clone()
        },
    ));
    assert!(
        none.contains("no image for platform linux/mips64le"),
        "{none}"
    );
    // Layers read in parallel, as the store fills them.
    let (image, registry) = registry::open(&format!("{}/{REPO}:1", reg.addr), &opts).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..image.layers.len())
            .map(|i| {
                let (registry, image) = (&registry, &image);
                s.spawn(move || read_layer(registry, image, i).unwrap())
            })
            .collect();
        for (h, (_, bytes)) in handles.into_iter().zip(&fixture.layers) {
            assert!(h.join().unwrap() == *bytes);
        }
    });
}

#[test]
fn unknown_names_and_dead_registries_are_one_clear_line() {
    let work = TempDir::new("imgfs-registry-404");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    let opts = options(auth_file(work.path(), &reg.addr, None));
    let nope = error_of(registry::open(&format!("{}/{REPO}:nope", reg.addr), &opts));
    assert_eq!(
        nope,
        format!("docker://{}/{REPO}:nope: manifest unknown (404)", reg.addr)
    );
    let repo = error_of(registry::open(&format!("{}/imgfs/none:1", reg.addr), &opts));
    assert!(repo.ends_with("(404)"), "{repo}");
    let wrong = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let by_digest = error_of(registry::open(
        &format!("{}/{REPO}@{wrong}", reg.addr),
        &opts,
    ));
    assert!(by_digest.ends_with("(404)"), "{by_digest}");
    let bad = error_of(registry::open(&format!("{}/{REPO}:-x", reg.addr), &opts));
    assert!(
        bad.starts_with(&format!("docker://{}/{REPO}:-x: ", reg.addr)),
        "{bad}"
    );

    let port = free_port();
    let start = Instant::now();
    let refused = error_of(registry::open(&format!("127.0.0.1:{port}/{REPO}:1"), &opts));
    assert_eq!(
        refused,
        format!(
            "docker://127.0.0.1:{port}/{REPO}:1: cannot connect to 127.0.0.1:{port}: \
             Connection refused (os error 111)"
        )
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "refused is not retried"
    );
    println!("{nope}\n{repo}\n{by_digest}\n{bad}\n{refused}");
}

#[test]
fn basic_auth_from_an_auth_file() {
    let work = TempDir::new("imgfs-registry-basic");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start_with_htpasswd(USER, PASSWORD);
    push(&reg, &fixture, "1");
    let reference = format!("{}/{REPO}:1", reg.addr);
    let good = options(auth_file(work.path(), &reg.addr, Some((USER, PASSWORD))));
    pull_and_check(&reference, &good, &fixture);
    // Docker's way of naming the registry in the file works too.
    let url_key = options(auth_file(
        work.path(),
        &format!("http://{}/v2/", reg.addr),
        Some((USER, PASSWORD)),
    ));
    pull_and_check(&reference, &url_key, &fixture);

    let none = error_of(registry::open(
        &reference,
        &options(auth_file(work.path(), &reg.addr, None)),
    ));
    assert!(
        none.starts_with(&format!(
            "docker://{reference}: {} asks for credentials and none are configured for it (401)",
            reg.addr
        )),
        "{none}"
    );
    let wrong = error_of(registry::open(
        &reference,
        &options(auth_file(work.path(), &reg.addr, Some((USER, "wrong")))),
    ));
    assert_eq!(
        wrong,
        format!(
            "docker://{reference}: {} refused the credentials configured for it (401)",
            reg.addr
        )
    );
    let missing = error_of(registry::open(
        &reference,
        &options(work.path().join("no-such-auth.json")),
    ));
    assert!(
        missing.contains("no-such-auth.json: No such file"),
        "{missing}"
    );
    println!("{none}\n{wrong}\n{missing}");
}

#[test]
fn bearer_tokens_are_fetched_renewed_and_kept_from_other_hosts() {
    let work = TempDir::new("imgfs-registry-token");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    let front = token_front(&reg.addr);
    let reference = format!("{}/{REPO}:1", front.addr);
    let good = options(auth_file(work.path(), &front.addr, Some((USER, PASSWORD))));

    let (image, registry) = registry::open(&reference, &good).unwrap();
    assert_eq!(front.tokens_issued.load(Ordering::SeqCst), 1);
    // The token expires: the next request is refused once, and a new token is fetched.
    front.generation.fetch_add(1, Ordering::SeqCst);
    for (i, (_, bytes)) in fixture.layers.iter().enumerate() {
        assert!(
            read_layer(&registry, &image, i).unwrap() == *bytes,
            "layer {i}"
        );
    }
    assert_eq!(front.tokens_issued.load(Ordering::SeqCst), 2);
    // Blobs (the config and both layers) went through the redirect, never with the token.
    assert!(front.redirected.load(Ordering::SeqCst) >= 3);
    assert_eq!(front.redirected_with_auth.load(Ordering::SeqCst), 0);

    // `docker login` against an OAuth2 service leaves an identity token instead.
    let identity = work.path().join("identity.json");
    std::fs::write(
        &identity,
        serde_json::to_vec(&serde_json::json!(
            {"auths": {front.addr.clone(): {"identitytoken": "refresh-me"}}}
        ))
        .unwrap(),
    )
    .unwrap();
    let issued = front.tokens_issued.load(Ordering::SeqCst);
    pull_and_check(&reference, &options(identity), &fixture);
    assert_eq!(front.tokens_issued.load(Ordering::SeqCst), issued + 1);

    let wrong = error_of(registry::open(
        &reference,
        &options(auth_file(work.path(), &front.addr, Some((USER, "nope")))),
    ));
    assert_eq!(
        wrong,
        format!(
            "docker://{reference}: the token service {0} refused the credentials for {0} (401)",
            front.addr
        )
    );
    let none = error_of(registry::open(
        &reference,
        &options(auth_file(work.path(), &front.addr, None)),
    ));
    assert!(
        none.starts_with(&format!(
            "docker://{reference}: {} asks for credentials and none are configured",
            front.addr
        )),
        "{none}"
    );
    println!("{wrong}\n{none}");
}

#[test]
fn a_corrupt_blob_fails_its_digest() {
    let work = TempDir::new("imgfs-registry-corrupt");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    let opts = options(auth_file(work.path(), &reg.addr, None));
    let reference = format!("{}/{REPO}:1", reg.addr);
    let (image, registry) = registry::open(&reference, &opts).unwrap();
    // One byte flipped in the middle of the big layer, the size unchanged.
    let file = reg.blob_data(&fixture.layers[1].0);
    let mut data = std::fs::read(&file).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&file, &data).unwrap();
    let layer = read_layer(&registry, &image, 1).unwrap_err().to_string();
    assert!(
        layer.starts_with(&format!(
            "content does not match its digest: expected {}, got sha256:",
            fixture.layers[1].0
        )),
        "{layer}"
    );
    // A corrupt config stops the image at open.
    let file = reg.blob_data(&fixture.config_digest);
    let mut config = std::fs::read(&file).unwrap();
    config[0] = b' ';
    std::fs::write(&file, &config).unwrap();
    let open = error_of(registry::open(&reference, &opts));
    assert!(
        open.starts_with(&format!(
            "docker://{reference}: {}: content does not match",
            fixture.config_digest
        )),
        "{open}"
    );
    println!("{layer}\n{open}");
}

#[test]
fn a_registry_killed_mid_blob_is_resumed_or_reported() {
    let work = TempDir::new("imgfs-registry-kill");
    let fixture = write_layout(&work.path().join("layout"));
    let mut reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    let opts = options(auth_file(work.path(), &reg.addr, None));
    let reference = format!("{}/{REPO}:1", reg.addr);
    let (image, registry) = registry::open(&reference, &opts).unwrap();
    let (digest, bytes) = &fixture.layers[1];

    // Killed after the first MiB and started again: the stream resumes where it broke.
    let mut stream = registry.open_layer(&image.layers[1]).unwrap();
    let mut got = vec![0u8; 1 << 20];
    stream.read_exact(&mut got).unwrap();
    reg.kill();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            reg.restart();
        });
        stream.read_to_end(&mut got).unwrap();
    });
    assert!(got == *bytes, "the resumed layer differs");
    assert!(
        reg.log().contains("\" 206 "),
        "no ranged request in the registry's log"
    );
    drop(stream);

    // Killed and not started again: a clear error after a few tries.
    let mut stream = registry.open_layer(&image.layers[1]).unwrap();
    let mut head = vec![0u8; 1 << 20];
    stream.read_exact(&mut head).unwrap();
    reg.kill();
    let start = Instant::now();
    let err = stream.read_to_end(&mut Vec::new()).unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(10));
    let want = format!("docker://{reference}: blob {digest}: resuming at byte ");
    assert!(err.starts_with(&want), "{err}");
    assert!(
        err.contains(&format!(
            ": cannot connect to {} (4 tries): Connection refused",
            reg.addr
        )),
        "{err}"
    );
    println!("{err}");
}

#[test]
fn odd_answers_are_one_clear_line() {
    let work = TempDir::new("imgfs-registry-fake");
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = fake_registry(calls.clone());
    let opts = options(auth_file(work.path(), &addr, None));
    let open = |name: &str| error_of(registry::open(&format!("{addr}/{name}"), &opts));
    let d1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let d2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    let cases: Vec<(String, String)> = vec![
        (
            open("big:1"),
            format!("docker://{addr}/big:1: the manifest is larger than 8388608 bytes"),
        ),
        (
            open("schema1:1"),
            format!(
                "docker://{addr}/schema1:1: media type \
                 'application/vnd.docker.distribution.manifest.v1+prettyjws' is not one imgfs reads"
            ),
        ),
        (
            open("lying:1"),
            format!(
                "docker://{addr}/lying:1: the manifest's digest is sha256:{{}} but its \
                 Docker-Content-Digest says {d1}"
            ),
        ),
        (
            open(&format!("lying@{d2}")),
            format!(
                "docker://{addr}/lying@{d2}: the manifest's digest is sha256:{{}} but the \
                 reference says {d2}"
            ),
        ),
        (
            open("throttled:1"),
            format!("docker://{addr}/throttled:1: {addr} answered 429 (4 tries): slow down"),
        ),
        (
            open("private:1"),
            format!(
                "docker://{addr}/private:1: {addr} denied access (403): requested access to the \
                 resource is denied"
            ),
        ),
        (
            open("odd:1"),
            format!(
                "docker://{addr}/odd:1: {addr} asks for an authentication imgfs does not speak: 'Negotiate'"
            ),
        ),
        (
            open("hangup:1"),
            format!("docker://{addr}/hangup:1: http://{addr}/v2/hangup/manifests/1 (4 tries): "),
        ),
    ];
    for (got, want) in &cases {
        println!("{got}");
        match want.split_once("{}") {
            Some((head, tail)) => assert!(
                got.starts_with(head) && got.ends_with(tail) && got.len() == want.len() + 62,
                "{got}\nwanted {want}"
            ),
            None if want.ends_with(": ") => assert!(got.starts_with(want.as_str()), "{got}"),
            None => assert_eq!(got, want),
        }
    }
    // Two 503s are tried again; the 404 after them is the answer.
    calls.store(0, Ordering::SeqCst);
    let flaky = open("flaky:1");
    assert_eq!(
        flaky,
        format!("docker://{addr}/flaky:1: manifest unknown (404)")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn broken_blob_streams_resume_or_give_up() {
    let work = TempDir::new("imgfs-registry-breaks");
    let layer = noise(300_000, 7);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = breaking_registry(layer.clone(), seen.clone());
    let opts = options(auth_file(work.path(), &addr, None));
    let read = |repo: &str| {
        let (image, registry) = registry::open(&format!("{addr}/{repo}:1"), &opts).unwrap();
        read_layer(&registry, &image, 0)
    };
    // Broken at a third; the registry ignores Range and sends it all: the first third is
    // stepped over and the digest still holds.
    assert!(read("resume").unwrap() == layer);
    {
        let seen = seen.lock().unwrap();
        let resume: Vec<&Request> = seen
            .iter()
            .filter(|r| r.path.starts_with("/v2/resume/"))
            .collect();
        assert_eq!(resume.len(), 2);
        assert_eq!(resume[0].headers.get("range"), None);
        assert_eq!(
            resume[1].headers.get("range").map(String::as_str),
            Some(format!("bytes={}-", layer.len() / 3).as_str())
        );
        for r in &resume {
            assert_eq!(
                r.headers.get("accept-encoding").map(String::as_str),
                Some("identity")
            );
        }
    }
    let digest = sha256(&layer);
    let bad = read("badrange").unwrap_err().to_string();
    assert_eq!(
        bad,
        format!(
            "docker://{addr}/badrange:1: blob {digest}: resuming at byte 100000: asked for \
             bytes from 100000, got Content-Range 'bytes 0-299999/300000'"
        )
    );
    let dead = read("dead").unwrap_err().to_string();
    assert!(
        dead.starts_with(&format!(
            "docker://{addr}/dead:1: blob {digest}: the stream broke at byte 0, 4 times without \
             progress: "
        )),
        "{dead}"
    );
    let expired = read("expired").unwrap_err().to_string();
    assert!(
        expired.starts_with(&format!(
            "docker://{addr}/expired:1: blob {digest}: 127.0.0.1:"
        )),
        "{expired}"
    );
    assert!(expired.ends_with(" answered 403: forbidden"), "{expired}");
    println!("{bad}\n{dead}\n{expired}");
}

#[test]
fn a_loopback_registry_speaking_https_is_used_over_https() {
    let work = TempDir::new("imgfs-registry-tls");
    let fixture = write_layout(&work.path().join("layout"));
    // It refuses plain HTTP, so a pull that works went over TLS (unverified, as docker treats
    // loopback registries).
    let reg = RealRegistry::launch(RegistryConfig {
        tls: true,
        ..RegistryConfig::default()
    });
    push(&reg, &fixture, "1");
    let opts = options(auth_file(work.path(), &reg.addr, None));
    pull_and_check(&format!("{}/{REPO}:1", reg.addr), &opts, &fixture);
}
