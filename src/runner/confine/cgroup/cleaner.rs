//! Removing a sandbox's group when its processes may still run. [`remove_or_kill`] is one
//! attempt of [`Cgroup::remove`](super::Cgroup::remove); the [`Cleaner`] is a small process,
//! forked before the sandbox starts, that removes the group once the supervisor is gone,
//! however it ends; [`remove_stale`] sweeps, at a later run, the groups of supervisors that
//! are gone. Takes the group's paths; guarantees the cleaner makes only async-signal-safe
//! calls and allocates nothing after the fork.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::CgroupError;
use super::host::Layout;

/// The longest step of every wait here: an exit is seen within a millisecond of happening.
pub(super) const POLL_STEP: Duration = Duration::from_millis(1);
/// Steps of [`POLL_STEP`] the cleaner keeps trying (10 s): nobody waits for it, so it can be
/// patient with a process slow to die.
const CLEANER_TRIES: u32 = 10_000;

/// Removes `group` if it is empty (or already gone); else kills what it holds. True when gone.
pub(super) fn remove_or_kill(group: &Path) -> bool {
    match std::fs::remove_dir(group) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(_) => {
            let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
            for pid in procs
                .lines()
                .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
            {
                // SAFETY: signalling a process of the sandbox's own group.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            false
        }
    }
}

/// Removes the groups of sandboxes whose supervisor is gone: those named by a pid that no
/// longer runs, and empty. Cheap (a directory listing per hierarchy), for every run's start.
pub fn remove_stale() {
    let Ok(layout) = Layout::detect() else {
        return;
    };
    for parent in layout.parents() {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(pid) = crate::cache::sys::pid_name(&entry.file_name()) else {
                continue;
            };
            if !crate::cache::sys::alive(pid) {
                // rmdir refuses a group that still holds a process.
                match std::fs::remove_dir(entry.path()) {
                    Ok(()) => log::debug!("removed the stale cgroup {}", entry.path().display()),
                    Err(e) => log::debug!("stale cgroup {}: {e}", entry.path().display()),
                }
            }
        }
    }
}

/// The process that removes a sandbox's cgroup once its supervisor is gone, made by
/// [`Cgroup::spawn_cleaner`](super::Cgroup::spawn_cleaner). It waits for end-of-file on a
/// pipe whose only write end this holds (close-on-exec, so no command inherits it): the end
/// closes when the supervisor exits or is killed, and with it any forked copy (the init dies
/// with the supervisor).
#[derive(Debug)]
pub struct Cleaner {
    /// None when there was no group to clean.
    pid: Option<libc::pid_t>,
    _alive: Option<OwnedFd>,
}

impl Cleaner {
    /// Forks the cleaner for `groups` (`kill` is v2's cgroup.kill of one of them); see
    /// [`Cgroup::spawn_cleaner`](super::Cgroup::spawn_cleaner).
    pub(super) fn spawn(groups: &[PathBuf], kill: Option<&Path>) -> Result<Cleaner, CgroupError> {
        let cleaner = |source| CgroupError::Cleaner { source };
        let cstr = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| cleaner(io::Error::from_raw_os_error(libc::EINVAL)))
        };
        let targets = groups
            .iter()
            .map(|g| {
                Ok(Target {
                    dir: cstr(g)?,
                    procs: cstr(&g.join("cgroup.procs"))?,
                    kill: kill.filter(|k| k.starts_with(g)).map(cstr).transpose()?,
                })
            })
            .collect::<Result<Vec<_>, CgroupError>>()?;
        if targets.is_empty() {
            return Ok(Cleaner {
                pid: None,
                _alive: None,
            });
        }
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(cleaner(io::Error::last_os_error()));
        }
        // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child only runs `cleaner_main`, which makes async-signal-safe calls on
        // memory prepared above and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(cleaner(io::Error::last_os_error()));
        }
        if pid == 0 {
            cleaner_main(read.as_raw_fd(), &targets);
        }
        drop(read);
        Ok(Cleaner {
            pid: Some(pid),
            _alive: Some(write),
        })
    }

    pub fn pid(&self) -> Option<libc::pid_t> {
        self.pid
    }

    /// Lets the cleaner go and reaps it. After [`Cgroup::remove`](super::Cgroup::remove) it
    /// finds nothing left and exits at once; otherwise it first removes the group (for at most
    /// 10 s).
    pub fn finish(self) {
        let Some(pid) = self.pid else {
            return;
        };
        drop(self);
        let mut status = 0;
        // SAFETY: waiting for our own child; ECHILD if it was already reaped.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
}

/// One group the cleaner removes, its paths prepared before the fork.
struct Target {
    dir: CString,
    procs: CString,
    kill: Option<CString>,
}

