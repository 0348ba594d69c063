//! The whole fetch: an image of layers made whole in the store. Each layer the store lacks
//! is read from its source, verified and decompressed into the store while it is scanned
//! ([`super::layer`]), layers in parallel; the image's index is merged from their entries,
//! bottom first, and its entry records the config and which layers it uses.
//!
//! Takes the resolved image and a [`LayerSource`] for its layers; hands on the [`Ready`]
//! image. What every strategy falls back to, and what `imgfs index push` indexes.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::entry::{claim, usable, write_records};
use super::layer::{Counters, Scanned, fill_layers, visible};
use super::{Event, Options, PrepareError, Progress, Ready};
use crate::cache::key::EntryKey;
use crate::cache::{self, Cache, Entry};
use crate::index::tree::{BlobRef, Tree};
use crate::source::{Image, ImageRef, LayerSource, Platform};

/// Whether the store holds `img` whole: its entry complete and every layer's tar there.
pub(super) fn whole_complete(cache: &Cache, img: &Image) -> bool {
    let entry = cache.entry(&EntryKey::Oci(img.config_digest.clone()));
    let blobs: Vec<PathBuf> = img.layers.iter().map(|l| cache.layer_path(l)).collect();
    entry.marker().is_some() && usable(&entry.index_path(), &blobs)
}

/// Makes sure the store holds `img` whole, every layer it lacks read from `source`.
pub(super) fn whole(
    image: &ImageRef,
    img: &Image,
    source: &dyn LayerSource,
    cache: &Cache,
    options: Options,
    platform: &Platform,
) -> Result<Ready, PrepareError> {
    let entry = cache.entry(&EntryKey::Oci(img.config_digest.clone()));
    let blobs: Vec<PathBuf> = img.layers.iter().map(|l| cache.layer_path(l)).collect();
    let ready = |built, warnings| Ready {
        entry: entry.clone(),
        index_path: entry.index_path(),
        blobs: blobs.clone(),
        image_path: Some(entry.image_path()),
        id: img.config_digest.clone(),
        built,
        warnings,
    };
    let complete = |e: &Entry| e.marker().is_some() && usable(&e.index_path(), &blobs);
    if let ImageRef::Registry(reference) = image {
        cache.remember_ref(&format!("{reference} {platform}"), &entry.name());
    }
    let Some(lock) = claim(cache, &entry, complete)? else {
        return Ok(ready(false, Vec::new()));
    };
    let Options { mut report, .. } = options;
    let start = Instant::now();
    let counters = Counters::default();
    let total = img.layers.len() as u32;
    let progress = |c: &Counters| Progress {
        bytes: c.bytes.load(Ordering::Relaxed),
        entries: c.entries.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        layers_done: c.done.load(Ordering::Relaxed),
        layers_total: total,
    };
    let scanned = fill_layers(cache, source, &img.layers, &counters, &mut |c| {
        if let Some(r) = report.as_mut() {
            r(Event::Exporting(progress(c)));
        }
    });
    let result = scanned.and_then(|scanned| {
        let warnings = write_image(image, img, &entry, &lock, scanned)?;
        Ok(warnings)
    });
    match result {
        Ok(warnings) => {
            if let Some(r) = report.as_mut() {
                r(Event::Exported(progress(&counters)));
            }
            Ok(ready(true, warnings))
        }
        Err(e) => {
            entry.discard();
            Err(e)
        }
    }
}

/// Merges the layers into the image's index and writes the image's entry: index, config
/// (in the shape `docker inspect` gives, which the runner and `inspect` read) and layer
/// list, then its marker.
fn write_image(
    image: &ImageRef,
    img: &Image,
    entry: &Entry,
    lock: &cache::Lock,
    scanned: Vec<Scanned>,
) -> Result<Vec<String>, PrepareError> {
    let what = image.to_string();
    let mut tree = Tree::new();
    let mut blobs = Vec::with_capacity(scanned.len());
    let mut warnings = Vec::new();
    for (i, (s, layer)) in scanned.into_iter().zip(&img.layers).enumerate() {
        for w in s.warnings {
            warnings.push(format!("layer {}: {w}", layer.diff_id));
        }
        tree.apply_layer(i as u32, visible(layer, s.members));
        blobs.push(BlobRef::new(s.size, layer.store_key().0));
    }
    warnings.extend(tree.warnings());
    let index = tree
        .write_index(&blobs)
        .map_err(|source| PrepareError::Format {
            path: what.clone(),
            cause: source,
        })?;
    let keys: Vec<EntryKey> = img
        .layers
        .iter()
        .map(|l| EntryKey::Digest(l.store_key().0))
        .collect();
    write_records(&what, img, entry, lock, &index, &keys)?;
    Ok(warnings)
}
