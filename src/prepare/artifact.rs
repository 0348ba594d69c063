//! The imgfs index artifact: what a registry keeps beside an image so that the image can be
//! mounted lazily — its merged index, and for each layer a seek table of its compressed blob.
//!
//! It is an OCI artifact (an image manifest with `artifactType` [`ARTIFACT_TYPE`]) whose
//! `subject` is the image's (platform) manifest, so a client finds it through the referrers
//! API or its tag fallback. Its blobs:
//!
//! - the empty config (`application/vnd.oci.empty.v1+json`, `{}`), as the spec asks of
//!   artifacts;
//! - the merged index ([`TREE_MEDIA_TYPE`]): the index file imgfs keeps for the image
//!   ([`crate::index::format`], with its own magic, version and checksum), zstd-compressed;
//! - one seek table per layer of the image, bottom first ([`SEEK_MEDIA_TYPE`],
//!   [`crate::index::seek`], versioned and checksummed), each annotated with the digest of
//!   the layer it describes ([`LAYER_ANNOTATION`]);
//! - then one windows blob per layer, in the same order and annotated the same way
//!   ([`WINDOWS_MEDIA_TYPE`]): the deflate windows the layer's seek table names by offset and
//!   digest. A mount never fetches it whole, only the windows its reads need, by range;
//! - last, optionally, the prefetch list ([`PREFETCH_MEDIA_TYPE`]).
//!
//! Everything read here is hostile until checked: the manifest against the image it claims
//! to describe, every blob against its digest and a size bound, the index and the seek
//! tables by their own decoders, and then against each other and the image's layers.

use oci_spec::image::{Descriptor, Digest, MediaType};

use crate::index::format::Index;
use crate::index::seek::SeekTable;
use crate::source::{Compression, Image};

/// The artifact type of an imgfs index.
/// Version 2: the seek tables keep their windows in blobs of their own.
pub(crate) const ARTIFACT_TYPE: &str = "application/vnd.imgfs.index.v2";
/// Artifact types of imgfs indexes this version no longer reads: such an index is reported,
/// not used (the image is then fetched whole until its index is pushed again).
pub(crate) const OLD_ARTIFACT_TYPES: &[&str] = &["application/vnd.imgfs.index.v1"];
/// The merged index, zstd-compressed.
pub const TREE_MEDIA_TYPE: &str = "application/vnd.imgfs.index.tree.v1+zstd";
/// A layer's seek table (its format version 2).
pub const SEEK_MEDIA_TYPE: &str = "application/vnd.imgfs.index.seek.v2";
/// A layer's windows blob.
pub const WINDOWS_MEDIA_TYPE: &str = "application/vnd.imgfs.index.windows.v1";
/// The spans a recorded run of a program read, to fetch first: `LAYER SPAN` lines.
pub const PREFETCH_MEDIA_TYPE: &str = "application/vnd.imgfs.index.prefetch.v1";
/// Largest prefetch list accepted.
pub(crate) const MAX_PREFETCH: u64 = 16 << 20;
/// On a seek table's descriptor: the digest of the layer blob it describes.
pub const LAYER_ANNOTATION: &str = "io.imgfs.layer.digest";
/// On the artifact: the span size it was built with, for people reading it.
pub(crate) const SPAN_ANNOTATION: &str = "io.imgfs.span";
/// The OCI empty descriptor's media type and content, for an artifact's config.
pub(crate) const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub(crate) const EMPTY: &[u8] = b"{}";
/// Largest merged index accepted, compressed or not: an image of a million entries has an
/// index of about 100 MiB.
pub(crate) const MAX_TREE: u64 = 256 << 20;
/// Largest seek table accepted: a record per span, so a 100 GiB layer in 256 KiB spans.
pub(crate) const MAX_SEEK: u64 = 64 << 20;
/// Largest windows blob accepted (it is only ever read by range): the windows of a 100 GiB
/// layer in 64 KiB spans.
pub(crate) const MAX_WINDOWS: u64 = 64 << 30;

/// How long the spans of the layers' seek tables are: one size for every layer, or chosen
/// for each ([`Span::for_layer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    Fixed(u64),
    Auto,
}

/// `--span auto`: at most about this many spans in a layer's seek table.
const AUTO_SPANS: u64 = 2048;
/// `--span auto`: the shortest and the longest span.
const AUTO_MIN: u64 = 64 << 10;
const AUTO_MAX: u64 = 1 << 20;

