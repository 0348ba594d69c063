//! The runner: a throwaway sandbox rooted in the image, started without extracting anything.
//!
//! Takes a prepared image (index stage) and the user's request; [`plan`] decides everything as
//! plain data with docker run's rules (the image's Entrypoint, Cmd, Env, WorkingDir and User,
//! names resolved in the image's own /etc/passwd and /etc/group), then `imgfs run` becomes the
//! sandbox supervisor, which [`exec`] implements: the image's FUSE mount is bound (or, without
//! a live mount, mounted) inside private namespaces, an overlay (tmpfs or `--rw-dir`) makes it
//! writable without ever touching the cache, and the command runs as PID 1's only child,
//! confined as docker confines a container ([`confine`]: capabilities, seccomp, masked /proc
//! paths) and, when asked, limited by a cgroup of its own ([`confine::cgroup`]).
//! Nothing of the sandbox outlives it; the image's shared server (see
//! [`serve::shared_mount`]) stays for `--linger` after the last sandbox using it. Root's
//! serves all of root's sandboxes; each other user gets their own, reachable by them alone,
//! which shows the image's owners as their user namespace would (see [`Owners`]).

// The stages of a sandbox start, in the order they run.
pub mod plan;

pub mod confine;
pub(crate) mod namespaces;
pub mod network;
pub(crate) mod rootfs;

pub mod exec;
pub(crate) mod process;
pub(crate) mod pty;

use std::os::unix::process::CommandExt;

use crate::image::{ImageReader, Owners};
use crate::prepare::Ready;
use crate::serve::{self, LiveMount};
use crate::sys;
use plan::{ImageConfig, ImageFacts, Plan, PlanError, Request};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Image(String),
    #[error("the input device is not a TTY (-t needs a terminal on stdin)")]
    NotATty,
    #[error("cannot start the sandbox: {0}")]
    Exec(std::io::Error),
    /// A lazily read image is served from outside the sandbox or not at all.
    #[error(
        "the image is read lazily and needs a server outside the sandbox; none could start: {0}"
    )]
    NoServer(serve::SharedError),
}

/// Reads a text file of the image, or nothing when it does not exist.
fn image_text(fs: &ImageReader, path: &str) -> Result<String, RunError> {
    match fs.read_file(path.as_bytes()) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(String::new()),
        Err(e) => Err(RunError::Image(format!(
            "cannot read {path} in the image: {e}"
        ))),
    }
}

/// Decides the plan for running `req` on a prepared image. The image is served by a live
/// mount of the caller's: as root an `imgfs mount` of it, or a shared server that stays
/// `linger` after its last use (none when zero).
pub fn make_plan(
    ready: &Ready,
    fsname: String,
    req: &Request,
    linger: std::time::Duration,
    seccomp_cache: &std::path::Path,
    lazy: &crate::image::lazy::LazyOptions,
) -> Result<Plan, RunError> {
    let config = match &ready.image_path {
        Some(p) => {
            let json = std::fs::read(p)
                .map_err(|e| RunError::Image(format!("cannot read {}: {e}", p.display())))?;
            ImageConfig::from_inspect_json(&json)
                .map_err(|e| RunError::Image(format!("{}: {e}", p.display())))?
        }
        None => ImageConfig::default(),
    };
    let start = sys::trace::now();
    let fs = ImageReader::open(&ready.index_path, &ready.blobs)
        .map_err(|e| RunError::Image(e.to_string()))?;
    let passwd = image_text(&fs, "/etc/passwd")?;
    let group = image_text(&fs, "/etc/group")?;
    let facts = ImageFacts {
        index_path: &ready.index_path,
        blobs: &ready.blobs,
        fsname,
        id: &ready.id,
        config: &config,
        passwd: &passwd,
        group: &group,
        seccomp_cache,
    };
    let caller = sys::effective_ids();
    let host_env = |k: &str| std::env::var(k).ok();
    let mut plan = plan::build(&facts, req, caller, &host_env)?;
    sys::trace::event("plan", start, "\"bytes\":0");
    let owners = match plan.unprivileged {
        Some((uid, gid)) => Owners::RootAs { uid, gid },
        None => Owners::Recorded,
    };
    let lazy = crate::image::lazy::LazyOptions {
        program: program_path(&fs, &plan),
        ..lazy.clone()
    };
    let start = sys::trace::now();
    plan.live_mount = live_mount(ready, &plan.fsname, linger, owners, &lazy)?;
    sys::trace::event("server", start, "\"bytes\":0");
    if plan.tty && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(RunError::NotATty);
    }
    Ok(plan)
}

