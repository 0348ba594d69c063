//! Registry references (`HOST[:PORT]/NAME[:TAG][@DIGEST]`, or a Docker Hub short name),
//! parsed and normalized as docker normalizes them: a name without a host is Docker Hub's,
//! and a single name there lives under `library/`. Parsing only; it takes the text after
//! `docker://` and hands on a [`Reference`] whose host, name and tag the distribution spec
//! allows, or an error that quotes the reference.

use std::net::IpAddr;

use oci_spec::image::Digest;

use super::RegistryError;
use crate::source::digest;

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
pub(super) const MAX_TAG: usize = 128;

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
    pub(crate) fn parse(s: &str) -> Result<Reference, RegistryError> {
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
    pub(super) fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// Whether the registry is on this machine (docker talks to those without TLS checks).
    pub(crate) fn is_loopback(&self) -> bool {
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

pub(super) fn valid_tag(t: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    t.len() <= MAX_TAG && t.starts_with(word) && t.chars().all(|c| word(c) || c == '.' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::digest;

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
}