impl Span {
    /// The span for a layer of `compressed` bytes. Auto: the layer's size over
    /// [`AUTO_SPANS`], rounded up to a power of two, within 64 KiB and 1 MiB. A read fetches
    /// whole spans, so short ones fetch little beyond a small file; but every cold mount
    /// fetches every layer's seek table, a record per span, so a large layer gets longer
    /// ones: its table stays near 2048 records (~240 KB) however large it is.
    pub fn for_layer(self, compressed: Option<u64>) -> u64 {
        match self {
            Span::Fixed(n) => n,
            Span::Auto => compressed
                .map_or(AUTO_MIN, |c| c.div_ceil(AUTO_SPANS).next_power_of_two())
                .clamp(AUTO_MIN, AUTO_MAX),
        }
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Span::Fixed(n) => write!(f, "{n}"),
            Span::Auto => f.write_str("auto"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("the artifact manifest is not valid: {0}")]
    Json(serde_json::Error),
    #[error("the artifact is of type {0:?}, not an imgfs index")]
    ArtifactType(Option<String>),
    #[error("the artifact's subject is {actual}, not the image's manifest {expected}")]
    Subject { actual: String, expected: String },
    #[error(
        "the artifact has {actual} blobs besides its prefetch list for an image of {layers} layers"
    )]
    LayerCount { actual: usize, layers: usize },
    #[error("blob {index} of the artifact is a {actual}, not a {expected}")]
    MediaType {
        index: usize,
        actual: String,
        expected: &'static str,
    },
    #[error(
        "blob {index} of the artifact describes layer {actual}, not the image's layer {expected}"
    )]
    Layer {
        index: usize,
        actual: String,
        expected: String,
    },
    #[error("blob {index} of the artifact claims {size} bytes, over the limit of {limit}")]
    TooBig { index: usize, size: u64, limit: u64 },
    #[error("the merged index cannot be decompressed: {0}")]
    Decompress(std::io::Error),
    #[error("the merged index is not valid: {0}")]
    Tree(crate::index::format::FormatError),
    #[error("the seek table of layer {layer} is not valid: {cause}")]
    Seek {
        layer: String,
        cause: crate::index::seek::SeekError,
    },
    #[error("the seek table of layer {layer} {why}")]
    Mismatch { layer: String, why: String },
}

impl From<serde_json::Error> for ArtifactError {
    /// The message quotes the parser's, so it is not also the error's source.
    fn from(e: serde_json::Error) -> ArtifactError {
        ArtifactError::Json(e)
    }
}

/// The artifact's blobs, as its manifest lists them, checked against the image.
pub struct Artifact {
    pub tree: Descriptor,
    /// One per layer of the image, bottom first.
    pub seeks: Vec<Descriptor>,
    /// The windows blob of each seek table, in the same order.
    pub windows: Vec<Descriptor>,
    /// The prefetch list, when a run was recorded.
    pub prefetch: Option<Descriptor>,
}

/// The artifact's manifest for an image whose manifest is `subject`.
pub fn manifest(
    subject: &Descriptor,
    tree: &Descriptor,
    seeks: &[Descriptor],
    windows: &[Descriptor],
    prefetch: Option<&Descriptor>,
    span: impl std::fmt::Display,
) -> Vec<u8> {
    let layers: Vec<&Descriptor> = std::iter::once(tree)
        .chain(seeks)
        .chain(windows)
        .chain(prefetch)
        .collect();
    let config = serde_json::json!({
        "mediaType": EMPTY_MEDIA_TYPE,
        "digest": crate::source::digest::sha256(EMPTY),
        "size": EMPTY.len(),
        "data": "e30=",
    });
    let doc = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT_TYPE,
        "config": config,
        "layers": layers,
        "subject": subject,
        "annotations": { SPAN_ANNOTATION: span.to_string() },
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// A descriptor of `bytes` as a blob of `media_type`.
pub fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    let digest: Digest = crate::source::digest::sha256(bytes)
        .parse()
        .expect("a sha256 digest of our own making parses");
    Descriptor::new(MediaType::from(media_type), bytes.len() as u64, digest)
}

/// Reads an artifact manifest and checks it describes `image`, whose manifest is `subject`.
pub fn parse(bytes: &[u8], image: &Image, subject: &str) -> Result<Artifact, ArtifactError> {
    let m: oci_spec::image::ImageManifest = serde_json::from_slice(bytes)?;
    let kind = m.artifact_type().as_ref().map(|t| t.to_string());
    if kind.as_deref() != Some(ARTIFACT_TYPE) {
        return Err(ArtifactError::ArtifactType(kind));
    }
    let actual = m.subject().as_ref().map(|s| s.digest().to_string());
    if actual.as_deref() != Some(subject) {
        return Err(ArtifactError::Subject {
            actual: actual.unwrap_or_else(|| "missing".into()),
            expected: subject.to_string(),
        });
    }
    let mut blobs = m.layers().as_slice();
    let prefetch = match blobs.last() {
        Some(d) if d.media_type().to_string() == PREFETCH_MEDIA_TYPE => {
            if d.size() > MAX_PREFETCH {
                return Err(ArtifactError::TooBig {
                    index: blobs.len() - 1,
                    size: d.size(),
                    limit: MAX_PREFETCH,
                });
            }
            blobs = &blobs[..blobs.len() - 1];
            Some(d.clone())
        }
        _ => None,
    };
    let layers = image.layers.len();
    if blobs.len() != 2 * layers + 1 {
        return Err(ArtifactError::LayerCount {
            actual: blobs.len(),
            layers,
        });
    }
    for (i, d) in blobs.iter().enumerate() {
        let (expected, limit) = if i == 0 {
            (TREE_MEDIA_TYPE, MAX_TREE)
        } else if i <= layers {
            (SEEK_MEDIA_TYPE, MAX_SEEK)
        } else {
            (WINDOWS_MEDIA_TYPE, MAX_WINDOWS)
        };
        if d.media_type().to_string() != expected {
            return Err(ArtifactError::MediaType {
                index: i,
                actual: d.media_type().to_string(),
                expected,
            });
        }
        if d.size() > limit {
            return Err(ArtifactError::TooBig {
                index: i,
                size: d.size(),
                limit,
            });
        }
    }
    let described = blobs[1..].iter().zip(image.layers.iter().cycle());
    for (i, (d, layer)) in described.enumerate() {
        let described = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(LAYER_ANNOTATION))
            .cloned()
            .unwrap_or_default();
        let expected = layer
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default();
        if described != expected || expected.is_empty() {
            return Err(ArtifactError::Layer {
                index: i + 1,
                actual: described,
                expected,
            });
        }
    }
    Ok(Artifact {
        tree: blobs[0].clone(),
        seeks: blobs[1..=layers].to_vec(),
        windows: blobs[layers + 1..].to_vec(),
        prefetch,
    })
}

