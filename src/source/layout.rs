//! Images kept in files: an OCI image layout — a directory (`oci:DIR[:REF]`) or a tar of
//! one (`oci-archive:FILE[:REF]`) — and `docker save` output (`docker-archive:FILE[:NAME:TAG]`,
//! the legacy form and the newer one that is also an OCI layout).
//!
//! A tar is never unpacked: its members are listed once by their headers and read in place.
//! Only files the layout's own documents name are read — blobs by digest, `docker save`
//! members by the exact names its manifest lists — so nothing outside the layout is reached,
//! and every byte is checked against the digest that names it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex};

use super::digest::{self, Verified};
use super::manifest::{self, Documents, MAX_DOCUMENT};
use super::{Compression, Image, Layer, LayerSource, Platform, SourceError};

/// The annotation an OCI layout's index.json names its images by.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Most members listed from an archive of images: far above real ones (a few per layer).
const MAX_MEMBERS: usize = 1 << 20;

/// The files of a layout: a directory, or the members of a tar file.
enum Files {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        file: File,
        /// Member name (without a leading `./`) → (data offset, size).
        members: HashMap<Vec<u8>, (u64, u64)>,
        /// Symlink members → the member they name (`docker save` links a layer two images
        /// share from the second image's directory to the first's).
        links: HashMap<Vec<u8>, Vec<u8>>,
    },
}

/// Most symlinks between members followed to reach a file.
const MAX_LINKS: usize = 8;

/// The member a symlink member `name` pointing at `target` names, resolved lexically inside
/// the archive; `None` if it would leave it.
fn link_target(name: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    if !target.starts_with(b"/") {
        parts.extend(name.split(|&b| b == b'/'));
        parts.pop(); // the link's own name
    }
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join(&b'/'))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Files {
    fn dir(path: &Path) -> Result<Files, SourceError> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if !meta.is_dir() {
            return Err(SourceError::Invalid {
                what: path.display().to_string(),
                why: "not a directory (an OCI image layout is one)".into(),
            });
        }
        Ok(Files::Dir(path.to_path_buf()))
    }

    fn tar(path: &Path) -> Result<Files, SourceError> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut members = HashMap::new();
        let mut links = HashMap::new();
        let bad = |source: io::Error| SourceError::Read {
            what: format!("{}: not a readable tar archive", path.display()),
            source,
        };
        let mut archive = tar::Archive::new(&file);
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let kind = entry.header().entry_type();
            if kind.is_symlink() {
                let name = entry.path_bytes();
                let name = name.strip_prefix(b"./").unwrap_or(&name).to_vec();
                if let Some(target) = entry.link_name_bytes().and_then(|t| link_target(&name, &t)) {
                    links.insert(name, target);
                }
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            if members.len() >= MAX_MEMBERS {
                return Err(SourceError::Invalid {
                    what: path.display().to_string(),
                    why: format!("holds more than {MAX_MEMBERS} files"),
                });
            }
            let name = entry.path_bytes();
            let name = name.strip_prefix(b"./").unwrap_or(&name).to_vec();
            members.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(Files::Tar {
            path: path.to_path_buf(),
            file,
            members,
            links,
        })
    }

    fn describe(&self, name: &str) -> String {
        match self {
            Files::Dir(dir) => dir.join(name).display().to_string(),
            Files::Tar { path, .. } => format!("{}: {name}", path.display()),
        }
    }

    /// A member or file by its name in the layout, with its size.
    fn open(&self, name: &str) -> Result<(Box<dyn Read + Send + '_>, u64), SourceError> {
        match self {
            Files::Dir(dir) => {
                let path = dir.join(name);
                let file = File::open(&path).map_err(io_err(&path))?;
                let size = file.metadata().map_err(io_err(&path))?.len();
                Ok((Box::new(file), size))
            }
            Files::Tar {
                path,
                file,
                members,
                links,
            } => {
                let mut member = name.as_bytes();
                for _ in 0..MAX_LINKS {
                    match links.get(member) {
                        Some(target) => member = target,
                        None => break,
                    }
                }
                let &(offset, size) = members.get(member).ok_or_else(|| SourceError::Invalid {
                    what: path.display().to_string(),
                    why: format!("has no member '{name}'"),
                })?;
                Ok((
                    Box::new(Slice {
                        file,
                        offset,
                        end: offset + size,
                    }),
                    size,
                ))
            }
        }
    }

    /// A small file (a JSON document) whole.
    fn read_small(&self, name: &str) -> Result<Vec<u8>, SourceError> {
        let (reader, size) = self.open(name)?;
        if size > MAX_DOCUMENT {
            return Err(SourceError::Invalid {
                what: self.describe(name),
                why: format!("is {size} bytes, more than a document may be"),
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        reader
            .take(MAX_DOCUMENT)
            .read_to_end(&mut out)
            .map_err(|source| SourceError::Read {
                what: self.describe(name),
                source,
            })?;
        Ok(out)
    }
}

/// A member of a tar file, read in place.
struct Slice<'f> {
    file: &'f File,
    offset: u64,
    end: u64,
}

impl Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end.saturating_sub(self.offset)).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a member",
            ));
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// The blob file a digest names in an OCI layout.
fn blob_name(d: &oci_spec::image::Digest) -> String {
    format!("blobs/{}/{}", d.algorithm(), d.digest())
}

