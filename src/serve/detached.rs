//! Detached servers: `imgfs mount` (without `--foreground`) and the shared servers of
//! `imgfs run` start `imgfs __serve` in a process group of its own, without a terminal, and
//! wait for one line on its stdout: ready, or why it could not mount.
//!
//! Takes what to serve ([`Served`]); hands on the outcome ([`SpawnError`] says what went
//! wrong, or relays the server's own report). The server never keeps the caller's directory
//! busy (absolute paths, `/` as its working directory), and one reading layers lazily logs
//! what it could not fetch beside the image's index ([`SERVER_LOG`]).

use std::io;
use std::path::{Path, PathBuf};

use super::ServeOptions;
use crate::fs::Owners;

/// Why a detached server could not be started or did not mount.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot find the imgfs executable: {0}")]
    Exe(io::Error),
    #[error("cannot resolve {path}: {cause}")]
    Resolve { path: PathBuf, cause: io::Error },
    #[error("cannot start the imgfs server: {0}")]
    Start(io::Error),
    #[error("no pipe to the imgfs server")]
    NoPipe,
    #[error("lost the imgfs server: {0}")]
    Lost(io::Error),
    #[error("the imgfs server exited ({0}) before the mount was ready")]
    Exited(std::process::ExitStatus),
    /// The server's own report of why it could not mount, relayed as it said it.
    #[error("{0}")]
    Server(String),
}

/// Where a detached server of a lazily read image writes its log, in the image's entry.
pub const SERVER_LOG: &str = "server.log";

/// What the background server prints on stdout once the mount answers.
const READY: &str = "ready";

/// Where the ready line or the error goes: the stdout of `imgfs __serve`.
pub fn report(text: &str) {
    use std::io::Write;
    let mut out = io::stdout();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Reports readiness (see [`spawn_detached`]).
pub fn report_ready() {
    report(READY);
}

/// Where to serve an image.
pub struct Served<'a> {
    pub index: &'a Path,
    /// The index's blobs, in table order.
    pub blobs: &'a [std::path::PathBuf],
    pub mountpoint: &'a Path,
    pub options: &'a ServeOptions,
    pub owners: Owners,
}

/// `imgfs __serve` for `what`, with every path absolute (the mountpoint last); with
/// `foreground`, one that says nothing when ready.
fn serve_command(what: &Served, foreground: bool) -> Result<std::process::Command, SpawnError> {
    use std::process::Command;
    let exe = std::env::current_exe().map_err(SpawnError::Exe)?;
    // Absolute paths, and `/` as the working directory: a server that lives on must not
    // keep the caller's directory busy.
    let absolute = |p: &Path| {
        std::fs::canonicalize(p).map_err(|source| SpawnError::Resolve {
            path: p.to_path_buf(),
            cause: source,
        })
    };
    let mut cmd = Command::new(exe);
    cmd.arg("__serve").arg("--index").arg(absolute(what.index)?);
    for blob in what.blobs {
        cmd.arg("--blob").arg(absolute(blob)?);
    }
    cmd.arg("--fsname")
        .arg(&what.options.fsname)
        .arg("--threads")
        .arg(what.options.threads.to_string());
    if let Some(idle) = what.options.idle_exit {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        cmd.arg("--idle-exit-ms").arg(ms.to_string());
    }
    if let Owners::RootAs { uid, gid } = what.owners {
        cmd.arg("--root-as").arg(format!("{uid}:{gid}"));
    }
    let timeout = u64::try_from(what.options.lazy.fetch_timeout.as_millis()).unwrap_or(u64::MAX);
    cmd.arg("--fetch-timeout-ms").arg(timeout.to_string());
    cmd.arg("--prefetch").arg(match what.options.lazy.prefetch {
        crate::image::lazy::Prefetch::None => "none",
        crate::image::lazy::Prefetch::Recorded => "recorded",
        crate::image::lazy::Prefetch::All => "all",
    });
    if let Some(store) = &what.options.lazy.store {
        cmd.arg("--cache-dir")
            .arg(absolute(store.cache.root())?)
            .arg("--entry")
            .arg(store.entry.name());
    }
    if let Some(program) = &what.options.lazy.program {
        cmd.arg("--program").arg(program);
    }
    if foreground {
        cmd.arg("--foreground");
    }
    cmd.arg(absolute(what.mountpoint)?);
    Ok(cmd)
}

/// Replaces this process with `imgfs __serve --foreground` for `what`: the same server and
/// keeper a detached mount gets, in the foreground (this pid, terminal and process group),
/// saying nothing when ready. Returns only when that fails, with why. Meant for a process
/// that cannot fork a keeper itself, having started threads.
pub fn exec_foreground(what: &Served) -> SpawnError {
    use std::os::unix::process::CommandExt;
    match serve_command(what, true) {
        Ok(mut cmd) => SpawnError::Start(cmd.exec()),
        Err(e) => e,
    }
}

/// Starts `imgfs __serve` detached (own process group, no terminal) and waits until it says
/// the mount is ready, or relays why it could not mount.
pub fn spawn_detached(what: &Served) -> Result<(), SpawnError> {
    spawn_detached_child(what).map(drop)
}

/// [`spawn_detached`], handing on the server's keeper: a process that lives on and starts
/// more of them keeps it, to reap it once it has ended.
pub fn spawn_detached_child(what: &Served) -> Result<std::process::Child, SpawnError> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut cmd = serve_command(what, false)?;
    // A server reading layers lazily logs what it could not fetch beside the image's index.
    let log = what
        .index
        .parent()
        .map(|d| d.join(SERVER_LOG))
        .and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
    let stderr = match log {
        Some(f)
            if what
                .blobs
                .iter()
                .any(|b| b.ends_with(crate::cache::sparse::REMOTE_FILE)) =>
        {
            Stdio::from(f)
        }
        _ => Stdio::null(),
    };
    let mut child = cmd
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(SpawnError::Start)?;
    let stdout = child.stdout.take().ok_or(SpawnError::NoPipe)?;
    let mut line = String::new();
    io::BufReader::new(stdout).read_line(&mut line).ok();
    if line.trim_end() == READY {
        return Ok(child); // the server lives on; its stdout pipe closes when we exit
    }
    let status = child.wait().map_err(SpawnError::Lost)?;
    let message = line
        .trim_end()
        .strip_prefix("error: ")
        .unwrap_or(line.trim_end());
    if message.is_empty() {
        return Err(SpawnError::Exited(status));
    }
    Err(SpawnError::Server(message.to_string()))
}
