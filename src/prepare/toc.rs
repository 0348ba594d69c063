//! Lazy images without imgfs's index: layers that carry their own table of contents —
//! eStargz (`containerd.io/snapshot/stargz/toc.digest`) and zstd:chunked (the
//! `zstd-chunked.manifest-position` and `-checksum` annotations, `io.containers.` or
//! `io.github.containers.` before them) — are mounted from their TOCs ([`crate::index::toc`]).
//!
//! Each TOC is fetched by range (eStargz: the footer, then the TOC's gzip member; zstd:chunked:
//! the manifest's frame), layers in parallel, and checked against the digest the image
//! manifest names before a byte of it is believed. A name the TOC cannot say exactly (not
//! UTF-8 in the tar) is read from its tar header, fetched by range with the headers about it
//! ([`toc::say_exactly`]). A layer whose TOC is missing, fails its digest or names an entry no
//! header there says is fetched whole instead, as any layer; the others stay lazy. The image then gets a lazy entry like an indexed one,
//! named apart (`lazy-toc-…`): a TOC's spans address a stream of their own, not the tar.

use super::PrepareError;
use super::layer::{Scanned, whole_layers};
use super::lazy::{Found, LayerTable, Unusable};
use crate::cache::Cache;
use crate::cache::key::EntryKey;
use crate::cache::sparse::StoredToc;
use crate::index::toc::{self, Toc, TocFormat};
use crate::index::tree::{BlobRef, Tree};
use crate::source::registry::Registry;
use crate::source::{Image, Layer, LayerSource};

/// The zstd:chunked manifest's position (`OFFSET:LENGTH:UNCOMPRESSED:TYPE`) and checksum.
const ZSTD_CHUNKED_POSITION: &str = "zstd-chunked.manifest-position";
const ZSTD_CHUNKED_CHECKSUM: &str = "zstd-chunked.manifest-checksum";
/// The manifest type zstd:chunked writes: its JSON, version 1.
const ZSTD_CHUNKED_MANIFEST_JSON: u64 = 1;

/// Where a layer's TOC is, as its annotations say.
enum Location {
    Estargz {
        digest: String,
    },
    ZstdChunked {
        offset: u64,
        length: u64,
        uncompressed: u64,
        checksum: String,
    },
}

/// The store key of a layer read through its TOC.
pub(crate) fn layer_key(layer: &Layer) -> Option<EntryKey> {
    layer
        .digest
        .as_ref()
        .map(|d| EntryKey::LazyToc(d.to_string()))
}

/// Name of the store entry of an image read through its layers' TOCs.
pub(crate) fn entry_name(img: &Image) -> EntryKey {
    EntryKey::LazyToc(img.config_digest.clone())
}

fn annotation<'a>(layer: &'a Layer, suffix: &str) -> Option<&'a str> {
    ["io.github.containers.", "io.containers."]
        .iter()
        .find_map(|p| layer.annotations.get(&format!("{p}{suffix}")))
        .map(String::as_str)
}

fn location(layer: &Layer) -> Option<Location> {
    if let Some(d) = layer.annotations.get(toc::ESTARGZ_TOC_DIGEST) {
        return Some(Location::Estargz { digest: d.clone() });
    }
    let position = annotation(layer, ZSTD_CHUNKED_POSITION)?;
    let checksum = annotation(layer, ZSTD_CHUNKED_CHECKSUM)?;
    let fields: Vec<u64> = position
        .split(':')
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    match fields[..] {
        [offset, length, uncompressed, ZSTD_CHUNKED_MANIFEST_JSON] => Some(Location::ZstdChunked {
            offset,
            length,
            uncompressed,
            checksum: checksum.to_string(),
        }),
        _ => None,
    }
}

/// Whether any layer of `img` says it has a TOC.
pub(crate) fn any(img: &Image) -> bool {
    img.layers.iter().any(|l| location(l).is_some())
}

/// A layer's TOC, fetched, checked against its digest and read.
struct Fetched {
    format: TocFormat,
    data_end: u64,
    json: Vec<u8>,
    toc: Toc,
}

fn sha256_matches(bytes: &[u8], digest: &str) -> bool {
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    digest.strip_prefix("sha256:") == Some(hex.as_str())
}

