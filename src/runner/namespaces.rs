//! The sandbox's namespaces: new user (without root), mount, UTS, IPC and network
//! namespaces for the supervisor, a new PID namespace for the init, and the host-side
//! scratch directory they work in. Nothing here outlives the processes that hold it.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::network::Mode;
use super::plan::Plan;
use crate::sys::process::Forked;
use crate::sys::{self, EXIT_SETUP, SysError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum NamespaceError {
    #[error("cannot create namespaces: {cause}{}", if *.unprivileged { " (unprivileged user namespaces must be enabled: sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0)" } else { "" })]
    Unshare {
        cause: io::Error,
        unprivileged: bool,
    },
    #[error("cannot join the namespaces made for the network: {0}")]
    Join(io::Error),
    #[error("cannot map the caller into the user namespace: {0}")]
    IdMap(SysError),
    #[error("cannot make the mounts private: {0}")]
    Private(SysError),
    #[error(
        "cannot open /dev/fuse: {0} (without root it must be world-accessible, crw-rw-rw-, as the fuse3 package sets it up)"
    )]
    Fuse(io::Error),
    #[error("cannot start the sandbox: the supervisor must be single-threaded")]
    Threads,
    #[error("cannot start the sandbox in a new PID namespace: {0}")]
    Fork(SysError),
    #[error("cannot bring up the loopback interface: {0}")]
    Loopback(io::Error),
}

/// Where a sandbox keeps its scratch tmpfs mountpoint on the host: an empty directory,
/// removed when the sandbox ends (the tmpfs itself only ever exists in the sandbox's
/// private mount namespace).
pub(crate) fn scratch_parent() -> PathBuf {
    let (uid, _) = sys::effective_ids();
    if uid == 0 {
        return PathBuf::from("/run/imgfs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("imgfs"),
        _ => std::env::temp_dir().join(format!("imgfs-{uid}")),
    }
}

/// Removes scratch directories of sandboxes whose supervisor is gone (killed outright).
pub(crate) fn remove_stale_scratch(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        // Only directories named by a pid are scratch areas (not `shared`, for one).
        let Some(pid) = sys::pid_name(&e.file_name()) else {
            continue;
        };
        if !sys::alive(pid) {
            let _ = fs::remove_dir(e.path());
        }
    }
}

/// Without root, the sandbox serves the image through /dev/fuse itself: say so plainly
/// before anything is set up when it cannot be opened.
pub(crate) fn check_fuse() -> Result<(), NamespaceError> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(NamespaceError::Fuse)
}

/// The sandbox's network namespace and, without root, its user namespace, made beforehand
/// by another process (the bridge network's, so that pasta starts on them early: see
/// [`super::network::pasta`]); the supervisor joins them instead of making its own.
pub(crate) struct Made {
    /// Without root: the user namespace, which maps the caller to root and owns `net`.
    pub user: Option<OwnedFd>,
    pub net: OwnedFd,
}

/// Moves this (single-threaded) process into the sandbox's namespaces, joining those `made`
/// beforehand, and makes every mount it sees private, so nothing mounted from now on reaches
/// the host.
pub(crate) fn enter(plan: &Plan, made: Option<Made>) -> Result<(), NamespaceError> {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    match &made {
        Some(m) => {
            if m.user.is_some() != plan.unprivileged.is_some() {
                return Err(NamespaceError::Join(io::Error::other(
                    "they were made for another caller",
                )));
            }
            // This process is single-threaded here, as joining a user namespace needs; in
            // it, the caller is root, with every capability the rest needs.
            if let Some(user) = &m.user {
                sys::process::setns(user.as_fd(), libc::CLONE_NEWUSER)
                    .map_err(NamespaceError::Join)?;
            }
            sys::process::setns(m.net.as_fd(), libc::CLONE_NEWNET).map_err(NamespaceError::Join)?;
        }
        None => {
            if plan.network.mode != Mode::Host {
                flags |= libc::CLONE_NEWNET;
            }
            if plan.unprivileged.is_some() {
                flags |= libc::CLONE_NEWUSER;
            }
        }
    }
    // This process is single-threaded here, as a new user namespace needs.
    sys::process::unshare(flags).map_err(|source| NamespaceError::Unshare {
        cause: source,
        unprivileged: plan.unprivileged.is_some(),
    })?;
    if let (Some((uid, gid)), None) = (plan.unprivileged, &made) {
        sys::map_caller_to_root(uid, gid).map_err(NamespaceError::IdMap)?;
    }
    sys::fs::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(NamespaceError::Private)
}

