//! Getting an image ready to serve — its blobs in the cache (or a tar file in place), its
//! index beside them — from a source, with the cache's fill protocol. A complete entry is
//! reused as long as its index validates and its blobs are as long as the index says;
//! anything else is rebuilt.
//!
//! The strategy is chosen in one place (`choose.rs`): a daemon's export (`docker.rs`), a tar
//! file in place (`tar.rs`), and for an image of layers the cached entry, then lazily by
//! imgfs's index artifact (`indexed.rs`) or by its layers' TOCs (`toc.rs`), then a whole
//! fetch (`whole.rs`). No strategy imports another; what they share is in modules below
//! them: a layer stored whole (`layer.rs`), an entry's fill protocol and records
//! (`entry.rs`), a lazy image once found (`lazy.rs`). Publishing an image's index, `imgfs
//! index push`, is apart (`push.rs`).
//!
//! Hands on [`Ready`]: the paths the image reader serves from.

pub mod artifact;
mod choose;
mod docker;
mod entry;
mod indexed;
mod layer;
pub mod lazy;
mod push;
mod seeking;
mod tar;
mod toc;
mod whole;

pub(crate) use layer::store_layer;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::{Cache, CacheError, Entry};
use crate::index::format::FormatError;
use crate::index::scan::ScanError;
use crate::source::ImageRef;
use crate::source::docker::DockerError;

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error("{what}: {cause}")]
    Layer { what: String, cause: ScanError },
    #[error("{what}: {cause}")]
    LayerIo { what: String, cause: io::Error },
    #[error("{path}: {cause}")]
    Scan { path: String, cause: ScanError },
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("cannot write the index for {path}: {cause}")]
    Format { path: String, cause: FormatError },
}

/// An image ready to be served.
#[derive(Clone, Debug)]
pub struct Ready {
    /// The image's entry in the store.
    pub entry: Entry,
    pub index_path: PathBuf,
    /// The files holding the index's blobs, in its table order.
    pub blobs: Vec<PathBuf>,
    /// The image description from the daemon, when the source has one.
    pub image_path: Option<PathBuf>,
    /// The image id, or the tar file's path.
    pub id: String,
    /// True when this call built the entry (a cold mount).
    pub built: bool,
    /// What the build noticed about the archive (dropped or rewritten entries).
    pub warnings: Vec<String>,
}

/// Why an image of a registry cannot be read lazily.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NotLazy {
    #[error("it has no imgfs index and no layer with a TOC (eStargz, zstd:chunked)")]
    NoIndex,
    #[error("its imgfs index is of an older format")]
    OldIndex,
    #[error("its imgfs index cannot be used ({0})")]
    BadIndex(String),
    #[error("none of its layers' TOCs can be used")]
    NoUsableToc,
}

/// For a front end that must not fetch an image whole (the containerd snapshotter): `img`,
/// opened from `registry` as `reference`, made ready from the store or lazily — or why it
/// cannot be, with nothing fetched. See [`prepare_with`] for the rest.
pub fn prepare_lazy(
    reference: &str,
    img: &crate::source::Image,
    registry: &crate::source::registry::Registry,
    cache: &Cache,
    options: Options,
) -> Result<Result<Ready, NotLazy>, PrepareError> {
    let ready = choose::prepare_lazy(reference, img, registry, cache, options)?;
    if let Ok(ready) = &ready {
        ready.entry.touch();
    }
    Ok(ready)
}

/// The first `layers` layers of the registry image `reference` (by digest) as an image of
/// their own, fetched whole into the store: for a containerd snapshot of part of an image.
pub fn prepare_prefix(
    reference: &str,
    layers: usize,
    cache: &Cache,
    options: Options,
) -> Result<Ready, PrepareError> {
    choose::prepare_prefix(reference, layers, cache, options)
}

/// Where a server of the image whose entry is `entry` makes its lazy layers whole: `cache`'s
/// layer entries, filled as a whole fetch fills them ([`store_layer`]).
pub fn layer_store(cache: &Cache, entry: &Entry) -> crate::cache::lazy::LayerStore {
    crate::cache::lazy::LayerStore {
        cache: cache.clone(),
        entry: entry.clone(),
        fill: |cache, source, layer| store_layer(cache, source, layer).map_err(Into::into),
    }
}

/// What a cold start has done so far, for a progress line.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Bytes of the export written to the cache.
    pub bytes: u64,
    /// Archive members scanned.
    pub entries: u64,
    pub elapsed: Duration,
    /// For an image of layers: how many are in the store, and how many it has (else 0).
    pub layers_done: u32,
    pub layers_total: u32,
}

/// What [`prepare_with`] reports while it works.
pub enum Event<'a> {
    /// A line of the daemon's pull progress.
    Pulling(&'a str),
    /// The export and its indexing, about every tenth of a second.
    Exporting(Progress),
    /// The export is complete and indexed.
    Exported(Progress),
}

/// How [`prepare_with`] goes about it.
#[derive(Default)]
pub struct Options<'a> {
    /// Ask the daemon to pull an image it does not have.
    pub pull: bool,
    /// The platform to pick from a multi-platform image (the host's when `None`).
    pub platform: Option<crate::source::Platform>,
    /// Registries: accept any certificate, and plain HTTP (`--tls-verify=false`).
    pub insecure: bool,
    /// Registries: take credentials from this file only (`--authfile`).
    pub auth_file: Option<PathBuf>,
    /// Registries: where their host configurations are (`--hosts-dir`; containerd's and
    /// docker's directories when `None`).
    pub hosts_dir: Option<PathBuf>,
    /// Told of progress; nothing is reported without it.
    pub report: Option<&'a mut dyn FnMut(Event)>,
}

/// Resolves `image` and makes sure its cache entry is complete, pulling a missing image when asked to and reporting progress.
pub fn prepare_with(
    image: &ImageRef,
    cache: &Cache,
    options: Options,
) -> Result<Ready, PrepareError> {
    let ready = choose::prepare(image, cache, options)?;
    // For `imgfs images` and `imgfs prune --older-than`.
    if let Some(name) = ready.index_path.parent().and_then(Path::file_name) {
        cache.entry(&name.to_string_lossy()).touch();
    }
    Ok(ready)
}
