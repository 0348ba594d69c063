//! Writing to a repository, and finding what refers to a manifest: blobs are uploaded in one
//! monolithic PUT (after a HEAD shows the registry lacks them), manifests are PUT by tag or
//! digest, and an artifact with a `subject` is found again through the OCI 1.1 referrers API
//! or, where a registry lacks it, the spec's fallback: an image index tagged
//! `<algorithm>-<hex>` that the pusher keeps up to date.
//!
//! Every request here asks for a token that allows `push` (reads included, so one token
//! serves a whole push). The fallback index is read, changed and written back without a lock:
//! two pushers writing referrers of one subject at the same moment may lose one entry.

use oci_spec::image::{Descriptor, Digest, ImageIndex, MediaType};
use ureq::http::Uri;

use super::http::{Call, Kind, Method, resolve_location};
use super::reference::{MAX_TAG, valid_tag};
use super::{IndexError, Registry, RegistryError, printable};
use crate::source::digest;
use crate::source::manifest::{MAX_DOCUMENT, OCI_INDEX, OCI_MANIFEST};

/// The answers a manifest PUT may give (201 is the spec's; some registries say 200 or 202).
const STORED: &[u16] = &[200, 201, 202, 204];
/// Longest algorithm part of a fallback tag, as the distribution spec truncates it.
const MAX_TAG_ALGORITHM: usize = 32;
/// Longest digest part of a fallback tag, as the distribution spec truncates it.
const MAX_TAG_HEX: usize = 64;
/// Most pages of a referrers answer read: a page holds hundreds of descriptors, so more is a
/// registry that goes round in circles.
const MAX_REFERRER_PAGES: usize = 16;

