//! The keys of the store's entries, typed: which kind of entry a name is, and what it is
//! keyed by, spelled in one place.
//!
//! Takes a kind and a digest (or a tar file's identity); hands on the key the store names the
//! entry by ([`Display`](fmt::Display)), and reads one back from a key or from an entry's name
//! ([`FromStr`]). The spelling is the store's on-disk format: a key written today names the
//! same directory as the string spelled by hand before, so existing stores stay valid.

use std::fmt;
use std::str::FromStr;

/// Before the config digest of an image of layers kept whole.
const OCI: &str = "oci-";
/// Before the digest of a lazy image or layer read through imgfs's index.
const LAZY: &str = "lazy-";
/// Before the digest of a lazy image or layer read through its TOCs: a TOC's spans address a
/// stream of their own, not the tar, so its entries are named apart.
const LAZY_TOC: &str = "lazy-toc-";
/// Before the (hex) device and inode of a tar file indexed in place.
const TAR_FILE: &str = "tar-";

/// What an entry of the store is keyed by. Image entries ([`Cache::entry`](super::Cache::entry))
/// and layer entries ([`Cache::layer`](super::Cache::layer)) live apart, so a lazy image and a
/// lazy layer share a kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryKey {
    /// Named by a digest alone: a daemon's image by its id, a layer kept whole by its diff id
    /// (a zstd:chunked one by its blob digest, as
    /// [`Layer::store_key`](crate::source::Layer::store_key) says).
    Digest(String),
    /// A tar file indexed in place, by its device and inode: `tar-<dev>-<ino>`, in hex.
    TarFile { dev: u64, ino: u64 },
    /// An image of layers kept whole, by its config digest: `oci-<digest>`.
    Oci(String),
    /// Read lazily through imgfs's index: an image by its config digest, a layer by its blob
    /// digest (which the seek table addresses): `lazy-<digest>`.
    Lazy(String),
    /// Read lazily through its layers' TOCs: an image by its config digest, a layer by its
    /// blob digest: `lazy-toc-<digest>`.
    LazyToc(String),
}

impl EntryKey {
    /// Whether the entry is read lazily: a lazy layer's blob is its description
    /// ([`REMOTE_FILE`](super::sparse::REMOTE_FILE)), not a tar.
    pub(crate) fn is_lazy(&self) -> bool {
        matches!(self, EntryKey::Lazy(_) | EntryKey::LazyToc(_))
    }
}

impl fmt::Display for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryKey::Digest(d) => f.write_str(d),
            EntryKey::TarFile { dev, ino } => write!(f, "{TAR_FILE}{dev:x}-{ino:x}"),
            EntryKey::Oci(d) => write!(f, "{OCI}{d}"),
            EntryKey::Lazy(d) => write!(f, "{LAZY}{d}"),
            EntryKey::LazyToc(d) => write!(f, "{LAZY_TOC}{d}"),
        }
    }
}

/// A string that is no entry's key: empty, a kind without its digest, or a tar file's
/// identity that is not two lower-case hex numbers.
#[derive(Debug, thiserror::Error)]
#[error("not the key of a store entry: {0:?}")]
pub struct KeyError(String);

impl FromStr for EntryKey {
    type Err = KeyError;

    /// Reads a key, or an entry's name (a key made safe for a file name: its kind reads the
    /// same, its digest with `-` for `:`).
    fn from_str(s: &str) -> Result<EntryKey, KeyError> {
        let invalid = || KeyError(s.to_string());
        let digest = |rest: &str| {
            if rest.is_empty() {
                Err(invalid())
            } else {
                Ok(rest.to_string())
            }
        };
        // `lazy-toc-` before `lazy-`, which it starts with.
        if let Some(rest) = s.strip_prefix(LAZY_TOC) {
            return digest(rest).map(EntryKey::LazyToc);
        }
        if let Some(rest) = s.strip_prefix(LAZY) {
            return digest(rest).map(EntryKey::Lazy);
        }
        if let Some(rest) = s.strip_prefix(OCI) {
            return digest(rest).map(EntryKey::Oci);
        }
        if let Some(rest) = s.strip_prefix(TAR_FILE) {
            let hex = |h: &str| {
                let lower =
                    !h.is_empty() && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                lower.then(|| u64::from_str_radix(h, 16).ok()).flatten()
            };
            let (dev, ino) = rest.split_once('-').ok_or_else(invalid)?;
            return match (hex(dev), hex(ino)) {
                (Some(dev), Some(ino)) => Ok(EntryKey::TarFile { dev, ino }),
                _ => Err(invalid()),
            };
        }
        digest(s).map(EntryKey::Digest)
    }
}

#[cfg(test)]
mod tests {
    use super::EntryKey;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Each kind is spelled as the store has always named it, and reads back the same.
    #[test]
    fn spelled_as_the_store_names_entries() {
        let tar = EntryKey::TarFile {
            dev: 0x803,
            ino: 0x1f2e,
        };
        let cases = [
            (EntryKey::Digest(D.into()), D.to_string()),
            (tar, "tar-803-1f2e".to_string()),
            (EntryKey::Oci(D.into()), format!("oci-{D}")),
            (EntryKey::Lazy(D.into()), format!("lazy-{D}")),
            (EntryKey::LazyToc(D.into()), format!("lazy-toc-{D}")),
        ];
        for (key, spelled) in cases {
            assert_eq!(key.to_string(), spelled);
            assert_eq!(spelled.parse::<EntryKey>().unwrap(), key, "{spelled}");
        }
    }

    /// An entry's name (its key made safe for a file name) reads as the same kind.
    #[test]
    fn entry_names_read_as_their_kind() {
        let safe = D.replace(':', "-");
        let kind = |s: String| s.parse::<EntryKey>().unwrap();
        assert_eq!(
            kind(format!("lazy-toc-{safe}")),
            EntryKey::LazyToc(safe.clone())
        );
        assert_eq!(kind(format!("lazy-{safe}")), EntryKey::Lazy(safe.clone()));
        assert_eq!(kind(format!("oci-{safe}")), EntryKey::Oci(safe.clone()));
        assert_eq!(kind(safe.clone()), EntryKey::Digest(safe.clone()));
        assert!(kind(format!("lazy-{safe}")).is_lazy());
        assert!(kind(format!("lazy-toc-{safe}")).is_lazy());
        assert!(!kind(format!("oci-{safe}")).is_lazy());
    }

    #[test]
    fn not_keys() {
        for s in [
            "",
            "oci-",
            "lazy-",
            "lazy-toc-",
            "tar-",
            "tar-1",
            "tar-1-",
            "tar-x-1",
            "tar-+1-2",
            "tar-A-1",
        ] {
            assert!(s.parse::<EntryKey>().is_err(), "{s:?}");
        }
    }
}
