//! Images in a registry (`docker://HOST[:PORT]/NAME[:TAG|@DIGEST]`), read over the
//! distribution API as docker reads them.
//!
//! [`open`] takes the reference as typed, finds the registry (a name without a host is Docker
//! Hub's, single names under `library/`), fetches the manifest the tag or digest names and
//! hands it to [`manifest::resolve`], which follows an index to the platform's manifest and
//! reads the config through [`Registry`]'s [`Documents`]. Layers are opened by digest
//! ([`LayerSource::open_layer`]) as streams checked against their digest and size.
//!
//! For lazy mounts and for imgfs's own artifacts, a [`Registry`] is also made for a repository
//! alone ([`Registry::connect_repository`]): it reads byte ranges of a blob
//! ([`Registry::fetch_ranges`], the answers parsed in the `ranges` submodule, whatever shape a
//! server gives them), small documents by digest, and pushes blobs, manifests and referrers
//! (the `push` submodule), keeping the referrers tag fallback where a registry lacks the API.
//!
//! What it guarantees: every document is bounded and verified (the top manifest against the
//! digest it was asked by, or the registry's `Docker-Content-Digest`); a blob stream that breaks
//! is resumed from the byte it broke at (`Range`), so its hash runs on unbroken; transient
//! failures (5xx, 429, a dropped connection) are retried a bounded number of times with growing
//! pauses; `Authorization` goes only to the registry itself, never to a host it redirects to.
//! Loopback registries, and any when TLS verification is off, are tried over unverified HTTPS
//! and then plain HTTP, as docker treats insecure registries. Credentials are looked up only
//! when a registry asks (the `auth` submodule), and never appear in a message.

mod auth;
mod push;
mod ranges;

use std::io::{self, Read};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use oci_spec::image::{Descriptor, Digest};
use parking_lot::Mutex;
use ureq::http::{Response, Uri};
use ureq::{Body, BodyReader};

use self::auth::{Challenge, Secret, printable};
use super::digest::{self, Verified};
use super::manifest::{self, Documents, MAX_DOCUMENT};
use super::{Image, Layer, LayerSource, Platform, SourceError};

/// Where a reference without a registry host is pulled from.
const DOCKER_HUB: &str = "registry-1.docker.io";
/// The name references use for Docker Hub.
const DOCKER_HUB_NAME: &str = "docker.io";
/// Docker Hub's single-component names live under this namespace.
const OFFICIAL_NAMESPACE: &str = "library/";
/// The tag a reference without tag or digest means.
const DEFAULT_TAG: &str = "latest";
/// Longest repository name the distribution spec allows.
const MAX_NAME: usize = 255;
/// Longest tag the distribution spec allows.
const MAX_TAG: usize = 128;
/// Redirects followed for one request: registries redirect a blob once, to its storage.
const MAX_REDIRECTS: u32 = 5;
/// Longest wait for a TCP connection and TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a response's headers once the request is sent.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest silence inside a body before the stream counts as broken (and is resumed).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the HTTPS probe of a registry that may only speak HTTP: a plain HTTP
/// server answers a TLS hello at once with an error.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two tries, whatever `Retry-After` asks for.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// Most bytes of an error answer read for its message.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// Largest token service answer read: tokens are a few kB.
const MAX_TOKEN_BODY: u64 = 1 << 20;
/// Most ranges asked for in one request: their `Range` header stays under 1 kB (a range is up
/// to ~40 bytes), far below the 4-8 kB header limits of proxies and CDNs, and a server's
/// multipart answer stays a few dozen parts.
pub const MAX_RANGES_PER_REQUEST: usize = 24;
/// The client the token service is told about (OAuth2 `client_id`).
const CLIENT_ID: &str = "imgfs";
const USER_AGENT: &str = concat!("imgfs/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("docker://{reference}: {why}")]
    Reference { reference: String, why: String },
    #[error("{what}: cannot connect to {host}{}: {source}", tries_note(*tries))]
    Connect {
        what: String,
        host: String,
        tries: u32,
        source: io::Error,
    },
    #[error("{what}: {url}{}: {source}", tries_note(*tries))]
    Transport {
        what: String,
        url: String,
        tries: u32,
        source: io::Error,
    },
    #[error("{what}: {message} ({status})")]
    NotFound {
        what: String,
        status: u16,
        message: String,
    },
    #[error("{what}: {host} refused the credentials configured for it ({status})")]
    Refused {
        what: String,
        host: String,
        status: u16,
    },
    #[error(
        "{what}: {host} asks for credentials and none are configured for it ({status}); log in \
         with `docker login {host}`, or name a file with REGISTRY_AUTH_FILE"
    )]
    NoCredentials {
        what: String,
        host: String,
        status: u16,
    },
    #[error("{what}: {host} denied access ({status}): {message}")]
    Denied {
        what: String,
        host: String,
        status: u16,
        message: String,
    },
    #[error("{what}: {host} answered {status}{}: {message}", tries_note(*tries))]
    Status {
        what: String,
        host: String,
        status: u16,
        tries: u32,
        message: String,
    },
    #[error("{what}: {host} asks for an authentication imgfs does not speak: '{challenge}'")]
    Challenge {
        what: String,
        host: String,
        challenge: String,
    },
    #[error("{what}: the token service {realm} refused the credentials for {host} ({status})")]
    TokenRefused {
        what: String,
        realm: String,
        host: String,
        status: u16,
    },
    #[error("{what}: the token service {realm} answered {status}: {message}")]
    TokenStatus {
        what: String,
        realm: String,
        status: u16,
        message: String,
    },
    #[error("{what}: the token service {realm} gave no usable token: {why}")]
    Token {
        what: String,
        realm: String,
        why: String,
    },
    #[error(
        "{what}: the credentials for {host} would be sent unencrypted to {realm}; turn TLS \
         verification off to allow it"
    )]
    PlainText {
        what: String,
        host: String,
        realm: String,
    },
    #[error("{what}: the manifest is larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: the manifest's digest is {actual} but {against} says {expected}")]
    ManifestDigest {
        what: String,
        against: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{what}: {why}")]
    Range { what: String, why: String },
    #[error("{what}: reading {ranges}: the connection broke {tries} times: {source}")]
    RangesBroken {
        what: String,
        ranges: String,
        tries: u32,
        source: io::Error,
    },
    #[error("{what}: {size} bytes, more than the {limit} read whole")]
    Oversized { what: String, size: u64, limit: u64 },
    #[error("{what}: {source}")]
    Content {
        what: String,
        source: digest::DigestError,
    },
    #[error("{what}: {source}")]
    Body { what: String, source: io::Error },
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
    #[error("{what}: redirected more than {MAX_REDIRECTS} times")]
    Redirects { what: String },
    #[error("{what}: cannot follow the redirect to '{location}'")]
    Location { what: String, location: String },
    #[error("{what}: the stream broke at byte {offset}, {tries} times without progress: {source}")]
    Broken {
        what: String,
        offset: u64,
        tries: u32,
        source: io::Error,
    },
    #[error("{path}: {source}")]
    AuthFile { path: PathBuf, source: io::Error },
    #[error("{path}: not a credentials file: {source}")]
    AuthJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: the credentials for {host} cannot be used: {why}")]
    AuthEntry {
        path: PathBuf,
        host: String,
        why: &'static str,
    },
    #[error("{helper}: credentials for {host}: {why}")]
    Helper {
        helper: String,
        host: String,
        why: String,
    },
}

