//! Seccomp: docker's profile format, compiled to a classic BPF program and loaded before exec.
//!
//! Takes a profile (docker's default, see [`Profile::docker_default`], or a user's JSON in
//! docker's format, see [`Profile::from_json`]) and the sandbox's capability set. [`compile`]
//! keeps the rules that apply here exactly as docker does (a rule's `includes` must all hold,
//! any of its `excludes` drops it; architectures are Go's names, kernel versions compare
//! `major.minor` of uname), then has libseccomp, the engine runc uses, resolve syscall names
//! per architecture and generate the filter for the native architecture and its compat
//! sub-architectures. The result, a [`Program`], is plain BPF instructions; [`compiled`] keeps
//! them in a cache file keyed by everything that went into them, so a warm run reads a few
//! kilobytes instead of compiling. [`Program::load`] installs the filter in the sandbox's last
//! process just before execve; it neither allocates nor locks. Setting no_new_privs is left to
//! the caller: the filter never sets it.
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use libseccomp::error::SeccompError as EngineError;
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    ScmpVersion,
};
use serde::Deserialize;

/// Largest profile accepted: docker's default is about 20 KiB, so this leaves room for any
/// real profile while bounding what hostile JSON can cost.
pub const MAX_PROFILE_BYTES: usize = 1 << 20;
/// Most rules in a profile: docker's default has 33; one rule per syscall would be ~450.
const MAX_RULES: usize = 4096;
/// Most syscall names over all rules; each one costs a libseccomp rule.
const MAX_NAMES: usize = 8192;
/// Most argument checks in one rule: six arguments, a few checked twice.
const MAX_ARGS_PER_RULE: usize = 16;
/// Most entries in one list of architectures or capabilities: there are about 25 seccomp
/// architectures and 41 capabilities.
const MAX_LIST: usize = 64;
/// Syscalls take six arguments, indexed 0 to 5.
const MAX_ARG_INDEX: u32 = 5;
/// The largest errno a filter can return: SECCOMP_RET_DATA is 16 bits wide.
const MAX_ERRNO_RET: u32 = 0xffff;
/// The errno docker uses when a profile names none: EPERM.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;
/// Size of one `struct sock_filter` as libseccomp exports it.
const INSN_BYTES: usize = 8;
/// The kernel rejects longer classic BPF programs (BPF_MAXINSNS).
const MAX_INSNS: usize = libc::BPF_MAXINSNS as usize;
/// Starts every cache file, so a stray file is never taken for a program.
const CACHE_MAGIC: &[u8; 8] = b"imgfsbpf";
/// Bumped whenever the key or the program generation changes meaning.
const CACHE_FORMAT_VERSION: u32 = 2;
/// libseccomp's optimization level that sorts the rules into a binary tree.
const SYSCALL_TREE: u32 = 2;
/// Extension of a cache file; its stem is the key's crc32.
const CACHE_EXT: &str = "bpf";
/// Mode of a cache file: written by its owner only, since its content decides what the
/// sandbox may do.
const CACHE_FILE_MODE: u32 = 0o644;

