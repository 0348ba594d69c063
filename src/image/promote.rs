//! Promotion in the mount: a lazy layer whose every span is in the store is read from a whole
//! copy, as a local image's layers are, instead of span by span.
//!
//! Takes the lazy layers of an image being served, each wrapped in a [`Promotable`], and the
//! image's entry in the store (which records each layer's blob digest and diff id). A layer
//! whose whole copy the store already holds is switched to it at once. The others, when the
//! server makes copies, are watched on a thread of their own: once every span of one is
//! present — at open, or as soon as the last one is stored — its copy is made and reads of
//! the layer go to it. A layer with a seek table is copied as its uncompressed tar: its
//! sparse blob decompressed once, in order, into the entry a whole fetch of the layer would
//! fill (keyed by its diff id), which the next mount's promotion of the whole image then
//! reuses. A layer read through its TOC addresses a stream of imgfs's own (its files' data
//! back to back), not the tar: its copy is that stream, each span checked against the TOC's
//! digests on the way, kept beside its sparse blob.
//!
//! Guarantees: a read never waits for a copy — until the switch it goes through the lazy
//! blob as before. A copy is read only once it is whole and checked (a tar against the blob's
//! digest and the diff id, its entry complete; a stream span by span); one that cannot be made
//! (a full disk, a mismatch) leaves no file under the copy's name and the layer lazy, said in
//! one log line.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::Blob;
use super::lazy::LazyBlob;
use crate::cache::lazy::{FillLayer, LayerStore, WholeLayer};

/// How long the watcher sleeps when no span arrives, before it looks again whether the
/// layers it waits for are still served (a reader dropped ends it).
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// A lazy layer that may switch to a whole copy while it is served.
pub(crate) struct Promotable {
    lazy: Arc<LazyBlob>,
    local: OnceLock<File>,
}

impl Promotable {
    pub(crate) fn new(lazy: Arc<LazyBlob>) -> Promotable {
        Promotable {
            lazy,
            local: OnceLock::new(),
        }
    }

    /// Reads from `file` (at `path`) from now on, if it is as long as what the layer serves.
    fn switch(&self, file: File, path: &Path) -> bool {
        let want = self.lazy.size().ok();
        let got = file.metadata().map(|m| m.len()).ok();
        if want.is_none() || want != got {
            log::warn!(
                "layer {}: {} is {got:?} bytes, its table says {want:?}; it stays lazy",
                self.lazy.name(),
                path.display()
            );
            return false;
        }
        if self.local.set(file).is_ok() {
            self.lazy.forget_cached();
        }
        true
    }
}

impl Blob for Promotable {
    fn size(&self) -> io::Result<u64> {
        self.lazy.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self.local.get() {
            Some(file) => FileExt::read_at(file, buf, offset),
            None => self.lazy.read_at(buf, offset),
        }
    }

    fn will_read(&self, file: std::ops::Range<u64>, now: std::ops::Range<u64>) {
        if self.local.get().is_none() {
            self.lazy.will_read(file, now);
        }
    }
}

impl Blob for Arc<Promotable> {
    fn size(&self) -> io::Result<u64> {
        <Promotable as Blob>::size(self)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        <Promotable as Blob>::read_at(self, buf, offset)
    }

    fn will_read(&self, file: std::ops::Range<u64>, now: std::ops::Range<u64>) {
        <Promotable as Blob>::will_read(self, file, now)
    }
}

/// Switches `blobs` (the lazy layers of a served image) to the whole copies the store holds;
/// with `make`, watches the rest and makes their copies once every span of theirs is present.
/// A layer with a seek table is copied as its tar, into the entry a whole fetch fills (only
/// with `store`, a lazy image's entry, which names the layers' diff ids); a layer read
/// through its TOC as its stream, beside its sparse blob.
pub(crate) fn start(store: Option<&LayerStore>, blobs: &[Arc<Promotable>], make: bool) {
    let mut layers: Vec<(WholeLayer, FillLayer)> = store
        .and_then(|s| {
            let layers = crate::cache::lazy::whole_layers(s);
            if layers.is_none() {
                log::debug!(
                    "{}: not a lazy image's entry; only layers read through a TOC may switch",
                    s.entry.dir().display()
                );
            }
            Some(layers?.into_iter().map(|l| (l, s.fill)).collect())
        })
        .unwrap_or_default();
    let wake = Arc::new(Wake::default());
    let mut pending = Vec::new();
    for blob in blobs {
        let digest = blob.lazy.name();
        let copy = if blob.lazy.stream_copy().is_some() {
            Copy::Stream
        } else if let Some(at) = layers.iter().position(|(l, _)| l.digest() == digest) {
            let (layer, fill) = layers.swap_remove(at);
            Copy::Tar(Box::new(layer), fill)
        } else {
            continue;
        };
        if let Some(path) = copy.stored(blob)
            && let Ok(file) = File::open(&path)
            && blob.switch(file, &path)
        {
            log::info!("layer {digest}: read from {}", path.display());
            continue;
        }
        if make {
            let w = wake.clone();
            blob.lazy.on_stored(Box::new(move || w.ring()));
            pending.push(Pending {
                blob: Arc::downgrade(blob),
                copy,
                next: 0,
            });
        }
    }
    if pending.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("imgfs-promote".into())
        .spawn(move || watch(pending, &wake));
    if let Err(e) = spawned {
        log::warn!("cannot start promoting lazy layers: {e}");
    }
}

