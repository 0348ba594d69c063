//! Resource limits for a sandbox: `--memory`, `--memory-swap`, `--pids-limit` and `--cpus`
//! as docker run reads them, enforced with a cgroup (v2, or v1's per-controller hierarchies).
//!
//! [`Limits::from_flags`] turns the flags into plain data with docker's rules; it travels in the
//! run plan. [`Host::detect`] reads the machine's cgroup layout (the unified hierarchy, or the v1
//! hierarchies listed in /proc/self/mountinfo), [`plan`] turns limits and host into the
//! directories and interface-file writes as plain data, and [`Cgroup::create`] carries them
//! out. A limit the machine cannot enforce is an error naming the missing controller, never a
//! silently unlimited run, and a create that fails leaves nothing behind. The group is
//! `imgfs/<name>` in every hierarchy used, `<name>` being the supervisor's pid; it goes away
//! with [`Cgroup::remove`], with its [`Cleaner`] when the supervisor is killed outright, or
//! with [`remove_stale`] at a later run.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{self, Read, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// docker's least `--memory` (its linuxMinMemory): less leaves a container no room to start.
pub const MIN_MEMORY: u64 = 6 << 20;
/// The CFS period docker gives `--cpus`, which is also the kernel's default, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// docker stores `--cpus` as an integer count of these per CPU.
const NANO_PER_CPU: u64 = 1_000_000_000;
/// docker's documented least `--cpus`, 0.01: the kernel refuses a CFS quota under 1 ms,
/// which is 0.01 of the 100 ms period.
const MIN_NANO_CPUS: u64 = NANO_PER_CPU / 100;
/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The directory in each hierarchy holding one group per sandbox; shared, so never removed.
const PARENT: &str = "imgfs";
/// How long [`Cgroup::remove`] waits for killed processes to leave: exiting takes
/// microseconds, unless a process is stuck in the kernel (a hung FUSE read).
const REMOVE_WAIT: Duration = Duration::from_secs(2);
/// The longest step of every wait here: an exit is seen within a millisecond of happening.
const POLL_STEP: Duration = Duration::from_millis(1);
/// The first step of [`Cgroup::remove`]'s wait, doubled up to [`POLL_STEP`]: a killed process
/// is usually gone within a few dozen microseconds.
const FIRST_STEP: Duration = Duration::from_micros(50);
/// Steps of [`POLL_STEP`] the cleaner keeps trying (10 s): nobody waits for it, so it can be
/// patient with a process slow to die.
const CLEANER_TRIES: u32 = 10_000;
/// The v1 controllers a limit uses; others (cpuacct, cpuset, ...) are left alone.
const USED_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

// ---------------------------------------------------------------------------------------------
// Limits as docker reads them

/// `--memory-swap`: memory and swap together, in bytes, or `-1` for unlimited swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemorySwap {
    Limited(u64),
    Unlimited,
}

/// `--pids-limit`: at most this many tasks; zero or less is unlimited, as in docker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PidsLimit {
    Limited(u64),
    Unlimited,
}

/// The resource limits of one sandbox. A field that is `None` was not given (or given as
/// docker's "unset", `0`). `memory_swap` stays `None` when only `--memory` was given: the
/// total is then docker's default, twice the memory (see [`Limits::swap_total`]), and the
/// difference decides how a kernel without swap accounting is treated.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// `--memory`, bytes.
    pub memory: Option<u64>,
    /// `--memory-swap` as given.
    pub memory_swap: Option<MemorySwap>,
    /// `--pids-limit`.
    pub pids: Option<PidsLimit>,
    /// `--cpus` in nano-CPUs (0.5 is 500 000 000), as docker stores it.
    pub cpus: Option<u64>,
}

/// A flag docker would refuse.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error(
        "invalid value {value:?} for --{flag}: not a size (a number with an optional unit b, k, m, g, t or p)"
    )]
    Size { flag: &'static str, value: String },
    #[error("invalid value {value:?} for --{flag}: too large")]
    TooLarge { flag: &'static str, value: String },
    #[error("--memory of {value} bytes is too low: the minimum memory limit allowed is 6MB")]
    MemoryTooLow { value: u64 },
    #[error(
        "--memory-swap ({swap} bytes) is less than --memory ({memory} bytes): it counts memory and swap together"
    )]
    SwapBelowMemory { memory: u64, swap: u64 },
    #[error(
        "--memory-swap needs --memory: always set the memory limit when using a memory-swap limit"
    )]
    SwapWithoutMemory { swap: u64 },
    #[error("invalid value {value:?} for --pids-limit: not an integer")]
    Pids { value: String },
    #[error("invalid value {value:?} for --cpus: not a decimal number")]
    Cpus { value: String },
    #[error("invalid value {value:?} for --cpus: too precise (at most 9 decimals)")]
    CpusTooPrecise { value: String },
    #[error(
        "--cpus {value}: the range of CPUs is from 0.01 to {available}.00, as there are only {available} CPUs available"
    )]
    CpusRange { value: String, available: u32 },
}