/// Why a profile could not be read or compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile is {len} bytes, over the limit of {max}")]
    ProfileTooLarge { len: usize, max: usize },
    #[error("seccomp profile is not docker's JSON profile format: {0}")]
    Json(#[source] serde_json::Error),
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
    Uname(#[source] io::Error),
    #[error("seccomp: cannot parse the kernel release {0:?}")]
    KernelRelease(String),
    #[error("seccomp: libseccomp cannot create a filter: {0}")]
    NewFilter(#[source] EngineError),
    #[error("seccomp: libseccomp cannot set filter attribute {attr}: {source}")]
    FilterAttr {
        attr: &'static str,
        source: EngineError,
    },
    #[error("seccomp: libseccomp cannot add architecture {arch:?}: {source}")]
    AddArch { arch: Arch, source: EngineError },
    #[error("seccomp: libseccomp cannot add the rule for {syscall}: {source}")]
    AddRule {
        syscall: String,
        source: EngineError,
    },
    #[error("seccomp: cannot make a memory file for the BPF export: {0}")]
    Memfd(#[source] io::Error),
    #[error("seccomp: libseccomp cannot export the filter: {0}")]
    Export(#[source] EngineError),
    #[error("seccomp: cannot read back the exported filter: {0}")]
    ReadExport(#[source] io::Error),
    #[error("seccomp: the filter is {len} bytes, not 1 to {MAX_INSNS} instructions of 8 bytes")]
    ProgramSize { len: usize },
    #[error("seccomp: cannot read libseccomp's version: {0}")]
    EngineVersion(#[source] EngineError),
}

/// What the filter does with a matching syscall, as docker spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    /// Fails the syscall with `errnoRet` (EPERM when absent).
    Errno,
    /// The historical name of [`Action::KillThread`].
    Kill,
    KillProcess,
    KillThread,
    Trap,
    /// Notifies a ptrace tracer, passing `errnoRet` (EPERM when absent) as the message.
    Trace,
    Log,
}

impl Action {
    fn parse(name: &str) -> Result<Self, SeccompError> {
        Ok(match name {
            "SCMP_ACT_ALLOW" => Self::Allow,
            "SCMP_ACT_ERRNO" => Self::Errno,
            "SCMP_ACT_KILL" => Self::Kill,
            "SCMP_ACT_KILL_PROCESS" => Self::KillProcess,
            "SCMP_ACT_KILL_THREAD" => Self::KillThread,
            "SCMP_ACT_TRAP" => Self::Trap,
            "SCMP_ACT_TRACE" => Self::Trace,
            "SCMP_ACT_LOG" => Self::Log,
            _ => return Err(SeccompError::UnknownAction(name.to_owned())),
        })
    }

    /// The engine's action, with runc's defaults for the return value.
    fn engine(self, errno_ret: Option<u32>) -> ScmpAction {
        // Validated at parse time to fit SECCOMP_RET_DATA, so neither conversion loses bits.
        let data = errno_ret.unwrap_or(DEFAULT_ERRNO).min(MAX_ERRNO_RET);
        match self {
            Self::Allow => ScmpAction::Allow,
            Self::Errno => ScmpAction::Errno(data as i32),
            Self::Kill | Self::KillThread => ScmpAction::KillThread,
            Self::KillProcess => ScmpAction::KillProcess,
            Self::Trap => ScmpAction::Trap,
            Self::Trace => ScmpAction::Trace(data as u16),
            Self::Log => ScmpAction::Log,
        }
    }
}

/// How a syscall argument is compared, as docker spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    NotEqual,
    LessThan,
    LessOrEqual,
    Equal,
    GreaterOrEqual,
    GreaterThan,
    /// `arg & value == valueTwo`.
    MaskedEqual,
}

impl CompareOp {
    fn parse(name: &str) -> Result<Self, SeccompError> {
        Ok(match name {
            "SCMP_CMP_NE" => Self::NotEqual,
            "SCMP_CMP_LT" => Self::LessThan,
            "SCMP_CMP_LE" => Self::LessOrEqual,
            "SCMP_CMP_EQ" => Self::Equal,
            "SCMP_CMP_GE" => Self::GreaterOrEqual,
            "SCMP_CMP_GT" => Self::GreaterThan,
            "SCMP_CMP_MASKED_EQ" => Self::MaskedEqual,
            _ => return Err(SeccompError::UnknownOp(name.to_owned())),
        })
    }
}

/// A seccomp architecture, as docker spells it (`SCMP_ARCH_X86_64`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arch {
    X86,
    X86_64,
    X32,
    Arm,
    Aarch64,
    Mips,
    Mips64,
    Mips64N32,
    Mipsel,
    Mipsel64,
    Mipsel64N32,
    Ppc,
    Ppc64,
    Ppc64Le,
    S390,
    S390X,
    Parisc,
    Parisc64,
    Riscv64,
    Loongarch64,
    M68k,
    Sh,
    Sheb,
}

impl Arch {
    /// Every architecture with its name in profiles.
    const NAMES: &[(Arch, &str)] = &[
        (Arch::X86, "SCMP_ARCH_X86"),
        (Arch::X86_64, "SCMP_ARCH_X86_64"),
        (Arch::X32, "SCMP_ARCH_X32"),
        (Arch::Arm, "SCMP_ARCH_ARM"),
        (Arch::Aarch64, "SCMP_ARCH_AARCH64"),
        (Arch::Mips, "SCMP_ARCH_MIPS"),
        (Arch::Mips64, "SCMP_ARCH_MIPS64"),
        (Arch::Mips64N32, "SCMP_ARCH_MIPS64N32"),
        (Arch::Mipsel, "SCMP_ARCH_MIPSEL"),
        (Arch::Mipsel64, "SCMP_ARCH_MIPSEL64"),
        (Arch::Mipsel64N32, "SCMP_ARCH_MIPSEL64N32"),
        (Arch::Ppc, "SCMP_ARCH_PPC"),
        (Arch::Ppc64, "SCMP_ARCH_PPC64"),
        (Arch::Ppc64Le, "SCMP_ARCH_PPC64LE"),
        (Arch::S390, "SCMP_ARCH_S390"),
        (Arch::S390X, "SCMP_ARCH_S390X"),
        (Arch::Parisc, "SCMP_ARCH_PARISC"),
        (Arch::Parisc64, "SCMP_ARCH_PARISC64"),
        (Arch::Riscv64, "SCMP_ARCH_RISCV64"),
        (Arch::Loongarch64, "SCMP_ARCH_LOONGARCH64"),
        (Arch::M68k, "SCMP_ARCH_M68K"),
        (Arch::Sh, "SCMP_ARCH_SH"),
        (Arch::Sheb, "SCMP_ARCH_SHEB"),
    ];

    fn parse(name: &str) -> Result<Self, SeccompError> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(arch, _)| *arch)
            .ok_or_else(|| SeccompError::UnknownArch(name.to_owned()))
    }

    /// The name profiles use.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(arch, _)| *arch == self)
            .map_or("", |(_, name)| name)
    }

    fn engine(self) -> ScmpArch {
        match self {
            Self::X86 => ScmpArch::X86,
            Self::X86_64 => ScmpArch::X8664,
            Self::X32 => ScmpArch::X32,
            Self::Arm => ScmpArch::Arm,
            Self::Aarch64 => ScmpArch::Aarch64,
            Self::Mips => ScmpArch::Mips,
            Self::Mips64 => ScmpArch::Mips64,
            Self::Mips64N32 => ScmpArch::Mips64N32,
            Self::Mipsel => ScmpArch::Mipsel,
            Self::Mipsel64 => ScmpArch::Mipsel64,
            Self::Mipsel64N32 => ScmpArch::Mipsel64N32,
            Self::Ppc => ScmpArch::Ppc,
            Self::Ppc64 => ScmpArch::Ppc64,
            Self::Ppc64Le => ScmpArch::Ppc64Le,
            Self::S390 => ScmpArch::S390,
            Self::S390X => ScmpArch::S390X,
            Self::Parisc => ScmpArch::Parisc,
            Self::Parisc64 => ScmpArch::Parisc64,
            Self::Riscv64 => ScmpArch::Riscv64,
            Self::Loongarch64 => ScmpArch::Loongarch64,
            Self::M68k => ScmpArch::M68k,
            Self::Sh => ScmpArch::Sh,
            Self::Sheb => ScmpArch::Sheb,
        }
    }
}

/// A kernel version as profiles compare it: `major.minor`, the rest ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub kernel: u32,
    pub major: u32,
}

impl KernelVersion {
    /// Parses docker's `minKernel`: exactly `<kernel>.<major>`, each below 256, not `0.0`.
    fn parse_min(text: &str) -> Result<Self, SeccompError> {
        let bad = || SeccompError::MinKernel(text.to_owned());
        let (kernel, major) = text.split_once('.').ok_or_else(bad)?;
        let part = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<u8>().ok().map(u32::from)
        };
        let version = KernelVersion {
            kernel: part(kernel).ok_or_else(bad)?,
            major: part(major).ok_or_else(bad)?,
        };
        if version
            == (KernelVersion {
                kernel: 0,
                major: 0,
            })
        {
            return Err(bad());
        }
        Ok(version)
    }

    /// Parses uname's release (`6.1.0-18-amd64`, `3.12-1-amd64`): the two leading numbers.
    fn parse_release(release: &str) -> Option<Self> {
        let number = |s: &str| -> Option<(u32, usize)> {
            let digits = s.bytes().take_while(u8::is_ascii_digit).count();
            Some((s.get(..digits)?.parse().ok()?, digits))
        };
        let (kernel, used) = number(release)?;
        let rest = release.get(used..)?.strip_prefix('.')?;
        let (major, _) = number(rest)?;
        Some(KernelVersion { kernel, major })
    }
}

