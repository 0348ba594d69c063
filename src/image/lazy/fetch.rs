//! Getting spans into the store: the fetches in flight, the check of what arrives, and the
//! tries again.
//!
//! Takes the spans a read or a fill needs and the layer's [`Fetch`] (and, for a gzip layer
//! whose table keeps no windows, its [`Windows`]); hands on those spans in the layer's store,
//! each checked against its digest before it was written. Guarantees: one thread of this
//! process at a time fetches a span, and a read that wants a span another thread is fetching
//! waits for that fetch; neighbouring missing spans go in one range of a bounded size; bytes
//! that do not match are never stored. A source that fails is tried again, with a pause that
//! doubles, until the layer's fetch timeout; then the read fails with one log line naming the
//! layer and the range. Both loops that try again — for spans ([`LazyBlob::ensure`]) and for
//! windows — are here, with the pauses they share.

use std::collections::HashSet;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::LazyBlob;
use super::prefetch::Demand;
use crate::cache::sparse::SparseBlob;
use crate::source::retry::Policy;

/// The first pause after a failed fetch; it doubles up to [`MAX_BACKOFF`]. Spans (in
/// `ensure_as`) and windows (in `window`) are tried again alike: a try that fails waits its
/// pause, unless that pause would end past the layer's fetch timeout, counted from the read's
/// first try; then the read fails.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between tries of a fetch.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Most bytes asked for in one range: a bigger run of missing spans is split, so that one
/// slow answer does not hold every reader of the run.
const MAX_RANGE: u64 = 32 << 20;

/// Reads byte ranges of one compressed blob from where it lives.
pub trait Fetch: Send + Sync {
    /// The bytes of each range (sorted, disjoint, within the blob), exactly as long as asked.
    fn fetch(&self, ranges: &[Range<u64>]) -> io::Result<Vec<Vec<u8>>>;
}

/// Why a span could not be had.
enum SpanError {
    /// The source did not give it (unreachable, refusing, broken): worth trying again.
    Fetch(io::Error),
    /// It gave bytes that do not match the span's digest: never served.
    Mismatch,
}

/// A layer's windows blob, read lazily: the windows spans need, fetched by range and kept in
/// the store.
pub struct Windows {
    store: SparseBlob,
    fetch: Box<dyn Fetch>,
    /// The windows being fetched: a window two reads want at once is fetched once, while
    /// different windows are fetched side by side.
    fetching: Mutex<HashSet<usize>>,
    fetched: Condvar,
}

impl Windows {
    pub(crate) fn new(store: SparseBlob, fetch: Box<dyn Fetch>) -> Windows {
        Windows {
            store,
            fetch,
            fetching: Mutex::new(HashSet::new()),
            fetched: Condvar::new(),
        }
    }

    /// Claims window `i` for this thread to fetch, once no other thread is fetching it; None
    /// when the store has it by then.
    fn claim(&self, i: usize) -> Option<WindowClaim<'_>> {
        let mut fetching = self.fetching.lock();
        while fetching.contains(&i) {
            self.fetched.wait(&mut fetching);
        }
        if self.store.has(i) {
            return None;
        }
        fetching.insert(i);
        Some(WindowClaim { windows: self, i })
    }
}

/// A window this thread fetches; let go (whatever happened) when dropped.
struct WindowClaim<'a> {
    windows: &'a Windows,
    i: usize,
}

impl Drop for WindowClaim<'_> {
    fn drop(&mut self) {
        self.windows.fetching.lock().remove(&self.i);
        self.windows.fetched.notify_all();
    }
}

impl LazyBlob {
    /// Makes sure spans `spans` are in the store, fetching the missing ones (neighbours in
    /// one range, all ranges in one request), within the fetch timeout.
    pub(crate) fn ensure(&self, spans: Range<usize>) -> io::Result<()> {
        self.ensure_as(spans, true)
    }

    /// [`ensure`](Self::ensure) for a background fill: its fetches are not reads' demand.
    pub(super) fn fill(&self, spans: Range<usize>) -> io::Result<()> {
        self.ensure_as(spans, false)
    }

    /// How a fetch of this layer is tried again: within the fetch timeout, pauses doubling
    /// from [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`].
    fn retry(&self) -> Policy {
        Policy::within(self.options.fetch_timeout, FIRST_BACKOFF, MAX_BACKOFF)
    }

    fn ensure_as(&self, spans: Range<usize>, read: bool) -> io::Result<()> {
        let policy = self.retry();
        let mut attempts = policy.start();
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
                    let left = attempts.left().unwrap_or_default();
                    if left.is_zero() {
                        break;
                    }
                    self.fetched.wait_for(&mut fetching, left);
                }
            }
            match result {
                Ok(()) => {
                    if attempts.left() == Some(Duration::ZERO) {
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
                Err(SpanError::Fetch(e)) => match attempts.next(true, None) {
                    Ok(pause) => {
                        log::debug!("{}: {e}; trying again in {pause:?}", self.name);
                        std::thread::sleep(pause);
                    }
                    Err(_) => return Err(self.give_up(&missing, &e.to_string())),
                },
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
        let runs = super::table::runs(table.as_ref(), mine.iter().copied(), MAX_RANGE);
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

    /// [`ensure`](Self::ensure), and the first span's window when a read of it would have to
    /// fetch it: both at once.
    pub(super) fn ensure_for_read(&self, spans: Range<usize>) -> io::Result<()> {
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
    pub(super) fn window(&self, windows: &Windows, i: usize) -> io::Result<Vec<u8>> {
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
        let policy = self.retry();
        let mut attempts = policy.start();
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
            let Some(_claim) = windows.claim(i) else {
                continue; // fetched by another thread meanwhile
            };
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
                Err(e) => match attempts.next(true, None) {
                    Ok(pause) => {
                        log::debug!("{}: {e}; trying again in {pause:?}", self.name);
                        std::thread::sleep(pause);
                    }
                    Err(_) => {
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
                },
            }
        }
    }
}
