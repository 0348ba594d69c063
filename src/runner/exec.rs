//! Carries out a [`Plan`]: the supervisor, which puts the stages together.
//!
//! Two processes, neither of which ever forks while it has threads:
//!
//! - the **supervisor** (`imgfs run` itself, single-threaded once the image is resolved)
//!   creates the sandbox's cgroup when limits are asked for, enters new namespaces
//!   ([`namespaces`]) — joining the bridge network's, on which pasta is already starting
//!   ([`super::network::pasta`]) — compiles the seccomp filter (or takes it from the cache),
//!   mounts a tmpfs scratch area, binds the image's live mount there (under a lease on it)
//!   or else mounts the image with FUSE itself, forks the init into a new PID namespace, and
//!   only then starts the threads serving the image, if it serves it. It forwards signals
//!   sent to it with kill(2) and exits with the init's status.
//! - the **init** ([`process::init`], PID 1 of the new PID namespace, killed if the
//!   supervisor dies) builds the root ([`super::rootfs`]) and starts the confined command
//!   ([`confine`]).
//!
//! When both are gone, the namespaces and with them every mount vanish, whatever killed
//! them; a cleaner process removes the cgroup even then.

use std::io::{self, Write};
use std::path::Path;

use super::confine::cgroup::{self, Cgroup, CgroupError};
use super::confine::{self, seccomp};
use super::namespaces::{self, NamespaceError};
use super::network::pasta::{self, PastaError};
use super::network::{Early, Mode};
use super::plan::Plan;
use super::process;
use super::pty::{Terminal, TerminalError};
use crate::fs::{FsError, ImageFs};
use crate::serve::{self, ServeError, ServeOptions};
use crate::sys::process::SigSet;
use crate::sys::{self, EXIT_SETUP, SysError};

/// FUSE request threads per sandbox: one program's start-up reads are mostly sequential.
const SANDBOX_FS_THREADS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SandboxError {
    #[error("cannot open the image: {0}")]
    Image(FsError),
    #[error("cannot serve the image: {0}")]
    Serve(ServeError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("cannot prepare the sandbox's scratch area: {0}")]
    Scratch(SysError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("resource limits need root: {0}")]
    LimitsNeedRoot(CgroupError),
    #[error("seccomp profile {profile}: {cause}")]
    Seccomp {
        profile: String,
        cause: seccomp::SeccompError,
    },
    #[error(transparent)]
    Terminal(#[from] TerminalError),
    #[error(transparent)]
    Network(#[from] PastaError),
}

/// The supervisor. Returns the exit status for `imgfs run`.
/// `network`: the bridge network's pasta, when it was started early.
pub fn supervisor(plan: &Plan, network: Option<Early>) -> i32 {
    match supervisor_inner(plan, network) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imgfs: {e}");
            EXIT_SETUP
        }
    }
}

/// The seccomp filter the plan asks for, compiled once per profile and capability set and
/// kept in the cache, so a warm run only reads it.
fn seccomp_filter(plan: &Plan) -> Result<Option<seccomp::Program>, SandboxError> {
    let source = match &plan.confine.seccomp {
        confine::Seccomp::Unconfined => return Ok(None),
        confine::Seccomp::Default => seccomp::ProfileSource::DockerDefault,
        confine::Seccomp::Profile { json, .. } => seccomp::ProfileSource::Json(json.as_bytes()),
    };
    let program = seccomp::compiled(source, &plan.confine.cap_names(), &plan.seccomp_cache)
        .map_err(|source| SandboxError::Seccomp {
            profile: match &plan.confine.seccomp {
                confine::Seccomp::Profile { path, .. } => path.display().to_string(),
                _ => "docker's default profile".into(),
            },
            cause: source,
        })?;
    Ok(Some(program))
}

fn supervisor_inner(plan: &Plan, network: Option<Early>) -> Result<i32, SandboxError> {
    // Blocked before any thread exists, so every thread inherits it and only sigwaitinfo
    // takes these signals; the init, forked from this process, inherits it.
    sys::process::block(&SigSet::of(&process::waited_signals()));

    let cgroup = if plan.limits.is_empty() {
        None
    } else {
        cgroup::remove_stale();
        let cg = Cgroup::create(&plan.limits, &std::process::id().to_string()).map_err(
            |e| match &e {
                CgroupError::Create { cause: source, .. }
                    if plan.unprivileged.is_some()
                        && source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    SandboxError::LimitsNeedRoot(e)
                }
                _ => e.into(),
            },
        )?;
        // Removes the cgroup once this process is gone, however it ends.
        let cleaner = match cg.spawn_cleaner() {
            Ok(c) => c,
            Err(e) => {
                cg.remove();
                return Err(e.into());
            }
        };
        Some((cg, cleaner))
    };
    let parent = namespaces::scratch_parent();
    let result = sys::mkdir(&parent)
        .map_err(SandboxError::Scratch)
        .and_then(|()| {
            namespaces::remove_stale_scratch(&parent);
            let scratch = parent.join(std::process::id().to_string());
            sys::mkdir(&scratch).map_err(SandboxError::Scratch)?;
            let cg = cgroup.as_ref().map(|(cg, _)| cg);
            let result = supervise_in_namespaces(plan, &scratch, cg, network);
            let _ = std::fs::remove_dir(&scratch);
            result
        });
    if let Some((cg, cleaner)) = cgroup {
        if cg.oom_killed() {
            log::info!("the sandbox reached its memory limit: the kernel killed a process of it");
        }
        cg.remove();
        cleaner.finish();
    }
    result
}

