//! A blob that fills piece by piece: the compressed bytes of a layer read lazily from a
//! registry, kept at their own offsets in a sparse file ([`SPARSE_FILE`]), with a map of
//! which spans are there ([`PRESENT_FILE`], one byte per span). The layer's windows blob (the
//! deflate windows its seek table names) fills the same way beside it ([`WINDOWS_FILE`],
//! [`WINDOWS_PRESENT_FILE`], one byte per span: whether that span's window is there).
//!
//! Takes the blob's size and its number of spans; hands out a span's stored bytes and takes
//! a fetched span's. A span's map byte is written only after its bytes, so a span marked
//! present has been written in full by some process; the bytes are still checked against the
//! span's digest each time they are read back (see [`crate::image::lazy`]), so a damaged
//! file is fetched again, never served. Several processes may fill the same blob: they write
//! the same verified bytes at the same offsets, and marking a span present twice is harmless.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The compressed bytes fetched so far, at their offsets in the blob.
pub const SPARSE_FILE: &str = "blob";
/// One byte per span: 1 once the span's bytes are in [`SPARSE_FILE`].
pub(crate) const PRESENT_FILE: &str = "present";
/// The windows fetched so far, at their offsets in the layer's windows blob.
pub(crate) const WINDOWS_FILE: &str = "windows";
/// One byte per span: 1 once the span's window is in [`WINDOWS_FILE`].
pub(crate) const WINDOWS_PRESENT_FILE: &str = "windows-present";

/// What a lazy layer's entry in the store says about where its blob lives ([`REMOTE_FILE`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Remote {
    /// The repository, as `HOST[:PORT]/NAME` (what follows `docker://`, without tag).
    pub repository: String,
    /// The compressed blob's digest and size, as the image manifest states them.
    pub digest: String,
    pub size: u64,
    /// The length of the layer's uncompressed tar.
    pub uncompressed_size: u64,
    /// The layer's windows blob (in the same repository), as the index artifact states it.
    pub windows_digest: String,
    pub windows_size: u64,
    /// `--tls-verify=false` was given when the image was prepared.
    pub insecure: bool,
    /// `--authfile` given when the image was prepared.
    pub auth_file: Option<std::path::PathBuf>,
    /// `--hosts-dir` given when the image was prepared.
    #[serde(default)]
    pub hosts_dir: Option<std::path::PathBuf>,
}

/// A lazy layer's description of its blob, in its entry.
pub const REMOTE_FILE: &str = "remote.json";
/// A lazy layer's seek table (its encoding, see `index::seek`), in its entry.
pub(crate) const SEEK_FILE: &str = "seek";
/// A lazy layer's TOC (eStargz, zstd:chunked), as [`StoredToc`] keeps it, in its entry
/// instead of a seek table.
pub(crate) const TOC_FILE: &str = "toc";
/// A TOC layer's whole stream (the file data its TOC addresses, back to back), made once
/// every span of it is present, each span checked on the way; written under another name and
/// renamed, so that it is whole whenever it exists.
pub(crate) const STREAM_FILE: &str = "stream";

/// A layer's TOC as the store keeps it, checked against its digest when it was fetched: a
/// first line `FORMAT DATA_END` (where file data ends in the blob), then the TOC's JSON.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StoredToc<'a> {
    pub format: &'a str,
    pub data_end: u64,
    pub json: &'a [u8],
}

impl<'a> StoredToc<'a> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = format!("{} {}\n", self.format, self.data_end).into_bytes();
        out.extend_from_slice(self.json);
        out
    }

    pub(crate) fn decode(bytes: &'a [u8]) -> Option<StoredToc<'a>> {
        let nl = bytes.iter().position(|&b| b == b'\n')?;
        let head = std::str::from_utf8(&bytes[..nl]).ok()?;
        let (format, data_end) = head.split_once(' ')?;
        Some(StoredToc {
            format,
            data_end: data_end.parse().ok()?,
            json: &bytes[nl + 1..],
        })
    }
}

/// In an image entry: the spans a recorded run read, as the index's prefetch list gives
/// them (`LAYER SPAN` lines, first read first).
pub const PREFETCH_FILE: &str = "prefetch";
/// In an image entry: the spans reads of this image have needed, as `LAYER SPAN` lines in the
/// order they were first needed, appended by every server of the image.
pub const RECORD_FILE: &str = "recorded";
/// Parses `LAYER SPAN` lines, keeping the pairs within `blobs` (a layer count) and the first
/// of each pair only.
pub fn parse_spans(text: &str, blobs: usize) -> Vec<(u32, usize)> {
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.trim().split_once(' ')?;
            Some((a.parse::<u32>().ok()?, b.parse::<usize>().ok()?))
        })
        .filter(|&(l, _)| (l as usize) < blobs)
        .filter(|p| seen.insert(*p))
        .collect()
}

/// One layer's sparse blob in the store.
pub(crate) struct SparseBlob {
    data: File,
    map: File,
    /// What this process knows to be present; a span not marked here is looked up in the map
    /// file, which another process may have filled meanwhile.
    present: Vec<AtomicBool>,
}