fn tries_note(tries: u32) -> String {
    if tries > 1 {
        format!(" ({tries} tries)")
    } else {
        String::new()
    }
}

/// How often and how patiently a failed request is tried again.
#[derive(Clone, Debug)]
pub struct Retry {
    /// Tries in all, the first included.
    pub tries: u32,
    /// The pause after the first failure; each next one doubles, up to 8 s.
    pub first_delay: Duration,
}

impl Default for Retry {
    /// Five tries over about 15 s (pauses of 1, 2, 4 and 8 s): long enough for a registry
    /// to restart, short enough that a dead one is reported soon.
    fn default() -> Retry {
        Retry {
            tries: 5,
            first_delay: Duration::from_secs(1),
        }
    }
}

impl Retry {
    /// The pause after the `failures`-th failure in a row, or what the server asked for.
    fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let doubled = self
            .first_delay
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        retry_after.unwrap_or(doubled).min(MAX_DELAY)
    }
}

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Which image of an index to take.
    pub platform: Platform,
    /// Verify TLS certificates and never fall back to plain HTTP (loopback registries are
    /// insecure anyway, as docker treats them).
    pub tls_verify: bool,
    /// Read credentials from this file only (as `--authfile` does), instead of
    /// `$REGISTRY_AUTH_FILE` and docker's config.
    pub auth_file: Option<PathBuf>,
    pub retry: Retry,
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            platform: Platform::host(),
            tls_verify: true,
            auth_file: None,
            retry: Retry::default(),
        }
    }
}

/// A registry reference, normalized as docker normalizes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `HOST[:PORT]` as URLs take it (`registry-1.docker.io` for Docker Hub).
    pub registry: String,
    /// The repository path (`library/debian`).
    pub repository: String,
    pub tag: Option<String>,
    /// When given, the manifest fetched must have this digest (a tag beside it is ignored).
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `HOST[:PORT]/NAME[:TAG][@DIGEST]` or a Docker Hub name (`debian`, `user/app:1`).
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        let bad = |why: &str| RegistryError::Reference {
            reference: s.to_string(),
            why: why.to_string(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(digest::parse(d).map_err(|e| bad(&e.to_string()))?),
            ),
            None => (s, None),
        };
        let last = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last..].rfind(':') {
            Some(i) => (&rest[..last + i], Some(&rest[last + i + 1..])),
            None => (rest, None),
        };
        let (domain, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first, path.to_string())
            }
            _ => (DOCKER_HUB_NAME, name.to_string()),
        };
        let hub = matches!(domain, DOCKER_HUB_NAME | "index.docker.io");
        let repository = if hub && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}{path}")
        } else {
            path
        };
        if !valid_host(domain) {
            return Err(bad(&format!("'{domain}' is not a registry host")));
        }
        if repository.len() > MAX_NAME || !repository.split('/').all(valid_component) {
            return Err(bad(
                "the name must be lowercase letters, digits and separators (. _ __ -) between \
                 slashes",
            ));
        }
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(bad(&format!(
                "'{tag}' is not a tag (up to {MAX_TAG} letters, digits, _ . -)"
            )));
        }
        Ok(Reference {
            registry: if hub { DOCKER_HUB } else { domain }.to_string(),
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// What `/manifests/` is asked for: the digest when there is one, else the tag.
    fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// Whether the registry is on this machine (docker talks to those without TLS checks).
    pub fn is_loopback(&self) -> bool {
        let host = host_of(&self.registry);
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// The host of `HOST[:PORT]` or `[V6][:PORT]`.
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn valid_host(authority: &str) -> bool {
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => (&authority[..=i], authority[i + 1..].strip_prefix(':')),
            None => return false,
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    };
    let port_ok = match port {
        Some(p) => !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok(),
        None => !authority.ends_with(':'),
    };
    host_ok && port_ok
}

/// A path component: `[a-z0-9]+` runs joined by `.`, `_`, `__` or runs of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    t.len() <= MAX_TAG && t.starts_with(word) && t.chars().all(|c| word(c) || c == '.' || c == '-')
}

/// What a request fetches: it sets the headers and the words of a 404.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Manifest,
    Blob,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Post,
    Put,
}

/// The answers a plain GET takes.
const FETCHED: &[u16] = &[200, 206];

/// One request to the registry, as [`Registry::exchange`] sends it.
#[derive(Clone, Copy, Debug)]
struct Call<'a> {
    method: Method,
    kind: Kind,
    /// The `Range` value, if any.
    range: Option<&'a str>,
    /// The content type and body of a PUT or POST.
    body: Option<(&'a str, &'a [u8])>,
    /// The statuses handed back as answers; every other one is an error.
    ok: &'a [u16],
    /// Whether the request writes to the repository (its token must allow `push`).
    push: bool,
}

impl Call<'_> {
    fn get(kind: Kind) -> Call<'static> {
        Call {
            method: Method::Get,
            kind,
            range: None,
            body: None,
            ok: FETCHED,
            push: false,
        }
    }
}

/// A client of one repository in a registry: reads its documents, layers and byte ranges of
/// blobs, and pushes to it.
pub struct Registry {
    /// `docker://` and the reference as typed: names the image in messages.
    what: String,
    reference: Reference,
    /// `SCHEME://HOST[:PORT]`.
    base: String,
    agent: ureq::Agent,
    insecure: bool,
    retry: Retry,
    auth_file: Option<PathBuf>,
    auth: Mutex<AuthState>,
    /// Whether the registry has answered once: from then on a refused connection means it is
    /// restarting, and is tried again.
    answered: AtomicBool,
    /// Whether it refused a request for several ranges at once: ask one range at a time.
    single_ranges: AtomicBool,
    /// Whether it answered a ranged request with the whole blob: ask once for all ranges.
    ignores_ranges: AtomicBool,
}

#[derive(Default)]
struct AuthState {
    /// The `Authorization` value sent to the registry.
    header: Option<String>,
    /// Counts changes of `header`, so that a thread refused with an old token does not
    /// fetch a new one when another thread has already.
    generation: u64,
    /// The credentials, once looked up: `Some(None)` when there are none.
    secret: Option<Option<Secret>>,
}

/// A manifest as fetched: its bytes, media type (when the answer says) and digest.
type Manifest = (Vec<u8>, Option<String>, String);

/// One exchange's result before it is judged: an answer (and, when a host the registry
/// redirected to gave it, that host) or a transport failure.
enum Attempt {
    Answer(Response<Body>, Option<String>),
    Failed(ureq::Error),
}

