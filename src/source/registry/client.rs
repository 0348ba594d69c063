//! Connecting to a registry and judging its answers: [`Registry::connect`] makes the client
//! (finding first whether an insecure registry speaks HTTPS), and [`Registry::exchange`]
//! sends one request and judges its answer — authenticating when asked, going back to the
//! registry when the storage it redirected to refuses a link, trying again when a failure may
//! pass — so that every other part asks for what it wants and gets either an answer it can
//! use or a [`RegistryError`] that names the image, the host and the tries.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use ureq::Body;
use ureq::http::{Response, Uri};

use super::auth::AuthState;
use super::hosts::{self, Endpoint};
use super::http::{Attempt, Call, Kind, error_message, registry_message, retry_after};
use super::{Reference, Registry, RegistryError, RegistryOptions};
use crate::source::SourceError;
use crate::source::retry::{dropped, transient_status};

/// Longest wait for a TCP connection and TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a response's headers once the request is sent.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest silence inside a body before the stream counts as broken (and is resumed).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the HTTPS probe of a registry that may only speak HTTP: a plain HTTP
/// server answers a TLS hello at once with an error.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const USER_AGENT: &str = concat!("imgfs/", env!("CARGO_PKG_VERSION"));

impl Registry {
    /// Makes the client: at the first endpoint a hosts configuration names that can resolve
    /// and pull ([`super::hosts`]), else at the registry itself, finding first for an
    /// insecure one whether it speaks HTTPS.
    pub(super) fn connect(
        what: String,
        reference: Reference,
        options: &RegistryOptions,
    ) -> Result<Registry, RegistryError> {
        let configured = hosts::endpoints(&reference.registry, options.hosts_dir.as_deref())
            .map_err(|e| RegistryError::Hosts {
                what: what.clone(),
                cause: e.to_string(),
            })?;
        let (base, agent, insecure) = match configured {
            Some(list) => configured_endpoint(&what, &list, !options.tls_verify)?,
            None => {
                let loopback = reference.is_loopback();
                let insecure = loopback || !options.tls_verify;
                let tls = ureq::tls::TlsConfig::builder()
                    .disable_verification(insecure)
                    .build();
                let agent = new_agent(tls, loopback);
                let scheme = if insecure {
                    probe(&agent, &what, &reference.registry)?
                } else {
                    "https"
                };
                (
                    format!("{scheme}://{}", reference.registry),
                    agent,
                    insecure,
                )
            }
        };
        let retries = Arc::new(AtomicU64::new(0));
        let counted = retries.clone();
        Ok(Registry {
            base,
            what,
            reference,
            agent,
            insecure,
            retry: options.retry.policy().on_retry(move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
            }),
            retries,
            auth_file: options.auth_file.clone(),
            auth: Mutex::new(AuthState::default()),
            answered: AtomicBool::new(false),
            single_ranges: AtomicBool::new(false),
            ignores_ranges: AtomicBool::new(false),
        })
    }

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

    /// Retries this client has made so far (of requests, token requests and broken
    /// streams): how unsteady the way to the registry is.
    pub(crate) fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    pub(super) fn host(&self) -> &str {
        &self.reference.registry
    }

    /// One request to the registry (`target` is a path under it, or a URL it gave), answered
    /// with one of `call.ok`: authenticates when asked, follows redirects, goes back to the
    /// registry once when the storage it redirected to refuses a link (a signed URL that
    /// expired), tries again on transient failures; every other answer is an error.
    pub(super) fn exchange(
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
        let mut attempts = self.retry.start();
        loop {
            let (generation, authorization) = {
                let state = self.auth.lock();
                (state.generation, state.header.clone())
            };
            let attempt = self.follow(what, &url, call, authorization.as_deref())?;
            let pause = match attempt {
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
                    match attempts.next(transient_status(status), retry_after(&resp)) {
                        Ok(pause) => {
                            log::debug!("{what}: {url} answered {status}; trying again");
                            pause
                        }
                        Err(tries) => {
                            return Err(self.status_error(what, call.kind, resp, elsewhere, tries));
                        }
                    }
                }
                Attempt::Failed(e) => match attempts.next(self.transient(&e), None) {
                    Ok(pause) => {
                        log::debug!("{what}: {url}: {e}; trying again");
                        pause
                    }
                    Err(tries) => return Err(self.transport_error(what, &url, e, tries)),
                },
            };
            std::thread::sleep(pause);
        }
    }

    /// Whether a transport failure may pass if tried again.
    pub(super) fn transient(&self, e: &ureq::Error) -> bool {
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

    pub(super) fn transport_error(
        &self,
        what: &str,
        url: &str,
        e: ureq::Error,
        tries: u32,
    ) -> RegistryError {
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
                cause: e.into_io(),
            }
        } else {
            RegistryError::Transport {
                what: what.to_string(),
                url: url.to_string(),
                tries,
                cause: e.into_io(),
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
}

/// A client as imgfs makes them, with `tls`; without a proxy for a registry on this machine.
fn new_agent(tls: ureq::tls::TlsConfig, loopback: bool) -> ureq::Agent {
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
    config.build().new_agent()
}

/// The first of the configured endpoints that can resolve and pull and answers (the last is
/// taken without asking): its base URL, its client, and whether it is insecure (as its
/// configuration says, or every one with `--tls-verify=false`).
fn configured_endpoint(
    what: &str,
    list: &[Endpoint],
    unverified: bool,
) -> Result<(String, ureq::Agent, bool), RegistryError> {
    let usable: Vec<&Endpoint> = list.iter().filter(|e| e.pull && e.resolve).collect();
    let mut last = None;
    for (i, e) in usable.iter().enumerate() {
        let authority = e
            .url
            .split_once("://")
            .map_or(e.url.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default();
        let loopback = Reference {
            registry: authority.to_string(),
            repository: String::new(),
            tag: None,
            digest: None,
        }
        .is_loopback();
        let skip_verify = e.skip_verify || unverified;
        let agent = new_agent(tls_for(what, e, skip_verify)?, loopback);
        if i + 1 < usable.len() {
            let answered = agent
                .get(format!("{}/v2/", e.url))
                .config()
                .timeout_global(Some(PROBE_TIMEOUT))
                .build()
                .call();
            if let Err(err) = answered {
                log::info!(
                    "{what}: {} does not answer ({err}); trying the next host",
                    e.url
                );
                last = Some(RegistryError::Connect {
                    what: what.to_string(),
                    host: authority.to_string(),
                    tries: 1,
                    cause: err.into_io(),
                });
                continue;
            }
        }
        return Ok((e.url.clone(), agent, skip_verify || e.plain_http()));
    }
    Err(last.unwrap_or_else(|| RegistryError::Hosts {
        what: what.to_string(),
        cause: "no host configured for its registry can both resolve and pull".into(),
    }))
}

/// The TLS settings of endpoint `e`: its CAs beside the usual roots, its client
/// certificate, and no verification at all with `skip_verify`.
fn tls_for(
    what: &str,
    e: &Endpoint,
    skip_verify: bool,
) -> Result<ureq::tls::TlsConfig, RegistryError> {
    use ureq::tls::{Certificate, ClientCert, PemItem, RootCerts, TlsConfig};
    let bad = |path: &std::path::Path, why: String| RegistryError::Hosts {
        what: what.to_string(),
        cause: format!("{}: {why}", path.display()),
    };
    let pem = |path: &std::path::Path| -> Result<Vec<PemItem<'static>>, RegistryError> {
        let bytes = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
        ureq::tls::parse_pem(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(path, e.to_string()))
    };
    let mut builder = TlsConfig::builder().disable_verification(skip_verify);
    if !e.ca.is_empty() {
        let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        for path in &e.ca {
            let before = roots.len();
            for item in pem(path)? {
                if let PemItem::Certificate(c) = item {
                    roots.push(c);
                }
            }
            if roots.len() == before {
                return Err(bad(path, "holds no certificate".into()));
            }
        }
        builder = builder.root_certs(RootCerts::new_with_certs(&roots));
    }
    if let Some((cert, key)) = e.client.first() {
        let mut items = pem(cert)?;
        if let Some(key) = key {
            items.extend(pem(key)?);
        }
        let mut chain = Vec::new();
        let mut private = None;
        for item in items {
            match item {
                PemItem::Certificate(c) => chain.push(c),
                PemItem::PrivateKey(k) => private = Some(k),
                _ => {}
            }
        }
        let Some(private) = private.filter(|_| !chain.is_empty()) else {
            return Err(bad(
                cert,
                "a client certificate needs a certificate and its key".into(),
            ));
        };
        builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, private)));
    }
    Ok(builder.build())
}

