//! The choice of strategy, in one place. A daemon's image is exported
//! ([`super::docker`]); a tar file is indexed in place ([`super::tar`]); an image of layers
//! is tried, in order:
//!
//! 1. cached: the complete entry a registry reference last resolved to, used without asking
//!    the registry (a digest, or a tag without `--pull`) or when it cannot be reached — a lazy
//!    one made whole first once every span of it is here;
//! 2. by its imgfs index artifact ([`super::indexed`]), lazily;
//! 3. by its layers' TOCs, eStargz or zstd:chunked ([`super::toc`]), lazily;
//! 4. fetched whole ([`super::whole`]).
//!
//! Takes the reference and the store; hands on the [`Ready`] image. A lazy strategy that
//! cannot be used says why in one warning and leaves the image to the next one.

use std::path::PathBuf;

use super::entry::{blob_path, usable};
use super::whole::{whole, whole_complete};
use super::{NotLazy, Options, PrepareError, Ready, docker, indexed, lazy, tar, toc};
use crate::cache::key::EntryKey;
use crate::cache::lazy::{Filled, layer_key, read_layer_info};
use crate::cache::sparse::SEEK_FILE;
use crate::cache::sparse::SparseBlob;
use crate::cache::{self, Cache};
use crate::index::seek::SeekTable;
use crate::source::layout;
use crate::source::registry::{self, Registry, RegistryOptions};
use crate::source::{Image, ImageRef, LayerSource, Platform, SourceError};

/// Resolves `image` and makes sure its cache entry is complete, by the first strategy that
/// can.
pub(super) fn prepare(
    image: &ImageRef,
    cache: &Cache,
    options: Options,
) -> Result<Ready, PrepareError> {
    match image {
        ImageRef::Docker(reference) => docker::prepare_docker(reference, cache, options),
        ImageRef::TarFile(path) => tar::prepare_tar(path, cache),
        layered => prepare_layers(layered, cache, options),
    }
}

fn prepare_layers(
    image: &ImageRef,
    cache: &Cache,
    options: Options,
) -> Result<Ready, PrepareError> {
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    // What a reference resolved to before is used without asking the registry, as `docker
    // run` uses a local image (its pull policy "missing"): a digest names immutable content,
    // and a tag is looked up again only with `--pull`.
    if let ImageRef::Registry(reference) = image
        && (reference.contains("@sha256:") || !options.pull)
        && let Some(ready) = cached(image, &platform, cache)
    {
        return Ok(ready);
    }
    let opened = open(image, &platform, &options);
    let (img, source) = match opened {
        Err(e) if unreachable(&e) => match cached(image, &platform, cache) {
            Some(ready) => {
                log::warn!("{e}; using the image cached under that name");
                return Ok(ready);
            }
            None => return Err(e.into()),
        },
        r => r?,
    };
    if let ImageRef::Registry(reference) = image
        && let Some(registry) = source.as_registry()
        && !whole_complete(cache, &img)
        && let Ok(ready) = lazily(
            &image.to_string(),
            reference,
            &platform,
            registry,
            &*source,
            &img,
            cache,
            &options,
        )?
    {
        return Ok(ready);
    }
    whole(image, &img, &*source, cache, options, &platform)
}

/// Prepares `img` lazily if its registry holds an imgfs index for it, or else if its layers
/// carry their own TOCs (eStargz, zstd:chunked); why not when neither can be used (a found
/// index or TOC that cannot be used is also said in a warning): the caller then fetches it
/// whole, or leaves it to another.
#[allow(clippy::too_many_arguments)]
fn lazily(
    what: &str,
    reference: &str,
    platform: &Platform,
    registry: &Registry,
    source: &dyn LayerSource,
    img: &Image,
    cache: &Cache,
    options: &Options,
) -> Result<Result<Ready, NotLazy>, PrepareError> {
    let found = match indexed::find(registry, img) {
        Ok(Some(found)) => found,
        Ok(None) => {
            let old = indexed::has_old_index(registry, img);
            if old {
                log::warn!(
                    "{what}: its imgfs index is of an older format this imgfs does not read; \
                     push it again with `imgfs index push`"
                );
            }
            if !toc::any(img) {
                return Ok(Err(if old {
                    NotLazy::OldIndex
                } else {
                    NotLazy::NoIndex
                }));
            }
            match toc::find(what, registry, source, img, cache)? {
                Some(found) => found,
                None => return Ok(Err(NotLazy::NoUsableToc)),
            }
        }
        Err(e) => {
            log::warn!("{what}: its imgfs index cannot be used ({e}); fetching the whole image");
            return Ok(Err(NotLazy::BadIndex(e.to_string())));
        }
    };
    lazy::make(
        what, reference, platform, registry, img, cache, options, found,
    )
    .map(Ok)
}