/// Opens the image `reference` (what followed `docker://`) and resolves it for the platform.
pub fn open(reference: &str, options: &RegistryOptions) -> Result<(Image, Registry), SourceError> {
    let parsed = Reference::parse(reference)?;
    let registry = Registry::connect(format!("docker://{reference}"), parsed, options)?;
    let (bytes, media_type, digest) = registry.top_manifest()?;
    let image = manifest::resolve(
        &registry,
        &registry.what,
        media_type.as_deref(),
        bytes,
        digest,
        &options.platform,
    )?;
    Ok((image, registry))
}

impl Registry {
    /// Makes the client and, for an insecure registry, finds whether it speaks HTTPS.
    fn connect(
        what: String,
        reference: Reference,
        options: &RegistryOptions,
    ) -> Result<Registry, RegistryError> {
        let loopback = reference.is_loopback();
        let insecure = loopback || !options.tls_verify;
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(insecure)
            .build();
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(USER_AGENT)
            .accept_encoding("identity")
            .tls_config(tls)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT));
        if loopback {
            // As Go's clients do: no proxy stands between us and this machine.
            config = config.proxy(None);
        }
        let agent = config.build().new_agent();
        let scheme = if insecure {
            probe(&agent, &what, &reference.registry)?
        } else {
            "https"
        };
        Ok(Registry {
            base: format!("{scheme}://{}", reference.registry),
            what,
            reference,
            agent,
            insecure,
            retry: options.retry.clone(),
            auth_file: options.auth_file.clone(),
            auth: Mutex::new(AuthState::default()),
            answered: AtomicBool::new(false),
            single_ranges: AtomicBool::new(false),
            ignores_ranges: AtomicBool::new(false),
        })
    }

    /// The manifest or index the reference names: its bytes, media type and digest.
    fn top_manifest(&self) -> Result<Manifest, RegistryError> {
        let target = self.reference.target();
        self.manifest_at(&self.what, &target, self.reference.digest.as_ref(), false)?
            .ok_or_else(|| unknown_manifest(&self.what))
    }

    /// The manifest `/manifests/TARGET` names: its bytes, media type (from the answer's
    /// `Content-Type`, when it says something) and digest, checked against `expected` and
    /// the registry's `Docker-Content-Digest`. With `missing_ok`, a 404 is `None`.
    fn manifest_at(
        &self,
        what: &str,
        target: &str,
        expected: Option<&Digest>,
        missing_ok: bool,
    ) -> Result<Option<Manifest>, RegistryError> {
        let path = format!("/v2/{}/manifests/{target}", self.reference.repository);
        let ok: &[u16] = if missing_ok {
            &[200, 206, 404]
        } else {
            FETCHED
        };
        let call = Call {
            ok,
            ..Call::get(Kind::Manifest)
        };
        let resp = self.exchange(what, &path, &call)?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let media_type = header("content-type")
            .map(|ct| ct.split(';').next().unwrap_or_default().trim().to_string())
            // A generic type says nothing: the document's own mediaType field will.
            .filter(|ct| !matches!(ct.as_str(), "" | "application/json" | "text/plain"));
        let announced = header("docker-content-digest");
        let bytes = self.read_bounded(what, &path, resp)?;
        let mismatch = |against, expected: &Digest| {
            let actual = match digest::Hasher::new(expected) {
                Ok(mut h) => {
                    h.update(&bytes);
                    h.finish()
                }
                Err(_) => digest::sha256(&bytes),
            };
            RegistryError::ManifestDigest {
                what: what.to_string(),
                against,
                expected: expected.to_string(),
                actual,
            }
        };
        if let Some(expected) = expected
            && digest::verify(expected, &bytes).is_err()
        {
            return Err(mismatch("the reference", expected));
        }
        match announced.as_deref().map(digest::parse) {
            Some(Ok(expected)) if digest::verify(&expected, &bytes).is_err() => {
                return Err(mismatch("its Docker-Content-Digest", &expected));
            }
            Some(Err(e)) => log::debug!("{what}: ignoring Docker-Content-Digest: {e}"),
            _ => {}
        }
        let digest = match expected {
            Some(d) => d.to_string(),
            None => digest::sha256(&bytes),
        };
        Ok(Some((bytes, media_type, digest)))
    }

    /// A document-sized answer's body, at most [`MAX_DOCUMENT`] bytes.
    fn read_bounded(
        &self,
        what: &str,
        path: &str,
        resp: Response<Body>,
    ) -> Result<Vec<u8>, RegistryError> {
        let too_large = || RegistryError::TooLarge {
            what: what.to_string(),
            limit: MAX_DOCUMENT,
        };
        if resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.parse::<u64>().ok())
            .is_some_and(|l| l > MAX_DOCUMENT)
        {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        resp.into_body()
            .into_reader()
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| RegistryError::Transport {
                what: what.to_string(),
                url: format!("{}{path}", self.base),
                tries: 1,
                source,
            })?;
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(too_large());
        }
        Ok(bytes)
    }

    fn host(&self) -> &str {
        &self.reference.registry
    }

    /// One request to the registry (`target` is a path under it, or a URL it gave), answered
    /// with one of `call.ok`: authenticates when asked, follows redirects, goes back to the
    /// registry once when the storage it redirected to refuses a link (a signed URL that
    /// expired), tries again on transient failures; every other answer is an error.
    fn exchange(
        &self,
        what: &str,
        target: &str,
        call: &Call<'_>,
    ) -> Result<Response<Body>, RegistryError> {
        let url = if target.starts_with("http://") || target.starts_with("https://") {
            target.to_string()
        } else {
            format!("{}{target}", self.base)
        };
        let mut reauthenticated = false;
        let mut reresolved = false;
        let mut failures = 0u32;
        loop {
            let (generation, authorization) = {
                let state = self.auth.lock();
                (state.generation, state.header.clone())
            };
            let attempt = self.follow(what, &url, call, authorization.as_deref())?;
            let retry_after = match attempt {
                Attempt::Answer(resp, elsewhere) => {
                    self.answered.store(true, Ordering::Relaxed);
                    let status = resp.status().as_u16();
                    if call.ok.contains(&status) {
                        return Ok(resp);
                    }
                    if status == 401 && elsewhere.is_none() && !reauthenticated {
                        // Anonymous first; a refused token once more (it may have expired).
                        reauthenticated = true;
                        self.authenticate(what, &resp, generation, call.push)?;
                        continue;
                    }
                    if matches!(status, 401 | 403 | 410) && elsewhere.is_some() && !reresolved {
                        reresolved = true;
                        log::debug!("{what}: storage refused the link ({status}); asking again");
                        continue;
                    }
                    if !(retryable(status) && failures + 1 < self.retry.tries) {
                        return Err(self.status_error(
                            what,
                            call.kind,
                            resp,
                            elsewhere,
                            failures + 1,
                        ));
                    }
                    log::debug!("{what}: {url} answered {status}; trying again");
                    retry_after(&resp)
                }
                Attempt::Failed(e) => {
                    if !(self.transient(&e) && failures + 1 < self.retry.tries) {
                        return Err(self.transport_error(what, &url, e, failures + 1));
                    }
                    log::debug!("{what}: {url}: {e}; trying again");
                    None
                }
            };
            failures += 1;
            std::thread::sleep(self.retry.delay(failures, retry_after));
        }
    }

    /// Sends a request and follows its redirects; `Authorization` only goes to the registry.
    fn follow(
        &self,
        what: &str,
        url: &str,
        call: &Call<'_>,
        authorization: Option<&str>,
    ) -> Result<Attempt, RegistryError> {
        let base: Uri = self.base.parse().map_err(|_| RegistryError::Location {
            what: what.to_string(),
            location: self.base.clone(),
        })?;
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let uri: Uri = url.parse().map_err(|_| RegistryError::Location {
                what: what.to_string(),
                location: printable(&url),
            })?;
            let to_registry = same_origin(&uri, &base);
            let authorization = authorization.filter(|_| to_registry);
            let result = match call.method {
                Method::Get => decorate(self.agent.get(&url), call, authorization).call(),
                Method::Head => decorate(self.agent.head(&url), call, authorization).call(),
                Method::Post | Method::Put => {
                    let req = match call.method {
                        Method::Post => self.agent.post(&url),
                        _ => self.agent.put(&url),
                    };
                    let req = decorate(req, call, authorization);
                    match call.body {
                        Some((content_type, body)) => {
                            req.header("Content-Type", content_type).send(body)
                        }
                        None => req.send_empty(),
                    }
                }
            };
            let resp = match result {
                Ok(resp) => resp,
                Err(e) => return Ok(Attempt::Failed(e)),
            };
            if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                let elsewhere = if to_registry {
                    None
                } else {
                    Some(uri.authority().map(|a| a.to_string()).unwrap_or_default())
                };
                return Ok(Attempt::Answer(resp, elsewhere));
            }
            let location = resp
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or_default();
            url = resolve_location(&uri, location).ok_or_else(|| RegistryError::Location {
                what: what.to_string(),
                location: printable(location),
            })?;
            log::debug!("{what}: redirected to another location");
        }
        Err(RegistryError::Redirects {
            what: what.to_string(),
        })
    }

    /// Answers a 401: looks the credentials up (once) and makes the `Authorization` value
    /// the challenge asks for (a token that allows `push` too when `push`).
    fn authenticate(
        &self,
        what: &str,
        resp: &Response<Body>,
        generation: u64,
        push: bool,
    ) -> Result<(), RegistryError> {
        let mut state = self.auth.lock();
        if state.generation != generation {
            return Ok(()); // another request authenticated meanwhile
        }
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(auth::parse_challenges)
            .collect();
        let secret = match &state.secret {
            Some(secret) => secret.clone(),
            None => {
                let secret = auth::credentials(self.host(), self.auth_file.as_deref())?;
                state.secret = Some(secret.clone());
                secret
            }
        };
        let header = if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            format!(
                "Bearer {}",
                self.token(what, bearer, secret.as_ref(), push)?
            )
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            match secret {
                Some(Secret::Basic { username, password }) => {
                    Secret::basic_header(&username, &password)
                }
                _ => {
                    return Err(RegistryError::NoCredentials {
                        what: what.to_string(),
                        host: self.host().to_string(),
                        status: 401,
                    });
                }
            }
        } else {
            let raw = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(none)");
            return Err(RegistryError::Challenge {
                what: what.to_string(),
                host: self.host().to_string(),
                challenge: printable(raw),
            });
        };
        state.header = Some(header);
        state.generation += 1;
        Ok(())
    }

    /// Trades the credentials (or nothing) for a token at the challenge's realm.
    fn token(
        &self,
        what: &str,
        challenge: &Challenge,
        secret: Option<&Secret>,
        push: bool,
    ) -> Result<String, RegistryError> {
        let realm = challenge.param("realm").unwrap_or_default().to_string();
        let realm_uri: Option<Uri> = realm.parse().ok();
        let Some(realm_uri) = realm_uri.filter(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
        }) else {
            return Err(RegistryError::Challenge {
                what: what.to_string(),
                host: self.host().to_string(),
                challenge: format!("Bearer realm=\"{}\"", printable(&realm)),
            });
        };
        let realm_host = realm_uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let realm_loopback = Reference {
            registry: realm_host.clone(),
            repository: String::new(),
            tag: None,
            digest: None,
        }
        .is_loopback();
        if secret.is_some()
            && realm_uri.scheme_str() == Some("http")
            && !self.insecure
            && !realm_loopback
        {
            return Err(RegistryError::PlainText {
                what: what.to_string(),
                host: self.host().to_string(),
                realm: realm_host,
            });
        }
        let scope = token_scope(challenge.param("scope"), &self.reference.repository, push);
        let scope = scope.as_str();
        let service = challenge.param("service");
        let mut failures = 0u32;
        let resp = loop {
            let result = match secret {
                Some(Secret::IdentityToken(refresh)) => {
                    let mut form = vec![
                        ("grant_type", "refresh_token"),
                        ("refresh_token", refresh.as_str()),
                        ("client_id", CLIENT_ID),
                        ("scope", scope),
                    ];
                    if let Some(service) = service {
                        form.push(("service", service));
                    }
                    self.agent.post(&realm).send_form(form)
                }
                _ => {
                    let mut req = self.agent.get(&realm);
                    if let Some(service) = service {
                        req = req.query("service", service);
                    }
                    for s in scope.split(' ').filter(|s| !s.is_empty()) {
                        req = req.query("scope", s);
                    }
                    if let Some(Secret::Basic { username, password }) = secret {
                        req = req.header("Authorization", Secret::basic_header(username, password));
                    }
                    req.call()
                }
            };
            let retry_after = match result {
                Ok(resp) if retryable(resp.status().as_u16()) => retry_after(&resp),
                Ok(resp) => break resp,
                Err(e) if self.transient(&e) => None,
                Err(e) => {
                    return Err(self.transport_error(what, &realm, e, failures + 1));
                }
            };
            failures += 1;
            if failures >= self.retry.tries {
                return Err(RegistryError::TokenStatus {
                    what: what.to_string(),
                    realm: realm_host,
                    status: 0,
                    message: format!("no answer after {failures} tries"),
                });
            }
            std::thread::sleep(self.retry.delay(failures, retry_after));
        };
        let status = resp.status().as_u16();
        match status {
            200 => {}
            401 | 403 if secret.is_some() => {
                return Err(RegistryError::TokenRefused {
                    what: what.to_string(),
                    realm: realm_host,
                    host: self.host().to_string(),
                    status,
                });
            }
            401 | 403 => {
                return Err(RegistryError::NoCredentials {
                    what: what.to_string(),
                    host: self.host().to_string(),
                    status,
                });
            }
            _ => {
                return Err(RegistryError::TokenStatus {
                    what: what.to_string(),
                    realm: realm_host,
                    status,
                    message: error_message(resp),
                });
            }
        }
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .take(MAX_TOKEN_BODY)
            .read_to_end(&mut body)
            .map_err(|e| RegistryError::Token {
                what: what.to_string(),
                realm: realm_host.clone(),
                why: e.to_string(),
            })?;
        auth::token_from(&body).map_err(|why| RegistryError::Token {
            what: what.to_string(),
            realm: realm_host,
            why,
        })
    }

    /// Whether a transport failure may pass if tried again.
    fn transient(&self, e: &ureq::Error) -> bool {
        let answered = self.answered.load(Ordering::Relaxed);
        match e {
            ureq::Error::Io(io) => match io.kind() {
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotConnected => answered,
                k => dropped(k),
            },
            ureq::Error::ConnectionFailed => answered,
            ureq::Error::Timeout(_) | ureq::Error::Protocol(_) => true,
            _ => false,
        }
    }

    fn transport_error(&self, what: &str, url: &str, e: ureq::Error, tries: u32) -> RegistryError {
        // Before the registry ever answered, what is neither a dropped connection nor a
        // garbled answer failed to reach it: no such name, no route, refused, a TLS handshake.
        let first_contact = !self.answered.load(Ordering::Relaxed);
        let connecting = match &e {
            ureq::Error::Io(io) => {
                io.kind() == io::ErrorKind::ConnectionRefused
                    || (first_contact && !dropped(io.kind()))
            }
            ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
            _ => false,
        };
        let host = url
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| self.host().to_string());
        if connecting {
            RegistryError::Connect {
                what: what.to_string(),
                host,
                tries,
                source: e.into_io(),
            }
        } else {
            RegistryError::Transport {
                what: what.to_string(),
                url: url.to_string(),
                tries,
                source: e.into_io(),
            }
        }
    }

    fn status_error(
        &self,
        what: &str,
        kind: Kind,
        resp: Response<Body>,
        elsewhere: Option<String>,
        tries: u32,
    ) -> RegistryError {
        let status = resp.status().as_u16();
        let what = what.to_string();
        if let Some(host) = elsewhere {
            // Blob storage the registry sent us to: its words are its own, not the registry's.
            return RegistryError::Status {
                what,
                host,
                status,
                tries,
                message: error_message(resp),
            };
        }
        let host = self.host().to_string();
        match status {
            401 => {
                let had_credentials = matches!(self.auth.lock().secret, Some(Some(_)));
                if had_credentials {
                    RegistryError::Refused { what, host, status }
                } else {
                    RegistryError::NoCredentials { what, host, status }
                }
            }
            403 => RegistryError::Denied {
                what,
                host,
                status,
                message: error_message(resp),
            },
            404 => {
                let message = registry_message(resp).unwrap_or_else(|| {
                    match kind {
                        Kind::Manifest => "manifest unknown",
                        Kind::Blob => "blob unknown",
                    }
                    .to_string()
                });
                RegistryError::NotFound {
                    what,
                    status,
                    message,
                }
            }
            _ => RegistryError::Status {
                what,
                host,
                status,
                tries,
                message: error_message(resp),
            },
        }
    }

    /// A stream of the blob (or manifest) `digest`, resumed where it breaks.
    fn stream(
        &self,
        what: String,
        kind: Kind,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<Stream<'_>, RegistryError> {
        let dir = match kind {
            Kind::Manifest => "manifests",
            Kind::Blob => "blobs",
        };
        let mut stream = Stream {
            registry: self,
            path: format!("/v2/{}/{dir}/{digest}", self.reference.repository),
            what,
            kind,
            size,
            body: None,
            offset: 0,
            breaks: 0,
        };
        match stream.reconnect() {
            Ok(()) => Ok(stream),
            Err(Reconnect::Failed(e)) => Err(e),
            Err(Reconnect::Broken(source)) => Err(RegistryError::Broken {
                what: stream.what,
                offset: 0,
                tries: 1,
                source,
            }),
        }
    }
}

