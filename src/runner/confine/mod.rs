//! Confinement: what the command may do once it runs, decided as plain data with docker
//! run's rules and defaults — capabilities ([`Confinement::caps`]), the seccomp profile
//! ([`seccomp`]), no_new_privs, and the /proc and /sys paths hidden or made read-only.
//! `--privileged` lifts all of it; `--cap-add`, `--cap-drop` and `--security-opt` loosen or
//! tighten one part. [`Applier`] carries it out in the command's process, just before exec.

pub mod cgroup;
pub(crate) mod seccomp;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use serde::{Deserialize, Serialize};

/// The capabilities docker gives a container by default.
pub(crate) const DEFAULT_CAPS: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Paths docker hides from a container: an empty read-only tmpfs over directories,
/// /dev/null over files. They expose host internals or let a program reconfigure the host.
pub(crate) const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths docker leaves visible but read-only: writing them would change the host.
pub(crate) const READ_ONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfineError {
    #[error("unknown capability: {0:?}")]
    UnknownCapability(String),
    #[error("cannot add {0}: imgfs itself does not hold it (it is not in its bounding set)")]
    Unavailable(String),
    #[error(
        "unsupported security option {0:?} (supported: seccomp=unconfined, seccomp=PROFILE.json, no-new-privileges[=true|false], systempaths=unconfined)"
    )]
    SecurityOpt(String),
    #[error("cannot read the seccomp profile {path}: {reason}")]
    ProfileFile { path: PathBuf, reason: String },
}

/// Which seccomp filter the command runs under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seccomp {
    /// docker's default profile.
    Default,
    /// No filter (`seccomp=unconfined`, or `--privileged`).
    Unconfined,
    /// A profile in docker's JSON format, read when the plan was made.
    Profile { path: PathBuf, json: String },
}

/// Everything that confines the command, decided before any namespace exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// `--privileged`: every capability, no seccomp, nothing masked, /sys writable.
    pub privileged: bool,
    /// The bounding set, bit N for capability N; also the permitted and effective sets of
    /// a command that runs as root (another user starts with none, as under docker).
    pub caps: u64,
    pub seccomp: Seccomp,
    /// `--security-opt no-new-privileges`: no setuid or file-capability gains on exec.
    pub no_new_privs: bool,
    /// docker's masked and read-only /proc and /sys paths apply (lifted by `--privileged` or
    /// `--security-opt systempaths=unconfined`).
    pub system_paths: bool,
}

impl Default for Confinement {
    fn default() -> Confinement {
        Confinement {
            privileged: false,
            caps: mask(DEFAULT_CAPS.iter().copied()),
            seccomp: Seccomp::Default,
            no_new_privs: false,
            system_paths: true,
        }
    }
}

/// What the user asked for on the command line, as docker spells it.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    pub security_opt: Vec<String>,
}

fn mask(caps: impl IntoIterator<Item = Capability>) -> u64 {
    caps.into_iter().fold(0, |m, c| m | c.bitmask())
}

/// The highest capability the running kernel knows; docker's "all" stops there.
fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(Capability::CAP_CHECKPOINT_RESTORE.index())
}

/// Every capability this kernel and imgfs both know and imgfs itself may hold (its bounding
/// set, which a user namespace inherits): what `--privileged` gives.
pub(crate) fn all_caps() -> u64 {
    let last = last_cap();
    let own = caps::read(None, CapSet::Bounding).unwrap_or_else(|_| caps::all());
    mask(
        caps::all()
            .into_iter()
            .filter(|c| c.index() <= last && own.contains(c)),
    )
}

/// A capability name as docker takes it (`net_admin`, `CAP_NET_ADMIN`), or `ALL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CapName {
    All,
    One(Capability),
}

fn parse_cap(name: &str) -> Result<CapName, ConfineError> {
    if name.eq_ignore_ascii_case("ALL") {
        return Ok(CapName::All);
    }
    Capability::from_str(&caps::to_canonical(name))
        .map(CapName::One)
        .map_err(|_| ConfineError::UnknownCapability(caps::to_canonical(name)))
}

