//! A lazy image's entry beyond its index: the record of its layers as its manifest
//! describes them (`config.json`, `layers.json`), written when it is prepared, and what that
//! record takes to make the image, or one layer of it, whole from the store once every span
//! is there: its layers' sparse blobs read as a [`LayerSource`] ([`Filled`]), each checked
//! against its digest, and each layer as the entry a whole fetch of it would fill
//! ([`WholeLayer`]).
//!
//! Takes a lazy image's entry and its [`Image`]; hands on the image read back, and its
//! layers. Guarantees that a sparse blob is read only through its digest's check.

use std::path::PathBuf;

use super::key::EntryKey;
use super::{Cache, CacheError, Entry};
use crate::source::{Image, Layer, LayerSource, SourceError};

/// What the store keys a lazy layer under: its compressed blob's digest, which the seek
/// table addresses (a whole layer is keyed by its diff id).
pub(crate) fn layer_key(layer: &Layer) -> Option<EntryKey> {
    layer.digest.as_ref().map(|d| EntryKey::Lazy(d.to_string()))
}

/// In a lazy image's entry: its config, and its layers as the manifest describes them — what
/// it takes to make the image whole from the store once every span is there.
const CONFIG_FILE: &str = "config.json";
const LAYER_INFO_FILE: &str = "layers.json";

/// Records `img`'s config and layers in its lazy entry, as [`read_layer_info`] reads them.
pub(crate) fn write_layer_info(entry: &Entry, img: &Image) -> Result<(), CacheError> {
    let layers: Vec<serde_json::Value> = img
        .layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "digest": l.digest.as_ref().map(|d| d.to_string()),
                "size": l.size,
                "compression": match l.compression {
                    crate::source::Compression::Gzip => "gzip",
                    crate::source::Compression::Zstd => "zstd",
                    _ => "none",
                },
                "diff_id": l.diff_id.to_string(),
                "media_type": l.media_type,
                "annotations": l.annotations,
            })
        })
        .collect();
    let info = serde_json::json!({
        "manifest_digest": img.manifest_digest,
        "layers": layers,
    });
    entry.write_file(CONFIG_FILE, &img.config)?;
    entry.write_file(LAYER_INFO_FILE, info.to_string().as_bytes())?;
    Ok(())
}

/// The image a lazy entry describes, as [`write_layer_info`] recorded it.
pub(crate) fn read_layer_info(entry: &Entry) -> Option<Image> {
    let config = std::fs::read(entry.dir().join(CONFIG_FILE)).ok()?;
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.dir().join(LAYER_INFO_FILE)).ok()?).ok()?;
    let mut layers = Vec::new();
    for l in info["layers"].as_array()? {
        let digest: oci_spec::image::Digest = l["digest"].as_str()?.parse().ok()?;
        layers.push(Layer {
            locator: digest.to_string(),
            digest: Some(digest),
            size: Some(l["size"].as_u64()?),
            compression: match l["compression"].as_str()? {
                "gzip" => crate::source::Compression::Gzip,
                "zstd" => crate::source::Compression::Zstd,
                _ => crate::source::Compression::None,
            },
            diff_id: l["diff_id"].as_str()?.parse().ok()?,
            media_type: l["media_type"].as_str()?.to_string(),
            annotations: serde_json::from_value(l["annotations"].clone()).ok()?,
        });
    }
    Some(Image {
        manifest_digest: info["manifest_digest"].as_str().map(str::to_string),
        manifest_media_type: None,
        manifest_size: None,
        config_digest: entry.marker()?,
        config,
        layers,
    })
}

/// The layers of a lazy image, read from their sparse blobs in the store once every span is
/// there: each checked against its digest as a registry's would be.
pub(crate) struct Filled {
    what: String,
    dirs: Vec<(String, PathBuf)>,
}

impl Filled {
    /// The layers whose lazy entries are `dirs`, each by its blob digest; `what` names them
    /// in errors.
    pub(crate) fn new(what: String, dirs: Vec<(String, PathBuf)>) -> Filled {
        Filled { what, dirs }
    }
}

