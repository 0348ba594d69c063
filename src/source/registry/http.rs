//! One request on the wire: what it asks for ([`Call`]); [`Registry::follow`], which sends
//! it and follows the registry's redirects (to blob storage, often on another host), sending
//! `Authorization` only to the registry itself, and hands on an [`Attempt`] for
//! [`Registry::exchange`] to judge; and what an answer says besides its body — the
//! distribution API's error message, `Retry-After`.

use std::io::Read;
use std::time::Duration;

use ureq::Body;
use ureq::http::{Response, Uri};

use super::{Registry, RegistryError, printable};
use crate::source::manifest;

/// What a request fetches: it sets the headers and the words of a 404.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Manifest,
    Blob,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    Get,
    Head,
    Post,
    Put,
}

/// The answers a plain GET takes.
pub(super) const FETCHED: &[u16] = &[200, 206];

/// One request to the registry, as [`Registry::exchange`] sends it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Call<'a> {
    pub(super) method: Method,
    pub(super) kind: Kind,
    /// The `Range` value, if any.
    pub(super) range: Option<&'a str>,
    /// The content type and body of a PUT or POST.
    pub(super) body: Option<(&'a str, &'a [u8])>,
    /// The statuses handed back as answers; every other one is an error.
    pub(super) ok: &'a [u16],
    /// Whether the request writes to the repository (its token must allow `push`).
    pub(super) push: bool,
}

impl Call<'_> {
    pub(super) fn get(kind: Kind) -> Call<'static> {
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

/// One exchange's result before it is judged: an answer (and, when a host the registry
/// redirected to gave it, that host) or a transport failure.
pub(super) enum Attempt {
    Answer(Response<Body>, Option<String>),
    Failed(ureq::Error),
}

/// Redirects followed for one request: registries redirect a blob once, to its storage.
const MAX_REDIRECTS: u32 = 5;

/// Most bytes of an error answer read for its message.
const MAX_ERROR_BODY: u64 = 64 << 10;

impl Registry {
    /// Sends a request and follows its redirects; `Authorization` only goes to the registry.
    pub(super) fn follow(
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
            limit: MAX_REDIRECTS,
        })
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

/// `Retry-After` in seconds (the HTTP-date form is rare from registries and not read).
pub(super) fn retry_after(resp: &Response<Body>) -> Option<Duration> {
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
pub(super) fn resolve_location(base: &Uri, location: &str) -> Option<String> {
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
pub(super) fn registry_message(resp: Response<Body>) -> Option<String> {
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
pub(super) fn error_message(resp: Response<Body>) -> String {
    let reason = resp
        .status()
        .canonical_reason()
        .unwrap_or("unexpected answer")
        .to_lowercase();
    registry_message(resp).unwrap_or(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn reads_error_answers() {
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
}
