//! A layer read lazily: the bytes of its uncompressed tar, served from spans of its
//! compressed blob fetched only when a read needs them.
//!
//! Takes the layer's seek table ([`SeekTable`]: spans of the compressed blob, each with its
//! digest and the state to decompress it on its own), a [`SparseBlob`] in the store that
//! keeps every span fetched, and a [`Fetch`] that reads ranges of the blob (a registry). Hands
//! on a [`Blob`](super::Blob) of the uncompressed tar, which is what the index's offsets
//! address.
//!
//! Guarantees: a span's bytes are served only after they matched the span's digest — when
//! fetched, and again each time they are read back from the store; a span that does not
//! match is never stored, and a stored one that no longer matches is fetched again. A span is
//! fetched once per store: concurrent reads of one span wait for the one fetch, and later
//! mounts find it in the store. When the source cannot be reached, a read of a missing span
//! is tried again with backoff for a bounded time ([`LazyOptions::fetch_timeout`]), then
//! fails with EIO and one log line naming the layer and the range; reads of spans already
//! present never touch the network. Decompressed spans are kept in a bounded LRU
//! ([`SpanCache`]) shared by the image's layers.
//!
//! A gzip span that starts between two deflate blocks also needs its window (the 32 KiB of
//! output before it): taken from the span before when that one is decompressed in the cache
//! (a sequential read), else from the layer's windows blob ([`Windows`]) — fetched by range
//! beside the span, checked against its digest, kept in the store like a span. A window that
//! does not match its digest is never used: the read fails with EIO.
//!
//! The parts, in the order a read meets them: `blob` serves reads of a [`LazyBlob`] (kept
//! here, with [`open`]); `span_cache` keeps decompressed spans; `table` says where each span
//! lies and checks bytes against it; `fetch` gets missing spans and windows into the store,
//! trying again within the timeout; `registry` is the [`Fetch`] over a registry; `prefetch`
//! fetches ahead of reads.

mod blob;
mod fetch;
mod prefetch;
mod registry;
mod span_cache;
mod table;

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

pub use crate::cache::sparse::{PREFETCH_FILE, RECORD_FILE, parse_spans};
use crate::cache::sparse::{Remote, SEEK_FILE, STREAM_FILE, SparseBlob, TOC_FILE};
use crate::index::seek::SeekTable;
use crate::index::toc::{self, TocFormat};
pub use fetch::{Fetch, Windows};
pub use prefetch::{Demand, Prefetch, Recorder, prefetch_all, prefetch_recorded};
pub(crate) use registry::RegistryFetch;
pub(crate) use span_cache::{SPAN_CACHE_BYTES, SpanCache};
pub(crate) use table::Table;

/// How lazy layers behave.
#[derive(Clone, Debug)]
pub struct LazyOptions {
    /// How long a read of a missing span keeps trying before it fails with EIO.
    pub fetch_timeout: Duration,
    pub prefetch: Prefetch,
    /// Whether a layer whose every span is here is made whole in the store and read from
    /// there ([`super::promote`]): for a server, not for one look.
    pub promote: bool,
    /// Where layers read through a seek table are made whole: the store and the image's
    /// entry in it. Without it only layers read through a TOC are promoted.
    pub store: Option<crate::cache::lazy::LayerStore>,
    /// The program a run of the image starts, as a path in the image: a server fetches it,
    /// its interpreter and its libraries at once (see [`crate::image`]'s guess), unless
    /// `prefetch` is [`Prefetch::None`].
    pub program: Option<std::path::PathBuf>,
}

impl Default for LazyOptions {
    /// A fetch timeout of thirty seconds: a registry that restarts is back well within it,
    /// and a program that reads a file of an image whose registry is gone learns so in the
    /// time a network filesystem would take.
    fn default() -> LazyOptions {
        LazyOptions {
            fetch_timeout: Duration::from_secs(30),
            prefetch: Prefetch::None,
            promote: true,
            store: None,
            program: None,
        }
    }
}