/// The supervisor's side of a forked init: its pid, and the go-ahead it waits for when
/// asked to (see [`fork_init`]).
pub(crate) struct Init {
    pub pid: sys::process::Pid,
    go: Option<OwnedFd>,
}

impl Init {
    /// Lets an init that waits for it go on (once the supervisor has placed it, say, in its
    /// cgroup). Dropping the `Init` without calling this makes a waiting init give up.
    pub(crate) fn release(&mut self) {
        if let Some(fd) = self.go.take() {
            let _ = fs::File::from(fd).write(&[1]);
        }
    }
}

/// A pipe, both ends closed on exec.
fn pipe() -> Result<(OwnedFd, OwnedFd), NamespaceError> {
    let (read, write) =
        io::pipe().map_err(|e| NamespaceError::Fork(SysError::call("create a pipe")(e)))?;
    Ok((read.into(), write.into()))
}

/// Forks the init into a new PID namespace, where it is PID 1: `None` in the child, the
/// [`Init`] in the parent. A raw clone, as bubblewrap does, so that the supervisor's own
/// children (its threads) stay in its namespace. Only a single-threaded process may run Rust
/// in such a child, which [`sys::process::fork_into`] checks. The child dies with the
/// supervisor (PDEATHSIG), and a supervisor that died before the child could ask for that
/// shows as a closed pipe. With `wait`, the child goes on only once the parent calls
/// [`Init::release`].
pub(crate) fn fork_init(wait: bool) -> Result<Option<Init>, NamespaceError> {
    let (read, write) = pipe()?;
    let go = if wait { Some(pipe()?) } else { None };
    let pid = match sys::process::fork_into(libc::CLONE_NEWPID) {
        Ok(Forked::Parent(pid)) => pid,
        Ok(Forked::Child) => {
            drop(write);
            let _ = sys::process::set_parent_death_signal(libc::SIGKILL);
            // The supervisor never writes: readiness means it is gone.
            if !matches!(sys::process::poll_readable(read.as_fd(), 0), Ok(false)) {
                // Leaving the forked copy without running the parent's destructors.
                sys::process::exit_now(EXIT_SETUP);
            }
            if let Some((go_read, go_write)) = go {
                drop(go_write);
                let mut go_read = fs::File::from(go_read);
                let mut byte = [0u8];
                // EOF means the supervisor gave up.
                let n = loop {
                    match go_read.read(&mut byte) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        n => break n,
                    }
                };
                if !matches!(n, Ok(1)) {
                    sys::process::exit_now(EXIT_SETUP);
                }
            }
            return Ok(None);
        }
        Err(SysError::Threads { .. }) => return Err(NamespaceError::Threads),
        Err(e) => return Err(NamespaceError::Fork(e)),
    };
    // The write end stays open in the supervisor until it exits.
    std::mem::forget(write);
    Ok(Some(Init {
        pid,
        go: go.map(|(_, w)| w),
    }))
}

/// What docker sets in a container's own network namespace, so that programs run as another
/// user may still bind low ports and open ping sockets there (both are per namespace and
/// reach nothing beyond it). Without root only the gids of the user namespace may be named.
pub(crate) fn network_sysctls(unprivileged: bool) {
    let ping_groups = if unprivileged { "0 0" } else { "0 2147483647" };
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"),
        ("/proc/sys/net/ipv4/ping_group_range", ping_groups),
    ] {
        // A kernel without them only keeps the stricter defaults.
        if let Err(e) = sys::write_file(Path::new(path), value) {
            log::debug!("{e}");
        }
    }
}

/// Brings up `lo` in the new network namespace.
pub(crate) fn loopback_up() -> Result<(), NamespaceError> {
    sys::process::loopback_up().map_err(NamespaceError::Loopback)
}
