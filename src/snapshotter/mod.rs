//! `imgfs snapshotter`: containerd's Snapshots service on a Unix socket, registered as a
//! proxy plugin, so that containerd (and Kubernetes through CRI) starts containers on imgfs.
//!
//! A complete snapshotter in the manner of containerd's overlayfs one — directories for the
//! layers it unpacks, overlay mounts for containers — that serves the layers of images imgfs
//! reads lazily as remote snapshots instead ([`remote`]): containerd never downloads them,
//! and a container's lower directory is an imgfs view of the image. The metadata survives
//! restarts ([`meta`]); the views are servers of their own, so a restart, an upgrade or a
//! `kill -9` of the snapshotter touches no running container, and a start restores nothing
//! eagerly (a dead registry blocks nothing).
//!
//! Takes gRPC requests; hands on mounts. A front end beside `runner` and `inspect`: it uses
//! [`crate::prepare`] and [`crate::serve`], and never serves FUSE itself.

mod meta;
mod mounts;
mod remote;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{self as snapshots, Info, Usage, tonic};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use self::meta::MetaError;
use self::meta::{Filters, Kind, Meta, Snapshot};
use self::mounts::{Layout, remote_below};
pub use self::remote::RemoteError;
use self::remote::{REMOTE, Remotes, Target};
use crate::cache::Cache;
use crate::image::lazy::LazyOptions;
use crate::source::Platform;

/// Where containerd finds the snapshotter when not told otherwise.
pub const DEFAULT_ADDRESS: &str = "/run/imgfs/snapshotter.sock";
/// Where the snapshotter keeps its metadata, directories and views when not told otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/imgfs/snapshotter";
/// The status file in the root: what was served remotely, what was unpacked and why.
pub const STATUS_FILE: &str = "status.json";

/// Why the snapshotter could not start, or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotterError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{0} is served by another snapshotter")]
    InUse(PathBuf),
    /// A view of an image could not be mounted.
    #[error("cannot serve the image: {0}")]
    View(#[from] remote::RemoteError),
    #[error("the gRPC server failed: {0}")]
    Grpc(String),
    #[error("a request was lost: {0}")]
    Lost(String),
}

impl From<SnapshotterError> for tonic::Status {
    fn from(e: SnapshotterError) -> tonic::Status {
        let message = e.to_string();
        match e {
            SnapshotterError::Meta(MetaError::NotFound(_)) => tonic::Status::not_found(message),
            SnapshotterError::Meta(MetaError::AlreadyExists(_)) => {
                tonic::Status::already_exists(message)
            }
            SnapshotterError::Meta(MetaError::FailedPrecondition { .. }) => {
                tonic::Status::failed_precondition(message)
            }
            SnapshotterError::Meta(MetaError::InvalidArgument(_)) => {
                tonic::Status::invalid_argument(message)
            }
            SnapshotterError::View(_) => tonic::Status::unavailable(message),
            _ => tonic::Status::internal(message),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SnapshotterError + '_ {
    move |cause| SnapshotterError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// How the snapshotter is run.
pub struct Options {
    /// The socket it listens on.
    pub address: PathBuf,
    /// Its metadata, directories and views.
    pub root: PathBuf,
    /// imgfs's store, where the layers it serves are kept.
    pub cache: Cache,
    /// How the views read lazy layers.
    pub lazy: LazyOptions,
    pub platform: Option<Platform>,
    /// Registries: accept any certificate and plain HTTP.
    pub insecure: bool,
    pub auth_file: Option<PathBuf>,
    /// Where registries' host configurations are (containerd's and docker's directories
    /// when `None`).
    pub hosts_dir: Option<PathBuf>,
    /// How long a view nothing stands on stays mounted for the next container.
    pub linger: Duration,
}

/// What the snapshotter has done, for `imgfs snapshotter --status`: kept in [`STATUS_FILE`].
#[derive(Default, Serialize, Deserialize)]
pub struct Status {
    /// Layers served remotely (never downloaded by containerd).
    pub remote_layers: u64,
    /// Layers containerd unpacked into the snapshotter's directories.
    pub unpacked_layers: u64,
    /// Each image that could not be served remotely, and why.
    pub unpacked_images: BTreeMap<String, String>,
}

impl Status {
    /// The status kept in `root`.
    pub fn read(root: &Path) -> Result<Status, SnapshotterError> {
        let path = root.join(STATUS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SnapshotterError::Io {
                path,
                cause: io::Error::new(io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Status::default()),
            Err(cause) => Err(SnapshotterError::Io { path, cause }),
        }
    }
}

/// Serves containerd's Snapshots API on `options.address` until SIGINT or SIGTERM.
pub fn run(options: Options) -> Result<(), SnapshotterError> {
    let root = &options.root;
    for dir in [root.clone(), root.join("snapshots"), root.join("views")] {
        make_private_dir(&dir)?;
    }
    let layout = Layout::new(root.clone());
    let meta = Meta::load(root)?;
    let status = Status::read(root)?;
    let registry = remote::registry_options(
        options.platform.clone(),
        options.insecure,
        options.auth_file.clone(),
        options.hosts_dir.clone(),
    );
    let inner = Arc::new(Inner {
        layout,
        meta: Mutex::new(meta),
        views: Mutex::new(HashMap::new()),
        linger: options.linger,
        status: Mutex::new(status),
        remotes: Remotes::new(options.cache.clone(), options.lazy.clone(), registry),
    });
    // Views nothing has stood on for `linger` are retired in the background.
    let retiring = inner.clone();
    let tick = (options.linger / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
    std::thread::Builder::new()
        .name("imgfs-retire".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                retiring.retire_views();
            }
        })
        .map_err(io_error(Path::new("the thread that retires views")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error(Path::new("the async runtime")))?;
    runtime.block_on(serve(inner, &options.address))
}

async fn serve(inner: Arc<Inner>, address: &Path) -> Result<(), SnapshotterError> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    // A socket left by a snapshotter that died is taken over; one that answers is not.
    if address.exists() {
        if std::os::unix::net::UnixStream::connect(address).is_ok() {
            return Err(SnapshotterError::InUse(address.to_path_buf()));
        }
        std::fs::remove_file(address).map_err(io_error(address))?;
    }
    let listener = tokio::net::UnixListener::bind(address).map_err(io_error(address))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error(address))?;
    }
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(stream, _)| stream);
        Some((next, l))
    });
    let stop = async {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
        log::info!("stopping; the views and the containers on them go on");
    };
    log::info!("serving containerd's snapshots on {}", address.display());
    let served = tonic::transport::Server::builder()
        .add_service(snapshots::server(Arc::new(Service(inner))))
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    let _ = std::fs::remove_file(address);
    served.map_err(|e| SnapshotterError::Grpc(e.to_string()))
}

