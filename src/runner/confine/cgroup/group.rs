//! A sandbox's cgroup on the machine: [`Cgroup::create`] carries out a plan (and removes what
//! it made if a step fails), [`Cgroup::add`] moves a process in, [`Cgroup::oom_killed`] tells
//! whether the kernel killed one for lack of memory, and [`Cgroup::remove`] kills what is left
//! and removes the group. Takes the plan's limits and a name; hands on a [`Cgroup`] and, for a
//! supervisor that may be killed outright, its [`Cleaner`].

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::CgroupError;
use super::cleaner::{Cleaner, POLL_STEP, remove_or_kill};
use super::host::{Host, Layout};
use super::limits::Limits;
use super::plan::{IfMissing, Plan, Step, plan};

/// How long [`Cgroup::remove`] waits for killed processes to leave: exiting takes
/// microseconds, unless a process is stuck in the kernel (a hung FUSE read).
const REMOVE_WAIT: Duration = Duration::from_secs(2);
/// The first step of [`Cgroup::remove`]'s wait, doubled up to [`POLL_STEP`]: a killed process
/// is usually gone within a few dozen microseconds.
const FIRST_STEP: Duration = Duration::from_micros(50);

/// A sandbox's cgroup, made by [`Cgroup::create`].
///
/// [`Cgroup::remove`] ends it. Dropping it does the same, but only in the process that
/// created it: the copy a forked child holds never removes anything.
///
/// The supervisor's order: [`remove_stale`](super::remove_stale); `create` named by its pid;
/// [`Cgroup::spawn_cleaner`] while it is still single-threaded and outside the sandbox's
/// namespaces; then it adds the init, which waits for that before it starts anything (so
/// nothing it forks escapes the limits); at the end [`Cgroup::oom_killed`], [`Cgroup::remove`]
/// and [`Cleaner::finish`].
#[derive(Debug)]
pub struct Cgroup {
    groups: Vec<PathBuf>,
    oom: Option<PathBuf>,
    kill: Option<PathBuf>,
    owner: u32,
}

impl Cgroup {
    /// Makes the group `imgfs/<name>` enforcing `limits` in every hierarchy they need. With no
    /// limit, nothing is made.
    pub fn create(limits: &Limits, name: &str) -> Result<Cgroup, CgroupError> {
        let host = if limits.is_empty() {
            Host {
                layout: Layout::V1 {
                    hierarchies: Vec::new(),
                },
                swap_in_use: false,
            }
        } else {
            Host::detect()?
        };
        Cgroup::carry_out(plan(limits, name, &host)?)
    }

    /// Carries out `plan`; on failure removes the groups it made.
    pub(crate) fn carry_out(plan: Plan) -> Result<Cgroup, CgroupError> {
        let mut made = Vec::new();
        let result = plan
            .steps
            .iter()
            .try_for_each(|step| apply(step, &mut made));
        if let Err(e) = result {
            for group in made.iter().rev() {
                let _ = std::fs::remove_dir(group);
            }
            return Err(e);
        }
        Ok(Cgroup {
            groups: plan.groups,
            oom: plan.oom,
            kill: plan.kill,
            owner: std::process::id(),
        })
    }

    /// The sandbox's groups, one per hierarchy.
    #[cfg(test)]
    pub(crate) fn paths(&self) -> &[PathBuf] {
        &self.groups
    }

    /// Moves process `pid` (0: the caller) into the group; its children forked afterwards
    /// follow it.
    pub fn add(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        for group in &self.groups {
            let path = group.join("cgroup.procs");
            write_value(&path, &pid.to_string()).map_err(|source| CgroupError::Add {
                path: path.clone(),
                pid,
                cause: source,
            })?;
        }
        Ok(())
    }

