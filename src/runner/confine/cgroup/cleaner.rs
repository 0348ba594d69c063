//! Removing a sandbox's group when its processes may still run. [`remove_or_kill`] is one
//! attempt of [`Cgroup::remove`](super::Cgroup::remove); the [`Cleaner`] is a small process,
//! forked before the sandbox starts, that removes the group once the supervisor is gone,
//! however it ends; [`remove_stale`] sweeps, at a later run, the groups of supervisors that
//! are gone. Takes the group's paths; the cleaner process itself is
//! [`spawn_group_remover`](crate::sys::process::spawn_group_remover), which makes only
//! async-signal-safe calls and allocates nothing after the fork.

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::CgroupError;
use super::host::Layout;
use crate::sys::process::{self, GroupDir};

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
                let _ = process::kill(pid, libc::SIGKILL);
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
            let Some(pid) = crate::sys::pid_name(&entry.file_name()) else {
                continue;
            };
            if !crate::sys::alive(pid) {
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
        let cleaner = |source| CgroupError::Cleaner { cause: source };
        let cstr = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| cleaner(io::Error::from_raw_os_error(libc::EINVAL)))
        };
        let targets = groups
            .iter()
            .map(|g| {
                Ok(GroupDir {
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
        // Both ends close-on-exec.
        let (read, write) = std::io::pipe().map_err(cleaner)?;
        let pid = process::spawn_group_remover(read.into(), &targets, CLEANER_TRIES, POLL_STEP)
            .map_err(cleaner)?;
        Ok(Cleaner {
            pid: Some(pid),
            _alive: Some(write.into()),
        })
    }

    #[cfg(test)]
    pub(crate) fn pid(&self) -> Option<libc::pid_t> {
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
        // ECHILD if it was already reaped.
        while matches!(process::waitpid(pid, 0), Err(e) if e.kind() == io::ErrorKind::Interrupted) {
        }
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
        supervisor.0.kill().unwrap();
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
