//! Carries out a [`Plan`]: namespaces, the image mount, the overlay, pivot_root, exec.
//!
//! Two processes, neither of which ever forks while it has threads:
//!
//! - the **supervisor** (`imgfs run` itself, single-threaded once the image is resolved)
//!   enters new user (when not root), mount, UTS, IPC and network namespaces, makes every
//!   mount private, mounts a tmpfs scratch area, binds the image's live mount there (under a
//!   lease on it) or else mounts the image with FUSE itself, forks the init into a new PID
//!   namespace, and only then starts the threads serving the image, if it serves it. It forwards
//!   signals sent to it with kill(2) and exits with the init's status.
//! - the **init** (PID 1 of the new PID namespace, killed if the supervisor dies) puts the
//!   overlay on the image, mounts /proc, a minimal /dev, /tmp, the volumes and the generated
//!   /etc files, pivots into the root, and starts the command; it reaps orphans, forwards
//!   signals and exits with the command's status (128+N for a signal).
//!
//! When both are gone, the namespaces and with them every mount vanish, whatever killed them.
//! Mount targets inside the image are resolved with `openat2(RESOLVE_IN_ROOT)`, so a symlink
//! in the image can never send a mount outside the root.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::plan::Plan;
use super::pty::{self, Terminal};
use crate::fs::ImageFs;
use crate::fs::serve::{self, ServeOptions};

/// Exit status when the sandbox could not be set up (docker run uses the same).
pub const EXIT_SETUP: i32 = 125;
/// The command exists but could not be started.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;
/// FUSE request threads per sandbox: one program's start-up reads are mostly sequential.
const SANDBOX_FS_THREADS: usize = 2;
/// Signals passed on to the command when they are sent with kill(2). Terminal-generated
/// ones (Ctrl-C, Ctrl-\) reach the command directly, as it shares the caller's terminal.
const FORWARDED: [i32; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];
/// Host devices bound into the sandbox's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn cstr(p: impl AsRef<[u8]>) -> Result<CString, String> {
    CString::new(p.as_ref()).map_err(|_| "a path holds a NUL byte".to_string())
}

fn os_err(what: impl std::fmt::Display) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

fn check(rc: libc::c_int, what: impl std::fmt::Display) -> Result<(), String> {
    if rc < 0 { Err(os_err(what)) } else { Ok(()) }
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let src = source.map(cstr).transpose()?;
    let tgt = cstr(target.as_os_str().as_bytes())?;
    let ty = fstype.map(cstr).transpose()?;
    let dat = data.map(cstr).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string alive for the call.
    let rc = unsafe { libc::mount(ptr(&src), tgt.as_ptr(), ptr(&ty), flags, ptr(&dat).cast()) };
    check(
        rc,
        format_args!(
            "cannot mount {} on {}",
            fstype.or(source).unwrap_or("?"),
            target.display()
        ),
    )
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn waited_signals() -> libc::sigset_t {
    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    sigset(&all)
}

/// Exit status a shell would show for a wait status.
fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        EXIT_SETUP
    }
}

/// Waits for `child`, passing on signals sent with kill(2). Returns its exit status.
/// `on_winch` follows the caller's terminal size when the sandbox has a terminal.
fn supervise(child: libc::pid_t, on_winch: Option<&dyn Fn()>) -> i32 {
    let mut set = waited_signals();
    if on_winch.is_some() {
        // SAFETY: adding to an initialised set.
        unsafe { libc::sigaddset(&mut set, libc::SIGWINCH) };
    }
    loop {
        // SAFETY: siginfo_t is plain data; sigwaitinfo fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is initialised, `info` a valid out-pointer.
        let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if sig < 0 {
            continue; // EINTR
        }
        if sig == libc::SIGWINCH {
            if let Some(resize) = on_winch {
                resize();
            }
        } else if sig == libc::SIGCHLD {
            loop {
                let mut status = 0;
                // SAFETY: plain syscall with a valid out-pointer.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if pid == child {
                    return exit_code(status);
                }
            }
        } else if info.si_code <= 0 {
            // SI_USER, SI_QUEUE, SI_TKILL: sent by a process, not by the terminal.
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child, sig) };
        }
    }
}

