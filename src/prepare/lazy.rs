//! Lazy images from a registry: an image that has an imgfs index artifact beside it
//! ([`super::artifact`]) is ready once its manifest, config, merged index and seek tables are
//! fetched; its layers' bytes come later, span by span, as reads need them
//! ([`crate::image::lazy`]). And `imgfs index push`, which makes that artifact.
//!
//! A lazy image gets an image entry (`images/lazy-<config digest>/`: the merged index, the
//! config, the list of its layers) and one entry per layer (`layers/lazy-<blob digest>/`: the
//! seek table, where the blob and its windows blob live, the sparse blob and its map of
//! present spans, the same for the windows), with the store's fill protocol. Spans fetched later go into those complete layer entries: they only
//! ever gain verified bytes.
//!
//! An artifact that cannot be used — damaged, for another image, of a version imgfs does
//! not read, or not fetched — is reported in one warning, and the image is fetched whole.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use super::artifact::{self, Artifact, ArtifactError};
use super::{Options, PrepareError, Ready, claim, usable};
use crate::cache::sparse::SparseBlob;
use crate::cache::sparse::{REMOTE_FILE, Remote, SEEK_FILE, TOC_FILE, WINDOWS_PRESENT_FILE};
use crate::cache::{self, Cache};
use crate::index::seek::SeekTable;
use crate::source::registry::{Registry, RegistryOptions};
use crate::source::{Image, Layer, LayerSource, Platform, SourceError};

/// What the store keys a lazy layer under: its compressed blob's digest, which the seek
/// table addresses (a whole layer is keyed by its diff id).
pub fn layer_key(layer: &Layer) -> Option<String> {
    layer.digest.as_ref().map(|d| format!("lazy-{d}"))
}

/// Where a store key's blob is read from: a lazy layer's description, or a layer's tar.
pub fn blob_path(cache: &Cache, key: &str) -> PathBuf {
    let dir = cache.layer(key).dir().to_path_buf();
    if key.starts_with("lazy-") {
        dir.join(REMOTE_FILE)
    } else {
        dir.join(cache::LAYER_FILE)
    }
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

/// Prepares `img` lazily if its registry holds an imgfs index for it, or else if its layers
/// carry their own TOCs (eStargz, zstd:chunked); `None` when neither can be used (said in a
/// warning): the caller then fetches it whole.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare(
    what: &str,
    reference: &str,
    platform: &Platform,
    registry: &Registry,
    source: &dyn LayerSource,
    img: &Image,
    cache: &Cache,
    options: &Options,
) -> Result<Option<Ready>, PrepareError> {
    let found = match find(registry, img) {
        Ok(Some(found)) => found,
        Ok(None) => {
            if has_old_index(registry, img) {
                log::warn!(
                    "{what}: its imgfs index is of an older format this imgfs does not read; \
                     push it again with `imgfs index push`"
                );
            }
            if !super::toc::any(img) {
                return Ok(None);
            }
            match super::toc::find(what, registry, source, img, cache)? {
                Some(found) => found,
                None => return Ok(None),
            }
        }
        Err(e) => {
            log::warn!("{what}: its imgfs index cannot be used ({e}); fetching the whole image");
            return Ok(None);
        }
    };
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
        return Ok(Some(ready(false)));
    };
    let written = match prefetch {
        Some(list) => entry
            .write_file(crate::cache::sparse::PREFETCH_FILE, list.as_bytes())
            .map_err(PrepareError::from),
        None => Ok(()),
    }
    .and_then(|()| write_layer_info(&entry, img))
    .and_then(|()| super::layered::write_records(what, img, &entry, &lock, &tree, &keys));
    if let Err(e) = written {
        entry.discard();
        return Err(e);
    }
    Ok(Some(ready(true)))
}

