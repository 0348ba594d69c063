//! A blob's bytes as one stream across connections ([`Stream`]): when a connection breaks,
//! the next asks for the rest with `Range` (or, when the registry ignores it, steps over what
//! was read), so a hash running over the stream runs on unbroken. It takes a path in the
//! repository and hands on a `Read`; it gives up only after the retry count of breaks in a
//! row without a byte read, with the offset it broke at.

use std::io::{self, Read};

use oci_spec::image::Digest;
use ureq::BodyReader;

use super::http::{Call, Kind};
use super::{RangeError, Registry, RegistryError, printable};
use crate::source::retry::Attempts;

impl Registry {
    /// A stream of the blob (or manifest) `digest`, resumed where it breaks.
    pub(super) fn stream(
        &self,
        what: String,
        kind: Kind,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<Stream<'_>, RegistryError> {
        let dir = match kind {
            Kind::Manifest => "manifests",
            Kind::Blob => "blobs",
        };
        let mut stream = Stream {
            registry: self,
            path: format!("/v2/{}/{dir}/{digest}", self.reference.repository),
            what,
            kind,
            size,
            body: None,
            offset: 0,
            attempts: self.retry.start(),
        };
        match stream.reconnect() {
            Ok(()) => Ok(stream),
            Err(Reconnect::Failed(e)) => Err(e),
            Err(Reconnect::Broken(cause)) => Err(RegistryError::Broken {
                what: stream.what,
                offset: 0,
                tries: 1,
                cause,
            }),
        }
    }
}

/// The first byte of a `Content-Range: bytes FIRST-LAST/TOTAL`.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split(['-', '/']).next()?.trim().parse().ok()
}

/// Why a stream could not be (re)started.
enum Reconnect {
    /// The registry cannot give it (an error answer, tries exhausted): give up.
    Failed(RegistryError),
    /// The connection broke again: counts as one more break.
    Broken(io::Error),
}

/// A blob's bytes in order, across connections: when one breaks, the next asks for the
/// rest with `Range` (or, when the registry ignores it, steps over what was read).
pub(super) struct Stream<'r> {
    registry: &'r Registry,
    what: String,
    path: String,
    kind: Kind,
    size: Option<u64>,
    body: Option<BodyReader<'static>>,
    /// Bytes handed on so far.
    offset: u64,
    /// Breaks in a row without a byte read.
    attempts: Attempts<'r>,
}

impl Stream<'_> {
    fn reconnect(&mut self) -> Result<(), Reconnect> {
        let what = if self.offset == 0 {
            self.what.clone()
        } else {
            format!("{}: resuming at byte {}", self.what, self.offset)
        };
        let range = format!("bytes={}-", self.offset);
        let call = Call {
            range: Some(&range).filter(|_| self.offset > 0).map(String::as_str),
            ..Call::get(self.kind)
        };
        let resp = self
            .registry
            .exchange(&what, &self.path, &call)
            .map_err(Reconnect::Failed)?;
        let partial = resp.status().as_u16() == 206;
        let range = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = resp.into_body().into_reader();
        if partial {
            let start = range.as_deref().and_then(content_range_start);
            if start != Some(self.offset) {
                return Err(Reconnect::Failed(RegistryError::Range {
                    what,
                    why: RangeError::Resumed {
                        offset: self.offset,
                        value: printable(range.as_deref().unwrap_or("(none)")),
                    },
                }));
            }
        } else if self.offset > 0 {
            // The whole blob again: step over what was handed on already.
            let skipped = io::copy(&mut (&mut body).take(self.offset), &mut io::sink())
                .map_err(Reconnect::Broken)?;
            if skipped < self.offset {
                return Err(Reconnect::Broken(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the blob ended before the bytes already read",
                )));
            }
        }
        self.body = Some(body);
        Ok(())
    }

    /// Counts a break; fails once there were too many in a row.
    fn broke(&mut self, e: io::Error) -> io::Result<()> {
        self.body = None;
        let pause = match self.attempts.next(true, None) {
            Ok(pause) => pause,
            Err(tries) => {
                return Err(io::Error::other(RegistryError::Broken {
                    what: self.what.clone(),
                    offset: self.offset,
                    tries,
                    cause: e,
                }));
            }
        };
        log::debug!(
            "{}: the stream broke at byte {} ({e}); resuming",
            self.what,
            self.offset
        );
        std::thread::sleep(pause);
        Ok(())
    }
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(body) = self.body.as_mut() else {
                match self.reconnect() {
                    Ok(()) => {}
                    Err(Reconnect::Failed(e)) => return Err(io::Error::other(e)),
                    Err(Reconnect::Broken(e)) => self.broke(e)?,
                }
                continue;
            };
            match body.read(buf) {
                Ok(0) => match self.size {
                    Some(size) if self.offset < size => self.broke(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the connection closed {} bytes early", size - self.offset),
                    ))?,
                    _ => return Ok(0),
                },
                Ok(n) => {
                    self.offset += n as u64;
                    self.attempts.progressed();
                    return Ok(n);
                }
                Err(e) => self.broke(e)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_content_ranges() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/*"), Some(0));
        for bad in ["", "bytes", "items 1-2/3", "bytes x-1/2", "bytes */200"] {
            assert_eq!(content_range_start(bad), None, "{bad}");
        }
    }
}
