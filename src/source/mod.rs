//! Sources: turn what the user typed into an image identity and a tar stream.
//!
//! A reference is either a Docker image (`name[:tag]`, `name@digest` or an image id), served by
//! a local daemon through [`docker`], or a rootfs tar file on disk (a path starting with
//! `/`, `./` or `../`, or anything after a `tar:` prefix), which needs no daemon and is read
//! in place. The source hands on an identity to key the cache with and, for Docker, the image
//! config and a flat export stream; it never writes anything itself.

pub mod docker;

use std::path::PathBuf;

/// What the user asked to mount or run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// A reference a Docker-compatible daemon resolves.
    Docker(String),
    /// A tar archive on disk.
    TarFile(PathBuf),
}

impl ImageRef {
    pub fn parse(s: &str) -> ImageRef {
        if let Some(path) = s.strip_prefix("tar:") {
            return ImageRef::TarFile(PathBuf::from(path));
        }
        if s.starts_with('/') || s.starts_with("./") || s.starts_with("../") {
            return ImageRef::TarFile(PathBuf::from(s));
        }
        ImageRef::Docker(s.to_string())
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Docker(r) => f.write_str(r),
            ImageRef::TarFile(p) => write!(f, "{}", p.display()),
        }
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
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(input), want, "{input}");
        }
    }
}
