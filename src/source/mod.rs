//! Sources: turn what the user typed into an image identity and the bytes of its file
//! system.
//!
//! Two shapes of image come out of here. A *flat* one is a single tar stream or file: a local
//! Docker daemon's export of the image ([`docker`]), or a rootfs tar on disk. A *layered* one
//! is an [`Image`]: its config and an ordered list of [`Layer`] descriptors, each opened as a
//! verified stream by the [`LayerSource`] it came from — an OCI image layout, on disk or in a
//! tar ([`layout`]), `docker save` output, or a registry. Names follow skopeo and podman:
//! `oci:DIR[:REF]`, `oci-archive:FILE[:REF]`, `docker-archive:FILE[:NAME:TAG]`,
//! `docker://HOST/NAME[:TAG|@DIGEST]`, `docker-daemon:REF`; a bare reference is the local
//! daemon's and a path (`/`, `./`, `../`, or `tar:PATH`) a tar file. Sources never write
//! anything: the store is filled by [`crate::prepare`]. What reads from a remote tries again
//! under one [`retry::Policy`].

pub mod digest;
pub mod docker;
pub mod layout;
pub mod manifest;
pub mod registry;
pub(crate) mod retry;

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;

/// What the user asked to mount or run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// A reference a Docker-compatible daemon resolves.
    Docker(String),
    /// A tar archive on disk.
    TarFile(PathBuf),
    /// An OCI image layout directory, and the `org.opencontainers.image.ref.name` to use.
    Oci { dir: PathBuf, name: Option<String> },
    /// An OCI image layout in a tar file.
    OciArchive { file: PathBuf, name: Option<String> },
    /// `docker save` output, and the `NAME:TAG` to use.
    DockerArchive { file: PathBuf, name: Option<String> },
    /// An image in a registry: `HOST[:PORT]/NAME[:TAG|@DIGEST]` or a Docker Hub short name.
    Registry(String),
}

/// Splits `PATH[:NAME]` at its first colon.
fn path_and_name(rest: &str) -> (PathBuf, Option<String>) {
    match rest.split_once(':') {
        Some((path, name)) if !name.is_empty() => (PathBuf::from(path), Some(name.to_string())),
        Some((path, _)) => (PathBuf::from(path), None),
        None => (PathBuf::from(rest), None),
    }
}

impl ImageRef {
    pub fn parse(s: &str) -> ImageRef {
        if let Some(path) = s.strip_prefix("tar:") {
            return ImageRef::TarFile(PathBuf::from(path));
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, name) = path_and_name(rest);
            return ImageRef::Oci { dir, name };
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, name) = path_and_name(rest);
            return ImageRef::OciArchive { file, name };
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (file, name) = path_and_name(rest);
            return ImageRef::DockerArchive { file, name };
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            return ImageRef::Registry(rest.to_string());
        }
        if let Some(rest) = s.strip_prefix("docker-daemon:") {
            return ImageRef::Docker(rest.to_string());
        }
        if s.starts_with('/') || s.starts_with("./") || s.starts_with("../") {
            return ImageRef::TarFile(PathBuf::from(s));
        }
        ImageRef::Docker(s.to_string())
    }

    /// For a bare reference the daemon does not know: a hint when it names a file here.
    pub fn file_hint(&self) -> Option<String> {
        let ImageRef::Docker(r) = self else {
            return None;
        };
        std::fs::metadata(r).ok().map(|m| {
            if m.is_dir() {
                format!("'{r}' is a directory here: for an OCI image layout, say oci:{r}")
            } else {
                format!(
                    "'{r}' is a file here: for a tar file, say ./{r} or tar:{r}; for an archive \
                     of images, oci-archive:{r} or docker-archive:{r}"
                )
            }
        })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let named =
            |f: &mut std::fmt::Formatter<'_>, prefix: &str, p: &PathBuf, n: &Option<String>| {
                write!(f, "{prefix}:{}", p.display())?;
                match n {
                    Some(n) => write!(f, ":{n}"),
                    None => Ok(()),
                }
            };
        match self {
            ImageRef::Docker(r) => f.write_str(r),
            ImageRef::TarFile(p) => write!(f, "{}", p.display()),
            ImageRef::Oci { dir, name } => named(f, "oci", dir, name),
            ImageRef::OciArchive { file, name } => named(f, "oci-archive", file, name),
            ImageRef::DockerArchive { file, name } => named(f, "docker-archive", file, name),
            ImageRef::Registry(r) => write!(f, "docker://{r}"),
        }
    }
}