/// A 404 for a manifest (`manifest_at` gives it as an error already unless asked not to).
fn unknown_manifest(what: &str) -> RegistryError {
    RegistryError::NotFound {
        what: what.to_string(),
        status: 404,
        message: "manifest unknown".into(),
    }
}

/// `req` with the headers `call` asks for, and `authorization` when it goes to the registry.
fn decorate<B>(
    mut req: ureq::RequestBuilder<B>,
    call: &Call<'_>,
    authorization: Option<&str>,
) -> ureq::RequestBuilder<B> {
    req = match call.kind {
        Kind::Manifest => req.header("Accept", manifest::ACCEPT.join(", ")),
        Kind::Blob => req.header("Accept-Encoding", "identity"),
    };
    if let Some(range) = call.range {
        req = req.header("Range", range);
    }
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    req
}

/// The scope a token is asked for: the challenge's (a registry names what the refused request
/// needs), or the repository's; when pushing, `push` is added for the repository, so that one
/// token serves the whole push.
fn token_scope(challenged: Option<&str>, repository: &str, push: bool) -> String {
    let ours = format!("repository:{repository}:");
    let actions = if push { "pull,push" } else { "pull" };
    let Some(challenged) = challenged.filter(|s| !s.trim().is_empty()) else {
        return format!("{ours}{actions}");
    };
    if !push {
        return challenged.to_string();
    }
    let mut found = false;
    let mut scopes: Vec<String> = challenged
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix(&ours) {
            Some(granted) => {
                found = true;
                let mut all: Vec<&str> = granted.split(',').filter(|a| !a.is_empty()).collect();
                for a in ["pull", "push"] {
                    if !all.contains(&a) {
                        all.push(a);
                    }
                }
                format!("{ours}{}", all.join(","))
            }
            None => s.to_string(),
        })
        .collect();
    if !found {
        scopes.push(format!("{ours}{actions}"));
    }
    scopes.join(" ")
}

