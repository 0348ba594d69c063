//! A mount that outlives its server: the keeper, a small process that holds a copy of the
//! mount's FUSE connection and starts a new server on it whenever one dies.
//!
//! `imgfs __serve` runs as the keeper of one mount. It forks the server, which opens the
//! image, mounts it and hands the keeper a copy of the connection's descriptor (over a socket,
//! `SCM_RIGHTS`). The kernel ends a FUSE connection only when the last descriptor of it
//! closes, so from then on a server that dies — killed, crashed, out of memory — leaves the
//! connection alive: the keeper forks another server, which takes the same connection over
//! without a new mount or INIT ([`Connection::Resume`]) and asks the kernel to send again what
//! the dead one had read but not answered (`FUSE_NOTIFY_RESEND`, Linux 6.9 and later). Readers
//! wait meanwhile, and none sees an error. Node ids and file contents come from the image's
//! index, so the new server needs nothing of the dead one's.
//!
//! On SIGUSR2 the keeper replaces itself (execve, keeping the descriptor and its child) with
//! the binary now installed at the path it was started from, and the new keeper replaces the
//! server with one of its own: a live upgrade (`imgfs mounts --restart`). SIGTERM, SIGINT and
//! SIGHUP go on to the server, which unmounts; the keeper ends with it.
//!
//! Never a dead mount: when the mount is gone, the keeper ends; when servers keep dying young
//! (within [`YOUNG`] of serving: a request that kills every server it reaches, say), it
//! waits longer before each new one ([`QUICK_RESTARTS`], [`MAX_BACKOFF`]) and after
//! [`RESTARTS`] within [`RESTART_WINDOW`] detaches the mount and ends rather than leave a
//! connection nobody answers. A server that served longer is replaced at once, however often. What runs where is in a record ([`ServerRecord`]) in
//! the caller's runtime directory, for `imgfs mounts`.
//!
//! The keeper is single-threaded and waits in sigwait; it opens no image and holds only the
//! descriptor, so it is small and has little to crash on.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{MountInfo, mount_at, shared::runtime_dir, stop_signals};
use crate::sys::process::{self, Forked, Pid, SigSet};
use crate::sys::{self, Durability};

/// A server that dies before it serves, or within this of starting to serve, died young: the
/// kind of death a request that kills every server it reaches causes again and again (the
/// kernel resends it at once), however long the server took to open its image.
pub const YOUNG: Duration = Duration::from_secs(1);
/// Young deaths within [`RESTART_WINDOW`] at which the keeper gives up.
pub const RESTARTS: usize = 20;
/// See [`RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Young deaths within [`RESTART_WINDOW`] after which a new server is not started at once:
/// each further one waits 0.1 s, twice as long as the one before, at most [`MAX_BACKOFF`].
pub const QUICK_RESTARTS: usize = 5;
/// See [`QUICK_RESTARTS`].
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The runtime directory holding the keepers' records ([`runtime_dir`]).
const SERVERS_LEAF: &str = "servers";
/// The option a keeper passes to the binary it executes: the descriptor it holds.
pub const HELD_FD_OPTION: &str = "--held-fd";
/// The option a keeper passes to the binary it executes: its running server.
pub const SERVER_OPTION: &str = "--server-pid";

/// How a server gets its mount's FUSE connection.
pub enum Connection {
    /// Mounts anew. A copy of the new connection's descriptor goes to the keeper over
    /// `handover`, when there is one.
    Mount { handover: Option<UnixStream> },
    /// Takes over a live connection another server initialized; `fd` is a copy of it.
    Resume(OwnedFd),
}

/// What a keeper that replaced itself (execve) was handed: the connection it holds and the
/// server it had started.
pub struct Held {
    fd: OwnedFd,
    server: Pid,
}

impl Held {
    /// Takes what a keeper named on the command line of the binary it executed: refused
    /// unless the descriptor is one of `/dev/fuse`.
    pub fn inherited(fd: RawFd, server: i32) -> io::Result<Held> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let fd = sys::fs::inherited_fd(fd)?;
        let meta = std::fs::File::from(fd.try_clone()?).metadata()?;
        if !meta.file_type().is_char_device() || meta.rdev() != libc::makedev(10, 229) {
            return Err(io::Error::other("not a descriptor of /dev/fuse"));
        }
        Ok(Held { fd, server })
    }
}