/// An operating system, architecture and variant, as image indexes list them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The machine imgfs runs on, named as Go (and so every image index) names it.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "riscv64" => ("riscv64", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// Parses `OS/ARCH[/VARIANT]`.
    pub fn parse(s: &str) -> Result<Platform, SourceError> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_string()),
            }),
            _ => Err(SourceError::Invalid {
                what: format!("--platform {s}"),
                why: "expected OS/ARCH or OS/ARCH/VARIANT, such as linux/arm64".into(),
            }),
        }
    }

    /// Whether an index entry's platform is this one (a variant only counts when asked for).
    pub(crate) fn matches(&self, p: &oci_spec::image::Platform) -> bool {
        p.os().to_string() == self.os
            && p.architecture().to_string() == self.architecture
            && match &self.variant {
                Some(v) => p.variant().as_deref() == Some(v.as_str()),
                None => true,
            }
    }

    fn describe(p: &oci_spec::image::Platform) -> String {
        match p.variant() {
            Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
            None => format!("{}/{}", p.os(), p.architecture()),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

/// How a layer's bytes are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Not stated by the source (`docker save` output): told by the first bytes.
    Sniff,
}

/// gzip's magic bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// A zstd frame's magic number, little-endian.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// `reader`'s bytes uncompressed.
    pub(crate) fn decompress<'r>(
        self,
        reader: Box<dyn Read + Send + 'r>,
    ) -> io::Result<Box<dyn Read + Send + 'r>> {
        let mut reader = io::BufReader::with_capacity(256 << 10, reader);
        let kind = match self {
            Compression::Sniff => {
                let head = io::BufRead::fill_buf(&mut reader)?;
                if head.starts_with(&GZIP_MAGIC) {
                    Compression::Gzip
                } else if head.starts_with(&ZSTD_MAGIC) {
                    Compression::Zstd
                } else {
                    Compression::None
                }
            }
            k => k,
        };
        Ok(match kind {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
            _ => Box::new(reader),
        })
    }
}

/// One layer of an image, bottom first.
#[derive(Clone, Debug)]
pub struct Layer {
    /// How its source finds it (a digest, or a member of an archive).
    pub locator: String,
    /// The digest of its bytes as stored, when the source states it.
    pub digest: Option<oci_spec::image::Digest>,
    /// Its size as stored, when the source states it.
    pub size: Option<u64>,
    pub compression: Compression,
    /// The digest of its uncompressed tar, from the config: what the store keys it by.
    pub diff_id: oci_spec::image::Digest,
    pub media_type: String,
    pub annotations: HashMap<String, String>,
}

/// Annotation suffixes that mark a zstd:chunked layer (`io.containers.` or
/// `io.github.containers.` before them).
const ZSTD_CHUNKED_MARKS: [&str; 2] = [
    "zstd-chunked.manifest-checksum",
    "zstd-chunked.manifest-position",
];

impl Layer {
    /// Whether the layer is zstd:chunked: its uncompressed stream is rewritten by the
    /// converter, so it need not match the config's diff id.
    pub(crate) fn is_zstd_chunked(&self) -> bool {
        self.annotations.keys().any(|k| {
            ZSTD_CHUNKED_MARKS
                .iter()
                .any(|m| k.ends_with(m) && k.contains("containers."))
        })
    }