/// How a group of ranges went.
enum Fetched {
    Done,
    /// The registry refused several ranges at once (with this status).
    SeveralRefused(u16),
}

impl Registry {
    /// A client for the repository of `reference` (what followed `docker://`), without
    /// resolving any manifest.
    pub fn connect_repository(
        reference: &str,
        options: &RegistryOptions,
    ) -> Result<Registry, SourceError> {
        let parsed = Reference::parse(reference)?;
        Ok(Registry::connect(
            format!("docker://{reference}"),
            parsed,
            options,
        )?)
    }

    /// The repository reference as parsed.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Reads the byte ranges `ranges` (sorted, non-overlapping, each non-empty, within
    /// `blob_size`) of blob `digest`: one buffer per range, each exactly the range's length.
    ///
    /// Several ranges go in one request (at most [`MAX_RANGES_PER_REQUEST`]); a registry that
    /// refuses that (400, 416, 501) is asked one range at a time from then on, and one that
    /// answers with the whole blob is asked once for all of them, the blob read only as far
    /// as the last range. The bytes are not checked against the digest (only the whole blob
    /// could be): the caller checks what it builds from them.
    pub fn fetch_ranges(
        &self,
        digest: &Digest,
        blob_size: u64,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Vec<u8>>, RegistryError> {
        let what = format!("{}: blob {digest}", self.what);
        ranges::check(ranges, blob_size).map_err(|why| RegistryError::Range {
            what: what.clone(),
            why,
        })?;
        let mut out = vec![Vec::new(); ranges.len()];
        let mut pos = 0;
        while pos < ranges.len() {
            if self.ignores_ranges.load(Ordering::Relaxed) {
                // One read of the blob's start serves all the rest.
                let rest = &ranges[pos..];
                let hull = ranges::header(std::slice::from_ref(&ranges::hull(rest)));
                self.fetch_group(&what, digest, blob_size, rest, &mut out[pos..], &hull)?;
                break;
            }
            let end = if self.single_ranges.load(Ordering::Relaxed) {
                pos + 1
            } else {
                (pos + MAX_RANGES_PER_REQUEST).min(ranges.len())
            };
            let group = &ranges[pos..end];
            let header = ranges::header(group);
            match self.fetch_group(&what, digest, blob_size, group, &mut out[pos..end], &header)? {
                Fetched::Done => pos = end,
                Fetched::SeveralRefused(status) => {
                    log::debug!(
                        "{what}: {} refuses several ranges at once ({status}); asking one at a \
                         time",
                        self.host()
                    );
                    self.single_ranges.store(true, Ordering::Relaxed);
                }
            }
        }
        Ok(out)
    }

    /// One request for `group` (asked with the `Range` value `header`) into `slots`; a
    /// connection that breaks in the middle is asked again, up to the retry count.
    fn fetch_group(
        &self,
        what: &str,
        digest: &Digest,
        blob_size: u64,
        group: &[std::ops::Range<u64>],
        slots: &mut [Vec<u8>],
        header: &str,
    ) -> Result<Fetched, RegistryError> {
        let path = format!("/v2/{}/blobs/{digest}", self.reference.repository);
        let several = header.contains(',');
        let call = Call {
            range: Some(header),
            ok: if several {
                &[200, 206, 400, 416, 501]
            } else {
                FETCHED
            },
            ..Call::get(Kind::Blob)
        };
        let mut breaks = 0;
        loop {
            let resp = self.exchange(what, &path, &call)?;
            let status = resp.status().as_u16();
            if !matches!(status, 200 | 206) {
                return Ok(Fetched::SeveralRefused(status));
            }
            let fault = match self.collect(resp, group, slots, blob_size) {
                Ok(()) => return Ok(Fetched::Done),
                Err(ranges::Fault::Bad(why)) => {
                    return Err(RegistryError::Range {
                        what: format!("{what}: reading {header}"),
                        why,
                    });
                }
                Err(ranges::Fault::Io(e)) => e,
            };
            breaks += 1;
            if breaks >= self.retry.tries {
                return Err(RegistryError::RangesBroken {
                    what: what.to_string(),
                    ranges: header.to_string(),
                    tries: breaks,
                    source: fault,
                });
            }
            log::debug!("{what}: reading {header}: {fault}; asking again");
            std::thread::sleep(self.retry.delay(breaks, None));
        }
    }

    /// Reads an answer (200 or 206) to a ranged request into `slots`.
    fn collect(
        &self,
        resp: Response<Body>,
        group: &[std::ops::Range<u64>],
        slots: &mut [Vec<u8>],
        blob_size: u64,
    ) -> Result<(), ranges::Fault> {
        use ranges::Fault;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (content_type, content_range) = (header("content-type"), header("content-range"));
        let length = header("content-length").and_then(|l| l.trim().parse::<u64>().ok());
        let whole = resp.status().as_u16() == 200;
        let mut body = io::BufReader::with_capacity(64 << 10, resp.into_body().into_reader());
        let mut collector = ranges::Collector::new(group, slots, blob_size);
        if whole {
            if let Some(length) = length.filter(|&l| l != blob_size) {
                return Err(Fault::Bad(format!(
                    "the whole blob came as {length} bytes, but it has {blob_size}"
                )));
            }
            if !self.ignores_ranges.swap(true, Ordering::Relaxed) {
                log::debug!(
                    "{}: {} ignores Range and sends whole blobs",
                    self.what,
                    self.host()
                );
            }
            let needed = ranges::hull(group).end;
            collector.read_span(0..needed, &mut body)?;
        } else if let Some(boundary) = content_type.as_deref().and_then(ranges::boundary) {
            let boundary = boundary.map_err(Fault::Bad)?;
            ranges::read_multipart(&mut body, &boundary, &mut collector)?;
        } else {
            let value = content_range
                .ok_or_else(|| Fault::Bad("a partial answer without Content-Range".into()))?;
            let part = ranges::content_range(&value).ok_or_else(|| {
                Fault::Bad(format!(
                    "a partial answer with Content-Range '{}'",
                    printable(&value)
                ))
            })?;
            if let Some(length) = length.filter(|&l| l != part.span.end - part.span.start) {
                return Err(Fault::Bad(format!(
                    "a partial answer of {length} bytes for Content-Range '{}'",
                    printable(&value)
                )));
            }
            collector.admit(&part).map_err(Fault::Bad)?;
            collector.read_span(part.span, &mut body)?;
        }
        collector.finish().map_err(Fault::Bad)
    }

    /// A manifest by digest, bounded and verified against the digest; its media type when
    /// the answer or the document states one.
    pub fn manifest_by_digest(
        &self,
        digest: &Digest,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let what = format!("{}: manifest {digest}", self.what);
        let (bytes, media_type, _) = self
            .manifest_at(&what, digest.as_ref(), Some(digest), false)?
            .ok_or_else(|| unknown_manifest(&what))?;
        let media_type = media_type.or_else(|| {
            let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            v.get("mediaType")?.as_str().map(str::to_string)
        });
        Ok((bytes, media_type))
    }

    /// A whole small blob by digest, verified, refused when `size` is more than `max`.
    pub fn blob_bytes(
        &self,
        digest: &Digest,
        size: u64,
        max: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("{}: blob {digest}", self.what);
        if size > max {
            return Err(RegistryError::Oversized {
                what,
                size,
                limit: max,
            });
        }
        let stream = self.stream(what.clone(), Kind::Blob, digest, Some(size))?;
        let mut verified =
            Verified::new(stream, digest, Some(size)).map_err(|source| RegistryError::Content {
                what: what.clone(),
                source,
            })?;
        let mut out = Vec::with_capacity(size as usize);
        verified.read_to_end(&mut out).map_err(|e| {
            let e = match e.downcast::<RegistryError>() {
                Ok(inner) => return inner,
                Err(e) => e,
            };
            match e.downcast::<digest::DigestError>() {
                Ok(source) => RegistryError::Content { what, source },
                Err(source) => RegistryError::Body { what, source },
            }
        })?;
        Ok(out)
    }
}

/// Finds whether an insecure registry speaks HTTPS (without checking its certificate), as
/// docker does; a registry that cannot be reached at all is reported here.
fn probe(agent: &ureq::Agent, what: &str, authority: &str) -> Result<&'static str, RegistryError> {
    let url = format!("https://{authority}/v2/");
    let result = agent
        .get(&url)
        .config()
        .timeout_global(Some(PROBE_TIMEOUT))
        .build()
        .call();
    match result {
        Ok(_) => Ok("https"),
        Err(e @ (ureq::Error::HostNotFound | ureq::Error::ConnectionFailed)) => {
            Err(RegistryError::Connect {
                what: what.to_string(),
                host: authority.to_string(),
                tries: 1,
                source: e.into_io(),
            })
        }
        Err(ureq::Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(RegistryError::Connect {
                what: what.to_string(),
                host: authority.to_string(),
                tries: 1,
                source: e,
            })
        }
        Err(e) => {
            log::debug!("{what}: {authority} does not speak HTTPS ({e}); using HTTP");
            Ok("http")
        }
    }
}

