//! Fetching ahead of reads: the spans a recorded run read, every span in the background, and
//! the rest of a small file once a read opens it (but for a file the recording read part of:
//! the recording knows which part a start needs).
//!
//! Takes an image's lazy layers and, for [`Prefetch::Recorded`], the list of the spans reads
//! first needed (as a [`Recorder`] wrote them); hands on those spans in the store, and
//! decompressed in the span cache those a start will read. Guarantees: a background fill
//! ([`prefetch_all`]) yields the link to reads: it sends nothing while reads' fetches
//! ([`Demand`]) are in flight, and small ranges while they come and go. A prefetch that fails
//! is logged and stops; reads still fetch what they need themselves.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::LazyBlob;

/// Files up to this size (uncompressed) are fetched whole, ahead of reads, once one of their
/// bytes is read: programs read most of the files they open (an executable by page faults in
/// any order), and one request for a file is far cheaper than one per read. Larger files are
/// read as reads ask, as most of a large file is often never read.
const READ_AHEAD_FILE: u64 = 8 << 20;
/// Compressed bytes a read-ahead asks for in one range: small enough that a read of a later
/// part of the file does not wait long behind it (it fetches its span itself meanwhile).
const READ_AHEAD_RANGE: u64 = 1 << 20;

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

/// Appends the spans reads first need to the image's [`RECORD_FILE`](super::RECORD_FILE).
pub struct Recorder {
    file: Option<std::fs::File>,
}

impl Recorder {
    /// A recorder appending to `path`; one that records nothing when it cannot be opened (a
    /// cache another user owns).
    pub(crate) fn open(path: &std::path::Path) -> Recorder {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok();
        Recorder { file }
    }

    pub(super) fn record(&self, layer: u32, spans: &[usize]) {
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
/// order, `None` for those that are not lazy. From then on a file with a listed span is not
/// fetched whole ahead of reads ([`LazyBlob::read_ahead`]).
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
        blob.recorded.lock().insert(span);
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
pub(super) struct DemandFetch<'a>(&'a Demand);

impl Demand {
    /// Demand as of a read's fetch just ended: a mount's first reads come right after it is
    /// ready, and a fill started with it lets them go first.
    pub(crate) fn new() -> Demand {
        Demand {
            state: Mutex::new(DemandState {
                fetching: 0,
                last: Instant::now(),
            }),
            changed: Condvar::new(),
        }
    }

    pub(super) fn begin(&self) -> DemandFetch<'_> {
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

impl LazyBlob {
    /// Fetches spans `spans` as a read would, then decompresses them in order into the span
    /// cache (each one's window taken from the one before), so that the reads that follow
    /// find them there.
    fn prefetch(&self, spans: Range<usize>) -> io::Result<()> {
        self.ensure_for_read(spans.clone())?;
        spans.into_iter().try_for_each(|i| self.span(i).map(drop))
    }

    /// What [`Blob::will_read`](crate::image::Blob::will_read) does for a lazy layer: the
    /// read-ahead of a small file.
    pub(super) fn read_ahead(self: &Arc<Self>, file: Range<u64>, now: Range<u64>) {
        if file.end - file.start > READ_AHEAD_FILE || file.is_empty() {
            return;
        }
        let (Some(first), Some(last)) = (
            self.table.span_at(file.start),
            self.table.span_at(file.end - 1),
        ) else {
            return;
        };
        // An empty `now`: no read comes with the hint, the whole file is wanted.
        let reading = (!now.is_empty())
            .then(|| {
                self.table.span_at(now.start).zip(
                    now.end
                        .checked_sub(1)
                        .and_then(|end| self.table.span_at(end)),
                )
            })
            .flatten();
        // The recording knows which parts of such a file a start reads: those are fetched
        // already, and the rest is not wanted now.
        let recorded = self.recorded.lock();
        if (first..=last).any(|i| recorded.contains(&i)) {
            return;
        }
        drop(recorded);
        let rest: Vec<usize> = (first..=last)
            .filter(|i| !reading.is_some_and(|(a, b)| (a..=b).contains(i)) && !self.store.has(*i))
            .collect();
        if rest.is_empty() || !self.ahead.lock().insert(file.start) {
            return;
        }
        let runs = super::table::runs(self.table.as_ref(), rest, READ_AHEAD_RANGE);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::cache::sparse::SparseBlob;
    use crate::image::lazy::{Fetch, LazyOptions, SpanCache, Table};
    use crate::index::seek::{SeekCompression, SeekTable};

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
        let table: Table =
            Box::new(SeekTable::build(SeekCompression::None, &data[..], SPAN).unwrap());
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
