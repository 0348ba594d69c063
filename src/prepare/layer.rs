//! A layer stored whole, what every strategy that keeps layers whole shares: each layer the
//! store lacks is read from its source, checked against its digest, decompressed into the
//! store and scanned in the same pass; a layer already stored (shared with another image) is
//! only scanned, by its headers. Layers are filled in parallel.
//!
//! Takes a [`LayerSource`] and the layers to store; hands on each layer's members in archive
//! order, its tar's length and what its scan noticed ([`Scanned`]), and where the store keeps
//! its tar ([`Cache::layer_path`]). Every layer is verified twice over: its bytes as stored against
//! the digest its source names (when it names one), and its uncompressed tar against the
//! config's diff id, which is also its key in the store. A layer that fails either is
//! discarded, never committed.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::PrepareError;
use crate::cache::{self, Cache};
use crate::index::FileInput;
use crate::index::scan::{self, Entry as Member, ScanError, TeeInput};
use crate::index::toc;
use crate::source::digest::Hasher;
use crate::source::{Layer, LayerSource, SourceError};
use crate::sys::{Durability, Publish};

/// Layers fetched at once: enough to keep a link or both cores busy, few enough not to
/// thrash a disk or open a registry's rate limits.
const PARALLEL_LAYERS: usize = 4;
/// Time between two progress reports.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// What the layer fills have done, shared with the thread that reports progress.
#[derive(Default)]
pub(super) struct Counters {
    pub bytes: AtomicU64,
    pub entries: AtomicU64,
    pub done: AtomicU32,
}

/// One layer's members, in archive order, and what its scan noticed.
pub(super) struct Scanned {
    pub members: Vec<Member>,
    pub warnings: Vec<String>,
    /// The length of its tar.
    pub size: u64,
}

/// Makes sure `layers` are in the store whole, as a whole fetch does for all of an image's,
/// and hands on each one's members (eStargz's own entries hidden), its tar's length and what
/// its scan noticed, in order.
pub(super) fn whole_layers(
    cache: &Cache,
    source: &dyn LayerSource,
    layers: &[Layer],
) -> Result<Vec<Scanned>, PrepareError> {
    let counters = Counters::default();
    let scanned = fill_layers(cache, source, layers, &counters, &mut |_| {})?;
    Ok(scanned
        .into_iter()
        .zip(layers)
        .map(|(s, layer)| Scanned {
            members: visible(layer, s.members),
            ..s
        })
        .collect())
}

/// A layer's members without the entries of its format (eStargz's TOC and landmarks), as
/// a mount shows it.
pub(super) fn visible(layer: &Layer, mut members: Vec<Member>) -> Vec<Member> {
    if layer.annotations.contains_key(toc::ESTARGZ_TOC_DIGEST) {
        members.retain(|m| !toc::is_format_entry(&m.path));
    }
    members
}

/// Makes sure the store holds `layer`'s uncompressed tar, read from `source` (and verified)
/// unless a complete entry has it; where it is.
pub(crate) fn store_layer(
    cache: &Cache,
    source: &dyn LayerSource,
    layer: &Layer,
) -> Result<PathBuf, PrepareError> {
    layer_members(cache, source, layer, &Counters::default())?;
    Ok(cache.layer_path(layer))
}

