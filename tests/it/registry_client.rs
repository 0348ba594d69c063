//! The registry client against a real registry: Debian's `docker-registry` on a loopback port,
//! filled by `skopeo copy` from an OCI layout these tests write (a small layer and a 32 MiB one
//! of noise, an image for this machine and an index of two platforms).
//!
//! Authentication is checked with the registry's own htpasswd (Basic) and with a token front
//! written here, which answers 401 with a Bearer challenge, issues tokens, expires them on
//! demand and redirects blobs to another address (where `Authorization` must not arrive).
//! Faults are real: a blob's file corrupted in the registry's storage, the registry killed in
//! the middle of a blob (and started again, or not), and a fake registry for answers a real
//! one does not give (too large, a lying digest, 5xx, 429, 403).
//!
//! Byte ranges of a blob are read from the registry itself (which answers several ranges as
//! multipart) and through tests/fixtures/registry-front.py, which answers them as other
//! servers do: the whole blob, a refusal of several ranges, parts out of order, merged or not
//! asked for, and blobs redirected to storage links that expire. Artifacts are pushed to the
//! registry and found again as referrers of an image (it lacks the referrers API, so through
//! the tag fallback).

// Lists of one byte range are what several tests ask for.
#![allow(clippy::single_range_in_vec_init)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{
    Front, FrontOptions, Registry as RealRegistry, RegistryConfig, TempDir, free_port,
};
use imgfs::source::registry::{self, Registry, RegistryOptions, Retry};
use imgfs::source::{Image, LayerSource, Platform, SourceError};
use oci_spec::image::Digest;
use sha2::Digest as _;

/// Size of the big layer's one file: well beyond what loopback socket buffers hold, so that a
/// registry killed after the first MiB has not sent the rest.
const BIG: usize = 32 << 20;
const REPO: &str = "imgfs/app";
const USER: &str = "alice";
const PASSWORD: &str = "s3cret";

fn sha256(bytes: &[u8]) -> String {
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Bytes no compressor shrinks (xorshift64).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// What the layout holds, to check the pulled image against.
struct Fixture {
    layout: PathBuf,
    /// (digest, bytes as stored) bottom first.
    layers: Vec<(String, Vec<u8>)>,
    manifest_digest: String,
    config_digest: String,
    /// The index's other platform and its config's digest.
    other: (Platform, String),
}

/// Writes an OCI layout with the tags `1` (a manifest for this machine) and `multi` (an
/// index of it and one for another platform).
fn write_layout(dir: &Path) -> Fixture {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest["sha256:".len()..]), bytes).unwrap();
        digest
    };
    let small_tar = tar_of(&[("hello.txt", b"hello from the registry\n")]);
    let small = gzip(&small_tar);
    // Compressed, as skopeo compresses what it pushes to a registry: so it pushes these as
    // they are, and the digests here are the registry's.
    let big_tar = tar_of(&[("noise.bin", &noise(BIG, 0x9e37_79b9_7f4a_7c15))]);
    let big = gzip(&big_tar);
    let layers = vec![(put(&small), small.clone()), (put(&big), big.clone())];
    let diff_ids = [sha256(&small_tar), sha256(&big_tar)];
    let host = Platform::host();
    let other = Platform {
        os: "linux".into(),
        architecture: if host.architecture == "s390x" {
            "ppc64le"
        } else {
            "s390x"
        }
        .into(),
        variant: None,
    };
    let config_for = |p: &Platform| {
        let mut c = serde_json::json!({
            "architecture": p.architecture, "os": p.os,
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(v) = &p.variant {
            c["variant"] = v.clone().into();
        }
        serde_json::to_vec(&c).unwrap()
    };
    let manifest_for = |config: &[u8]| {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(config), "size": config.len()},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                 "digest": layers[0].0, "size": layers[0].1.len()},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                 "digest": layers[1].0, "size": layers[1].1.len()},
            ],
        });
        serde_json::to_vec(&m).unwrap()
    };
    let platform_json = |p: &Platform| {
        let mut j = serde_json::json!({"architecture": p.architecture, "os": p.os});
        if let Some(v) = &p.variant {
            j["variant"] = v.clone().into();
        }
        j
    };
    let config = config_for(&host);
    let other_config = config_for(&other);
    let manifest = manifest_for(&config);
    let other_manifest = manifest_for(&other_config);
    put(&config);
    put(&other_config);
    put(&manifest);
    put(&other_manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha256(&other_manifest), "size": other_manifest.len(),
             "platform": platform_json(&other)},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha256(&manifest), "size": manifest.len(),
             "platform": platform_json(&host)},
        ],
    }))
    .unwrap();
    put(&index);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha256(&manifest), "size": manifest.len(),
             "annotations": {"org.opencontainers.image.ref.name": "1"}},
            {"mediaType": "application/vnd.oci.image.index.v1+json",
             "digest": sha256(&index), "size": index.len(),
             "annotations": {"org.opencontainers.image.ref.name": "multi"}},
        ],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Fixture {
        layout: dir.to_path_buf(),
        layers,
        manifest_digest: sha256(&manifest),
        config_digest: sha256(&config),
        other: (other, sha256(&other_config)),
    }
}