/// One range of a blob.
fn range(
    registry: &Registry,
    digest: &oci_spec::image::Digest,
    size: u64,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, Unusable> {
    let mut bodies = registry.fetch_ranges(digest, size, std::slice::from_ref(&range))?;
    bodies.pop().ok_or(Unusable::Stopped)
}

fn fetch(registry: &Registry, layer: &Layer) -> Result<Option<Fetched>, Unusable> {
    let Some(location) = location(layer) else {
        return Ok(None);
    };
    let (Some(digest), Some(size)) = (layer.digest.as_ref(), layer.size) else {
        return Ok(None);
    };
    let toc_error = |e: toc::TocError| Unusable::Toc(e.to_string());
    let (format, data_end, json) = match location {
        Location::Estargz { digest: toc_digest } => {
            if size < toc::ESTARGZ_FOOTER_LEN {
                return Err(Unusable::Toc("the blob is shorter than a footer".into()));
            }
            let footer_at = size - toc::ESTARGZ_FOOTER_LEN;
            let footer = range(registry, digest, size, footer_at..size)?;
            let toc_at = toc::estargz_footer(&footer).map_err(toc_error)?;
            if toc_at >= footer_at || footer_at - toc_at > toc::MAX_TOC {
                return Err(Unusable::Toc(format!("a TOC at {toc_at} of {size} bytes")));
            }
            let member = range(registry, digest, size, toc_at..footer_at)?;
            let json = toc::estargz_toc_json(&member).map_err(toc_error)?;
            if !sha256_matches(&json, &toc_digest) {
                return Err(Unusable::Toc(format!(
                    "the TOC does not match {toc_digest}"
                )));
            }
            (TocFormat::Estargz, toc_at, json)
        }
        Location::ZstdChunked {
            offset,
            length,
            uncompressed,
            checksum,
        } => {
            let end = offset.checked_add(length).filter(|&e| e <= size);
            let Some(end) = end.filter(|_| length > 0 && uncompressed <= toc::MAX_TOC) else {
                return Err(Unusable::Toc(format!("a manifest at {offset}+{length}")));
            };
            let frame = range(registry, digest, size, offset..end)?;
            if !sha256_matches(&frame, &checksum) {
                return Err(Unusable::Toc(format!(
                    "the manifest does not match {checksum}"
                )));
            }
            let json = zstd::bulk::decompress(&frame, uncompressed as usize)
                .map_err(|e| Unusable::Toc(format!("the manifest does not decompress: {e}")))?;
            // Headers and data come before the manifest's skippable frame.
            (TocFormat::ZstdChunked, offset, json)
        }
    };
    let mut toc = toc::parse(format, &json, size, data_end).map_err(toc_error)?;
    if !toc.unsaid.is_empty() {
        let ranges: Vec<_> = toc.unsaid.iter().map(|u| u.compressed.clone()).collect();
        let bodies = registry.fetch_ranges(digest, size, &ranges)?;
        if bodies.len() != ranges.len() {
            return Err(Unusable::Stopped);
        }
        for (unsaid, body) in toc.unsaid.iter().zip(&bodies) {
            toc::say_exactly(format, &mut toc.entries, unsaid, body).map_err(toc_error)?;
        }
        log::debug!(
            "layer {digest}: {} names not UTF-8 read from their tar headers ({} bytes)",
            toc.unsaid.iter().map(|u| u.entries.len()).sum::<usize>(),
            ranges.iter().map(|r| r.end - r.start).sum::<u64>()
        );
    }
    Ok(Some(Fetched {
        format,
        data_end,
        json,
        toc,
    }))
}

/// Fetches the TOCs of `img`'s layers and makes the image's index from them, fetching whole
/// the layers without a usable one; `None` when no layer has a usable TOC.
pub(super) fn find(
    what: &str,
    registry: &Registry,
    source: &dyn LayerSource,
    img: &Image,
    cache: &Cache,
) -> Result<Option<Found>, PrepareError> {
    let fetched: Vec<Option<Fetched>> = std::thread::scope(|s| {
        let handles: Vec<_> = img
            .layers
            .iter()
            .map(|layer| s.spawn(move || fetch(registry, layer)))
            .collect();
        handles
            .into_iter()
            .zip(&img.layers)
            .map(
                |(h, layer)| match h.join().unwrap_or(Err(Unusable::Stopped)) {
                    Ok(f) => f,
                    Err(e) => {
                        log::warn!(
                            "{what}: layer {}: its TOC cannot be used ({e}); fetching it whole",
                            layer.digest.as_ref().map_or("?".into(), |d| d.to_string())
                        );
                        None
                    }
                },
            )
            .collect()
    });
    if fetched.iter().all(Option::is_none) {
        return Ok(None);
    }
    let whole: Vec<Layer> = img
        .layers
        .iter()
        .zip(&fetched)
        .filter(|(_, f)| f.is_none())
        .map(|(l, _)| l.clone())
        .collect();
    let mut scanned = whole_layers(cache, source, &whole)?.into_iter();
    let mut tree = Tree::new();
    let mut blobs = Vec::with_capacity(img.layers.len());
    let mut tables = Vec::with_capacity(img.layers.len());
    let mut keys = Vec::with_capacity(img.layers.len());
    let mut prefetch = String::new();
    for (i, (layer, f)) in img.layers.iter().zip(fetched).enumerate() {
        match f {
            Some(Fetched {
                format,
                data_end,
                json,
                toc,
            }) => {
                let key = layer_key(layer).expect("a layer with a TOC has a digest");
                blobs.push(BlobRef::new(toc.table.uncompressed_size(), key.to_string()));
                for s in &toc.prefetch {
                    prefetch.push_str(&format!("{i} {s}\n"));
                }
                tree.apply_layer(i as u32, toc.entries);
                let stored = StoredToc {
                    format: format.name(),
                    data_end,
                    json: &json,
                };
                tables.push(LayerTable::Toc {
                    stored: stored.encode(),
                    spans: toc.table.spans().len(),
                    uncompressed_size: toc.table.uncompressed_size(),
                });
                keys.push(key);
            }
            None => {
                let Some(Scanned {
                    members,
                    size,
                    warnings,
                }) = scanned.next()
                else {
                    return Err(PrepareError::Source(crate::source::SourceError::Invalid {
                        what: what.to_string(),
                        why: "a layer could not be read".into(),
                    }));
                };
                for w in warnings {
                    tree.warn(format!("layer {}: {w}", layer.diff_id));
                }
                let key = layer.store_key().0;
                blobs.push(BlobRef::new(size, key.clone()));
                tree.apply_layer(i as u32, members);
                tables.push(LayerTable::Whole);
                keys.push(EntryKey::Digest(key));
            }
        }
    }
    for w in tree.warnings() {
        log::warn!("{what}: {w}");
    }
    let index = tree
        .write_index(&blobs)
        .map_err(|source| PrepareError::Format {
            path: what.to_string(),
            cause: source,
        })?;
    Ok(Some(Found {
        tree: index,
        tables,
        keys,
        entry: entry_name(img),
        prefetch: (!prefetch.is_empty()).then_some(prefetch),
    }))
}