/// Makes sure every layer is in the store and returns their members, bottom first. Runs
/// [`PARALLEL_LAYERS`] workers; the calling thread reports progress meanwhile.
pub(super) fn fill_layers(
    cache: &Cache,
    source: &dyn LayerSource,
    layers: &[Layer],
    counters: &Counters,
    report: &mut dyn FnMut(&Counters),
) -> Result<Vec<Scanned>, PrepareError> {
    let results: Vec<Mutex<Option<Result<Scanned, PrepareError>>>> =
        layers.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_LAYERS.min(layers.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= layers.len() || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = layer_members(cache, source, &layers[i], counters);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    *results[i].lock() = Some(r);
                    counters.done.fetch_add(1, Ordering::Relaxed);
                    finished.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let mut last = Instant::now();
        while finished.load(Ordering::Relaxed) < layers.len() && !failed.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
            if last.elapsed() >= REPORT_EVERY {
                last = Instant::now();
                report(counters);
            }
        }
    });
    // The first failure in layer order is the one reported.
    let mut out = Vec::with_capacity(layers.len());
    for r in results {
        match r.into_inner() {
            Some(Ok(s)) => out.push(s),
            Some(Err(e)) => return Err(e),
            None => continue,
        }
    }
    if out.len() != layers.len() {
        return Err(PrepareError::Source(SourceError::Invalid {
            what: source.describe(),
            why: "a layer could not be read".into(),
        }));
    }
    Ok(out)
}

/// One layer's members: scanned from the store if it is there, else filled from `source`.
fn layer_members(
    cache: &Cache,
    source: &dyn LayerSource,
    layer: &Layer,
    counters: &Counters,
) -> Result<Scanned, PrepareError> {
    let (key, _) = layer.store_key();
    let entry = cache.layer(&key);
    let path = entry.dir().join(cache::LAYER_FILE);
    let what = || format!("{}: layer {}", source.describe(), layer.diff_id);
    if entry.marker().is_some()
        && let Ok(s) = scan_stored(&path)
    {
        return Ok(s);
    }
    let lock = entry.lock()?;
    if entry.marker().is_some()
        && let Ok(s) = scan_stored(&path)
    {
        return Ok(s); // another process filled it while we waited
    }
    entry.reset(&lock)?;
    // Written under a name of its own, renamed once verified: a `layer.tar` is always whole.
    let filled = Publish::new(Durability::Atomic)
        .with(&path, |file| fill(source, layer, file, &path, counters))
        .map_err(|e| match e {
            Fill::Source(e) => PrepareError::Source(e),
            Fill::Scan(source) => PrepareError::Layer {
                what: what(),
                cause: source,
            },
            Fill::Io(source) => PrepareError::LayerIo {
                what: what(),
                cause: source,
            },
            Fill::Publish(e) => PrepareError::LayerIo {
                what: what(),
                cause: named(&path, e),
            },
        });
    let committed = filled.and_then(|s| {
        entry.commit(&lock, &key)?;
        Ok(s)
    });
    if committed.is_err() {
        entry.discard();
    }
    committed
}