impl Limits {
    /// Reads docker run's flags as docker does, checking `--cpus` against the CPUs this process
    /// may run on.
    pub fn from_flags(
        memory: Option<&str>,
        memory_swap: Option<&str>,
        pids_limit: Option<&str>,
        cpus: Option<&str>,
    ) -> Result<Limits, LimitError> {
        Limits::from_flags_on(memory, memory_swap, pids_limit, cpus, available_cpus())
    }

    /// [`Limits::from_flags`] on a machine with `available` CPUs.
    pub fn from_flags_on(
        memory: Option<&str>,
        memory_swap: Option<&str>,
        pids_limit: Option<&str>,
        cpus: Option<&str>,
        available: u32,
    ) -> Result<Limits, LimitError> {
        let memory = memory
            .map(|m| parse_size("memory", m))
            .transpose()?
            .filter(|&m| m != 0);
        let memory_swap = match memory_swap {
            Some("-1") => Some(MemorySwap::Unlimited),
            Some(s) => Some(parse_size("memory-swap", s)?)
                .filter(|&s| s != 0)
                .map(MemorySwap::Limited),
            None => None,
        };
        if let Some(m) = memory
            && m < MIN_MEMORY
        {
            return Err(LimitError::MemoryTooLow { value: m });
        }
        if let Some(MemorySwap::Limited(swap)) = memory_swap {
            match memory {
                Some(memory) if swap < memory => {
                    return Err(LimitError::SwapBelowMemory { memory, swap });
                }
                None => return Err(LimitError::SwapWithoutMemory { swap }),
                Some(_) => {}
            }
        }
        let pids = pids_limit
            .map(|p| {
                let n: i64 = p.parse().map_err(|_| LimitError::Pids {
                    value: p.to_string(),
                })?;
                Ok(if n <= 0 {
                    PidsLimit::Unlimited
                } else {
                    PidsLimit::Limited(n.unsigned_abs())
                })
            })
            .transpose()?;
        let cpus = cpus
            .map(|c| parse_cpus(c, available))
            .transpose()?
            .flatten();
        Ok(Limits {
            memory,
            memory_swap,
            pids,
            cpus,
        })
    }

    /// Memory and swap together, with docker's default of twice `--memory` when only that
    /// was given. Unlimited swap, or none at all without a memory limit, is no limit.
    pub fn swap_total(&self) -> Option<u64> {
        let memory = self.memory?;
        match self.memory_swap {
            Some(MemorySwap::Limited(total)) => Some(total),
            Some(MemorySwap::Unlimited) => None,
            None => Some(memory.saturating_mul(2)),
        }
    }

    /// The number of tasks allowed, if limited.
    pub fn pids_max(&self) -> Option<u64> {
        match self.pids {
            Some(PidsLimit::Limited(n)) => Some(n),
            _ => None,
        }
    }

    /// The CFS quota per [`CPU_PERIOD_US`], in microseconds, as docker computes it.
    pub fn cpu_quota_us(&self) -> Option<u64> {
        let nano = self.cpus?;
        let quota = u128::from(nano) * u128::from(CPU_PERIOD_US) / u128::from(NANO_PER_CPU);
        Some(u64::try_from(quota).unwrap_or(u64::MAX))
    }

    /// Whether there is no limit to enforce, and so no cgroup needed.
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.pids_max().is_none() && self.cpus.is_none()
    }
}

