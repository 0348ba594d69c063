//! The compressed input of a table being built or of one span being decoded: a reader,
//! buffered, with its absolute position, so that a decoder can look ahead, take a header's
//! bytes or skip a block's. It takes any `Read` (the blob streaming past, or a span's bytes)
//! and hands on bytes and positions. As it gives bytes away it hashes them, so that a span's
//! SHA-256 is ready wherever the builder cuts, with no second pass; and after a block
//! checkpoint it keeps them (at most [`MAX_PREFIX_INPUT`]) for the sparse window's re-decodes.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::SeekError;
use super::sparse::MAX_PREFIX_INPUT;

/// Compressed bytes read at a time while building: large enough that reads are few.
pub(super) const IN_CHUNK: usize = 256 << 10;

/// Compressed input, buffered, with its absolute position, hashing what it gives away so that
/// a span's digest can be taken at any cut without a second pass.
pub(super) struct Feed<R> {
    reader: R,
    buf: Vec<u8>,
    /// First byte not consumed, end of the bytes read, and how much of `buf` is hashed.
    pub(super) start: usize,
    pub(super) end: usize,
    hashed: usize,
    /// Absolute offset of `buf[0]` in the blob.
    pub(super) base: u64,
    pub(super) eof: bool,
    hash: Option<Sha256>,
    /// The span before the last cut, still open in case the span after yields nothing.
    pub(super) tentative: Option<Sha256>,
    /// The bytes consumed since a block checkpoint, while its window is pending (see
    /// [`Builder::settle`](super::builder::Builder::settle)); None when not kept, or past
    /// [`MAX_PREFIX_INPUT`].
    pub(super) capture: Option<Vec<u8>>,
}

impl<R: Read> Feed<R> {
    pub(super) fn new(reader: R, capacity: usize, hashing: bool) -> Self {
        Feed {
            reader,
            buf: vec![0; capacity.max(1)],
            start: 0,
            end: 0,
            hashed: 0,
            base: 0,
            eof: false,
            hash: hashing.then(Sha256::new),
            tentative: None,
            capture: None,
        }
    }

    pub(super) fn pos(&self) -> u64 {
        self.base + self.start as u64
    }

    pub(super) fn avail(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    pub(super) fn hash_consumed(&mut self) {
        let bytes = &self.buf[self.hashed..self.start];
        if let Some(h) = &mut self.hash {
            h.update(bytes);
        }
        if let Some(h) = &mut self.tentative {
            h.update(bytes);
        }
        if let Some(kept) = &mut self.capture {
            if kept.len() + bytes.len() <= MAX_PREFIX_INPUT {
                kept.extend_from_slice(bytes);
            } else {
                self.capture = None;
            }
        }
        self.hashed = self.start;
    }

    /// Reads more (once), moving what is left to the front first; false at the end.
    pub(super) fn fill(&mut self) -> Result<bool, SeekError> {
        if self.eof {
            return Ok(false);
        }
        self.hash_consumed();
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
            self.hashed = 0;
        }
        loop {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SeekError::Read {
                        offset: self.base + self.end as u64,
                        source,
                    });
                }
            }
        }
    }

    /// Whether `n` bytes (at most the buffer's size) are available, reading as needed.
    pub(super) fn ensure(&mut self, n: usize) -> Result<bool, SeekError> {
        while self.end - self.start < n {
            if self.buf.len() - self.start < n && self.start > 0 {
                self.hash_consumed();
                self.buf.copy_within(self.start..self.end, 0);
                self.base += self.start as u64;
                self.end -= self.start;
                self.start = 0;
                self.hashed = 0;
            }
            if !self.fill()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next `n` bytes (at most the buffer's size), consumed.
    pub(super) fn take(&mut self, n: usize) -> Result<&[u8], SeekError> {
        if !self.ensure(n)? {
            return Err(SeekError::Truncated {
                offset: self.base + self.end as u64,
            });
        }
        let at = self.start;
        self.start += n;
        Ok(&self.buf[at..at + n])
    }

    /// Consumes `n` bytes, any number, handing each run to `each`.
    pub(super) fn skip(
        &mut self,
        mut n: u64,
        mut each: impl FnMut(&[u8], u64, u64) -> Result<(), SeekError>,
    ) -> Result<(), SeekError> {
        while n > 0 {
            if self.start == self.end && !self.fill()? {
                return Err(SeekError::Truncated { offset: self.pos() });
            }
            let run = (self.end - self.start).min(usize::try_from(n).unwrap_or(usize::MAX));
            n -= run as u64;
            let at = self.pos();
            let range = self.start..self.start + run;
            self.start += run;
            each(&self.buf[range], at, n)?;
        }
        Ok(())
    }

    /// Ends the current span here: its digest. The hash is kept open in `tentative` until
    /// the next span yields output.
    pub(super) fn cut(&mut self) -> [u8; 32] {
        self.hash_consumed();
        let hash = self.hash.get_or_insert_with(Sha256::new);
        self.tentative = Some(hash.clone());
        hash.finalize_reset().into()
    }

    /// The digest of the span before the last cut, continued to here: for folding an empty
    /// last span into it.
    pub(super) fn uncut(&mut self) -> Option<[u8; 32]> {
        self.hash_consumed();
        self.tentative.take().map(|h| h.finalize().into())
    }
}