/// Whether an I/O error is a connection that dropped or stalled (worth another try), rather
/// than one that could not be made.
fn dropped(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Answers worth a second try: the server is busy, restarting or throttling.
fn retryable(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

/// `Retry-After` in seconds (the HTTP-date form is rare from registries and not read).
fn retry_after(resp: &Response<Body>) -> Option<Duration> {
    resp.headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn same_origin(a: &Uri, b: &Uri) -> bool {
    let port = |u: &Uri| {
        u.port_u16().or(match u.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        })
    };
    a.scheme_str() == b.scheme_str()
        && a.host().map(str::to_ascii_lowercase) == b.host().map(str::to_ascii_lowercase)
        && port(a) == port(b)
}

/// The absolute URL a `Location` names, relative to the request's `base`.
fn resolve_location(base: &Uri, location: &str) -> Option<String> {
    let location = location.trim();
    if location.is_empty() {
        return None;
    }
    let resolved = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{}://{rest}", base.scheme_str()?)
    } else {
        let origin = format!("{}://{}", base.scheme_str()?, base.authority()?);
        if location.starts_with('/') {
            format!("{origin}{location}")
        } else {
            let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
            format!("{origin}{dir}/{location}")
        }
    };
    resolved.parse::<Uri>().ok().map(|_| resolved)
}

/// The first message of a distribution-API error body (`{"errors":[{"message":…}]}`).
fn registry_message(resp: Response<Body>) -> Option<String> {
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut body)
        .ok()?;
    parse_registry_message(&body)
}