/// What makes an image lazy: its artifact, or its layers' TOCs, fetched and checked.
pub(super) struct Found {
    /// The merged index.
    pub tree: Vec<u8>,
    /// How each layer is read.
    pub tables: Vec<LayerTable>,
    /// Each layer's key in the store.
    pub keys: Vec<String>,
    /// The name of the image's entry in the store.
    pub entry: String,
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

/// Whether the registry holds an imgfs index of an older format for `img` (a failed query
/// counts as none: this only decides a warning).
fn has_old_index(registry: &Registry, img: &Image) -> bool {
    let Some(subject) = img.manifest_digest.as_deref() else {
        return false;
    };
    let Ok(subject) = crate::source::digest::parse(subject) else {
        return false;
    };
    artifact::OLD_ARTIFACT_TYPES
        .iter()
        .any(|t| registry.referrers(&subject, t).is_ok_and(|f| !f.is_empty()))
}

/// The image's artifact, fetched and checked.
fn find(registry: &Registry, img: &Image) -> Result<Option<Found>, Unusable> {
    let subject = img.manifest_digest.as_deref().ok_or(Unusable::NoManifest)?;
    let subject_digest = crate::source::digest::parse(subject).map_err(|_| Unusable::NoManifest)?;
    let found = registry.referrers(&subject_digest, artifact::ARTIFACT_TYPE)?;
    // The newest is listed last in the tag fallback; a registry's own list is unordered, so
    // any will do there.
    let Some(descriptor) = found.last() else {
        return Ok(None);
    };
    let (bytes, _) = registry.manifest_by_digest(descriptor.digest())?;
    let Artifact {
        tree,
        seeks,
        windows,
        prefetch,
    } = artifact::parse(&bytes, img, subject)?;
    let compressed = registry.blob_bytes(tree.digest(), tree.size(), artifact::MAX_TREE)?;
    let tree_bytes = artifact::open_tree(&compressed, img)?;
    // All at once: a cold start waits for the last of them.
    let fetched: Vec<Result<(Vec<u8>, usize), Unusable>> = std::thread::scope(|s| {
        let handles: Vec<_> = seeks
            .iter()
            .enumerate()
            .zip(&windows)
            .map(|((i, d), w)| {
                let tree = &tree_bytes;
                s.spawn(move || {
                    let bytes = registry.blob_bytes(d.digest(), d.size(), artifact::MAX_SEEK)?;
                    let table = artifact::open_seek(&bytes, img, i, tree, w.size())?;
                    Ok((bytes, table.spans().len()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(Unusable::Stopped)))
            .collect()
    });
    let mut tables = Vec::with_capacity(seeks.len());
    let mut span_counts = Vec::with_capacity(seeks.len());
    for r in fetched {
        let (bytes, spans) = r?;
        tables.push(bytes);
        span_counts.push(spans);
    }
    let prefetch = match prefetch {
        Some(d) => {
            let bytes = registry.blob_bytes(d.digest(), d.size(), artifact::MAX_PREFETCH)?;
            let text = String::from_utf8_lossy(&bytes);
            let list: String = crate::cache::sparse::parse_spans(&text, span_counts.len())
                .into_iter()
                .filter(|&(l, s)| s < span_counts[l as usize])
                .map(|(l, s)| format!("{l} {s}\n"))
                .collect();
            Some(list)
        }
        None => None,
    };
    Ok(Some(Found {
        tree: tree_bytes,
        tables: tables
            .into_iter()
            .zip(windows)
            .map(|(table, windows)| LayerTable::Seek {
                table,
                windows: Box::new(windows),
            })
            .collect(),
        keys: img.layers.iter().filter_map(layer_key).collect(),
        entry: format!("lazy-{}", img.config_digest),
        prefetch,
    }))
}

/// Where a lazy layer is kept and how its registry is reached.
#[derive(Clone, Copy)]
struct Place<'a> {
    /// The store key ([`layer_key`]).
    key: &'a str,
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
        entry.commit(&lock, key)?;
        Ok(())
    })();
    if filled.is_err() {
        entry.discard();
    }
    filled
}

/// What `imgfs index push` did.
pub struct Pushed {
    /// The artifact manifest's digest.
    pub digest: String,
    /// Bytes of the merged index (compressed), of the seek tables and of their windows blobs.
    pub tree_bytes: u64,
    pub seek_bytes: u64,
    pub window_bytes: u64,
    /// The image's layers' compressed bytes, for scale.
    pub image_bytes: u64,
    pub spans: usize,
    /// Spans in the prefetch list (0 without `--record`).
    pub prefetch_spans: usize,
}

/// Runs a program over a lazy mount of the image whose config digest it is given, and
/// returns the spans it read (`LAYER SPAN` lines).
pub type Record<'a> = dyn FnMut(&str) -> Result<String, PrepareError> + 'a;

/// Layers whose seek tables are built at once (each streams its blob from the registry).
const PARALLEL_SEEKS: usize = 4;

/// Builds the imgfs index of the registry image `reference` — its merged index from the
/// store (filled first if missing), a seek table per layer from its blob — and pushes it to
/// the image's repository as an artifact referring to the image's manifest.
///
/// With `record`, the index is pushed, then `record` is called with the image's config
/// digest to run a program over a lazy mount of it and return the spans it read (`LAYER SPAN`
/// lines), and the index is pushed again with that list, for cold starts to fetch first.
pub fn push(
    reference: &str,
    cache: &Cache,
    options: Options,
    span: u64,
    record: Option<&mut Record<'_>>,
) -> Result<Pushed, PrepareError> {
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let registry_options = RegistryOptions {
        platform: platform.clone(),
        tls_verify: !options.insecure,
        auth_file: options.auth_file.clone(),
        ..RegistryOptions::default()
    };
    let (img, registry) = crate::source::registry::open(reference, &registry_options)?;
    let what = format!("docker://{reference}");
    let subject = subject_of(&img, &what)?;
    // The merged index, as a whole mount would make it (and reused if one did).
    let digest_ref = match reference.split_once('@') {
        Some((name, _)) => format!("{name}@{}", subject.digest()),
        None => {
            let name = strip_tag(reference);
            format!("{name}@{}", subject.digest())
        }
    };
    // Layers the store lacks are fetched once: the fill that stores them builds their seek
    // tables on the way.
    let seeking = super::seeking::Seeking::new(&registry, span);
    let full = super::layered::whole(
        &crate::source::ImageRef::Registry(digest_ref),
        &img,
        &seeking,
        cache,
        Options {
            platform: Some(platform.clone()),
            insecure: options.insecure,
            auth_file: options.auth_file.clone(),
            report: options.report,
            ..Options::default()
        },
        &platform,
    )?;
    let tree = std::fs::read(&full.index_path).map_err(|source| PrepareError::Io {
        path: full.index_path.clone(),
        source,
    })?;
    let built: Vec<Option<SeekTable>> = img
        .layers
        .iter()
        .map(|l| seeking.take(l).and_then(Result::ok))
        .collect();
    let tables = build_tables(&registry, &img, span, built)?;
    let tree_blob = zstd::bulk::compress(&tree, 19).map_err(|source| PrepareError::Io {
        path: full.index_path.clone(),
        source,
    })?;
    let tree_desc = artifact::descriptor(artifact::TREE_MEDIA_TYPE, &tree_blob);
    let mut seek_descs = Vec::with_capacity(tables.len());
    let mut window_descs = Vec::with_capacity(tables.len());
    let mut seek_bytes = 0;
    let mut window_bytes = 0;
    let mut spans = 0;
    let pushing = |e| PrepareError::Source(SourceError::from(e));
    registry.push_blob(artifact::EMPTY).map_err(pushing)?;
    registry.push_blob(&tree_blob).map_err(pushing)?;
    for (layer, table) in img.layers.iter().zip(&tables) {
        let bytes = table.encode();
        seek_bytes += bytes.len() as u64;
        spans += table.spans().len();
        registry.push_blob(&bytes).map_err(pushing)?;
        let layer_digest = layer
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let annotations = [(artifact::LAYER_ANNOTATION.to_string(), layer_digest)];
        let mut d = artifact::descriptor(artifact::SEEK_MEDIA_TYPE, &bytes);
        d.set_annotations(Some(annotations.clone().into()));
        seek_descs.push(d);
        let windows = table.windows_blob();
        window_bytes += windows.len() as u64;
        registry.push_blob(windows).map_err(pushing)?;
        let mut d = artifact::descriptor(artifact::WINDOWS_MEDIA_TYPE, windows);
        d.set_annotations(Some(annotations.into()));
        window_descs.push(d);
    }
    let manifest = artifact::manifest(&subject, &tree_desc, &seek_descs, &window_descs, None, span);
    let mut digest = registry
        .push_referrer(subject.digest(), &manifest, artifact::ARTIFACT_TYPE)
        .map_err(pushing)?;
    let mut prefetch_spans = 0;
    if let Some(record) = record {
        let text = record(&img.config_digest)?;
        let counts: Vec<usize> = tables.iter().map(|t| t.spans().len()).collect();
        let list: Vec<(u32, usize)> = crate::cache::sparse::parse_spans(&text, counts.len())
            .into_iter()
            .filter(|&(l, s)| s < counts[l as usize])
            .collect();
        if list.is_empty() {
            return Err(PrepareError::Source(SourceError::Invalid {
                what,
                why: "the recorded run read nothing from the image".into(),
            }));
        }
        prefetch_spans = list.len();
        let bytes: String = list.iter().map(|(l, s)| format!("{l} {s}\n")).collect();
        registry.push_blob(bytes.as_bytes()).map_err(pushing)?;
        let d = artifact::descriptor(artifact::PREFETCH_MEDIA_TYPE, bytes.as_bytes());
        let manifest = artifact::manifest(
            &subject,
            &tree_desc,
            &seek_descs,
            &window_descs,
            Some(&d),
            span,
        );
        digest = registry
            .push_referrer(subject.digest(), &manifest, artifact::ARTIFACT_TYPE)
            .map_err(pushing)?;
    }
    Ok(Pushed {
        digest: digest.to_string(),
        tree_bytes: tree_blob.len() as u64,
        seek_bytes,
        window_bytes,
        image_bytes: img.layers.iter().filter_map(|l| l.size).sum(),
        spans,
        prefetch_spans,
    })
}

/// `NAME[:TAG]` without its tag (a port's colon is not a tag's).
fn strip_tag(reference: &str) -> &str {
    match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => &reference[..i],
        _ => reference,
    }
}

/// The descriptor of the image's (platform) manifest: what the artifact refers to.
fn subject_of(img: &Image, what: &str) -> Result<oci_spec::image::Descriptor, PrepareError> {
    let invalid = |why: &str| {
        PrepareError::Source(SourceError::Invalid {
            what: what.to_string(),
            why: why.to_string(),
        })
    };
    let (Some(digest), Some(size), Some(media_type)) = (
        img.manifest_digest.as_deref(),
        img.manifest_size,
        img.manifest_media_type.as_deref(),
    ) else {
        return Err(invalid(
            "the registry did not describe the image's manifest",
        ));
    };
    let digest =
        crate::source::digest::parse(digest).map_err(|_| invalid("bad manifest digest"))?;
    Ok(oci_spec::image::Descriptor::new(
        oci_spec::image::MediaType::from(media_type),
        size,
        digest,
    ))
}

/// Streams every layer's blob from the registry once, building its seek table.
fn build_tables(
    registry: &Registry,
    img: &Image,
    span: u64,
    built: Vec<Option<SeekTable>>,
) -> Result<Vec<SeekTable>, PrepareError> {
    let results: Vec<Mutex<Option<Result<SeekTable, PrepareError>>>> =
        built.into_iter().map(|t| Mutex::new(t.map(Ok))).collect();
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_SEEKS.min(img.layers.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(layer) = img.layers.get(i) else {
                        break;
                    };
                    if results[i].lock().is_some() {
                        continue; // built while the layer was fetched whole
                    }
                    let r = (|| {
                        let what = || format!("{}: layer {}", registry.describe(), layer.locator);
                        let mut stream = registry.open_layer(layer)?;
                        let kind = artifact::seek_compression(layer.compression);
                        let table = SeekTable::build(kind, &mut stream, span).map_err(|e| {
                            PrepareError::Source(SourceError::Invalid {
                                what: what(),
                                why: e.to_string(),
                            })
                        })?;
                        // The rest (if any) still counts for the blob's digest, checked at its end.
                        std::io::copy(&mut stream, &mut std::io::sink()).map_err(|source| {
                            PrepareError::LayerIo {
                                what: what(),
                                source,
                            }
                        })?;
                        Ok(table)
                    })();
                    *results[i].lock() = Some(r);
                }
            });
        }
    });
    log::info!("seek tables built in {:?}", start.elapsed());
    results
        .into_iter()
        .map(|r| {
            r.into_inner().unwrap_or_else(|| {
                Err(PrepareError::Source(SourceError::Invalid {
                    what: registry.describe(),
                    why: "a layer was not read".into(),
                }))
            })
        })
        .collect()
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
fn read_layer_info(entry: &cache::Entry) -> Option<Image> {
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
struct Filled {
    what: String,
    dirs: Vec<(String, PathBuf)>,
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

/// Makes the lazy image `entry` whole once every span of every layer is in the store: each
/// layer decompressed into a layer entry (checked against its digest and diff id, as a
/// whole fetch would), the index merged from them. `None` while spans are missing, or when
/// that fails (said in a warning): the lazy image is used as it is.
pub(super) fn promote(
    image: &crate::source::ImageRef,
    cache: &Cache,
    entry: &cache::Entry,
    platform: &Platform,
) -> Option<Ready> {
    let img = read_layer_info(entry)?;
    let mut dirs = Vec::with_capacity(img.layers.len());
    for layer in &img.layers {
        let key = layer_key(layer)?;
        let dir = cache.layer(&key).dir().to_path_buf();
        let table = SeekTable::decode(&std::fs::read(dir.join(SEEK_FILE)).ok()?).ok()?;
        let spans = table.spans().len();
        let store = SparseBlob::open(&dir, table.compressed_size(), spans).ok()?;
        if store.count() < spans {
            return None;
        }
        dirs.push((layer.digest.as_ref()?.to_string(), dir));
    }
    let source = Filled {
        what: image.to_string(),
        dirs,
    };
    match super::layered::whole(image, &img, &source, cache, Options::default(), platform) {
        Ok(ready) => {
            // Its layers go with the next collection; not while a server still reads them.
            let _ = entry.remove();
            Some(ready)
        }
        Err(e) => {
            log::warn!("{image}: every span is here, but the image cannot be made whole: {e}");
            None
        }
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
        Some(super::layered::layer_path(&self.cache, &self.layer))
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
        super::layered::store_layer(&self.cache, &source, &self.layer)
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