fn scan_stored(path: &Path) -> Result<Scanned, ScanError> {
    let io = |source| ScanError::Io {
        offset: 0,
        cause: source,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut input = FileInput::new(&file, size);
    let mut members = Vec::new();
    let mut warnings = Vec::new();
    scan::scan(&mut input, &mut |w| warnings.push(w), &mut |m| {
        members.push(m);
        Ok(())
    })?;
    Ok(Scanned {
        members,
        warnings,
        size,
    })
}

enum Fill {
    Source(SourceError),
    Scan(ScanError),
    Io(io::Error),
    /// Creating the file under its temporary name, or renaming it.
    Publish(io::Error),
}

impl From<io::Error> for Fill {
    fn from(e: io::Error) -> Fill {
        Fill::Publish(e)
    }
}

/// Streams `layer` from its source into `file` (named `path` in errors), decompressed, scanning it on the way, and
/// checks its diff id. Two threads share the work, so that decompression is what bounds it:
/// one reads, checks and decompresses; the other hashes, writes and scans what comes out.
fn fill(
    source: &dyn LayerSource,
    layer: &Layer,
    file: &mut File,
    path: &Path,
    counters: &Counters,
) -> Result<Scanned, Fill> {
    let io = Fill::Io;
    let mut raw = source.open_layer(layer).map_err(Fill::Source)?;
    let sink = LayerWriter {
        file: BufWriter::with_capacity(WRITE_BUFFER, file),
        hasher: Hasher::sha256(),
        path,
        counters,
    };
    let mut members = Vec::new();
    let mut warnings = Vec::new();
    let (chunks, received) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(PIPELINE_DEPTH);
    let scanned = std::thread::scope(|s| {
        let raw = &mut raw;
        let decompressor = s.spawn(move || {
            let send = |r| chunks.send(r).is_ok();
            let mut reader = match layer.compression.decompress(Box::new(&mut *raw)) {
                Ok(r) => r,
                Err(e) => {
                    send(Err(e));
                    return;
                }
            };
            loop {
                let mut chunk = vec![0u8; CHUNK];
                match read_full(&mut reader, &mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        chunk.truncate(n);
                        if !send(Ok(chunk)) {
                            return; // the scan stopped
                        }
                    }
                    Err(e) => {
                        send(Err(e));
                        return;
                    }
                }
            }
        });
        let result = (|| {
            let mut input = TeeInput::new(Chunks::new(received), sink);
            scan::scan(&mut input, &mut |w| warnings.push(w), &mut |m| {
                members.push(m);
                counters.entries.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .map_err(Fill::Scan)?;
            input.finish().map_err(io)
        })();
        // The receiver is gone with `input`: a decompressor still sending stops.
        let _ = decompressor.join();
        result
    });
    let (sink, size) = match scanned {
        Ok(done) => done,
        Err(e) => {
            // Bytes that do not match their digest explain any failure to read them as a
            // compressed tar: say that rather than what the damage looked like.
            return Err(match io::copy(&mut raw, &mut io::sink()) {
                Err(d) if d.kind() == io::ErrorKind::InvalidData => io(d),
                _ => e,
            });
        }
    };
    // What the decompressor left unread (a trailer, padding) still counts for the digest
    // of the stored bytes, which the source checks at their end.
    io::copy(&mut raw, &mut io::sink()).map_err(io)?;
    let LayerWriter { file, hasher, .. } = sink;
    let actual = hasher.finish();
    if let (_, Some(diff_id)) = layer.store_key()
        && actual != diff_id.to_string()
    {
        return Err(io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "uncompressed, it does not match its diff id: expected {}, got {actual}",
                layer.diff_id
            ),
        )));
    }
    // Flushed, not synced: like imgfs's own exports, a layer is as durable as the page cache
    // makes it. An fsync here cost about as much as decompressing the layer (0.3 s of 0.6 s
    // for the python image's zstd layers), and what it guards against is a power loss, not
    // an interrupted fill.
    file.into_inner()
        .map_err(|e| io(named(path, e.into_error())))?;
    Ok(Scanned {
        members,
        warnings,
        size,
    })
}

/// Decompressed bytes handed from one thread to the other at a time.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the two threads: enough to ride out a slow write.
const PIPELINE_DEPTH: usize = 8;
/// The layer file's write buffer.
const WRITE_BUFFER: usize = 1 << 20;

/// Fills `buf` as far as `r` goes.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The decompressed stream as the other thread hands it over, read as a stream again.
struct Chunks {
    received: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Chunks {
    fn new(received: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>) -> Chunks {
        Chunks {
            received,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.received.recv() {
                Ok(chunk) => {
                    self.chunk = chunk?;
                    self.at = 0;
                }
                Err(_) => return Ok(0), // the sender is done: the end of the stream
            }
        }
        let n = (self.chunk.len() - self.at).min(buf.len());
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
}

/// The store's copy of a layer: hashes what it writes and counts it for progress.
struct LayerWriter<'a> {
    file: BufWriter<&'a mut File>,
    hasher: Hasher,
    path: &'a Path,
    counters: &'a Counters,
}

impl Write for LayerWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf).map_err(|e| named(self.path, e))?;
        self.hasher.update(&buf[..n]);
        self.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush().map_err(|e| named(self.path, e))
    }
}
