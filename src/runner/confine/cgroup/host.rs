//! The machine's cgroups: whether /sys/fs/cgroup is the unified (v2) hierarchy or holds v1's
//! per-controller ones (read from /proc/self/mountinfo), which controllers each offers, and
//! whether any swap is on. Takes nothing but the running system (or, for
//! [`v1_hierarchies`], a mountinfo text); hands on [`Host`], plain data the plan is made
//! from. Reading never changes anything.

use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::CgroupError;
use crate::sys::mountinfo;

/// Where the cgroup hierarchies are mounted.
pub(super) const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The directory in each hierarchy holding one group per sandbox; shared, so never removed.
pub(super) const PARENT: &str = "imgfs";
/// The v1 controllers a limit uses; others (cpuacct, cpuset, ...) are left alone.
const USED_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// One mounted cgroup v1 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub mountpoint: PathBuf,
    /// The controllers bound to it (`cpu` and `cpuacct` often share one).
    pub controllers: Vec<String>,
}

/// How the machine's cgroups are laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The unified hierarchy at `root`, offering `controllers` (its cgroup.controllers).
    V2 {
        root: PathBuf,
        controllers: Vec<String>,
    },
    /// One hierarchy per mount of cgroup v1 (none when nothing is mounted).
    V1 { hierarchies: Vec<Hierarchy> },
}

impl Layout {
    /// Reads the layout: v2 if /sys/fs/cgroup is a cgroup2 filesystem, else the v1
    /// hierarchies in /proc/self/mountinfo.
    pub(crate) fn detect() -> Result<Layout, CgroupError> {
        let root = Path::new(CGROUP_ROOT);
        if is_cgroup2(root) {
            let path = root.join("cgroup.controllers");
            let text = read_text(&path)?;
            return Ok(Layout::V2 {
                root: root.to_path_buf(),
                controllers: text.split_whitespace().map(String::from).collect(),
            });
        }
        let text = read_text(Path::new(mountinfo::SELF))?;
        Ok(Layout::V1 {
            hierarchies: v1_hierarchies(&text),
        })
    }

    /// The `imgfs` directories holding the sandboxes' groups.
    pub(super) fn parents(&self) -> Vec<PathBuf> {
        match self {
            Layout::V2 { root, .. } => vec![root.join(PARENT)],
            Layout::V1 { hierarchies } => hierarchies
                .iter()
                .filter(|h| {
                    h.controllers
                        .iter()
                        .any(|c| USED_CONTROLLERS.contains(&&**c))
                })
                .map(|h| h.mountpoint.join(PARENT))
                .collect(),
        }
    }
}

/// What [`plan()`](super::plan::plan) needs to know about the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub layout: Layout,
    /// Whether any swap is on: without it, a swap limit holds whether or not it can be set.
    pub swap_in_use: bool,
}

impl Host {
    /// Reads the layout and whether swap is on.
    pub fn detect() -> Result<Host, CgroupError> {
        let swaps = std::fs::read_to_string("/proc/swaps");
        Ok(Host {
            layout: Layout::detect()?,
            // Unknown counts as on: a limit is then never skipped for it.
            swap_in_use: swaps.map_or(true, |s| swaps_in_use(&s)),
        })
    }
}

fn is_cgroup2(path: &Path) -> bool {
    crate::sys::fs::fs_type(path).is_ok_and(|t| same_magic(t, libc::CGROUP2_SUPER_MAGIC))
}

/// Compares statfs magics, whose integer types differ between targets.
fn same_magic<A: Into<i64>, B: Into<i64>>(a: A, b: B) -> bool {
    a.into() == b.into()
}

/// The cgroup v1 hierarchies in a /proc/PID/mountinfo text, the first mount of each.
/// The controllers are the filesystem's options less `rw`/`ro` and `key=value` ones.
pub fn v1_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut found: Vec<Hierarchy> = Vec::new();
    for mount in mountinfo::parse(mountinfo) {
        if mount.fstype != "cgroup" {
            continue;
        }
        let controllers: Vec<String> = mount
            .super_options()
            .filter(|o| !matches!(&**o, "rw" | "ro") && !o.contains('='))
            .map(Cow::into_owned)
            .collect();
        let known = |c: &String| found.iter().any(|h| h.controllers.contains(c));
        if controllers.is_empty() || controllers.iter().any(known) {
            continue;
        }
        found.push(Hierarchy {
            mountpoint: mount.mountpoint.into_owned(),
            controllers,
        });
    }
    found
}

/// Whether /proc/swaps lists any swap area (below its header line).
fn swaps_in_use(text: &str) -> bool {
    text.lines().skip(1).any(|l| !l.trim().is_empty())
}

fn read_text(path: &Path) -> Result<String, CgroupError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|source| CgroupError::Read {
            path: path.to_path_buf(),
            cause: source,
        })?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::super::tests::MOUNTINFO;
    use super::*;

    #[test]
    fn finds_v1_hierarchies_in_mountinfo() {
        let h = v1_hierarchies(MOUNTINFO);
        let seen: Vec<(&str, Vec<&str>)> = h
            .iter()
            .map(|h| {
                (
                    h.mountpoint.to_str().unwrap(),
                    h.controllers.iter().map(|c| c.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("/sys/fs/cgroup/cpu,cpuacct", vec!["cpu", "cpuacct"]),
                ("/sys/fs/cgroup/memory", vec!["memory"]),
                ("/sys/fs/cgroup/pids", vec!["pids"]),
                ("/sys/fs/cgroup/systemd", vec!["xattr"]),
            ]
        );
        let escaped = v1_hierarchies("1 2 0:1 / /cg/a\\040b rw - cgroup cgroup rw,blkio\n");
        assert_eq!(escaped[0].mountpoint, Path::new("/cg/a b"));
        assert!(swaps_in_use(
            "Filename Type Size Used Priority\n/swap file 1024 0 -2\n"
        ));
        assert!(!swaps_in_use("Filename Type Size Used Priority\n"));
    }
}