/// What the keeper of a mount records about it, in the caller's runtime directory, named by
/// the keeper's pid.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerRecord {
    pub mountpoint: PathBuf,
    /// The mount's device (`major:minor` in mountinfo).
    pub device: String,
    pub keeper: i32,
    /// When the keeper started (see [`sys::process_start_time`]): a record names its keeper
    /// only while a process of that pid with that start time runs.
    pub keeper_started: u64,
    /// The server now answering.
    pub server: i32,
    /// The binary a restart executes.
    pub exe: PathBuf,
}

/// The records of the caller's live keepers; those of dead ones are removed on the way.
pub fn server_records() -> Vec<ServerRecord> {
    let Ok(dir) = runtime_dir(SERVERS_LEAF) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut records = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = sys::pid_name(&e.file_name()) else {
            continue;
        };
        let record = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<ServerRecord>(&b).ok());
        // A zombie (killed, not yet reaped) is no keeper either.
        let running = sys::alive(pid)
            .then(|| sys::process_start_time(pid as i32))
            .flatten();
        match record {
            Some(r) if r.keeper as u32 == pid && running == Some(r.keeper_started) => {
                records.push(r)
            }
            // Its keeper is gone, perhaps with its pid given to another process since.
            Some(_) | None if running.is_none() || record.is_some() => {
                let _ = std::fs::remove_file(e.path());
            }
            _ => {}
        }
    }
    records
}

/// Asks the caller's keepers of the mounts at `only` (all of them when it is empty) to replace
/// themselves and their servers with the binary now installed where each was started from;
/// the records of those signalled.
pub fn restart_all(only: &[PathBuf]) -> Vec<ServerRecord> {
    server_records()
        .into_iter()
        .filter(|r| only.is_empty() || only.contains(&r.mountpoint))
        .filter(|r| process::kill(r.keeper, libc::SIGUSR2).is_ok())
        .collect()
}

/// The signals a keeper waits for: those that end it, SIGUSR2 (restart), SIGCHLD and
/// SIGUSR1 (its server is serving: [`server_ready`]).
fn keeper_signals() -> SigSet {
    SigSet::of(&[
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGUSR2,
        libc::SIGCHLD,
        libc::SIGUSR1,
    ])
}

/// Tells the keeper (this server's parent) that the server serves now: from then on its
/// death is young only within [`YOUNG`].
pub(crate) fn server_ready() {
    let keeper = std::os::unix::process::parent_id() as Pid;
    if keeper > 1 {
        let _ = process::kill(keeper, libc::SIGUSR1);
    }
}

/// Keeps the mount at `mountpoint` served: runs `server` in a forked child, and again in a
/// new one each time one dies while the mount lives; see the module docs. `held` is what a
/// keeper that executed this binary passed on. Returns the exit status for this process:
/// the last server's when it ended the mount itself.
///
/// Call it while this process has one thread. When it cannot fork, `server` runs here,
/// without a keeper.
pub fn keep(mountpoint: &Path, held: Option<Held>, server: &dyn Fn(Connection) -> i32) -> i32 {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut keeper = Keeper {
        mountpoint: mountpoint.to_path_buf(),
        exe,
        held: None,
        server: 0,
        ready: None,
        device: String::new(),
        young_deaths: Vec::new(),
        stopping: false,
        record: None,
    };
    // Children are reaped here: an ignored SIGCHLD inherited from the caller would have the
    // kernel reap them, and their deaths go unseen.
    process::default_action(libc::SIGCHLD);
    process::block(&keeper_signals());
    let first = match held {
        Some(held) => keeper.take_over(held, server),
        None => keeper.start(server),
    };
    if let Err(code) = first {
        return code;
    }
    let code = keeper.watch(server);
    // The server is gone and this keeper's copy of the connection goes with it: a mount still
    // there would answer nothing but ENOTCONN.
    keeper.detach_if_mounted();
    if let Some(path) = &keeper.record {
        let _ = std::fs::remove_file(path);
    }
    code
}

struct Keeper {
    mountpoint: PathBuf,
    /// The binary a restart executes: the one at the path this keeper was started from.
    exe: PathBuf,
    /// The connection, once the first server handed it over.
    held: Option<OwnedFd>,
    server: Pid,
    /// When the server said it serves ([`server_ready`]); `None` until then.
    ready: Option<Instant>,
    device: String,
    /// When servers died young ([`YOUNG`]), the latest last.
    young_deaths: Vec<Instant>,
    /// Told to end: a server that ends now is not replaced.
    stopping: bool,
    record: Option<PathBuf>,
}

