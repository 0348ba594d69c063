//! Remote snapshots: which layers imgfs serves from their registry instead of letting
//! containerd download and unpack them, and the views that serve them.
//!
//! containerd asks for a layer with the labels its puller set: the chain id the layer makes
//! (`containerd.io/snapshot.ref`), the image and the layer's digest (CRI's and nerdctl's
//! `containerd.io/snapshot/cri.*`, or `ctr-remote`'s `containerd.io/snapshot/remote/stargz.*`).
//! An image imgfs can read lazily (its imgfs index, or its layers' TOCs) is made ready in
//! imgfs's store once; every layer of it then becomes a committed snapshot whose content is
//! the merged view of the image's first layers, checked by chain id against the image's own
//! config. An image it cannot read lazily is said once, with why, and containerd unpacks it.
//!
//! A view is a detached imgfs server ([`crate::serve::spawn_detached`]), a process apart from
//! the snapshotter: restarting or killing the snapshotter touches no running container, and
//! a view's server is itself kept by its keeper.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use super::meta::Remote;
use crate::cache::Cache;
use crate::fs::Owners;
use crate::image::lazy::LazyOptions;
use crate::prepare::{self, Ready};
use crate::serve::{self, ServeOptions, Served};
use crate::source::registry::{self, Reference, RegistryOptions};
use crate::source::{Image, ImageRef, Platform, SourceError};

/// The chain id of the layers up to this one: what containerd names the committed snapshot.
pub const TARGET: &str = "containerd.io/snapshot.ref";
const CRI_IMAGE: &str = "containerd.io/snapshot/cri.image-ref";
const CRI_MANIFEST: &str = "containerd.io/snapshot/cri.manifest-digest";
const CRI_LAYER: &str = "containerd.io/snapshot/cri.layer-digest";
const STARGZ_IMAGE: &str = "containerd.io/snapshot/remote/stargz.reference";
const STARGZ_LAYER: &str = "containerd.io/snapshot/remote/stargz.digest";
/// Set on the snapshots imgfs serves remotely.
pub const REMOTE: &str = "containerd.io/snapshot/imgfs.remote";

/// Why an image could not be looked at, or a view not served.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Prepare(#[from] prepare::PrepareError),
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    #[error(transparent)]
    Spawn(#[from] serve::SpawnError),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{reference}: {digest:?} is not a sha256 digest")]
    Digest { reference: String, digest: String },
}

/// A layer containerd is about to unpack, as its labels name it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The chain id the layer makes with those below it.
    pub chain: String,
    /// The image, as the puller named it (`HOST/REPO[:TAG][@DIGEST]`).
    pub image: String,
    /// The layer's blob digest.
    pub layer: String,
    /// The image's manifest digest, when the puller said it.
    pub manifest: Option<String>,
}

impl Target {
    /// The target of a `Prepare` with `labels`; `None` when they do not name a layer of an
    /// image (a container's root, or a puller that says nothing).
    pub fn of(labels: &HashMap<String, String>) -> Option<Target> {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        Some(Target {
            chain: get(TARGET)?,
            image: get(CRI_IMAGE).or_else(|| get(STARGZ_IMAGE))?,
            layer: get(CRI_LAYER).or_else(|| get(STARGZ_LAYER))?,
            manifest: get(CRI_MANIFEST),
        })
    }
}

/// What is known of an image asked for.
#[derive(Clone)]
enum Known {
    /// imgfs reads it lazily: the image by digest, its entry in the store, and each layer's
    /// blob digest and chain id, bottom first.
    Lazy {
        image: String,
        entry: String,
        layers: Vec<(String, String)>,
    },
    /// containerd unpacks it, for this reason.
    Unpacked(prepare::NotLazy),
}

/// What is known of one image, behind its own lock.
type Slot = Arc<Mutex<Option<Known>>>;

/// How remote snapshots are decided and served.
pub struct Remotes {
    cache: Cache,
    lazy: LazyOptions,
    registry: RegistryOptions,
    /// What is known of each image asked for, by the name the puller gave; each behind its
    /// own lock, so that one image is looked at once while others go on.
    known: Mutex<HashMap<String, Slot>>,
    /// The keepers of the views started here: reaped once they have ended.
    keepers: Mutex<Vec<std::process::Child>>,
}

/// Why a layer is not served remotely: said once per image, the reason kept for the status.
pub struct NotRemote {
    pub image: String,
    pub why: String,
    /// Whether this is the first time the reason is given for the image.
    pub first: bool,
}

