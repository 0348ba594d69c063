//! Answering a registry's `401`: it says how it wants to be asked in a `WWW-Authenticate`
//! header ([`parse_challenges`]). `Basic` takes a user name and password on every request,
//! `Bearer` names a token service to trade them (or nothing, for anonymous pulls) for a token
//! ([`Registry::authenticate`]). Credentials come from the `credentials` submodule, looked up
//! only when a registry asks; the `Authorization` value made here is kept in [`AuthState`]
//! for every request after. Parsing ([`parse_challenges`], [`token_from`]) is kept apart from
//! the requests, and a secret is never part of a message.

use std::collections::HashMap;
use std::io::Read;

use ureq::Body;
use ureq::http::{Response, Uri};

use super::credentials::{self, Secret};
use super::http::{error_message, retry_after};
use super::{Reference, Registry, RegistryError, TokenError, printable};
use crate::source::retry::transient_status;

/// Largest token service answer read: tokens are a few kB.
const MAX_TOKEN_BODY: u64 = 1 << 20;
/// The client the token service is told about (OAuth2 `client_id`).
const CLIENT_ID: &str = "imgfs";

/// How a client authenticates to its registry, shared by all its requests.
#[derive(Default)]
pub(super) struct AuthState {
    /// The `Authorization` value sent to the registry.
    pub(super) header: Option<String>,
    /// Counts changes of `header`, so that a thread refused with an old token does not
    /// fetch a new one when another thread has already.
    pub(super) generation: u64,
    /// The credentials, once looked up: `Some(None)` when there are none.
    pub(super) secret: Option<Option<Secret>>,
}

impl Registry {
    /// Answers a 401: looks the credentials up (once) and makes the `Authorization` value
    /// the challenge asks for (a token that allows `push` too when `push`).
    pub(super) fn authenticate(
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
            .flat_map(parse_challenges)
            .collect();
        let secret = match &state.secret {
            Some(secret) => secret.clone(),
            None => {
                let secret = credentials::credentials(self.host(), self.auth_file.as_deref())?;
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
        let mut attempts = self.retry.start();
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
            let asked = match result {
                Ok(resp) if transient_status(resp.status().as_u16()) => retry_after(&resp),
                Ok(resp) => break resp,
                Err(e) if self.transient(&e) => None,
                Err(e) => {
                    let tries = attempts.failures() + 1;
                    return Err(self.transport_error(what, &realm, e, tries));
                }
            };
            match attempts.next(true, asked) {
                Ok(pause) => std::thread::sleep(pause),
                Err(tries) => {
                    return Err(RegistryError::TokenStatus {
                        what: what.to_string(),
                        realm: realm_host,
                        status: 0,
                        message: format!("no answer after {tries} tries"),
                    });
                }
            }
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
            .map_err(|cause| RegistryError::Token {
                what: what.to_string(),
                realm: realm_host.clone(),
                why: TokenError::Read { cause },
            })?;
        token_from(&body).map_err(|why| RegistryError::Token {
            what: what.to_string(),
            realm: realm_host,
            why,
        })
    }
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

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// The scheme, lowercased (`basic`, `bearer`).
    pub scheme: String,
    /// Parameters, names lowercased.
    pub params: HashMap<String, String>,
}

impl Challenge {
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// The challenges in a `WWW-Authenticate` value (RFC 7235: `scheme param=value, param="quoted",
/// scheme2 …`). Whatever does not parse ends the list; it never fails.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        p.skip(|c| c == b' ' || c == b'\t' || c == b',');
        let scheme = p.token();
        if scheme.is_empty() {
            break;
        }
        let mut params = HashMap::new();
        loop {
            let save = p.i;
            p.skip(|c| c == b' ' || c == b'\t' || c == b',');
            let name = p.token();
            p.skip(|c| c == b' ' || c == b'\t');
            if name.is_empty() || !p.eat(b'=') {
                p.i = save;
                break;
            }
            p.skip(|c| c == b' ' || c == b'\t');
            let value = if p.eat(b'"') { p.quoted() } else { p.token() };
            params.insert(name.to_ascii_lowercase(), value);
        }
        out.push(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        });
        // A token68 or other unparsed rest: step over it to the next comma.
        p.skip(|c| c != b',');
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.i < self.s.len() && f(self.s[self.i]) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// An RFC 7230 token.
    fn token(&mut self) -> String {
        let start = self.i;
        self.skip(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c));
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// The rest of a quoted string, after its opening quote.
    fn quoted(&mut self) -> String {
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(&next) = self.s.get(self.i) {
                        out.push(next);
                        self.i += 1;
                    }
                }
                c => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The token in a token service's answer (`token`, or OAuth2's `access_token`).
pub(crate) fn token_from(body: &[u8]) -> Result<String, TokenError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
    }
    let answer: Answer =
        serde_json::from_slice(body).map_err(|cause| TokenError::NotJson { cause })?;
    let token = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::Missing)?;
    // It goes into a header: visible ASCII only.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotHeader);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn parses_challenges() {
        let cases: &[(&str, Vec<Challenge>)] = &[
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#,
                vec![challenge(
                    "bearer",
                    &[
                        ("realm", "https://auth.docker.io/token"),
                        ("service", "registry.docker.io"),
                        ("scope", "repository:library/debian:pull"),
                    ],
                )],
            ),
            (
                r#"Basic realm="basic-realm""#,
                vec![challenge("basic", &[("realm", "basic-realm")])],
            ),
            (
                r#"bearer Realm = "http://127.0.0.1:1/t" , scope="a b",error="invalid_token""#,
                vec![challenge(
                    "bearer",
                    &[
                        ("realm", "http://127.0.0.1:1/t"),
                        ("scope", "a b"),
                        ("error", "invalid_token"),
                    ],
                )],
            ),
            (
                r#"Basic realm="a\"b", Bearer realm="r",service=s"#,
                vec![
                    challenge("basic", &[("realm", "a\"b")]),
                    challenge("bearer", &[("realm", "r"), ("service", "s")]),
                ],
            ),
            ("Negotiate", vec![challenge("negotiate", &[])]),
            ("", vec![]),
            (
                r#"Bearer realm="unterminated"#,
                vec![challenge("bearer", &[("realm", "unterminated")])],
            ),
        ];
        for (header, want) in cases {
            assert_eq!(&parse_challenges(header), want, "{header}");
        }
    }

    #[test]
    fn challenges_never_panic() {
        for junk in [
            "=",
            "\"",
            "\\",
            ",,,,",
            "a=\"\\",
            "Bearer ,=,\"",
            "é=ü",
            "Bearer realm=",
            "x y z",
        ] {
            let _ = parse_challenges(junk);
        }
    }

    #[test]
    fn reads_tokens() {
        assert_eq!(
            token_from(br#"{"token":"a.b.c","expires_in":300}"#).unwrap(),
            "a.b.c"
        );
        assert_eq!(token_from(br#"{"access_token":"x"}"#).unwrap(), "x");
        assert_eq!(
            token_from(br#"{"token":"","access_token":"y"}"#).unwrap(),
            "y"
        );
        for bad in [
            &br#"{}"#[..],
            br#"{"token":"a b"}"#,
            b"<html>",
            br#"{"token":"a\r\nX: y"}"#,
        ] {
            assert!(token_from(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
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
}
