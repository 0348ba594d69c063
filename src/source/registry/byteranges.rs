//! Byte ranges of a blob, as asked for and as answered: the `Range` header of a group of
//! ranges, an answer's `Content-Range`, a `multipart/byteranges` body read part by part, and
//! the [`Collector`] that puts each part's bytes where the ranges asked for them.
//!
//! Parsing only: bodies are handed in as readers. An answer is hostile input: part headers and
//! boundaries are bounded, a part must lie inside what was asked (a server may merge nearby
//! ranges into one part, and send parts in any order, but not send bytes around them), parts
//! may not overlap, and only the bytes asked for are kept. A [`Fault::Io`] is a connection that
//! broke (worth another try); a [`Fault::Bad`] is an answer that cannot be right.

use std::io::{self, BufRead, Read};
use std::ops::Range;

use super::{RangeError, printable};

/// Longest line in a multipart body's headers: real ones are under 100 bytes.
const MAX_PART_LINE: usize = 1024;
/// Most header lines of one part: servers send Content-Type and Content-Range.
const MAX_PART_HEADERS: usize = 16;
/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;
/// Most lines skipped before the first boundary or between a part and the next boundary
/// (a preamble, blank lines).
const MAX_SKIPPED_LINES: usize = 16;
/// Bytes copied at a time from a body.
const CHUNK: usize = 64 << 10;

/// Why an answer could not be read.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The connection broke or ended early: try again.
    Io(io::Error),
    /// The answer is wrong: trying again will not help.
    Bad(RangeError),
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Fault {
        Fault::Io(e)
    }
}

/// Checks what a caller asks for: sorted, non-overlapping, non-empty ranges inside the blob.
pub(crate) fn check(ranges: &[Range<u64>], blob_size: u64) -> Result<(), RangeError> {
    let mut previous_end = 0;
    for &Range { start, end } in ranges {
        if start >= end {
            return Err(RangeError::Empty { start, end });
        }
        if end > blob_size {
            return Err(RangeError::PastEnd {
                start,
                end,
                blob_size,
            });
        }
        if start < previous_end {
            return Err(RangeError::Unsorted { start, end });
        }
        previous_end = end;
    }
    Ok(())
}

/// The `Range` value asking for `ranges` (last bytes inclusive, as HTTP counts).
pub(crate) fn header(ranges: &[Range<u64>]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end - 1))
        .collect();
    format!("bytes={}", parts.join(","))
}

/// The bytes from the first range's start to the last one's end.
pub(crate) fn hull(ranges: &[Range<u64>]) -> Range<u64> {
    match (ranges.first(), ranges.last()) {
        (Some(first), Some(last)) => first.start..last.end,
        _ => 0..0,
    }
}

/// A `Content-Range: bytes FIRST-LAST/TOTAL`, as a half-open span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ContentRange {
    pub span: Range<u64>,
    /// The whole blob's size, when the server states it (`*` when not).
    pub total: Option<u64>,
}

pub(crate) fn content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?;
    let rest = rest.strip_prefix([' ', '\t'])?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if last < first {
        return None;
    }
    Some(ContentRange {
        span: first..last.checked_add(1)?,
        total,
    })
}

/// The boundary of a `multipart/byteranges` content type; `None` when the type is another.
pub(crate) fn boundary(content_type: &str) -> Option<Result<String, RangeError>> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    let value = params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string());
    Some(match value {
        None => Err(RangeError::NoBoundary),
        Some(b) if b.is_empty() || b.len() > MAX_BOUNDARY => Err(RangeError::BoundaryLength {
            len: b.len(),
            max: MAX_BOUNDARY,
        }),
        Some(b) if !b.bytes().all(|c| c.is_ascii_graphic() || c == b' ') => {
            Err(RangeError::BoundaryControl)
        }
        Some(b) => Ok(b),
    })
}

/// Where the bytes of the ranges asked for go, as parts of an answer arrive.
pub(crate) struct Collector<'a> {
    ranges: &'a [Range<u64>],
    out: &'a mut [Vec<u8>],
    /// Bytes of each range filled so far.
    filled: Vec<u64>,
    /// Spans of the parts admitted so far.
    parts: Vec<Range<u64>>,
    blob_size: u64,
}