    /// Whether the kernel killed a process of the group for lack of memory (kernels that
    /// count it: v2, v1 since 4.13). Asked before [`Cgroup::remove`].
    pub(crate) fn oom_killed(&self) -> bool {
        let Some(path) = &self.oom else {
            return false;
        };
        std::fs::read_to_string(path).is_ok_and(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
        })
    }

    /// Kills whatever is left in the group, waits (at most 2 s) for it to go and
    /// removes the group. What cannot be removed is logged and left to
    /// [`remove_stale`](super::remove_stale).
    pub fn remove(mut self) {
        self.remove_now();
    }

    fn remove_now(&mut self) {
        let mut left = std::mem::take(&mut self.groups);
        if left.is_empty() {
            return;
        }
        if let Some(kill) = &self.kill {
            let _ = write_value(kill, "1");
        }
        let deadline = Instant::now() + REMOVE_WAIT;
        let mut step = FIRST_STEP;
        loop {
            left.retain(|group| !remove_or_kill(group));
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(step);
            step = (step * 2).min(POLL_STEP);
        }
        for group in left {
            log::warn!("cannot remove the cgroup {}: still in use", group.display());
        }
    }

    /// Starts the cleaner: a small process that removes the group once the caller is gone,
    /// however it ends. Start it before any process is added, so that it stays out of the
    /// group, and before entering namespaces, so that it holds none. Forking is safe in a
    /// process with threads too: the child makes only async-signal-safe calls.
    pub fn spawn_cleaner(&self) -> Result<Cleaner, CgroupError> {
        Cleaner::spawn(&self.groups, self.kill.as_deref())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if std::process::id() == self.owner {
            self.remove_now();
        }
    }
}

/// Carries out one step; `made` collects the groups made so far.
fn apply(step: &Step, made: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    match step {
        Step::Parent(path) => match std::fs::create_dir(path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Create {
                path: path.clone(),
                cause: e,
            }),
            _ => Ok(()),
        },
        Step::Group(path) => {
            let mut result = std::fs::create_dir(path);
            if result
                .as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::AlreadyExists)
            {
                // Left by an earlier process of the same name, which is therefore gone.
                let _ = std::fs::remove_dir(path);
                result = std::fs::create_dir(path);
            }
            result.map_err(|source| CgroupError::Create {
                path: path.clone(),
                cause: source,
            })?;
            made.push(path.clone());
            Ok(())
        }
        Step::Write {
            path,
            value,
            if_missing,
        } => match write_value(path, value) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match if_missing {
                IfMissing::Fail(controller) => Err(CgroupError::MissingController {
                    controller: *controller,
                    path: path.clone(),
                }),
                IfMissing::Warn => {
                    log::warn!(
                        "memory limited without swap: this kernel does not account swap ({} is missing)",
                        path.display()
                    );
                    Ok(())
                }
                IfMissing::Skip => {
                    log::debug!("{} is missing; no swap is on", path.display());
                    Ok(())
                }
            },
            Err(source) => Err(CgroupError::Write {
                path: path.clone(),
                value: value.clone(),
                cause: source,
            }),
            Ok(()) => Ok(()),
        },
    }
}