/// Makes `dir` (and its parents) if missing, its owner's alone.
fn make_private_dir(dir: &Path) -> Result<(), SnapshotterError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error(dir)(e)),
    }
}

/// The state every request shares.
struct Inner {
    layout: Layout,
    meta: Mutex<Meta>,
    /// When each view was last stood on, held while views are started or retired: a view a
    /// new snapshot stands on is never retired by a removal deciding at the same time.
    views: Mutex<HashMap<PathBuf, Instant>>,
    /// How long a view nothing stands on stays mounted.
    linger: Duration,
    status: Mutex<Status>,
    remotes: Remotes,
}

/// The gRPC face of [`Inner`]: each request runs on the blocking pool, as they all touch
/// files, and some the registry.
struct Service(Arc<Inner>);

impl Service {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, SnapshotterError> + Send + 'static,
    ) -> Result<T, SnapshotterError> {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| SnapshotterError::Lost(e.to_string()))?
    }
}

fn info(name: &str, snap: &Snapshot) -> Info {
    Info {
        kind: match snap.kind {
            Kind::View => snapshots::Kind::View,
            Kind::Active => snapshots::Kind::Active,
            Kind::Committed => snapshots::Kind::Committed,
        },
        name: name.to_string(),
        parent: snap.parent.clone(),
        labels: snap.labels.clone(),
        created_at: snap.created,
        updated_at: snap.updated,
    }
}

