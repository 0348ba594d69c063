//! Where a scan's bytes come from: the [`Input`] trait (read, skip, position) and its two
//! sources, a tar file in memory ([`SliceInput`]) and a stream written through to the cache
//! as it is read ([`TeeInput`]), so that the archive passes through memory once. A skip never
//! copies data that is already at hand.

use std::io::{self, Read, Write};

/// Read size when streaming: large enough that syscalls and cache writes stay cheap.
const STREAM_CHUNK: usize = 1 << 20;

/// A source of archive bytes with a position.
pub trait Input {
    /// Fills `buf` as far as the input goes; returns how many bytes were read.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Skips up to `n` bytes; returns how many were skipped (fewer only at the end).
    fn skip(&mut self, n: u64) -> io::Result<u64>;
    /// Bytes consumed so far.
    fn position(&self) -> u64;
}

/// An archive already in memory (a mapped tar file): skipping data costs nothing.
pub struct SliceInput<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> SliceInput<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        SliceInput { data, pos: 0 }
    }
}

impl Input for SliceInput<'_> {
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }

    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let rest = (self.data.len() - self.pos) as u64;
        let n = n.min(rest);
        self.pos += n as usize; // n <= rest, which fits in usize
        Ok(n)
    }

    fn position(&self) -> u64 {
        self.pos as u64
    }
}

/// A stream (a Docker export) written through to `sink` as it is scanned, in large chunks:
/// every byte is read once and written once, and the scan never waits for a second pass.
pub struct TeeInput<R, W> {
    reader: R,
    sink: W,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    pos: u64,
}

impl<R: Read, W: Write> TeeInput<R, W> {
    pub(crate) fn new(reader: R, sink: W) -> Self {
        TeeInput {
            reader,
            sink,
            buf: vec![0; STREAM_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            pos: 0,
        }
    }

    /// Refills the buffer; false at the end of the stream.
    fn fill(&mut self) -> io::Result<bool> {
        let n = loop {
            match self.reader.read(&mut self.buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(false);
        }
        self.sink.write_all(&self.buf[..n])?;
        self.start = 0;
        self.end = n;
        Ok(true)
    }

    /// Copies what is left of the stream (the end-of-archive padding) and hands back the sink
    /// with the total length written.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64)> {
        let mut total = self.pos + (self.end - self.start) as u64;
        while self.fill()? {
            total += self.end as u64;
        }
        self.sink.flush()?;
        Ok((self.sink, total))
    }
}

impl<R: Read, W: Write> Input for TeeInput<R, W> {
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            if self.start == self.end && !self.fill()? {
                break;
            }
            let n = (self.end - self.start).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            done += n;
        }
        self.pos += done as u64;
        Ok(done)
    }

    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let mut done = 0u64;
        while done < n {
            if self.start == self.end && !self.fill()? {
                break;
            }
            let avail = (self.end - self.start) as u64;
            let k = avail.min(n - done);
            self.start += k as usize; // k <= avail, a buffer length
            done += k;
        }
        self.pos += done;
        Ok(done)
    }

    fn position(&self) -> u64 {
        self.pos
    }
}
