//! Reading from a repository: the manifest a reference names, bounded and verified against
//! the digest it was asked by or the registry's `Docker-Content-Digest`; manifests and small
//! blobs by digest, read whole and verified; and, as the [`Documents`] and [`LayerSource`] of
//! an image, its config and its layers as streams checked against their digest and size.

use std::io::Read;

use oci_spec::image::{Descriptor, Digest};
use ureq::Body;
use ureq::http::Response;

use super::http::{Call, FETCHED, Kind};
use super::{Registry, RegistryError};
use crate::source::digest::{self, Verified};
use crate::source::manifest::{self, Documents, MAX_DOCUMENT};
use crate::source::{Layer, LayerSource, SourceError};
use crate::sys::trace;

/// A manifest as fetched: its bytes, media type (when the answer says) and digest.
pub(super) type Manifest = (Vec<u8>, Option<String>, String);

impl Registry {
    /// The manifest or index the reference names: its bytes, media type and digest.
    pub(super) fn top_manifest(&self) -> Result<Manifest, RegistryError> {
        let target = self.reference.target();
        self.manifest_at(&self.what, &target, self.reference.digest.as_ref(), false)?
            .ok_or_else(|| unknown_manifest(&self.what))
    }

    /// The manifest `/manifests/TARGET` names: its bytes, media type (from the answer's
    /// `Content-Type`, when it says something) and digest, checked against `expected` and
    /// the registry's `Docker-Content-Digest`. With `missing_ok`, a 404 is `None`.
    pub(super) fn manifest_at(
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
        let start = trace::now();
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
        trace::event("manifest", start, &format!("\"bytes\":{}", bytes.len()));
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
    pub(super) fn read_bounded(
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
            .map_err(|cause| RegistryError::Transport {
                what: what.to_string(),
                url: format!("{}{path}", self.base),
                tries: 1,
                cause,
            })?;
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(too_large());
        }
        Ok(bytes)
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
        let start = trace::now();
        let stream = self.stream(what.clone(), Kind::Blob, digest, Some(size))?;
        let mut verified =
            Verified::new(stream, digest, Some(size)).map_err(|cause| RegistryError::Content {
                what: what.clone(),
                cause,
            })?;
        let mut out = Vec::with_capacity(size as usize);
        verified.read_to_end(&mut out).map_err(|e| {
            let e = match e.downcast::<RegistryError>() {
                Ok(inner) => return inner,
                Err(e) => e,
            };
            match e.downcast::<digest::DigestError>() {
                Ok(cause) => RegistryError::Content { what, cause },
                Err(cause) => RegistryError::Body { what, cause },
            }
        })?;
        trace::event("blob", start, &trace_fields(digest, 0, size));
        Ok(out)
    }
}

/// An exchange's fields in the trace: the blob (its digest's first 12 hex digits), how many
/// ranges were asked (0: the whole blob) and the bytes they hold.
pub(super) fn trace_fields(digest: &Digest, ranges: usize, bytes: u64) -> String {
    let short: String = digest.digest().chars().take(12).collect();
    format!("\"blob\":\"{short}\",\"ranges\":{ranges},\"bytes\":{bytes}")
}

/// A 404 for a manifest (`manifest_at` gives it as an error already unless asked not to).
fn unknown_manifest(what: &str) -> RegistryError {
    RegistryError::NotFound {
        what: what.to_string(),
        status: 404,
        message: "manifest unknown".into(),
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