/// One layer's uncompressed tar, read lazily.
pub struct LazyBlob {
    /// Names the layer in messages (its digest).
    name: String,
    /// The layer's number in the span cache.
    id: u32,
    table: Table,
    store: SparseBlob,
    fetch: Box<dyn Fetch>,
    cache: Arc<SpanCache>,
    options: LazyOptions,
    /// Spans some thread of this process is fetching now.
    fetching: Mutex<HashSet<usize>>,
    fetched: Condvar,
    /// Compressed bytes fetched by this process.
    fetched_bytes: AtomicU64,
    /// Spans a read has needed (for a record of what a program reads).
    used: Mutex<HashSet<usize>>,
    recorder: Option<Arc<Recorder>>,
    /// Called each time this process has stored spans it fetched.
    on_stored: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Where windows come from; without it, the table's own (a table with its windows blob).
    windows: Option<Windows>,
    /// Reads' fetches of the image's lazy layers, counted for a background fill to yield to.
    demand: Option<Arc<Demand>>,
    /// Files (their first byte) already fetched ahead by this process.
    ahead: Mutex<HashSet<u64>>,
    /// The spans of this layer a recording says a start reads ([`prefetch_recorded`]): a
    /// file with one of them is read as recorded, not fetched whole ahead of reads.
    recorded: Mutex<HashSet<usize>>,
    /// Where a whole copy of a TOC layer's stream is kept ([`STREAM_FILE`]).
    stream_copy: Option<std::path::PathBuf>,
}

impl LazyBlob {
    pub(crate) fn new(
        name: String,
        id: u32,
        table: Table,
        store: SparseBlob,
        fetch: Box<dyn Fetch>,
        cache: Arc<SpanCache>,
        options: LazyOptions,
    ) -> LazyBlob {
        LazyBlob {
            name,
            id,
            table,
            store,
            fetch,
            cache,
            options,
            fetching: Mutex::new(HashSet::new()),
            fetched: Condvar::new(),
            fetched_bytes: AtomicU64::new(0),
            used: Mutex::new(HashSet::new()),
            recorder: None,
            on_stored: std::sync::OnceLock::new(),
            windows: None,
            demand: None,
            ahead: Mutex::new(HashSet::new()),
            recorded: Mutex::new(HashSet::new()),
            stream_copy: None,
        }
    }

    /// Keeps the whole copy of this layer's stream at `path` ([`make_stream_copy`]).
    ///
    /// [`make_stream_copy`]: Self::make_stream_copy
    pub(crate) fn with_stream_copy(mut self, path: std::path::PathBuf) -> LazyBlob {
        self.stream_copy = Some(path);
        self
    }

    /// Where the whole copy of this layer's stream is kept, for a layer read through its TOC
    /// (a layer with a seek table has the whole tar's entry instead).
    pub(crate) fn stream_copy(&self) -> Option<&std::path::Path> {
        self.stream_copy.as_deref()
    }

    /// Takes the windows spans need from `windows` (a layer's windows blob).
    pub(crate) fn with_windows(mut self, windows: Windows) -> LazyBlob {
        self.windows = Some(windows);
        self
    }

    /// Counts this layer's fetches for reads in `demand`, which a background fill yields to.
    pub(crate) fn with_demand(mut self, demand: Arc<Demand>) -> LazyBlob {
        self.demand = Some(demand);
        self
    }

    /// Records the spans reads first need with `recorder`.
    pub(crate) fn with_recorder(mut self, recorder: Arc<Recorder>) -> LazyBlob {
        self.recorder = Some(recorder);
        self
    }

    /// Compressed bytes this process has fetched.
    pub(crate) fn fetched_bytes(&self) -> u64 {
        self.fetched_bytes.load(Ordering::Relaxed)
    }