fn parse_registry_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let first = v.get("errors")?.get(0)?;
    let message = first
        .get("message")
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty())
        .or_else(|| first.get("code").and_then(|c| c.as_str()))?;
    Some(printable(message))
}

/// The registry's words for an error answer, or the status's reason.
fn error_message(resp: Response<Body>) -> String {
    let reason = resp
        .status()
        .canonical_reason()
        .unwrap_or("unexpected answer")
        .to_lowercase();
    registry_message(resp).unwrap_or(reason)
}

/// The first byte of a `Content-Range: bytes FIRST-LAST/TOTAL`.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split(['-', '/']).next()?.trim().parse().ok()
}

/// Why a stream could not be (re)started.
enum Reconnect {
    /// The registry cannot give it (an error answer, tries exhausted): give up.
    Failed(RegistryError),
    /// The connection broke again: counts as one more break.
    Broken(io::Error),
}

/// A blob's bytes in order, across connections: when one breaks, the next asks for the
/// rest with `Range` (or, when the registry ignores it, steps over what was read).
struct Stream<'r> {
    registry: &'r Registry,
    what: String,
    path: String,
    kind: Kind,
    size: Option<u64>,
    body: Option<BodyReader<'static>>,
    /// Bytes handed on so far.
    offset: u64,
    /// Breaks in a row without a byte read.
    breaks: u32,
}

impl Stream<'_> {
    fn reconnect(&mut self) -> Result<(), Reconnect> {
        let what = if self.offset == 0 {
            self.what.clone()
        } else {
            format!("{}: resuming at byte {}", self.what, self.offset)
        };
        let range = format!("bytes={}-", self.offset);
        let call = Call {
            range: Some(&range).filter(|_| self.offset > 0).map(String::as_str),
            ..Call::get(self.kind)
        };
        let resp = self
            .registry
            .exchange(&what, &self.path, &call)
            .map_err(Reconnect::Failed)?;
        let partial = resp.status().as_u16() == 206;
        let range = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = resp.into_body().into_reader();
        if partial {
            let start = range.as_deref().and_then(content_range_start);
            if start != Some(self.offset) {
                return Err(Reconnect::Failed(RegistryError::Range {
                    what,
                    why: format!(
                        "asked for bytes from {}, got Content-Range '{}'",
                        self.offset,
                        printable(range.as_deref().unwrap_or("(none)"))
                    ),
                }));
            }
        } else if self.offset > 0 {
            // The whole blob again: step over what was handed on already.
            let skipped = io::copy(&mut (&mut body).take(self.offset), &mut io::sink())
                .map_err(Reconnect::Broken)?;
            if skipped < self.offset {
                return Err(Reconnect::Broken(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the blob ended before the bytes already read",
                )));
            }
        }
        self.body = Some(body);
        Ok(())
    }

    /// Counts a break; fails once there were too many in a row.
    fn broke(&mut self, e: io::Error) -> io::Result<()> {
        self.body = None;
        self.breaks += 1;
        if self.breaks >= self.registry.retry.tries {
            return Err(io::Error::other(RegistryError::Broken {
                what: self.what.clone(),
                offset: self.offset,
                tries: self.breaks,
                source: e,
            }));
        }
        log::debug!(
            "{}: the stream broke at byte {} ({e}); resuming",
            self.what,
            self.offset
        );
        std::thread::sleep(self.registry.retry.delay(self.breaks, None));
        Ok(())
    }
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(body) = self.body.as_mut() else {
                match self.reconnect() {
                    Ok(()) => {}
                    Err(Reconnect::Failed(e)) => return Err(io::Error::other(e)),
                    Err(Reconnect::Broken(e)) => self.broke(e)?,
                }
                continue;
            };
            match body.read(buf) {
                Ok(0) => match self.size {
                    Some(size) if self.offset < size => self.broke(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the connection closed {} bytes early", size - self.offset),
                    ))?,
                    _ => return Ok(0),
                },
                Ok(n) => {
                    self.offset += n as u64;
                    self.breaks = 0;
                    return Ok(n);
                }
                Err(e) => self.broke(e)?,
            }
        }
    }
}

impl Documents for Registry {
    fn document(&self, d: &Descriptor) -> Result<Vec<u8>, SourceError> {
        let kind = match manifest::kind_of(d.media_type().as_ref()) {
            Some(_) => Kind::Manifest,
            None => Kind::Blob,
        };
        manifest::read_document(d, &self.what, || {
            let what = format!("{}: {}", self.what, d.digest());
            let stream = self.stream(what, kind, d.digest(), Some(d.size()))?;
            Ok(Box::new(stream))
        })
    }
}