/// Where a sandbox keeps its scratch tmpfs mountpoint on the host: an empty directory,
/// removed when the sandbox ends (the tmpfs itself only ever exists in the sandbox's
/// private mount namespace).
fn scratch_parent() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/imgfs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("imgfs"),
        _ => std::env::temp_dir().join(format!("imgfs-{uid}")),
    }
}

/// Removes scratch directories of sandboxes whose supervisor is gone (killed outright).
fn remove_stale_scratch(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        // Only directories named by a pid are scratch areas (not `shared`, for one).
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir(e.path());
        }
    }
}

fn write_file(path: &Path, contents: &str) -> Result<(), String> {
    fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// The supervisor. Returns the exit status for `imgfs run`.
pub fn supervisor(plan: &Plan) -> i32 {
    match supervisor_inner(plan) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imgfs: {e}");
            EXIT_SETUP
        }
    }
}

fn supervisor_inner(plan: &Plan) -> Result<i32, String> {
    // Blocked before any thread exists, so every thread inherits it and only sigwaitinfo
    // takes these signals; the init, forked from this process, inherits it.
    let waited = waited_signals();
    // SAFETY: `waited` is initialised.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &waited, std::ptr::null_mut()) };

    let fs = match plan.live_mount {
        Some(_) => None,
        None => {
            Some(ImageFs::open(&plan.index_path, &plan.archive_path).map_err(|e| e.to_string())?)
        }
    };
    let parent = scratch_parent();
    mkdir(&parent)?;
    remove_stale_scratch(&parent);
    let scratch = parent.join(std::process::id().to_string());
    mkdir(&scratch)?;
    let result = supervise_in_namespaces(plan, fs, &scratch);
    let _ = fs::remove_dir(&scratch);
    result
}

fn enter_namespaces(plan: &Plan) -> Result<(), String> {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if !plan.net_host {
        flags |= libc::CLONE_NEWNET;
    }
    if plan.unprivileged.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare only changes this process's namespaces; it is single-threaded here.
    if unsafe { libc::unshare(flags) } < 0 {
        let err = io::Error::last_os_error();
        let hint = if plan.unprivileged.is_some() {
            " (unprivileged user namespaces must be enabled: sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0)"
        } else {
            ""
        };
        return Err(format!("cannot create namespaces: {err}{hint}"));
    }
    if let Some((uid, gid)) = plan.unprivileged {
        write_file(Path::new("/proc/self/setgroups"), "deny")?;
        write_file(Path::new("/proc/self/uid_map"), &format!("0 {uid} 1"))?;
        write_file(Path::new("/proc/self/gid_map"), &format!("0 {gid} 1"))?;
    }
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
}

