//! The sandbox's namespaces: new user (without root), mount, UTS, IPC and network
//! namespaces for the supervisor, a new PID namespace for the init, and the host-side
//! scratch directory they work in. Nothing here outlives the processes that hold it.
#![allow(unsafe_code)]

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::plan::Plan;
use super::sys::{self, EXIT_SETUP, SysError};

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot create namespaces: {source}{}", if *.unprivileged { " (unprivileged user namespaces must be enabled: sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0)" } else { "" })]
    Unshare {
        source: io::Error,
        unprivileged: bool,
    },
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
pub fn scratch_parent() -> PathBuf {
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
pub fn remove_stale_scratch(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        // Only directories named by a pid are scratch areas (not `shared`, for one).
        let Some(pid) = crate::cache::sys::pid_name(&e.file_name()) else {
            continue;
        };
        if !crate::cache::sys::alive(pid) {
            let _ = fs::remove_dir(e.path());
        }
    }
}

/// Without root, the sandbox serves the image through /dev/fuse itself: say so plainly
/// before anything is set up when it cannot be opened.
pub fn check_fuse() -> Result<(), NamespaceError> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(NamespaceError::Fuse)
}

/// Moves this (single-threaded) process into the sandbox's namespaces and makes every mount
/// it sees private, so nothing mounted from now on reaches the host.
pub fn enter(plan: &Plan) -> Result<(), NamespaceError> {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if !plan.net_host {
        flags |= libc::CLONE_NEWNET;
    }
    if plan.unprivileged.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare only changes this process's namespaces; it is single-threaded here.
    if unsafe { libc::unshare(flags) } < 0 {
        return Err(NamespaceError::Unshare {
            source: io::Error::last_os_error(),
            unprivileged: plan.unprivileged.is_some(),
        });
    }
    if let Some((uid, gid)) = plan.unprivileged {
        sys::write_file(Path::new("/proc/self/setgroups"), "deny")
            .map_err(NamespaceError::IdMap)?;
        sys::write_file(Path::new("/proc/self/uid_map"), &format!("0 {uid} 1"))
            .map_err(NamespaceError::IdMap)?;
        sys::write_file(Path::new("/proc/self/gid_map"), &format!("0 {gid} 1"))
            .map_err(NamespaceError::IdMap)?;
    }
    sys::mount(
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
pub struct Init {
    pub pid: libc::pid_t,
    go: Option<OwnedFd>,
}

impl Init {
    /// Lets an init that waits for it go on (once the supervisor has placed it, say, in its
    /// cgroup). Dropping the `Init` without calling this makes a waiting init give up.
    pub fn release(&mut self) {
        if let Some(fd) = self.go.take() {
            // SAFETY: writing one byte from a live buffer to a pipe we own.
            unsafe { libc::write(fd.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), NamespaceError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    sys::check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "create a pipe",
    )
    .map_err(NamespaceError::Fork)?;
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks the init into a new PID namespace, where it is PID 1: `None` in the child, the
/// [`Init`] in the parent. A raw clone, as bubblewrap does, so that the supervisor's own
/// children (its threads) stay in its namespace. Only a single-threaded process may run Rust
/// in such a child, which is checked first. The child dies with the supervisor
/// (PDEATHSIG), and a supervisor that died before the child could ask for that shows as a
/// closed pipe. With `wait`, the child goes on only once the parent calls [`Init::release`].
pub fn fork_init(wait: bool) -> Result<Option<Init>, NamespaceError> {
    if !sys::single_threaded() {
        return Err(NamespaceError::Threads);
    }
    let (read, write) = pipe()?;
    let go = if wait { Some(pipe()?) } else { None };
    // SAFETY: clone without CLONE_VM and with a null stack behaves as fork: the child gets a
    // copy of this (single-threaded) process and returns here with 0.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWPID | libc::SIGCHLD,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(NamespaceError::Fork(SysError::last("clone")));
    }
    if pid == 0 {
        drop(write);
        // SAFETY: no preconditions.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        let mut poll = libc::pollfd {
            fd: read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. The supervisor never writes: readiness means it is gone.
        if unsafe { libc::poll(&mut poll, 1, 0) } != 0 {
            // SAFETY: leaving the forked copy without running the parent's destructors.
            unsafe { libc::_exit(EXIT_SETUP) };
        }
        if let Some((go_read, go_write)) = go {
            drop(go_write);
            let mut byte = 0u8;
            // EOF means the supervisor gave up.
            let n = loop {
                // SAFETY: reading one byte into a live buffer.
                let n = unsafe { libc::read(go_read.as_raw_fd(), (&raw mut byte).cast(), 1) };
                if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    break n;
                }
            };
            if n != 1 {
                // SAFETY: as above.
                unsafe { libc::_exit(EXIT_SETUP) };
            }
        }
        return Ok(None);
    }
    // The write end stays open in the supervisor until it exits.
    std::mem::forget(write);
    Ok(Some(Init {
        pid: pid as libc::pid_t,
        go: go.map(|(_, w)| w),
    }))
}

/// What docker sets in a container's own network namespace, so that programs run as another
/// user may still bind low ports and open ping sockets there (both are per namespace and
/// reach nothing beyond it). Without root only the gids of the user namespace may be named.
pub fn network_sysctls(unprivileged: bool) {
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
pub fn loopback_up() -> Result<(), NamespaceError> {
    // SAFETY: a datagram socket only used for the interface ioctls below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(NamespaceError::Loopback(io::Error::last_os_error()));
    }
    // SAFETY: the socket is ours; ifreq is plain data with the name set within bounds.
    let rc = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(sock);
        if rc < 0 { Err(err) } else { Ok(()) }
    };
    rc.map_err(NamespaceError::Loopback)
}
