//! A layer read lazily: the bytes of its uncompressed tar, served from spans of its
//! compressed blob fetched only when a read needs them.
//!
//! Takes the layer's seek table ([`SeekTable`]: spans of the compressed blob, each with its
//! digest and the state to decompress it on its own), a [`SparseBlob`] in the store that
//! keeps every span fetched, and a [`Fetch`] that reads ranges of the blob (a registry). Hands
//! on a [`Blob`] of the uncompressed tar, which is what the index's offsets address.
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

use std::collections::HashSet;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use sha2::Digest as _;

use super::Blob;
pub use crate::cache::sparse::{PREFETCH_FILE, RECORD_FILE, parse_spans};
use crate::cache::sparse::{Remote, SEEK_FILE, STREAM_FILE, SparseBlob, TOC_FILE};
use crate::index::seek::SeekTable;
use crate::index::toc::{self, ChunkError, ChunkTable, TocFormat};
use crate::source::registry::Registry;

/// Bytes of decompressed spans kept in memory for one server: enough for the working set of
/// a program's start (a few dozen spans), small beside the page cache the kernel keeps of
/// what was read. A reader of the whole image needs no more: once every span of a layer is
/// here the layer is read from a whole copy ([`super::promote`]), and before that, reading
/// every file of the python test image from a cold cache took the same time with 512 MiB.
pub const SPAN_CACHE_BYTES: u64 = 128 << 20;
/// The first pause after a failed fetch; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between tries of a fetch.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Most bytes asked for in one range: a bigger run of missing spans is split, so that one
/// slow answer does not hold every reader of the run.
const MAX_RANGE: u64 = 32 << 20;
/// Files up to this size (uncompressed) are fetched whole, ahead of reads, once one of their
/// bytes is read: programs read most of the files they open (an executable by page faults in
/// any order), and one request for a file is far cheaper than one per read. Larger files are
/// read as reads ask, as most of a large file is often never read.
const READ_AHEAD_FILE: u64 = 8 << 20;
/// Compressed bytes a read-ahead asks for in one range: small enough that a read of a later
/// part of the file does not wait long behind it (it fetches its span itself meanwhile).
const READ_AHEAD_RANGE: u64 = 1 << 20;

/// Reads byte ranges of one compressed blob from where it lives.
pub trait Fetch: Send + Sync {
    /// The bytes of each range (sorted, disjoint, within the blob), exactly as long as asked.
    fn fetch(&self, ranges: &[Range<u64>]) -> io::Result<Vec<Vec<u8>>>;
}

/// What a server fetches of its lazy layers before reads ask for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefetch {
    /// Only what reads need.
    None,
    /// The spans a recorded run of a program read (the index's prefetch list), all at once,
    /// as soon as the server starts; nothing when the index has no list.
    #[default]
    Recorded,
    /// Everything, in the background, one range at a time, once the mount is ready, yielding
    /// the link to reads ([`prefetch_all`]).
    All,
}

/// Ranges a recorded prefetch keeps in flight: the spans a start needs are wanted at once.
const PREFETCH_PARALLEL: usize = 4;

/// Appends the spans reads first need to the image's [`RECORD_FILE`].
pub struct Recorder {
    file: Option<std::fs::File>,
}

impl Recorder {
    /// A recorder appending to `path`; one that records nothing when it cannot be opened (a
    /// cache another user owns).
    pub fn open(path: &std::path::Path) -> Recorder {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok();
        Recorder { file }
    }

    fn record(&self, layer: u32, spans: &[usize]) {
        use std::io::Write;
        if let Some(mut f) = self.file.as_ref() {
            let lines: String = spans.iter().map(|s| format!("{layer} {s}\n")).collect();
            // One write of whole lines: appends of several servers never interleave inside one.
            let _ = f.write_all(lines.as_bytes());
        }
    }
}