/// A size as docker reads `--memory` (its RAMInBytes): a decimal number, optionally
/// followed (or, after one space) by a unit b, k, m, g, t or p, itself optionally followed by
/// `b` or `ib`, in any case; powers of 1024; the fraction of a byte is dropped.
fn parse_size(flag: &'static str, text: &str) -> Result<u64, LimitError> {
    let bad = || LimitError::Size {
        flag,
        value: text.to_string(),
    };
    let sep = text
        .rfind(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
        .ok_or_else(bad)?;
    let (number, suffix) = if text.as_bytes()[sep] == b' ' {
        (&text[..sep], &text[sep + 1..])
    } else {
        (&text[..=sep], &text[sep + 1..])
    };
    let numeric = |b: u8| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-');
    if !number.bytes().all(numeric) {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    if value.is_sign_negative() || !value.is_finite() {
        return Err(bad());
    }
    let suffix = suffix.to_ascii_lowercase();
    let unit = match suffix.as_bytes() {
        [] | [b'b'] => 1u64,
        [u, rest @ ..] if rest.is_empty() || rest == b"b" || rest == b"ib" => {
            match b"kmgtp".iter().position(|c| c == u) {
                Some(i) => 1u64 << (10 * (i + 1)),
                None => return Err(bad()),
            }
        }
        _ => return Err(bad()),
    };
    let bytes = value * unit as f64;
    // docker keeps sizes in an int64.
    if bytes >= i64::MAX as f64 {
        return Err(LimitError::TooLarge {
            flag,
            value: text.to_string(),
        });
    }
    Ok(bytes as u64)
}

/// `--cpus` as nano-CPUs (docker's NanoCPUs): a decimal number with at most nine decimals.
/// Zero is docker's "unset"; anything else must lie in 0.01 ..= `available`.
fn parse_cpus(text: &str, available: u32) -> Result<Option<u64>, LimitError> {
    let bad = || LimitError::Cpus {
        value: text.to_string(),
    };
    let range = || LimitError::CpusRange {
        value: text.to_string(),
        available,
    };
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !digits(whole) || !digits(fraction) {
        return Err(bad());
    }
    let (kept, dropped) = fraction.split_at(fraction.len().min(9));
    if dropped.bytes().any(|b| b != b'0') {
        return Err(LimitError::CpusTooPrecise {
            value: text.to_string(),
        });
    }
    let whole = whole.trim_start_matches('0');
    // More than 10 digits before the point is more CPUs than any machine has.
    if whole.len() > 10 {
        return Err(range());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let mut nano_fraction = 0u64;
    for (i, b) in kept.bytes().enumerate() {
        nano_fraction += u64::from(b - b'0') * 10u64.pow(8 - i as u32);
    }
    let nano = whole * NANO_PER_CPU + nano_fraction;
    if nano == 0 {
        return Ok(None);
    }
    if negative || nano < MIN_NANO_CPUS || nano > u64::from(available) * NANO_PER_CPU {
        return Err(range());
    }
    Ok(Some(nano))
}

/// The CPUs this process may run on, as docker counts them (its sysinfo.NumCPU).
fn available_cpus() -> u32 {
    // SAFETY: cpu_set_t is plain data, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the size passed is that of `set`, a valid out-pointer.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc == 0 {
        // SAFETY: counts the bits of an initialised set.
        let n = unsafe { libc::CPU_COUNT(&set) };
        if n > 0 {
            return n.unsigned_abs();
        }
    }
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
}

// ---------------------------------------------------------------------------------------------
// The machine's cgroups

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
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory | Controller::Swap => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }

    /// The flag that needs it.
    pub fn flag(self) -> &'static str {
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
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot create the cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("cannot move process {pid} into {path}: {source}")]
    Add {
        path: PathBuf,
        pid: libc::pid_t,
        source: io::Error,
    },
    #[error("cannot start the cgroup's cleaner: {source}")]
    Cleaner { source: io::Error },
}

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
    fn parents(&self) -> Vec<PathBuf> {
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

/// What [`plan`] needs to know about the machine.
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

// ---------------------------------------------------------------------------------------------
// The plan

/// What to do when an interface file a write needs does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfMissing {
    /// Refuse: the limit cannot be enforced.
    Fail(Controller),
    /// Go on with a warning, as docker does for the swap limit it implies.
    Warn,
    /// Go on: the limit holds anyway (a swap limit with no swap on).
    Skip,
}

/// One step of creating a sandbox's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A directory shared by every sandbox, made if missing and never removed.
    Parent(PathBuf),
    /// The sandbox's own group, removed with it.
    Group(PathBuf),
    /// A value written to an interface file.
    Write {
        path: PathBuf,
        value: String,
        if_missing: IfMissing,
    },
}

/// A sandbox's cgroup as plain data: how to make it, and what it is made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// The sandbox's groups, one per hierarchy (one in v2).
    pub groups: Vec<PathBuf>,
    /// The file counting OOM kills as `oom_kill N`, with a memory limit.
    pub oom: Option<PathBuf>,
    /// v2's cgroup.kill, which kills every process of the group at once.
    pub kill: Option<PathBuf>,
}

/// Decides the cgroup for `limits` named `name` on `host`. Nothing is needed, and the plan is
/// empty, when the limits are.
pub fn plan(limits: &Limits, name: &str, host: &Host) -> Result<Plan, CgroupError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(CgroupError::Name {
            name: name.to_string(),
        });
    }
    let mut plan = Plan::default();
    if limits.is_empty() {
        return Ok(plan);
    }
    // Without swap accounting a swap limit the user gave is refused; docker's implied one
    // gives a warning, as docker does; with no swap on, either holds anyway.
    let swap_missing = if !host.swap_in_use {
        IfMissing::Skip
    } else if limits.memory_swap.is_some() {
        IfMissing::Fail(Controller::Swap)
    } else {
        IfMissing::Warn
    };
    match &host.layout {
        Layout::V2 { root, controllers } => {
            plan_v2(limits, name, root, controllers, swap_missing, &mut plan)?;
        }
        Layout::V1 { hierarchies } => plan_v1(limits, name, hierarchies, swap_missing, &mut plan)?,
    }
    Ok(plan)
}

fn write(path: PathBuf, value: impl ToString, if_missing: IfMissing) -> Step {
    Step::Write {
        path,
        value: value.to_string(),
        if_missing,
    }
}