impl Keeper {
    /// Forks the first server, which mounts; waits for its copy of the connection. `Err`
    /// with the exit status when it ended without mounting.
    fn start(&mut self, server: &dyn Fn(Connection) -> i32) -> Result<(), i32> {
        let (ours, theirs) = match UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => {
                log::warn!("serving without a keeper: no socket for the handover: {e}");
                return Err(run_here(server));
            }
        };
        match process::fork() {
            Ok(Forked::Child) => {
                drop(ours);
                child(
                    server,
                    Connection::Mount {
                        handover: Some(theirs),
                    },
                )
            }
            Ok(Forked::Parent(pid)) => {
                drop(theirs);
                self.server = pid;
                self.ready = None;
            }
            Err(e) => {
                log::warn!("serving without a keeper: {e}");
                drop(ours);
                return Err(server_without_keeper(server, theirs));
            }
        }
        match sys::fs::recv_fd(ours.as_fd()) {
            Ok(Some(fd)) => {
                self.held = Some(fd);
                self.device = mount_at(&self.mountpoint)
                    .map(|m| m.device)
                    .unwrap_or_default();
                quiet_stdout();
                self.write_record();
                Ok(())
            }
            // The server ended (or never mounted) without handing the connection over, or
            // could not hand it over and serves on, with no keeper to take over.
            Ok(None) | Err(_) => match process::waitpid(self.server, libc::WNOHANG) {
                Ok(None) => {
                    log::warn!("{}: no keeper holds the mount", self.mountpoint.display());
                    quiet_stdout();
                    Ok(())
                }
                _ => {
                    let status = self.reap_status();
                    if libc::WIFSIGNALED(status) {
                        // Killed after mounting perhaps: nothing imgfs was mounted here before.
                        self.device = mount_at(&self.mountpoint)
                            .filter(MountInfo::is_imgfs)
                            .map(|m| m.device)
                            .unwrap_or_default();
                        self.detach_if_mounted();
                    }
                    Err(sys::exit_code(status))
                }
            },
        }
    }

    /// After an execve by the keeper before: ends the server it started, then starts one of
    /// this binary on the connection.
    fn take_over(&mut self, held: Held, server: &dyn Fn(Connection) -> i32) -> Result<(), i32> {
        self.held = Some(held.fd);
        self.server = held.server;
        self.device = mount_at(&self.mountpoint)
            .map(|m| m.device)
            .unwrap_or_default();
        // Killed, not asked: a server asked to stop unmounts. What it had read and not
        // answered is sent again to the next one. Only a child of this process: the pid came
        // on the command line.
        if sys::parent_pid(self.server as u32) == Some(std::process::id() as i32) {
            let _ = process::kill(self.server, libc::SIGKILL);
            self.reap_blocking();
        } else {
            log::warn!("process {} is no server of this keeper's", self.server);
        }
        match self.restart(server, "upgraded", false) {
            true => Ok(()),
            false => Err(1),
        }
    }

    /// Waits for the server's end, then starts another while the mount lives; the exit
    /// status for this process.
    fn watch(&mut self, server: &dyn Fn(Connection) -> i32) -> i32 {
        let set = keeper_signals();
        loop {
            let signo = match process::sigwait(&set) {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("keeper: sigwait: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            match signo {
                libc::SIGCHLD => {
                    let Some(status) = self.reap() else {
                        continue;
                    };
                    let code = sys::exit_code(status);
                    let killed = libc::WIFSIGNALED(status);
                    if self.stopping || (!killed && code == 0) || !self.connection_lives() {
                        return code;
                    }
                    let how = if killed {
                        format!("killed by signal {}", libc::WTERMSIG(status))
                    } else {
                        format!("exited with status {code}")
                    };
                    let young = self.ready.is_none_or(|t| t.elapsed() < YOUNG);
                    if !self.restart(server, &how, young) {
                        return code.max(1);
                    }
                }
                libc::SIGUSR2 => self.upgrade(),
                libc::SIGUSR1 => self.ready = Some(Instant::now()),
                other => {
                    self.stopping = true;
                    let _ = process::kill(self.server, other);
                }
            }
        }
    }

    /// The wait status of the server, once it ended; other children are reaped too.
    fn reap(&mut self) -> Option<libc::c_int> {
        let mut ended = None;
        while let Ok(Some((pid, status))) = process::waitpid(-1, libc::WNOHANG) {
            if pid == self.server {
                ended = Some(status);
            }
        }
        ended
    }

    /// Waits for the server to end; its exit status.
    fn reap_blocking(&mut self) -> i32 {
        sys::exit_code(self.reap_status())
    }

    /// Waits for the server to end; its wait status.
    fn reap_status(&mut self) -> libc::c_int {
        loop {
            match process::waitpid(self.server, 0) {
                Ok(Some((_, status))) => return status,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ => return 1 << 8,
            }
        }
    }

    /// Whether the connection this keeper holds still lives: mounted, or detached while
    /// programs still use it (a shared server retired under running sandboxes, `umount
    /// --lazy` with files open). Judged from the descriptor, never by touching the mount.
    fn connection_lives(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|fd| !sys::fs::fuse_connection_ended(fd.as_fd()))
    }

    /// This keeper's mount, when it is still in the mount table.
    fn mounted_here(&self) -> bool {
        !self.device.is_empty()
            && mount_at(&self.mountpoint).is_some_and(|m| m.is_imgfs() && m.device == self.device)
    }

    /// Detaches this keeper's mount when it is still in the mount table.
    fn detach_if_mounted(&self) {
        if self.mounted_here()
            && let Err(e) = super::unmount(&self.mountpoint, true)
        {
            log::warn!("{e}");
        }
    }

    /// Starts a server on the held connection after one that ended (`young`: within [`YOUNG`]
    /// of its start), unless servers died young too often; false when it gave up, after
    /// detaching the mount.
    fn restart(&mut self, server: &dyn Fn(Connection) -> i32, why: &str, young: bool) -> bool {
        let now = Instant::now();
        self.young_deaths
            .retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if young {
            self.young_deaths.push(now);
        }
        if self.young_deaths.len() >= RESTARTS {
            log::error!(
                "{}: {} servers died within {YOUNG:?} of their start within {:?}; unmounting",
                self.mountpoint.display(),
                self.young_deaths.len(),
                RESTART_WINDOW
            );
            self.give_up();
            return false;
        }
        if young && let Some(extra) = self.young_deaths.len().checked_sub(QUICK_RESTARTS + 1) {
            let wait = Duration::from_millis(100)
                .saturating_mul(1 << extra.min(10))
                .min(MAX_BACKOFF);
            log::warn!(
                "{}: {} servers died young within {:?}; waiting {wait:?} before the next",
                self.mountpoint.display(),
                self.young_deaths.len(),
                RESTART_WINDOW
            );
            std::thread::sleep(wait);
            if !self.connection_lives() {
                return false;
            }
        }
        let fd = match self.held.as_ref().map(|fd| fd.try_clone()) {
            Some(Ok(fd)) => fd,
            _ => {
                self.give_up();
                return false;
            }
        };
        // A fork refused for want of resources (EAGAIN, ENOMEM) may pass: a few tries, a
        // little apart, before the mount is given up.
        let mut forked = process::fork();
        for _ in 0..5 {
            if forked.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            forked = process::fork();
        }
        match forked {
            Ok(Forked::Child) => child(server, Connection::Resume(fd)),
            Ok(Forked::Parent(pid)) => {
                log::info!(
                    "{}: server {} {why}; server {pid} took over",
                    self.mountpoint.display(),
                    self.server
                );
                self.server = pid;
                self.ready = None;
                self.write_record();
                true
            }
            Err(e) => {
                log::error!("{}: cannot start a server: {e}", self.mountpoint.display());
                self.give_up();
                false
            }
        }
    }

    /// Detaches the mount, so that nothing is left answering `ENOTCONN`.
    fn give_up(&mut self) {
        self.detach_if_mounted();
        self.held = None;
    }

    /// Replaces this keeper with the binary at its path, passing on the connection and the
    /// server; returns only when that fails, which is logged. execve keeps the signal mask, so
    /// that no signal meant for the keeper ends it between the two programs.
    fn upgrade(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        let Some(fd) = &self.held else {
            return;
        };
        if let Err(why) = trusted_binary(&self.exe) {
            log::error!("restart refused: {}: {why}", self.exe.display());
            return;
        }
        let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
        strip_option(&mut args, HELD_FD_OPTION);
        strip_option(&mut args, SERVER_OPTION);
        // Before the mountpoint, the last argument.
        let at = args.len().saturating_sub(1);
        args.splice(
            at..at,
            [
                HELD_FD_OPTION.into(),
                fd.as_raw_fd().to_string().into(),
                SERVER_OPTION.into(),
                self.server.to_string().into(),
            ],
        );
        let cstr = |b: &[u8]| std::ffi::CString::new(b).ok();
        let program = cstr(self.exe.as_os_str().as_bytes());
        let argv: Option<Vec<_>> = std::iter::once(self.exe.as_os_str())
            .chain(args.iter().map(|a| a.as_os_str()))
            .map(|a| cstr(a.as_bytes()))
            .collect();
        let env: Option<Vec<_>> = std::env::vars_os()
            .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect();
        let (Some(program), Some(argv), Some(env)) = (program, argv, env) else {
            log::error!("restart refused: an argument or variable holds a NUL byte");
            return;
        };
        if let Err(e) = sys::fs::set_cloexec(fd.as_fd(), false) {
            log::error!("restart refused: {e}");
            return;
        }
        log::info!(
            "{}: restarting with {}",
            self.mountpoint.display(),
            self.exe.display()
        );
        let e = process::execve(
            &program,
            &process::CStrings::new(argv),
            &process::CStrings::new(env),
        );
        let _ = sys::fs::set_cloexec(fd.as_fd(), true);
        log::error!("restart with {} failed: {e}", self.exe.display());
    }

    /// Writes (or rewrites) this keeper's record.
    fn write_record(&mut self) {
        let Ok(dir) = runtime_dir(SERVERS_LEAF) else {
            return;
        };
        let keeper = std::process::id() as Pid;
        let record = ServerRecord {
            mountpoint: self.mountpoint.clone(),
            device: self.device.clone(),
            keeper,
            keeper_started: sys::process_start_time(keeper).unwrap_or_default(),
            server: self.server,
            exe: self.exe.clone(),
        };
        let path = dir.join(keeper.to_string());
        let Ok(bytes) = serde_json::to_vec(&record) else {
            return;
        };
        match sys::publish(&path, &bytes, Durability::Atomic) {
            Ok(()) => self.record = Some(path),
            Err(e) => log::warn!("cannot record the server in {}: {e}", dir.display()),
        }
    }
}