fn supervise_in_namespaces(
    plan: &Plan,
    fs: Option<ImageFs>,
    scratch: &Path,
) -> Result<i32, String> {
    if plan.unprivileged.is_some() {
        let fuse = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse");
        if let Err(e) = fuse {
            return Err(format!(
                "cannot open /dev/fuse: {e} (without root it must be world-accessible, crw-rw-rw-, as the fuse3 package sets it up)"
            ));
        }
    }
    enter_namespaces(plan)?;
    mount(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0700"),
    )?;
    let lower = scratch.join("lower");
    for d in ["lower", "root", "files"] {
        mkdir(&scratch.join(d))?;
    }
    // A live mount is bound under a lease, which keeps its server from retiring meanwhile;
    // once bound it lives as long as this namespace. If it is gone, serve the image here.
    let bound = match &plan.live_mount {
        Some(live) => bind_live(live, &lower)
            .map_err(|e| log::info!("not using {}: {e}", live.mountpoint.display()))
            .is_ok(),
        None => false,
    };
    let session = if bound {
        None
    } else {
        let fs = match fs {
            Some(fs) => fs,
            None => {
                ImageFs::open(&plan.index_path, &plan.archive_path).map_err(|e| e.to_string())?
            }
        };
        let options = ServeOptions {
            fsname: plan.fsname.clone(),
            threads: SANDBOX_FS_THREADS,
            idle_exit: None,
        };
        // Mounted now, served once the init is forked: requests wait until then.
        Some(serve::mount(fs, &lower, &options).map_err(|e| e.to_string())?)
    };
    let terminal = if plan.tty {
        // SAFETY: blocking SIGWINCH, which supervise() takes with sigwaitinfo.
        unsafe {
            let winch = sigset(&[libc::SIGWINCH]);
            libc::sigprocmask(libc::SIG_BLOCK, &winch, std::ptr::null_mut());
        }
        Some(Terminal::open(scratch)?)
    } else {
        None
    };

    let pid = fork_init()?;
    if pid == 0 {
        // The init: PID 1 of a new PID namespace, a single-threaded copy of this process.
        let code = init(plan, scratch);
        // SAFETY: leaving the forked copy without running the supervisor's destructors.
        unsafe { libc::_exit(code) };
    }
    // Threads only now, in the supervisor alone.
    let session = match session {
        Some(s) => Some(serve::start(s, &lower).map_err(|e| {
            // SAFETY: the init cannot go on without the image.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            e.to_string()
        })?),
        None => None,
    };
    let output = match &terminal {
        Some(t) => Some(
            t.spawn_copies(plan.interactive)
                .map_err(|e| format!("cannot copy the terminal: {e}"))?,
        ),
        None => None,
    };
    let resize = terminal.as_ref().map(|t| move || t.resize());
    let code = supervise(pid, resize.as_ref().map(|r| r as &dyn Fn()));
    if let Some(out) = output {
        let _ = out.join(); // the command's last output
    }
    drop(terminal); // restores the caller's terminal
    // The mounts live only in this process's namespace and vanish with it; detaching the
    // scratch tmpfs now lets its empty mountpoint on the host be removed.
    if let Ok(c) = cstr(scratch.as_os_str().as_bytes()) {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    std::mem::forget(session);
    Ok(code)
}

/// Binds a live imgfs mount at `lower`, and checks that what got bound is one.
fn bind_live(live: &serve::LiveMount, lower: &Path) -> Result<(), String> {
    let _lease = live.lease().map_err(|e| e.to_string())?;
    let source = live
        .mountpoint
        .to_str()
        .ok_or("the live mount's path is not UTF-8")?;
    mount(
        Some(source),
        lower,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    if serve::find_mount(lower).is_some_and(|m| m.is_imgfs()) {
        return Ok(());
    }
    if let Ok(c) = cstr(lower.as_os_str().as_bytes()) {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    Err("it is no longer an imgfs mount".into())
}

/// Forks the init into a new PID namespace, where it is PID 1: 0 in the child, its pid in
/// the parent. A raw clone, as bubblewrap does, so that the supervisor's own children (its
/// threads) stay in its namespace. Only a single-threaded process may run Rust in such a
/// child, which is checked first. The child dies with the supervisor (PDEATHSIG), and a
/// supervisor that died before the child could ask for that shows as a closed pipe.
fn fork_init() -> Result<libc::pid_t, String> {
    if !super::single_threaded() {
        return Err("cannot start the sandbox: the supervisor must be single-threaded".into());
    }
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "cannot create a pipe",
    )?;
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
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
        return Err(os_err("cannot start the sandbox in a new PID namespace"));
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
        return Ok(0);
    }
    // The write end stays open in the supervisor until it exits.
    std::mem::forget(write);
    Ok(pid as libc::pid_t)
}

/// Opens (creating if missing) `guest` inside the root open at `root`, never leaving it:
/// symlinks and `..` resolve as if `root` were `/`.
fn open_in_root(root: &OwnedFd, guest: &str, file: bool) -> Result<OwnedFd, String> {
    let rel = guest.trim_start_matches('/');
    let comps: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let mut sofar = String::new();
    for (i, comp) in comps.iter().enumerate() {
        if !sofar.is_empty() {
            sofar.push('/');
        }
        sofar.push_str(comp);
        let last = i + 1 == comps.len();
        match resolve_in_root(root, &sofar) {
            Ok(fd) if !last => drop(fd),
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let parent_path = sofar.rsplit_once('/').map_or("", |(p, _)| p);
                let parent = if parent_path.is_empty() {
                    None
                } else {
                    Some(resolve_in_root(root, parent_path).map_err(|e| format!("{guest}: {e}"))?)
                };
                let dirfd = parent.as_ref().map_or(root.as_raw_fd(), |p| p.as_raw_fd());
                let name = cstr(*comp)?;
                // SAFETY: dirfd is open; name is NUL-terminated.
                let rc = if last && file {
                    let fd = unsafe {
                        libc::openat(
                            dirfd,
                            name.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        )
                    };
                    if fd >= 0 {
                        // SAFETY: closing the descriptor we just opened.
                        unsafe { libc::close(fd) };
                    }
                    fd
                } else {
                    unsafe { libc::mkdirat(dirfd, name.as_ptr(), 0o755) }
                };
                if rc < 0 {
                    return Err(os_err(format_args!("cannot create {guest} in the image")));
                }
                if last {
                    return resolve_in_root(root, &sofar).map_err(|e| format!("{guest}: {e}"));
                }
            }
            Err(e) => return Err(format!("{guest} in the image: {e}")),
        }
    }
    // The root itself.
    resolve_in_root(root, ".").map_err(|e| format!("{guest}: {e}"))
}