impl<'a> Collector<'a> {
    /// `out` holds one buffer per range, sized and zeroed here.
    pub(crate) fn new(ranges: &'a [Range<u64>], out: &'a mut [Vec<u8>], blob_size: u64) -> Self {
        for (buf, r) in out.iter_mut().zip(ranges) {
            buf.clear();
            buf.resize((r.end - r.start) as usize, 0);
        }
        Collector {
            filled: vec![0; ranges.len()],
            parts: Vec::new(),
            ranges,
            out,
            blob_size,
        }
    }

    /// Checks a part's `Content-Range` before its bytes are read.
    pub(crate) fn admit(&mut self, part: &ContentRange) -> Result<(), RangeError> {
        let span = &part.span;
        let (first, last) = (span.start, span.end - 1);
        if let Some(total) = part.total
            && total != self.blob_size
        {
            return Err(RangeError::Total {
                total,
                blob_size: self.blob_size,
            });
        }
        let hull = hull(self.ranges);
        let asked = self
            .ranges
            .iter()
            .any(|r| r.start < span.end && span.start < r.end);
        if span.start < hull.start || span.end > hull.end || !asked {
            return Err(RangeError::Unasked {
                first,
                last,
                asked: header(self.ranges),
            });
        }
        if self
            .parts
            .iter()
            .any(|p| p.start < span.end && span.start < p.end)
        {
            return Err(RangeError::Twice { first, last });
        }
        if self.parts.len() >= self.ranges.len() {
            return Err(RangeError::TooManyParts {
                ranges: self.ranges.len(),
            });
        }
        self.parts.push(span.clone());
        Ok(())
    }

    /// Reads the bytes of `span` from `body`, keeping those asked for: exactly `span`'s
    /// length is read, and a body that ends first is a broken connection.
    pub(crate) fn read_span(
        &mut self,
        span: Range<u64>,
        body: &mut impl Read,
    ) -> Result<(), Fault> {
        let mut buf = vec![0u8; CHUNK];
        let mut pos = span.start;
        while pos < span.end {
            let want = (span.end - pos).min(CHUNK as u64) as usize;
            let n = match body.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(Fault::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the answer ended at byte {pos}, before byte {}", span.end),
                    )));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fault::Io(e)),
            };
            self.keep(pos, &buf[..n]);
            pos += n as u64;
        }
        Ok(())
    }

    /// Copies what of `bytes` (starting at blob offset `at`) falls in the ranges.
    fn keep(&mut self, at: u64, bytes: &[u8]) {
        let end = at + bytes.len() as u64;
        let first = self.ranges.partition_point(|r| r.end <= at);
        for (i, r) in self.ranges.iter().enumerate().skip(first) {
            if r.start >= end {
                break;
            }
            let from = r.start.max(at);
            let to = r.end.min(end);
            let src = &bytes[(from - at) as usize..(to - at) as usize];
            let dst = (from - r.start) as usize;
            self.out[i][dst..dst + src.len()].copy_from_slice(src);
            self.filled[i] += src.len() as u64;
        }
    }

    /// Checks that every byte asked for arrived.
    pub(crate) fn finish(self) -> Result<(), RangeError> {
        for (r, filled) in self.ranges.iter().zip(&self.filled) {
            if *filled != r.end - r.start {
                return Err(RangeError::Lacks {
                    first: r.start,
                    last: r.end - 1,
                });
            }
        }
        Ok(())
    }
}

/// Reads a `multipart/byteranges` body into `collector`, up to its closing boundary.
pub(crate) fn read_multipart(
    body: &mut impl BufRead,
    boundary: &str,
    collector: &mut Collector<'_>,
) -> Result<(), Fault> {
    let delimiter = format!("--{boundary}");
    let closing = format!("--{boundary}--");
    // The preamble, if any, up to the first boundary.
    let mut skipped = 0;
    loop {
        let line = read_line(body, closing.as_bytes())?;
        if line == delimiter.as_bytes() {
            break;
        }
        if line == closing.as_bytes() {
            return Ok(());
        }
        skipped += 1;
        if skipped > MAX_SKIPPED_LINES {
            return Err(Fault::Bad(RangeError::NoDelimiter));
        }
    }
    loop {
        let mut range = None;
        let mut headers = 0;
        loop {
            let line = read_line(body, closing.as_bytes())?;
            if line.is_empty() {
                break;
            }
            headers += 1;
            if headers > MAX_PART_HEADERS {
                return Err(Fault::Bad(RangeError::PartHeaders {
                    max: MAX_PART_HEADERS,
                }));
            }
            let line = String::from_utf8_lossy(&line);
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-range")
            {
                range = Some(content_range(value).ok_or_else(|| {
                    Fault::Bad(RangeError::PartRange {
                        value: printable(value.trim()),
                    })
                })?);
            }
        }
        let range = range.ok_or(Fault::Bad(RangeError::NoPartRange))?;
        collector.admit(&range).map_err(Fault::Bad)?;
        collector.read_span(range.span, body)?;
        let mut skipped = 0;
        loop {
            let line = read_line(body, closing.as_bytes())?;
            if line == delimiter.as_bytes() {
                break;
            }
            if line == closing.as_bytes() {
                return Ok(());
            }
            skipped += 1;
            if !line.is_empty() || skipped > MAX_SKIPPED_LINES {
                return Err(Fault::Bad(RangeError::LongPart));
            }
        }
    }
}