    /// Names the layer in messages (its blob's digest).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// How many spans the layer has.
    pub(crate) fn span_count(&self) -> usize {
        self.table.len()
    }

    /// Whether span `i` is in the store (fetched by this process or another).
    pub(crate) fn has_span(&self, i: usize) -> bool {
        self.store.has(i)
    }

    /// Has `f` called each time this process has stored spans it fetched (once set, kept).
    pub(crate) fn on_stored(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_stored.set(f);
    }

    /// Drops this layer's decompressed spans from the span cache: for a layer read from
    /// elsewhere from now on.
    pub(crate) fn forget_cached(&self) {
        self.cache.forget_layer(self.id);
    }
}

/// Opens the lazy layer whose entry holds `remote_file` (its [`crate::cache::sparse::REMOTE_FILE`]), as blob `id`
/// of an image whose layers share `cache`.
pub(crate) fn open(
    remote_file: &std::path::Path,
    id: u32,
    cache: &Arc<SpanCache>,
    options: &LazyOptions,
) -> io::Result<LazyBlob> {
    let dir = remote_file.parent().unwrap_or(std::path::Path::new("/"));
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let remote: Remote = serde_json::from_slice(&std::fs::read(remote_file)?)
        .map_err(|e| invalid(format!("{}: {e}", remote_file.display())))?;
    let table = open_table(dir, remote.size)?;
    let spans = table.len();
    let store = SparseBlob::open(dir, remote.size, spans)?;
    let windows = match table.windows_size() {
        Some(size) => {
            if size != remote.windows_size {
                return Err(invalid(format!(
                    "{}: the seek table names {} bytes of windows, the windows blob has {}",
                    dir.display(),
                    size,
                    remote.windows_size
                )));
            }
            Some(Windows::new(
                SparseBlob::open_windows(dir, remote.windows_size, spans)?,
                Box::new(RegistryFetch::new(Remote {
                    digest: remote.windows_digest.clone(),
                    size: remote.windows_size,
                    ..remote.clone()
                })?),
            ))
        }
        // A TOC's spans are whole gzip members or zstd frames: no windows.
        None => None,
    };
    let name = remote.digest.clone();
    let fetch = Box::new(RegistryFetch::new(remote)?);
    let blob = LazyBlob::new(
        name,
        id,
        table,
        store,
        fetch,
        cache.clone(),
        options.clone(),
    );
    Ok(match windows {
        Some(w) => blob.with_windows(w),
        None => blob.with_stream_copy(dir.join(STREAM_FILE)),
    })
}

/// The table of the lazy layer whose entry is `dir`: its seek table, or else its TOC.
pub(crate) fn open_table(dir: &std::path::Path, blob_size: u64) -> io::Result<Table> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let seek_path = dir.join(SEEK_FILE);
    let table: Table = match std::fs::read(&seek_path) {
        Ok(bytes) => Box::new(
            SeekTable::decode(&bytes)
                .map_err(|e| invalid(format!("{}: {e}", seek_path.display())))?,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let toc_path = dir.join(TOC_FILE);
            let bytes = std::fs::read(&toc_path)?;
            let bad = |why: String| invalid(format!("{}: {why}", toc_path.display()));
            let stored = crate::cache::sparse::StoredToc::decode(&bytes)
                .ok_or_else(|| bad("not a stored TOC".to_string()))?;
            let format = TocFormat::from_name(stored.format)
                .ok_or_else(|| bad(format!("unknown format {}", stored.format)))?;
            let parsed = toc::parse(format, stored.json, blob_size, stored.data_end)
                .map_err(|e| bad(e.to_string()))?;
            Box::new(parsed.table)
        }
        Err(e) => return Err(e),
    };
    if table.compressed_size() != blob_size {
        return Err(invalid(format!(
            "{}: the table is for {} bytes, the blob has {}",
            dir.display(),
            table.compressed_size(),
            blob_size
        )));
    }
    Ok(table)
}