/// What a layer's whole copy is.
enum Copy {
    /// Its uncompressed tar, in the store entry a whole fetch of the layer fills.
    Tar(Box<WholeLayer>, FillLayer),
    /// The stream its TOC addresses, in its lazy entry.
    Stream,
}

impl Copy {
    /// The copy, when the store holds it whole.
    fn stored(&self, blob: &Promotable) -> Option<PathBuf> {
        match self {
            Copy::Tar(layer, _) => layer.stored(),
            Copy::Stream => blob
                .lazy
                .stream_copy()
                .filter(|p| p.is_file())
                .map(Path::to_path_buf),
        }
    }

    /// Makes the copy from the layer's sparse blob, every span of which is present.
    fn make(&self, blob: &Promotable) -> Result<PathBuf, Unmade> {
        match self {
            Copy::Tar(layer, fill) => layer.fill(fill).map_err(Unmade::Fill),
            Copy::Stream => blob.lazy.make_stream_copy().map_err(Unmade::Stream),
        }
    }
}

/// Rung each time a lazy layer stored spans.
#[derive(Default)]
struct Wake {
    rung: Mutex<bool>,
    bell: Condvar,
}

impl Wake {
    fn ring(&self) {
        *self.rung.lock() = true;
        self.bell.notify_one();
    }
}

/// A layer waiting for its last span.
struct Pending {
    blob: Weak<Promotable>,
    copy: Copy,
    /// The first span not seen present yet: spans only arrive, so each is looked up until
    /// it is there, and never again.
    next: usize,
}

impl Pending {
    fn complete(&mut self, blob: &Promotable) -> bool {
        let spans = blob.lazy.span_count();
        while self.next < spans && blob.lazy.has_span(self.next) {
            self.next += 1;
        }
        self.next == spans
    }
}

/// Makes the copy of each layer of `pending` once its every span is present, one layer at a
/// time; ends when none is left, or none is served any more.
fn watch(mut pending: Vec<Pending>, wake: &Wake) {
    loop {
        pending.retain_mut(|p| {
            let Some(blob) = p.blob.upgrade() else {
                return false;
            };
            if !p.complete(&blob) {
                return true;
            }
            promote(&blob, &p.copy);
            false
        });
        if pending.is_empty() {
            return;
        }
        let mut rung = wake.rung.lock();
        if !*rung {
            wake.bell.wait_for(&mut rung, IDLE_CHECK);
        }
        *rung = false;
    }
}

/// Why a layer's whole copy could not be made or opened.
#[derive(Debug, thiserror::Error)]
enum Unmade {
    #[error("{0}")]
    Fill(Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    Stream(io::Error),
    #[error("{}: {error}", path.display())]
    Open { path: PathBuf, error: io::Error },
}

/// Makes the layer's whole copy and switches `blob` to it; says in one line what became of it.
fn promote(blob: &Promotable, copy: &Copy) {
    let start = Instant::now();
    let name = blob.lazy.name();
    // Another server of an image with this layer may have made it meanwhile.
    let made = copy
        .stored(blob)
        .map_or_else(|| copy.make(blob), Ok)
        .and_then(|path| match File::open(&path) {
            Ok(file) => Ok((file, path)),
            Err(error) => Err(Unmade::Open { path, error }),
        });
    match made {
        Ok((file, path)) => {
            if blob.switch(file, &path) {
                log::info!(
                    "layer {name}: every span is here; read from {} from now on (made in {:?})",
                    path.display(),
                    start.elapsed()
                );
            }
        }
        Err(e) => {
            log::warn!(
                "layer {name}: every span is here, but it cannot be made whole: {e}; it stays lazy"
            );
        }
    }
}