/// v2: one group under `root`, its controllers enabled down from the root.
fn plan_v2(
    limits: &Limits,
    name: &str,
    root: &Path,
    controllers: &[String],
    swap_missing: IfMissing,
    plan: &mut Plan,
) -> Result<(), CgroupError> {
    let fail = IfMissing::Fail;
    let needed = needed_controllers(limits);
    if let Some(c) = needed
        .iter()
        .find(|c| !controllers.iter().any(|have| have == c.name()))
    {
        return Err(CgroupError::MissingController {
            controller: *c,
            path: root.join("cgroup.controllers"),
        });
    }
    let parent = root.join(PARENT);
    let group = parent.join(name);
    plan.steps.push(Step::Parent(parent.clone()));
    for dir in [root, &parent] {
        for c in &needed {
            let path = dir.join("cgroup.subtree_control");
            plan.steps
                .push(write(path, format!("+{}", c.name()), fail(*c)));
        }
    }
    plan.steps.push(Step::Group(group.clone()));
    if let Some(memory) = limits.memory {
        let max = group.join("memory.max");
        plan.steps
            .push(write(max, memory, fail(Controller::Memory)));
        if let Some(total) = limits.swap_total() {
            let swap = total.saturating_sub(memory);
            plan.steps
                .push(write(group.join("memory.swap.max"), swap, swap_missing));
        }
        plan.oom = Some(group.join("memory.events"));
    }
    if let Some(n) = limits.pids_max() {
        plan.steps
            .push(write(group.join("pids.max"), n, fail(Controller::Pids)));
    }
    if let Some(quota) = limits.cpu_quota_us() {
        let max = format!("{quota} {CPU_PERIOD_US}");
        plan.steps
            .push(write(group.join("cpu.max"), max, fail(Controller::Cpu)));
    }
    plan.kill = Some(group.join("cgroup.kill"));
    plan.groups.push(group);
    Ok(())
}

/// v1: a group in each hierarchy holding a needed controller.
fn plan_v1(
    limits: &Limits,
    name: &str,
    hierarchies: &[Hierarchy],
    swap_missing: IfMissing,
    plan: &mut Plan,
) -> Result<(), CgroupError> {
    for c in needed_controllers(limits) {
        let Some(h) = hierarchies
            .iter()
            .find(|h| h.controllers.iter().any(|have| have == c.name()))
        else {
            return Err(CgroupError::MissingController {
                controller: c,
                path: Path::new(CGROUP_ROOT).join(c.name()),
            });
        };
        let group = h.mountpoint.join(PARENT).join(name);
        if !plan.groups.contains(&group) {
            plan.steps.push(Step::Parent(h.mountpoint.join(PARENT)));
            plan.steps.push(Step::Group(group.clone()));
            plan.groups.push(group.clone());
        }
        let fail = IfMissing::Fail(c);
        match c {
            Controller::Memory => {
                let memory = limits.memory.unwrap_or_default();
                plan.steps
                    .push(write(group.join("memory.limit_in_bytes"), memory, fail));
                if let Some(total) = limits.swap_total() {
                    let path = group.join("memory.memsw.limit_in_bytes");
                    plan.steps.push(write(path, total, swap_missing));
                }
                plan.oom = Some(group.join("memory.oom_control"));
            }
            Controller::Pids => {
                let n = limits.pids_max().unwrap_or_default();
                plan.steps.push(write(group.join("pids.max"), n, fail));
            }
            Controller::Cpu => {
                let quota = limits.cpu_quota_us().unwrap_or_default();
                let period = group.join("cpu.cfs_period_us");
                plan.steps.push(write(period, CPU_PERIOD_US, fail));
                plan.steps
                    .push(write(group.join("cpu.cfs_quota_us"), quota, fail));
            }
            Controller::Swap => {}
        }
    }
    Ok(())
}

/// The controllers `limits` use, in the order their files are written.
fn needed_controllers(limits: &Limits) -> Vec<Controller> {
    let mut needed = Vec::new();
    if limits.memory.is_some() {
        needed.push(Controller::Memory);
    }
    if limits.pids_max().is_some() {
        needed.push(Controller::Pids);
    }
    if limits.cpus.is_some() {
        needed.push(Controller::Cpu);
    }
    needed
}

// ---------------------------------------------------------------------------------------------
// Carrying it out

