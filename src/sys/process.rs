//! Process system calls: fork and clone into new namespaces, exit, kill and wait, unshare,
//! the parent-death signal, no_new_privs and seccomp filters, the CPU affinity, signal sets,
//! masks and handlers, ids, the calls a forked child makes on its way to exec, bringing up
//! the loopback interface of a new network namespace, and the process that removes a
//! sandbox's cgroups once its supervisor is gone.
//!
//! Each is a safe function whose contract makes it sound. The two that fork ([`fork`],
//! [`fork_into`]) refuse unless this process has a single thread, so the child is a whole
//! copy that may go on running any Rust code; the third, [`spawn_group_remover`], forks
//! from any thread, since its child runs only code of this module written for that. The
//! ones a child uses between fork and exec ([`set_mask`], [`default_action`],
//! [`redirect_stdio`], [`set_groups`], [`set_gid`], [`set_uid`], [`chdir`],
//! [`set_no_new_privs`], [`load_seccomp_filter`], [`execve`], [`write_stderr`],
//! [`exit_now`]) take what they need ready-made and neither allocate nor lock: they are
//! async-signal-safe.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::SysError;

/// A process id as the kernel hands it out.
pub(crate) type Pid = libc::pid_t;

/// Which side of a fork this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forked {
    /// The new process.
    Child,
    /// The caller, with the new process's id.
    Parent(Pid),
}

/// The namespace flags [`fork_into`] and [`unshare`] accept: nothing that shares memory,
/// descriptors or signal handlers.
const NAMESPACES: libc::c_int = libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWUTS;

fn forked(pid: libc::c_long, op: &'static str) -> Result<Forked, SysError> {
    match pid {
        ..0 => Err(SysError::last(op)),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as Pid)),
    }
}

/// fork(2). Refused with [`SysError::Threads`] unless this process has a single thread.
pub(crate) fn fork() -> Result<Forked, SysError> {
    if !super::single_threaded() {
        return Err(SysError::Threads { op: "fork" });
    }
    // SAFETY: this process has one thread (checked above; only that thread, which is here,
    // could have started another since). So no other thread holds a lock the child would
    // inherit held, and the child, a whole copy, may go on running any code.
    forked(unsafe { libc::fork() }.into(), "fork")
}

