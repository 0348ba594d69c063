//! The sandbox's terminal for `imgfs run -t`, the way docker gives one: a pseudo-terminal
//! from the sandbox's own devpts instance, with the caller's terminal in raw mode and bytes
//! copied both ways. Keys like Ctrl-C reach the command through the sandbox's line
//! discipline, the command can never inject input into the caller's terminal, and window
//! size changes follow the caller's terminal.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Path of the command's terminal inside the sandbox: the first of a fresh devpts instance.
pub const SLAVE: &str = "/dev/pts/0";
/// Bytes copied at a time between the terminals.
const CHUNK: usize = 16 << 10;

/// The pseudo-terminal's master side and the caller's terminal settings to restore.
pub struct Terminal {
    master: OwnedFd,
    saved: libc::termios,
}

fn last_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

impl Terminal {
    /// Mounts a devpts instance at `dir/pts`, opens its first pseudo-terminal, sizes it like
    /// the caller's terminal (stdin) and puts that one in raw mode.
    pub fn open(dir: &Path) -> Result<Terminal, String> {
        let pts = dir.join("pts");
        std::fs::create_dir_all(&pts).map_err(|e| format!("{}: {e}", pts.display()))?;
        let target =
            std::ffi::CString::new(pts.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: NUL-terminated strings alive for the call.
        let rc = unsafe {
            libc::mount(
                c"devpts".as_ptr(),
                target.as_ptr(),
                c"devpts".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"newinstance,ptmxmode=0666,mode=0620".as_ptr().cast(),
            )
        };
        if rc < 0 {
            return Err(last_err("cannot mount the sandbox's devpts"));
        }
        let ptmx = std::ffi::CString::new(pts.join("ptmx").as_os_str().as_bytes())
            .map_err(|e| e.to_string())?;
        // SAFETY: opening a path; the result is checked.
        let fd = unsafe {
            libc::open(
                ptmx.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(last_err("cannot open a pseudo-terminal"));
        }
        // SAFETY: a new descriptor we own.
        let master = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: unlockpt on the master we just opened.
        if unsafe { libc::unlockpt(master.as_raw_fd()) } < 0 {
            return Err(last_err("cannot unlock the pseudo-terminal"));
        }
        // SAFETY: termios is plain data filled by tcgetattr.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a valid out-pointer.
        if unsafe { libc::tcgetattr(0, &mut saved) } < 0 {
            return Err(last_err("stdin is not a terminal"));
        }
        let term = Terminal { master, saved };
        term.resize();
        let mut raw = saved;
        // SAFETY: cfmakeraw edits our copy; tcsetattr applies it to fd 0.
        unsafe {
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(0, libc::TCSANOW, &raw);
        }
        Ok(term)
    }

    /// Gives the pseudo-terminal the caller's window size.
    pub fn resize(&self) {
        // SAFETY: winsize is plain data; both ioctls take a pointer to one.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
                libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
            }
        }
    }

    /// Copies the command's output to stdout until every slave is closed, and stdin to the
    /// command when `input` is set. Returns the output thread; join it to drain the output.
    pub fn spawn_copies(&self, input: bool) -> io::Result<std::thread::JoinHandle<()>> {
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
        // SAFETY: restoring the settings read in `open` on fd 0.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// In the command's process (after fork, before exec): a new session whose controlling
/// terminal is the sandbox's pseudo-terminal, on stdin, stdout and stderr.
/// Only async-signal-safe calls; returns false on failure.
pub fn attach(slave: &std::ffi::CStr) -> bool {
    // SAFETY: setsid/open/ioctl/dup2/close on a NUL-terminated path.
    unsafe {
        libc::setsid();
        let fd = libc::open(slave.as_ptr(), libc::O_RDWR);
        if fd < 0 || libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
            return false;
        }
        for target in 0..3 {
            libc::dup2(fd, target);
        }
        if fd > 2 {
            libc::close(fd);
        }
    }
    true
}
