//! Seccomp: docker's profile format, compiled to a classic BPF program and loaded before exec.
//!
//! Takes a profile (docker's default, see [`Profile::docker_default`], or a user's JSON in
//! docker's format, see [`Profile::from_json`]) and the sandbox's capability set. [`compile()`]
//! keeps the rules that apply here exactly as docker does (a rule's `includes` must all hold,
//! any of its `excludes` drops it; architectures are Go's names, kernel versions compare
//! `major.minor` of uname), then has libseccomp, the engine runc uses, resolve syscall names
//! per architecture and generate the filter for the native architecture and its compat
//! sub-architectures. The result, a [`Program`], is plain BPF instructions; [`compiled`] keeps
//! them in a cache file keyed by everything that went into them, so a warm run reads a few
//! kilobytes instead of compiling. [`Program::load`] installs the filter in the sandbox's last
//! process just before execve; it neither allocates nor locks. Setting no_new_privs is left to
//! the caller: the filter never sets it.
//!
//! One file per part, each using only the ones before it: `profile` (the profile's types and
//! docker's JSON), `default` (docker's default profile as data), `program` (the BPF
//! instructions and their loading), `compile` (the rules that apply here, turned into a
//! program by libseccomp) and `cache` (compiled programs kept on disk). This file holds the
//! error they share and names everything outsiders use.

// Each uses only the ones before it (kept apart so formatting does not sort them).
mod profile;

mod default;

mod program;

mod compile;

mod cache;

pub(crate) use cache::{ProfileSource, compiled};
#[cfg(test)]
pub(crate) use compile::compile;
pub(crate) use profile::Arch;
pub(crate) use program::Program;

use std::io;

use libseccomp::error::SeccompError as EngineError;

use program::MAX_INSNS;

/// Why a profile could not be read or compiled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SeccompError {
    #[error("seccomp profile is {len} bytes, over the limit of {max}")]
    ProfileTooLarge { len: usize, max: usize },
    #[error("seccomp profile is not docker's JSON profile format: {0}")]
    Json(serde_json::Error),
    #[error("seccomp profile has {count} {what}, over the limit of {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("seccomp profile has no defaultAction")]
    NoDefaultAction,
    #[error("seccomp profile has both 'architectures' and 'archMap'")]
    ArchitecturesAndArchMap,
    #[error("unknown seccomp action {0:?}")]
    UnknownAction(String),
    #[error("unknown seccomp comparison operator {0:?}")]
    UnknownOp(String),
    #[error("unknown seccomp architecture {0:?}")]
    UnknownArch(String),
    #[error("seccomp rule {rule} has both 'name' and 'names'")]
    NameAndNames { rule: usize },
    #[error("seccomp rule {rule} checks argument {index}; syscalls have arguments 0 to 5")]
    ArgIndex { rule: usize, index: u32 },
    #[error("seccomp rule {rule}: errnoRet {value} does not fit in 16 bits")]
    ErrnoRet { rule: usize, value: u32 },
    #[error("seccomp profile: defaultErrnoRet {value} does not fit in 16 bits")]
    DefaultErrnoRet { value: u32 },
    #[error("invalid kernel version {0:?} in a seccomp rule, expected \"<kernel>.<major>\"")]
    MinKernel(String),
    #[error("seccomp: no seccomp architecture for this machine ({0})")]
    NativeArch(&'static str),
    #[error("seccomp: cannot read the kernel version: {0}")]
    Uname(io::Error),
    #[error("seccomp: cannot parse the kernel release {0:?}")]
    KernelRelease(String),
    #[error("seccomp: libseccomp cannot create a filter: {0}")]
    NewFilter(EngineError),
    #[error("seccomp: libseccomp cannot set filter attribute {attr}: {cause}")]
    FilterAttr {
        attr: &'static str,
        cause: EngineError,
    },
    #[error("seccomp: libseccomp cannot add architecture {arch:?}: {cause}")]
    AddArch { arch: Arch, cause: EngineError },
    #[error("seccomp: libseccomp cannot add the rule for {syscall}: {cause}")]
    AddRule { syscall: String, cause: EngineError },
    #[error("seccomp: cannot make a memory file for the BPF export: {0}")]
    Memfd(io::Error),
    #[error("seccomp: libseccomp cannot export the filter: {0}")]
    Export(EngineError),
    #[error("seccomp: cannot read back the exported filter: {0}")]
    ReadExport(io::Error),
    #[error("seccomp: the filter is {len} bytes, not 1 to {MAX_INSNS} instructions of 8 bytes")]
    ProgramSize { len: usize },
    #[error("seccomp: cannot read libseccomp's version: {0}")]
    EngineVersion(EngineError),
}

#[cfg(test)]
mod tests {
    //! What the tests of several files share.
    use std::collections::BTreeSet;

    /// Docker's default capability set (moby `oci/caps/defaults.go`).
    pub(super) const DOCKER_CAPS: &[&str] = &[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];

    pub(super) fn caps(extra: &[&str]) -> BTreeSet<String> {
        DOCKER_CAPS
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    }
}