impl Remotes {
    pub fn new(cache: Cache, lazy: LazyOptions, registry: RegistryOptions) -> Remotes {
        Remotes {
            cache,
            lazy,
            registry,
            known: Mutex::new(HashMap::new()),
            keepers: Mutex::new(Vec::new()),
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The remote snapshot `target` can be, or why containerd must unpack it.
    pub fn decide(&self, target: &Target) -> Result<Remote, NotRemote> {
        let name = match &target.manifest {
            Some(m) => format!("{} {m}", target.image),
            None => target.image.clone(),
        };
        let slot = self.known.lock().entry(name).or_default().clone();
        let mut known = slot.lock();
        // A tag may have moved since it was looked at: a layer that is not in the image known
        // under that name sends for it again.
        let stale = match &*known {
            None => true,
            Some(Known::Lazy { layers, .. }) => !layers.iter().any(|(_, c)| *c == target.chain),
            Some(Known::Unpacked(_)) => false,
        };
        let mut first = false;
        if stale {
            match self.learn(target) {
                Ok(k) => {
                    first = matches!(k, Known::Unpacked(_));
                    *known = Some(k);
                }
                // Not kept: the registry may answer the next time.
                Err(e) => {
                    return Err(NotRemote {
                        image: target.image.clone(),
                        why: e.to_string(),
                        first: true,
                    });
                }
            }
        }
        match known.as_ref() {
            Some(Known::Lazy {
                image,
                entry,
                layers,
            }) => {
                let Some(at) = layers.iter().position(|(_, c)| *c == target.chain) else {
                    return Err(NotRemote {
                        image: target.image.clone(),
                        why: format!("no layer of {image} makes the chain {}", target.chain),
                        first: true,
                    });
                };
                if layers[at].0 != target.layer {
                    return Err(NotRemote {
                        image: target.image.clone(),
                        why: format!(
                            "layer {} of {image} is {}, not {}",
                            at + 1,
                            layers[at].0,
                            target.layer
                        ),
                        first: true,
                    });
                }
                Ok(Remote {
                    image: image.clone(),
                    entry: entry.clone(),
                    layers: at + 1,
                    total: layers.len(),
                })
            }
            Some(Known::Unpacked(why)) => Err(NotRemote {
                image: target.image.clone(),
                why: why.to_string(),
                first,
            }),
            None => unreachable!("set above"),
        }
    }

    /// Looks at the image of `target` in its registry and makes it ready lazily if it can
    /// be; an error when the registry cannot be asked (worth asking again).
    fn learn(&self, target: &Target) -> Result<Known, RemoteError> {
        let reference = match &target.manifest {
            Some(m) => by_digest(&target.image, m)?,
            None => target.image.clone(),
        };
        let (img, registry) = registry::open(&reference, &self.registry)?;
        let Some(manifest) = img.manifest_digest.clone() else {
            return Err(SourceError::Invalid {
                what: reference,
                why: "its registry gave no manifest digest".into(),
            }
            .into());
        };
        let image = by_digest(&reference, &manifest)?;
        let options = self.prepare_options();
        Ok(
            match prepare::prepare_lazy(&image, &img, &registry, &self.cache, options)? {
                Ok(ready) => Known::Lazy {
                    entry: ready.entry.name(),
                    layers: layers_of(&img),
                    image,
                },
                Err(why) => Known::Unpacked(why),
            },
        )
    }

    /// How images are prepared: for this platform, reaching registries as configured.
    fn prepare_options(&self) -> prepare::Options<'static> {
        prepare::Options {
            platform: Some(self.registry.platform.clone()),
            insecure: !self.registry.tls_verify,
            auth_file: self.registry.auth_file.clone(),
            hosts_dir: self.registry.hosts_dir.clone(),
            ..prepare::Options::default()
        }
    }

    /// Mounts the view of `remote` at `view` unless it is mounted and alive; its mountpoint.
    /// The caller makes sure no other thread starts or retires a view meanwhile.
    pub fn ensure_view(&self, view: PathBuf, remote: &Remote) -> Result<PathBuf, RemoteError> {
        if let Some(m) = serve::mount_at(&view) {
            if m.is_imgfs() && !serve::is_dead(&m) {
                return Ok(view);
            }
            log::info!("clearing a dead view at {}", view.display());
            serve::unmount(&view, true)?;
        }
        std::fs::create_dir_all(&view).map_err(|cause| RemoteError::Io {
            path: view.clone(),
            cause,
        })?;
        let ready = self.ready(remote)?;
        let options = ServeOptions {
            fsname: format!("{}{}", serve::SOURCE_PREFIX, remote.image),
            threads: serve::default_threads(),
            idle_exit: None,
            lazy: LazyOptions {
                store: Some(prepare::layer_store(&self.cache, &ready.entry)),
                ..self.lazy.clone()
            },
        };
        let served = Served {
            index: &ready.index_path,
            blobs: &ready.blobs,
            mountpoint: &view,
            options: &options,
            owners: Owners::Recorded,
        };
        let keeper = serve::spawn_detached_child(&served)?;
        let mut keepers = self.keepers.lock();
        keepers.retain_mut(|k| matches!(k.try_wait(), Ok(None)));
        keepers.push(keeper);
        Ok(view)
    }

    /// The image of `remote` ready to serve: the whole image from the store (or its
    /// registry, when the store lost it); the first layers of an image, which no index
    /// describes alone, fetched whole.
    fn ready(&self, remote: &Remote) -> Result<Ready, prepare::PrepareError> {
        let options = self.prepare_options();
        if remote.layers == remote.total {
            let image = ImageRef::Registry(remote.image.clone());
            return prepare::prepare_with(&image, &self.cache, options);
        }
        prepare::prepare_prefix(&remote.image, remote.layers, &self.cache, options)
    }

    /// Stops serving the view at `view`: its server ends once nothing has it open.
    pub fn retire_view(&self, view: &std::path::Path) {
        if serve::mount_at(view).is_some_and(|m| m.is_imgfs()) {
            log::info!("retiring the view at {}", view.display());
            if let Err(e) = serve::unmount(view, true) {
                log::warn!("{e}");
            }
        }
        let _ = std::fs::remove_dir(view);
        self.keepers
            .lock()
            .retain_mut(|k| matches!(k.try_wait(), Ok(None)));
    }
}

/// Each layer's blob digest and chain id, bottom first.
fn layers_of(img: &Image) -> Vec<(String, String)> {
    img.layers
        .iter()
        .zip(img.chain_ids())
        .map(|(l, chain)| {
            let digest = l.digest.as_ref().map(|d| d.to_string()).unwrap_or_default();
            (digest, chain)
        })
        .collect()
}

/// `HOST/REPO@DIGEST` for the image `reference` names (its tag dropped).
fn by_digest(reference: &str, digest: &str) -> Result<String, RemoteError> {
    let r = Reference::parse(reference).map_err(SourceError::Registry)?;
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RemoteError::Digest {
            reference: reference.to_string(),
            digest: digest.to_string(),
        });
    }
    Ok(format!("{}/{}@{digest}", r.registry, r.repository))
}