/// A rule's condition on the capability set, the architecture and the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Capability names (`CAP_SYS_ADMIN`).
    pub caps: Vec<String>,
    /// Go's architecture names (`amd64`, `arm64`, `s390x`...), as docker matches them.
    pub arches: Vec<String>,
    pub min_kernel: Option<KernelVersion>,
}

/// One check of a syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgRule {
    pub index: u32,
    pub value: u64,
    /// Only for [`CompareOp::MaskedEqual`]: the value the masked argument must equal.
    pub value_two: u64,
    pub op: CompareOp,
}

/// What happens to some syscalls, under some conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallRule {
    pub names: Vec<String>,
    pub action: Action,
    pub errno_ret: Option<u32>,
    /// All must hold for the rule to match.
    pub args: Vec<ArgRule>,
    pub includes: Filter,
    pub excludes: Filter,
}

/// An architecture of the profile and the compat ones that come with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchMap {
    pub architecture: Arch,
    pub sub_architectures: Vec<Arch>,
}

/// A seccomp profile in docker's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub default_action: Action,
    pub default_errno_ret: Option<u32>,
    pub arch_map: Vec<ArchMap>,
    /// The older form of `arch_map`: every architecture listed is filtered.
    pub architectures: Vec<Arch>,
    pub syscalls: Vec<SyscallRule>,
}

