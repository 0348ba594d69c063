//! Where snapshots live on disk and the mounts containerd gets for them, as its overlayfs
//! snapshotter makes them: an active snapshot is its own directory (`fs`, with `work` beside
//! it) over the directories of its parents, a view is its parents read-only.
//!
//! A committed snapshot is one directory, or — served remotely — the merged view of an
//! image's first layers ([`Layout::view`]), which holds every layer below it: a chain's lower
//! directories are its unpacked snapshots from the top down to the first remote one, whose
//! view ends the list. So a chain all remote is one FUSE mount, and layers unpacked on a
//! remote base are plain overlay layers over it; whiteouts need no translation, as imgfs
//! merges an image's layers in its index.

use std::path::{Path, PathBuf};

use containerd_snapshots::api::types::Mount;

use super::meta::{Kind, Meta, MetaError, Remote, Snapshot};

/// The snapshotter's root: `snapshots/ID/{fs,work}`, `views/NAME`, the metadata.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: PathBuf) -> Layout {
        Layout { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Parent of the snapshots' directories.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.snapshots().join(id.to_string())
    }

    /// What the snapshot holds (an overlay's upper directory).
    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// An overlay's work directory.
    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }

    /// Parent of the views' mountpoints.
    pub fn views(&self) -> PathBuf {
        self.root.join("views")
    }

    /// The mountpoint of the merged view of `remote`: one per image and depth, shared by
    /// every snapshot served from it.
    pub fn view(&self, remote: &Remote) -> PathBuf {
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(format!("{} {}", remote.image, remote.layers));
        let name: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.views().join(name)
    }
}

/// The lower directories of the committed snapshot `key`, top first, and the remote view
/// that ends them, if any.
pub fn lowers<'m>(
    meta: &'m Meta,
    layout: &Layout,
    key: &str,
) -> Result<(Vec<PathBuf>, Option<&'m Remote>), MetaError> {
    let top = meta.get(key)?;
    let chain = std::iter::once(top).chain(meta.parents(key).into_iter().map(|(_, s)| s));
    let mut dirs = Vec::new();
    for snap in chain {
        if let Some(remote) = &snap.remote {
            dirs.push(layout.view(remote));
            return Ok((dirs, Some(remote)));
        }
        dirs.push(layout.fs(snap.id));
    }
    Ok((dirs, None))
}

/// The remote view under the snapshot `key`'s parent chain, if any: what must be mounted
/// before its mounts are of use.
pub fn remote_below<'m>(meta: &'m Meta, layout: &Layout, key: &str) -> Option<&'m Remote> {
    let snap = meta.get(key).ok()?;
    if snap.parent.is_empty() {
        return None;
    }
    lowers(meta, layout, &snap.parent).ok()?.1
}

fn mount(kind: &str, source: &Path, options: Vec<String>) -> Mount {
    Mount {
        r#type: kind.to_string(),
        source: source.to_string_lossy().into_owned(),
        target: String::new(),
        options,
    }
}

/// The mounts of the active or view snapshot `key`.
pub fn mounts(meta: &Meta, layout: &Layout, key: &str) -> Result<Vec<Mount>, MetaError> {
    let snap: &Snapshot = meta.get(key)?;
    let lower = match snap.parent.as_str() {
        "" => Vec::new(),
        parent => lowers(meta, layout, parent)?.0,
    };
    let lowerdir = || {
        let joined: Vec<String> = lower
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        format!("lowerdir={}", joined.join(":"))
    };
    Ok(match snap.kind {
        Kind::Committed => {
            return Err(MetaError::FailedPrecondition {
                key: key.to_string(),
                why: "a committed snapshot has no mounts: prepare or view one on it",
            });
        }
        Kind::Active if lower.is_empty() => {
            vec![mount(
                "bind",
                &layout.fs(snap.id),
                vec!["rbind".into(), "rw".into()],
            )]
        }
        Kind::Active => vec![mount(
            "overlay",
            Path::new("overlay"),
            vec![
                "index=off".into(),
                format!("workdir={}", layout.work(snap.id).display()),
                format!("upperdir={}", layout.fs(snap.id).display()),
                lowerdir(),
            ],
        )],
        Kind::View if lower.is_empty() => {
            vec![mount(
                "bind",
                &layout.fs(snap.id),
                vec!["rbind".into(), "ro".into()],
            )]
        }
        Kind::View if lower.len() == 1 => {
            vec![mount("bind", &lower[0], vec!["rbind".into(), "ro".into()])]
        }
        Kind::View => vec![mount("overlay", Path::new("overlay"), vec![lowerdir()])],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Unpacked layers over a remote base: their directories, then the base's view, which
    /// ends the chain (what is below a view is in it).
    #[test]
    fn a_chain_ends_at_its_first_remote_snapshot() {
        let dir = std::env::temp_dir().join(format!("imgfs-mounts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let layout = Layout::new(dir.clone());
        let mut m = Meta::load(&dir).unwrap();
        let none = HashMap::new;
        let remote = |layers| Remote {
            image: "r/x@sha256:00".into(),
            entry: "lazy-sha256:11".into(),
            layers,
            total: 2,
        };
        m.create("l1", "", Kind::Committed, none(), Some(remote(1)))
            .unwrap();
        m.create("l2", "l1", Kind::Committed, none(), Some(remote(2)))
            .unwrap();
        let a = m.create("a", "l2", Kind::Active, none(), None).unwrap();
        m.commit("l3", "a", none(), (0, 0)).unwrap();
        let c = m.create("c", "l3", Kind::Active, none(), None).unwrap();
        let view = layout.view(&remote(2));
        assert_ne!(view, layout.view(&remote(1)));
        let got = mounts(&m, &layout, "c").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].r#type, "overlay");
        assert_eq!(
            got[0].options[3],
            format!("lowerdir={}:{}", layout.fs(a.id).display(), view.display())
        );
        assert_eq!(
            got[0].options[2],
            format!("upperdir={}", layout.fs(c.id).display())
        );
        assert_eq!(remote_below(&m, &layout, "c"), Some(&remote(2)));

        m.create("v", "l2", Kind::View, none(), None).unwrap();
        let got = mounts(&m, &layout, "v").unwrap();
        assert_eq!(got[0].r#type, "bind");
        assert_eq!(got[0].source, view.to_string_lossy());
        assert_eq!(got[0].options, ["rbind", "ro"]);

        m.create("b", "", Kind::Active, none(), None).unwrap();
        assert_eq!(mounts(&m, &layout, "b").unwrap()[0].r#type, "bind");
        assert!(mounts(&m, &layout, "l3").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