/// The scheme each insecure registry this process probed speaks, by authority.
static PROBED: Mutex<Vec<(String, &'static str)>> = Mutex::new(Vec::new());

/// Finds whether an insecure registry speaks HTTPS (without checking its certificate), as
/// docker does, once per process: the clients a process makes for one registry (a server's
/// layers, a lookup's manifests and blobs) do not each pay a probe's round trip, behind a busy
/// link's bulk. A registry that cannot be reached at all is reported here.
fn probe(agent: &ureq::Agent, what: &str, authority: &str) -> Result<&'static str, RegistryError> {
    // Held while probing: clients made at once wait for the one probe.
    let mut probed = PROBED.lock();
    if let Some((_, scheme)) = probed.iter().find(|(a, _)| a == authority) {
        return Ok(scheme);
    }
    let scheme = probe_once(agent, what, authority)?;
    probed.push((authority.to_string(), scheme));
    Ok(scheme)
}

fn probe_once(
    agent: &ureq::Agent,
    what: &str,
    authority: &str,
) -> Result<&'static str, RegistryError> {
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
                cause: e.into_io(),
            })
        }
        Err(ureq::Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(RegistryError::Connect {
                what: what.to_string(),
                host: authority.to_string(),
                tries: 1,
                cause: e,
            })
        }
        Err(e) => {
            log::debug!("{what}: {authority} does not speak HTTPS ({e}); using HTTP");
            Ok("http")
        }
    }
}

impl Drop for Registry {
    /// Says, with `-v`, how many requests to the registry had to be tried again.
    fn drop(&mut self) {
        let retries = self.retries();
        if retries > 0 {
            log::debug!("{}: {retries} tries again in all", self.host());
        }
    }
}