/// Fetches the spans `list` names (layer index into `blobs`, span) on threads of their own,
/// a few ranges at a time, neighbours of one layer in one range with the first one's window
/// beside them, and decompresses them into the span cache. `blobs` has the image's layers in
/// order, `None` for those that are not lazy.
pub fn prefetch_recorded(blobs: Vec<Option<Arc<LazyBlob>>>, list: Vec<(u32, usize)>) {
    let mut runs: Vec<(usize, Range<usize>)> = Vec::new();
    for (layer, span) in list {
        let layer = layer as usize;
        let Some(Some(blob)) = blobs.get(layer) else {
            continue;
        };
        if span >= blob.table.len() {
            continue;
        }
        match runs.iter_mut().find(|(l, r)| *l == layer && r.end == span) {
            Some((_, r)) => r.end = span + 1,
            None => runs.push((layer, span..span + 1)),
        }
    }
    let runs = Arc::new(Mutex::new(runs.into_iter()));
    for _ in 0..PREFETCH_PARALLEL {
        let runs = runs.clone();
        let blobs = blobs.clone();
        let spawned = std::thread::Builder::new()
            .name("imgfs-prefetch".into())
            .spawn(move || {
                loop {
                    let next = runs.lock().next();
                    let Some((layer, spans)) = next else { break };
                    let Some(blob) = &blobs[layer] else { continue };
                    if let Err(e) = blob.prefetch(spans) {
                        log::warn!("prefetch of layer {}: {e}", blob.name);
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the prefetch: {e}");
        }
    }
}

/// How lazy layers behave.
#[derive(Clone, Debug)]
pub struct LazyOptions {
    /// How long a read of a missing span keeps trying before it fails with EIO.
    pub fetch_timeout: Duration,
    pub prefetch: Prefetch,
    /// Whether a layer whose every span is here is made whole in the store and read from
    /// there ([`super::promote`]): for a server, not for one look.
    pub promote: bool,
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
        }
    }
}

/// Compressed bytes a background fill asks for in one range once reads have left the link
/// alone for [`BUSY`]: large enough to keep a link busy with few requests.
const PREFETCH_RANGE: u64 = 8 << 20;
/// Compressed bytes a background fill asks for in one range while reads come and go: a read
/// that wants a span of that range waits for at most this much (84 ms at 100 Mbit/s), and
/// one that wants others shares the link with no more.
const PREFETCH_RANGE_BUSY: u64 = 1 << 20;
/// How long reads must have fetched nothing before a background fill sends its next range.
const QUIET: Duration = Duration::from_millis(100);
/// How long after a read's fetch a background fill keeps to [`PREFETCH_RANGE_BUSY`].
const BUSY: Duration = Duration::from_secs(1);

/// The fetches reads of one image's lazy layers have in flight, and when the last one ended:
/// a background fill ([`prefetch_all`]) yields the link to them.
pub struct Demand {
    state: Mutex<DemandState>,
    changed: Condvar,
}

struct DemandState {
    fetching: usize,
    last: Instant,
}

/// One read's fetch, counted by its [`Demand`] until dropped.
struct DemandFetch<'a>(&'a Demand);

impl Demand {
    /// Demand as of a read's fetch just ended: a mount's first reads come right after it is
    /// ready, and a fill started with it lets them go first.
    pub fn new() -> Demand {
        Demand {
            state: Mutex::new(DemandState {
                fetching: 0,
                last: Instant::now(),
            }),
            changed: Condvar::new(),
        }
    }

    fn begin(&self) -> DemandFetch<'_> {
        self.state.lock().fetching += 1;
        DemandFetch(self)
    }

    /// Waits until no read is fetching and none has for [`QUIET`]; tells whether one did
    /// within [`BUSY`].
    fn wait_quiet(&self) -> bool {
        let mut state = self.state.lock();
        loop {
            let since = state.last.elapsed();
            if state.fetching == 0 && since >= QUIET {
                return since < BUSY;
            }
            let wait = if state.fetching == 0 {
                QUIET - since
            } else {
                BUSY
            };
            self.changed.wait_for(&mut state, wait);
        }
    }
}

impl Default for Demand {
    fn default() -> Demand {
        Demand::new()
    }
}

impl Drop for DemandFetch<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.fetching -= 1;
        state.last = Instant::now();
        self.0.changed.notify_all();
    }
}

/// Fetches every span of `blobs` missing from the store, one range at a time, on a thread of
/// its own, at a lower priority than reads: a range goes only once reads' fetches (`demand`)
/// have left the link quiet for 100 ms, and a small one while they come and go. Failures
/// are logged and end the prefetch of that layer (reads still try on their own).
pub fn prefetch_all(blobs: Vec<Arc<LazyBlob>>, demand: Arc<Demand>) {
    let spawned = std::thread::Builder::new()
        .name("imgfs-prefetch".into())
        .spawn(move || {
            let start = Instant::now();
            for blob in &blobs {
                let table = &blob.table;
                let mut i = 0;
                while i < table.len() {
                    if blob.store.has(i) {
                        i += 1;
                        continue;
                    }
                    let most = if demand.wait_quiet() {
                        PREFETCH_RANGE_BUSY
                    } else {
                        PREFETCH_RANGE
                    };
                    let first = i;
                    let from = table.compressed(i).start;
                    while i < table.len() && table.compressed(i).end - from <= most {
                        i += 1;
                    }
                    i = i.max(first + 1);
                    if let Err(e) = blob.fill(first..i) {
                        log::warn!("prefetch of layer {} stopped: {e}", blob.name);
                        break;
                    }
                }
            }
            let fetched: u64 = blobs.iter().map(|b| b.fetched_bytes()).sum();
            log::info!(
                "prefetch done in {:?}: {fetched} bytes fetched",
                start.elapsed()
            );
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the prefetch: {e}");
    }
}

/// Decompressed spans of an image's lazy layers, least recently used dropped first once
/// they hold more than a set number of bytes.
pub struct SpanCache {
    inner: Mutex<SpanCacheInner>,
}

struct SpanCacheInner {
    spans: lru::LruCache<(u32, usize), Arc<Vec<u8>>>,
    bytes: u64,
    limit: u64,
}

impl SpanCache {
    /// A cache holding at most about `limit` bytes of spans.
    pub fn new(limit: u64) -> SpanCache {
        SpanCache {
            inner: Mutex::new(SpanCacheInner {
                spans: lru::LruCache::unbounded(),
                bytes: 0,
                limit,
            }),
        }
    }

    fn get(&self, key: (u32, usize)) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().spans.get(&key).cloned()
    }

    /// Drops every span of layer `id`.
    fn forget_layer(&self, id: u32) {
        let mut inner = self.inner.lock();
        let keys: Vec<(u32, usize)> = inner
            .spans
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| k.0 == id)
            .collect();
        for k in keys {
            if let Some(old) = inner.spans.pop(&k) {
                inner.bytes -= old.len() as u64;
            }
        }
    }

    fn put(&self, key: (u32, usize), span: Arc<Vec<u8>>) {
        let mut inner = self.inner.lock();
        inner.bytes += span.len() as u64;
        if let Some(old) = inner.spans.put(key, span) {
            inner.bytes -= old.len() as u64;
        }
        // The newest span stays even when it alone is over the limit.
        while inner.bytes > inner.limit && inner.spans.len() > 1 {
            match inner.spans.pop_lru() {
                Some((_, old)) => inner.bytes -= old.len() as u64,
                None => break,
            }
        }
    }
}

