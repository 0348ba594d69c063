//! What goes wrong talking to a registry: one [`RegistryError`] variant per failure site,
//! each naming the image (`what`) and, where it matters, the host, status, byte offset and
//! number of tries; the reasons the parsers give ([`RangeError`], [`TokenError`],
//! [`HelperError`], [`IndexError`]); and [`printable`], which makes text from a server or a
//! helper safe to quote in a one-line message.

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
    /// The registry's host configuration (hosts.toml, certificates) cannot be used.
    #[error("{what}: its registry's host configuration: {cause}")]
    Hosts { what: String, cause: String },
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
        why: TokenError,
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
    Range { what: String, why: RangeError },
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
    #[error("{what}: {why}")]
    Index { what: String, why: IndexError },
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
        why: HelperError,
    },
}

/// Why byte ranges asked for, or a server's answer to them, cannot be right: trying again
/// will not help.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("the range {start}..{end} is empty")]
    Empty { start: u64, end: u64 },
    #[error("the range {start}..{end} goes past the blob's end ({blob_size} bytes)")]
    PastEnd {
        start: u64,
        end: u64,
        blob_size: u64,
    },
    #[error("the range {start}..{end} overlaps or precedes the one before")]
    Unsorted { start: u64, end: u64 },
    #[error("a multipart answer without a boundary")]
    NoBoundary,
    #[error("a multipart boundary of {len} bytes (1 to {max} allowed)")]
    BoundaryLength { len: usize, max: usize },
    #[error("a multipart boundary with control characters")]
    BoundaryControl,
    #[error("no multipart boundary where it belongs")]
    NoDelimiter,
    #[error("a part with more than {max} header lines")]
    PartHeaders { max: usize },
    #[error("a multipart header line longer than {max} bytes")]
    LongLine { max: usize },
    #[error("a part's Content-Range '{value}' is not one")]
    PartRange { value: String },
    #[error("a part without Content-Range")]
    NoPartRange,
    #[error("a part is longer than its Content-Range says")]
    LongPart,
    #[error("the answer gives the blob's size as {total}, not {blob_size}")]
    Total { total: u64, blob_size: u64 },
    #[error("the answer holds bytes {first}-{last} where {asked} was asked for")]
    Unasked {
        first: u64,
        last: u64,
        asked: String,
    },
    #[error("the answer holds bytes {first}-{last} twice")]
    Twice { first: u64, last: u64 },
    #[error("the answer has more parts than the {ranges} ranges asked for")]
    TooManyParts { ranges: usize },
    #[error("the answer lacks bytes of {first}-{last}")]
    Lacks { first: u64, last: u64 },
    #[error("the whole blob came as {length} bytes, but it has {blob_size}")]
    WholeSize { length: u64, blob_size: u64 },
    #[error("a partial answer without Content-Range")]
    NoContentRange,
    #[error("a partial answer with Content-Range '{value}'")]
    ContentRange { value: String },
    #[error("a partial answer of {length} bytes for Content-Range '{value}'")]
    PartialLength { length: u64, value: String },
    #[error("asked for bytes from {offset}, got Content-Range '{value}'")]
    Resumed { offset: u64, value: String },
}

/// Why a token service's answer gives no usable token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{cause}")]
    Read { cause: io::Error },
    #[error("the answer is not JSON: {cause}")]
    NotJson { cause: serde_json::Error },
    #[error("the answer has neither token nor access_token")]
    Missing,
    #[error("the token holds characters a header cannot")]
    NotHeader,
}

/// Why a credential helper gave no credentials.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("cannot run it: {cause}")]
    Run { cause: io::Error },
    #[error("reading its answer: {cause}")]
    Read { cause: io::Error },
    #[error("waiting for it: {cause}")]
    Wait { cause: io::Error },
    /// It failed, saying `output` (made printable).
    #[error("failed: {output}")]
    Failed { output: String },
    #[error("answered something not JSON: {cause}")]
    NotJson { cause: serde_json::Error },
}

/// Why a referrers index cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("not an image index: {cause}")]
    NotIndex { cause: serde_json::Error },
    #[error("{cause}")]
    Write { cause: serde_json::Error },
}

fn tries_note(tries: u32) -> String {
    if tries > 1 {
        format!(" ({tries} tries)")
    } else {
        String::new()
    }
}

/// `s` with control characters replaced and cut short: safe to put in a one-line message.
pub(crate) fn printable(s: &str) -> String {
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
