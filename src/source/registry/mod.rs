//! Images in a registry (`docker://HOST[:PORT]/NAME[:TAG|@DIGEST]`), read over the
//! distribution API as docker reads them.
//!
//! [`open`] takes the reference as typed, finds the registry (a name without a host is Docker
//! Hub's, single names under `library/`), fetches the manifest the tag or digest names and
//! hands it to [`manifest::resolve`], which follows an index to the platform's manifest and
//! reads the config through [`Registry`]'s [`Documents`](manifest::Documents). Layers are
//! opened by digest ([`LayerSource::open_layer`](super::LayerSource::open_layer)) as streams checked against their digest and size.
//!
//! For lazy mounts and for imgfs's own artifacts, a [`Registry`] is also made for a repository
//! alone ([`Registry::connect_repository`]): it reads byte ranges of a blob
//! ([`Registry::fetch_ranges`], whatever shape a server gives them), small documents by
//! digest, and pushes blobs, manifests and referrers, keeping the referrers tag fallback where
//! a registry lacks the API.
//!
//! What it guarantees: every document is bounded and verified (the top manifest against the
//! digest it was asked by, or the registry's `Docker-Content-Digest`); a blob stream that breaks
//! is resumed from the byte it broke at (`Range`), so its hash runs on unbroken; transient
//! failures (5xx, 429, a dropped connection) are retried a bounded number of times with growing
//! pauses; `Authorization` goes only to the registry itself, never to a host it redirects to.
//! Loopback registries, and any when TLS verification is off, are tried over unverified HTTPS
//! and then plain HTTP, as docker treats insecure registries. Credentials are looked up only
//! when a registry asks, and never appear in a message.
//!
//! Where each part lives: `reference` parses what the user typed; `client` holds the
//! [`Registry`] and sends one request, judging its answer, over `http` (redirects, error
//! answers); `auth` answers a `401` with the secrets `credentials` finds; `pull` reads
//! manifests, documents and layers, which `stream` resumes when a connection breaks; `ranges`
//! reads byte ranges, whose answers `byteranges` parses; `push` writes; `error` says what went
//! wrong.

mod auth;
mod byteranges;
mod client;
mod credentials;
mod error;
pub mod hosts;
mod http;
mod pull;
mod push;
mod ranges;
mod reference;
mod stream;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use parking_lot::Mutex;

use self::auth::AuthState;
use self::error::printable;
pub(crate) use self::error::{HelperError, IndexError, RangeError, RegistryError, TokenError};
pub(crate) use self::reference::Reference;
use super::manifest;
use super::retry::Policy;
use super::{Image, Platform, SourceError};

/// Longest pause between two tries, whatever `Retry-After` asks for.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(8);

/// How often and how patiently a failed request is tried again: the settings of the
/// client's [`Policy`].
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
    /// The policy these settings make: `tries` tries, pauses doubling from `first_delay` up
    /// to [`MAX_DELAY`], whatever `Retry-After` asks for.
    pub(crate) fn policy(&self) -> Policy {
        Policy::tries(self.tries, self.first_delay, MAX_DELAY)
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
    /// Where registries' host configurations are (containerd's `certs.d` layout): this
    /// directory, else containerd's and docker's ([`hosts`]).
    pub hosts_dir: Option<PathBuf>,
    pub retry: Retry,
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            platform: Platform::host(),
            tls_verify: true,
            auth_file: None,
            hosts_dir: None,
            retry: Retry::default(),
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
    retry: Policy,
    /// Retries made so far, by every request, token and stream of this client.
    retries: Arc<AtomicU64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off() {
        let policy = Retry::default().policy();
        let delays: Vec<u64> = (1..5).map(|n| policy.delay(n, None).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(policy.delay(30, None), MAX_DELAY);
        assert_eq!(policy.delay(1, Some(Duration::from_secs(3600))), MAX_DELAY);
        assert_eq!(
            policy.delay(3, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        let mut attempts = policy.start();
        let tries = std::iter::from_fn(|| attempts.next(true, Some(Duration::ZERO)).ok()).count();
        assert_eq!(tries + 1, 5, "five tries in all");
    }
}
