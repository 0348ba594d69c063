//! A lazy image once found — by its imgfs index artifact (`indexed.rs`) or by its
//! layers' TOCs (`toc.rs`) — made ready in the store: its layers' bytes come later,
//! span by span, as reads need them ([`crate::image::lazy`]).
//!
//! A lazy image gets an image entry (`images/lazy-<config digest>/`: the merged index, the
//! config, the list of its layers) and one entry per layer (`layers/lazy-<blob digest>/`: the
//! seek table, where the blob and its windows blob live, the sparse blob and its map of
//! present spans, the same for the windows), with the store's fill protocol. Spans fetched
//! later go into those complete layer entries: they only ever gain verified bytes.
//!
//! Takes what a strategy found (`Found`); hands on the [`Ready`] image. Also what the
//! strategies that find a lazy image share: the layer keys, the tables, why a find failed
//! (`Unusable`).

use std::path::PathBuf;

use super::artifact::ArtifactError;
use super::entry::{blob_path, claim, usable, write_records};
use super::layer::{layer_path, store_layer as store_whole_layer};
use super::{Options, PrepareError, Ready};
use crate::cache::key::EntryKey;
use crate::cache::sparse::SparseBlob;
use crate::cache::sparse::{REMOTE_FILE, Remote, SEEK_FILE, TOC_FILE, WINDOWS_PRESENT_FILE};
use crate::cache::{self, Cache};
use crate::index::seek::SeekTable;
use crate::source::registry::Registry;
use crate::source::{Image, Layer, LayerSource, Platform, SourceError};

pub use super::push::{Pushed, Record, push};

/// What the store keys a lazy layer under: its compressed blob's digest, which the seek
/// table addresses (a whole layer is keyed by its diff id).
pub fn layer_key(layer: &Layer) -> Option<EntryKey> {
    layer.digest.as_ref().map(|d| EntryKey::Lazy(d.to_string()))
}