    /// What the store keeps the layer's uncompressed tar under, and what that tar is checked
    /// against when it is not `None`: its diff id — or, for a layer whose uncompressed form
    /// is not the diff id's (zstd:chunked), the digest of its stored bytes, which determine
    /// it as well and are checked by the source.
    pub(crate) fn store_key(&self) -> (String, Option<&oci_spec::image::Digest>) {
        match &self.digest {
            Some(d) if self.is_zstd_chunked() => (d.to_string(), None),
            _ => (self.diff_id.to_string(), Some(&self.diff_id)),
        }
    }
}

/// An image made of layers.
#[derive(Clone, Debug)]
pub struct Image {
    /// The manifest's digest, when there is a manifest (the platform's image manifest, not
    /// the index above it).
    pub manifest_digest: Option<String>,
    /// That manifest's media type, as its descriptor or the registry states it, or its own
    /// `mediaType` field.
    pub manifest_media_type: Option<String>,
    /// That manifest's size in bytes: with the digest and media type, the descriptor an
    /// artifact names as its `subject`.
    pub manifest_size: Option<u64>,
    /// The config's digest: the image id.
    pub config_digest: String,
    /// The config document itself, verified.
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
}

impl Image {
    /// The chain id of each layer with those below it, bottom first, as the OCI image spec
    /// defines it: the first layer's diff id, then `sha256(PREVIOUS + " " + DIFF_ID)`. What
    /// containerd names an unpacked layer's snapshot by.
    pub fn chain_ids(&self) -> Vec<String> {
        use sha2::Digest as _;
        let mut out: Vec<String> = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let id = match out.last() {
                None => layer.diff_id.to_string(),
                Some(below) => {
                    let hash = sha2::Sha256::digest(format!("{below} {}", layer.diff_id));
                    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                    format!("sha256:{hex}")
                }
            };
            out.push(id);
        }
        out
    }
}

/// Where a layered image's layers are read from.
pub trait LayerSource: Sync {
    /// A stream of `layer`'s bytes as stored, checked against its digest and size when the
    /// source states them (the uncompressed tar is checked against the diff id by the
    /// caller).
    fn open_layer(&self, layer: &Layer) -> Result<Box<dyn Read + Send + '_>, SourceError>;
    /// Names the source in messages.
    fn describe(&self) -> String;
    /// The registry, when the layers come from one (which may also read them lazily).
    fn as_registry(&self) -> Option<&registry::Registry> {
        None
    }
}

/// What goes wrong reading a source. Each message is the whole line: a cause (an I/O, JSON
/// or digest error) is quoted in it, not also handed on by `source()`, so that a chain printer
/// and `to_string()` alike show it once. (`Display` and `Error` are written out because the
/// cause fields, which other stages fill, are named `source`.)
#[derive(Debug)]
pub enum SourceError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    Read {
        what: String,
        source: io::Error,
    },
    Json {
        what: String,
        doc: &'static str,
        source: serde_json::Error,
    },
    Digest {
        what: String,
        source: digest::DigestError,
    },
    MediaType {
        what: String,
        media_type: String,
    },
    Invalid {
        what: String,
        why: String,
    },
    Registry(registry::RegistryError),
    Platform {
        what: String,
        wanted: String,
        available: String,
    },
    NoSuchName {
        what: String,
        name: String,
        available: String,
    },
    Ambiguous {
        what: String,
        count: usize,
        available: String,
    },
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            SourceError::Read { what, source } => write!(f, "{what}: {source}"),
            SourceError::Json { what, doc, source } => {
                write!(f, "{what}: the {doc} is not valid: {source}")
            }
            SourceError::Digest { what, source } => write!(f, "{what}: {source}"),
            SourceError::MediaType { what, media_type } => {
                write!(
                    f,
                    "{what}: media type '{media_type}' is not one imgfs reads"
                )
            }
            SourceError::Invalid { what, why } => write!(f, "{what}: {why}"),
            SourceError::Registry(e) => e.fmt(f),
            SourceError::Platform {
                what,
                wanted,
                available,
            } => write!(
                f,
                "{what}: no image for platform {wanted} (the index has: {available})"
            ),
            SourceError::NoSuchName {
                what,
                name,
                available,
            } => write!(f, "{what}: no image named '{name}' (it has: {available})"),
            SourceError::Ambiguous {
                what,
                count,
                available,
            } => write!(f, "{what}: holds {count} images; name one ({available})"),
        }
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // As `transparent` would: the registry's error stands for this one.
            SourceError::Registry(e) => e.source(),
            _ => None,
        }
    }
}

