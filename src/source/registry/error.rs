//! What goes wrong talking to a registry: one [`RegistryError`] variant per failure site,
//! each naming the image (`what`) and, where it matters, the host, status, byte offset and
//! number of tries; and [`printable`], which makes text from a server or a helper safe to
//! quote in a one-line message.

use std::io;
use std::path::PathBuf;

use crate::source::digest;

/// Each message is the whole line: a cause (an I/O, JSON or digest error) is quoted in it as
/// `cause`, not also handed on by `source()`, so that a chain printer and `to_string()` alike
/// show it once.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("docker://{reference}: {why}")]
    Reference { reference: String, why: String },
    #[error("{what}: cannot connect to {host}{}: {cause}", tries_note(*tries))]
    Connect {
        what: String,
        host: String,
        tries: u32,
        cause: io::Error,
    },
    #[error("{what}: {url}{}: {cause}", tries_note(*tries))]
    Transport {
        what: String,
        url: String,
        tries: u32,
        cause: io::Error,
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
    #[error("{what}: reading {ranges}: the connection broke {tries} times: {cause}")]
    RangesBroken {
        what: String,
        ranges: String,
        tries: u32,
        cause: io::Error,
    },
    #[error("{what}: {size} bytes, more than the {limit} read whole")]
    Oversized { what: String, size: u64, limit: u64 },
    #[error("{what}: {cause}")]
    Content {
        what: String,
        cause: digest::DigestError,
    },
    #[error("{what}: {cause}")]
    Body { what: String, cause: io::Error },
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
    #[error("{what}: redirected more than {limit} times")]
    Redirects { what: String, limit: u32 },
    #[error("{what}: cannot follow the redirect to '{location}'")]
    Location { what: String, location: String },
    #[error("{what}: the stream broke at byte {offset}, {tries} times without progress: {cause}")]
    Broken {
        what: String,
        offset: u64,
        tries: u32,
        cause: io::Error,
    },
    #[error("{path}: {cause}")]
    AuthFile { path: PathBuf, cause: io::Error },
    #[error("{path}: not a credentials file: {cause}")]
    AuthJson {
        path: PathBuf,
        cause: serde_json::Error,
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

/// `s` with control characters replaced and cut short: safe to put in a one-line message.
pub fn printable(s: &str) -> String {
    /// Longest text from a server or a helper quoted in a message.
    const MAX_QUOTED: usize = 200;
    let mut out: String = s
        .chars()
        .take(MAX_QUOTED)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > MAX_QUOTED {
        out.push('…');
    }
    out
}