// Docker's JSON, field for field; `null` stands for an empty list as in Go.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProfile {
    default_action: Option<String>,
    default_errno_ret: Option<u32>,
    arch_map: Option<Vec<RawArchMap>>,
    architectures: Option<Vec<String>>,
    syscalls: Option<Vec<RawSyscall>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawArchMap {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSyscall {
    names: Option<Vec<String>>,
    name: Option<String>,
    action: String,
    errno_ret: Option<u32>,
    args: Option<Vec<RawArg>>,
    includes: Option<RawFilter>,
    excludes: Option<RawFilter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawArg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFilter {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

fn bounded<T>(
    list: Option<Vec<T>>,
    what: &'static str,
    max: usize,
) -> Result<Vec<T>, SeccompError> {
    let list = list.unwrap_or_default();
    if list.len() > max {
        return Err(SeccompError::TooMany {
            what,
            count: list.len(),
            max,
        });
    }
    Ok(list)
}

fn arches(names: Vec<String>) -> Result<Vec<Arch>, SeccompError> {
    names.iter().map(|name| Arch::parse(name)).collect()
}

impl RawFilter {
    fn convert(raw: Option<Self>) -> Result<Filter, SeccompError> {
        let Some(raw) = raw else {
            return Ok(Filter::default());
        };
        Ok(Filter {
            caps: bounded(raw.caps, "capabilities in a rule", MAX_LIST)?,
            arches: bounded(raw.arches, "architectures in a rule", MAX_LIST)?,
            // Docker reads an empty string as no condition.
            min_kernel: match raw.min_kernel.as_deref() {
                None | Some("") => None,
                Some(text) => Some(KernelVersion::parse_min(text)?),
            },
        })
    }
}

impl RawSyscall {
    fn convert(self, rule: usize, total_names: &mut usize) -> Result<SyscallRule, SeccompError> {
        let names = match (self.name, self.names) {
            (Some(name), names) if !name.is_empty() => {
                if names.is_some_and(|n| !n.is_empty()) {
                    return Err(SeccompError::NameAndNames { rule });
                }
                vec![name]
            }
            (_, names) => names.unwrap_or_default(),
        };
        *total_names += names.len();
        if *total_names > MAX_NAMES {
            return Err(SeccompError::TooMany {
                what: "syscall names",
                count: *total_names,
                max: MAX_NAMES,
            });
        }
        if let Some(value) = self.errno_ret.filter(|v| *v > MAX_ERRNO_RET) {
            return Err(SeccompError::ErrnoRet { rule, value });
        }
        let args = bounded(self.args, "argument checks in a rule", MAX_ARGS_PER_RULE)?
            .into_iter()
            .map(|arg| {
                if arg.index > MAX_ARG_INDEX {
                    return Err(SeccompError::ArgIndex {
                        rule,
                        index: arg.index,
                    });
                }
                Ok(ArgRule {
                    index: arg.index,
                    value: arg.value,
                    value_two: arg.value_two,
                    op: CompareOp::parse(&arg.op)?,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(SyscallRule {
            names,
            action: Action::parse(&self.action)?,
            errno_ret: self.errno_ret,
            args,
            includes: RawFilter::convert(self.includes)?,
            excludes: RawFilter::convert(self.excludes)?,
        })
    }
}

impl Profile {
    /// Reads a profile in docker's JSON format. Unknown fields are ignored, as docker does;
    /// unknown actions, operators and architectures are errors naming them.
    pub fn from_json(bytes: &[u8]) -> Result<Profile, SeccompError> {
        if bytes.len() > MAX_PROFILE_BYTES {
            return Err(SeccompError::ProfileTooLarge {
                len: bytes.len(),
                max: MAX_PROFILE_BYTES,
            });
        }
        let raw: RawProfile = serde_json::from_slice(bytes).map_err(SeccompError::Json)?;
        let default_action = match raw.default_action.as_deref() {
            None | Some("") => return Err(SeccompError::NoDefaultAction),
            Some(name) => Action::parse(name)?,
        };
        if let Some(value) = raw.default_errno_ret.filter(|v| *v > MAX_ERRNO_RET) {
            return Err(SeccompError::DefaultErrnoRet { value });
        }
        let arch_map = bounded(raw.arch_map, "archMap entries", MAX_LIST)?
            .into_iter()
            .map(|entry| {
                Ok(ArchMap {
                    architecture: Arch::parse(&entry.architecture)?,
                    sub_architectures: arches(bounded(
                        entry.sub_architectures,
                        "sub-architectures",
                        MAX_LIST,
                    )?)?,
                })
            })
            .collect::<Result<Vec<_>, SeccompError>>()?;
        let architectures = arches(bounded(raw.architectures, "architectures", MAX_LIST)?)?;
        if !arch_map.is_empty() && !architectures.is_empty() {
            return Err(SeccompError::ArchitecturesAndArchMap);
        }
        let mut total_names = 0;
        let syscalls = bounded(raw.syscalls, "syscall rules", MAX_RULES)?
            .into_iter()
            .enumerate()
            .map(|(rule, raw)| raw.convert(rule, &mut total_names))
            .collect::<Result<_, _>>()?;
        Ok(Profile {
            default_action,
            default_errno_ret: raw.default_errno_ret,
            arch_map,
            architectures,
            syscalls,
        })
    }

    /// Docker's default profile (moby's `profiles/seccomp/default.json`).
    pub fn docker_default() -> Profile {
        super::seccomp_default::profile()
    }
}

/// The machine a program is compiled for: what rules' conditions are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Host {
    arch: Arch,
    /// Go's name for `arch`, which profiles' `arches` conditions use.
    go_arch: &'static str,
    kernel: KernelVersion,
}

impl Host {
    fn current() -> Result<Host, SeccompError> {
        let (arch, go_arch) = native_arch()?;
        Ok(Host {
            arch,
            go_arch,
            kernel: running_kernel()?,
        })
    }
}

/// This build's architecture, in seccomp's and in Go's names.
fn native_arch() -> Result<(Arch, &'static str), SeccompError> {
    let little = cfg!(target_endian = "little");
    Ok(match std::env::consts::ARCH {
        "x86_64" if cfg!(target_pointer_width = "32") => (Arch::X32, "x32"),
        "x86_64" => (Arch::X86_64, "amd64"),
        "x86" => (Arch::X86, "x86"),
        "aarch64" => (Arch::Aarch64, "arm64"),
        "arm" => (Arch::Arm, "arm"),
        "riscv64" => (Arch::Riscv64, "riscv64"),
        "s390x" => (Arch::S390X, "s390x"),
        "powerpc64" if little => (Arch::Ppc64Le, "ppc64le"),
        "powerpc64" => (Arch::Ppc64, "ppc64"),
        "powerpc" => (Arch::Ppc, "ppc"),
        "mips64" if little => (Arch::Mipsel64, "mipsel64"),
        "mips64" => (Arch::Mips64, "mips64"),
        "mips" if little => (Arch::Mipsel, "mipsel"),
        "mips" => (Arch::Mips, "mips"),
        "loongarch64" => (Arch::Loongarch64, "loongarch64"),
        other => return Err(SeccompError::NativeArch(other)),
    })
}

/// The running kernel's `major.minor`, from uname(2).
fn running_kernel() -> Result<KernelVersion, SeccompError> {
    // SAFETY: utsname is plain arrays of c_char, for which all zeroes is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname that outlives the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(SeccompError::Uname(io::Error::last_os_error()));
    }
    let release: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let release = String::from_utf8_lossy(&release);
    KernelVersion::parse_release(&release)
        .ok_or_else(|| SeccompError::KernelRelease(release.into_owned()))
}

/// What of a profile applies on a host with a capability set: the plain-data half of
/// [`compile`].
#[derive(Debug, PartialEq, Eq)]
struct Selection<'p> {
    /// Architectures to filter besides the native one.
    arches: Vec<Arch>,
    rules: Vec<&'p SyscallRule>,
}

/// Docker's choice of architectures and rules (moby's `setupSeccomp`).
fn select<'p>(profile: &'p Profile, caps: &BTreeSet<String>, host: &Host) -> Selection<'p> {
    let arches = if profile.arch_map.is_empty() {
        profile.architectures.clone()
    } else {
        profile
            .arch_map
            .iter()
            .find(|entry| entry.architecture == host.arch)
            .map(|entry| {
                std::iter::once(entry.architecture)
                    .chain(entry.sub_architectures.iter().copied())
                    .collect()
            })
            .unwrap_or_default()
    };
    let applies = |rule: &SyscallRule| {
        let (inc, exc) = (&rule.includes, &rule.excludes);
        let excluded = exc.arches.iter().any(|a| a == host.go_arch)
            || exc.caps.iter().any(|c| caps.contains(c))
            || exc.min_kernel.is_some_and(|min| host.kernel >= min);
        let included = (inc.arches.is_empty() || inc.arches.iter().any(|a| a == host.go_arch))
            && inc.caps.iter().all(|c| caps.contains(c))
            && inc.min_kernel.is_none_or(|min| host.kernel >= min);
        !excluded && included
    };
    Selection {
        arches,
        rules: profile.syscalls.iter().filter(|r| applies(r)).collect(),
    }
}

/// A compiled seccomp filter: classic BPF instructions, ready for seccomp(2).
#[derive(Clone)]
pub struct Program {
    filter: Vec<libc::sock_filter>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Program({} instructions)", self.filter.len())
    }
}

impl PartialEq for Program {
    fn eq(&self, other: &Self) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl Eq for Program {}

impl Program {
    /// Reads instructions in `struct sock_filter` layout (native byte order), as libseccomp
    /// exports them: 1 to BPF_MAXINSNS whole instructions.
    fn from_bytes(bytes: &[u8]) -> Option<Program> {
        let count = bytes.len() / INSN_BYTES;
        if !bytes.len().is_multiple_of(INSN_BYTES) || count == 0 || count > MAX_INSNS {
            return None;
        }
        let filter = bytes
            .chunks_exact(INSN_BYTES)
            .map(|insn| libc::sock_filter {
                code: u16::from_ne_bytes([insn[0], insn[1]]),
                jt: insn[2],
                jf: insn[3],
                k: u32::from_ne_bytes([insn[4], insn[5], insn[6], insn[7]]),
            })
            .collect();
        Some(Program { filter })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.filter.len() * INSN_BYTES);
        for insn in &self.filter {
            bytes.extend_from_slice(&insn.code.to_ne_bytes());
            bytes.extend_from_slice(&[insn.jt, insn.jf]);
            bytes.extend_from_slice(&insn.k.to_ne_bytes());
        }
        bytes
    }

    /// The number of BPF instructions.
    pub fn len(&self) -> usize {
        self.filter.len()
    }

    /// Always false for a compiled program; here for symmetry with [`Program::len`].
    pub fn is_empty(&self) -> bool {
        self.filter.is_empty()
    }

    /// Installs the filter on the calling thread with seccomp(2), returning the errno on
    /// failure. Meant for a forked child just before execve: it neither allocates nor takes a
    /// lock. Without CAP_SYS_ADMIN the caller must have set no_new_privs first. Flags are 0,
    /// not TSYNC: the child has one thread, and the filter is inherited across execve.
    pub fn load(&self) -> Result<(), i32> {
        let Ok(len) = u16::try_from(self.filter.len()) else {
            return Err(libc::EINVAL);
        };
        let prog = libc::sock_fprog {
            len,
            // The kernel only reads through this pointer.
            filter: self.filter.as_ptr().cast_mut(),
        };
        let flags: libc::c_uint = 0;
        // SAFETY: prog points at `len` initialized instructions owned by self, alive for the
        // whole call; seccomp(2) copies them and keeps no pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL))
        }
    }
}