fn resolve_in_root(root: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    let path = CString::new(rel).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; zero is a valid value for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid dirfd, path and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Mounts on `guest` inside the root (created if missing).
fn mount_in_root(
    root: &OwnedFd,
    guest: &str,
    is_file: bool,
    source: Option<&str>,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let target = open_in_root(root, guest, is_file)?;
    mount(source, &fd_path(&target), fstype, flags, data)
        .map_err(|e| e.replace(&fd_path(&target).display().to_string(), guest))
}

fn bind_in_root(root: &OwnedFd, source: &Path, guest: &str, read_only: bool) -> Result<(), String> {
    let is_file = !source.is_dir();
    let src = source.to_str().ok_or("a volume path is not UTF-8")?;
    let target = open_in_root(root, guest, is_file)?;
    let target_path = fd_path(&target);
    mount(
        Some(src),
        &target_path,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(|e| e.replace(&target_path.display().to_string(), guest))?;
    if read_only {
        // The bind now sits on the magic link's target; remount it through the same link.
        let fresh = open_in_root(root, guest, is_file)?;
        mount(
            None,
            &fd_path(&fresh),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
            None,
        )
        .map_err(|e| format!("{guest}: {e}"))?;
    }
    Ok(())
}

/// The init: PID 1 of the sandbox.
fn init(plan: &Plan, scratch: &Path) -> i32 {
    // The command's status becomes ours; any error before it runs is one line.
    match init_inner(plan, scratch) {
        Ok(code) => code,
        Err((code, e)) => {
            eprintln!("imgfs: {e}");
            code
        }
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

fn init_inner(plan: &Plan, scratch: &Path) -> Result<i32, (i32, String)> {
    let setup = |e: String| (EXIT_SETUP, e);
    // PID 1 gets only the signals it has a handler for: install no-op handlers, then take
    // the (still blocked) signals with sigwaitinfo.
    for sig in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
        // SAFETY: a zeroed sigaction with a valid handler function.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigaction(*sig, &sa, std::ptr::null_mut());
        }
    }
    // A mount namespace of its own, so that pivot_root below moves only the sandbox: the
    // supervisor keeps the host's root and can clean up after it.
    // SAFETY: unshare only changes this single-threaded process's mount namespace.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWNS) },
        "cannot create a mount namespace",
    )
    .map_err(setup)?;
    let root_dir = scratch.join("root");
    let lower = scratch.join("lower");
    if plan.read_only {
        mount(
            Some(path_str(&lower)?),
            &root_dir,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )
        .map_err(setup)?;
        mount(
            None,
            &root_dir,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )
        .map_err(setup)?;
    } else {
        let (upper, work) = match &plan.rw_dir {
            Some(dir) => (dir.join("upper"), dir.join("work")),
            None => (scratch.join("upper"), scratch.join("work")),
        };
        mkdir(&upper).map_err(setup)?;
        mkdir(&work).map_err(setup)?;
        let mut options = format!(
            "lowerdir={},upperdir={},workdir={}",
            path_str(&lower)?,
            path_str(&upper)?,
            path_str(&work)?
        );
        if plan.unprivileged.is_some() {
            options.push_str(",userxattr");
        }
        mount(
            Some("overlay"),
            &root_dir,
            Some("overlay"),
            libc::MS_NODEV,
            Some(&options),
        )
        .map_err(setup)?;
    }
    let root = open_dir(&root_dir).map_err(setup)?;

    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount_in_root(
        &root,
        "/proc",
        false,
        Some("proc"),
        Some("proc"),
        nodev,
        None,
    )
    .map_err(setup)?;
    // /sys cannot always be mounted in a new network namespace; it is optional.
    let _ = mount_in_root(
        &root,
        "/sys",
        false,
        Some("sysfs"),
        Some("sysfs"),
        nodev | libc::MS_RDONLY,
        None,
    );
    mount_in_root(
        &root,
        "/dev",
        false,
        Some("tmpfs"),
        Some("tmpfs"),
        libc::MS_NOSUID,
        Some("mode=0755"),
    )
    .map_err(setup)?;
    for dev in DEVICES {
        let host = Path::new("/dev").join(dev);
        if host.exists() {
            bind_in_root(&root, &host, &format!("/dev/{dev}"), false).map_err(setup)?;
        }
    }
    if plan.tty {
        // The supervisor's devpts instance, which holds the command's terminal.
        bind_in_root(&root, &scratch.join("pts"), "/dev/pts", false).map_err(setup)?;
    } else {
        mount_in_root(
            &root,
            "/dev/pts",
            false,
            Some("devpts"),
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )
        .map_err(setup)?;
    }
    mount_in_root(
        &root,
        "/dev/shm",
        false,
        Some("tmpfs"),
        Some("tmpfs"),
        nodev,
        Some("mode=1777"),
    )
    .map_err(setup)?;
    // /dev is our own tmpfs now, so its links can be made through its real path.
    let dev = open_in_root(&root, "/dev", false).map_err(setup)?;
    let dev_dir = fs::read_link(fd_path(&dev)).map_err(|e| setup(format!("/dev: {e}")))?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev_dir.join(name))
            .map_err(|e| setup(format!("cannot create /dev/{name}: {e}")))?;
    }
    drop(dev);
    mount_in_root(
        &root,
        "/tmp",
        false,
        Some("tmpfs"),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(setup)?;

    // /etc files that make sense inside.
    let files = scratch.join("files");
    let hosts = if plan.net_host {
        fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            plan.hostname
        )
    };
    let resolv = if plan.net_host {
        fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    } else {
        "# no network in this sandbox (imgfs run --net host shares the host's)\n".to_string()
    };
    for (name, contents) in [
        ("hosts", hosts),
        ("hostname", format!("{}\n", plan.hostname)),
        ("resolv.conf", resolv),
    ] {
        let path = files.join(name);
        write_file(&path, &contents).map_err(setup)?;
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o644));
        let guest = format!("/etc/{name}");
        if plan.read_only && resolve_in_root(&root, &guest[1..]).is_err() {
            continue; // nowhere to bind it on a read-only root
        }
        bind_in_root(&root, &path, &guest, false).map_err(setup)?;
    }
    for v in &plan.volumes {
        bind_in_root(&root, &v.host, &v.guest, v.read_only).map_err(setup)?;
    }

    let hostname = plan.hostname.as_bytes();
    // SAFETY: pointer and length describe `hostname`.
    check(
        unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) },
        "cannot set the hostname",
    )
    .map_err(setup)?;
    if !plan.net_host {
        loopback_up().map_err(setup)?;
    }

    // Enter the root.
    let root_path = fd_path(&root);
    std::env::set_current_dir(&root_path)
        .map_err(|e| setup(format!("cannot enter the root: {e}")))?;
    let dot = cstr(".").map_err(setup)?;
    // SAFETY: pivot_root(".", ".") stacks the old root under the new one; both strings valid.
    check(
        unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as i32,
        "pivot_root",
    )
    .map_err(setup)?;
    // SAFETY: detaching the old root, now mounted on "." above the new one.
    check(
        unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) },
        "cannot detach the host root",
    )
    .map_err(setup)?;
    std::env::set_current_dir("/").map_err(|e| setup(e.to_string()))?;
    drop(root);

    // The working directory is made if missing, as docker does.
    if !Path::new(&plan.cwd).is_dir() {
        mkdir(Path::new(&plan.cwd)).map_err(setup)?;
        // SAFETY: chown of a path we just created.
        let c = cstr(plan.cwd.as_bytes()).map_err(setup)?;
        unsafe { libc::chown(c.as_ptr(), plan.uid, plan.gid) };
    }
    let program = find_program(plan).map_err(|e| (EXIT_NOT_FOUND, e))?;
    let prepared = Prepared::new(plan, &program).map_err(setup)?;

    // SAFETY: single-threaded process; the child only calls async-signal-safe functions on
    // data prepared above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(setup(os_err("cannot start the command")));
    }
    if pid == 0 {
        prepared.exec();
    }
    Ok(supervise(pid, None))
}

