//! The machine's cgroups: whether /sys/fs/cgroup is the unified (v2) hierarchy or holds v1's
//! per-controller ones (read from /proc/self/mountinfo), which controllers each offers, and
//! whether any swap is on. Takes nothing but the running system (or, for
//! [`v1_hierarchies`], a mountinfo text); hands on [`Host`], plain data the plan is made
//! from. Reading never changes anything.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::CgroupError;

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
    pub fn detect() -> Result<Layout, CgroupError> {
        let root = Path::new(CGROUP_ROOT);
        if is_cgroup2(root) {
            let path = root.join("cgroup.controllers");
            let text = read_text(&path)?;
            return Ok(Layout::V2 {
                root: root.to_path_buf(),
                controllers: text.split_whitespace().map(String::from).collect(),
            });
        }
        let mountinfo = read_text(Path::new("/proc/self/mountinfo"))?;
        Ok(Layout::V1 {
            hierarchies: v1_hierarchies(&mountinfo),
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

/// What [`plan()`](super::plan()) needs to know about the machine.
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
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data, filled in by the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && same_magic(st.f_type, libc::CGROUP2_SUPER_MAGIC)
}

/// Compares statfs magics, whose integer types differ between targets.
fn same_magic<A: Into<i64>, B: Into<i64>>(a: A, b: B) -> bool {
    a.into() == b.into()
}

/// The cgroup v1 hierarchies in a /proc/PID/mountinfo text, the first mount of each.
pub fn v1_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut found: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        // id parent dev root mountpoint options [optional...] - fstype source superoptions
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        if right.next() != Some("cgroup") {
            continue;
        }
        let Some(mountpoint) = left.split(' ').nth(4) else {
            continue;
        };
        let controllers: Vec<String> = right
            .nth(1)
            .unwrap_or("")
            .split(',')
            .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
            .map(String::from)
            .collect();
        let known = |c: &String| found.iter().any(|h| h.controllers.contains(c));
        if controllers.is_empty() || controllers.iter().any(known) {
            continue;
        }
        found.push(Hierarchy {
            mountpoint: PathBuf::from(unescape_mountinfo(mountpoint)),
            controllers,
        });
    }
    found
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
            source,
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
        assert_eq!(unescape_mountinfo("/mnt/my\\040memory"), "/mnt/my memory");
        assert_eq!(unescape_mountinfo("/a\\9b\\"), "/a\\9b\\");
        assert!(swaps_in_use(
            "Filename Type Size Used Priority\n/swap file 1024 0 -2\n"
        ));
        assert!(!swaps_in_use("Filename Type Size Used Priority\n"));
    }
}