/// Pushes the layout's `tag` (an index with all its images) as `REPO:tag`.
#[track_caller]
fn push(reg: &RealRegistry, fixture: &Fixture, tag: &str) {
    reg.push(
        &format!("oci:{}:{tag}", fixture.layout.display()),
        &format!("{REPO}:{tag}"),
    );
}

/// An auth file with `auths` for `host` (none when `creds` is `None`).
fn auth_file(dir: &Path, host: &str, creds: Option<(&str, &str)>) -> PathBuf {
    use base64::Engine as _;
    let auths = match creds {
        Some((u, p)) => serde_json::json!({
            host: {"auth": base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))}
        }),
        None => serde_json::json!({}),
    };
    let path = dir.join(format!(
        "auth-{}.json",
        AUTH_FILES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(
        &path,
        serde_json::to_vec(&serde_json::json!({"auths": auths})).unwrap(),
    )
    .unwrap();
    path
}
static AUTH_FILES: AtomicUsize = AtomicUsize::new(0);

/// Options with quick retries and credentials from `auth` only.
fn options(auth: PathBuf) -> RegistryOptions {
    RegistryOptions {
        auth_file: Some(auth),
        retry: Retry {
            tries: 4,
            first_delay: Duration::from_millis(200),
        },
        ..RegistryOptions::default()
    }
}

fn read_layer(registry: &Registry, image: &Image, i: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    registry
        .open_layer(&image.layers[i])
        .map_err(std::io::Error::other)?
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Opens `reference` and checks the image and every layer's bytes against the fixture.
#[track_caller]
fn pull_and_check(reference: &str, options: &RegistryOptions, fixture: &Fixture) -> Registry {
    let (image, registry) =
        registry::open(reference, options).unwrap_or_else(|e| panic!("{reference}: {e}"));
    assert_eq!(
        image.manifest_digest.as_deref(),
        Some(fixture.manifest_digest.as_str())
    );
    assert_eq!(image.config_digest, fixture.config_digest);
    assert_eq!(image.layers.len(), fixture.layers.len());
    for (i, (digest, bytes)) in fixture.layers.iter().enumerate() {
        assert_eq!(
            image.layers[i].digest.as_ref().unwrap().to_string(),
            *digest
        );
        let got = read_layer(&registry, &image, i).unwrap_or_else(|e| panic!("layer {i}: {e}"));
        assert!(got == *bytes, "layer {i} differs");
    }
    registry
}

fn error_of<T>(result: Result<T, SourceError>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

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

/// A request as the test servers see it.
struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    /// The head as received, to forward.
    head: Vec<String>,
    body: Vec<u8>,
}

/// What a test server does with a request.
enum Reply {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Forward to the registry at this address (without `Authorization`), path rewritten.
    Proxy { to: String, path: String },
    /// Announce the whole body, send the first `cut` bytes and close.
    Cut {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        cut: usize,
    },
    /// Close the connection without a word.
    Hang,
}

fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Reply {
    Reply::Respond {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.into(),
    }
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A small HTTP/1.1 server on loopback, one request per connection; it lives as long as the
/// test process (its thread blocks in accept).
fn serve(handler: Handler) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = handle(conn, &*handler);
            });
        }
    });
    addr
}

