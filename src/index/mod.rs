//! The index stage: scans an archive once — a stream as it goes by, or a tar file on disk
//! by its headers alone ([`FileInput`]) — into a [`Tree`] of entries, and lays
//! that out as the on-disk index ([`mod@format`], its specification), which is memory-mapped and
//! used in place. Parsing is kept apart from I/O: the scanner takes an [`Input`], the writer
//! returns bytes, the reader takes a slice. Beside it, [`seek`] indexes a compressed layer
//! itself, so that its spans can be fetched and inflated one at a time.

pub mod format;
pub(crate) mod le;
pub mod scan;
pub mod seek;
pub mod span;
pub mod toc;
pub mod tree;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use scan::{Input, ScanError};
use tree::Tree;

/// Window read at a time when scanning a tar file on disk: holds many small members' headers.
const FILE_WINDOW: usize = 256 << 10;
/// Scans an archive into a tree, collecting warnings.
pub fn build_tree<I: Input>(input: &mut I) -> Result<Tree, ScanError> {
    build_tree_with(input, &mut || {})
}

/// [`build_tree`], calling `on_entry` after each member.
pub(crate) fn build_tree_with<I: Input>(
    input: &mut I,
    on_entry: &mut dyn FnMut(),
) -> Result<Tree, ScanError> {
    let mut tree = Tree::new();
    let mut warnings = Vec::new();
    scan::scan(input, &mut |w| warnings.push(w), &mut |entry| {
        tree.insert(entry);
        on_entry();
        Ok(())
    })?;
    for w in warnings {
        tree.warn(w);
    }
    Ok(tree)
}
/// A tar file on disk read with positional reads: only headers are read, data is skipped by
/// moving the position, and a file that shrinks under us gives an error, not a crash.
pub struct FileInput<'f> {
    file: &'f File,
    len: u64,
    pos: u64,
    window: Vec<u8>,
    window_at: u64,
}

impl<'f> FileInput<'f> {
    pub fn new(file: &'f File, len: u64) -> Self {
        FileInput {
            file,
            len,
            pos: 0,
            window: Vec::new(),
            window_at: 0,
        }
    }
}

impl Input for FileInput<'_> {
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() && self.pos < self.len {
            let in_window =
                self.pos >= self.window_at && self.pos < self.window_at + self.window.len() as u64;
            if !in_window {
                let want = FILE_WINDOW.min((self.len - self.pos) as usize);
                self.window.resize(want, 0);
                let n = self.file.read_at(&mut self.window, self.pos)?;
                self.window.truncate(n);
                self.window_at = self.pos;
                if n == 0 {
                    break;
                }
            }
            let start = (self.pos - self.window_at) as usize;
            let n = (self.window.len() - start).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.window[start..start + n]);
            done += n;
            self.pos += n as u64;
        }
        Ok(done)
    }

    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let k = n.min(self.len - self.pos);
        self.pos += k;
        Ok(k)
    }

    fn position(&self) -> u64 {
        self.pos
    }
}