impl LayerSource for Filled {
    fn open_layer(&self, layer: &Layer) -> Result<Box<dyn std::io::Read + Send + '_>, SourceError> {
        let digest = layer
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let dir = self
            .dirs
            .iter()
            .find(|(d, _)| *d == digest)
            .map(|(_, p)| p)
            .ok_or_else(|| SourceError::Invalid {
                what: self.what.clone(),
                why: format!("layer {digest} is not in the store"),
            })?;
        let path = dir.join(super::sparse::SPARSE_FILE);
        let file = std::fs::File::open(&path).map_err(|source| SourceError::Io {
            path: path.clone(),
            source,
        })?;
        let expected = layer.digest.as_ref().ok_or_else(|| SourceError::Invalid {
            what: self.what.clone(),
            why: "a layer without a digest".into(),
        })?;
        let verified =
            crate::source::digest::Verified::new(file, expected, layer.size).map_err(|source| {
                SourceError::Digest {
                    what: path.display().to_string(),
                    source,
                }
            })?;
        Ok(Box::new(verified))
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// The store's fill of a layer from a source, checked as a whole fetch checks it; where its
/// uncompressed tar is. Given by the stage that fills the store (`prepare`).
pub type FillLayer = fn(
    &Cache,
    &dyn LayerSource,
    &Layer,
) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>>;

/// Where a served lazy image's layers are made whole ([`crate::image::promote`]): the store, the image's entry in it
/// (which records each layer's blob digest and diff id), and how the store fills a layer.
#[derive(Clone, Debug)]
pub struct LayerStore {
    pub cache: Cache,
    pub entry: Entry,
    pub fill: FillLayer,
}

/// A layer of a lazy image as the image's entry recorded it: what it takes to make it whole
/// in the store from its sparse blob while the image is mounted ([`crate::image::promote`]),
/// into the entry a whole fetch of the layer would fill, so that the next mount's
/// promotion of the whole image finds it there.
pub(crate) struct WholeLayer {
    what: String,
    layer: Layer,
    cache: Cache,
}

impl WholeLayer {
    /// The layer's blob digest, which names its lazy entry.
    pub(crate) fn digest(&self) -> String {
        self.layer
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default()
    }

    /// Its uncompressed tar, when a complete entry of the store holds it.
    pub(crate) fn stored(&self) -> Option<PathBuf> {
        let entry = self.cache.layer(&self.layer.store_key().0);
        entry.marker()?;
        Some(self.cache.layer_path(&self.layer))
    }

    /// Decompresses the layer's sparse blob — every span of it must be there — into its
    /// entry with `store`, the store's fill of a layer from a source (which checks it against
    /// the blob's digest and the diff id as a whole fetch does); where its tar is. A failure
    /// leaves no entry.
    pub(crate) fn fill<E: From<SourceError>>(
        &self,
        store: impl FnOnce(&Cache, &dyn LayerSource, &Layer) -> Result<PathBuf, E>,
    ) -> Result<PathBuf, E> {
        let key = layer_key(&self.layer).ok_or_else(|| SourceError::Invalid {
            what: self.what.clone(),
            why: "a layer without a digest".into(),
        })?;
        let source = Filled {
            what: self.what.clone(),
            dirs: vec![(self.digest(), self.cache.layer(&key).dir().to_path_buf())],
        };
        store(&self.cache, &source, &self.layer)
    }
}

/// The layers of the lazy image whose entry is `store`'s, bottom first; `None` when that is
/// not a lazy image's entry.
pub(crate) fn whole_layers(store: &LayerStore) -> Option<Vec<WholeLayer>> {
    let img = read_layer_info(&store.entry)?;
    let what = format!("lazy image {}", img.config_digest);
    Some(
        img.layers
            .into_iter()
            .map(|layer| WholeLayer {
                what: what.clone(),
                layer,
                cache: store.cache.clone(),
            })
            .collect(),
    )
}