fn supervise_in_namespaces(
    plan: &Plan,
    scratch: &Path,
    cgroup: Option<&Cgroup>,
    early: Option<Early>,
) -> Result<i32, SandboxError> {
    if plan.unprivileged.is_some() {
        namespaces::check_fuse()?;
    }
    // Started early, pasta is coming up on namespaces made for the sandbox, which this
    // process joins. Else the keeper is forked while this process is single-threaded and
    // still in the host's namespaces, and pasta starts once it is in its own.
    let mut network = match (plan.network.mode, early) {
        (Mode::Bridge, Some(Early(helper))) => Some(helper),
        (Mode::Bridge, None) => Some(pasta::Helper::fork(
            &plan.network,
            plan.unprivileged.is_some(),
        )?),
        (Mode::None | Mode::Host, _) => None,
    };
    let made = network
        .as_mut()
        .and_then(|n| n.made())
        .map(|(user, net)| namespaces::Made { user, net });
    namespaces::enter(plan, made)?;
    if let Some(n) = network.as_mut() {
        n.start()?;
    }
    // From here on pasta's start overlaps all that is left.
    let filter = seccomp_filter(plan)?;
    sys::fs::mount(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0700"),
    )
    .map_err(SandboxError::Scratch)?;
    let lower = scratch.join("lower");
    for d in ["lower", "root", "files"] {
        sys::mkdir(&scratch.join(d)).map_err(SandboxError::Scratch)?;
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
        let fs = ImageFs::open(&plan.index_path, &plan.blobs).map_err(SandboxError::Image)?;
        let options = ServeOptions {
            fsname: plan.fsname.clone(),
            threads: SANDBOX_FS_THREADS,
            idle_exit: None,
            lazy: Default::default(),
        };
        // Mounted now, served once the init is forked: requests wait until then.
        Some(serve::mount(fs, &lower, &options).map_err(SandboxError::Serve)?)
    };
    let terminal = if plan.tty {
        sys::process::block(&SigSet::of(&[libc::SIGWINCH])); // taken by wait_for with sigwaitinfo
        Some(Terminal::open(scratch)?)
    } else {
        None
    };

    // The init builds the root while pasta comes up, and starts the command once this says
    // the network is up (one byte; end of file: it is not).
    let network_gate = match network {
        Some(_) => Some(io::pipe().map_err(PastaError::Pipe)?),
        None => None,
    };
    let Some(mut init) = namespaces::fork_init(cgroup.is_some())? else {
        // The init: PID 1 of a new PID namespace, a single-threaded copy of this process.
        let gate = network_gate.map(|(read, write)| {
            drop(write);
            read
        });
        let code = process::init(plan, scratch, filter, gate);
        // Leaving the forked copy without running the supervisor's destructors.
        sys::process::exit_now(code);
    };
    let kill_init = |pid| {
        // Our own child, which cannot go on.
        let _ = sys::process::kill(pid, libc::SIGKILL);
    };
    if let Some(cg) = cgroup {
        // The init waits for this: it and everything it starts are limited from the start.
        if let Err(e) = cg.add(init.pid) {
            kill_init(init.pid);
            return Err(e.into());
        }
        init.release();
    }
    if let (Some(n), Some((_read, gate))) = (network.as_mut(), network_gate) {
        if let Err(e) = n.wait_ready() {
            kill_init(init.pid);
            return Err(e.into());
        }
        // An init already gone (its command could not start) has said why itself.
        let _ = (&gate).write_all(&[1]);
    }
    // Threads only now, in the supervisor alone.
    let session = match session {
        Some(s) => Some(serve::start(s, &lower).map_err(|e| {
            kill_init(init.pid);
            SandboxError::Serve(e)
        })?),
        None => None,
    };
    let output = match &terminal {
        Some(t) => Some(t.spawn_copies(plan.interactive)?),
        None => None,
    };
    let resize = terminal.as_ref().map(|t| move || t.resize());
    let code = process::wait_for(init.pid, resize.as_ref().map(|r| r as &dyn Fn()));
    if let Some(out) = output {
        let _ = out.join(); // the command's last output
    }
    drop(terminal); // restores the caller's terminal
    if let Some(n) = network {
        n.stop();
    }
    // The mounts live only in this process's namespace and vanish with it; detaching the
    // scratch tmpfs now lets its empty mountpoint on the host be removed.
    sys::fs::detach(scratch);
    std::mem::forget(session);
    Ok(code)
}

/// Why a live mount could not be bound (the sandbox then serves the image itself).
#[derive(Debug, thiserror::Error)]
enum BindError {
    #[error("{0}")]
    Lease(io::Error),
    #[error("the live mount's path is not UTF-8")]
    NotUtf8,
    #[error("{0}")]
    Bind(SysError),
    #[error("it is no longer an imgfs mount")]
    NotImgfs,
}

/// Binds a live imgfs mount at `lower`, and checks that what got bound is one.
fn bind_live(live: &serve::LiveMount, lower: &Path) -> Result<(), BindError> {
    let _lease = live.lease().map_err(BindError::Lease)?;
    let source = live.mountpoint.to_str().ok_or(BindError::NotUtf8)?;
    sys::fs::mount(
        Some(source),
        lower,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(BindError::Bind)?;
    if serve::find_mount(lower).is_some_and(|m| m.is_imgfs()) {
        return Ok(());
    }
    sys::fs::detach(lower);
    Err(BindError::NotImgfs)
}