/// Why a span could not be had.
enum SpanError {
    /// The source did not give it (unreachable, refusing, broken): worth trying again.
    Fetch(io::Error),
    /// It gave bytes that do not match the span's digest: never served.
    Mismatch,
}

/// A lazy layer's spans: imgfs's seek table of the blob, or the pieces the layer's own TOC
/// (eStargz, zstd:chunked) names.
pub enum Table {
    Seek(SeekTable),
    Toc(ChunkTable),
}

/// Why stored or fetched bytes of a span cannot be served.
enum Unservable {
    /// They are not the span's bytes: fetch them again.
    Mismatch,
    /// They match, yet do not decode as the table says.
    Corrupt(String),
}

impl Table {
    pub fn len(&self) -> usize {
        match self {
            Table::Seek(t) => t.spans().len(),
            Table::Toc(t) => t.spans().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Span `i`'s bytes in the compressed blob (`i` below [`len`](Self::len)).
    pub fn compressed(&self, i: usize) -> Range<u64> {
        match self {
            Table::Seek(t) => t.spans()[i].compressed.clone(),
            Table::Toc(t) => t.spans()[i].compressed.clone(),
        }
    }

    /// What span `i` yields of the stream the index addresses.
    pub fn uncompressed(&self, i: usize) -> Range<u64> {
        match self {
            Table::Seek(t) => t.spans()[i].uncompressed.clone(),
            Table::Toc(t) => t.spans()[i].uncompressed.clone(),
        }
    }

    pub fn span_at(&self, at: u64) -> Option<usize> {
        match self {
            Table::Seek(t) => t.span_at(at),
            Table::Toc(t) => t.span_at(at),
        }
    }

    pub fn compressed_size(&self) -> u64 {
        match self {
            Table::Seek(t) => t.compressed_size(),
            Table::Toc(t) => t.compressed_size(),
        }
    }

    pub fn uncompressed_size(&self) -> u64 {
        match self {
            Table::Seek(t) => t.uncompressed_size(),
            Table::Toc(t) => t.uncompressed_size(),
        }
    }

    /// Where span `i`'s window lies in the layer's windows blob; `None` when it needs none (a
    /// fresh start, any TOC span).
    pub fn window_range(&self, i: usize) -> Option<Range<u64>> {
        match self {
            Table::Seek(t) => t.window_range(i),
            Table::Toc(_) => None,
        }
    }

    /// Span `i`'s window taken from the output of the span before it.
    pub fn derive_window(&self, i: usize, before: &[u8]) -> Option<Vec<u8>> {
        match self {
            Table::Seek(t) => t.derive_window(i, before),
            Table::Toc(_) => None,
        }
    }

    /// Span `i`'s window from its bytes in the windows blob, checked against its digest.
    pub fn open_window(
        &self,
        i: usize,
        compressed: &[u8],
    ) -> Result<Vec<u8>, crate::index::seek::SeekError> {
        match self {
            Table::Seek(t) => t.open_window(i, compressed),
            Table::Toc(_) => Ok(Vec::new()),
        }
    }

    /// Whether `bytes` are span `i`'s: its digest (a seek table), or the digests of the
    /// file data it decodes to (a TOC: then that data too, decoded once).
    fn check(&self, i: usize, bytes: &[u8]) -> Result<Option<Vec<u8>>, Unservable> {
        match self {
            Table::Seek(t) if sha2::Sha256::digest(bytes).as_slice() == t.spans()[i].digest => {
                Ok(None)
            }
            Table::Seek(_) => Err(Unservable::Mismatch),
            Table::Toc(_) => self.open(i, bytes, None).map(Some),
        }
    }

    /// Span `i` decompressed from `bytes`, once they are checked to be its.
    /// A seek table's span decodes from its checkpoint's `window` (from the windows blob)
    /// when given, else from the table's own.
    fn open(&self, i: usize, bytes: &[u8], window: Option<&[u8]>) -> Result<Vec<u8>, Unservable> {
        match self {
            Table::Seek(t) => {
                if sha2::Sha256::digest(bytes).as_slice() != t.spans()[i].digest {
                    return Err(Unservable::Mismatch);
                }
                match window {
                    Some(w) => t.decompress_span_with(i, bytes, w),
                    None => t.decompress_span(i, bytes),
                }
                .map_err(|e| Unservable::Corrupt(e.to_string()))
            }
            Table::Toc(t) => t.open_span(i, bytes).map_err(|e| match e {
                ChunkError::Mismatch(_) | ChunkError::Corrupt { .. } => Unservable::Mismatch,
                ChunkError::NoSuchSpan(_) => Unservable::Corrupt(e.to_string()),
            }),
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
    /// Where a whole copy of a TOC layer's stream is kept ([`STREAM_FILE`]).
    stream_copy: Option<std::path::PathBuf>,
}

/// A layer's windows blob, read lazily: the windows spans need, fetched by range and kept in
/// the store.
pub struct Windows {
    store: SparseBlob,
    fetch: Box<dyn Fetch>,
    /// Held while a window is fetched: windows are small, and a window two reads want at once
    /// is fetched once.
    fetching: Mutex<()>,
}

impl Windows {
    pub fn new(store: SparseBlob, fetch: Box<dyn Fetch>) -> Windows {
        Windows {
            store,
            fetch,
            fetching: Mutex::new(()),
        }
    }
}

impl LazyBlob {
    pub fn new(
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
            stream_copy: None,
        }
    }

    /// Keeps the whole copy of this layer's stream at `path` ([`make_stream_copy`]).
    ///
    /// [`make_stream_copy`]: Self::make_stream_copy
    pub fn with_stream_copy(mut self, path: std::path::PathBuf) -> LazyBlob {
        self.stream_copy = Some(path);
        self
    }

    /// Where the whole copy of this layer's stream is kept, for a layer read through its TOC
    /// (a layer with a seek table has the whole tar's entry instead).
    pub fn stream_copy(&self) -> Option<&std::path::Path> {
        self.stream_copy.as_deref()
    }

    /// Writes the stream of a layer read through its TOC, every span of which must be in the
    /// store, to [`stream_copy`](Self::stream_copy): each span read back and checked against
    /// its digests as a read checks it, all written under a temporary name, synced, and
    /// renamed once whole. A failure (a missing or damaged span, a full disk) leaves no file.
    pub fn make_stream_copy(&self) -> io::Result<std::path::PathBuf> {
        let (Table::Toc(_), Some(path)) = (&self.table, &self.stream_copy) else {
            return Err(io::Error::other(format!(
                "layer {}: not read through a TOC",
                self.name
            )));
        };
        let tmp = path.with_file_name(format!("{STREAM_FILE}.tmp-{}", std::process::id()));
        let written = (|| {
            let file = std::fs::File::create(&tmp)?;
            file.set_len(self.table.uncompressed_size())?;
            for i in 0..self.table.len() {
                if !self.store.has(i) {
                    return Err(io::Error::other(format!("span {i} is not here")));
                }
                let compressed = self.table.compressed(i);
                let bytes = self.store.read(
                    compressed.start,
                    (compressed.end - compressed.start) as usize,
                )?;
                let data = self.table.open(i, &bytes, None).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        match e {
                            Unservable::Mismatch => format!("span {i} fails its digests"),
                            Unservable::Corrupt(why) => why,
                        },
                    )
                })?;
                std::os::unix::fs::FileExt::write_all_at(
                    &file,
                    &data,
                    self.table.uncompressed(i).start,
                )?;
            }
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        match written {
            Ok(()) => Ok(path.clone()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
            }
        }
    }

    /// Takes the windows spans need from `windows` (a layer's windows blob).
    pub fn with_windows(mut self, windows: Windows) -> LazyBlob {
        self.windows = Some(windows);
        self
    }

    /// Counts this layer's fetches for reads in `demand`, which a background fill yields to.
    pub fn with_demand(mut self, demand: Arc<Demand>) -> LazyBlob {
        self.demand = Some(demand);
        self
    }

    /// Records the spans reads first need with `recorder`.
    pub fn with_recorder(mut self, recorder: Arc<Recorder>) -> LazyBlob {
        self.recorder = Some(recorder);
        self
    }

    /// Compressed bytes this process has fetched.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched_bytes.load(Ordering::Relaxed)
    }

    /// Names the layer in messages (its blob's digest).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many spans the layer has.
    pub fn span_count(&self) -> usize {
        self.table.len()
    }

    /// Whether span `i` is in the store (fetched by this process or another).
    pub fn has_span(&self, i: usize) -> bool {
        self.store.has(i)
    }

    /// Has `f` called each time this process has stored spans it fetched (once set, kept).
    pub fn on_stored(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_stored.set(f);
    }

    /// Drops this layer's decompressed spans from the span cache: for a layer read from
    /// elsewhere from now on.
    pub fn forget_cached(&self) {
        self.cache.forget_layer(self.id);
    }

    /// Makes sure spans `spans` are in the store, fetching the missing ones (neighbours in
    /// one range, all ranges in one request), within the fetch timeout.
    pub fn ensure(&self, spans: Range<usize>) -> io::Result<()> {
        self.ensure_as(spans, true)
    }

    /// [`ensure`](Self::ensure) for a background fill: its fetches are not reads' demand.
    fn fill(&self, spans: Range<usize>) -> io::Result<()> {
        self.ensure_as(spans, false)
    }

    fn ensure_as(&self, spans: Range<usize>, read: bool) -> io::Result<()> {
        let start = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let missing: Vec<usize> = spans.clone().filter(|&i| !self.store.has(i)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            let (mine, theirs): (Vec<usize>, Vec<usize>) = {
                let mut fetching = self.fetching.lock();
                // Looked at again under the lock: a fetch that ended since is not repeated.
                let (theirs, mine): (Vec<usize>, Vec<usize>) = missing
                    .iter()
                    .filter(|&&i| !self.store.has(i))
                    .partition(|i| fetching.contains(i));
                fetching.extend(mine.iter().copied());
                (mine, theirs)
            };
            let result = if mine.is_empty() {
                Ok(())
            } else {
                let counted = self.demand.as_deref().filter(|_| read).map(Demand::begin);
                let result = self.fetch_spans(&mine);
                drop(counted);
                let mut fetching = self.fetching.lock();
                for i in &mine {
                    fetching.remove(i);
                }
                self.fetched.notify_all();
                if let Some(f) = self.on_stored.get() {
                    f();
                }
                result
            };
            if !theirs.is_empty() {
                // A read waiting for another fetch is demand all the same.
                let _counted = self.demand.as_deref().filter(|_| read).map(Demand::begin);
                let mut fetching = self.fetching.lock();
                while theirs.iter().any(|i| fetching.contains(i)) {
                    let left = self.options.fetch_timeout.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    self.fetched.wait_for(&mut fetching, left);
                }
            }
            match result {
                Ok(()) => {
                    if start.elapsed() >= self.options.fetch_timeout {
                        // Another thread's fetch failed and time is up.
                        return Err(self.give_up(&missing, "another read's fetch failed"));
                    }
                }
                Err(SpanError::Mismatch) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: a span does not match its digest", self.name),
                    ));
                }
                Err(SpanError::Fetch(e)) => {
                    if start.elapsed() + backoff > self.options.fetch_timeout {
                        return Err(self.give_up(&missing, &e.to_string()));
                    }
                    log::debug!("{}: {e}; trying again in {backoff:?}", self.name);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The error a read gets once the timeout is spent, logged once with the layer and range.
    fn give_up(&self, missing: &[usize], why: &str) -> io::Error {
        let range = match (missing.first(), missing.last()) {
            (Some(&a), Some(&b)) => format!(
                "bytes {}-{}",
                self.table.compressed(a).start,
                self.table.compressed(b).end.saturating_sub(1)
            ),
            _ => String::from("no bytes"),
        };
        log::error!(
            "layer {} {range}: cannot be fetched within {:?}: {why}",
            self.name,
            self.options.fetch_timeout
        );
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("layer {} {range}: {why}", self.name),
        )
    }

    /// Fetches spans `mine` (sorted), verifies each against its digest and stores it.
    fn fetch_spans(&self, mine: &[usize]) -> Result<(), SpanError> {
        let table = &self.table;
        // Runs of neighbouring spans, each fetched as one range.
        let mut runs: Vec<Range<usize>> = Vec::new();
        for &i in mine {
            match runs.last_mut() {
                Some(run)
                    if run.end == i
                        && table.compressed(i).end - table.compressed(run.start).start
                            <= MAX_RANGE =>
                {
                    run.end = i + 1
                }
                _ => runs.push(i..i + 1),
            }
        }
        let ranges: Vec<Range<u64>> = runs
            .iter()
            .map(|r| table.compressed(r.start).start..table.compressed(r.end - 1).end)
            .collect();
        let t0 = Instant::now();
        let bodies = self.fetch.fetch(&ranges).map_err(SpanError::Fetch)?;
        log::debug!(
            "layer {}: fetched spans {mine:?}, {} bytes in {:?}",
            self.name,
            ranges.iter().map(|r| r.end - r.start).sum::<u64>(),
            t0.elapsed()
        );
        if bodies.len() != ranges.len() {
            return Err(SpanError::Fetch(io::Error::other(format!(
                "{} ranges asked, {} answered",
                ranges.len(),
                bodies.len()
            ))));
        }
        let mut result = Ok(());
        for ((run, range), body) in runs.iter().zip(&ranges).zip(&bodies) {
            if body.len() as u64 != range.end - range.start {
                return Err(SpanError::Fetch(io::Error::other(format!(
                    "{} bytes answered for a range of {}",
                    body.len(),
                    range.end - range.start
                ))));
            }
            for i in run.clone() {
                let c = table.compressed(i);
                let bytes = &body[(c.start - range.start) as usize..(c.end - range.start) as usize];
                let Ok(decoded) = table.check(i, bytes) else {
                    log::error!(
                        "layer {} bytes {}-{}: the registry's bytes do not match the span's digest; not served",
                        self.name,
                        c.start,
                        c.end.saturating_sub(1)
                    );
                    result = Err(SpanError::Mismatch);
                    continue;
                };
                self.store
                    .write(i, c.start, bytes)
                    .map_err(|e| SpanError::Fetch(io::Error::other(format!("the store: {e}"))))?;
                if let Some(data) = decoded {
                    self.cache.put((self.id, i), Arc::new(data));
                }
                self.fetched_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        }
        result
    }

    /// Span `i` decompressed: from the cache, else from the store (verified again).
    fn span(&self, i: usize) -> io::Result<Arc<Vec<u8>>> {
        if let Some(s) = self.cache.get((self.id, i)) {
            return Ok(s);
        }
        let compressed = self.table.compressed(i);
        let len = (compressed.end - compressed.start) as usize;
        // The checkpoint's window, from the windows blob when the table keeps none itself.
        let window = match &self.windows {
            Some(windows) => Some(self.window(windows, i)?),
            None => None,
        };
        let mut tries = 0;
        let data = loop {
            self.ensure(i..i + 1)?;
            let bytes = self.store.read(compressed.start, len)?;
            match self.table.open(i, &bytes, window.as_deref()) {
                Ok(data) => break data,
                Err(Unservable::Corrupt(e)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", self.name),
                    ));
                }
                Err(Unservable::Mismatch) => {}
            }
            tries += 1;
            log::warn!(
                "layer {} bytes {}-{}: the stored span is damaged; fetching it again",
                self.name,
                compressed.start,
                compressed.end.saturating_sub(1)
            );
            self.store.forget(i);
            if tries > 1 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: span {i} keeps failing its digest", self.name),
                ));
            }
        };
        let data = Arc::new(data);
        self.cache.put((self.id, i), data.clone());
        Ok(data)
    }
}