impl Registry {
    /// Uploads `bytes` as a blob unless the registry has it already; its digest.
    pub fn push_blob(&self, bytes: &[u8]) -> Result<Digest, RegistryError> {
        let digest = sha256_digest(bytes);
        let what = format!("{}: pushing blob {digest}", self.what);
        let repo = &self.reference.repository;
        let head = Call {
            method: Method::Head,
            ok: &[200, 404],
            push: true,
            ..Call::get(Kind::Blob)
        };
        let path = format!("/v2/{repo}/blobs/{digest}");
        if self.exchange(&what, &path, &head)?.status().as_u16() == 200 {
            return Ok(digest);
        }
        let start = Call {
            method: Method::Post,
            ok: &[202],
            push: true,
            ..Call::get(Kind::Blob)
        };
        let uploads = format!("/v2/{repo}/blobs/uploads/");
        let resp = self.exchange(&what, &uploads, &start)?;
        let Some(location) = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return Err(RegistryError::Invalid {
                what,
                why: format!("{} started the upload without a Location", self.host()),
            });
        };
        let url = upload_url(&format!("{}{uploads}", self.base), &location, &digest).ok_or_else(
            || RegistryError::Location {
                what: what.clone(),
                location: printable(&location),
            },
        )?;
        let put = Call {
            method: Method::Put,
            body: Some(("application/octet-stream", bytes)),
            ok: &[201, 204],
            push: true,
            ..Call::get(Kind::Blob)
        };
        self.exchange(&what, &url, &put)?;
        Ok(digest)
    }

    /// Stores `bytes` as the manifest `reference` (a tag or a digest) with `media_type`; its
    /// digest, and whether the registry answered `OCI-Subject` (it then indexes the
    /// manifest's subject's referrers itself).
    pub fn push_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(Digest, bool), RegistryError> {
        let what = format!("{}: pushing manifest {reference}", self.what);
        let by_digest = digest::parse(reference).ok();
        if by_digest.is_none() && !valid_tag(reference) {
            return Err(RegistryError::Invalid {
                what,
                why: format!("'{}' is neither a tag nor a digest", printable(reference)),
            });
        }
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(RegistryError::TooLarge {
                what,
                limit: MAX_DOCUMENT,
            });
        }
        let digest = match by_digest {
            Some(d) => {
                digest::verify(&d, bytes).map_err(|cause| RegistryError::Content {
                    what: what.clone(),
                    cause,
                })?;
                d
            }
            None => sha256_digest(bytes),
        };
        let put = Call {
            method: Method::Put,
            kind: Kind::Manifest,
            body: Some((media_type, bytes)),
            ok: STORED,
            push: true,
            range: None,
        };
        let path = format!("/v2/{}/manifests/{reference}", self.reference.repository);
        let resp = self.exchange(&what, &path, &put)?;
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(Ok(announced)) = header("docker-content-digest").map(digest::parse)
            && announced.algorithm() == digest.algorithm()
            && announced != digest
        {
            return Err(RegistryError::ManifestDigest {
                what,
                against: "its Docker-Content-Digest",
                expected: announced.to_string(),
                actual: digest.to_string(),
            });
        }
        let indexed = header("oci-subject").is_some();
        Ok((digest, indexed))
    }

    /// Pushes `manifest`, an artifact whose `subject` is `subject`, by digest; when the
    /// registry does not index referrers itself, adds it to the fallback index tagged
    /// `<algorithm>-<hex>` (replacing an entry of the same digest). Its digest.
    pub fn push_referrer(
        &self,
        subject: &Digest,
        manifest: &[u8],
        artifact_type: &str,
    ) -> Result<Digest, RegistryError> {
        let what = format!("{}: pushing a referrer of {subject}", self.what);
        let doc: serde_json::Value =
            serde_json::from_slice(manifest).map_err(|e| RegistryError::Invalid {
                what: what.clone(),
                why: format!("the manifest is not JSON: {e}"),
            })?;
        let named = doc["subject"]["digest"].as_str().unwrap_or("(none)");
        if named != subject.to_string() {
            return Err(RegistryError::Invalid {
                what,
                why: format!("the manifest's subject is {}", printable(named)),
            });
        }
        let media_type = doc["mediaType"].as_str().unwrap_or(OCI_MANIFEST);
        let reference = sha256_digest(manifest).to_string();
        let (digest, indexed) = self.push_manifest(&reference, media_type, manifest)?;
        if indexed {
            return Ok(digest);
        }
        let annotations = doc["annotations"].as_object().map(|a| {
            a.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        });
        let mut descriptor = Descriptor::new(
            MediaType::from(media_type),
            manifest.len() as u64,
            digest.clone(),
        );
        descriptor.set_artifact_type(Some(MediaType::from(artifact_type)));
        descriptor.set_annotations(annotations);
        let tag = fallback_tag(subject);
        let existing = self.manifest_at(&what, &tag, None, true)?;
        let index = with_referrer(existing.as_ref().map(|(b, _, _)| b.as_slice()), descriptor)
            .map_err(|why| RegistryError::Index {
                what: format!("{what}: the index tagged {tag}"),
                why,
            })?;
        self.push_manifest(&tag, OCI_INDEX, &index)?;
        Ok(digest)
    }

    /// Descriptors of the manifests that refer to `subject` with artifact type
    /// `artifact_type`: from the referrers API, or where the registry lacks it (404), from
    /// the index tagged `<algorithm>-<hex>`; none is an empty list.
    pub fn referrers(
        &self,
        subject: &Digest,
        artifact_type: &str,
    ) -> Result<Vec<Descriptor>, RegistryError> {
        let what = format!("{}: referrers of {subject}", self.what);
        let path = format!(
            "/v2/{}/referrers/{subject}?artifactType={}",
            self.reference.repository,
            query_encode(artifact_type)
        );
        let call = Call {
            ok: &[200, 404],
            ..Call::get(Kind::Manifest)
        };
        let not_index = |why| RegistryError::Index {
            what: what.clone(),
            why,
        };
        let resp = self.exchange(&what, &path, &call)?;
        if resp.status().as_u16() == 404 {
            let tag = fallback_tag(subject);
            return match self.manifest_at(&what, &tag, None, true)? {
                Some((index, _, _)) => of_type(&index, artifact_type).map_err(not_index),
                None => Ok(Vec::new()),
            };
        }
        // The API's answer may come in pages, each naming the next in `Link`.
        let mut found = Vec::new();
        let mut url = format!("{}{path}", self.base);
        let mut resp = resp;
        for page in 1.. {
            let next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .map(str::to_string);
            let index = self.read_bounded(&what, &url, resp)?;
            found.extend(of_type(&index, artifact_type).map_err(not_index)?);
            let Some(next) = next else { break };
            if page >= MAX_REFERRER_PAGES {
                return Err(RegistryError::Invalid {
                    what,
                    why: format!(
                        "the registry gives more than {MAX_REFERRER_PAGES} pages of referrers"
                    ),
                });
            }
            let base: Option<Uri> = url.parse().ok();
            url = base
                .and_then(|b| resolve_location(&b, &next))
                .ok_or_else(|| RegistryError::Location {
                    what: what.clone(),
                    location: printable(&next),
                })?;
            resp = self.exchange(&what, &url, &Call::get(Kind::Manifest))?;
        }
        Ok(found)
    }
}