/// Why the artifact of an image, or a layer's TOC, could not be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unusable {
    #[error("{0}")]
    Artifact(#[from] ArtifactError),
    #[error("{0}")]
    Registry(#[from] crate::source::registry::RegistryError),
    #[error("the image has no manifest digest")]
    NoManifest,
    #[error("a fetch of the index stopped unexpectedly")]
    Stopped,
    #[error("{0}")]
    Toc(String),
}

/// Makes the lazy image `img` ready from what was `found`: each layer's store entry made,
/// then the image's entry.
#[allow(clippy::too_many_arguments)]
pub(super) fn make(
    what: &str,
    reference: &str,
    platform: &Platform,
    registry: &Registry,
    img: &Image,
    cache: &Cache,
    options: &Options,
    found: Found,
) -> Result<Ready, PrepareError> {
    let Found {
        tree,
        tables,
        keys,
        entry,
        prefetch,
    } = found;
    let entry = cache.entry(&entry);
    let blobs: Vec<PathBuf> = keys.iter().map(|k| blob_path(cache, k)).collect();
    // All at once: each is a few small files written and synced.
    let (insecure, auth_file) = (options.insecure, options.auth_file.as_deref());
    std::thread::scope(|s| {
        let handles: Vec<_> = img
            .layers
            .iter()
            .zip(&keys)
            .zip(&tables)
            .map(|((layer, key), table)| {
                let place = Place {
                    key,
                    insecure,
                    auth_file,
                };
                s.spawn(move || store_layer(cache, registry, layer, place, table))
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join().unwrap_or_else(|_| {
                Err(PrepareError::Source(SourceError::Invalid {
                    what: what.to_string(),
                    why: "a layer's store entry was not made".into(),
                }))
            })
        })
    })?;
    let ready = |built| Ready {
        index_path: entry.index_path(),
        blobs: blobs.clone(),
        image_path: Some(entry.image_path()),
        id: img.config_digest.clone(),
        built,
        warnings: Vec::new(),
    };
    cache.remember_ref(&format!("{reference} {platform}"), &entry.name());
    let complete = |e: &cache::Entry| e.marker().is_some() && usable(&e.index_path(), &blobs);
    let Some(lock) = claim(cache, &entry, complete)? else {
        return Ok(ready(false));
    };
    let written = match prefetch {
        Some(list) => entry
            .write_file(crate::cache::sparse::PREFETCH_FILE, list.as_bytes())
            .map_err(PrepareError::from),
        None => Ok(()),
    }
    .and_then(|()| write_layer_info(&entry, img))
    .and_then(|()| write_records(what, img, &entry, &lock, &tree, &keys));
    if let Err(e) = written {
        entry.discard();
        return Err(e);
    }
    Ok(ready(true))
}

/// What makes an image lazy: its artifact, or its layers' TOCs, fetched and checked.
pub(super) struct Found {
    /// The merged index.
    pub tree: Vec<u8>,
    /// How each layer is read.
    pub tables: Vec<LayerTable>,
    /// Each layer's key in the store.
    pub keys: Vec<EntryKey>,
    /// The name of the image's entry in the store.
    pub entry: EntryKey,
    /// The prefetch list (`LAYER SPAN` lines, checked), when there is one.
    pub prefetch: Option<String>,
}

/// How a layer of a lazy image is read.
pub(super) enum LayerTable {
    /// By its seek table, encoded as the store keeps it, and its windows blob (fetched
    /// later, by range).
    Seek {
        table: Vec<u8>,
        windows: Box<oci_spec::image::Descriptor>,
    },
    /// By its TOC, as the store keeps it ([`crate::cache::sparse::StoredToc`]).
    Toc {
        stored: Vec<u8>,
        spans: usize,
        uncompressed_size: u64,
    },
    /// Whole, from the store (already filled).
    Whole,
}

/// Where a lazy layer is kept and how its registry is reached.
#[derive(Clone, Copy)]
struct Place<'a> {
    /// The store key ([`layer_key`]).
    key: &'a EntryKey,
    /// `--tls-verify=false`, and `--authfile`, as given when the image was prepared.
    insecure: bool,
    auth_file: Option<&'a std::path::Path>,
}

/// Makes the store entry of one lazy layer: its seek table, where its blob and its windows
/// blob live, and empty sparse blobs — unless it is there already, perhaps with spans fetched.
fn store_layer(
    cache: &Cache,
    registry: &Registry,
    layer: &Layer,
    place: Place<'_>,
    table: &LayerTable,
) -> Result<(), PrepareError> {
    if let LayerTable::Whole = table {
        return Ok(()); // filled whole already
    }
    let key = place.key;
    let entry = cache.layer(key);
    // An entry of an older layout (its windows inside the seek table) has no windows map: made
    // again.
    let complete = |e: &cache::Entry| {
        e.marker().is_some()
            && e.dir().join(REMOTE_FILE).exists()
            && e.dir().join(WINDOWS_PRESENT_FILE).exists()
    };
    let Some(lock) = claim(cache, &entry, complete)? else {
        return Ok(());
    };
    let io = |source| PrepareError::Io {
        path: entry.dir().to_path_buf(),
        source,
    };
    let (file, bytes, spans, size, uncompressed_size) = match table {
        LayerTable::Whole => return Ok(()),
        LayerTable::Seek { table: bytes, .. } => {
            let decoded = SeekTable::decode(bytes).map_err(|e| {
                io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ))
            })?;
            (
                SEEK_FILE,
                bytes,
                decoded.spans().len(),
                decoded.compressed_size(),
                decoded.uncompressed_size(),
            )
        }
        LayerTable::Toc {
            stored,
            spans,
            uncompressed_size,
        } => (
            TOC_FILE,
            stored,
            *spans,
            layer.size.unwrap_or_default(),
            *uncompressed_size,
        ),
    };
    let (windows_digest, windows_size) = match table {
        LayerTable::Seek { windows, .. } => (windows.digest().to_string(), windows.size()),
        _ => (String::new(), 0),
    };
    let remote = Remote {
        repository: {
            let r = registry.reference();
            format!("{}/{}", r.registry, r.repository)
        },
        digest: layer
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default(),
        size,
        uncompressed_size,
        windows_digest,
        windows_size,
        insecure: place.insecure,
        auth_file: place.auth_file.map(std::path::Path::to_path_buf),
    };
    let filled = (|| {
        entry.write_file(file, bytes)?;
        let json = serde_json::to_vec(&remote).unwrap_or_default();
        SparseBlob::create(entry.dir(), remote.size, spans).map_err(io)?;
        // A TOC's spans need no windows: an empty map.
        SparseBlob::create_windows(entry.dir(), remote.windows_size, spans).map_err(io)?;
        entry.write_file(REMOTE_FILE, &json)?;
        entry.commit(&lock, &key.to_string())?;
        Ok(())
    })();
    if filled.is_err() {
        entry.discard();
    }
    filled
}