impl LazyBlob {
    /// [`ensure`](Self::ensure), and the first span's window when a read of it would have to
    /// fetch it: both at once.
    fn ensure_for_read(&self, spans: Range<usize>) -> io::Result<()> {
        match &self.windows {
            Some(windows) if self.window_missing(spans.start) => std::thread::scope(|s| {
                let window = s.spawn(|| self.window(windows, spans.start));
                let fetched = self.ensure(spans.clone());
                let window = window
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a window fetch stopped")));
                fetched.and(window.map(drop))
            }),
            _ => self.ensure(spans),
        }
    }

    /// Fetches spans `spans` as a read would, then decompresses them in order into the span
    /// cache (each one's window taken from the one before), so that the reads that follow
    /// find them there.
    fn prefetch(&self, spans: Range<usize>) -> io::Result<()> {
        self.ensure_for_read(spans.clone())?;
        spans.into_iter().try_for_each(|i| self.span(i).map(drop))
    }

    /// Whether reading span `i` will fetch its window: it needs one, the span before is not
    /// decompressed at hand, and the window is not in the store.
    fn window_missing(&self, i: usize) -> bool {
        let Some(windows) = &self.windows else {
            return false;
        };
        self.table.window_range(i).is_some()
            && !windows.store.has(i)
            && i.checked_sub(1)
                .and_then(|p| self.cache.get((self.id, p)))
                .and_then(|before| self.table.derive_window(i, &before))
                .is_none()
    }