fn path_str(p: &Path) -> Result<&str, (i32, String)> {
    p.to_str()
        .ok_or((EXIT_SETUP, format!("{} is not UTF-8", p.display())))
}

fn open_dir(p: &Path) -> Result<OwnedFd, String> {
    let c = cstr(p.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(os_err(format_args!("cannot open {}", p.display())));
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Brings up `lo` in the new network namespace.
fn loopback_up() -> Result<(), String> {
    // SAFETY: a datagram socket only used for the interface ioctls below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(os_err("cannot configure the loopback interface"));
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
        libc::close(sock);
        rc
    };
    check(rc, "cannot bring up the loopback interface")
}

/// Finds the command on the image's PATH (from the sandbox's environment, not the
/// caller's), as docker does.
fn find_program(plan: &Plan) -> Result<PathBuf, String> {
    let name = &plan.argv[0];
    let executable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = Path::new(&plan.cwd).join(name);
        return if p.exists() {
            Ok(p)
        } else {
            Err(format!("exec: \"{name}\": no such file or directory"))
        };
    }
    let path = plan
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(super::plan::DEFAULT_PATH);
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| executable(p))
        .ok_or_else(|| format!("exec: \"{name}\": executable file not found in $PATH"))
}

/// What the command's process needs, allocated before the fork.
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    dev_null: CString,
    terminal: Option<CString>,
    groups: Vec<libc::gid_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    interactive: bool,
}