/// Decompresses the merged index (bounded) and checks it: its own checksum, and one blob per
/// layer, keyed as the store keys the layer.
pub fn open_tree(compressed: &[u8], image: &Image) -> Result<Vec<u8>, ArtifactError> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(compressed)
        .and_then(|d| d.take(MAX_TREE + 1).read_to_end(&mut out))
        .map_err(ArtifactError::Decompress)?;
    if out.len() as u64 > MAX_TREE {
        return Err(ArtifactError::TooBig {
            index: 0,
            size: out.len() as u64,
            limit: MAX_TREE,
        });
    }
    let index = Index::new(&out[..]).map_err(ArtifactError::Tree)?;
    if index.blob_count() as usize != image.layers.len() {
        return Err(ArtifactError::LayerCount {
            actual: index.blob_count() as usize,
            layers: image.layers.len(),
        });
    }
    Ok(out)
}

/// Decodes layer `i`'s seek table and checks it against the layer, the merged index and the
/// size of its windows blob (`windows`, as the artifact's manifest states it).
pub fn open_seek(
    bytes: &[u8],
    image: &Image,
    i: usize,
    tree: &[u8],
    windows: u64,
) -> Result<SeekTable, ArtifactError> {
    let layer = &image.layers[i];
    let name = layer
        .digest
        .as_ref()
        .map_or_else(|| layer.locator.clone(), |d| d.to_string());
    let table = SeekTable::decode(bytes).map_err(|source| ArtifactError::Seek {
        layer: name.clone(),
        cause: source,
    })?;
    let mismatch = |why: String| ArtifactError::Mismatch {
        layer: name.clone(),
        why,
    };
    if Some(table.compressed_size()) != layer.size {
        return Err(mismatch(format!(
            "is for a blob of {} bytes, the layer has {:?}",
            table.compressed_size(),
            layer.size
        )));
    }
    if table.windows_size() != windows {
        return Err(mismatch(format!(
            "names {} bytes of windows, its windows blob has {windows}",
            table.windows_size()
        )));
    }
    let wanted = seek_compression(layer.compression);
    if table.compression() != wanted {
        return Err(mismatch(format!(
            "is for {:?} data, the layer is {:?}",
            table.compression(),
            wanted
        )));
    }
    let index = Index::unchecked(tree).map_err(ArtifactError::Tree)?;
    let (size, key) = index
        .blob(i as u32)
        .ok_or_else(|| mismatch("has no blob in the merged index".into()))?;
    if size != table.uncompressed_size() {
        return Err(mismatch(format!(
            "gives {} bytes of tar, the merged index {size}",
            table.uncompressed_size()
        )));
    }
    if key != layer.store_key().0.as_bytes() {
        return Err(mismatch(
            "is not the merged index's blob of that layer".into(),
        ));
    }
    Ok(table)
}

/// The seek table's kind for a layer compressed as `c`.
pub(crate) fn seek_compression(c: Compression) -> crate::index::seek::SeekCompression {
    use crate::index::seek::SeekCompression;
    match c {
        Compression::Gzip => SeekCompression::Gzip,
        Compression::Zstd => SeekCompression::Zstd,
        _ => SeekCompression::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_spans_are_short_but_bound_a_layers_table() {
        const K: u64 = 1 << 10;
        const M: u64 = 1 << 20;
        let auto = |c| Span::Auto.for_layer(Some(c));
        // A small or typical layer: the shortest span.
        assert_eq!(auto(3 * K), 64 * K);
        assert_eq!(auto(70 * M), 64 * K);
        assert_eq!(Span::Auto.for_layer(None), 64 * K);
        // Larger ones: about 2048 spans, as a power of two.
        assert_eq!(auto(300 * M), 256 * K);
        assert_eq!(auto(1020 * M), 512 * K);
        assert!(1020 * M / auto(1020 * M) <= AUTO_SPANS);
        // Huge ones: the longest span, whatever the table's length.
        assert_eq!(auto(40 << 30), M);
        assert_eq!(Span::Fixed(256 * K).for_layer(Some(40 << 30)), 256 * K);
    }
}
