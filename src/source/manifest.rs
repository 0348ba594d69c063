//! From a manifest to an [`Image`]: image indexes and Docker manifest lists are narrowed to
//! one platform, an image manifest (OCI or Docker schema 2) names the config and the layers,
//! and the config gives the layers' uncompressed digests. Every document is read whole,
//! bounded, checked against its digest and parsed with the OCI types — all of it is treated
//! as hostile input.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use super::digest::{self, DigestError};
use super::{Compression, Image, Layer, Platform, SourceError};

/// Largest manifest, index or config read: far above real ones (tens of kB), low enough
/// that a hostile source cannot exhaust memory.
pub(crate) const MAX_DOCUMENT: u64 = 8 << 20;
/// Most indexes followed to reach a manifest (an index may name an index).
const MAX_DEPTH: usize = 4;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// What a registry is asked for: every manifest type imgfs reads.
pub(crate) const ACCEPT: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Where the documents a manifest names come from.
pub trait Documents {
    /// The whole content `d` names, at most [`MAX_DOCUMENT`] bytes, checked against its
    /// digest and size.
    fn document(&self, d: &Descriptor) -> Result<Vec<u8>, SourceError>;
}

/// What kind of document a media type names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Index,
    Manifest,
}

pub(crate) fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Manifest),
        _ => None,
    }
}

/// A document without a media type (an OCI layout's index.json entries may lack it on
/// nested documents, and some writers leave it out): told apart by its fields.
fn sniff(bytes: &[u8]) -> Option<Kind> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(mt) = v["mediaType"].as_str() {
        return kind_of(mt);
    }
    if v.get("manifests").is_some() {
        Some(Kind::Index)
    } else if v.get("layers").is_some() {
        Some(Kind::Manifest)
    } else {
        None
    }
}

/// Resolves a manifest or index document (`bytes`, already verified, with `digest`) to an
/// image of `platform`. `what` names the source in messages.
pub fn resolve(
    docs: &dyn Documents,
    what: &str,
    media_type: Option<&str>,
    bytes: Vec<u8>,
    digest: String,
    platform: &Platform,
) -> Result<Image, SourceError> {
    let mut media_type = media_type.map(str::to_string);
    let mut bytes = bytes;
    let mut digest = digest;
    for _ in 0..MAX_DEPTH {
        let kind = match media_type.as_deref() {
            Some(mt) if !mt.is_empty() => kind_of(mt),
            _ => sniff(&bytes),
        };
        match kind {
            Some(Kind::Manifest) => {
                return image_of(
                    docs,
                    what,
                    &bytes,
                    digest,
                    media_type.filter(|m| !m.is_empty()),
                );
            }
            Some(Kind::Index) => {
                let index: ImageIndex = parse(what, "image index", &bytes)?;
                let d = choose(what, index.manifests(), platform)?;
                bytes = docs.document(d)?;
                digest = d.digest().to_string();
                media_type = Some(d.media_type().to_string());
            }
            None => {
                return Err(SourceError::MediaType {
                    what: what.to_string(),
                    media_type: media_type.unwrap_or_else(|| "(none)".into()),
                });
            }
        }
    }
    Err(SourceError::Invalid {
        what: what.to_string(),
        why: format!("image indexes nest more than {MAX_DEPTH} deep"),
    })
}

fn parse<T: serde::de::DeserializeOwned>(
    what: &str,
    doc: &'static str,
    bytes: &[u8],
) -> Result<T, SourceError> {
    serde_json::from_slice(bytes).map_err(|source| SourceError::Json {
        what: what.to_string(),
        doc,
        source,
    })
}

/// The manifest of `platform` in an index.
fn choose<'d>(
    what: &str,
    manifests: &'d [Descriptor],
    platform: &Platform,
) -> Result<&'d Descriptor, SourceError> {
    let matches = |d: &&Descriptor| match d.platform() {
        Some(p) => platform.matches(p),
        None => false,
    };
    // An index without platforms (an OCI layout's list of images) has one choice at most.
    if manifests.iter().all(|d| d.platform().is_none()) && manifests.len() == 1 {
        return Ok(&manifests[0]);
    }
    manifests
        .iter()
        .find(matches)
        .ok_or_else(|| SourceError::Platform {
            what: what.to_string(),
            wanted: platform.to_string(),
            available: manifests
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(Platform::describe)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn image_of(
    docs: &dyn Documents,
    what: &str,
    bytes: &[u8],
    manifest_digest: String,
    media_type: Option<String>,
) -> Result<Image, SourceError> {
    let manifest: ImageManifest = parse(what, "image manifest", bytes)?;
    let media_type = media_type.or_else(|| manifest.media_type().as_ref().map(|m| m.to_string()));
    let config_d = manifest.config();
    let config = docs.document(config_d)?;
    let parsed: ImageConfiguration = parse(what, "image config", &config)?;
    let diff_ids = parsed.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(SourceError::Invalid {
            what: what.to_string(),
            why: format!(
                "the manifest lists {} layers but the config {}",
                manifest.layers().len(),
                diff_ids.len()
            ),
        });
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (d, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let diff_id = digest::parse(diff_id).map_err(|source| SourceError::Digest {
            what: format!("{what}: layer {}", d.digest()),
            source,
        })?;
        let compression =
            Compression::of_media_type(d.media_type()).ok_or_else(|| SourceError::MediaType {
                what: format!("{what}: layer {}", d.digest()),
                media_type: d.media_type().to_string(),
            })?;
        layers.push(Layer {
            locator: d.digest().to_string(),
            digest: Some(d.digest().clone()),
            size: Some(d.size()),
            compression,
            diff_id,
            media_type: d.media_type().to_string(),
            annotations: d.annotations().clone().unwrap_or_default(),
        });
    }
    Ok(Image {
        manifest_digest: Some(manifest_digest),
        manifest_media_type: media_type,
        manifest_size: Some(bytes.len() as u64),
        config_digest: config_d.digest().to_string(),
        config,
        layers,
    })
}

/// Reads a document through `open`, bounded and verified: the shared body of
/// [`Documents::document`] for sources that can open a blob as a stream.
pub(crate) fn read_document<'a>(
    d: &Descriptor,
    what: &str,
    open: impl FnOnce() -> Result<Box<dyn std::io::Read + Send + 'a>, SourceError>,
) -> Result<Vec<u8>, SourceError> {
    use std::io::Read;
    if d.size() > MAX_DOCUMENT {
        return Err(SourceError::Invalid {
            what: what.to_string(),
            why: format!(
                "{} is {} bytes, more than a document may be",
                d.digest(),
                d.size()
            ),
        });
    }
    let reader = open()?;
    let mut verified =
        digest::Verified::new(reader, d.digest(), Some(d.size())).map_err(|source| {
            SourceError::Digest {
                what: what.to_string(),
                source,
            }
        })?;
    let mut out = Vec::with_capacity(d.size() as usize);
    verified
        .read_to_end(&mut out)
        .map_err(|e| match e.downcast::<DigestError>() {
            Ok(source) => SourceError::Digest {
                what: format!("{what}: {}", d.digest()),
                source,
            },
            Err(source) => SourceError::Read {
                what: format!("{what}: {}", d.digest()),
                source,
            },
        })?;
    Ok(out)
}

impl Compression {
    /// The compression a layer media type names; `None` for what is not a layer imgfs reads.
    pub(crate) fn of_media_type(mt: &MediaType) -> Option<Compression> {
        let s = mt.to_string();
        match s.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}