/// The capability set docker computes from its defaults, `--cap-add`, `--cap-drop` and
/// `--privileged`: ALL among the additions starts from every capability, ALL among the
/// drops starts from nothing, otherwise the drops come off the defaults before the
/// additions go on.
pub(crate) fn capabilities(req: &Request) -> Result<u64, ConfineError> {
    if req.privileged {
        return Ok(all_caps());
    }
    let add: Vec<CapName> = req
        .cap_add
        .iter()
        .map(|n| parse_cap(n))
        .collect::<Result<_, _>>()?;
    let drop: Vec<CapName> = req
        .cap_drop
        .iter()
        .map(|n| parse_cap(n))
        .collect::<Result<_, _>>()?;
    let named = |names: &[CapName]| {
        mask(names.iter().filter_map(|n| match n {
            CapName::One(c) => Some(*c),
            CapName::All => None,
        }))
    };
    let caps = if add.contains(&CapName::All) {
        all_caps() & !named(&drop)
    } else if drop.contains(&CapName::All) {
        named(&add)
    } else {
        (mask(DEFAULT_CAPS.iter().copied()) & !named(&drop)) | named(&add)
    };
    // docker's defaults are held by any root; only additions need checking.
    if !add.is_empty() {
        let beyond = caps & !all_caps();
        if let Some(c) = caps::all().into_iter().find(|c| beyond & c.bitmask() != 0) {
            return Err(ConfineError::Unavailable(c.to_string()));
        }
    }
    Ok(caps)
}

/// The `--security-opt` values docker takes for seccomp, no_new_privs and system paths.
#[derive(Debug, PartialEq, Eq)]
struct SecurityOptions {
    seccomp: Seccomp,
    no_new_privs: bool,
    system_paths: bool,
}

fn security_options(opts: &[String]) -> Result<SecurityOptions, ConfineError> {
    let mut seccomp = Seccomp::Default;
    let mut no_new_privs = false;
    let mut system_paths = true;
    for opt in opts {
        // docker still accepts the old `key:value` spelling.
        let (key, value) = opt
            .split_once('=')
            .or_else(|| opt.split_once(':'))
            .unwrap_or((opt.as_str(), ""));
        match (key, value) {
            ("no-new-privileges", "" | "true") => no_new_privs = true,
            ("no-new-privileges", "false") => no_new_privs = false,
            ("seccomp", "unconfined") => seccomp = Seccomp::Unconfined,
            ("systempaths", "unconfined") => system_paths = false,
            ("seccomp", path) if !path.is_empty() => {
                let json =
                    std::fs::read_to_string(path).map_err(|e| ConfineError::ProfileFile {
                        path: path.into(),
                        reason: e.to_string(),
                    })?;
                seccomp = Seccomp::Profile {
                    path: path.into(),
                    json,
                };
            }
            _ => return Err(ConfineError::SecurityOpt(opt.clone())),
        }
    }
    Ok(SecurityOptions {
        seccomp,
        no_new_privs,
        system_paths,
    })
}

/// Decides the confinement, the way docker run would.
pub(crate) fn build(req: &Request) -> Result<Confinement, ConfineError> {
    let caps = capabilities(req)?;
    let opts = security_options(&req.security_opt)?;
    Ok(Confinement {
        privileged: req.privileged,
        caps,
        // A privileged container runs without a filter, whatever profile was named.
        seccomp: if req.privileged {
            Seccomp::Unconfined
        } else {
            opts.seccomp
        },
        no_new_privs: opts.no_new_privs,
        system_paths: opts.system_paths && !req.privileged,
    })
}

impl Confinement {
    /// Names of the kept capabilities (`CAP_CHOWN`, ...), as seccomp profiles name them.
    pub(crate) fn cap_names(&self) -> BTreeSet<String> {
        caps::all()
            .into_iter()
            .filter(|c| self.caps & c.bitmask() != 0)
            .map(|c| c.to_string())
            .collect()
    }
}

/// The confinement made ready before the command's process is forked, so that applying it
/// in that process allocates nothing.
pub(crate) struct Applier {
    /// Bounding-set capabilities to drop.
    drop: Vec<Capability>,
    /// The permitted and effective sets of a command that runs as root.
    keep: CapsHashSet,
    none: CapsHashSet,
    filter: Option<seccomp::Program>,
    no_new_privs: bool,
}

/// Why confining the command failed (in the command's process, just before exec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApplyError {
    Bounding,
    NoNewPrivs,
    Seccomp,
    Capabilities,
}

impl Applier {
    pub(crate) fn new(confinement: &Confinement, filter: Option<seccomp::Program>) -> Applier {
        let last = last_cap();
        let all = caps::all();
        Applier {
            drop: all
                .iter()
                .copied()
                .filter(|c| c.index() <= last && confinement.caps & c.bitmask() == 0)
                .collect(),
            keep: all
                .into_iter()
                .filter(|c| confinement.caps & c.bitmask() != 0)
                .collect(),
            none: CapsHashSet::new(),
            filter,
            no_new_privs: confinement.no_new_privs,
        }
    }

    /// First step, still with every capability: shrink the bounding set, and install the
    /// filter now unless no_new_privs lets it wait until just before exec (runc's order).
    pub(crate) fn before_user_switch(&self) -> Result<(), ApplyError> {
        for cap in &self.drop {
            caps::drop(None, CapSet::Bounding, *cap).map_err(|_| ApplyError::Bounding)?;
        }
        if self.no_new_privs {
            crate::sys::process::set_no_new_privs().map_err(|_| ApplyError::NoNewPrivs)?;
        } else if let Some(f) = &self.filter {
            f.load().map_err(|_| ApplyError::Seccomp)?;
        }
        Ok(())
    }