/// The cleaner's whole life, in the forked child: only async-signal-safe calls, no
/// allocation. Never returns.
fn cleaner_main(wait_fd: RawFd, targets: &[Target]) -> ! {
    // SAFETY: plain syscalls on descriptors and memory this process owns.
    unsafe {
        libc::setsid();
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        libc::chdir(c"/".as_ptr());
        close_all_but(wait_fd);
        let mut byte = 0u8;
        loop {
            let n = libc::read(wait_fd, (&raw mut byte).cast(), 1);
            if n == 0 || (n < 0 && errno() != libc::EINTR) {
                break;
            }
        }
        libc::close(wait_fd);
        for _ in 0..CLEANER_TRIES {
            let mut left = false;
            for t in targets {
                left |= !cleaner_remove(t);
            }
            if !left {
                break;
            }
            let step = libc::timespec {
                tv_sec: 0,
                tv_nsec: POLL_STEP.as_nanos() as libc::c_long,
            };
            libc::nanosleep(&step, std::ptr::null_mut());
        }
        libc::_exit(0)
    }
}

fn errno() -> i32 {
    // SAFETY: the calling thread's errno, always a valid pointer.
    unsafe { *libc::__errno_location() }
}

/// Closes every descriptor but `keep`.
fn close_all_but(keep: RawFd) {
    let keep = keep.unsigned_abs();
    // SAFETY: closing descriptors of this process, which uses none of them afterwards.
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

/// The cleaner's [`remove_or_kill`], without allocating. True when the group is gone.
fn cleaner_remove(t: &Target) -> bool {
    // SAFETY: NUL-terminated paths prepared before the fork; buffers on the stack.
    unsafe {
        if libc::rmdir(t.dir.as_ptr()) == 0 || errno() == libc::ENOENT {
            return true;
        }
        if let Some(kill) = &t.kill {
            let fd = libc::open(kill.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"1".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
        let fd = libc::open(t.procs.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::Cgroup;
    use super::super::tests::{limits, real_host, sleeper};
    use super::*;

    /// Set in the fake supervisor this test binary runs for the cleaner's test.
    const FAKE_SUPERVISOR: &str = "IMGFS_TEST_FAKE_SUPERVISOR";

    /// The fake supervisor, when run as one (else nothing): makes a group with its cleaner,
    /// puts a sleeping process in it, says so, and waits to be killed.
    #[test]
    #[allow(clippy::zombie_processes)] // the cleaner kills it and init reaps it
    fn fake_supervisor() {
        let Ok(name) = std::env::var(FAKE_SUPERVISOR) else {
            return;
        };
        let l = limits(Some("64m"), None, Some("16"), None).unwrap();
        let cg = Cgroup::create(&l, &name).unwrap();
        let cleaner = cg.spawn_cleaner().unwrap();
        let child = sleeper();
        cg.add(child.id() as libc::pid_t).unwrap();
        println!("ready {} {}", child.id(), cleaner.pid().unwrap());
        std::thread::sleep(Duration::from_secs(60));
    }

    /// A child killed when the test ends, whatever happens.
    struct KilledAtEnd(std::process::Child);

    impl Drop for KilledAtEnd {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn cleaner_removes_the_group_after_a_kill() {
        real_host();
        use std::io::BufRead;
        let name = format!("test-{}-cleaner", std::process::id());
        let supervisor = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "runner::confine::cgroup::cleaner::tests::fake_supervisor",
                "--nocapture",
            ])
            .env(FAKE_SUPERVISOR, &name)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut supervisor = KilledAtEnd(supervisor);
        let out = std::io::BufReader::new(supervisor.0.stdout.take().unwrap());
        let ready = out
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("ready "))
            .expect("the fake supervisor never got ready");
        let pids: Vec<libc::pid_t> = ready[6..].split(' ').map(|p| p.parse().unwrap()).collect();
        let groups = Layout::detect().unwrap().parents();
        let groups: Vec<PathBuf> = groups
            .iter()
            .map(|p| p.join(&name))
            .filter(|g| g.exists())
            .collect();
        assert!(!groups.is_empty());
        // The cleaner soon holds nothing but its end of the pipe.
        let cleaner_fds =
            || std::fs::read_dir(format!("/proc/{}/fd", pids[1])).map_or(0, |d| d.count());
        let t = Instant::now();
        while cleaner_fds() != 1 && t.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(POLL_STEP);
        }
        let fds = cleaner_fds();
        // SAFETY: killing the child we started.
        unsafe { libc::kill(supervisor.0.id() as libc::pid_t, libc::SIGKILL) };
        let t = Instant::now();
        let _ = supervisor.0.wait();
        assert_eq!(fds, 1);
        while groups.iter().any(|g| g.exists()) && t.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(POLL_STEP);
        }
        let took = t.elapsed();
        for g in &groups {
            assert!(!g.exists(), "{} is left", g.display());
        }
        eprintln!("the cleaner removed the group {took:?} after the kill");
        for pid in pids {
            // The sleeping process was killed and the cleaner has exited (both reaped by init).
            let mut gone = false;
            for _ in 0..1000 {
                let state = std::fs::read_to_string(format!("/proc/{pid}/stat"));
                if state.map_or(true, |s| s.contains(") Z ")) {
                    gone = true;
                    break;
                }
                std::thread::sleep(POLL_STEP);
            }
            assert!(gone, "process {pid} still runs");
        }
    }
}
