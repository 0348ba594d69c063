//! The sandbox's processes: the init (PID 1, which builds the root, starts the command,
//! reaps orphans and passes signals on) and the command itself, confined and exec'd. Also
//! the wait loop both the supervisor and the init use.

use std::ffi::{CStr, CString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::confine::{self, Applier, ApplyError};
use super::namespaces::{self, NamespaceError};
use super::plan::Plan;
use super::pty;
use super::rootfs::{self, RootfsError};
use crate::sys::process::{CStrings, Forked, Pid, SigSet};
use crate::sys::{self, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, EXIT_SETUP, SysError, cstr, exit_code};

/// Signals passed on to the command when they are sent with kill(2). Terminal-generated
/// ones (Ctrl-C, Ctrl-\) reach the command directly, as it shares the caller's terminal.
pub(crate) const FORWARDED: [i32; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    #[error("cannot create a mount namespace: {0}")]
    MountNamespace(SysError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("cannot create the working directory: {0}")]
    Workdir(SysError),
    #[error("exec: \"{0}\": no such file or directory")]
    NoSuchFile(String),
    #[error("exec: \"{0}\": executable file not found in $PATH")]
    NotInPath(String),
    #[error("cannot prepare the command: {0}")]
    Prepare(SysError),
    #[error("cannot start the command: {0}")]
    Fork(SysError),
}

impl ProcessError {
    /// The exit status docker gives the same failure.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            ProcessError::NoSuchFile(_) | ProcessError::NotInPath(_) => EXIT_NOT_FOUND,
            _ => EXIT_SETUP,
        }
    }
}

/// The signals the supervisor and the init take with sigwaitinfo.
pub(crate) fn waited_signals() -> Vec<i32> {
    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    all
}

/// Waits for `child`, passing on signals sent with kill(2). Returns its exit status.
/// `on_winch` follows the caller's terminal size when the sandbox has a terminal.
pub(crate) fn wait_for(child: Pid, on_winch: Option<&dyn Fn()>) -> i32 {
    let mut signals = waited_signals();
    if on_winch.is_some() {
        signals.push(libc::SIGWINCH);
    }
    let set = SigSet::of(&signals);
    loop {
        let Ok(caught) = sys::process::wait_signal(&set) else {
            continue; // EINTR
        };
        let sig = caught.signal;
        if sig == libc::SIGWINCH {
            if let Some(resize) = on_winch {
                resize();
            }
        } else if sig == libc::SIGCHLD {
            while let Ok(Some((pid, status))) = sys::process::waitpid(-1, libc::WNOHANG) {
                if pid == child {
                    return exit_code(status);
                }
            }
        } else if caught.sent_by_process() {
            // Sent with kill(2), not by the terminal: passed on to our own child.
            let _ = sys::process::kill(child, sig);
        }
    }
}

/// The init: PID 1 of the sandbox. Returns its exit status: the command's, or 125-127 with
/// one line on stderr when the command could not be started.
pub(crate) fn init(
    plan: &Plan,
    scratch: &Path,
    filter: Option<confine::seccomp::Program>,
    network: Option<io::PipeReader>,
) -> i32 {
    match start_command(plan, scratch, filter, network) {
        Ok(pid) => wait_for(pid, None),
        Err(e) => {
            eprintln!("imgfs: {e}");
            e.exit_code()
        }
    }
}

/// Builds the root, enters it and forks the command; returns its pid.
fn start_command(
    plan: &Plan,
    scratch: &Path,
    filter: Option<confine::seccomp::Program>,
    network: Option<io::PipeReader>,
) -> Result<Pid, ProcessError> {
    // PID 1 gets only the signals it has a handler for: install no-op handlers, then take
    // the (still blocked) signals with sigwaitinfo.
    for sig in waited_signals() {
        let _ = sys::process::set_noop_handler(sig);
    }
    // A mount namespace of its own, so that pivot_root moves only the sandbox: the
    // supervisor keeps the host's root and can clean up after it.
    sys::process::unshare(libc::CLONE_NEWNS)
        .map_err(|e| ProcessError::MountNamespace(SysError::call("unshare")(e)))?;
    if plan.network.mode != super::network::Mode::Host {
        namespaces::loopback_up()?;
        namespaces::network_sysctls(plan.unprivileged.is_some());
    }
    rootfs::build_and_enter(plan, scratch)?;

    // The working directory is made if missing, as docker does.
    if !Path::new(&plan.cwd).is_dir() {
        sys::mkdir(Path::new(&plan.cwd)).map_err(ProcessError::Workdir)?;
        let _ = std::os::unix::fs::chown(&plan.cwd, Some(plan.uid), Some(plan.gid));
    }
    let program = find_program(plan)?;
    let prepared = Prepared::new(plan, &program, filter).map_err(ProcessError::Prepare)?;

    // The init has a single thread; the child only uses data prepared above. It waits for
    // the network, if any, only when nothing but execve is left to do.
    match sys::process::fork().map_err(ProcessError::Fork)? {
        Forked::Child => prepared.exec(network.as_ref()),
        Forked::Parent(pid) => Ok(pid),
    }
}