/// Compiles `profile` for this machine and a sandbox holding `caps` (names such as
/// `CAP_SYS_ADMIN`), the way docker and runc do: the rules that apply (see the module doc),
/// the native architecture plus its sub-architectures from `archMap`, syscall names that
/// libseccomp does not know skipped, rules whose action is the default one left out, and no
/// no_new_privs set by the filter.
pub fn compile(profile: &Profile, caps: &BTreeSet<String>) -> Result<Program, SeccompError> {
    let host = Host::current()?;
    build(profile, &select(profile, caps, &host))
}

/// The engine's comparison for one argument check.
fn comparison(arg: &ArgRule) -> ScmpArgCompare {
    let (op, datum) = match arg.op {
        CompareOp::NotEqual => (ScmpCompareOp::NotEqual, arg.value),
        CompareOp::LessThan => (ScmpCompareOp::Less, arg.value),
        CompareOp::LessOrEqual => (ScmpCompareOp::LessOrEqual, arg.value),
        CompareOp::Equal => (ScmpCompareOp::Equal, arg.value),
        CompareOp::GreaterOrEqual => (ScmpCompareOp::GreaterEqual, arg.value),
        CompareOp::GreaterThan => (ScmpCompareOp::Greater, arg.value),
        CompareOp::MaskedEqual => (ScmpCompareOp::MaskedEqual(arg.value), arg.value_two),
    };
    ScmpArgCompare::new(arg.index, op, datum)
}

/// Has libseccomp generate the program for a selection.
fn build(profile: &Profile, selection: &Selection<'_>) -> Result<Program, SeccompError> {
    let default = profile.default_action.engine(profile.default_errno_ret);
    let mut ctx = ScmpFilterContext::new(default).map_err(SeccompError::NewFilter)?;
    ctx.set_ctl_nnp(false)
        .map_err(|source| SeccompError::FilterAttr {
            attr: "no_new_privs",
            source,
        })?;
    // A binary tree of system call numbers instead of a chain: every call the program makes
    // runs the filter, and a chain through docker's ~370 names costs a python start-up
    // about a millisecond and a half (bench/sandbox.py).
    ctx.set_ctl_optimize(SYSCALL_TREE)
        .map_err(|source| SeccompError::FilterAttr {
            attr: "optimize",
            source,
        })?;
    for &arch in &selection.arches {
        let engine = arch.engine();
        // The native architecture is there from the start; adding it again is an error.
        let present = ctx
            .is_arch_present(engine)
            .map_err(|source| SeccompError::AddArch { arch, source })?;
        if !present {
            ctx.add_arch(engine)
                .map_err(|source| SeccompError::AddArch { arch, source })?;
        }
    }
    for rule in &selection.rules {
        let action = rule.action.engine(rule.errno_ret);
        // libseccomp refuses rules that repeat the default action; runc skips them.
        if action == default {
            continue;
        }
        let conditions: Vec<ScmpArgCompare> = rule.args.iter().map(comparison).collect();
        // Two checks of one argument cannot be one rule (libseccomp ANDs per argument), so
        // runc adds each check as its own rule, which ORs them.
        let repeated = rule
            .args
            .iter()
            .enumerate()
            .any(|(i, a)| rule.args[..i].iter().any(|b| b.index == a.index));
        for name in &rule.names {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                log::debug!("seccomp: syscall {name:?} unknown to libseccomp, skipped");
                continue;
            };
            let add_err = |source| SeccompError::AddRule {
                syscall: name.clone(),
                source,
            };
            if repeated {
                for condition in &conditions {
                    ctx.add_rule_conditional(action, syscall, std::slice::from_ref(condition))
                        .map_err(add_err)?;
                }
            } else {
                ctx.add_rule_conditional(action, syscall, &conditions)
                    .map_err(add_err)?;
            }
        }
    }
    let bytes = export(&ctx)?;
    Program::from_bytes(&bytes).ok_or(SeccompError::ProgramSize { len: bytes.len() })
}

/// The filter's BPF, through a memory file (libseccomp 2.5 exports only to a descriptor).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, SeccompError> {
    // SAFETY: the name is a NUL-terminated string literal; memfd_create reads it only.
    let fd = unsafe { libc::memfd_create(c"imgfs-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SeccompError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nothing else.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    ctx.export_bpf(&file).map_err(SeccompError::Export)?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(SeccompError::ReadExport)?;
    Ok(bytes)
}

/// Where a profile comes from, for [`compiled`].
#[derive(Debug, Clone, Copy)]
pub enum ProfileSource<'a> {
    /// [`Profile::docker_default`].
    DockerDefault,
    /// The bytes of a profile in docker's JSON format.
    Json(&'a [u8]),
}

/// Appends a length-prefixed field to a cache key.
fn put(key: &mut Vec<u8>, field: &[u8]) {
    key.extend_from_slice(&(field.len() as u64).to_le_bytes());
    key.extend_from_slice(field);
}

/// The default profile as bytes, so that a change to its data changes the cache key.
fn default_profile_bytes() -> Vec<u8> {
    format!("{:?}", Profile::docker_default()).into_bytes()
}

/// Everything a compiled program depends on, as unambiguous bytes.
fn cache_key(
    source: ProfileSource<'_>,
    caps: &BTreeSet<String>,
    host: &Host,
    engine: ScmpVersion,
) -> Vec<u8> {
    let mut key = Vec::new();
    key.extend_from_slice(&CACHE_FORMAT_VERSION.to_le_bytes());
    match source {
        ProfileSource::DockerDefault => {
            key.push(0);
            put(&mut key, &default_profile_bytes());
        }
        ProfileSource::Json(bytes) => {
            key.push(1);
            put(&mut key, bytes);
        }
    }
    key.extend_from_slice(&(caps.len() as u64).to_le_bytes());
    for cap in caps {
        put(&mut key, cap.as_bytes());
    }
    put(&mut key, host.arch.name().as_bytes());
    key.extend_from_slice(&host.kernel.kernel.to_le_bytes());
    key.extend_from_slice(&host.kernel.major.to_le_bytes());
    for part in [engine.major, engine.minor, engine.micro] {
        key.extend_from_slice(&part.to_le_bytes());
    }
    key
}

/// Reads a cache file, no further than the largest file made for a key of `key_len` bytes.
/// A file that another user owns or could have written is refused.
fn read_cache_file(path: &Path, key_len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let file = File::open(path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(
            "owned by another user or writable by others",
        ));
    }
    let limit = CACHE_MAGIC.len() + 4 + key_len + MAX_INSNS * INSN_BYTES + 1;
    let mut bytes = Vec::new();
    file.take(limit as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The program stored in a cache file, if the file is whole and was made for `key`.
fn parse_cache_file<'f>(file: &'f [u8], key: &[u8]) -> Option<&'f [u8]> {
    let rest = file.strip_prefix(CACHE_MAGIC.as_slice())?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    let (stored_key, bpf) = rest.split_at_checked(len)?;
    (stored_key == key).then_some(bpf)
}

