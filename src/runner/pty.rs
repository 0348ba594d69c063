//! The sandbox's terminal for `imgfs run -t`, the way docker gives one: a pseudo-terminal
//! from the sandbox's own devpts instance, with the caller's terminal in raw mode and bytes
//! copied both ways. Keys like Ctrl-C reach the command through the sandbox's line
//! discipline, the command can never inject input into the caller's terminal, and window
//! size changes follow the caller's terminal.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::sys::term::{self, Termios};
use crate::sys::{self, SysError};

/// Path of the command's terminal inside the sandbox: the first of a fresh devpts instance.
pub(crate) const SLAVE: &str = "/dev/pts/0";
/// Bytes copied at a time between the terminals.
const CHUNK: usize = 16 << 10;

/// Why the sandbox's terminal could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TerminalError {
    #[error("{path}: {cause}")]
    Dir { path: PathBuf, cause: io::Error },
    /// Mounting the sandbox's devpts instance failed.
    #[error(transparent)]
    Devpts(SysError),
    #[error("cannot open a pseudo-terminal: {0}")]
    Open(io::Error),
    #[error("cannot unlock the pseudo-terminal: {0}")]
    Unlock(io::Error),
    #[error("stdin is not a terminal: {0}")]
    NotATerminal(io::Error),
    #[error("cannot copy the terminal: {0}")]
    Copy(io::Error),
}

/// The pseudo-terminal's master side and the caller's terminal settings to restore.
pub(crate) struct Terminal {
    master: OwnedFd,
    saved: Termios,
}

impl Terminal {
    /// Mounts a devpts instance at `dir/pts`, opens its first pseudo-terminal, sizes it like
    /// the caller's terminal (stdin) and puts that one in raw mode.
    pub(crate) fn open(dir: &Path) -> Result<Terminal, TerminalError> {
        let pts = dir.join("pts");
        std::fs::create_dir_all(&pts).map_err(|source| TerminalError::Dir {
            path: pts.clone(),
            cause: source,
        })?;
        sys::fs::mount(
            Some("devpts"),
            &pts,
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )
        .map_err(TerminalError::Devpts)?;
        let master: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(pts.join("ptmx"))
            .map_err(TerminalError::Open)?
            .into();
        term::unlock_pty(master.as_fd()).map_err(TerminalError::Unlock)?;
        let saved = term::termios(io::stdin().as_fd()).map_err(TerminalError::NotATerminal)?;
        let term = Terminal { master, saved };
        term.resize();
        let _ = term::set_termios(io::stdin().as_fd(), &saved.raw());
        Ok(term)
    }

    /// Gives the pseudo-terminal the caller's window size.
    pub(crate) fn resize(&self) {
        if let Ok(size) = term::window_size(io::stdin().as_fd()) {
            let _ = term::set_window_size(self.master.as_fd(), &size);
        }
    }

    /// Copies the command's output to stdout until every slave is closed, and stdin to the
    /// command when `input` is set. Returns the output thread; join it to drain the output.
    pub(crate) fn spawn_copies(
        &self,
        input: bool,
    ) -> Result<std::thread::JoinHandle<()>, TerminalError> {
        self.spawn_copy_threads(input).map_err(TerminalError::Copy)
    }

    fn spawn_copy_threads(&self, input: bool) -> io::Result<std::thread::JoinHandle<()>> {
        if input {
            let to_pty = self.master.try_clone()?;
            std::thread::Builder::new()
                .name("imgfs-tty-in".into())
                .spawn(move || {
                    let mut pty = File::from(to_pty);
                    let mut buf = [0u8; CHUNK];
                    let mut stdin = io::stdin().lock();
                    while let Ok(n) = stdin.read(&mut buf) {
                        if n == 0 || pty.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                })?;
        }
        let from_pty = self.master.try_clone()?;
        std::thread::Builder::new()
            .name("imgfs-tty-out".into())
            .spawn(move || {
                let mut pty = File::from(from_pty);
                let mut buf = [0u8; CHUNK];
                let mut stdout = io::stdout().lock();
                // EIO once the last slave descriptor is closed: the command and its children are gone.
                while let Ok(n) = pty.read(&mut buf) {
                    if n == 0
                        || stdout
                            .write_all(&buf[..n])
                            .and_then(|_| stdout.flush())
                            .is_err()
                    {
                        break;
                    }
                }
            })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = term::set_termios(io::stdin().as_fd(), &self.saved);
    }
}

/// In the command's process (after fork, before exec): a new session whose controlling
/// terminal is the sandbox's pseudo-terminal, on stdin, stdout and stderr.
/// Only async-signal-safe calls; returns false on failure.
pub(crate) fn attach(slave: &std::ffi::CStr) -> bool {
    let _ = term::setsid();
    let Ok(fd) = sys::fs::open(slave, libc::O_RDWR, 0) else {
        return false;
    };
    if term::set_controlling_terminal(fd.as_fd()).is_err() {
        return false;
    }
    let _ = sys::process::redirect_stdio(fd, &[0, 1, 2]);
    true
}
