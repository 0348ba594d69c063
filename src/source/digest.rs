//! Content digests as the OCI image spec defines them (`sha256:<hex>`, `sha512:<hex>`), and
//! a reader that checks one: every blob a source hands on passes through [`Verified`], so a
//! byte that does not match its digest never reaches the store.

use std::io::{self, Read};

use oci_spec::image::{Digest, DigestAlgorithm};
use sha2::Digest as _;

#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("digest algorithm '{0}' is not supported (only sha256 and sha512)")]
    Algorithm(String),
    #[error("'{0}' is not a digest")]
    Malformed(String),
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    Mismatch { expected: String, actual: String },
    #[error("content is {actual} bytes, its descriptor says {expected}")]
    Size { expected: u64, actual: u64 },
}

impl From<DigestError> for io::Error {
    fn from(e: DigestError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Parses `s` as a digest of an algorithm imgfs can check.
pub(crate) fn parse(s: &str) -> Result<Digest, DigestError> {
    let d = Digest::try_from(s).map_err(|_| DigestError::Malformed(s.to_string()))?;
    Hasher::new(&d)?;
    Ok(d)
}

/// An incremental hash of the algorithm a digest names.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A hasher for `expected`'s algorithm.
    pub(crate) fn new(expected: &Digest) -> Result<Hasher, DigestError> {
        match expected.algorithm() {
            DigestAlgorithm::Sha256 => Ok(Hasher::Sha256(sha2::Sha256::new())),
            DigestAlgorithm::Sha512 => Ok(Hasher::Sha512(sha2::Sha512::new())),
            other => Err(DigestError::Algorithm(other.to_string())),
        }
    }

    pub(crate) fn sha256() -> Hasher {
        Hasher::Sha256(sha2::Sha256::new())
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of what was hashed, as `algorithm:hex`.
    pub(crate) fn finish(self) -> String {
        let (name, bytes) = match self {
            Hasher::Sha256(h) => ("sha256", h.finalize().to_vec()),
            Hasher::Sha512(h) => ("sha512", h.finalize().to_vec()),
        };
        let mut s = String::with_capacity(name.len() + 1 + bytes.len() * 2);
        s.push_str(name);
        s.push(':');
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// The sha256 digest of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    let mut h = Hasher::sha256();
    h.update(bytes);
    h.finish()
}

/// Checks `bytes` against `expected`.
pub(crate) fn verify(expected: &Digest, bytes: &[u8]) -> Result<(), DigestError> {
    let mut h = Hasher::new(expected)?;
    h.update(bytes);
    let actual = h.finish();
    if actual != expected.to_string() {
        return Err(DigestError::Mismatch {
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Reads through to `inner`, hashing; at the end, fails unless exactly `size` bytes (when
/// known) with digest `expected` went by. It fails as soon as more than `size` bytes arrive,
/// so a source cannot stream without end.
pub(crate) struct Verified<R> {
    inner: R,
    hasher: Option<Hasher>,
    expected: Digest,
    size: Option<u64>,
    seen: u64,
}

impl<R: Read> Verified<R> {
    pub(crate) fn new(inner: R, expected: &Digest, size: Option<u64>) -> Result<Self, DigestError> {
        Ok(Verified {
            inner,
            hasher: Some(Hasher::new(expected)?),
            expected: expected.clone(),
            size,
            seen: 0,
        })
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(0); // verified already
        };
        let n = self.inner.read(buf)?;
        hasher.update(&buf[..n]);
        self.seen += n as u64;
        if let Some(size) = self.size
            && self.seen > size
        {
            return Err(DigestError::Size {
                expected: size,
                actual: self.seen,
            }
            .into());
        }
        if n > 0 {
            return Ok(n);
        }
        if let Some(size) = self.size
            && self.seen != size
        {
            return Err(DigestError::Size {
                expected: size,
                actual: self.seen,
            }
            .into());
        }
        let actual = self.hasher.take().map(Hasher::finish).unwrap_or_default();
        if actual != self.expected.to_string() {
            return Err(DigestError::Mismatch {
                expected: self.expected.to_string(),
                actual,
            }
            .into());
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn verifies_content() {
        assert_eq!(sha256(b""), EMPTY);
        let d = parse(EMPTY).unwrap();
        assert!(verify(&d, b"").is_ok());
        assert!(matches!(
            verify(&d, b"x"),
            Err(DigestError::Mismatch { .. })
        ));
        let mut out = Vec::new();
        Verified::new(&b""[..], &d, Some(0))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        let wrong = Verified::new(&b"x"[..], &d, None)
            .unwrap()
            .read_to_end(&mut out);
        assert!(wrong.unwrap_err().to_string().contains("does not match"));
        let long = Verified::new(&b"xy"[..], &d, Some(1))
            .unwrap()
            .read_to_end(&mut out);
        assert!(long.unwrap_err().to_string().contains("2 bytes"));
    }

    #[test]
    fn refuses_what_it_cannot_check() {
        for bad in ["sha256:abc", "md5:00", "sha256:../../etc", "", "sha256"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert!(parse(&upper).is_err());
    }
}