/// The target of a `Link` value's `rel="next"` (RFC 8288: `<URL>; rel="next", <URL2>; ...`).
fn next_link(value: &str) -> Option<&str> {
    value.split(',').find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        let next = params.split(';').any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim().trim_matches('"').split(' ').any(|r| r == "next")
            })
        });
        next.then_some(target)
    })
}

/// Where an upload session's `location` (relative to `started`, the URL it was started at, or
/// absolute, with a query or without) takes the blob `digest` in one PUT.
fn upload_url(started: &str, location: &str, digest: &Digest) -> Option<String> {
    let base: Uri = started.parse().ok()?;
    let url = resolve_location(&base, location)?;
    let separator = if url.contains('?') { '&' } else { '?' };
    Some(format!(
        "{url}{separator}digest={}",
        query_encode(digest.as_ref())
    ))
}

fn sha256_digest(bytes: &[u8]) -> Digest {
    digest::parse(&digest::sha256(bytes)).expect("a sha256 digest parses")
}

/// The tag the referrers fallback keeps `subject`'s referrers under: `<algorithm>-<hex>`,
/// each part truncated as the distribution spec says.
pub(super) fn fallback_tag(subject: &Digest) -> String {
    let algorithm = subject.algorithm().to_string();
    let hex = subject.digest();
    let tag = format!(
        "{}-{}",
        &algorithm[..algorithm.len().min(MAX_TAG_ALGORITHM)],
        &hex[..hex.len().min(MAX_TAG_HEX)]
    );
    debug_assert!(tag.len() <= MAX_TAG);
    tag
}

/// The fallback index `existing` (or a new one) with `descriptor` added, replacing an entry
/// of the same digest.
fn with_referrer(existing: Option<&[u8]>, descriptor: Descriptor) -> Result<Vec<u8>, IndexError> {
    let mut index = match existing {
        Some(bytes) => serde_json::from_slice::<ImageIndex>(bytes)
            .map_err(|cause| IndexError::NotIndex { cause })?,
        None => ImageIndex::default(),
    };
    index.set_schema_version(2);
    index.set_media_type(Some(MediaType::ImageIndex));
    let mut manifests = index.manifests().clone();
    manifests.retain(|m| m.digest() != descriptor.digest());
    manifests.push(descriptor);
    index.set_manifests(manifests);
    serde_json::to_vec(&index).map_err(|cause| IndexError::Write { cause })
}

/// The descriptors of a referrers index with artifact type `artifact_type` (a registry may
/// have ignored the filter asked for).
fn of_type(index: &[u8], artifact_type: &str) -> Result<Vec<Descriptor>, IndexError> {
    let index: ImageIndex =
        serde_json::from_slice(index).map_err(|cause| IndexError::NotIndex { cause })?;
    Ok(index
        .manifests()
        .iter()
        .filter(|d| {
            d.artifact_type()
                .as_ref()
                .is_some_and(|t| t.to_string() == artifact_type)
        })
        .cloned()
        .collect())
}