/// fork(2) into new namespaces (`CLONE_NEW*` flags only): a raw clone without `CLONE_VM`
/// and with a null stack, so that the child is a copy of this process, as after fork, and
/// the caller's later children (its threads) stay in the caller's namespaces. Refused with
/// [`SysError::Threads`] unless this process has a single thread.
pub(crate) fn fork_into(namespaces: libc::c_int) -> Result<Forked, SysError> {
    if namespaces & !NAMESPACES != 0 {
        return Err(SysError::Call {
            op: "clone",
            cause: io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    if !super::single_threaded() {
        return Err(SysError::Threads { op: "clone" });
    }
    let flags = (namespaces | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone without CLONE_VM and with a null stack behaves as fork: the child gets a
    // copy of this (single-threaded, checked above) process and returns here with 0. The
    // flags only ask for new namespaces, which share nothing with the parent.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    forked(pid, "clone")
}

/// _exit(2): ends this process now, without running destructors or exit handlers (in a
/// forked copy, those are the parent's to run). Async-signal-safe.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; what it skips (destructors, buffers) only leaks.
    unsafe { libc::_exit(code) }
}

/// kill(2).
pub(crate) fn kill(pid: Pid, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// waitpid(2): the pid and wait status of a child that changed state, or `None` when, with
/// `WNOHANG`, none has.
pub(crate) fn waitpid(pid: Pid, flags: libc::c_int) -> io::Result<Option<(Pid, libc::c_int)>> {
    let mut status = 0;
    // SAFETY: a plain call with a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, flags) };
    match waited {
        ..0 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some((pid, status))),
    }
}

/// unshare(2) of namespaces (`CLONE_NEW*` flags only) for this process. The kernel refuses
/// a new user namespace to a process with several threads.
pub(crate) fn unshare(namespaces: libc::c_int) -> io::Result<()> {
    if namespaces & !NAMESPACES != 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: unshare takes flags only; new namespaces change what this process sees of the
    // system, never its memory or the descriptors it owns.
    if unsafe { libc::unshare(namespaces) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// setns(2): moves this process into the namespace `ns` refers to, of the one kind
/// `namespace` names (a `CLONE_NEW*` flag). A user namespace takes a single-threaded process.
pub(crate) fn setns(ns: BorrowedFd, namespace: libc::c_int) -> io::Result<()> {
    if namespace & !NAMESPACES != 0 || namespace.count_ones() != 1 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `ns` is an open descriptor borrowed for the call; joining a namespace changes
    // what this process sees of the system, never its memory or the descriptors it owns.
    if unsafe { libc::setns(ns.as_raw_fd(), namespace) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks for `signal` when the parent dies (prctl `PR_SET_PDEATHSIG`).
pub(crate) fn set_parent_death_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets no_new_privs for this thread and every process it starts (prctl
/// `PR_SET_NO_NEW_PRIVS`): execve no longer grants privileges (setuid bits, file
/// capabilities), and a seccomp filter may be loaded without CAP_SYS_ADMIN. It cannot be
/// unset. Async-signal-safe.
pub(crate) fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with constant integer arguments; it only sets a flag of this thread.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Installs the classic BPF program `filter` as a seccomp filter on the calling thread
/// (seccomp(2), `SECCOMP_SET_MODE_FILTER`, no flags), inherited by the processes it starts
/// and kept across execve. Without CAP_SYS_ADMIN, [`set_no_new_privs`] must come first.
/// Neither allocates nor locks: async-signal-safe, for a forked child just before exec.
///
/// The kernel checks the program (jumps in bounds, a return at the end) and refuses one it
/// does not accept; once loaded, a filter only makes later system calls fail or end the
/// thread, both of which every caller of a system call already has to expect.
pub(crate) fn load_seccomp_filter(filter: &[libc::sock_filter]) -> io::Result<()> {
    let len =
        u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        // The kernel only reads through this pointer.
        filter: filter.as_ptr().cast_mut(),
    };
    let flags: libc::c_uint = 0;
    // SAFETY: prog points at `len` initialized instructions borrowed for the whole call;
    // seccomp(2) copies them and keeps no pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How many CPUs this thread may run on: its affinity mask (sched_getaffinity(2)), counted.
pub(crate) fn affinity_cpus() -> io::Result<u32> {
    // SAFETY: cpu_set_t is plain data, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the size passed is that of `set`, a valid out-pointer.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: counts the bits of a set the kernel filled.
    Ok(unsafe { libc::CPU_COUNT(&set) }.unsigned_abs())
}

/// Whether `fd` is readable (or at its end, or broken) within `timeout_ms` (poll(2)).
pub(crate) fn poll_readable(fd: BorrowedFd, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, alive for the call.
    match unsafe { libc::poll(&mut poll, 1, timeout_ms) } {
        ..0 => Err(io::Error::last_os_error()),
        n => Ok(n != 0),
    }
}

/// A set of signals.
#[derive(Clone, Copy)]
pub(crate) struct SigSet(libc::sigset_t);

impl SigSet {
    /// No signal.
    pub(crate) fn empty() -> SigSet {
        // SAFETY: sigset_t is plain data, and sigemptyset initialises it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            SigSet(set)
        }
    }

    /// Every signal.
    pub(crate) fn full() -> SigSet {
        // SAFETY: sigset_t is plain data, and sigfillset initialises it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut set);
            SigSet(set)
        }
    }

    /// `signals` (numbers that are no signal are left out).
    pub(crate) fn of(signals: &[libc::c_int]) -> SigSet {
        let mut set = SigSet::empty();
        for &s in signals {
            // SAFETY: sigaddset on a set initialised by `empty`.
            unsafe { libc::sigaddset(&mut set.0, s) };
        }
        set
    }
}

impl std::fmt::Debug for SigSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: sigismember reads a set initialised by `empty` or `full`.
        let members = (1..=64).filter(|&s| unsafe { libc::sigismember(&self.0, s) } == 1);
        f.debug_set().entries(members).finish()
    }
}

fn sigprocmask(how: libc::c_int, set: &SigSet) {
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    unsafe { libc::sigprocmask(how, &set.0, std::ptr::null_mut()) };
}

/// Blocks `set` for this thread (and every thread or child started after).
pub(crate) fn block(set: &SigSet) {
    sigprocmask(libc::SIG_BLOCK, set);
}

/// Makes `set` this thread's signal mask. Async-signal-safe.
pub(crate) fn set_mask(set: &SigSet) {
    sigprocmask(libc::SIG_SETMASK, set);
}

/// Blocks `set` for the calling thread (pthread_sigmask), and so for every thread it
/// starts from then on.
pub(crate) fn block_in_thread(set: &SigSet) {
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set.0, std::ptr::null_mut()) };
}

/// A signal taken by [`wait_signal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caught {
    pub signal: libc::c_int,
    /// `si_code`: how it was sent.
    pub code: libc::c_int,
}

impl Caught {
    /// Sent by a process (SI_USER, SI_QUEUE, SI_TKILL), not by the kernel or the terminal.
    pub(crate) fn sent_by_process(&self) -> bool {
        self.code <= 0
    }
}

/// sigwaitinfo(2): takes one pending signal of `set` (blocked beforehand), waiting for one.
pub(crate) fn wait_signal(set: &SigSet) -> io::Result<Caught> {
    // SAFETY: siginfo_t is plain data; sigwaitinfo fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is initialised, `info` a valid out-pointer.
    let signal = unsafe { libc::sigwaitinfo(&set.0, &mut info) };
    if signal < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Caught {
        signal,
        code: info.si_code,
    })
}