/// An image layout or archive, opened.
pub(crate) struct Layout {
    files: Files,
    what: String,
    /// `docker save` output finds layers by member name; an OCI layout by digest.
    by_member: bool,
}

impl Documents for Layout {
    fn document(&self, d: &Descriptor) -> Result<Vec<u8>, SourceError> {
        manifest::read_document(d, &self.what, || {
            self.files.open(&blob_name(d.digest())).map(|(r, _)| r)
        })
    }
}

impl LayerSource for Layout {
    fn open_layer(&self, layer: &Layer) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let name = match (&layer.digest, self.by_member) {
            (Some(d), false) => blob_name(d),
            _ => layer.locator.clone(),
        };
        let (reader, size) = self.files.open(&name)?;
        if let Some(want) = layer.size
            && want != size
        {
            return Err(SourceError::Invalid {
                what: self.files.describe(&name),
                why: format!("is {size} bytes, its descriptor says {want}"),
            });
        }
        match &layer.digest {
            Some(d) => {
                let v =
                    Verified::new(reader, d, Some(size)).map_err(|source| SourceError::Digest {
                        what: self.files.describe(&name),
                        source,
                    })?;
                Ok(Box::new(v))
            }
            None => Ok(reader),
        }
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// Opens an OCI image layout (`archive`: in a tar file) and resolves the image `name`
/// (the only one when `None`) for `platform`.
pub(crate) fn open_oci(
    path: &Path,
    archive: bool,
    name: Option<&str>,
    platform: &Platform,
) -> Result<(Image, Layout), SourceError> {
    let files = if archive {
        Files::tar(path)?
    } else {
        Files::dir(path)?
    };
    let what = path.display().to_string();
    let layout_file = files.read_small("oci-layout")?;
    let version: serde_json::Value =
        serde_json::from_slice(&layout_file).map_err(|source| SourceError::Json {
            what: what.clone(),
            doc: "oci-layout file",
            source,
        })?;
    if version["imageLayoutVersion"].as_str().is_none() {
        return Err(SourceError::Invalid {
            what,
            why: "its oci-layout file names no imageLayoutVersion".into(),
        });
    }
    let index_bytes = files.read_small("index.json")?;
    let index: ImageIndex =
        serde_json::from_slice(&index_bytes).map_err(|source| SourceError::Json {
            what: what.clone(),
            doc: "index.json",
            source,
        })?;
    let layout = Layout {
        files,
        what: what.clone(),
        by_member: false,
    };
    let ref_name = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    let names = || {
        let n: Vec<String> = index.manifests().iter().filter_map(ref_name).collect();
        if n.is_empty() {
            "no names".into()
        } else {
            n.join(", ")
        }
    };
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| name.is_none_or(|n| ref_name(d).as_deref() == Some(n)))
        .collect();
    let chosen = match candidates.as_slice() {
        [] => match name {
            Some(n) => {
                return Err(SourceError::NoSuchName {
                    what,
                    name: n.to_string(),
                    available: names(),
                });
            }
            None => {
                return Err(SourceError::Invalid {
                    what,
                    why: "its index.json lists no images".into(),
                });
            }
        },
        [one] => *one,
        many if many.iter().all(|d| d.platform().is_some()) => many
            .iter()
            .find(|d| d.platform().as_ref().is_some_and(|p| platform.matches(p)))
            .copied()
            .ok_or_else(|| SourceError::Platform {
                what: what.clone(),
                wanted: platform.to_string(),
                available: many
                    .iter()
                    .filter_map(|d| d.platform().as_ref())
                    .map(|p| format!("{}/{}", p.os(), p.architecture()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?,
        many => {
            return Err(SourceError::Ambiguous {
                what,
                count: many.len(),
                available: names(),
            });
        }
    };
    let bytes = layout.document(chosen)?;
    let image = manifest::resolve(
        &layout,
        &what,
        Some(chosen.media_type().as_ref()),
        bytes,
        chosen.digest().to_string(),
        platform,
    )?;
    Ok((image, layout))
}

/// One image of `docker save`'s manifest.json.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// `NAME[:TAG]` as docker writes it in RepoTags: `latest` when no tag is given.
fn with_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// Opens `docker save` output and resolves the image `name` (the only one when `None`).
pub(crate) fn open_docker_archive(
    path: &Path,
    name: Option<&str>,
) -> Result<(Image, Layout), SourceError> {
    let files = Files::tar(path)?;
    let what = path.display().to_string();
    let bytes = files.read_small("manifest.json")?;
    let saved: Vec<SavedImage> =
        serde_json::from_slice(&bytes).map_err(|source| SourceError::Json {
            what: what.clone(),
            doc: "manifest.json",
            source,
        })?;
    let tags = || {
        let t: Vec<String> = saved
            .iter()
            .flat_map(|s| s.repo_tags.clone().unwrap_or_default())
            .collect();
        if t.is_empty() {
            "no names".into()
        } else {
            t.join(", ")
        }
    };
    let chosen = match name {
        Some(n) => {
            let want = with_tag(n);
            let hub = |t: &str| {
                t.strip_prefix("docker.io/library/")
                    .or_else(|| t.strip_prefix("docker.io/"))
                    .unwrap_or(t)
                    .to_string()
            };
            saved
                .iter()
                .find(|s| {
                    s.repo_tags
                        .iter()
                        .flatten()
                        .any(|t| *t == want || hub(t) == hub(&want))
                })
                .ok_or_else(|| SourceError::NoSuchName {
                    what: what.clone(),
                    name: n.to_string(),
                    available: tags(),
                })?
        }
        None => match saved.as_slice() {
            [one] => one,
            [] => {
                return Err(SourceError::Invalid {
                    what,
                    why: "its manifest.json lists no images".into(),
                });
            }
            many => {
                return Err(SourceError::Ambiguous {
                    what,
                    count: many.len(),
                    available: tags(),
                });
            }
        },
    };
    let config = files.read_small(&chosen.config)?;
    let config_digest = digest::sha256(&config);
    // Newer `docker save` names the config by its digest: check it.
    if let Some(hex) = chosen.config.strip_prefix("blobs/sha256/")
        && config_digest != format!("sha256:{hex}")
    {
        return Err(SourceError::Digest {
            what: files.describe(&chosen.config),
            source: digest::DigestError::Mismatch {
                expected: format!("sha256:{hex}"),
                actual: config_digest,
            },
        });
    }
    let parsed: ImageConfiguration =
        serde_json::from_slice(&config).map_err(|source| SourceError::Json {
            what: what.clone(),
            doc: "image config",
            source,
        })?;
    let diff_ids = parsed.rootfs().diff_ids();
    if diff_ids.len() != chosen.layers.len() {
        return Err(SourceError::Invalid {
            what,
            why: format!(
                "manifest.json lists {} layers but the config {}",
                chosen.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (member, diff_id) in chosen.layers.iter().zip(diff_ids) {
        let diff_id = digest::parse(diff_id).map_err(|source| SourceError::Digest {
            what: files.describe(member),
            source,
        })?;
        let digest = member
            .strip_prefix("blobs/")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(alg, hex)| digest::parse(&format!("{alg}:{hex}")).ok());
        layers.push(Layer {
            locator: member.clone(),
            digest,
            size: None,
            compression: Compression::Sniff,
            diff_id,
            media_type: String::new(),
            annotations: HashMap::new(),
        });
    }
    let image = Image {
        manifest_digest: None,
        manifest_media_type: None,
        manifest_size: None,
        config_digest,
        config,
        layers,
    };
    let layout = Layout {
        files,
        what,
        by_member: true,
    };
    Ok((image, layout))
}

#[cfg(test)]
mod tests {
    use super::link_target;

    #[test]
    fn links_between_members_stay_inside() {
        let t = |n: &str, to: &str| {
            link_target(n.as_bytes(), to.as_bytes()).map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(
            t("b/layer.tar", "../a/layer.tar").as_deref(),
            Some("a/layer.tar")
        );
        assert_eq!(
            t("b/layer.tar", "/a/layer.tar").as_deref(),
            Some("a/layer.tar")
        );
        assert_eq!(t("b/layer.tar", "x.tar").as_deref(), Some("b/x.tar"));
        assert_eq!(t("b/layer.tar", "../../etc/passwd"), None);
    }
}