    /// Span `i`'s window (empty when it needs none): from the span before when it is
    /// decompressed at hand, else from the store (checked again), else fetched.
    fn window(&self, windows: &Windows, i: usize) -> io::Result<Vec<u8>> {
        let Some(range) = self.table.window_range(i) else {
            return Ok(Vec::new());
        };
        if let Some(window) = i
            .checked_sub(1)
            .and_then(|p| self.cache.get((self.id, p)))
            .and_then(|before| self.table.derive_window(i, &before))
        {
            return Ok(window);
        }
        let len = (range.end - range.start) as usize;
        let start = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut damaged = false;
        loop {
            if windows.store.has(i) {
                let bytes = windows.store.read(range.start, len)?;
                match self.table.open_window(i, &bytes) {
                    Ok(window) => return Ok(window),
                    Err(e) if !damaged => {
                        damaged = true;
                        log::warn!(
                            "layer {}: the stored window of span {i} is damaged ({e}); fetching it again",
                            self.name
                        );
                        windows.store.forget(i);
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: span {i}'s window keeps failing: {e}", self.name),
                        ));
                    }
                }
            }
            let _fetching = windows.fetching.lock();
            if windows.store.has(i) {
                continue;
            }
            let counted = self.demand.as_deref().map(Demand::begin);
            let t0 = Instant::now();
            let fetched =
                windows
                    .fetch
                    .fetch(std::slice::from_ref(&range))
                    .and_then(|mut bodies| {
                        bodies
                            .pop()
                            .filter(|b| b.len() == len && bodies.is_empty())
                            .ok_or_else(|| {
                                io::Error::other("the registry answered the wrong bytes")
                            })
                    });
            drop(counted);
            match fetched {
                Ok(bytes) => {
                    log::debug!(
                        "layer {}: fetched span {i}'s window, {len} bytes in {:?}",
                        self.name,
                        t0.elapsed()
                    );
                    if let Err(e) = self.table.open_window(i, &bytes) {
                        log::error!(
                            "layer {} window of span {i}: the registry's bytes are not usable ({e}); not used",
                            self.name
                        );
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: span {i}'s window does not match its digest", self.name),
                        ));
                    }
                    windows.store.write(i, range.start, &bytes)?;
                }
                Err(e) => {
                    if start.elapsed() + backoff > self.options.fetch_timeout {
                        log::error!(
                            "layer {} window of span {i}: cannot be fetched within {:?}: {e}",
                            self.name,
                            self.options.fetch_timeout
                        );
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("layer {} window of span {i}: {e}", self.name),
                        ));
                    }
                    log::debug!("{}: {e}; trying again in {backoff:?}", self.name);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