impl SparseBlob {
    /// Creates the files of an empty blob of `size` bytes and `spans` spans in `dir`.
    pub(crate) fn create(dir: &Path, size: u64, spans: usize) -> io::Result<()> {
        create(dir, [SPARSE_FILE, PRESENT_FILE], size, spans)
    }

    /// Opens the blob in `dir`, which must have `size` bytes and `spans` spans.
    pub(crate) fn open(dir: &Path, size: u64, spans: usize) -> io::Result<SparseBlob> {
        open(dir, [SPARSE_FILE, PRESENT_FILE], size, spans)
    }

    /// [`create`](Self::create) for the layer's windows blob: `size` bytes, a window per span.
    pub(crate) fn create_windows(dir: &Path, size: u64, spans: usize) -> io::Result<()> {
        create(dir, [WINDOWS_FILE, WINDOWS_PRESENT_FILE], size, spans)
    }

    /// [`open`](Self::open) for the layer's windows blob.
    pub(crate) fn open_windows(dir: &Path, size: u64, spans: usize) -> io::Result<SparseBlob> {
        open(dir, [WINDOWS_FILE, WINDOWS_PRESENT_FILE], size, spans)
    }
}

/// Creates a sparse blob's data and map files (see [`SparseBlob::create`]).
fn create(dir: &Path, [data, map]: [&str; 2], size: u64, spans: usize) -> io::Result<()> {
    File::create(dir.join(data))?.set_len(size)?;
    File::create(dir.join(map))?.set_len(spans as u64)?;
    Ok(())
}

/// Opens a sparse blob's data and map files (see [`SparseBlob::open`]).
fn open(
    dir: &Path,
    [data_name, map_name]: [&str; 2],
    size: u64,
    spans: usize,
) -> io::Result<SparseBlob> {
    let open = |name: &str| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(name))
    };
    let data = open(data_name)?;
    let map = open(map_name)?;
    let mismatch = |what: &str, actual: u64, expected: u64| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {what} is {actual} bytes, not {expected}",
                dir.display()
            ),
        )
    };
    let data_len = data.metadata()?.len();
    if data_len != size {
        return Err(mismatch(data_name, data_len, size));
    }
    let map_len = map.metadata()?.len();
    if map_len != spans as u64 {
        return Err(mismatch(map_name, map_len, spans as u64));
    }
    let mut bytes = vec![0u8; spans];
    map.read_exact_at(&mut bytes, 0)?;
    let present = bytes.iter().map(|&b| AtomicBool::new(b == 1)).collect();
    Ok(SparseBlob { data, map, present })
}

impl SparseBlob {
    /// Whether span `i`'s bytes are stored (by this process or another).
    pub(crate) fn has(&self, i: usize) -> bool {
        let Some(known) = self.present.get(i) else {
            return false;
        };
        if known.load(Ordering::Acquire) {
            return true;
        }
        let mut b = [0u8];
        if self.map.read_exact_at(&mut b, i as u64).is_ok() && b[0] == 1 {
            known.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// How many spans are stored, as this process last saw them.
    pub(crate) fn count(&self) -> usize {
        (0..self.present.len()).filter(|&i| self.has(i)).count()
    }

    /// The stored bytes at `offset`, `len` long (span `i`'s, when [`has`](Self::has) says so).
    pub(crate) fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.data.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Stores span `i`'s verified bytes at `offset`, then marks the span present.
    pub(crate) fn write(&self, i: usize, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let Some(known) = self.present.get(i) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("span {i} is past the blob's map"),
            ));
        };
        self.data.write_all_at(bytes, offset)?;
        self.map.write_all_at(&[1], i as u64)?;
        known.store(true, Ordering::Release);
        Ok(())
    }

    /// Forgets span `i` (its stored bytes did not match its digest): it is fetched again.
    pub(crate) fn forget(&self, i: usize) {
        if let Some(known) = self.present.get(i) {
            let _ = self.map.write_all_at(&[0], i as u64);
            known.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_refuses_wrong_sizes() {
        let dir = std::env::temp_dir().join(format!("imgfs-sparse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        SparseBlob::create(&dir, 100, 3).unwrap();
        let a = SparseBlob::open(&dir, 100, 3).unwrap();
        let b = SparseBlob::open(&dir, 100, 3).unwrap();
        assert!(!a.has(1) && !b.has(1));
        a.write(1, 40, b"span one").unwrap();
        assert!(b.has(1), "another opener sees the span");
        assert_eq!(b.read(40, 8).unwrap(), b"span one");
        assert_eq!(b.count(), 1);
        b.forget(1);
        assert!(!SparseBlob::open(&dir, 100, 3).unwrap().has(1));
        assert!(!a.has(7));
        assert!(a.write(7, 0, b"x").is_err());
        assert!(SparseBlob::open(&dir, 101, 3).is_err());
        assert!(SparseBlob::open(&dir, 100, 4).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