/// Whether a keeper may execute `exe`: for root, only a file that root owns and nobody else
/// may write, as a binary installed for the machine is.
fn trusted_binary(exe: &Path) -> Result<(), &'static str> {
    use std::os::unix::fs::MetadataExt;
    if sys::euid() != 0 {
        return Ok(());
    }
    let meta = std::fs::metadata(exe).map_err(|_| "cannot be read")?;
    if meta.uid() != 0 {
        return Err("root does not own it");
    }
    if meta.mode() & 0o022 != 0 {
        return Err("others may write to it");
    }
    Ok(())
}

/// Removes `option` and its value from `args`.
fn strip_option(args: &mut Vec<OsString>, option: &str) {
    while let Some(at) = args.iter().position(|a| a == option) {
        args.drain(at..(at + 2).min(args.len()));
    }
}

/// The forked server: runs `server` with the signals a server expects, and ends.
fn child(server: &dyn Fn(Connection) -> i32, connection: Connection) -> ! {
    process::set_mask(&stop_signals());
    let code = server(connection);
    std::process::exit(code)
}

/// `server` in this process, for when no keeper can be made.
fn run_here(server: &dyn Fn(Connection) -> i32) -> i32 {
    process::set_mask(&stop_signals());
    server(Connection::Mount { handover: None })
}

/// `server` here, with the socket meant for the handover dropped.
fn server_without_keeper(server: &dyn Fn(Connection) -> i32, handover: UnixStream) -> i32 {
    drop(handover);
    run_here(server)
}

/// Points this process's stdout at /dev/null: the readiness pipe is the server's to close.
fn quiet_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = process::redirect_stdio(null.into(), &[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_passes_the_connection_before_the_mountpoint() {
        let mut args: Vec<OsString> =
            ["--index", "/i", "--held-fd", "7", "--server-pid", "9", "/m"]
                .map(OsString::from)
                .to_vec();
        strip_option(&mut args, HELD_FD_OPTION);
        strip_option(&mut args, SERVER_OPTION);
        assert_eq!(args, ["--index", "/i", "/m"].map(OsString::from).to_vec());
    }
}