impl From<registry::RegistryError> for SourceError {
    fn from(e: registry::RegistryError) -> SourceError {
        SourceError::Registry(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let cases = [
            ("python:3.12", ImageRef::Docker("python:3.12".into())),
            ("sha256:abcd", ImageRef::Docker("sha256:abcd".into())),
            (
                "reg:5000/a/b@sha256:00",
                ImageRef::Docker("reg:5000/a/b@sha256:00".into()),
            ),
            ("/tmp/r.tar", ImageRef::TarFile("/tmp/r.tar".into())),
            ("./r.tar", ImageRef::TarFile("./r.tar".into())),
            ("../r.tar", ImageRef::TarFile("../r.tar".into())),
            ("tar:r.tar", ImageRef::TarFile("r.tar".into())),
            (
                "oci:/l:app:1",
                ImageRef::Oci {
                    dir: "/l".into(),
                    name: Some("app:1".into()),
                },
            ),
            (
                "oci:dir",
                ImageRef::Oci {
                    dir: "dir".into(),
                    name: None,
                },
            ),
            (
                "oci-archive:a.tar:",
                ImageRef::OciArchive {
                    file: "a.tar".into(),
                    name: None,
                },
            ),
            (
                "docker-archive:s.tar:reg:5000/a:1",
                ImageRef::DockerArchive {
                    file: "s.tar".into(),
                    name: Some("reg:5000/a:1".into()),
                },
            ),
            (
                "docker://127.0.0.1:5000/a/b:1",
                ImageRef::Registry("127.0.0.1:5000/a/b:1".into()),
            ),
            ("docker-daemon:py:3", ImageRef::Docker("py:3".into())),
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(input), want, "{input}");
        }
    }

    #[test]
    fn errors_say_their_cause_once() {
        use std::error::Error as _;
        let cases = [
            SourceError::Io {
                path: "/l/index.json".into(),
                source: io::Error::from(io::ErrorKind::NotFound),
            },
            SourceError::Json {
                what: "oci:/l".into(),
                doc: "index",
                source: serde_json::from_slice::<u8>(b"x").unwrap_err(),
            },
            SourceError::Digest {
                what: "oci:/l".into(),
                source: digest::DigestError::Malformed("x".into()),
            },
            SourceError::Registry(registry::RegistryError::Connect {
                what: "docker://h/a".into(),
                host: "h".into(),
                tries: 2,
                cause: io::Error::from(io::ErrorKind::ConnectionRefused),
            }),
        ];
        let wanted = [
            "/l/index.json: entity not found",
            "oci:/l: the index is not valid: expected value at line 1 column 1",
            "oci:/l: 'x' is not a digest",
            "docker://h/a: cannot connect to h (2 tries): connection refused",
        ];
        for (e, want) in cases.iter().zip(wanted) {
            assert_eq!(e.to_string(), want);
            assert!(e.source().is_none(), "{e}");
        }
    }

    #[test]
    fn parses_platforms() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(Platform::parse("linux/amd64").unwrap().variant, None);
        for bad in ["linux", "/amd64", "a/b/c/d", ""] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }
}