fn handle(conn: TcpStream, handler: &dyn Fn(&Request) -> Reply) -> std::io::Result<()> {
    let mut first = [0u8; 1];
    if conn.peek(&mut first)? == 0 || first[0] == 0x16 {
        return Ok(()); // a TLS hello: this server speaks plain HTTP only
    }
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let Some(request_line) = head.first() else {
        return Ok(());
    };
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let headers: HashMap<String, String> = head[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = Vec::new();
    if let Some(len) = headers
        .get("content-length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        (&mut reader).take(len).read_to_end(&mut body)?;
    }
    let request = Request {
        method,
        path,
        headers,
        head,
        body,
    };
    let mut conn = conn;
    match handler(&request) {
        Reply::Respond {
            status,
            headers,
            body,
        } => {
            let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            if !out.to_ascii_lowercase().contains("content-length") {
                out.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            out.push_str("\r\n");
            conn.write_all(out.as_bytes())?;
            conn.write_all(&body)?;
        }
        Reply::Proxy { to, path } => {
            let mut upstream = TcpStream::connect(&to)?;
            let mut out = format!("{} {path} HTTP/1.1\r\n", request.method);
            for line in &request.head[1..] {
                let name = line
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                if !matches!(name.as_str(), "authorization" | "connection" | "host") {
                    out.push_str(line);
                    out.push_str("\r\n");
                }
            }
            out.push_str(&format!("Host: {to}\r\nConnection: close\r\n\r\n"));
            upstream.write_all(out.as_bytes())?;
            std::io::copy(&mut upstream, &mut conn)?;
        }
        Reply::Cut { headers, body, cut } => {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            conn.write_all(out.as_bytes())?;
            conn.write_all(&body[..cut.min(body.len())])?;
        }
        Reply::Hang => {}
    }
    Ok(())
}

/// A token front for a registry without authentication of its own: `/token` issues the
/// current token for good Basic credentials; `/v2/` wants it; blobs are redirected to a
/// second address that serves them without asking (and counts any `Authorization`).
struct TokenFront {
    addr: String,
    generation: AtomicUsize,
    tokens_issued: AtomicUsize,
    redirected: AtomicUsize,
    redirected_with_auth: AtomicUsize,
}

fn token_front(registry: &str) -> Arc<TokenFront> {
    use base64::Engine as _;
    let storage_front: Arc<std::sync::OnceLock<Arc<TokenFront>>> = Arc::default();
    let registry = registry.to_string();
    let cell = storage_front.clone();
    let to = registry.clone();
    let storage = serve(Arc::new(move |req: &Request| {
        let front = cell.get().expect("front set");
        front.redirected.fetch_add(1, Ordering::SeqCst);
        if req.headers.contains_key("authorization") {
            front.redirected_with_auth.fetch_add(1, Ordering::SeqCst);
        }
        Reply::Proxy {
            to: to.clone(),
            path: req.path.clone(),
        }
    }));
    let cell = storage_front.clone();
    let addr = serve(Arc::new(move |req: &Request| {
        let front = cell.get().expect("front set");
        let auth = req
            .headers
            .get("authorization")
            .cloned()
            .unwrap_or_default();
        if req.method == "POST" && req.path == "/token" {
            // OAuth2: an identity token (a refresh token) traded for an access token.
            let form = String::from_utf8_lossy(&req.body);
            let fields: HashMap<&str, &str> = form
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            if fields.get("grant_type") != Some(&"refresh_token")
                || fields.get("refresh_token") != Some(&"refresh-me")
                || fields.get("service") != Some(&"imgfs-test")
            {
                return respond(401, &[], "{}");
            }
            front.tokens_issued.fetch_add(1, Ordering::SeqCst);
            let token = format!("tok-{}", front.generation.load(Ordering::SeqCst));
            return respond(
                200,
                &[("Content-Type", "application/json")],
                format!(r#"{{"access_token":"{token}"}}"#),
            );
        }
        if req.path.starts_with("/token?") {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
            );
            if auth != want || !req.path.contains("scope=repository") {
                return respond(401, &[], r#"{"details":"bad credentials"}"#);
            }
            front.tokens_issued.fetch_add(1, Ordering::SeqCst);
            let token = format!("tok-{}", front.generation.load(Ordering::SeqCst));
            return respond(
                200,
                &[("Content-Type", "application/json")],
                format!(r#"{{"token":"{token}","expires_in":300}}"#),
            );
        }
        let current = format!("Bearer tok-{}", front.generation.load(Ordering::SeqCst));
        if auth != current {
            let challenge = format!(
                r#"Bearer realm="http://{}/token",service="imgfs-test",scope="repository:{REPO}:pull""#,
                front.addr
            );
            return respond(401, &[("WWW-Authenticate", &challenge)], "{}");
        }
        if req.path.contains("/blobs/") {
            let location = format!("http://{storage}{}", req.path);
            return respond(307, &[("Location", &location)], "");
        }
        Reply::Proxy {
            to: registry.clone(),
            path: req.path.clone(),
        }
    }));
    let front = Arc::new(TokenFront {
        addr,
        generation: AtomicUsize::new(1),
        tokens_issued: AtomicUsize::new(0),
        redirected: AtomicUsize::new(0),
        redirected_with_auth: AtomicUsize::new(0),
    });
    storage_front.set(front.clone()).ok().unwrap();
    front
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

/// A registry that answers what real ones sometimes do.
fn fake_registry(calls: Arc<AtomicUsize>) -> String {
    let oversized = vec![b' '; 9 << 20];
    serve(Arc::new(move |req: &Request| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
        let oci = ("Content-Type", "application/vnd.oci.image.manifest.v1+json");
        match req.path.as_str() {
            "/v2/big/manifests/1" => respond(200, &[oci], oversized.clone()),
            "/v2/schema1/manifests/1" => respond(
                200,
                &[(
                    "Content-Type",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                )],
                r#"{"schemaVersion":1}"#,
            ),
            "/v2/lying/manifests/1" => respond(
                200,
                &[
                    oci,
                    (
                        "Docker-Content-Digest",
                        "sha256:1111111111111111111111111111111111111111111111111111111111111111",
                    ),
                ],
                &manifest[..],
            ),
            p if p.starts_with("/v2/lying/manifests/sha256:") => {
                respond(200, &[oci], &manifest[..])
            }
            "/v2/flaky/manifests/1" if n % 3 != 2 => respond(503, &[], "busy"),
            "/v2/flaky/manifests/1" => respond(
                404,
                &[],
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
            "/v2/throttled/manifests/1" => respond(
                429,
                &[("Retry-After", "0")],
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
            ),
            "/v2/private/manifests/1" => respond(
                403,
                &[],
                r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
            ),
            "/v2/hangup/manifests/1" => Reply::Hang,
            "/v2/odd/manifests/1" => respond(401, &[("WWW-Authenticate", "Negotiate")], ""),
            _ => respond(404, &[], ""),
        }
    }))
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

/// A registry whose blob connections break: `resume` breaks once and then ignores `Range`,
/// `badrange` answers the resumption with the wrong part, `dead` never sends a byte,
/// `expired` redirects to storage that refuses the link.
fn breaking_registry(layer: Vec<u8>, seen: Arc<std::sync::Mutex<Vec<Request>>>) -> String {
    let storage = serve(Arc::new(|_: &Request| {
        respond(
            403,
            &[("Content-Type", "application/xml")],
            "<Error>Request has expired</Error>",
        )
    }));
    let layer_digest = sha256(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": Platform::host().architecture, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let config_digest = sha256(&config);
    let cut = layer.len() / 3;
    serve(Arc::new(move |req: &Request| {
        let parts: Vec<&str> = req.path.split('/').collect();
        let (repo, kind, name) = match parts.as_slice() {
            ["", "v2", repo, kind, name] => (*repo, *kind, *name),
            _ => return respond(404, &[], ""),
        };
        if kind == "manifests" {
            let oci = ("Content-Type", "application/vnd.oci.image.manifest.v1+json");
            return respond(200, &[oci], manifest.clone());
        }
        if name == config_digest {
            return respond(200, &[], config.clone());
        }
        let mut seen = seen.lock().unwrap();
        let tries = seen.iter().filter(|r| r.path == req.path).count();
        seen.push(Request {
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req.headers.clone(),
            head: Vec::new(),
            body: Vec::new(),
        });
        match (repo, tries) {
            ("expired", _) => respond(
                307,
                &[("Location", &format!("http://{storage}/blob?signature=x"))],
                "",
            ),
            ("dead", _) => Reply::Cut {
                headers: Vec::new(),
                body: layer.clone(),
                cut: 0,
            },
            (_, 0) => Reply::Cut {
                headers: Vec::new(),
                body: layer.clone(),
                cut,
            },
            ("badrange", _) => respond(
                206,
                &[(
                    "Content-Range",
                    &format!("bytes 0-{}/{}", layer.len() - 1, layer.len()),
                )],
                layer.clone(),
            ),
            _ => respond(200, &[], layer.clone()),
        }
    }))
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

fn digest_of(s: &str) -> Digest {
    Digest::try_from(s).unwrap()
}

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

const ARTIFACT: &str = "application/vnd.imgfs.test.index.v1";
const OTHER_ARTIFACT: &str = "application/vnd.imgfs.test.other.v1";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// An artifact manifest with one layer of `payload` (pushed here) and `subject`.
fn push_artifact(
    registry: &Registry,
    subject: &serde_json::Value,
    artifact_type: &str,
    payload: &[u8],
    n: u32,
) -> (Vec<u8>, String) {
    let empty = registry.push_blob(b"{}").unwrap();
    let layer = registry.push_blob(payload).unwrap();
    assert_eq!(layer.to_string(), sha256(payload));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY, "digest": empty.to_string(), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": layer.to_string(),
                    "size": payload.len()}],
        "subject": subject,
        "annotations": {"org.imgfs.test.n": n.to_string()},
    }))
    .unwrap();
    let subject_digest = digest_of(subject["digest"].as_str().unwrap());
    let d = registry
        .push_referrer(&subject_digest, &manifest, artifact_type)
        .unwrap();
    assert_eq!(d.to_string(), sha256(&manifest));
    (manifest, d.to_string())
}

#[test]
fn pushes_artifacts_and_finds_them_as_referrers() {
    let work = TempDir::new("imgfs-registry-push");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    let opts = options(auth_file(work.path(), &reg.addr, None));
    let (image, _) = registry::open(&format!("{}/{REPO}:1", reg.addr), &opts).unwrap();
    let subject = serde_json::json!({
        "mediaType": image.manifest_media_type.as_deref().unwrap(),
        "digest": image.manifest_digest.as_deref().unwrap(),
        "size": image.manifest_size.unwrap(),
    });
    assert_eq!(
        subject["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let registry = Registry::connect_repository(&format!("{}/{REPO}", reg.addr), &opts).unwrap();
    let subject_digest = digest_of(&fixture.manifest_digest);
    // The subject descriptor is the manifest's own.
    let (bytes, media_type) = registry.manifest_by_digest(&subject_digest).unwrap();
    assert_eq!(bytes.len() as u64, image.manifest_size.unwrap());
    assert_eq!(media_type.as_deref(), image.manifest_media_type.as_deref());
    assert!(
        registry
            .referrers(&subject_digest, ARTIFACT)
            .unwrap()
            .is_empty()
    );

    let (first, d1) = push_artifact(&registry, &subject, ARTIFACT, b"first index", 1);
    let found = registry.referrers(&subject_digest, ARTIFACT).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].digest().to_string(), d1);
    assert_eq!(found[0].size(), first.len() as u64);
    assert_eq!(
        found[0]
            .artifact_type()
            .as_ref()
            .map(|t| t.to_string())
            .as_deref(),
        Some(ARTIFACT)
    );
    assert_eq!(
        found[0].annotations().as_ref().unwrap()["org.imgfs.test.n"],
        "1"
    );
    // What a referrer names reads back, verified.
    let (bytes, media_type) = registry.manifest_by_digest(found[0].digest()).unwrap();
    assert!(bytes == first);
    assert_eq!(
        media_type.as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    let layer = digest_of(&sha256(b"first index"));
    assert_eq!(
        registry.blob_bytes(&layer, 11, 1 << 20).unwrap(),
        b"first index"
    );
    let big = registry.blob_bytes(&layer, 11, 10).unwrap_err().to_string();
    assert!(
        big.ends_with("11 bytes, more than the 10 read whole"),
        "{big}"
    );

    // A second of the same type, one of another type, and the first pushed again.
    let (_, d2) = push_artifact(&registry, &subject, ARTIFACT, b"second index", 2);
    let (_, d3) = push_artifact(&registry, &subject, OTHER_ARTIFACT, b"other", 3);
    push_artifact(&registry, &subject, ARTIFACT, b"first index", 1);
    let mut found: Vec<String> = registry
        .referrers(&subject_digest, ARTIFACT)
        .unwrap()
        .iter()
        .map(|d| d.digest().to_string())
        .collect();
    found.sort();
    let mut want = vec![d1.clone(), d2];
    want.sort();
    assert_eq!(found, want);
    let other = registry.referrers(&subject_digest, OTHER_ARTIFACT).unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].digest().to_string(), d3);
    // The registry lacks the API: the index tagged after the subject holds them.
    let tag = fixture.manifest_digest.replacen(':', "-", 1);
    let body = ureq::get(format!("http://{}/v2/{REPO}/manifests/{tag}", reg.addr))
        .header("Accept", "application/vnd.oci.image.index.v1+json")
        .call()
        .unwrap()
        .body_mut()
        .read_to_vec()
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3, "{index}");
    assert!(
        reg.log().contains("/referrers/"),
        "the referrers API was not tried"
    );

    // A subject that is not the manifest's is refused before anything is pushed.
    let (manifest, _) = registry.manifest_by_digest(&digest_of(&d1)).unwrap();
    let wrong = registry
        .push_referrer(&digest_of(&fixture.layers[0].0), &manifest, ARTIFACT)
        .unwrap_err()
        .to_string();
    assert!(
        wrong.contains("the manifest's subject is sha256:"),
        "{wrong}"
    );
    // A tag pushed plainly: the registry does not index subjects itself.
    let (d, indexed) = registry
        .push_manifest(
            "pushed",
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
        .unwrap();
    assert_eq!((d.to_string(), indexed), (d1, false));
}

#[test]
fn pushes_with_basic_auth() {
    let work = TempDir::new("imgfs-registry-push-basic");
    let reg = RealRegistry::start_with_htpasswd(USER, PASSWORD);
    let opts = options(auth_file(work.path(), &reg.addr, Some((USER, PASSWORD))));
    let registry = Registry::connect_repository(&format!("{}/{REPO}", reg.addr), &opts).unwrap();
    let d = registry.push_blob(b"pushed with a password").unwrap();
    assert_eq!(
        registry.blob_bytes(&d, 22, 100).unwrap(),
        b"pushed with a password"
    );
    let none = Registry::connect_repository(
        &format!("{}/{REPO}", reg.addr),
        &options(auth_file(work.path(), &reg.addr, None)),
    )
    .unwrap();
    let e = none.push_blob(b"x").unwrap_err().to_string();
    assert!(
        e.contains("asks for credentials and none are configured"),
        "{e}"
    );
}

#[test]
fn pushes_with_a_token_that_allows_push() {
    let work = TempDir::new("imgfs-registry-push-token");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    let front = Front::start(
        &reg.addr,
        &FrontOptions {
            credentials: Some((USER.into(), PASSWORD.into())),
            ..FrontOptions::default()
        },
    );
    let opts = options(auth_file(work.path(), &front.addr, Some((USER, PASSWORD))));
    let registry = Registry::connect_repository(&format!("{}/{REPO}", front.addr), &opts).unwrap();
    let subject = digest_of(&fixture.manifest_digest);
    let (bytes, media_type) = registry.manifest_by_digest(&subject).unwrap();
    let descriptor = serde_json::json!({
        "mediaType": media_type.unwrap(), "digest": fixture.manifest_digest, "size": bytes.len(),
    });
    let (_, d) = push_artifact(&registry, &descriptor, ARTIFACT, b"through a token", 1);
    let found = registry.referrers(&subject, ARTIFACT).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].digest().to_string(), d);
    // A pull token first; the first write is refused and a token for both is fetched.
    let tokens: Vec<String> = front
        .log_lines()
        .into_iter()
        .filter(|l| l.starts_with("token "))
        .collect();
    assert_eq!(
        tokens,
        [
            format!("token repository:{REPO}:pull"),
            format!("token repository:{REPO}:pull,push")
        ]
    );
    assert!(front.count("REQ PUT ") >= 4, "{:?}", front.log_lines());
}