/// One line, without its line end and trailing blanks, at most [`MAX_PART_LINE`] bytes. The
/// body may end without a line end only after the `closing` boundary.
fn read_line(body: &mut impl BufRead, closing: &[u8]) -> Result<Vec<u8>, Fault> {
    let mut line = Vec::new();
    let mut ended = true;
    loop {
        let buf = match body.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Fault::Io(e)),
        };
        if buf.is_empty() && !line.is_empty() {
            ended = false;
            break;
        }
        if buf.is_empty() {
            return Err(Fault::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the multipart answer ended before its closing boundary",
            )));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_PART_LINE + 2 {
            return Err(Fault::Bad(RangeError::LongLine { max: MAX_PART_LINE }));
        }
        line.extend_from_slice(&buf[..take]);
        body.consume(take);
        if done {
            break;
        }
    }
    while line
        .last()
        .is_some_and(|&b| matches!(b, b'\n' | b'\r' | b' ' | b'\t'))
    {
        line.pop();
    }
    if !ended && line != closing {
        return Err(Fault::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the multipart answer ended in the middle of a line",
        )));
    }
    Ok(line)
}

#[cfg(test)]
// Lists of one range are what these tests are about.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn blob() -> Vec<u8> {
        (0..200u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn part(boundary: &str, blob: &[u8], span: Range<u64>) -> Vec<u8> {
        let mut out = format!(
            "--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes \
             {}-{}/{}\r\n\r\n",
            span.start,
            span.end - 1,
            blob.len()
        )
        .into_bytes();
        out.extend_from_slice(&blob[span.start as usize..span.end as usize]);
        out.extend_from_slice(b"\r\n");
        out
    }

    fn multipart(blob: &[u8], spans: &[Range<u64>]) -> Vec<u8> {
        let mut out = Vec::new();
        for s in spans {
            out.extend(part("XyZ", blob, s.clone()));
        }
        out.extend_from_slice(b"--XyZ--\r\n");
        out
    }

    fn collect(ranges: &[Range<u64>], body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut out = vec![Vec::new(); ranges.len()];
        let mut c = Collector::new(ranges, &mut out, 200);
        read_multipart(&mut io::BufReader::new(body), "XyZ", &mut c).map_err(|f| match f {
            Fault::Io(e) => format!("io: {e}"),
            Fault::Bad(why) => why.to_string(),
        })?;
        c.finish().map_err(|why| why.to_string())?;
        Ok(out)
    }

    fn want(ranges: &[Range<u64>]) -> Vec<Vec<u8>> {
        let b = blob();
        ranges
            .iter()
            .map(|r| b[r.start as usize..r.end as usize].to_vec())
            .collect()
    }

    #[test]
    fn reads_parts_in_any_order_or_merged() {
        let b = blob();
        let ranges = [0..1, 10..20, 30..40, 199..200];
        let cases: &[&[Range<u64>]] = &[
            &[0..1, 10..20, 30..40, 199..200],
            &[199..200, 30..40, 0..1, 10..20],
            &[0..1, 10..40, 199..200],
            &[0..200],
        ];
        for spans in cases {
            assert_eq!(
                collect(&ranges, &multipart(&b, spans)).as_ref(),
                Ok(&want(&ranges)),
                "{spans:?}"
            );
        }
        // A preamble and no line end after the closing boundary.
        let mut body = b"preamble\r\n".to_vec();
        body.extend(multipart(&b, &[10..20]));
        body.truncate(body.len() - 2);
        assert_eq!(collect(&[10..20], &body), Ok(want(&[10..20])));
    }

    #[test]
    fn refuses_wrong_parts() {
        let b = blob();
        let ranges = [10..20, 30..40];
        let cases: &[(&[Range<u64>], &str)] = &[
            (&[10..20, 50..60], "the answer holds bytes 50-59 where"),
            (&[5..20, 30..40], "the answer holds bytes 5-19 where"),
            (&[10..20, 10..20], "the answer holds bytes 10-19 twice"),
            (&[10..20], "the answer lacks bytes of 30-39"),
            (&[21..29], "the answer holds bytes 21-28 where"),
            (
                &[10..15, 15..20, 30..40],
                "the answer has more parts than the 2 ranges",
            ),
        ];
        for (spans, why) in cases {
            let got = collect(&ranges, &multipart(&b, spans)).unwrap_err();
            assert!(got.starts_with(why), "{spans:?}: {got}");
        }
        // A part longer than its Content-Range.
        let mut body = part("XyZ", &b, 10..20);
        body.splice(body.len() - 2..body.len() - 2, *b"extra");
        body.extend(multipart(&b, &[30..40]));
        assert!(collect(&ranges, &body).unwrap_err().contains("longer than"));
        // A wrong total, a missing Content-Range, endless headers, an endless line.
        let total = multipart(&b, &[10..20, 30..40])
            .iter()
            .map(|&c| c as char)
            .collect::<String>()
            .replace("/200", "/300");
        let total: Vec<u8> = total.chars().map(|c| c as u8).collect();
        assert!(collect(&ranges, &total).unwrap_err().contains("as 300"));
        let no_range = b"--XyZ\r\nContent-Type: x\r\n\r\nabc\r\n--XyZ--\r\n";
        assert_eq!(
            collect(&ranges, no_range).unwrap_err(),
            "a part without Content-Range"
        );
        let many = format!("--XyZ\r\n{}", "X: y\r\n".repeat(100));
        assert!(
            collect(&ranges, many.as_bytes())
                .unwrap_err()
                .contains("header lines")
        );
        let long = format!("--XyZ\r\n{}", "x".repeat(1 << 20));
        assert!(
            collect(&ranges, long.as_bytes())
                .unwrap_err()
                .contains("longer than")
        );
        let junk = "junk\r\n".repeat(100);
        assert!(
            collect(&ranges, junk.as_bytes())
                .unwrap_err()
                .contains("no multipart boundary")
        );
    }

    #[test]
    fn a_short_body_is_a_broken_connection() {
        let b = blob();
        let body = multipart(&b, &[10..20, 30..40]);
        for cut in [0, 5, 60, body.len() - 3] {
            let got = collect(&[10..20, 30..40], &body[..cut]).unwrap_err();
            assert!(got.starts_with("io: "), "{cut}: {got}");
        }
    }

    #[test]
    fn reads_headers() {
        assert_eq!(header(&[0..1, 10..20]), "bytes=0-0,10-19");
        assert_eq!(
            content_range("bytes 100-199/200"),
            Some(ContentRange {
                span: 100..200,
                total: Some(200)
            })
        );
        assert_eq!(
            content_range("bytes 0-0/*"),
            Some(ContentRange {
                span: 0..1,
                total: None
            })
        );
        for bad in [
            "",
            "bytes",
            "bytes 5-4/10",
            "bytes */10",
            "items 1-2/3",
            "bytes x-1/2",
            "bytes 0-18446744073709551615/1",
            "bytes1-2/3",
        ] {
            assert_eq!(content_range(bad), None, "{bad}");
        }
        assert_eq!(
            boundary("multipart/byteranges; boundary=\"a b\""),
            Some(Ok("a b".into()))
        );
        assert_eq!(
            boundary("Multipart/ByteRanges;charset=x;boundary=3d6b6a416f9b5"),
            Some(Ok("3d6b6a416f9b5".into()))
        );
        assert_eq!(boundary("application/octet-stream"), None);
        assert!(matches!(boundary("multipart/byteranges"), Some(Err(_))));
        let long = format!("multipart/byteranges; boundary={}", "b".repeat(71));
        assert!(matches!(boundary(&long), Some(Err(_))));
        assert_eq!(check(&[0..1, 1..2, 5..10], 10), Ok(()));
        for bad in [&[0..0][..], &[0..11], &[5..6, 0..1], &[0..5, 4..6]] {
            assert!(check(bad, 10).is_err(), "{bad:?}");
        }
    }
}