fn cache_file_bytes(key: &[u8], program: &Program) -> Option<Vec<u8>> {
    let len = u32::try_from(key.len()).ok()?;
    let mut bytes =
        Vec::with_capacity(CACHE_MAGIC.len() + 4 + key.len() + program.len() * INSN_BYTES);
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&program.to_bytes());
    Some(bytes)
}

/// Writes a cache file whole or not at all: a temporary name in the same directory, then a
/// rename over the final name, so a concurrent reader sees the old file or the new one.
fn write_cache_file(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = path.with_extension(format!("{}.{nanos}.tmp", std::process::id()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(CACHE_FILE_MODE)
        .open(&tmp)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The program for `source` and `caps` on this machine, from `cache_dir` when it was compiled
/// before. A missing, damaged or foreign cache file is compiled again and replaced; the whole
/// key is compared, so a crc32 collision only costs a recompile. Failing to write the cache
/// is not an error: the program is still returned. `cache_dir` must be writable only by the
/// caller, as a file there decides what the sandbox may do; a file owned by another user or
/// writable by others is ignored and replaced.
pub fn compiled(
    source: ProfileSource<'_>,
    caps: &BTreeSet<String>,
    cache_dir: &Path,
) -> Result<Program, SeccompError> {
    let host = Host::current()?;
    let engine = ScmpVersion::current().map_err(SeccompError::EngineVersion)?;
    let key = cache_key(source, caps, &host, engine);
    let path = cache_dir.join(format!("{:08x}.{CACHE_EXT}", crc32fast::hash(&key)));
    match read_cache_file(&path, key.len()) {
        Ok(file) => {
            if let Some(program) = parse_cache_file(&file, &key).and_then(Program::from_bytes) {
                return Ok(program);
            }
            log::debug!(
                "seccomp cache {}: stale or damaged, recompiling",
                path.display()
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::debug!(
            "seccomp cache {}: unreadable, recompiling: {e}",
            path.display()
        ),
    }
    let profile = match source {
        ProfileSource::DockerDefault => Profile::docker_default(),
        ProfileSource::Json(bytes) => Profile::from_json(bytes)?,
    };
    let program = build(&profile, &select(&profile, caps, &host))?;
    if let Some(bytes) = cache_file_bytes(&key, &program)
        && let Err(e) = write_cache_file(cache_dir, &path, &bytes)
    {
        log::debug!("seccomp cache {}: not written: {e}", path.display());
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Docker's default capability set (moby `oci/caps/defaults.go`).
    const DOCKER_CAPS: &[&str] = &[
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

    fn caps(extra: &[&str]) -> BTreeSet<String> {
        DOCKER_CAPS
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    }

    const AMD64_6_1: Host = Host {
        arch: Arch::X86_64,
        go_arch: "amd64",
        kernel: KernelVersion {
            kernel: 6,
            major: 1,
        },
    };

    /// The selected rules' names with their first argument check, to compare selections.
    fn selected(profile: &Profile, caps: &BTreeSet<String>, host: &Host) -> Vec<String> {
        select(profile, caps, host)
            .rules
            .iter()
            .flat_map(|rule| {
                rule.names
                    .iter()
                    .map(move |name| format!("{name} {:?} {:?}", rule.action, rule.args.first()))
            })
            .collect()
    }

    fn has(list: &[String], prefix: &str) -> bool {
        list.iter().any(|entry| entry.starts_with(prefix))
    }

    #[test]
    fn default_profile_selects_like_docker() {
        let profile = Profile::docker_default();
        assert_eq!(profile.default_action, Action::Errno);
        assert_eq!(profile.default_errno_ret, Some(1));

        let plain = select(&profile, &caps(&[]), &AMD64_6_1);
        assert_eq!(plain.arches, [Arch::X86_64, Arch::X86, Arch::X32]);
        let plain = selected(&profile, &caps(&[]), &AMD64_6_1);
        // The namespace-free clone, clone3 answered ENOSYS, x86's own calls, the 4.8 rule.
        assert!(has(&plain, "clone Allow Some(ArgRule { index: 0,"));
        assert!(has(&plain, "clone3 Errno"));
        assert!(has(&plain, "arch_prctl Allow"));
        assert!(has(&plain, "ptrace Allow"));
        assert!(has(&plain, "chroot Allow"));
        assert!(!has(&plain, "mount "));
        assert!(!has(&plain, "clone Allow None"));
        assert!(!has(&plain, "s390_runtime_instr"));
        assert!(!has(&plain, "clone Allow Some(ArgRule { index: 1,"));
        assert!(!has(&plain, "reboot"));

        let admin = selected(&profile, &caps(&["CAP_SYS_ADMIN"]), &AMD64_6_1);
        assert!(has(&admin, "mount Allow"));
        assert!(has(&admin, "clone Allow None"));
        assert!(!has(&admin, "clone3 Errno"));
        assert!(!has(&admin, "clone Allow Some"));

        let old_kernel = Host {
            kernel: KernelVersion {
                kernel: 4,
                major: 4,
            },
            ..AMD64_6_1
        };
        assert!(!has(&selected(&profile, &caps(&[]), &old_kernel), "ptrace"));

        let s390 = Host {
            arch: Arch::S390X,
            go_arch: "s390x",
            ..AMD64_6_1
        };
        let on_s390 = selected(&profile, &caps(&[]), &s390);
        assert!(has(&on_s390, "clone Allow Some(ArgRule { index: 1,"));
        assert!(!has(&on_s390, "clone Allow Some(ArgRule { index: 0,"));
        assert!(!has(&on_s390, "arch_prctl"));
        assert_eq!(
            select(&profile, &caps(&[]), &s390).arches,
            [Arch::S390X, Arch::S390]
        );

        let arm64 = Host {
            arch: Arch::Aarch64,
            go_arch: "arm64",
            ..AMD64_6_1
        };
        assert_eq!(
            select(&profile, &caps(&[]), &arm64).arches,
            [Arch::Aarch64, Arch::Arm]
        );
    }

    #[test]
    fn default_profile_compiles_per_capability_set() {
        let start = std::time::Instant::now();
        let plain = compile(&Profile::docker_default(), &caps(&[])).unwrap();
        let elapsed = start.elapsed();
        let admin = compile(&Profile::docker_default(), &caps(&["CAP_SYS_ADMIN"])).unwrap();
        println!(
            "compile(default): {elapsed:?}, {} instructions",
            plain.len()
        );
        assert!(!plain.is_empty() && plain.len() <= MAX_INSNS);
        assert_ne!(plain, admin);
        assert_eq!(
            plain,
            compile(&Profile::docker_default(), &caps(&[])).unwrap()
        );
    }

    #[test]
    fn docker_json_snippets_parse() {
        let profile = Profile::from_json(
            br#"{
                "defaultAction": "SCMP_ACT_KILL_PROCESS",
                "somethingNew": {"x": [1, 2]},
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                "syscalls": [
                    {"name": "getpid", "action": "SCMP_ACT_ALLOW", "comment": "legacy"},
                    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": null},
                    {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 0, "value": 2114060288, "valueTwo": 0,
                               "op": "SCMP_CMP_MASKED_EQ"}],
                     "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390x"]}},
                    {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                     "includes": {"minKernel": "4.8"}, "excludes": {"minKernel": ""}}
                ]
            }"#,
        )
        .unwrap();
        assert_eq!(profile.default_action, Action::KillProcess);
        assert_eq!(profile.architectures, [Arch::X86_64, Arch::X86]);
        assert_eq!(profile.syscalls[0].names, ["getpid"]);
        assert_eq!(
            profile.syscalls[2].args,
            [ArgRule {
                index: 0,
                value: 2114060288,
                value_two: 0,
                op: CompareOp::MaskedEqual
            }]
        );
        assert_eq!(profile.syscalls[2].excludes.arches, ["s390x"]);
        assert_eq!(profile.syscalls[3].errno_ret, Some(38));
        assert_eq!(
            profile.syscalls[3].includes.min_kernel,
            Some(KernelVersion {
                kernel: 4,
                major: 8
            })
        );
        assert_eq!(profile.syscalls[3].excludes.min_kernel, None);

        let map = Profile::from_json(
            br#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
                 "archMap": [{"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null}],
                 "syscalls": null}"#,
        )
        .unwrap();
        assert_eq!(map.arch_map[0].architecture, Arch::Riscv64);
        assert!(map.arch_map[0].sub_architectures.is_empty() && map.syscalls.is_empty());
        // A user profile compiles, and libseccomp's unknown names are skipped.
        let json = br#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["getpid", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                                   {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]}"#;
        compile(&Profile::from_json(json).unwrap(), &caps(&[])).unwrap();
    }

    /// Tells whether an error is the one a case expects.
    type IsExpected = fn(&SeccompError) -> bool;

    #[test]
    fn bad_profiles_give_the_right_error() {
        let rule =
            |body: &str| format!(r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{body}]}}"#);
        let cases: Vec<(String, IsExpected)> = vec![
            (
                r#"{"defaultAction": "SCMP_ACT_NOPE"}"#.into(),
                |e| matches!(e, SeccompError::UnknownAction(a) if a == "SCMP_ACT_NOPE"),
            ),
            (
                rule(r#"{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}"#),
                |e| matches!(e, SeccompError::UnknownAction(a) if a == "SCMP_ACT_NOTIFY"),
            ),
            (
                rule(
                    r#"{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ALMOST"}]}"#,
                ),
                |e| matches!(e, SeccompError::UnknownOp(o) if o == "SCMP_CMP_ALMOST"),
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_Z80"]}"#.into(),
                |e| matches!(e, SeccompError::UnknownArch(a) if a == "SCMP_ARCH_Z80"),
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO",
                    "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                                 "subArchitectures": ["SCMP_ARCH_VAX"]}]}"#
                    .into(),
                |e| matches!(e, SeccompError::UnknownArch(a) if a == "SCMP_ARCH_VAX"),
            ),
            (
                rule(r#"{"names": "read", "action": "SCMP_ACT_ALLOW"}"#),
                |e| matches!(e, SeccompError::Json(_)),
            ),
            (
                rule(
                    r#"{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}"#,
                ),
                |e| matches!(e, SeccompError::Json(_)),
            ),
            ("[1, 2, 3]".into(), |e| matches!(e, SeccompError::Json(_))),
            ("{".into(), |e| matches!(e, SeccompError::Json(_))),
            (r#"{"syscalls": []}"#.into(), |e| {
                matches!(e, SeccompError::NoDefaultAction)
            }),
            (
                rule(
                    r#"{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}"#,
                ),
                |e| matches!(e, SeccompError::ArgIndex { rule: 0, index: 6 }),
            ),
            (
                rule(r#"{"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}"#),
                |e| matches!(e, SeccompError::NameAndNames { rule: 0 }),
            ),
            (
                rule(r#"{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}"#),
                |e| {
                    matches!(
                        e,
                        SeccompError::ErrnoRet {
                            rule: 0,
                            value: 70000
                        }
                    )
                },
            ),
            (
                rule(
                    r#"{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                        "includes": {"minKernel": "4"}}"#,
                ),
                |e| matches!(e, SeccompError::MinKernel(v) if v == "4"),
            ),
            (
                rule(
                    r#"{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                        "includes": {"minKernel": "0.0"}}"#,
                ),
                |e| matches!(e, SeccompError::MinKernel(_)),
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86"],
                    "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#
                    .into(),
                |e| matches!(e, SeccompError::ArchitecturesAndArchMap),
            ),
            (
                format!(
                    r#"{{"defaultAction": "SCMP_ACT_ERRNO", "comment": "{}"}}"#,
                    "x".repeat(MAX_PROFILE_BYTES)
                ),
                |e| matches!(e, SeccompError::ProfileTooLarge { .. }),
            ),
            (
                rule(
                    &vec![r#"{"names": ["read"], "action": "SCMP_ACT_ALLOW"}"#; MAX_RULES + 1]
                        .join(","),
                ),
                |e| matches!(e, SeccompError::TooMany { max: MAX_RULES, .. }),
            ),
            (
                rule(&format!(
                    r#"{{"names": [{}], "action": "SCMP_ACT_ALLOW"}}"#,
                    vec![r#""read""#; MAX_NAMES + 1].join(",")
                )),
                |e| matches!(e, SeccompError::TooMany { max: MAX_NAMES, .. }),
            ),
        ];
        for (json, expected) in cases {
            let err = Profile::from_json(json.as_bytes()).unwrap_err();
            let shown: String = json.chars().take(120).collect();
            assert!(expected(&err), "{shown}: got {err:?}");
        }
    }

    #[test]
    fn kernel_versions() {
        let v = |kernel, major| Some(KernelVersion { kernel, major });
        for (release, expected) in [
            ("6.1.0-18-amd64", v(6, 1)),
            ("3.12-1-amd64", v(3, 12)),
            ("3.12.25-gentoo", v(3, 12)),
            ("5.15", v(5, 15)),
            ("6", None),
            ("", None),
            ("x.1", None),
        ] {
            assert_eq!(KernelVersion::parse_release(release), expected, "{release}");
        }
        assert_eq!(KernelVersion::parse_min("4.8").ok(), v(4, 8));
        for bad in ["4", "4.8.1", "a.b", "256.1", "-1.2", "4.", ".8", "0.0"] {
            assert!(KernelVersion::parse_min(bad).is_err(), "{bad}");
        }
    }

    fn cache_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("imgfs-seccomp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn cache_round_trip_and_repair() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = temp_dir("cache");
        let plain = caps(&[]);
        let admin_caps = caps(&["CAP_SYS_ADMIN"]);

        let start = std::time::Instant::now();
        let cold = compiled(ProfileSource::DockerDefault, &plain, &dir).unwrap();
        let cold_time = start.elapsed();
        let files = cache_files(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let inode = std::fs::metadata(&files[0]).unwrap().ino();

        let start = std::time::Instant::now();
        let warm = compiled(ProfileSource::DockerDefault, &plain, &dir).unwrap();
        let warm_time = start.elapsed();
        println!("compiled(default): cold {cold_time:?}, warm {warm_time:?}");
        assert_eq!(cold, warm);
        assert_eq!(cold, compile(&Profile::docker_default(), &plain).unwrap());
        // Not rewritten: a rewrite renames a new file over it.
        assert_eq!(std::fs::metadata(&files[0]).unwrap().ino(), inode);
        assert_eq!(cache_files(&dir), files);

        // Damage: a cut file, a file of another key, a program of a wrong length.
        let whole = std::fs::read(&files[0]).unwrap();
        let mut foreign = whole.clone();
        foreign[CACHE_MAGIC.len() + 4] ^= 1;
        let mut ragged = whole.clone();
        ragged.push(0);
        for damaged in [
            whole[..whole.len() - 3].to_vec(),
            foreign,
            ragged,
            Vec::new(),
        ] {
            std::fs::write(&files[0], &damaged).unwrap();
            let again = compiled(ProfileSource::DockerDefault, &plain, &dir).unwrap();
            assert_eq!(again, cold);
            assert_eq!(std::fs::read(&files[0]).unwrap(), whole);
        }

        // Another capability set and a JSON source are other keys, other files.
        let admin = compiled(ProfileSource::DockerDefault, &admin_caps, &dir).unwrap();
        assert_ne!(admin, cold);
        let json = br#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"}]}"#;
        compiled(ProfileSource::Json(json), &plain, &dir).unwrap();
        assert_eq!(cache_files(&dir).len(), 3);
        // A bad JSON profile is an error, and nothing is cached for it.
        assert!(compiled(ProfileSource::Json(b"{}"), &plain, &dir).is_err());
        assert_eq!(cache_files(&dir).len(), 3);
        // A file someone else could have written is not trusted.
        let hostile = cache_files(&dir)[0].clone();
        let before = std::fs::read(&hostile).unwrap();
        std::fs::set_permissions(&hostile, std::fs::Permissions::from_mode(0o666)).unwrap();
        let inode = std::fs::metadata(&hostile).unwrap().ino();
        for source in [ProfileSource::DockerDefault, ProfileSource::Json(json)] {
            for caps in [&plain, &admin_caps] {
                compiled(source, caps, &dir).unwrap();
            }
        }
        assert_ne!(std::fs::metadata(&hostile).unwrap().ino(), inode);
        assert_eq!(std::fs::read(&hostile).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Runs `check` in a forked child confined by `program`; returns its exit status.
    fn in_confined_child(program: &Program, check: fn() -> i32) -> i32 {
        // SAFETY: the child only makes raw syscalls (prctl, seccomp, the checks) and _exits;
        // it touches no lock or allocator state the fork may have copied mid-use.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: prctl with plain integer arguments; _exit never returns.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(100);
                }
                if program.load().is_err() {
                    libc::_exit(101);
                }
                libc::_exit(check());
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above, writing to a local.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// The errno of a raw syscall that failed, or 0 when it succeeded.
    fn errno_of(rc: libc::c_long) -> i32 {
        if rc == -1 {
            // SAFETY: reads this thread's errno.
            unsafe { *libc::__errno_location() }
        } else {
            0
        }
    }

    #[test]
    fn loaded_default_profile_denies_like_docker() {
        let program = compile(&Profile::docker_default(), &caps(&[])).unwrap();
        let status = in_confined_child(&program, || {
            // SAFETY: raw syscalls with integer arguments that touch no memory of ours.
            unsafe {
                if libc::syscall(libc::SYS_getpid) <= 0 {
                    return 1;
                }
                if errno_of(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)) != libc::EPERM {
                    return 2;
                }
                if errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS)) != libc::EPERM {
                    return 3;
                }
                // clone3 is checked before it reads its argument.
                if errno_of(libc::syscall(libc::SYS_clone3, 0, 0)) != libc::ENOSYS {
                    return 4;
                }
                if errno_of(libc::syscall(libc::SYS_personality, 0x0040_0000)) != libc::EPERM {
                    return 5;
                }
                if libc::syscall(libc::SYS_personality, 0xffff_ffffu32) < 0 {
                    return 6;
                }
            }
            0
        });
        assert_eq!(status, 0);
    }
}
