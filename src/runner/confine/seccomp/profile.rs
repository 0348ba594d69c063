//! A seccomp profile in docker's terms, and docker's JSON format for it.
//!
//! [`Profile::from_json`] reads a profile as docker does (unknown fields ignored, `null` for an
//! empty list) into plain data: the default action, the architectures, and rules with their
//! conditions on capabilities, architecture and kernel version. Takes bytes; hands on a
//! [`Profile`] that compiling turns into a filter. Hostile JSON is bounded (size, rules,
//! names, lists) and every unknown action, operator or architecture is an error naming it;
//! nothing here touches the system.

use serde::Deserialize;

use super::SeccompError;

/// Largest profile accepted: docker's default is about 20 KiB, so this leaves room for any
/// real profile while bounding what hostile JSON can cost.
pub(crate) const MAX_PROFILE_BYTES: usize = 1 << 20;
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
pub(super) const MAX_ERRNO_RET: u32 = 0xffff;

/// What the filter does with a matching syscall, as docker spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
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
}

/// How a syscall argument is compared, as docker spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompareOp {
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
pub(crate) enum Arch {
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
    pub(crate) fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(arch, _)| *arch == self)
            .map_or("", |(_, name)| name)
    }
}

/// A kernel version as profiles compare it: `major.minor`, the rest ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KernelVersion {
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
    pub(super) fn parse_release(release: &str) -> Option<Self> {
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
pub(crate) struct Filter {
    /// Capability names (`CAP_SYS_ADMIN`).
    pub caps: Vec<String>,
    /// Go's architecture names (`amd64`, `arm64`, `s390x`...), as docker matches them.
    pub arches: Vec<String>,
    pub min_kernel: Option<KernelVersion>,
}

/// One check of a syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArgRule {
    pub index: u32,
    pub value: u64,
    /// Only for [`CompareOp::MaskedEqual`]: the value the masked argument must equal.
    pub value_two: u64,
    pub op: CompareOp,
}

/// What happens to some syscalls, under some conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyscallRule {
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
pub(crate) struct ArchMap {
    pub architecture: Arch,
    pub sub_architectures: Vec<Arch>,
}

/// A seccomp profile in docker's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
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
    pub(crate) fn from_json(bytes: &[u8]) -> Result<Profile, SeccompError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
