//! Resource limits for a sandbox: `--memory`, `--memory-swap`, `--pids-limit` and `--cpus`
//! as docker run reads them, enforced with a cgroup (v2, or v1's per-controller hierarchies).
//!
//! [`Limits::from_flags`] turns the flags into plain data with docker's rules; it travels in the
//! run plan. [`Host::detect`] reads the machine's cgroup layout (the unified hierarchy, or the v1
//! hierarchies listed in /proc/self/mountinfo), [`plan()`](plan::plan) turns limits and host into the
//! directories and interface-file writes as plain data, and [`Cgroup::create`] carries them
//! out. A limit the machine cannot enforce is an error naming the missing controller, never a
//! silently unlimited run, and a create that fails leaves nothing behind. The group is
//! `imgfs/<name>` in every hierarchy used, `<name>` being the supervisor's pid; it goes away
//! with [`Cgroup::remove`], with its [`Cleaner`] when the supervisor is killed outright, or
//! with [`remove_stale`] at a later run.
//!
//! One file per part, each using only the ones before it: `limits` (docker's flag rules),
//! `host` (the machine's hierarchies), `plan` (what to make and write), `cleaner` (removing a
//! group whose processes may still run: one attempt, the cleaner process, the sweep of stale
//! groups) and `group` (making, joining and removing the group). This file holds the error
//! they share and names everything outsiders use.

// Each uses only the ones before it (kept apart so formatting does not sort them).
mod limits;

mod host;

mod plan;

mod cleaner;

mod group;

pub use cleaner::{Cleaner, remove_stale};
pub use group::Cgroup;
pub use host::{Hierarchy, Host, Layout, v1_hierarchies};
pub use limits::{CPU_PERIOD_US, LimitError, Limits, MIN_MEMORY, MemorySwap, PidsLimit};
#[cfg(test)]
pub(crate) use plan::plan;

use std::io;
use std::path::PathBuf;

/// A controller a limit needs; the name in a [`CgroupError::MissingController`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    Memory,
    /// The memory controller's swap accounting (`memory.memsw.*`, `memory.swap.*`).
    Swap,
    Pids,
    Cpu,
}

impl Controller {
    /// The name the kernel gives the controller.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Controller::Memory | Controller::Swap => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }

    /// The flag that needs it.
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Controller::Memory => "--memory",
            Controller::Swap => "--memory-swap",
            Controller::Pids => "--pids-limit",
            Controller::Cpu => "--cpus",
        }
    }
}

impl std::fmt::Display for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Controller::Swap => f.write_str("swap accounting"),
            c => write!(f, "{} controller", c.name()),
        }
    }
}

/// A cgroup step that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{flag} cannot be enforced: no cgroup {controller} on this machine (see {path})", flag = controller.flag())]
    MissingController {
        controller: Controller,
        path: PathBuf,
    },
    #[error("{name:?} cannot name a cgroup: it must be one path component")]
    Name { name: String },
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    #[error("cannot create the cgroup {path}: {cause}")]
    Create { path: PathBuf, cause: io::Error },
    #[error("cannot write {value:?} to {path}: {cause}")]
    Write {
        path: PathBuf,
        value: String,
        cause: io::Error,
    },
    #[error("cannot move process {pid} into {path}: {cause}")]
    Add {
        path: PathBuf,
        pid: libc::pid_t,
        cause: io::Error,
    },
    #[error("cannot start the cgroup's cleaner: {cause}")]
    Cleaner { cause: io::Error },
}

#[cfg(test)]
mod tests {
    //! What the tests of several files share.
    use super::*;

    pub(super) fn limits(
        memory: Option<&str>,
        swap: Option<&str>,
        pids: Option<&str>,
        cpus: Option<&str>,
    ) -> Result<Limits, LimitError> {
        Limits::from_flags_on(memory, swap, pids, cpus, 2)
    }

    pub(super) const MOUNTINFO: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:32 / /mnt/my\\040memory rw,relatime - cgroup cgroup rw,memory
";

    // Tests on this machine's cgroups: as root only, each under a name of its own, and
    // removing what they made.

    /// This machine's cgroups, when the tests may use them: as root, with memory, pids and cpu.
    /// This machine's cgroups, which these tests need with memory, pids and cpu controllers
    /// and root: they fail loudly, never skip, without them.
    pub(super) fn real_host() -> Host {
        assert!(
            crate::sys::euid() == 0,
            "REQUIREMENT NOT MET: the cgroup tests need root"
        );
        let host = Host::detect()
            .unwrap_or_else(|e| panic!("REQUIREMENT NOT MET: no usable cgroups: {e}"));
        let all = limits(Some("64m"), None, Some("64"), Some("0.5")).unwrap();
        if let Err(e) = plan(&all, "probe", &host) {
            panic!("REQUIREMENT NOT MET: the cgroup tests need memory, pids and cpu: {e}");
        }
        host
    }

    pub(super) fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep")
    }
}