impl Inner {
    /// `Prepare` (`kind` active) and `View`.
    fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        kind: Kind,
    ) -> Result<Vec<Mount>, SnapshotterError> {
        if kind == Kind::Active
            && let Some(target) = Target::of(&labels)
            && let Some(done) = self.remote_layer(&target, parent, &labels)?
        {
            return Err(done.into());
        }
        let snap = self.meta.lock().create(key, parent, kind, labels, None)?;
        let made = (|| {
            let fs = self.layout.fs(snap.id);
            std::fs::create_dir_all(&fs).map_err(io_error(&fs))?;
            if kind == Kind::Active {
                let work = self.layout.work(snap.id);
                make_private_dir(&work)?;
            }
            self.view_below(key)?;
            mounts::mounts(&self.meta.lock(), &self.layout, key).map_err(Into::into)
        })();
        if made.is_err() {
            // Nothing half-made stays behind.
            let _ = self.meta.lock().remove(key);
            let _ = std::fs::remove_dir_all(self.layout.dir(snap.id));
        }
        made
    }

    /// A layer about to be unpacked: committed as a remote snapshot when imgfs can serve it
    /// (the answer containerd then gets is that it already exists), `None` when containerd
    /// must unpack it (said once per image, and counted).
    fn remote_layer(
        &self,
        target: &Target,
        parent: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Option<MetaError>, SnapshotterError> {
        if self.meta.lock().get(&target.chain).is_ok() {
            return Ok(Some(MetaError::AlreadyExists(target.chain.clone())));
        }
        match self.remotes.decide(target) {
            Ok(remote) => {
                let mut labels = labels.clone();
                labels.insert(REMOTE.to_string(), remote.image.clone());
                self.meta.lock().create(
                    &target.chain,
                    parent,
                    Kind::Committed,
                    labels,
                    Some(remote),
                )?;
                self.count(|s| s.remote_layers += 1);
                Ok(Some(MetaError::AlreadyExists(target.chain.clone())))
            }
            Err(not) => {
                if not.first {
                    log::warn!(
                        "{}: unpacked by containerd, not served lazily: {}",
                        not.image,
                        not.why
                    );
                }
                self.count(|s| {
                    s.unpacked_layers += 1;
                    s.unpacked_images.insert(not.image.clone(), not.why.clone());
                });
                Ok(None)
            }
        }
    }

    /// Changes the status and writes it down (best effort: it is for people to read).
    fn count(&self, change: impl FnOnce(&mut Status)) {
        use crate::sys::publish::{Durability, publish};
        let mut status = self.status.lock();
        change(&mut status);
        let path = self.layout.root().join(STATUS_FILE);
        let bytes = serde_json::to_vec_pretty(&*status).unwrap_or_default();
        if let Err(e) = publish(&path, &bytes, Durability::Atomic) {
            log::warn!("{}: {e}", path.display());
        }
    }

    /// Mounts the view under `key`'s parents, if there is one and it is not mounted.
    fn view_below(&self, key: &str) -> Result<(), SnapshotterError> {
        let mut views = self.views.lock();
        let remote = {
            let meta = self.meta.lock();
            remote_below(&meta, &self.layout, key).cloned()
        };
        if let Some(remote) = remote {
            let view = self
                .remotes
                .ensure_view(self.layout.view(&remote), &remote)?;
            views.insert(view, Instant::now());
        }
        Ok(())
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotterError> {
        // Checked first: a committed snapshot has none.
        mounts::mounts(&self.meta.lock(), &self.layout, key)?;
        self.view_below(key)?;
        Ok(mounts::mounts(&self.meta.lock(), &self.layout, key)?)
    }

    fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotterError> {
        let id = self.meta.lock().get(key)?.id;
        let usage = usage_of(&self.layout.fs(id));
        self.meta.lock().commit(name, key, labels, usage)?;
        self.retire_views();
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), SnapshotterError> {
        let snap = self.meta.lock().remove(key)?;
        remove_dir(&self.layout, snap.id);
        self.retire_views();
        if let Some(remote) = &snap.remote {
            let shared = self
                .meta
                .lock()
                .all()
                .any(|(_, s)| s.remote.as_ref().is_some_and(|r| r.entry == remote.entry));
            if !shared {
                self.free(&remote.entry);
            }
        }
        Ok(())
    }

    /// Frees the store's entry of an image no snapshot is served from any more, and the
    /// layers no other image in the store lists; a user of it (an `imgfs mount` of the same
    /// image) keeps it.
    fn free(&self, entry: &str) {
        use crate::cache::Removal;
        let cache = self.remotes.cache();
        let entry = cache.entry(entry);
        // A retired view's server takes a moment to let go of the entry.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match entry.remove() {
                Ok(Removal::InUse(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Ok(Removal::Removed(_)) => {
                    let freed = cache.collect_layers();
                    log::info!("freed {} ({freed} bytes of layers)", entry.name());
                    return;
                }
                Ok(_) => return,
                Err(e) => {
                    log::warn!("{e}");
                    return;
                }
            }
        }
    }

    /// Unmounts the views nothing stands on: at once those of images no snapshot is served
    /// from any more, the others once nothing has stood on them for `linger` (the next
    /// container of the image finds its view ready). A view found mounted that this process
    /// has not seen (it was started before a restart) counts as used now.
    fn retire_views(&self) {
        let mut views = self.views.lock();
        let now = Instant::now();
        let (standing, served, all) = {
            let meta = self.meta.lock();
            let standing: HashSet<PathBuf> = meta
                .all()
                .filter(|(_, s)| s.kind != Kind::Committed)
                .filter_map(|(k, _)| remote_below(&meta, &self.layout, k))
                .map(|r| self.layout.view(r))
                .collect();
            let served: HashSet<PathBuf> = meta
                .all()
                .filter_map(|(_, s)| s.remote.as_ref())
                .map(|r| self.layout.view(r))
                .collect();
            let all: Vec<PathBuf> = std::fs::read_dir(self.layout.views())
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            (standing, served, all)
        };
        for view in all {
            let used = *views.entry(view.clone()).or_insert(now);
            if standing.contains(&view) {
                views.insert(view, now);
                continue;
            }
            if served.contains(&view) && now.duration_since(used) < self.linger {
                continue;
            }
            views.remove(&view);
            self.remotes.retire_view(&view);
        }
    }

    /// A snapshot's usage: its directory's, or for a remote snapshot the bytes its layer
    /// holds in imgfs's store (what was fetched of it), with no inodes of its own.
    fn usage(&self, key: &str) -> Result<Usage, SnapshotterError> {
        let snap = self.meta.lock().get(key)?.clone();
        let (size, inodes) = match (snap.kind, &snap.remote) {
            (Kind::Committed, Some(_)) => (self.stored_bytes(&snap), 0),
            (Kind::Committed, None) => snap.usage,
            _ => usage_of(&self.layout.fs(snap.id)),
        };
        Ok(Usage { size, inodes })
    }

    /// Bytes the layer of the remote snapshot `snap` takes in imgfs's store (its lazy entry,
    /// read through a seek table or a TOC), 0 when the store has no such entry.
    fn stored_bytes(&self, snap: &Snapshot) -> i64 {
        use crate::cache::key::EntryKey;
        let Some(target) = Target::of(&snap.labels) else {
            return 0;
        };
        let cache = self.remotes.cache();
        [
            EntryKey::Lazy(target.layer.clone()),
            EntryKey::LazyToc(target.layer),
        ]
        .iter()
        .map(|key| cache.layer(key))
        .find(|entry| entry.marker().is_some())
        .map_or(0, |entry| {
            i64::try_from(entry.disk_usage()).unwrap_or(i64::MAX)
        })
    }

    /// Removes the directories of snapshots that are no more (a removal cut short), and
    /// retires the views nothing stands on.
    fn cleanup(&self) -> Result<(), SnapshotterError> {
        // Listed before the ids are read: a snapshot's metadata is made before its
        // directory, so a directory listed here whose id is not read next is a leftover.
        let dir = self.layout.snapshots();
        let listed: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io_error(&dir))?
            .flatten()
            .collect();
        let ids: HashSet<String> = self
            .meta
            .lock()
            .all()
            .map(|(_, s)| s.id.to_string())
            .collect();
        for e in listed {
            let name = e.file_name().to_string_lossy().into_owned();
            if !ids.contains(&name) {
                log::info!("cleaning up {}", e.path().display());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        self.retire_views();
        Ok(())
    }
}

/// Removes a snapshot's directory: renamed aside first, so that a removal cut short leaves
/// no directory a snapshot could be confused with (the next `Cleanup` finishes it).
fn remove_dir(layout: &Layout, id: u64) {
    let dir = layout.dir(id);
    let aside = layout.snapshots().join(format!(".removing-{id}"));
    let target = match std::fs::rename(&dir, &aside) {
        Ok(()) => aside,
        Err(_) => dir,
    };
    if let Err(e) = std::fs::remove_dir_all(&target)
        && e.kind() != io::ErrorKind::NotFound
    {
        log::warn!("{}: {e}", target.display());
    }
}

/// Bytes (of blocks used) and inodes under `dir`, hard links counted once.
fn usage_of(dir: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let (mut bytes, mut inodes) = (0i64, 0i64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            inodes += 1;
            bytes += (m.blocks() * 512) as i64;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[tonic::async_trait]
impl snapshots::Snapshotter for Service {
    type Error = SnapshotterError;

    async fn stat(&self, key: String) -> Result<Info, Self::Error> {
        self.blocking(move |s| Ok(info(&key, s.meta.lock().get(&key)?)))
            .await
    }

    async fn update(
        &self,
        info_in: Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<Info, Self::Error> {
        self.blocking(move |s| {
            let paths = fieldpaths.unwrap_or_default();
            let snap = s
                .meta
                .lock()
                .update(&info_in.name, info_in.labels, &paths)?;
            Ok(info(&info_in.name, &snap))
        })
        .await
    }

    async fn usage(&self, key: String) -> Result<Usage, Self::Error> {
        self.blocking(move |s| s.usage(&key)).await
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Self::Error> {
        self.blocking(move |s| s.mounts(&key)).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        self.blocking(move |s| s.prepare(&key, &parent, labels, Kind::Active))
            .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        self.blocking(move |s| s.prepare(&key, &parent, labels, Kind::View))
            .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Self::Error> {
        self.blocking(move |s| s.commit(&name, &key, labels)).await
    }

    async fn remove(&self, key: String) -> Result<(), Self::Error> {
        self.blocking(move |s| s.remove(&key)).await
    }

    async fn clear(&self) -> Result<(), Self::Error> {
        self.blocking(|s| s.cleanup()).await
    }

    type InfoStream = futures_util::stream::Iter<std::vec::IntoIter<Result<Info, Self::Error>>>;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Self::Error> {
        let infos = self
            .blocking(move |s| {
                let filters = Filters::parse(&filters)?;
                let meta = s.meta.lock();
                Ok(meta
                    .all()
                    .filter(|(k, snap)| filters.matches(k, snap))
                    .map(|(k, snap)| Ok::<Info, SnapshotterError>(info(k, snap)))
                    .collect::<Vec<_>>())
            })
            .await?;
        Ok(futures_util::stream::iter(infos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meta::tests::labels;
    use remote::TARGET;

    /// A snapshotter's state in `dir`, with no hosts configuration and no network needed.
    fn inner(dir: &Path) -> Inner {
        let root = dir.join("root");
        for d in [root.clone(), root.join("snapshots"), root.join("views")] {
            make_private_dir(&d).unwrap();
        }
        let cache = Cache::locate(Some(dir.join("cache"))).unwrap();
        let registry = remote::registry_options(None, false, None, Some(dir.join("no-hosts")));
        Inner {
            layout: Layout::new(root.clone()),
            meta: Mutex::new(Meta::load(&root).unwrap()),
            views: Mutex::new(HashMap::new()),
            linger: Duration::ZERO,
            status: Mutex::new(Status::default()),
            remotes: Remotes::new(cache, LazyOptions::default(), registry),
        }
    }

    /// Labels that name no usable image — a path for a reference, a digest that is not one, a
    /// registry nothing listens on, a name far too long — make an ordinary snapshot for
    /// containerd to unpack into, each said in the status with why; never a panic.
    #[test]
    fn hostile_labels_fall_back_to_unpacking() {
        let dir = std::env::temp_dir().join(format!("imgfs-snapshotter-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = inner(&dir);
        // Port 1 of loopback: nothing listens, nothing leaves the machine.
        let long = format!("127.0.0.1:1/{}", "a".repeat(5000));
        let cases = [
            ("127.0.0.1:1/../../etc/passwd", "sha256:00"),
            ("127.0.0.1:1/nothing:1", "not-a-digest"),
            ("127.0.0.1:1/x@sha256:short", "sha256:00"),
            (long.as_str(), "sha256:00"),
        ];
        for (i, (image, layer)) in cases.iter().enumerate() {
            let labels = labels(&[
                (TARGET, "sha256:chain"),
                ("containerd.io/snapshot/remote/stargz.reference", image),
                ("containerd.io/snapshot/remote/stargz.digest", layer),
            ]);
            let key = format!("k{i}");
            let mounts = s.prepare(&key, "", labels, Kind::Active).unwrap();
            assert_eq!(mounts[0].r#type, "bind", "{image}");
            assert!(s.layout.fs(s.meta.lock().get(&key).unwrap().id).is_dir());
        }
        let status = s.status.lock();
        assert_eq!(status.remote_layers, 0);
        assert_eq!(status.unpacked_layers, cases.len() as u64);
        for (image, _) in cases {
            let why = &status.unpacked_images[image];
            assert!(!why.is_empty(), "{image}");
        }
        drop(status);
        // The model's rules hold through the same path.
        assert!(matches!(
            s.prepare("k0", "", HashMap::new(), Kind::Active),
            Err(SnapshotterError::Meta(MetaError::AlreadyExists(_)))
        ));
        assert!(matches!(
            s.prepare("x", "nope", HashMap::new(), Kind::View),
            Err(SnapshotterError::Meta(MetaError::NotFound(_)))
        ));
        s.commit("c0", "k0", HashMap::new()).unwrap();
        s.remove("k1").unwrap();
        assert!(!s.layout.fs(2).exists());
        s.cleanup().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