/// Makes `img`, opened from `registry` as `reference` (best by digest), ready without
/// fetching its layers whole: complete in the store already, or lazily by its index or its
/// layers' TOCs. Why not when it cannot be, and nothing fetched.
pub(super) fn prepare_lazy(
    reference: &str,
    img: &Image,
    registry: &Registry,
    cache: &Cache,
    options: Options,
) -> Result<Result<Ready, NotLazy>, PrepareError> {
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let image = ImageRef::Registry(reference.to_string());
    if whole_complete(cache, img) {
        return whole(&image, img, registry, cache, options, &platform).map(Ok);
    }
    lazily(
        &image.to_string(),
        reference,
        &platform,
        registry,
        registry,
        img,
        cache,
        &options,
    )
}

/// Makes the first `layers` layers of the registry image `reference` ready as an image of
/// their own, fetched whole: what a merged index of the whole image cannot serve. Its entry
/// is named by the chain id of those layers, and no reference resolves to it.
pub(super) fn prepare_prefix(
    reference: &str,
    layers: usize,
    cache: &Cache,
    options: Options,
) -> Result<Ready, PrepareError> {
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let image = ImageRef::Registry(reference.to_string());
    let (img, source) = open(&image, &platform, &options)?;
    if layers == 0 || layers > img.layers.len() {
        return Err(PrepareError::Source(SourceError::Invalid {
            what: image.to_string(),
            why: format!("it has {} layers, so no first {layers}", img.layers.len()),
        }));
    }
    let mut prefix = img.clone();
    prefix.layers.truncate(layers);
    prefix.config_digest = img.chain_ids().swap_remove(layers - 1);
    // Not a registry reference: nothing is remembered under its name.
    let named = ImageRef::Oci {
        dir: PathBuf::from(format!("{reference} (its first {layers} layers)")),
        name: None,
    };
    whole(&named, &prefix, &*source, cache, options, &platform)
}

/// Opens a layered source.
fn open(
    image: &ImageRef,
    platform: &Platform,
    options: &Options,
) -> Result<(Image, Box<dyn LayerSource>), SourceError> {
    if let ImageRef::Registry(reference) = image {
        let options = RegistryOptions {
            platform: platform.clone(),
            tls_verify: !options.insecure,
            auth_file: options.auth_file.clone(),
            hosts_dir: options.hosts_dir.clone(),
            ..RegistryOptions::default()
        };
        let (image, registry) = registry::open(reference, &options)?;
        return Ok((image, Box::new(registry)));
    }
    let (image, source) = match image {
        ImageRef::Oci { dir, name } => layout::open_oci(dir, false, name.as_deref(), platform)?,
        ImageRef::OciArchive { file, name } => {
            layout::open_oci(file, true, name.as_deref(), platform)?
        }
        ImageRef::DockerArchive { file, name } => {
            layout::open_docker_archive(file, name.as_deref())?
        }
        other => {
            return Err(SourceError::Invalid {
                what: other.to_string(),
                why: "not an image of layers".into(),
            });
        }
    };
    Ok((image, Box::new(source)))
}

/// Whether a registry could not be reached at all (as opposed to answering no).
fn unreachable(e: &SourceError) -> bool {
    use crate::source::registry::RegistryError;
    matches!(
        e,
        SourceError::Registry(RegistryError::Connect { .. } | RegistryError::Transport { .. })
    )
}

/// The complete entry a registry reference last resolved to for `platform`: for when its
/// registry cannot be reached, or the reference is a digest.
fn cached(image: &ImageRef, platform: &Platform, cache: &Cache) -> Option<Ready> {
    let ImageRef::Registry(reference) = image else {
        return None;
    };
    let entry = cache.entry(&cache.recall_ref(&format!("{reference} {platform}"))?);
    entry.marker()?;
    // A lazy image whose every span is here now becomes a whole one.
    if entry.name().parse().is_ok_and(|k: EntryKey| k.is_lazy())
        && let Some(ready) = promote(image, cache, &entry, platform)
    {
        return Some(ready);
    }
    let layers = std::fs::read_to_string(entry.dir().join(cache::LAYERS_FILE)).ok()?;
    let keys: Vec<EntryKey> = layers
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let blobs: Vec<PathBuf> = keys.iter().map(|key| blob_path(cache, key)).collect();
    if !usable(&entry.index_path(), &blobs) {
        return None;
    }
    let id = entry.marker()?;
    Some(Ready {
        entry: entry.clone(),
        index_path: entry.index_path(),
        blobs,
        image_path: Some(entry.image_path()),
        id,
        built: false,
        warnings: Vec::new(),
    })
}

/// Makes the lazy image `entry` whole once every span of every layer is in the store: each
/// layer decompressed into a layer entry (checked against its digest and diff id, as a
/// whole fetch would), the index merged from them. `None` while spans are missing, or when
/// that fails (said in a warning): the lazy image is used as it is.
fn promote(
    image: &ImageRef,
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
    let source = Filled::new(image.to_string(), dirs);
    match whole(image, &img, &source, cache, Options::default(), platform) {
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
