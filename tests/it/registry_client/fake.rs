//! The servers these tests write themselves, for what a real registry does not do: a
//! small HTTP/1.1 server a handler answers ([`serve`]), a token front that issues and expires
//! tokens and redirects blobs, a fake registry answering oddly, one breaking blob streams,
//! and one faking range answers. Each lives as long as the test process.

use super::*;

/// A request as the test servers see it.
pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) headers: HashMap<String, String>,
    /// The head as received, to forward.
    pub(super) head: Vec<String>,
    pub(super) body: Vec<u8>,
}

/// What a test server does with a request.
pub(super) enum Reply {
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

pub(super) fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Reply {
    Reply::Respond {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.into(),
    }
}

pub(super) type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A small HTTP/1.1 server on loopback, one request per connection; it lives as long as the
/// test process (its thread blocks in accept).
pub(super) fn serve(handler: Handler) -> String {
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

pub(super) fn handle(conn: TcpStream, handler: &dyn Fn(&Request) -> Reply) -> std::io::Result<()> {
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
pub(super) struct TokenFront {
    pub(super) addr: String,
    pub(super) generation: AtomicUsize,
    pub(super) tokens_issued: AtomicUsize,
    pub(super) redirected: AtomicUsize,
    pub(super) redirected_with_auth: AtomicUsize,
}

pub(super) fn token_front(registry: &str) -> Arc<TokenFront> {
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

/// A registry that answers what real ones sometimes do.
pub(super) fn fake_registry(calls: Arc<AtomicUsize>) -> String {
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

/// A registry whose blob connections break: `resume` breaks once and then ignores `Range`,
/// `badrange` answers the resumption with the wrong part, `dead` never sends a byte,
/// `expired` redirects to storage that refuses the link.
pub(super) fn breaking_registry(
    layer: Vec<u8>,
    seen: Arc<std::sync::Mutex<Vec<Request>>>,
) -> String {
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

/// A registry whose ranged blob answers are busy, dropped, too long or without their range.
pub(super) fn ranges_faker(
    blob: Vec<u8>,
    calls: Arc<std::sync::Mutex<HashMap<String, usize>>>,
) -> String {
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
