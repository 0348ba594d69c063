//! Reading a lazy layer: the [`Blob`] of its uncompressed tar, span by span.
//!
//! Takes a read's offset and length; finds the spans that hold them, has the missing ones
//! fetched into the store, takes each decompressed from the span cache, else from the store
//! (checked against its digest again), and copies out the bytes asked for. Also writes the
//! whole stream of a layer read through its TOC once every span of it is here
//! ([`LazyBlob::make_stream_copy`]). Guarantees: no byte is served that did not match its
//! span's digest as it was read back; a stored span that no longer matches is fetched once
//! more, and fails the read if it still does not.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use super::LazyBlob;
use crate::image::Blob;
use crate::index::span::SpanFault as Unservable;
use crate::sys::{Durability, Publish};

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
        self.read_ahead(file, now)
    }
}

impl LazyBlob {
    /// Span `i` decompressed: from the cache, else from the store (verified again).
    pub(super) fn span(&self, i: usize) -> io::Result<Arc<Vec<u8>>> {
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

    /// Writes the stream of a layer read through its TOC, every span of which must be in the
    /// store, to [`stream_copy`](Self::stream_copy): each span read back and checked against
    /// its digests as a read checks it, all written under a temporary name, synced, and
    /// renamed once whole. A failure (a missing or damaged span, a full disk) leaves no file.
    pub(crate) fn make_stream_copy(&self) -> io::Result<std::path::PathBuf> {
        // Only a layer read through its TOC keeps a stream copy (see `open`).
        let Some(path) = &self.stream_copy else {
            return Err(io::Error::other(format!(
                "layer {}: not read through a TOC",
                self.name
            )));
        };
        Publish::new(Durability::Synced)
            .with(path, |file| {
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
                        &*file,
                        &data,
                        self.table.uncompressed(i).start,
                    )?;
                }
                Ok(path.clone())
            })
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }
}