/// sigwait(3): takes one pending signal of `set` (blocked beforehand), waiting for one.
pub(crate) fn sigwait(set: &SigSet) -> io::Result<libc::c_int> {
    let mut signal = 0;
    // SAFETY: `set` is initialised and `signal` is a valid out-pointer.
    match unsafe { libc::sigwait(&set.0, &mut signal) } {
        0 => Ok(signal),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs a handler for `signal` that does nothing: the signal no longer has its default
/// action (for PID 1, whether it is delivered at all), and can still be taken while blocked.
pub(crate) fn set_noop_handler(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a zeroed sigaction (empty mask, no flags) with a handler that does nothing,
    // which is async-signal-safe.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(signal, &sa, std::ptr::null_mut())
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `signal` its default action again. Async-signal-safe.
pub(crate) fn default_action(signal: libc::c_int) {
    // SAFETY: SIG_DFL installs no code of ours.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

/// The effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The real user id. Async-signal-safe.
pub(crate) fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The effective user and group ids.
pub(crate) fn effective_ids() -> (u32, u32) {
    // SAFETY: getegid has no preconditions and cannot fail.
    (euid(), unsafe { libc::getegid() })
}

/// setgroups(2). Async-signal-safe.
pub(crate) fn set_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: pointer and length describe `groups`.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// setgid(2). Async-signal-safe.
pub(crate) fn set_gid(gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: an integer argument; glibc applies it to every thread.
    if unsafe { libc::setgid(gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// setuid(2). Async-signal-safe.
pub(crate) fn set_uid(uid: libc::uid_t) -> io::Result<()> {
    // SAFETY: an integer argument; glibc applies it to every thread.
    if unsafe { libc::setuid(uid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// chdir(2). Async-signal-safe.
pub(crate) fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: a NUL-terminated path alive for the call.
    if unsafe { libc::chdir(path.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes each of the standard descriptors `targets` (0, 1 or 2; others are refused) a copy
/// of `fd`, then closes `fd` unless it is one of them. Errors are reported after every
/// target was tried. Async-signal-safe.
pub(crate) fn redirect_stdio(fd: OwnedFd, targets: &[RawFd]) -> io::Result<()> {
    let mut result = Ok(());
    for &target in targets {
        if !(0..=2).contains(&target) {
            result = Err(io::Error::from_raw_os_error(libc::EBADF));
            continue;
        }
        // SAFETY: `fd` is open. The standard descriptors belong to the process as a whole,
        // not to an `OwnedFd`, so replacing them breaks no owner's hold.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            result = Err(io::Error::last_os_error());
        }
    }
    if targets.contains(&fd.as_raw_fd()) {
        // Now one of the standard descriptors: it stays open.
        let _ = fd.into_raw_fd();
    }
    result
}

/// Strings for [`execve`]: owned C strings and the NULL-terminated array of pointers to
/// them that execve takes, made once (before a fork) and never changed.
pub(crate) struct CStrings {
    /// Read only by tests: it owns what `pointers` point into.
    _strings: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

impl CStrings {
    pub(crate) fn new(strings: Vec<CString>) -> CStrings {
        // The pointers point into each CString's own heap buffer, which moving the Vec
        // (or this struct) does not move.
        let pointers = strings
            .iter()
            .map(|s| s.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        CStrings {
            _strings: strings,
            pointers,
        }
    }

    #[cfg(test)]
    pub(crate) fn as_slice(&self) -> &[CString] {
        &self._strings
    }
}

/// execve(2): replaces this process with `program`. Returns only on failure, with why.
/// Async-signal-safe.
pub(crate) fn execve(program: &CStr, argv: &CStrings, env: &CStrings) -> io::Error {
    // SAFETY: `program` is NUL-terminated; both arrays are NULL-terminated arrays of
    // pointers to the NUL-terminated strings their `CStrings` owns, alive for the call.
    unsafe {
        libc::execve(
            program.as_ptr(),
            argv.pointers.as_ptr(),
            env.pointers.as_ptr(),
        )
    };
    io::Error::last_os_error()
}

/// Writes `message` to stderr with one write(2), ignoring failure. Async-signal-safe.
pub(crate) fn write_stderr(message: &[u8]) {
    // SAFETY: pointer and length describe `message`; fd 2 is only written to.
    unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
}

/// Lets `fd` pass to the programs this process starts (clears its close-on-exec flag), and
/// returns its number, for a program told `/proc/self/fd/N`.
pub(crate) fn inheritable(fd: &OwnedFd) -> io::Result<RawFd> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl(2) with integer arguments on a descriptor `fd` owns while borrowed.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(raw)
}

/// Brings up `lo` in this process's network namespace.
pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket only used for the interface ioctls below; the result is
    // checked before it is owned.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: the socket is ours; ifreq is plain data with the name set within bounds.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req);
        }
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A group of processes to remove (a cgroup), made before [`spawn_group_remover`] forks:
/// its directory, the file listing its processes (`cgroup.procs`: decimal pids, one a line),
/// and the file that kills them all at once when `1` is written to it (cgroup v2's
/// `cgroup.kill`), when there is one.
#[derive(Clone, Debug)]
pub(crate) struct GroupDir {
    pub dir: CString,
    pub procs: CString,
    pub kill: Option<CString>,
}

/// Forks a process that removes `groups` once the caller is gone, however it ends. It waits
/// for end-of-file on `wait`, the read end of a pipe whose write end the caller keeps
/// (close-on-exec, so that no command it starts inherits it), which comes when the last copy
/// of that end closes. Then, until every group is gone and at most `tries` times `step`
/// apart, it removes each group that is empty and kills the processes of each other one.
/// Returns the new process's pid; `wait` is closed in the caller.
///
/// Sound in a process of several threads, unlike [`fork`], because the child runs nothing
/// but code of this module written for it: a new session, every signal
/// blocked, `/` as its working directory and every descriptor closed but `wait`, then the
/// wait and the removal. That code allocates nothing, takes no lock another thread could
/// have held at the fork, makes only async-signal-safe calls, reads only memory made before
/// the fork (`groups`), and ends with `_exit`, never returning into the caller's code.
pub(crate) fn spawn_group_remover(
    wait: OwnedFd,
    groups: &[GroupDir],
    tries: u32,
    step: Duration,
) -> io::Result<Pid> {
    // SAFETY: the child runs only `remove_groups`, which keeps to async-signal-safe calls on
    // memory made before the fork and never returns (see above).
    match unsafe { libc::fork() } {
        ..0 => Err(io::Error::last_os_error()),
        0 => remove_groups(wait.as_fd(), groups, tries, step),
        pid => Ok(pid),
    }
}

/// The group remover's whole life, in the forked child: only async-signal-safe calls, no
/// allocation. Never returns.
fn remove_groups(wait: BorrowedFd, groups: &[GroupDir], tries: u32, step: Duration) -> ! {
    let _ = super::term::setsid();
    set_mask(&SigSet::full());
    let _ = chdir(c"/");
    let wait = wait.as_raw_fd();
    // SAFETY: this process was just forked and runs only this function, which uses no
    // descriptor but `wait` and ends with `_exit`: no owner of the others is used again.
    unsafe { close_all_but(wait) };
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into a local.
        let n = unsafe { libc::read(wait, (&raw mut byte).cast(), 1) };
        if n == 0 || (n < 0 && errno() != libc::EINTR) {
            break;
        }
    }
    // SAFETY: `wait` is not used after.
    unsafe { libc::close(wait) };
    let step = libc::timespec {
        tv_sec: step.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_nsec: step.subsec_nanos().into(),
    };
    for _ in 0..tries {
        let mut left = false;
        for g in groups {
            left |= !remove_group(g);
        }
        if !left {
            break;
        }
        // SAFETY: a valid timespec; a null remainder is allowed.
        unsafe { libc::nanosleep(&step, std::ptr::null_mut()) };
    }
    exit_now(0)
}

/// errno as it is now, without allocating.
fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Closes every descriptor of this process but `keep` (close_range(2); one close(2) at a
/// time up to the descriptor limit on kernels before 5.9). Async-signal-safe.
///
/// # Safety
///
/// The descriptors it closes may be owned by `OwnedFd`s, `File`s and the like anywhere in
/// this process's memory, which would go on using, or closing, numbers that by then name
/// something else. Only a process just forked that runs nothing but code of this file and
/// ends with `_exit`, never returning to code that could reach such an owner, may call it.
unsafe fn close_all_but(keep: RawFd) {
    let keep = keep.unsigned_abs();
    // SAFETY: integer arguments only; that no owner of the descriptors closed is used again
    // is the caller's promise.
    unsafe {
        let below = keep == 0 || libc::syscall(libc::SYS_close_range, 0u32, keep - 1, 0u32) == 0;
        let above = libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32) == 0;
        if !(below && above) {
            // Kernels before 5.9: every descriptor the limit allows.
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            let max = limit.rlim_cur.min(1 << 20) as u32;
            for fd in (0..max).filter(|&fd| fd != keep) {
                libc::close(fd as RawFd);
            }
        }
    }
}

/// Removes one group, or kills what it holds, without allocating. True when it is gone.
fn remove_group(g: &GroupDir) -> bool {
    // SAFETY: NUL-terminated paths made before the fork; a buffer on the stack; descriptors
    // this function opens and closes itself.
    unsafe {
        if libc::rmdir(g.dir.as_ptr()) == 0 || errno() == libc::ENOENT {
            return true;
        }
        if let Some(kill) = &g.kill {
            let fd = libc::open(kill.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"1".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
        let fd = libc::open(g.procs.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let mut buf = [0u8; 512];
        let mut pid: libc::pid_t = 0;
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            for &b in &buf[..n.unsigned_abs()] {
                if b.is_ascii_digit() {
                    pid = pid.saturating_mul(10).saturating_add(i32::from(b - b'0'));
                } else {
                    if pid > 0 {
                        libc::kill(pid, libc::SIGKILL);
                    }
                    pid = 0;
                }
            }
        }
        if pid > 0 {
            libc::kill(pid, libc::SIGKILL);
        }
        libc::close(fd);
        false
    }
}

/// A system call a test makes to see what a seccomp filter lets through, with arguments
/// that touch no memory whatever the call does with them.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Probe {
    /// keyctl(2) `KEYCTL_GET_KEYRING_ID` of key 0, which no key has.
    Keyctl,
    /// clone3(2) with no arguments, refused before it would read any.
    Clone3,
    /// personality(2) with `persona`; `0xffffffff` only reads it.
    Personality(u32),
}

/// Makes the system call `call` stands for: its return value, or errno.
#[cfg(test)]
pub(crate) fn probe(call: Probe) -> io::Result<libc::c_long> {
    // SAFETY: each call takes integers only (a null pointer with a size of 0 for clone3),
    // so it reads and writes no memory of this process.
    let rc = unsafe {
        match call {
            Probe::Keyctl => libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0),
            Probe::Clone3 => libc::syscall(libc::SYS_clone3, 0, 0),
            Probe::Personality(persona) => libc::syscall(libc::SYS_personality, persona),
        }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forks_are_refused_with_threads() {
        // The test harness runs tests on threads of their own.
        let other =
            std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        assert!(matches!(fork(), Err(SysError::Threads { op: "fork" })));
        assert!(matches!(
            fork_into(libc::CLONE_NEWPID),
            Err(SysError::Threads { op: "clone" })
        ));
        other.join().unwrap();
    }

    #[test]
    fn only_namespace_flags() {
        let e = fork_into(libc::CLONE_VM).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        let e = unshare(libc::CLONE_FILES).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn signal_sets() {
        let set = SigSet::of(&[libc::SIGTERM, libc::SIGINT]);
        assert_eq!(
            format!("{set:?}"),
            format!("{{{}, {}}}", libc::SIGINT, libc::SIGTERM)
        );
        assert_eq!(format!("{:?}", SigSet::empty()), "{}");
        assert!(
            !Caught {
                signal: libc::SIGINT,
                code: 0x80
            }
            .sent_by_process()
        );
        assert!(
            Caught {
                signal: libc::SIGINT,
                code: 0
            }
            .sent_by_process()
        );
    }

    #[test]
    fn exec_arrays_end_with_null() {
        let s = CStrings::new(vec![c"a".into(), c"bc".into()]);
        assert_eq!(s.pointers.len(), 3);
        assert!(s.pointers[2].is_null());
        assert_eq!(s.as_slice()[1].as_bytes(), b"bc");
    }

    #[test]
    fn group_remover_waits_for_the_pipe_to_close() {
        let dir = std::env::temp_dir().join(format!("imgfs-sys-remover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let groups = [GroupDir {
            dir: super::super::path_cstr(&dir).unwrap(),
            procs: c"/nonexistent/cgroup.procs".into(),
            kill: None,
        }];
        let (read, write) = std::io::pipe().unwrap();
        let step = Duration::from_millis(1);
        let pid = spawn_group_remover(read.into(), &groups, 1000, step).unwrap();
        std::thread::sleep(20 * step);
        assert!(dir.exists());
        drop(write);
        let (waited, status) = waitpid(pid, 0).unwrap().unwrap();
        assert_eq!((waited, super::super::exit_code(status)), (pid, 0));
        assert!(!dir.exists());
    }

    #[test]
    fn cpus_of_the_affinity_mask() {
        let n = affinity_cpus().unwrap();
        assert!(n >= 1 && n as usize <= libc::CPU_SETSIZE as usize, "{n}");
    }

    #[test]
    fn stdio_targets_only() {
        let (r, _w) = std::io::pipe().unwrap();
        let e = redirect_stdio(r.into(), &[3]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }
}