impl Prepared {
    fn new(plan: &Plan, program: &Path) -> Result<Prepared, String> {
        Ok(Prepared {
            program: cstr(program.as_os_str().as_bytes())?,
            argv: plan.argv.iter().map(cstr).collect::<Result<_, _>>()?,
            env: plan.env.iter().map(cstr).collect::<Result<_, _>>()?,
            cwd: cstr(plan.cwd.as_bytes())?,
            dev_null: cstr("/dev/null")?,
            terminal: if plan.tty {
                Some(cstr(pty::SLAVE)?)
            } else {
                None
            },
            groups: plan.groups.clone(),
            uid: plan.uid,
            gid: plan.gid,
            interactive: plan.interactive || plan.tty,
        })
    }

    /// In the forked child: becomes the command. Never returns.
    fn exec(&self) -> ! {
        let fail = |msg: &CStr, code: i32| -> ! {
            // SAFETY: write(2) and _exit are async-signal-safe; msg is NUL-terminated.
            unsafe {
                let b = msg.to_bytes();
                libc::write(2, b.as_ptr().cast(), b.len());
                libc::_exit(code)
            }
        };
        let argv: Vec<*const libc::c_char> = self
            .argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let env: Vec<*const libc::c_char> = self
            .env
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        // SAFETY: the calls below are async-signal-safe and use memory prepared before fork.
        unsafe {
            let empty = sigset(&[]);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for sig in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
                libc::signal(*sig, libc::SIG_DFL);
            }
            if let Some(slave) = &self.terminal {
                if !pty::attach(slave) {
                    fail(c"imgfs: cannot attach the sandbox's terminal\n", EXIT_SETUP);
                }
            } else if !self.interactive {
                let fd = libc::open(self.dev_null.as_ptr(), libc::O_RDONLY);
                if fd >= 0 {
                    libc::dup2(fd, 0);
                    libc::close(fd);
                }
            }
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                && libc::getuid() == 0
                && self.groups != [0]
            {
                fail(c"imgfs: cannot set the supplementary groups\n", EXIT_SETUP);
            }
            if libc::setgid(self.gid) != 0 || libc::setuid(self.uid) != 0 {
                fail(c"imgfs: cannot switch to the requested user\n", EXIT_SETUP);
            }
            if libc::chdir(self.cwd.as_ptr()) != 0 {
                fail(c"imgfs: cannot enter the working directory\n", EXIT_SETUP);
            }
            libc::execve(self.program.as_ptr(), argv.as_ptr(), env.as_ptr());
            let code = if *libc::__errno_location() == libc::ENOENT {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXEC
            };
            fail(c"imgfs: cannot execute the command\n", code)
        }
    }
}
