//! A layer source that builds each layer's seek table from the very stream a whole fetch
//! reads, so that `imgfs index push` downloads a layer the cache lacks once, not twice (once
//! to store and index it, once for its checkpoints).
//!
//! Wraps another [`LayerSource`]: every layer it opens is teed, chunk by chunk, to a thread
//! running [`SeekTable::build`]; when the stream ends the table is kept, keyed by the layer's
//! digest, for [`Seeking::take`]. A layer never opened (already in the store) has no table:
//! the caller builds that one itself. A stream dropped before its end leaves no table.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use parking_lot::Mutex;

use super::artifact::{self, Span};
use crate::index::seek::{SeekError, SeekTable};
use crate::source::{Layer, LayerSource, SourceError, registry::Registry};

/// Chunks in flight between the fetch and the table's builder: enough to keep both busy,
/// few enough that a slow builder holds back the fetch rather than memory.
const CHANNEL_CHUNKS: usize = 16;

type Tables = Arc<Mutex<HashMap<String, Result<SeekTable, SeekError>>>>;

pub(crate) struct Seeking<'a> {
    inner: &'a dyn LayerSource,
    span: Span,
    tables: Tables,
}

impl<'a> Seeking<'a> {
    pub(crate) fn new(inner: &'a dyn LayerSource, span: Span) -> Seeking<'a> {
        Seeking {
            inner,
            span,
            tables: Arc::default(),
        }
    }

    /// The table built for `layer` while it was read whole, if it was.
    pub(crate) fn take(&self, layer: &Layer) -> Option<Result<SeekTable, SeekError>> {
        let key = layer.digest.as_ref()?.to_string();
        self.tables.lock().remove(&key)
    }
}

impl LayerSource for Seeking<'_> {
    fn open_layer(&self, layer: &Layer) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let stream = self.inner.open_layer(layer)?;
        let Some(key) = layer.digest.as_ref().map(|d| d.to_string()) else {
            return Ok(stream);
        };
        let (tx, rx) = sync_channel::<Vec<u8>>(CHANNEL_CHUNKS);
        let kind = artifact::seek_compression(layer.compression);
        let span = self.span.for_layer(layer.size);
        let tables = self.tables.clone();
        let builder = std::thread::Builder::new()
            .name("imgfs-seek".into())
            .spawn(move || {
                let mut input = Chunks {
                    rx,
                    chunk: Vec::new(),
                    at: 0,
                };
                let table = SeekTable::build(kind, &mut input, span);
                // What the builder did not need still drains, so the fetch never blocks.
                let _ = io::copy(&mut input, &mut io::sink());
                if input.complete() {
                    tables.lock().insert(key, table);
                }
            })
            .map_err(|source| SourceError::Read {
                what: self.describe(),
                source,
            })?;
        Ok(Box::new(Tee {
            stream,
            tx: Some(tx),
            builder: Some(builder),
        }))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn as_registry(&self) -> Option<&Registry> {
        self.inner.as_registry()
    }
}

/// The stream a fill reads, copied to the builder as it goes.
struct Tee<'a> {
    stream: Box<dyn Read + Send + 'a>,
    tx: Option<SyncSender<Vec<u8>>>,
    builder: Option<JoinHandle<()>>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        if n == 0 {
            // The end: the builder sees an empty chunk (a complete stream), then the close.
            if let Some(tx) = self.tx.take() {
                let _ = tx.send(Vec::new());
            }
            if let Some(b) = self.builder.take() {
                let _ = b.join();
            }
        } else if let Some(tx) = &self.tx
            && tx.send(buf[..n].to_vec()).is_err()
        {
            self.tx = None; // the builder stopped; the fill goes on
        }
        Ok(n)
    }
}

/// The builder's side: the chunks as one stream; an empty chunk marks its real end.
struct Chunks {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Chunks {
    /// Whether the stream ended rather than being dropped.
    fn complete(&self) -> bool {
        self.at == usize::MAX
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.complete() {
            return Ok(0);
        }
        while self.at >= self.chunk.len() {
            match self.rx.recv() {
                Ok(c) if c.is_empty() => {
                    self.at = usize::MAX;
                    return Ok(0);
                }
                Ok(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Err(_) => return Err(io::Error::other("the layer's stream stopped early")),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