impl Blob for Arc<LazyBlob> {
    fn size(&self) -> io::Result<u64> {
        <LazyBlob as Blob>::size(self)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        <LazyBlob as Blob>::read_at(self, buf, offset)
    }

    /// Fetches the rest of a file of at most `READ_AHEAD_FILE` bytes on a thread of its own,
    /// once per file, in ranges of about `READ_AHEAD_RANGE`, each decompressed into the span
    /// cache; the read itself fetches its own spans meanwhile.
    fn will_read(&self, file: Range<u64>, now: Range<u64>) {
        if file.end - file.start > READ_AHEAD_FILE || file.is_empty() {
            return;
        }
        let (Some(first), Some(last)) = (
            self.table.span_at(file.start),
            self.table.span_at(file.end - 1),
        ) else {
            return;
        };
        let reading = self.table.span_at(now.start).zip(
            now.end
                .checked_sub(1)
                .and_then(|end| self.table.span_at(end)),
        );
        let rest: Vec<usize> = (first..=last)
            .filter(|i| !reading.is_some_and(|(a, b)| (a..=b).contains(i)) && !self.store.has(*i))
            .collect();
        if rest.is_empty() || !self.ahead.lock().insert(file.start) {
            return;
        }
        let table = &self.table;
        let mut runs: Vec<Range<usize>> = Vec::new();
        for i in rest {
            match runs.last_mut() {
                Some(run)
                    if run.end == i
                        && table.compressed(i).end - table.compressed(run.start).start
                            <= READ_AHEAD_RANGE =>
                {
                    run.end = i + 1
                }
                _ => runs.push(i..i + 1),
            }
        }
        let blob = self.clone();
        let spawned = std::thread::Builder::new()
            .name("imgfs-ahead".into())
            .spawn(move || {
                for run in runs {
                    if let Err(e) = blob.prefetch(run) {
                        log::debug!("read-ahead of layer {}: {e}", blob.name);
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            log::debug!("cannot start a read-ahead: {e}");
        }
    }
}

impl Blob for LazyBlob {
    fn size(&self) -> io::Result<u64> {
        Ok(self.table.uncompressed_size())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let size = self.table.uncompressed_size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let end = size.min(offset.saturating_add(buf.len() as u64));
        let (Some(first), Some(last)) = (self.table.span_at(offset), self.table.span_at(end - 1))
        else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no span holds byte {offset}", self.name),
            ));
        };
        {
            let mut used = self.used.lock();
            let new: Vec<usize> = (first..=last).filter(|i| used.insert(*i)).collect();
            if let Some(r) = &self.recorder
                && !new.is_empty()
            {
                r.record(self.id, &new);
            }
        }
        self.ensure_for_read(first..last + 1)?;
        let mut at = offset;
        for i in first..=last {
            let span = self.table.uncompressed(i);
            let data = self.span(i)?;
            let from = (at - span.start) as usize;
            let to = ((end.min(span.end)) - span.start) as usize;
            let piece = data.get(from..to).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: span {i} is shorter than its table says", self.name),
                )
            })?;
            let dst = (at - offset) as usize;
            buf[dst..dst + piece.len()].copy_from_slice(piece);
            at += piece.len() as u64;
        }
        Ok((end - offset) as usize)
    }
}