    /// Last step, as the command's user: the kept capabilities for root (a user other than
    /// root lost them all on setuid), nothing inheritable or ambient, then the filter.
    pub(crate) fn after_user_switch(&self, uid: libc::uid_t) -> Result<(), ApplyError> {
        let kept = if uid == 0 { &self.keep } else { &self.none };
        caps::set(None, CapSet::Effective, kept).map_err(|_| ApplyError::Capabilities)?;
        caps::set(None, CapSet::Permitted, kept).map_err(|_| ApplyError::Capabilities)?;
        caps::set(None, CapSet::Inheritable, &self.none).map_err(|_| ApplyError::Capabilities)?;
        caps::clear(None, CapSet::Ambient).map_err(|_| ApplyError::Capabilities)?;
        if self.no_new_privs
            && let Some(f) = &self.filter
        {
            f.load().map_err(|_| ApplyError::Seccomp)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(add: &[&str], drop: &[&str]) -> Request {
        Request {
            cap_add: add.iter().map(|s| s.to_string()).collect(),
            cap_drop: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn names(m: u64) -> Vec<String> {
        let mut v: Vec<String> = caps::all()
            .into_iter()
            .filter(|c| m & c.bitmask() != 0)
            .map(|c| c.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn docker_default_is_0xa80425fb() {
        // The value docker run shows as CapEff in /proc/self/status.
        assert_eq!(capabilities(&req(&[], &[])).unwrap(), 0xa804_25fb);
    }

    #[test]
    fn cap_add_and_drop_follow_docker() {
        let d = capabilities(&req(&[], &[])).unwrap();
        let admin = Capability::CAP_SYS_ADMIN.bitmask();
        let raw = Capability::CAP_NET_RAW.bitmask();
        let chown = Capability::CAP_CHOWN.bitmask();
        assert_eq!(capabilities(&req(&["sys_admin"], &[])).unwrap(), d | admin);
        assert_eq!(
            capabilities(&req(&["CAP_SYS_ADMIN"], &[])).unwrap(),
            d | admin
        );
        assert_eq!(capabilities(&req(&[], &["net_raw"])).unwrap(), d & !raw);
        assert_eq!(capabilities(&req(&["chown"], &["ALL"])).unwrap(), chown);
        assert_eq!(
            capabilities(&req(&["all"], &["CHOWN"])).unwrap(),
            all_caps() & !chown
        );
        // A drop and an add of the same one: the add wins, as in docker.
        assert_eq!(capabilities(&req(&["NET_RAW"], &["NET_RAW"])).unwrap(), d);
        assert_eq!(
            names(capabilities(&req(&[], &["ALL"])).unwrap()),
            Vec::<String>::new()
        );
        assert_eq!(
            capabilities(&req(&["NOT_A_CAP"], &[])),
            Err(ConfineError::UnknownCapability("CAP_NOT_A_CAP".into()))
        );
        let privileged = Request {
            privileged: true,
            ..req(&[], &["ALL"])
        };
        assert_eq!(capabilities(&privileged).unwrap(), all_caps());
    }

    #[test]
    fn security_options_read_like_docker() {
        let opts =
            |o: &[&str]| security_options(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let want = |seccomp, no_new_privs, system_paths| SecurityOptions {
            seccomp,
            no_new_privs,
            system_paths,
        };
        assert_eq!(opts(&[]).unwrap(), want(Seccomp::Default, false, true));
        assert_eq!(
            opts(&["seccomp=unconfined", "no-new-privileges"]).unwrap(),
            want(Seccomp::Unconfined, true, true)
        );
        assert_eq!(
            opts(&["no-new-privileges:true"]).unwrap(),
            want(Seccomp::Default, true, true)
        );
        assert_eq!(
            opts(&["no-new-privileges=false", "systempaths=unconfined"]).unwrap(),
            want(Seccomp::Default, false, false)
        );
        assert!(matches!(
            opts(&["apparmor=foo"]),
            Err(ConfineError::SecurityOpt(_))
        ));
        assert!(matches!(
            opts(&["seccomp=/nonexistent/profile.json"]),
            Err(ConfineError::ProfileFile { .. })
        ));
    }

    #[test]
    fn privileged_lifts_seccomp() {
        let c = build(&Request {
            privileged: true,
            security_opt: vec!["no-new-privileges".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.seccomp, Seccomp::Unconfined);
        assert!(c.no_new_privs);
        assert!(!c.system_paths);
        assert_eq!(c.caps, all_caps());
    }
}
