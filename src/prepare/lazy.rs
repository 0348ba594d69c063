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
//! strategies that find a lazy image share: how each layer is read (`LayerTable`), why a find
//! failed (`Unusable`). The image's record of its layers is the cache's
//! ([`crate::cache::lazy`]).

use std::path::PathBuf;

use super::artifact::ArtifactError;
use super::entry::{blob_path, claim, usable, write_records};
use super::{Options, PrepareError, Ready};
use crate::cache::key::EntryKey;
use crate::cache::lazy::write_layer_info;
use crate::cache::sparse::SparseBlob;
use crate::cache::sparse::{REMOTE_FILE, Remote, SEEK_FILE, TOC_FILE, WINDOWS_PRESENT_FILE};
use crate::cache::{self, Cache};
use crate::index::seek::SeekTable;
use crate::source::registry::Registry;
use crate::source::{Image, Layer, Platform, SourceError};

pub use super::artifact::Span;
pub use super::push::{Pushed, Record, push};

/// Why the artifact of an image, or a layer's TOC, could not be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unusable {
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
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
    let hosts_dir = options.hosts_dir.as_deref();
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
                    hosts_dir,
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
        entry: entry.clone(),
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
    .and_then(|()| write_layer_info(&entry, img).map_err(PrepareError::from))
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
    /// The store key ([`layer_key`](crate::cache::lazy::layer_key)).
    key: &'a EntryKey,
    /// `--tls-verify=false`, and `--authfile`, as given when the image was prepared.
    insecure: bool,
    auth_file: Option<&'a std::path::Path>,
    /// `--hosts-dir`, as given when the image was prepared.
    hosts_dir: Option<&'a std::path::Path>,
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
        cause: source,
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
        hosts_dir: place.hosts_dir.map(std::path::Path::to_path_buf),
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