/// Registry options for a platform: the host's unless said.
pub fn registry_options(
    platform: Option<Platform>,
    insecure: bool,
    auth_file: Option<PathBuf>,
    hosts_dir: Option<PathBuf>,
) -> RegistryOptions {
    RegistryOptions {
        platform: platform.unwrap_or_else(Platform::host),
        tls_verify: !insecure,
        auth_file,
        hosts_dir,
        ..RegistryOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::snapshotter::meta::tests::labels;

    #[test]
    fn targets_from_cri_and_ctr_remote_labels() {
        let t = Target::of(&labels(&[
            (TARGET, "sha256:c"),
            (CRI_IMAGE, "r.example/a:1"),
            (CRI_LAYER, "sha256:l"),
            (CRI_MANIFEST, "sha256:m"),
        ]))
        .unwrap();
        assert_eq!(
            (t.chain.as_str(), t.image.as_str(), t.layer.as_str()),
            ("sha256:c", "r.example/a:1", "sha256:l")
        );
        assert_eq!(t.manifest.as_deref(), Some("sha256:m"));
        let t = Target::of(&labels(&[
            (TARGET, "sha256:c"),
            (STARGZ_IMAGE, "127.0.0.1:5000/a:1"),
            (STARGZ_LAYER, "sha256:l"),
        ]))
        .unwrap();
        assert_eq!(t.image, "127.0.0.1:5000/a:1");
        assert!(t.manifest.is_none());
        // A container's root, or a puller that names no image: not a layer.
        assert!(Target::of(&labels(&[(TARGET, "sha256:c")])).is_none());
        assert!(Target::of(&labels(&[(CRI_IMAGE, "a"), (CRI_LAYER, "b")])).is_none());
        assert!(Target::of(&labels(&[(TARGET, ""), (CRI_IMAGE, "a"), (CRI_LAYER, "b")])).is_none());
    }

    #[test]
    fn references_by_digest() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            by_digest("127.0.0.1:5000/py/thon:3", &d).unwrap(),
            format!("127.0.0.1:5000/py/thon@{d}")
        );
        assert!(by_digest("127.0.0.1:5000/a:1", "sha256:short").is_err());
    }
}