/// Reads ranges of a blob from its registry, connecting on first use (so that a mount never
/// waits for the network, and a registry down at mount time is tried again at each read).
pub struct RegistryFetch {
    remote: Remote,
    digest: oci_spec::image::Digest,
    registry: Mutex<Option<Arc<Registry>>>,
}

/// Registry clients of this process by repository and options: the blobs of one image share
/// one client, its connections and its token, so a layer's first read does not connect anew.
type Clients = Mutex<Vec<((String, bool, Option<std::path::PathBuf>), Arc<Registry>)>>;
static CLIENTS: Clients = Mutex::new(Vec::new());

impl RegistryFetch {
    pub fn new(remote: Remote) -> io::Result<RegistryFetch> {
        let digest = crate::source::digest::parse(&remote.digest)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(RegistryFetch {
            remote,
            digest,
            registry: Mutex::new(None),
        })
    }

    fn registry(&self) -> io::Result<Arc<Registry>> {
        use crate::source::registry::{RegistryOptions, Retry};
        if let Some(r) = &*self.registry.lock() {
            return Ok(r.clone());
        }
        let key = (
            self.remote.repository.clone(),
            self.remote.insecure,
            self.remote.auth_file.clone(),
        );
        if let Some((_, r)) = CLIENTS.lock().iter().find(|(k, _)| *k == key) {
            *self.registry.lock() = Some(r.clone());
            return Ok(r.clone());
        }
        let options = RegistryOptions {
            tls_verify: !self.remote.insecure,
            auth_file: self.remote.auth_file.clone(),
            // The lazy reader tries again itself, within its own timeout.
            retry: Retry {
                tries: 2,
                first_delay: Duration::from_millis(200),
            },
            ..RegistryOptions::default()
        };
        let registry = Registry::connect_repository(&self.remote.repository, &options)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let registry = Arc::new(registry);
        *self.registry.lock() = Some(registry.clone());
        CLIENTS.lock().push((key, registry.clone()));
        Ok(registry)
    }
}