/// In a lazy image's entry: its config, and its layers as the manifest describes them — what
/// it takes to make the image whole from the store once every span is there.
const CONFIG_FILE: &str = "config.json";
const LAYER_INFO_FILE: &str = "layers.json";

fn write_layer_info(entry: &cache::Entry, img: &Image) -> Result<(), PrepareError> {
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
pub(super) fn read_layer_info(entry: &cache::Entry) -> Option<Image> {
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
pub(super) struct Filled {
    pub what: String,
    pub dirs: Vec<(String, PathBuf)>,
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
        let path = dir.join(crate::cache::sparse::SPARSE_FILE);
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

/// A layer of a lazy image as the image's entry recorded it: what it takes to make it whole
/// in the store from its sparse blob while the image is mounted ([`crate::image::promote`]),
/// into the entry a whole fetch of the layer would fill, so that the next mount's
/// promotion of the whole image finds it there.
pub struct WholeLayer {
    what: String,
    layer: Layer,
    cache: Cache,
}

impl WholeLayer {
    /// The layer's blob digest, which names its lazy entry.
    pub fn digest(&self) -> String {
        self.layer
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default()
    }

    /// Its uncompressed tar, when a complete entry of the store holds it.
    pub fn stored(&self) -> Option<PathBuf> {
        let entry = self.cache.layer(&self.layer.store_key().0);
        entry.marker()?;
        Some(layer_path(&self.cache, &self.layer))
    }

    /// Decompresses the layer's sparse blob — every span of it must be there — into its
    /// entry, checked against the blob's digest and the diff id as a whole fetch is; where
    /// its tar is. A failure leaves no entry.
    pub fn fill(&self) -> Result<PathBuf, PrepareError> {
        let key = layer_key(&self.layer).ok_or_else(|| {
            PrepareError::Source(SourceError::Invalid {
                what: self.what.clone(),
                why: "a layer without a digest".into(),
            })
        })?;
        let source = Filled {
            what: self.what.clone(),
            dirs: vec![(self.digest(), self.cache.layer(&key).dir().to_path_buf())],
        };
        store_whole_layer(&self.cache, &source, &self.layer)
    }
}

/// The layers of the lazy image whose index is `index_path`, bottom first; `None` when that
/// is not the index of a lazy image's entry in a store.
pub fn whole_layers(index_path: &std::path::Path) -> Option<Vec<WholeLayer>> {
    let dir = index_path.parent()?;
    let root = dir.parent()?.parent()?;
    let cache = Cache::locate(Some(root.to_path_buf())).ok()?;
    let entry = cache.entry(&dir.file_name()?.to_string_lossy());
    if entry.dir() != dir {
        return None;
    }
    let img = read_layer_info(&entry)?;
    let what = format!("lazy image {}", img.config_digest);
    Some(
        img.layers
            .into_iter()
            .map(|layer| WholeLayer {
                what: what.clone(),
                layer,
                cache: cache.clone(),
            })
            .collect(),
    )
}
