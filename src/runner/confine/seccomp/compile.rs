//! Compiling a profile: the rules that apply on this machine to a sandbox with a given
//! capability set, chosen as docker chooses them, handed to libseccomp to generate the
//! filter for the native architecture and its compat sub-architectures. Takes a [`Profile`]
//! and capability names; hands on a [`Program`]. The choice ([`select`]) is plain data that
//! tests check for any architecture and kernel; only [`build`] calls the engine.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

use super::SeccompError;
use super::profile::{
    Action, Arch, ArgRule, CompareOp, KernelVersion, MAX_ERRNO_RET, Profile, SyscallRule,
};
use super::program::Program;

/// The errno docker uses when a profile names none: EPERM.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;
/// libseccomp's optimization level that sorts the rules into a binary tree.
const SYSCALL_TREE: u32 = 2;

impl Action {
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

impl Arch {
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

/// The machine a program is compiled for: what rules' conditions are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Host {
    pub(super) arch: Arch,
    /// Go's name for `arch`, which profiles' `arches` conditions use.
    go_arch: &'static str,
    pub(super) kernel: KernelVersion,
}

impl Host {
    pub(super) fn current() -> Result<Host, SeccompError> {
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
    let release = crate::sys::fs::kernel_release().map_err(SeccompError::Uname)?;
    KernelVersion::parse_release(&release).ok_or(SeccompError::KernelRelease(release))
}

/// What of a profile applies on a host with a capability set: the plain-data half of
/// [`compile`].
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Selection<'p> {
    /// Architectures to filter besides the native one.
    arches: Vec<Arch>,
    rules: Vec<&'p SyscallRule>,
}

/// Docker's choice of architectures and rules (moby's `setupSeccomp`).
pub(super) fn select<'p>(
    profile: &'p Profile,
    caps: &BTreeSet<String>,
    host: &Host,
) -> Selection<'p> {
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

/// Compiles `profile` for this machine and a sandbox holding `caps` (names such as
/// `CAP_SYS_ADMIN`), the way docker and runc do: the rules that apply (see the module doc),
/// the native architecture plus its sub-architectures from `archMap`, syscall names that
/// libseccomp does not know skipped, rules whose action is the default one left out, and no
/// no_new_privs set by the filter.
#[cfg(test)]
pub(crate) fn compile(profile: &Profile, caps: &BTreeSet<String>) -> Result<Program, SeccompError> {
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
pub(super) fn build(profile: &Profile, selection: &Selection<'_>) -> Result<Program, SeccompError> {
    let default = profile.default_action.engine(profile.default_errno_ret);
    let mut ctx = ScmpFilterContext::new(default).map_err(SeccompError::NewFilter)?;
    ctx.set_ctl_nnp(false)
        .map_err(|source| SeccompError::FilterAttr {
            attr: "no_new_privs",
            cause: source,
        })?;
    // A binary tree of system call numbers instead of a chain: every call the program makes
    // runs the filter, and a chain through docker's ~370 names costs a python start-up
    // about a millisecond and a half (bench/sandbox.py).
    ctx.set_ctl_optimize(SYSCALL_TREE)
        .map_err(|source| SeccompError::FilterAttr {
            attr: "optimize",
            cause: source,
        })?;
    for &arch in &selection.arches {
        let engine = arch.engine();
        // The native architecture is there from the start; adding it again is an error.
        let present = ctx
            .is_arch_present(engine)
            .map_err(|source| SeccompError::AddArch {
                arch,
                cause: source,
            })?;
        if !present {
            ctx.add_arch(engine)
                .map_err(|source| SeccompError::AddArch {
                    arch,
                    cause: source,
                })?;
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
                cause: source,
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
    let mut file =
        File::from(crate::sys::fs::memfd(c"imgfs-seccomp").map_err(SeccompError::Memfd)?);
    ctx.export_bpf(&file).map_err(SeccompError::Export)?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(SeccompError::ReadExport)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::program::MAX_INSNS;
    use super::super::tests::caps;
    use super::*;

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
    fn user_profile_compiles_skipping_unknown_names() {
        // A user profile compiles, and libseccomp's unknown names are skipped.
        let json = br#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["getpid", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                                   {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]}"#;
        compile(&Profile::from_json(json).unwrap(), &caps(&[])).unwrap();
    }

    /// Set in the copy of this test binary that [`in_confined_child`] starts.
    const CONFINED_CHILD: &str = "IMGFS_TEST_CONFINED_CHILD";

    /// Runs `check` confined by `program` in a copy of this test binary that runs only the
    /// test `test` of this module, and returns its exit status. In that copy (told apart by
    /// the environment) it sets no_new_privs and loads the filter on the test's own thread,
    /// then runs `check` there and exits with what it returns: the filter never touches the
    /// process that runs the other tests.
    fn in_confined_child(test: &str, program: &Program, check: fn() -> i32) -> i32 {
        use crate::sys::process::{exit_now, set_no_new_privs};
        if std::env::var_os(CONFINED_CHILD).is_some() {
            if set_no_new_privs().is_err() {
                exit_now(100);
            }
            if program.load().is_err() {
                exit_now(101);
            }
            exit_now(check());
        }
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("{module}::{test}"), "--nocapture"])
            .env(CONFINED_CHILD, "1")
            .stdout(std::process::Stdio::null())
            .output()
            .unwrap();
        out.status.code().unwrap_or_else(|| {
            panic!(
                "the confined child ended with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    #[test]
    fn loaded_default_profile_denies_like_docker() {
        use crate::sys::process::{Probe, probe, unshare};
        let program = compile(&Profile::docker_default(), &caps(&[])).unwrap();
        let status = in_confined_child(
            "loaded_default_profile_denies_like_docker",
            &program,
            || {
                let errno = |e: std::io::Error| e.raw_os_error();
                // getpid is allowed (a refusal would read as -1).
                if std::process::id() as i32 <= 0 {
                    return 1;
                }
                if probe(Probe::Keyctl).map_err(errno) != Err(Some(libc::EPERM)) {
                    return 2;
                }
                if unshare(libc::CLONE_NEWNS).map_err(errno) != Err(Some(libc::EPERM)) {
                    return 3;
                }
                // clone3 is checked before it reads its argument.
                if probe(Probe::Clone3).map_err(errno) != Err(Some(libc::ENOSYS)) {
                    return 4;
                }
                if probe(Probe::Personality(0x0040_0000)).map_err(errno) != Err(Some(libc::EPERM)) {
                    return 5;
                }
                if probe(Probe::Personality(0xffff_ffff)).is_err() {
                    return 6;
                }
                0
            },
        );
        assert_eq!(status, 0);
    }
}