/// Finds the command on the image's PATH (from the sandbox's environment, not the
/// caller's), as docker does.
fn find_program(plan: &Plan) -> Result<PathBuf, ProcessError> {
    let name = &plan.argv[0];
    let executable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = Path::new(&plan.cwd).join(name);
        return if p.exists() {
            Ok(p)
        } else {
            Err(ProcessError::NoSuchFile(name.clone()))
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
        .ok_or_else(|| ProcessError::NotInPath(name.clone()))
}

/// What the command's process needs, allocated before the fork.
struct Prepared {
    program: CString,
    argv: CStrings,
    env: CStrings,
    cwd: CString,
    dev_null: CString,
    terminal: Option<CString>,
    groups: Vec<libc::gid_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    interactive: bool,
    confine: Applier,
}

impl Prepared {
    fn new(
        plan: &Plan,
        program: &Path,
        filter: Option<confine::seccomp::Program>,
    ) -> Result<Prepared, SysError> {
        Ok(Prepared {
            program: sys::path_cstr(program)?,
            argv: CStrings::new(plan.argv.iter().map(cstr).collect::<Result<_, _>>()?),
            env: CStrings::new(plan.env.iter().map(cstr).collect::<Result<_, _>>()?),
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
            confine: Applier::new(&plan.confine, filter),
        })
    }

    /// In the forked child: becomes the command, once `network` gives its go-ahead (one
    /// byte; without it the supervisor says why and ends the sandbox). Never returns. Only
    /// async-signal-safe calls on memory prepared before the fork.
    fn exec(&self, network: Option<&io::PipeReader>) -> ! {
        let fail = |msg: &CStr, code: i32| -> ! {
            sys::process::write_stderr(msg.to_bytes());
            sys::process::exit_now(code)
        };
        let confine_failed = |e: ApplyError| -> ! {
            match e {
                ApplyError::Bounding => fail(c"imgfs: cannot drop capabilities\n", EXIT_SETUP),
                ApplyError::NoNewPrivs => fail(c"imgfs: cannot set no_new_privs\n", EXIT_SETUP),
                ApplyError::Seccomp => {
                    fail(c"imgfs: cannot install the seccomp filter\n", EXIT_SETUP)
                }
                ApplyError::Capabilities => {
                    fail(c"imgfs: cannot set the capabilities\n", EXIT_SETUP)
                }
            }
        };
        sys::process::set_mask(&SigSet::empty());
        for sig in waited_signals() {
            sys::process::default_action(sig);
        }
        if let Some(slave) = &self.terminal {
            if !pty::attach(slave) {
                fail(c"imgfs: cannot attach the sandbox's terminal\n", EXIT_SETUP);
            }
        } else if !self.interactive
            && let Ok(fd) = sys::fs::open(&self.dev_null, libc::O_RDONLY, 0)
        {
            let _ = sys::process::redirect_stdio(fd, &[0]);
        }
        if let Err(e) = self.confine.before_user_switch() {
            confine_failed(e);
        }
        if sys::process::set_groups(&self.groups).is_err()
            && sys::process::uid() == 0
            && self.groups != [0]
        {
            fail(c"imgfs: cannot set the supplementary groups\n", EXIT_SETUP);
        }
        if sys::process::set_gid(self.gid).is_err() || sys::process::set_uid(self.uid).is_err() {
            fail(c"imgfs: cannot switch to the requested user\n", EXIT_SETUP);
        }
        if let Err(e) = self.confine.after_user_switch(self.uid) {
            confine_failed(e);
        }
        if sys::process::chdir(&self.cwd).is_err() {
            fail(c"imgfs: cannot enter the working directory\n", EXIT_SETUP);
        }
        if let Some(mut gate) = network {
            let mut byte = [0u8];
            loop {
                match gate.read(&mut byte) {
                    Ok(1) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    _ => sys::process::exit_now(EXIT_SETUP),
                }
            }
        }
        let e = sys::process::execve(&self.program, &self.argv, &self.env);
        let code = if e.raw_os_error() == Some(libc::ENOENT) {
            EXIT_NOT_FOUND
        } else {
            EXIT_CANNOT_EXEC
        };
        fail(c"imgfs: cannot execute the command\n", code)
    }
}