/// `s` as a query value: unreserved characters and `/` as they are, the rest percent-encoded
/// (`+` in a media type would read as a space).
fn query_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(digest: &str, artifact_type: Option<&str>) -> Descriptor {
        let mut d = Descriptor::new(MediaType::ImageManifest, 10, digest::parse(digest).unwrap());
        d.set_artifact_type(artifact_type.map(MediaType::from));
        d
    }

    #[test]
    fn keeps_the_fallback_index() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let first = with_referrer(None, descriptor(&a, Some("x/one"))).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], OCI_INDEX);
        let second = with_referrer(Some(&first), descriptor(&b, Some("x/two"))).unwrap();
        let again = with_referrer(Some(&second), descriptor(&a, Some("x/one"))).unwrap();
        let digests: Vec<String> = serde_json::from_slice::<ImageIndex>(&again)
            .unwrap()
            .manifests()
            .iter()
            .map(|d| d.digest().to_string())
            .collect();
        assert_eq!(digests, [b.clone(), a.clone()]);
        let one = of_type(&again, "x/one").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].digest().to_string(), a);
        assert!(of_type(&again, "x/none").unwrap().is_empty());
        assert!(with_referrer(Some(b"[]"), descriptor(&a, None)).is_err());
        assert!(of_type(b"{", "x").is_err());
    }

    #[test]
    fn completes_upload_locations() {
        let d = digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let q = format!("digest=sha256%3A{}", "ab".repeat(32));
        let started = "http://127.0.0.1:5000/v2/a/b/blobs/uploads/";
        let cases = [
            (
                "/v2/a/b/blobs/uploads/u1?_state=x",
                format!("http://127.0.0.1:5000/v2/a/b/blobs/uploads/u1?_state=x&{q}"),
            ),
            (
                "/v2/a/b/blobs/uploads/u1",
                format!("http://127.0.0.1:5000/v2/a/b/blobs/uploads/u1?{q}"),
            ),
            (
                "u2",
                format!("http://127.0.0.1:5000/v2/a/b/blobs/uploads/u2?{q}"),
            ),
            (
                "https://upload.example/s/u3?sig=1",
                format!("https://upload.example/s/u3?sig=1&{q}"),
            ),
        ];
        for (location, want) in cases {
            assert_eq!(
                upload_url(started, location, &d).as_deref(),
                Some(want.as_str())
            );
        }
        assert_eq!(upload_url(started, "", &d), None);
    }

    #[test]
    fn finds_next_pages() {
        let cases = [
            (
                r#"</v2/a/referrers/x?n=1>; rel="next""#,
                Some("/v2/a/referrers/x?n=1"),
            ),
            (
                r#"<https://r.example/p2>;rel=next"#,
                Some("https://r.example/p2"),
            ),
            (r#"<a>; rel="prev", <b>; rel="next""#, Some("b")),
            (r#"<a>; rel="prev""#, None),
            ("", None),
            ("<unterminated; rel=next", None),
        ];
        for (value, want) in cases {
            assert_eq!(next_link(value), want, "{value}");
        }
    }

    #[test]
    fn names_fallback_tags_and_queries() {
        let d = digest::parse(&format!("sha256:{}", "0f".repeat(32))).unwrap();
        assert_eq!(fallback_tag(&d), format!("sha256-{}", "0f".repeat(32)));
        let long = digest::parse(&format!("sha512:{}", "1".repeat(128))).unwrap();
        assert_eq!(fallback_tag(&long), format!("sha512-{}", "1".repeat(64)));
        assert!(valid_tag(&fallback_tag(&long)));
        assert_eq!(
            query_encode("application/vnd.imgfs.index.v1+json"),
            "application/vnd.imgfs.index.v1%2Bjson"
        );
        assert_eq!(query_encode("sha256:ab"), "sha256%3Aab");
    }
}
