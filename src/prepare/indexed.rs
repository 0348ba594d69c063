//! Lazy images from a registry by imgfs's own index: an image that has an imgfs index
//! artifact beside it ([`super::artifact`]) is ready once its manifest, config, merged index
//! and seek tables are fetched; its layers' bytes come later, span by span, as reads need
//! them. `imgfs index push` makes that artifact ([`super::push`]).
//!
//! Takes the image's registry and its resolved image; hands on what was found, checked
//! ([`Found`]), for [`super::lazy`] to store. An artifact that cannot be used — damaged, for
//! another image, of a version imgfs does not read, or not fetched — is said why
//! ([`Unusable`]), and the image is fetched another way.

use super::artifact::{self, Artifact};
use super::lazy::{Found, LayerTable, Unusable};
use crate::cache::key::EntryKey;
use crate::cache::lazy::layer_key;
use crate::source::Image;
use crate::source::registry::Registry;

/// Whether the registry holds an imgfs index of an older format for `img` (a failed query
/// counts as none: this only decides a warning).
pub(super) fn has_old_index(registry: &Registry, img: &Image) -> bool {
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
pub(super) fn find(registry: &Registry, img: &Image) -> Result<Option<Found>, Unusable> {
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
        entry: EntryKey::Lazy(img.config_digest.clone()),
        prefetch,
    }))
}
