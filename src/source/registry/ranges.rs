//! Reading byte ranges of a blob ([`Registry::fetch_ranges`]), whatever shape a server gives
//! them: several ranges go in one request, as one `multipart/byteranges` answer or one part;
//! a registry that refuses several at once is asked one at a time from then on, and one that
//! ignores `Range` is asked once for all of them. Answers are parsed by the `byteranges`
//! submodule; a connection that breaks in the middle of one is asked again.

use std::io;
use std::sync::atomic::Ordering;

use oci_spec::image::Digest;
use ureq::Body;
use ureq::http::Response;

use super::byteranges;
use super::http::{Call, FETCHED, Kind};
use super::pull::trace_fields;
use super::{RangeError, Registry, RegistryError, printable};
use crate::sys::trace;

/// Most ranges asked for in one request: their `Range` header stays under 1 kB (a range is up
/// to ~40 bytes), far below the 4-8 kB header limits of proxies and CDNs, and a server's
/// multipart answer stays a few dozen parts.
pub(crate) const MAX_RANGES_PER_REQUEST: usize = 24;

/// How a group of ranges went.
enum Fetched {
    Done,
    /// The registry refused several ranges at once (with this status).
    SeveralRefused(u16),
}

impl Registry {
    /// Reads the byte ranges `ranges` (sorted, non-overlapping, each non-empty, within
    /// `blob_size`) of blob `digest`: one buffer per range, each exactly the range's length.
    ///
    /// Several ranges go in one request (at most [`MAX_RANGES_PER_REQUEST`]); a registry that
    /// refuses that (400, 416, 501) is asked one range at a time from then on, and one that
    /// answers with the whole blob is asked once for all of them, the blob read only as far
    /// as the last range. The bytes are not checked against the digest (only the whole blob
    /// could be): the caller checks what it builds from them.
    pub fn fetch_ranges(
        &self,
        digest: &Digest,
        blob_size: u64,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Vec<u8>>, RegistryError> {
        let what = format!("{}: blob {digest}", self.what);
        byteranges::check(ranges, blob_size).map_err(|why| RegistryError::Range {
            what: what.clone(),
            why,
        })?;
        let mut out = vec![Vec::new(); ranges.len()];
        let mut pos = 0;
        while pos < ranges.len() {
            if self.ignores_ranges.load(Ordering::Relaxed) {
                // One read of the blob's start serves all the rest.
                let rest = &ranges[pos..];
                let hull = byteranges::header(std::slice::from_ref(&byteranges::hull(rest)));
                self.fetch_group(&what, digest, blob_size, rest, &mut out[pos..], &hull)?;
                break;
            }
            let end = if self.single_ranges.load(Ordering::Relaxed) {
                pos + 1
            } else {
                (pos + MAX_RANGES_PER_REQUEST).min(ranges.len())
            };
            let group = &ranges[pos..end];
            let header = byteranges::header(group);
            match self.fetch_group(&what, digest, blob_size, group, &mut out[pos..end], &header)? {
                Fetched::Done => pos = end,
                Fetched::SeveralRefused(status) => {
                    log::debug!(
                        "{what}: {} refuses several ranges at once ({status}); asking one at a \
                         time",
                        self.host()
                    );
                    self.single_ranges.store(true, Ordering::Relaxed);
                }
            }
        }
        Ok(out)
    }

    /// One request for `group` (asked with the `Range` value `header`) into `slots`; a
    /// connection that breaks in the middle is asked again, up to the retry count.
    fn fetch_group(
        &self,
        what: &str,
        digest: &Digest,
        blob_size: u64,
        group: &[std::ops::Range<u64>],
        slots: &mut [Vec<u8>],
        header: &str,
    ) -> Result<Fetched, RegistryError> {
        let path = format!("/v2/{}/blobs/{digest}", self.reference.repository);
        let several = header.contains(',');
        let call = Call {
            range: Some(header),
            ok: if several {
                &[200, 206, 400, 416, 501]
            } else {
                FETCHED
            },
            ..Call::get(Kind::Blob)
        };
        let mut attempts = self.retry.start();
        loop {
            let start = trace::now();
            let resp = self.exchange(what, &path, &call)?;
            let status = resp.status().as_u16();
            if !matches!(status, 200 | 206) {
                return Ok(Fetched::SeveralRefused(status));
            }
            let fault = match self.collect(resp, group, slots, blob_size) {
                Ok(()) => {
                    let bytes = group.iter().map(|r| r.end - r.start).sum();
                    trace::event("ranges", start, &trace_fields(digest, group.len(), bytes));
                    return Ok(Fetched::Done);
                }
                Err(byteranges::Fault::Bad(why)) => {
                    return Err(RegistryError::Range {
                        what: format!("{what}: reading {header}"),
                        why,
                    });
                }
                Err(byteranges::Fault::Io(e)) => e,
            };
            match attempts.next(true, None) {
                Ok(pause) => {
                    log::debug!("{what}: reading {header}: {fault}; asking again");
                    std::thread::sleep(pause);
                }
                Err(tries) => {
                    return Err(RegistryError::RangesBroken {
                        what: what.to_string(),
                        ranges: header.to_string(),
                        tries,
                        cause: fault,
                    });
                }
            }
        }
    }

    /// Reads an answer (200 or 206) to a ranged request into `slots`.
    fn collect(
        &self,
        resp: Response<Body>,
        group: &[std::ops::Range<u64>],
        slots: &mut [Vec<u8>],
        blob_size: u64,
    ) -> Result<(), byteranges::Fault> {
        use byteranges::Fault;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (content_type, content_range) = (header("content-type"), header("content-range"));
        let length = header("content-length").and_then(|l| l.trim().parse::<u64>().ok());
        let whole = resp.status().as_u16() == 200;
        let mut body = io::BufReader::with_capacity(64 << 10, resp.into_body().into_reader());
        let mut collector = byteranges::Collector::new(group, slots, blob_size);
        if whole {
            if let Some(length) = length.filter(|&l| l != blob_size) {
                return Err(Fault::Bad(RangeError::WholeSize { length, blob_size }));
            }
            if !self.ignores_ranges.swap(true, Ordering::Relaxed) {
                log::debug!(
                    "{}: {} ignores Range and sends whole blobs",
                    self.what,
                    self.host()
                );
            }
            let needed = byteranges::hull(group).end;
            collector.read_span(0..needed, &mut body)?;
        } else if let Some(boundary) = content_type.as_deref().and_then(byteranges::boundary) {
            let boundary = boundary.map_err(Fault::Bad)?;
            byteranges::read_multipart(&mut body, &boundary, &mut collector)?;
        } else {
            let value = content_range.ok_or(Fault::Bad(RangeError::NoContentRange))?;
            let part = byteranges::content_range(&value).ok_or_else(|| {
                Fault::Bad(RangeError::ContentRange {
                    value: printable(&value),
                })
            })?;
            if let Some(length) = length.filter(|&l| l != part.span.end - part.span.start) {
                return Err(Fault::Bad(RangeError::PartialLength {
                    length,
                    value: printable(&value),
                }));
            }
            collector.admit(&part).map_err(Fault::Bad)?;
            collector.read_span(part.span, &mut body)?;
        }
        collector.finish().map_err(Fault::Bad)
    }
}
