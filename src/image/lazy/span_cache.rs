//! Decompressed spans kept in memory, shared by an image's lazy layers.
//!
//! Takes each span as a read or a prefetch opens it, keyed by layer and span; hands it back to
//! later reads, and to the gzip span after it for its window. Guarantees: about a set number
//! of bytes at most are kept, the least recently used dropped first; the newest span always
//! stays.

use std::sync::Arc;

use parking_lot::Mutex;

/// Bytes of decompressed spans kept in memory for one server: enough for the working set of
/// a program's start (a few dozen spans), small beside the page cache the kernel keeps of
/// what was read. A reader of the whole image needs no more: once every span of a layer is
/// here the layer is read from a whole copy ([`crate::image::promote`]), and before that,
/// reading every file of the python test image from a cold cache took the same time with
/// 512 MiB.
pub(crate) const SPAN_CACHE_BYTES: u64 = 128 << 20;

/// Decompressed spans of an image's lazy layers, least recently used dropped first once
/// they hold more than a set number of bytes.
pub(crate) struct SpanCache {
    inner: Mutex<SpanCacheInner>,
}

struct SpanCacheInner {
    spans: lru::LruCache<(u32, usize), Arc<Vec<u8>>>,
    bytes: u64,
    limit: u64,
}

impl SpanCache {
    /// A cache holding at most about `limit` bytes of spans.
    pub(crate) fn new(limit: u64) -> SpanCache {
        SpanCache {
            inner: Mutex::new(SpanCacheInner {
                spans: lru::LruCache::unbounded(),
                bytes: 0,
                limit,
            }),
        }
    }

    pub(super) fn get(&self, key: (u32, usize)) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().spans.get(&key).cloned()
    }

    /// Drops every span of layer `id`.
    pub(super) fn forget_layer(&self, id: u32) {
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

    pub(super) fn put(&self, key: (u32, usize), span: Arc<Vec<u8>>) {
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