impl LayerSource for Registry {
    fn open_layer(&self, layer: &Layer) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let Some(digest) = &layer.digest else {
            return Err(SourceError::Invalid {
                what: self.what.clone(),
                why: format!("layer {} has no digest", layer.locator),
            });
        };
        let what = format!("{}: blob {digest}", self.what);
        let stream = self.stream(what.clone(), Kind::Blob, digest, layer.size)?;
        let verified = Verified::new(stream, digest, layer.size)
            .map_err(|source| SourceError::Digest { what, source })?;
        Ok(Box::new(verified))
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn as_registry(&self) -> Option<&Registry> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn r(registry: &str, repository: &str, tag: Option<&str>, digest: Option<&str>) -> Reference {
        Reference {
            registry: registry.into(),
            repository: repository.into(),
            tag: tag.map(str::to_string),
            digest: digest.map(|d| digest::parse(d).unwrap()),
        }
    }

    #[test]
    fn parses_references() {
        let hub = DOCKER_HUB;
        let cases = [
            ("debian", r(hub, "library/debian", None, None)),
            (
                "debian:bookworm",
                r(hub, "library/debian", Some("bookworm"), None),
            ),
            ("user/app:1.0", r(hub, "user/app", Some("1.0"), None)),
            ("docker.io/debian", r(hub, "library/debian", None, None)),
            (
                "index.docker.io/debian",
                r(hub, "library/debian", None, None),
            ),
            ("docker.io/user/app", r(hub, "user/app", None, None)),
            (
                "127.0.0.1:5000/x/y:t",
                r("127.0.0.1:5000", "x/y", Some("t"), None),
            ),
            ("localhost/app", r("localhost", "app", None, None)),
            ("localhost:5000/app", r("localhost:5000", "app", None, None)),
            ("Registry/app", r("Registry", "app", None, None)),
            ("quay.io/a/b/c", r("quay.io", "a/b/c", None, None)),
            (
                "[::1]:5000/app:v1",
                r("[::1]:5000", "app", Some("v1"), None),
            ),
            (
                &format!("reg.example/app@{D}"),
                r("reg.example", "app", None, Some(D)),
            ),
            (
                &format!("reg.example/app:1@{D}"),
                r("reg.example", "app", Some("1"), Some(D)),
            ),
            ("a__b/c.d-e--f", r(hub, "a__b/c.d-e--f", None, None)),
        ];
        for (input, want) in cases {
            assert_eq!(Reference::parse(input).unwrap(), want, "{input}");
        }
        assert_eq!(
            Reference::parse(&format!("reg.example/app:1@{D}"))
                .unwrap()
                .target(),
            D
        );
        assert_eq!(Reference::parse("debian").unwrap().target(), "latest");
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "UPPER",
            "app:",
            "app:-x",
            "reg.example/",
            "reg.example//app",
            "reg.example/app@sha256:00",
            "reg.example/app@md5:00",
            "reg.example:port/app",
            "reg.example:99999/app",
            "-reg.example/app",
            "reg.example/a..b",
            "reg.example/a/",
            "[::1/app",
            "a_-b",
            &format!("app:{}", "t".repeat(129)),
            &"a".repeat(256),
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("docker://{bad}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn tells_loopback() {
        for (reg, want) in [
            ("127.0.0.1:5000", true),
            ("127.1.2.3", true),
            ("localhost:5000", true),
            ("LOCALHOST", true),
            ("[::1]:5000", true),
            ("[::2]:5000", false),
            ("128.0.0.1:5000", false),
            ("registry-1.docker.io", false),
            ("localhost.example", false),
        ] {
            let reference = r(reg, "a", None, None);
            assert_eq!(reference.is_loopback(), want, "{reg}");
        }
    }

    #[test]
    fn resolves_redirects() {
        let base: Uri = "http://127.0.0.1:5000/v2/a/blobs/x".parse().unwrap();
        let cases = [
            (
                "https://s3.example/b?sig=1",
                Some("https://s3.example/b?sig=1"),
            ),
            ("//cdn.example/b", Some("http://cdn.example/b")),
            ("/v2/other", Some("http://127.0.0.1:5000/v2/other")),
            ("y", Some("http://127.0.0.1:5000/v2/a/blobs/y")),
            ("", None),
            ("http://bad host/", None),
        ];
        for (location, want) in cases {
            assert_eq!(
                resolve_location(&base, location).as_deref(),
                want,
                "{location}"
            );
        }
        let same = |a: &str, b: &str| same_origin(&a.parse().unwrap(), &b.parse().unwrap());
        assert!(same("https://reg.example/v2/", "https://REG.example:443/x"));
        assert!(!same("https://reg.example/", "http://reg.example/"));
        assert!(!same("http://127.0.0.1:5000/", "http://localhost:5000/"));
        assert!(!same("http://127.0.0.1:5000/", "http://127.0.0.1:5001/"));
    }

    #[test]
    fn reads_answers() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/*"), Some(0));
        for bad in ["", "bytes", "items 1-2/3", "bytes x-1/2", "bytes */200"] {
            assert_eq!(content_range_start(bad), None, "{bad}");
        }
        assert_eq!(
            parse_registry_message(
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
            )
            .as_deref(),
            Some("manifest unknown")
        );
        assert_eq!(
            parse_registry_message(br#"{"errors":[{"code":"DENIED"}]}"#).as_deref(),
            Some("DENIED")
        );
        assert_eq!(
            parse_registry_message(b"{\"errors\":[{\"message\":\"a\\nb\"}]}").as_deref(),
            Some("a b")
        );
        assert_eq!(parse_registry_message(b"<html>"), None);
        assert_eq!(parse_registry_message(br#"{"errors":[]}"#), None);
    }

    #[test]
    fn asks_for_push_when_pushing() {
        let cases = [
            (None, false, "repository:a/b:pull"),
            (None, true, "repository:a/b:pull,push"),
            (Some("repository:a/b:pull"), false, "repository:a/b:pull"),
            (
                Some("repository:a/b:pull"),
                true,
                "repository:a/b:pull,push",
            ),
            (
                Some("repository:a/b:push"),
                true,
                "repository:a/b:push,pull",
            ),
            (
                Some("repository:c:pull repository:a/b:pull"),
                true,
                "repository:c:pull repository:a/b:pull,push",
            ),
            (
                Some("registry:catalog:*"),
                true,
                "registry:catalog:* repository:a/b:pull,push",
            ),
            (Some(" "), false, "repository:a/b:pull"),
        ];
        for (challenged, push, want) in cases {
            assert_eq!(token_scope(challenged, "a/b", push), want, "{challenged:?}");
        }
    }

    #[test]
    fn backs_off() {
        let retry = Retry::default();
        let delays: Vec<u64> = (1..5).map(|n| retry.delay(n, None).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(retry.delay(30, None), MAX_DELAY);
        assert_eq!(retry.delay(1, Some(Duration::from_secs(3600))), MAX_DELAY);
        assert_eq!(
            retry.delay(3, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert!(retryable(503) && retryable(429) && !retryable(404) && !retryable(401));
    }
}