/// Where the sandbox's command is in the image: its first word as it is, or found in the
/// plan's `PATH` as `execvp` finds it; None when no regular file is there.
fn program_path(fs: &ImageReader, plan: &Plan) -> Option<std::path::PathBuf> {
    let name = plan.argv.first()?;
    let is_file = |p: &str| {
        fs.resolve(p.as_bytes(), true)
            .ok()
            .and_then(|rec| fs.inode(rec))
            .is_some_and(|r| r.file_type() == libc::S_IFREG)
    };
    let found = if name.contains('/') {
        let path = match name.starts_with('/') {
            true => name.clone(),
            false => format!("{}/{name}", plan.cwd),
        };
        is_file(&path).then_some(path)
    } else {
        let path = plan
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(plan::DEFAULT_PATH);
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| format!("{d}/{name}"))
            .find(|p| is_file(p))
    };
    found.map(Into::into)
}

/// How long the server of a lazily read image run with `--linger 0` stays after the run.
const LAZY_MIN_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// A live mount of the image with warm kernel caches, if there is one or one can be started;
/// failing that the sandbox serves the image itself, which is only slower — but for a lazily
/// read image, which a sandbox cannot fetch from its own network namespace: without a server
/// it is an error at once, not reads failing after the fetch timeout.
/// Without root, only a mount showing the image's owners as the sandbox's user namespace
/// would will do: a shared server of the caller's, never a plain `imgfs mount`.
fn live_mount(
    ready: &Ready,
    fsname: &str,
    linger: std::time::Duration,
    owners: Owners,
    lazy: &crate::image::lazy::LazyOptions,
) -> Result<Option<LiveMount>, RunError> {
    if let Some(live) = serve::live_mount(ready.entry.dir(), &ready.index_path, owners) {
        return Ok(Some(live));
    }
    // A sandbox serving the image itself does so from inside its network namespace, where a
    // lazily read image's registry cannot be reached: such an image always gets a server of
    // its own outside, which goes as soon as the run is over.
    let is_lazy = ready
        .blobs
        .iter()
        .any(|b| b.ends_with(crate::cache::sparse::REMOTE_FILE));
    let linger = match (linger.is_zero(), is_lazy) {
        (true, false) => return Ok(None),
        (true, true) => LAZY_MIN_LINGER,
        (false, _) => linger,
    };
    match serve::shared_mount(
        &ready.index_path,
        &ready.blobs,
        fsname,
        linger,
        owners,
        lazy,
    ) {
        Ok(live) => Ok(Some(live)),
        Err(e) if is_lazy => Err(RunError::NoServer(e)),
        Err(e) => {
            log::info!("no shared server for the image: {e}");
            Ok(None)
        }
    }
}

/// Runs the sandbox and returns the exit status for `imgfs run`: in this process when it is
/// single-threaded (resolving the image starts no thread), else in a fresh copy of the binary
/// that replaces it (same pid, no threads carried over).
pub fn supervise(plan: &Plan, network: Option<network::Early>) -> Result<i32, RunError> {
    if sys::single_threaded() {
        return Ok(exec::supervisor(plan, network));
    }
    // The fresh copy starts the network itself: this one's pasta and its namespaces go.
    drop(network);
    let json = serde_json::to_string(plan).unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe")
        .arg0("imgfs")
        .arg("__sandbox")
        .arg(json)
        .exec();
    Err(RunError::Exec(err))
}