/// A registry whose ranged blob answers are busy, dropped, too long or without their range.
fn ranges_faker(blob: Vec<u8>, calls: Arc<std::sync::Mutex<HashMap<String, usize>>>) -> String {
    let storage_calls = calls.clone();
    let storage = serve(Arc::new(move |_: &Request| {
        *storage_calls
            .lock()
            .unwrap()
            .entry("storage".into())
            .or_default() += 1;
        respond(403, &[], "<Error>Request has expired</Error>")
    }));
    serve(Arc::new(move |req: &Request| {
        let repo = req.path.split('/').nth(2).unwrap_or_default().to_string();
        let n = {
            let mut calls = calls.lock().unwrap();
            let n = calls.entry(repo.clone()).or_default();
            *n += 1;
            *n - 1
        };
        let range = |r: std::ops::Range<usize>, extra: usize| {
            let header = format!("bytes {}-{}/{}", r.start, r.end - 1, blob.len());
            respond(
                206,
                &[("Content-Range", &header)],
                blob[r.start..r.end + extra].to_vec(),
            )
        };
        match (repo.as_str(), n) {
            ("flaky", 0) => respond(503, &[], "busy"),
            ("flaky", 1) | ("dropping", _) => Reply::Cut {
                headers: Vec::new(),
                body: blob.clone(),
                cut: 50,
            },
            ("flaky", _) => range(100..200, 0),
            ("long", _) => range(100..200, 50),
            ("norange", _) => respond(206, &[], blob[100..200].to_vec()),
            ("wrongsize", _) => respond(200, &[], blob[..5000].to_vec()),
            ("expired", _) => respond(
                307,
                &[("Location", &format!("http://{storage}/blob?expires=1"))],
                "",
            ),
            _ => respond(404, &[], ""),
        }
    }))
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

#[test]
fn referrers_from_the_api_are_paged_and_filtered_here() {
    let work = TempDir::new("imgfs-registry-referrers-api");
    let wanted = "application/vnd.imgfs.test.paged.v1+json";
    let subject = sha256(b"subject");
    let descriptor = |n: u8, artifact_type: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&[n]), "size": n, "artifactType": artifact_type,
        })
    };
    let pages = [
        serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor(1, wanted), descriptor(2, OTHER_ARTIFACT)]}),
        serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor(3, wanted)]}),
    ];
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = serve(Arc::new(move |req: &Request| {
        log.lock().unwrap().push(req.path.clone());
        let index = ("Content-Type", "application/vnd.oci.image.index.v1+json");
        if req.path.ends_with("&page=2") {
            return respond(200, &[index], serde_json::to_vec(&pages[1]).unwrap());
        }
        if req.path.starts_with("/v2/api/referrers/") {
            let next = format!("<{}&page=2>; rel=\"next\"", req.path);
            return respond(
                200,
                &[index, ("Link", &next)],
                serde_json::to_vec(&pages[0]).unwrap(),
            );
        }
        respond(404, &[], "")
    }));
    let opts = options(auth_file(work.path(), &addr, None));
    let registry = Registry::connect_repository(&format!("{addr}/api"), &opts).unwrap();
    let found: Vec<String> = registry
        .referrers(&digest_of(&subject), wanted)
        .unwrap()
        .iter()
        .map(|d| d.digest().to_string())
        .collect();
    assert_eq!(found, [sha256(&[1]), sha256(&[3])]);
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0],
        format!(
            "/v2/api/referrers/{subject}?artifactType=application/vnd.imgfs.test.paged.v1%2Bjson"
        )
    );
    assert_eq!(seen.len(), 2);
}