/// A sandbox's cgroup, made by [`Cgroup::create`].
///
/// [`Cgroup::remove`] ends it. Dropping it does the same, but only in the process that
/// created it: the copy a forked child holds never removes anything.
///
/// The supervisor's order: [`remove_stale`]; `create` named by its pid; [`Cgroup::spawn_cleaner`]
/// while it is still single-threaded and outside the sandbox's namespaces; then it adds the
/// init, which waits for that before it starts anything (so nothing it forks escapes the
/// limits); at the end [`Cgroup::oom_killed`], [`Cgroup::remove`] and [`Cleaner::finish`].
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
    pub fn carry_out(plan: Plan) -> Result<Cgroup, CgroupError> {
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
    pub fn paths(&self) -> &[PathBuf] {
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
                source,
            })?;
        }
        Ok(())
    }

    /// Whether the kernel killed a process of the group for lack of memory (kernels that
    /// count it: v2, v1 since 4.13). Asked before [`Cgroup::remove`].
    pub fn oom_killed(&self) -> bool {
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
    /// removes the group. What cannot be removed is logged and left to [`remove_stale`].
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
        let cleaner = |source| CgroupError::Cleaner { source };
        let cstr = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| cleaner(io::Error::from_raw_os_error(libc::EINVAL)))
        };
        let targets = self
            .groups
            .iter()
            .map(|g| {
                Ok(Target {
                    dir: cstr(g)?,
                    procs: cstr(&g.join("cgroup.procs"))?,
                    kill: self
                        .kill
                        .as_deref()
                        .filter(|k| k.starts_with(g))
                        .map(cstr)
                        .transpose()?,
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
                source: e,
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
                source,
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
                source,
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

/// Removes `group` if it is empty (or already gone); else kills what it holds. True when gone.
fn remove_or_kill(group: &Path) -> bool {
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

// ---------------------------------------------------------------------------------------------
// The cleaner

/// The process that removes a sandbox's cgroup once its supervisor is gone, made by
/// [`Cgroup::spawn_cleaner`]. It waits for end-of-file on a pipe whose only write end this
/// holds (close-on-exec, so no command inherits it): the end closes when the supervisor exits
/// or is killed, and with it any forked copy (the init dies with the supervisor).
#[derive(Debug)]
pub struct Cleaner {
    /// None when there was no group to clean.
    pid: Option<libc::pid_t>,
    _alive: Option<OwnedFd>,
}

impl Cleaner {
    pub fn pid(&self) -> Option<libc::pid_t> {
        self.pid
    }

    /// Lets the cleaner go and reaps it. After [`Cgroup::remove`] it finds nothing left and
    /// exits at once; otherwise it first removes the group (for at most 10 s).
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
    use super::*;

    const M: u64 = 1 << 20;

    fn limits(
        memory: Option<&str>,
        swap: Option<&str>,
        pids: Option<&str>,
        cpus: Option<&str>,
    ) -> Result<Limits, LimitError> {
        Limits::from_flags_on(memory, swap, pids, cpus, 2)
    }

    /// Sizes as docker's RAMInBytes reads them (powers of 1024, b/ib after the unit optional,
    /// any case, the fraction of a byte dropped).
    #[test]
    fn reads_sizes_as_docker() {
        let accepted: [(&str, u64); 18] = [
            ("64m", 64 * M),
            ("64M", 64 * M),
            ("64mb", 64 * M),
            ("64MiB", 64 * M),
            ("64 m", 64 * M),
            ("1g", 1 << 30),
            ("1.5g", 3 << 29),
            ("512k", 512 << 10),
            ("100b", 100),
            ("100", 100),
            ("64 ", 64),
            ("0.5k", 512),
            ("1.1k", 1126),
            ("1t", 1 << 40),
            ("1p", 1 << 50),
            (".5m", M / 2),
            ("10485760", 10 * M),
            ("7000000.9", 7_000_000),
        ];
        for (text, bytes) in accepted {
            assert_eq!(parse_size("memory", text), Ok(bytes), "{text:?}");
        }
        let refused = [
            "", "m", "abc", "-1", "-64m", "64x", "64bb", "64mi", "64kbb", "6 4m", "64m ", "1.2.3m",
            "1e400", "64мб", "9000p",
        ];
        for text in refused {
            assert!(parse_size("memory", text).is_err(), "{text:?}");
        }
    }

    /// docker's memory rules: 6 MiB at least, --memory-swap a total of at least --memory
    /// that needs --memory, -1 for unlimited swap, 0 meaning unset.
    #[test]
    fn applies_dockers_memory_rules() {
        let ok = |memory, swap, want_memory, want_swap| {
            let l = limits(memory, swap, None, None).unwrap();
            assert_eq!(
                (l.memory, l.memory_swap),
                (want_memory, want_swap),
                "{memory:?} {swap:?}"
            );
        };
        ok(Some("64m"), None, Some(64 * M), None);
        ok(Some("6m"), None, Some(6 * M), None);
        ok(Some("0"), None, None, None);
        ok(
            Some("64m"),
            Some("64m"),
            Some(64 * M),
            Some(MemorySwap::Limited(64 * M)),
        );
        ok(
            Some("64m"),
            Some("1g"),
            Some(64 * M),
            Some(MemorySwap::Limited(1 << 30)),
        );
        ok(
            Some("64m"),
            Some("-1"),
            Some(64 * M),
            Some(MemorySwap::Unlimited),
        );
        ok(Some("64m"), Some("0"), Some(64 * M), None);
        ok(None, Some("-1"), None, Some(MemorySwap::Unlimited));

        let err = |memory, swap| limits(memory, swap, None, None).unwrap_err();
        assert_eq!(
            err(Some("4m"), None),
            LimitError::MemoryTooLow { value: 4 * M }
        );
        assert_eq!(
            err(Some("6291455"), None),
            LimitError::MemoryTooLow { value: 6 * M - 1 }
        );
        assert_eq!(
            err(Some("64m"), Some("32m")),
            LimitError::SwapBelowMemory {
                memory: 64 * M,
                swap: 32 * M
            }
        );
        assert_eq!(
            err(None, Some("1g")),
            LimitError::SwapWithoutMemory { swap: 1 << 30 }
        );
        assert!(matches!(
            err(Some("64m"), Some("-2")),
            LimitError::Size {
                flag: "memory-swap",
                ..
            }
        ));
        assert!(matches!(
            err(Some("x"), None),
            LimitError::Size { flag: "memory", .. }
        ));
    }

    #[test]
    fn travels_in_the_plan() {
        let l = limits(Some("64m"), Some("-1"), Some("0"), Some("1.5")).unwrap();
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<Limits>(&json).unwrap(), l);
        assert!(!l.is_empty());
        assert!(Limits::default().is_empty());
    }

    #[test]
    fn totals_swap_as_docker() {
        let total = |memory, swap| limits(memory, swap, None, None).unwrap().swap_total();
        assert_eq!(total(Some("64m"), None), Some(128 * M));
        assert_eq!(total(Some("64m"), Some("100m")), Some(100 * M));
        assert_eq!(total(Some("64m"), Some("-1")), None);
        assert_eq!(total(None, Some("-1")), None);
        assert_eq!(total(None, None), None);
    }

    #[test]
    fn reads_pids_limit_as_docker() {
        let pids = |p| limits(None, None, Some(p), None).map(|l| l.pids);
        assert_eq!(pids("64"), Ok(Some(PidsLimit::Limited(64))));
        assert_eq!(pids("1"), Ok(Some(PidsLimit::Limited(1))));
        assert_eq!(pids("0"), Ok(Some(PidsLimit::Unlimited)));
        assert_eq!(pids("-1"), Ok(Some(PidsLimit::Unlimited)));
        assert_eq!(pids("-7"), Ok(Some(PidsLimit::Unlimited)));
        for bad in ["", "x", "1.5", "64k"] {
            assert!(matches!(pids(bad), Err(LimitError::Pids { .. })), "{bad:?}");
        }
        assert!(limits(None, None, Some("-1"), None).unwrap().is_empty());
    }

    /// `--cpus` as nano-CPUs, between 0.01 and the CPU count (2 here); 0 is unset.
    #[test]
    fn reads_cpus_as_docker() {
        let cpus = |c| limits(None, None, None, Some(c)).map(|l| l.cpus);
        let accepted: [(&str, Option<u64>); 9] = [
            ("0.5", Some(500_000_000)),
            ("1", Some(1_000_000_000)),
            ("2", Some(2_000_000_000)),
            ("2.000", Some(2_000_000_000)),
            (".25", Some(250_000_000)),
            ("0.01", Some(10_000_000)),
            ("1.000000001", Some(1_000_000_001)),
            ("0", None),
            ("0.0", None),
        ];
        for (text, nano) in accepted {
            assert_eq!(cpus(text), Ok(nano), "{text:?}");
        }
        for text in ["3", "2.000000001", "0.001", "0.009", "-1", "99999999999999"] {
            assert_eq!(
                cpus(text),
                Err(LimitError::CpusRange {
                    value: text.into(),
                    available: 2
                }),
                "{text:?}"
            );
        }
        assert!(matches!(
            cpus("0.0000000001"),
            Err(LimitError::CpusTooPrecise { .. })
        ));
        for text in ["", ".", "x", "1,5", "1.5.", "1/2", "0x1"] {
            assert!(
                matches!(cpus(text), Err(LimitError::Cpus { .. })),
                "{text:?}"
            );
        }
        let half = limits(None, None, None, Some("0.5")).unwrap();
        assert_eq!(half.cpu_quota_us(), Some(50_000));
        let odd = limits(None, None, None, Some("0.012345")).unwrap();
        assert_eq!(odd.cpu_quota_us(), Some(1234));
        assert_eq!(
            LimitError::CpusRange {
                value: "3".into(),
                available: 2
            }
            .to_string(),
            "--cpus 3: the range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"
        );
    }

    const MOUNTINFO: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:32 / /mnt/my\\040memory rw,relatime - cgroup cgroup rw,memory
";

    fn v1_host(swap_in_use: bool) -> Host {
        Host {
            layout: Layout::V1 {
                hierarchies: v1_hierarchies(MOUNTINFO),
            },
            swap_in_use,
        }
    }

    fn v2_host(controllers: &str) -> Host {
        Host {
            layout: Layout::V2 {
                root: PathBuf::from("/sys/fs/cgroup"),
                controllers: controllers.split_whitespace().map(String::from).collect(),
            },
            swap_in_use: true,
        }
    }

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

    fn w(path: &str, value: &str, if_missing: IfMissing) -> Step {
        Step::Write {
            path: PathBuf::from(path),
            value: value.into(),
            if_missing,
        }
    }

    #[test]
    fn plans_v1_groups_per_hierarchy() {
        let l = limits(Some("64m"), None, Some("64"), Some("0.5")).unwrap();
        let p = plan(&l, "4242", &v1_host(true)).unwrap();
        let fail = IfMissing::Fail;
        let mem = "/sys/fs/cgroup/memory/imgfs/4242";
        let pids = "/sys/fs/cgroup/pids/imgfs/4242";
        let cpu = "/sys/fs/cgroup/cpu,cpuacct/imgfs/4242";
        assert_eq!(
            p.steps,
            [
                Step::Parent("/sys/fs/cgroup/memory/imgfs".into()),
                Step::Group(mem.into()),
                w(
                    &format!("{mem}/memory.limit_in_bytes"),
                    "67108864",
                    fail(Controller::Memory)
                ),
                w(
                    &format!("{mem}/memory.memsw.limit_in_bytes"),
                    "134217728",
                    IfMissing::Warn
                ),
                Step::Parent("/sys/fs/cgroup/pids/imgfs".into()),
                Step::Group(pids.into()),
                w(&format!("{pids}/pids.max"), "64", fail(Controller::Pids)),
                Step::Parent("/sys/fs/cgroup/cpu,cpuacct/imgfs".into()),
                Step::Group(cpu.into()),
                w(
                    &format!("{cpu}/cpu.cfs_period_us"),
                    "100000",
                    fail(Controller::Cpu)
                ),
                w(
                    &format!("{cpu}/cpu.cfs_quota_us"),
                    "50000",
                    fail(Controller::Cpu)
                ),
            ]
        );
        assert_eq!(p.groups, [PathBuf::from(mem), pids.into(), cpu.into()]);
        assert_eq!(p.oom, Some(format!("{mem}/memory.oom_control").into()));
        assert_eq!(p.kill, None);
    }

    /// A swap limit the user gave needs swap accounting; the one docker implies warns; with no
    /// swap on, either holds anyway.
    #[test]
    fn plans_swap_honestly() {
        let swap_step = |l: &Limits, host: &Host| {
            plan(l, "1", host)
                .unwrap()
                .steps
                .into_iter()
                .find_map(|s| match s {
                    Step::Write {
                        path,
                        value,
                        if_missing,
                    } if path.ends_with("memory.memsw.limit_in_bytes")
                        || path.ends_with("memory.swap.max") =>
                    {
                        Some((value, if_missing))
                    }
                    _ => None,
                })
        };
        let given = limits(Some("64m"), Some("64m"), None, None).unwrap();
        let implied = limits(Some("64m"), None, None, None).unwrap();
        let unlimited = limits(Some("64m"), Some("-1"), None, None).unwrap();
        let swap = IfMissing::Fail(Controller::Swap);
        assert_eq!(
            swap_step(&given, &v1_host(true)),
            Some(("67108864".into(), swap))
        );
        assert_eq!(
            swap_step(&given, &v1_host(false)),
            Some(("67108864".into(), IfMissing::Skip))
        );
        assert_eq!(
            swap_step(&implied, &v1_host(true)),
            Some(("134217728".into(), IfMissing::Warn))
        );
        assert_eq!(swap_step(&unlimited, &v1_host(true)), None);
        let v2 = v2_host("cpu memory pids");
        assert_eq!(swap_step(&given, &v2), Some(("0".into(), swap)));
        assert_eq!(
            swap_step(&implied, &v2),
            Some(("67108864".into(), IfMissing::Warn))
        );
    }

    #[test]
    fn plans_v2_in_one_group() {
        let l = limits(Some("64m"), Some("100m"), Some("64"), Some("0.5")).unwrap();
        let p = plan(
            &l,
            "4242",
            &v2_host("cpuset cpu io memory hugetlb pids rdma"),
        )
        .unwrap();
        let fail = IfMissing::Fail;
        let (mem, pids, cpu) = (Controller::Memory, Controller::Pids, Controller::Cpu);
        let g = "/sys/fs/cgroup/imgfs/4242";
        assert_eq!(
            p.steps,
            [
                Step::Parent("/sys/fs/cgroup/imgfs".into()),
                w(
                    "/sys/fs/cgroup/cgroup.subtree_control",
                    "+memory",
                    fail(mem)
                ),
                w("/sys/fs/cgroup/cgroup.subtree_control", "+pids", fail(pids)),
                w("/sys/fs/cgroup/cgroup.subtree_control", "+cpu", fail(cpu)),
                w(
                    "/sys/fs/cgroup/imgfs/cgroup.subtree_control",
                    "+memory",
                    fail(mem)
                ),
                w(
                    "/sys/fs/cgroup/imgfs/cgroup.subtree_control",
                    "+pids",
                    fail(pids)
                ),
                w(
                    "/sys/fs/cgroup/imgfs/cgroup.subtree_control",
                    "+cpu",
                    fail(cpu)
                ),
                Step::Group(g.into()),
                w(&format!("{g}/memory.max"), "67108864", fail(mem)),
                w(
                    &format!("{g}/memory.swap.max"),
                    "37748736",
                    fail(Controller::Swap)
                ),
                w(&format!("{g}/pids.max"), "64", fail(pids)),
                w(&format!("{g}/cpu.max"), "50000 100000", fail(cpu)),
            ]
        );
        assert_eq!(p.groups, [PathBuf::from(g)]);
        assert_eq!(p.oom, Some(format!("{g}/memory.events").into()));
        assert_eq!(p.kill, Some(format!("{g}/cgroup.kill").into()));
    }

    #[test]
    fn refuses_what_cannot_be_enforced() {
        let cpus = limits(None, None, None, Some("1")).unwrap();
        let e = plan(&cpus, "1", &v2_host("memory pids")).unwrap_err();
        assert!(matches!(
            e,
            CgroupError::MissingController {
                controller: Controller::Cpu,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "--cpus cannot be enforced: no cgroup cpu controller on this machine (see /sys/fs/cgroup/cgroup.controllers)"
        );
        let pids = limits(None, None, Some("10"), None).unwrap();
        let none = Host {
            layout: Layout::V1 {
                hierarchies: Vec::new(),
            },
            swap_in_use: true,
        };
        assert!(matches!(
            plan(&pids, "1", &none),
            Err(CgroupError::MissingController {
                controller: Controller::Pids,
                ..
            })
        ));
        assert_eq!(
            plan(&Limits::default(), "1", &none).unwrap(),
            Plan::default()
        );
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(
                matches!(plan(&pids, bad, &none), Err(CgroupError::Name { .. })),
                "{bad:?}"
            );
        }
    }

    // Tests on this machine's cgroups: as root only, each under a name of its own, and
    // removing what they made.

    /// This machine's cgroups, when the tests may use them: as root, with memory, pids and cpu.
    /// This machine's cgroups, which these tests need with memory, pids and cpu controllers
    /// and root: they fail loudly, never skip, without them.
    fn real_host() -> Host {
        // SAFETY: no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
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

    fn contents(groups: &[PathBuf], file: &str) -> Option<String> {
        let path = groups.iter().map(|g| g.join(file)).find(|p| p.exists())?;
        Some(std::fs::read_to_string(path).ok()?.trim().to_string())
    }

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep")
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

    /// Costs on this machine (see with --nocapture).
    #[test]
    fn measures_costs() {
        real_host();
        const RUNS: u32 = 20;
        let l = limits(Some("64m"), None, Some("64"), Some("0.5")).unwrap();
        let name = format!("test-{}-cost", std::process::id());
        let [mut create, mut add, mut remove, mut empty] = [Duration::ZERO; 4];
        let mut children = Vec::new();
        for _ in 0..RUNS {
            let mut child = sleeper();
            let t = Instant::now();
            let cg = Cgroup::create(&l, &name).unwrap();
            create += t.elapsed();
            let t = Instant::now();
            cg.add(child.id() as libc::pid_t).unwrap();
            add += t.elapsed();
            let t = Instant::now();
            cg.remove();
            remove += t.elapsed();
            let _ = child.wait();
            children.push(child);
            let t = Instant::now();
            Cgroup::create(&l, &name).unwrap().remove();
            empty += t.elapsed();
        }
        let cg = Cgroup::create(&l, &name).unwrap();
        let t = Instant::now();
        let cleaner = cg.spawn_cleaner().unwrap();
        let spawn = t.elapsed();
        let t = Instant::now();
        cg.remove();
        cleaner.finish();
        let finish = t.elapsed();
        let t = Instant::now();
        remove_stale();
        let stale = t.elapsed();
        let t = Instant::now();
        let host = Host::detect().unwrap();
        let detect = t.elapsed();
        eprintln!(
            "cgroup costs ({:?}, mean of {RUNS}): create {:?}, add {:?}, remove with a live \
             process {:?}; create+remove empty {:?}; detect {detect:?}; remove_stale {stale:?}; \
             spawn_cleaner {spawn:?}, remove+finish with a cleaner {finish:?}",
            match host.layout {
                Layout::V1 { .. } => "v1",
                Layout::V2 { .. } => "v2",
            },
            create / RUNS,
            add / RUNS,
            remove / RUNS,
            empty / RUNS,
        );
    }

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
                "runner::confine::cgroup::tests::fake_supervisor",
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