impl Fetch for RegistryFetch {
    fn fetch(&self, ranges: &[Range<u64>]) -> io::Result<Vec<Vec<u8>>> {
        self.registry()?
            .fetch_ranges(&self.digest, self.remote.size, ranges)
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

/// Opens the lazy layer whose entry holds `remote_file` (its [`crate::cache::sparse::REMOTE_FILE`]), as blob `id`
/// of an image whose layers share `cache`.
pub fn open(
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
    let windows = match &table {
        Table::Seek(t) => {
            if t.windows_size() != remote.windows_size {
                return Err(invalid(format!(
                    "{}: the seek table names {} bytes of windows, the windows blob has {}",
                    dir.display(),
                    t.windows_size(),
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
        Table::Toc(_) => None,
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
pub fn open_table(dir: &std::path::Path, blob_size: u64) -> io::Result<Table> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let seek_path = dir.join(SEEK_FILE);
    let table = match std::fs::read(&seek_path) {
        Ok(bytes) => Table::Seek(
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
            Table::Toc(parsed.table)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::seek::SeekCompression;

    const SPAN: u64 = 64 << 10;

    /// A request's ranges, when it began and when it was answered.
    type Request = (Vec<Range<u64>>, Instant, Instant);

    /// A blob served from memory at 10 MiB/s that logs each request (its ranges, when it
    /// began and ended) and holds them until let go.
    struct Held {
        data: Arc<Vec<u8>>,
        log: Arc<Mutex<Vec<Request>>>,
        /// Requests begun, answered or not.
        begun: Arc<AtomicU64>,
        held: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Fetch for Held {
        fn fetch(&self, ranges: &[Range<u64>]) -> io::Result<Vec<Vec<u8>>> {
            let began = Instant::now();
            self.begun.fetch_add(1, Ordering::SeqCst);
            let (lock, go) = &*self.held;
            let mut holding = lock.lock();
            while *holding {
                go.wait(&mut holding);
            }
            drop(holding);
            let bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            std::thread::sleep(Duration::from_secs_f64(bytes as f64 / f64::from(10 << 20)));
            let bodies = ranges
                .iter()
                .map(|r| self.data[r.start as usize..r.end as usize].to_vec())
                .collect();
            self.log
                .lock()
                .push((ranges.to_vec(), began, Instant::now()));
            Ok(bodies)
        }
    }

    /// A background fill sends nothing while a read fetches, waits [`QUIET`] after it, and then
    /// asks for small ranges; once reads have been quiet for [`BUSY`], for large ones.
    #[test]
    fn a_fill_yields_the_link_to_reads() {
        let data: Arc<Vec<u8>> = Arc::new((0..12u32 << 20).map(|i| (i * 7 % 251) as u8).collect());
        let table = Table::Seek(SeekTable::build(SeekCompression::None, &data[..], SPAN).unwrap());
        let spans = table.len();
        let dir = std::env::temp_dir().join(format!("imgfs-lazy-fill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        SparseBlob::create(&dir, data.len() as u64, spans).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new((Mutex::new(true), Condvar::new()));
        let begun = Arc::new(AtomicU64::new(0));
        let fetch = Held {
            data: data.clone(),
            log: log.clone(),
            begun: begun.clone(),
            held: held.clone(),
        };
        let demand = Arc::new(Demand::new());
        let blob = Arc::new(
            LazyBlob::new(
                "test".into(),
                0,
                table,
                SparseBlob::open(&dir, data.len() as u64, spans).unwrap(),
                Box::new(fetch),
                Arc::new(SpanCache::new(1 << 20)),
                LazyOptions::default(),
            )
            .with_demand(demand.clone()),
        );
        let read = {
            let blob = blob.clone();
            std::thread::spawn(move || blob.ensure(10..12))
        };
        while demand.state.lock().fetching == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        prefetch_all(vec![blob.clone()], demand);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            begun.load(Ordering::SeqCst),
            1,
            "a fill's request went beside a read's"
        );
        *held.0.lock() = false;
        held.1.notify_all();
        read.join().unwrap().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (0..spans).any(|i| !blob.store.has(i)) {
            assert!(Instant::now() < deadline, "the fill did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = log.lock();
        let (first, rest) = log.split_first().unwrap();
        assert_eq!(
            first.0.as_slice(),
            std::slice::from_ref(&(10 * SPAN..12 * SPAN)),
            "the read's request came first"
        );
        let read_ended = first.2;
        let size = |r: &[Range<u64>]| r.iter().map(|r| r.end - r.start).sum::<u64>();
        let mut fetched = 2;
        for (ranges, began, _) in rest {
            assert!(
                *began >= read_ended + QUIET,
                "a fill's range went before reads were quiet"
            );
            let busy = began.duration_since(read_ended) < BUSY;
            let most = if busy {
                PREFETCH_RANGE_BUSY
            } else {
                PREFETCH_RANGE
            };
            assert!(
                size(ranges) <= most,
                "{ranges:?} at {:?}",
                began.duration_since(read_ended)
            );
            fetched += size(ranges) / SPAN;
        }
        assert_eq!(fetched as usize, spans, "each span was fetched once");
        assert!(
            rest.iter().any(|(r, _, _)| size(r) > PREFETCH_RANGE_BUSY),
            "the fill never went to large ranges once reads were quiet"
        );
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
