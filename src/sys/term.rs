//! Terminals and the C library's text helpers: unlocking a pseudo-terminal, terminal modes
//! and window sizes, a new session with a controlling terminal, and the local time and shell
//! patterns the coreutils-like commands use.
//!
//! Takes descriptors as [`BorrowedFd`]s and C strings; hands back plain values and
//! `io::Error`s with errno. [`setsid`] and [`set_controlling_terminal`] are async-signal-safe,
//! for a forked child on its way to exec.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// unlockpt(3) on a pseudo-terminal master.
pub(crate) fn unlock_pty(master: BorrowedFd) -> io::Result<()> {
    // SAFETY: an open descriptor; unlockpt only issues an ioctl on it.
    if unsafe { libc::unlockpt(master.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A terminal's settings.
#[derive(Clone, Copy)]
pub(crate) struct Termios(libc::termios);

impl Termios {
    /// These settings in raw mode (cfmakeraw(3)): no echo, no line editing, no signals
    /// from keys, bytes as they come.
    pub(crate) fn raw(&self) -> Termios {
        let mut raw = self.0;
        // SAFETY: cfmakeraw edits the copy we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        Termios(raw)
    }
}

/// tcgetattr(3): the settings of the terminal open at `fd`.
pub(crate) fn termios(fd: BorrowedFd) -> io::Result<Termios> {
    // SAFETY: termios is plain data filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: an open descriptor and a valid out-pointer.
    if unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Termios(t))
}

/// tcsetattr(3) with `TCSANOW`.
pub(crate) fn set_termios(fd: BorrowedFd, settings: &Termios) -> io::Result<()> {
    // SAFETY: an open descriptor and settings read by tcgetattr.
    if unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &settings.0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The window size of the terminal open at `fd` (`TIOCGWINSZ`).
pub(crate) fn window_size(fd: BorrowedFd) -> io::Result<libc::winsize> {
    // SAFETY: winsize is plain data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ws)
}

/// Sets the window size of the terminal open at `fd` (`TIOCSWINSZ`).
pub(crate) fn set_window_size(fd: BorrowedFd, size: &libc::winsize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// setsid(2): a new session, led by this process. Async-signal-safe.
pub(crate) fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the terminal open at `fd` this session's controlling terminal (`TIOCSCTTY`).
/// Async-signal-safe.
pub(crate) fn set_controlling_terminal(fd: BorrowedFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument, no pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Broken-down local time (the TZ of the caller, as the coreutils use).
pub(crate) fn local_time(secs: i64) -> libc::tm {
    // SAFETY: localtime_r (which reads TZ once) writes into `tm`, which we own.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        let t: libc::time_t = secs;
        libc::localtime_r(&t, &mut tm);
        tm
    }
}

/// Whether `name` matches the shell pattern `glob` (fnmatch(3) without flags).
pub(crate) fn fnmatch(glob: &CStr, name: &CStr) -> bool {
    // SAFETY: both are valid NUL-terminated strings.
    unsafe { libc::fnmatch(glob.as_ptr(), name.as_ptr(), 0) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_patterns() {
        assert!(fnmatch(c"*.rs", c"main.rs"));
        assert!(fnmatch(c"[a-c]?", c"bz"));
        assert!(!fnmatch(c"*.rs", c"main.c"));
    }

    #[test]
    fn epoch_in_utc() {
        // 1970 in any zone east of UTC, 1969 west of it.
        let tm = local_time(0);
        assert!(matches!(tm.tm_year, 69 | 70));
    }

    #[test]
    fn not_a_terminal() {
        use std::os::fd::AsFd;
        let (r, _w) = std::io::pipe().unwrap();
        assert!(termios(r.as_fd()).is_err());
        assert!(window_size(r.as_fd()).is_err());
    }
}