/// Writes an interface file in one write(2), as cgroupfs wants; never creates it.
fn write_value(path: &Path, value: &str) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{limits, real_host, sleeper};
    use super::super::{Controller, remove_stale};
    use super::*;

    fn contents(groups: &[PathBuf], file: &str) -> Option<String> {
        let path = groups.iter().map(|g| g.join(file)).find(|p| p.exists())?;
        Some(std::fs::read_to_string(path).ok()?.trim().to_string())
    }

    #[test]
    fn creates_adds_and_removes_a_cgroup() {
        let host = real_host();
        let l = Limits::from_flags(Some("64m"), None, Some("64"), Some("0.5")).unwrap();
        let name = format!("test-{}-create", std::process::id());
        let cg = Cgroup::create(&l, &name).unwrap();
        let groups = cg.paths().to_vec();
        let value = |file| contents(&groups, file);
        match host.layout {
            Layout::V1 { .. } => {
                assert_eq!(groups.len(), 3);
                assert_eq!(value("memory.limit_in_bytes").as_deref(), Some("67108864"));
                if host.swap_in_use || value("memory.memsw.limit_in_bytes").is_some() {
                    assert_eq!(
                        value("memory.memsw.limit_in_bytes").as_deref(),
                        Some("134217728")
                    );
                }
                assert_eq!(value("cpu.cfs_quota_us").as_deref(), Some("50000"));
                assert_eq!(value("cpu.cfs_period_us").as_deref(), Some("100000"));
            }
            Layout::V2 { .. } => {
                assert_eq!(groups.len(), 1);
                assert_eq!(value("memory.max").as_deref(), Some("67108864"));
                assert_eq!(value("cpu.max").as_deref(), Some("50000 100000"));
            }
        }
        assert_eq!(value("pids.max").as_deref(), Some("64"));

        let mut child = sleeper();
        let pid = child.id() as libc::pid_t;
        cg.add(pid).unwrap();
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(own.contains(&format!("/imgfs/{name}")), "{own}");
        assert!(!cg.oom_killed());
        cg.remove();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        for g in &groups {
            assert!(!g.exists(), "{} is left", g.display());
        }
    }

    #[test]
    fn reports_an_oom_kill() {
        real_host();
        let l = limits(Some("16m"), Some("16m"), None, None).unwrap();
        let name = format!("test-{}-oom", std::process::id());
        let cg = Cgroup::create(&l, &name).unwrap();
        // tail keeps /dev/zero's one endless line in memory; it starts once it is in the group.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read go; head -c 256m /dev/zero | tail"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        cg.add(child.id() as libc::pid_t).unwrap();
        assert!(!cg.oom_killed());
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        drop(stdin);
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(cg.oom_killed());
        cg.remove();
    }

    /// A create that fails half-way removes the groups it made.
    #[test]
    fn leaves_nothing_when_create_fails() {
        let host = real_host();
        let l = limits(Some("64m"), None, Some("64"), None).unwrap();
        let name = format!("test-{}-fail", std::process::id());
        let mut p = plan(&l, &name, &host).unwrap();
        let groups = p.groups.clone();
        p.steps.push(Step::Write {
            path: groups[0].join("no.such.file"),
            value: "1".into(),
            if_missing: IfMissing::Fail(Controller::Pids),
        });
        let e = Cgroup::carry_out(p).unwrap_err();
        assert!(matches!(e, CgroupError::MissingController { .. }), "{e}");
        for g in &groups {
            assert!(!g.exists(), "{} is left", g.display());
        }
        // A refused value is a write error, and leaves nothing either.
        let mut p = plan(&l, &name, &host).unwrap();
        p.steps.push(Step::Write {
            path: groups[0].join("cgroup.procs"),
            value: "not a pid".into(),
            if_missing: IfMissing::Skip,
        });
        assert!(matches!(
            Cgroup::carry_out(p),
            Err(CgroupError::Write { .. })
        ));
        for g in &groups {
            assert!(!g.exists(), "{} is left", g.display());
        }
    }

    /// A group left by an earlier process of the same name is replaced; stale groups named by
    /// a pid that is gone are swept.
    #[test]
    fn replaces_and_sweeps_stale_groups() {
        real_host();
        let mut done = std::process::Command::new("true").spawn().unwrap();
        done.wait().unwrap();
        let dead = done.id().to_string();
        let l = limits(None, None, Some("8"), None).unwrap();
        let first = Cgroup::create(&l, &dead).unwrap();
        let groups = first.paths().to_vec();
        std::mem::forget(first); // as if its supervisor had been killed
        let again = Cgroup::create(&l, &dead).unwrap();
        std::mem::forget(again);
        assert!(groups.iter().all(|g| g.exists()));
        remove_stale();
        for g in &groups {
            assert!(!g.exists(), "{} is left", g.display());
        }
    }
}
