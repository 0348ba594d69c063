//! Docker's default seccomp profile, as data.
//!
//! The same facts as moby's `profiles/seccomp/default.json` (the profile every `docker run`
//! gets unless told otherwise): deny with EPERM by default, a large allowlist, and rules that
//! only apply for a capability, an architecture or a kernel version. [`profile`] builds the
//! [`Profile`] that [`Profile::docker_default`] hands out; the conditions are evaluated later,
//! by `compile`, exactly as for a profile read from JSON.

use super::profile::{
    Action, Arch, ArchMap, ArgRule, CompareOp, Filter, KernelVersion, Profile, SyscallRule,
};

/// The errno of the default action: EPERM, what docker answers for a syscall it denies.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;

/// personality(2)'s Linux persona (`PER_LINUX` in <linux/personality.h>, absent from libc).
const PER_LINUX: u64 = 0x0000;
/// personality(2)'s 32-bit Linux persona (`PER_LINUX32`), used by `linux32`/`setarch`.
const PER_LINUX32: u64 = 0x0008;
/// personality(2)'s flag reporting a 2.6.x kernel version to old programs.
const UNAME26: u64 = libc::UNAME26 as u64;

/// Allowed for everyone, on every architecture, whatever the capabilities.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget",
    "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid",
    "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
    "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
    "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area",
    "gettid", "gettimeofday", "getuid", "getuid32", "getxattr", "getxattrat", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy",
    "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set",
    "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listmount", "listxattr", "listxattrat", "llistxattr", "_llseek", "lremovexattr", "lseek",
    "lsetxattr", "lstat", "lstat64", "madvise", "map_shadow_stack", "membarrier", "memfd_create",
    "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2",
    "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64",
    "mq_unlink", "mremap", "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open",
    "openat", "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv",
    "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv",
    "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr",
    "removexattrat", "rename", "renameat", "renameat2", "restart_syscall", "riscv_hwprobe",
    "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget",
    "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg",
    "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "setxattrat", "shmat", "shmctl", "shmdt", "shmget", "shutdown",
    "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair",
    "splice", "stat", "stat64", "statfs", "statfs64", "statmount", "statx", "symlink", "symlinkat",
    "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask",
    "uname", "unlink", "unlinkat", "uretprobe", "utime", "utimensat", "utimensat_time64", "utimes",
    "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
];

/// The namespace flags of clone(2): without CAP_SYS_ADMIN, clone is allowed only when none of
/// them is set (unshare and setns are denied for the same reason).
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// personality(2)'s "query the current persona" argument.
const PERSONALITY_QUERY: u64 = 0xffff_ffff;

/// A condition on a rule, in the profile's own terms (see [`Filter`]).
struct Cond {
    caps: &'static [&'static str],
    /// Go's architecture names (`amd64`, `arm64`, `s390x`...), as docker writes them.
    arches: &'static [&'static str],
    min_kernel: Option<KernelVersion>,
}

/// No condition.
const ALWAYS: Cond = Cond {
    caps: &[],
    arches: &[],
    min_kernel: None,
};

const fn caps(caps: &'static [&'static str]) -> Cond {
    Cond {
        caps,
        arches: &[],
        min_kernel: None,
    }
}

const fn arches(arches: &'static [&'static str]) -> Cond {
    Cond {
        caps: &[],
        arches,
        min_kernel: None,
    }
}

/// One rule of the profile.
struct Rule {
    names: &'static [&'static str],
    action: Action,
    errno_ret: Option<u32>,
    args: &'static [ArgRule],
    includes: Cond,
    excludes: Cond,
}

/// Allows `names` under a condition, whatever their arguments.
const fn allow(names: &'static [&'static str], includes: Cond) -> Rule {
    Rule {
        names,
        action: Action::Allow,
        errno_ret: None,
        args: &[],
        includes,
        excludes: ALWAYS,
    }
}

/// Allows `names` when every argument check holds.
const fn allow_arg(names: &'static [&'static str], args: &'static [ArgRule]) -> Rule {
    Rule {
        names,
        action: Action::Allow,
        errno_ret: None,
        args,
        includes: ALWAYS,
        excludes: ALWAYS,
    }
}

const fn arg(index: u32, op: CompareOp, value: u64) -> ArgRule {
    ArgRule {
        index,
        value,
        value_two: 0,
        op,
    }
}

/// The rules after the allowlist, in the order docker lists them.
const RULES: &[Rule] = &[
    allow(
        &["process_vm_readv", "process_vm_writev", "ptrace"],
        Cond {
            caps: &[],
            arches: &[],
            min_kernel: Some(KernelVersion {
                kernel: 4,
                major: 8,
            }),
        },
    ),
    // socket(2) for every address family but AF_ALG and AF_VSOCK.
    allow_arg(
        &["socket"],
        &[arg(0, CompareOp::LessThan, libc::AF_ALG as u64)],
    ),
    allow_arg(
        &["socket"],
        &[arg(0, CompareOp::Equal, libc::AF_NFC as u64)],
    ),
    allow_arg(
        &["socket"],
        &[arg(0, CompareOp::GreaterThan, libc::AF_VSOCK as u64)],
    ),
    // personality(2) only for the harmless personas: Linux, Linux32, each with UNAME26, and
    // the query.
    allow_arg(&["personality"], &[arg(0, CompareOp::Equal, PER_LINUX)]),
    allow_arg(&["personality"], &[arg(0, CompareOp::Equal, PER_LINUX32)]),
    allow_arg(&["personality"], &[arg(0, CompareOp::Equal, UNAME26)]),
    allow_arg(
        &["personality"],
        &[arg(0, CompareOp::Equal, UNAME26 | PER_LINUX32)],
    ),
    allow_arg(
        &["personality"],
        &[arg(0, CompareOp::Equal, PERSONALITY_QUERY)],
    ),
    allow(&["sync_file_range2", "swapcontext"], arches(&["ppc64le"])),
    allow(
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        arches(&["arm", "arm64"]),
    ),
    allow(&["arch_prctl"], arches(&["amd64", "x32"])),
    allow(&["modify_ldt"], arches(&["amd64", "x32", "x86"])),
    allow(
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
        arches(&["s390", "s390x"]),
    ),
    allow(&["riscv_flush_icache"], arches(&["riscv64"])),
    allow(&["open_by_handle_at"], caps(&["CAP_DAC_READ_SEARCH"])),
    allow(
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        caps(&["CAP_SYS_ADMIN"]),
    ),
    // Without CAP_SYS_ADMIN, clone(2) without namespace flags; s390 passes the flags second.
    Rule {
        names: &["clone"],
        action: Action::Allow,
        errno_ret: None,
        args: &[ArgRule {
            index: 0,
            value: CLONE_NAMESPACE_FLAGS,
            value_two: 0,
            op: CompareOp::MaskedEqual,
        }],
        includes: ALWAYS,
        excludes: Cond {
            caps: &["CAP_SYS_ADMIN"],
            arches: &["s390", "s390x"],
            min_kernel: None,
        },
    },
    Rule {
        names: &["clone"],
        action: Action::Allow,
        errno_ret: None,
        args: &[ArgRule {
            index: 1,
            value: CLONE_NAMESPACE_FLAGS,
            value_two: 0,
            op: CompareOp::MaskedEqual,
        }],
        includes: arches(&["s390", "s390x"]),
        excludes: caps(&["CAP_SYS_ADMIN"]),
    },
    // clone3(2) passes its flags in memory, where a filter cannot look: answer ENOSYS so that
    // libcs fall back to clone(2), which is checked above.
    Rule {
        names: &["clone3"],
        action: Action::Errno,
        errno_ret: Some(libc::ENOSYS as u32),
        args: &[],
        includes: ALWAYS,
        excludes: caps(&["CAP_SYS_ADMIN"]),
    },
    allow(&["reboot"], caps(&["CAP_SYS_BOOT"])),
    allow(&["chroot"], caps(&["CAP_SYS_CHROOT"])),
    allow(
        &["delete_module", "init_module", "finit_module"],
        caps(&["CAP_SYS_MODULE"]),
    ),
    allow(&["acct"], caps(&["CAP_SYS_PACCT"])),
    allow(
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        caps(&["CAP_SYS_PTRACE"]),
    ),
    allow(&["iopl", "ioperm"], caps(&["CAP_SYS_RAWIO"])),
    allow(
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        caps(&["CAP_SYS_TIME"]),
    ),
    allow(&["vhangup"], caps(&["CAP_SYS_TTY_CONFIG"])),
    allow(
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
        caps(&["CAP_SYS_NICE"]),
    ),
    allow(&["syslog"], caps(&["CAP_SYSLOG"])),
    allow(&["bpf"], caps(&["CAP_BPF"])),
    allow(&["perf_event_open"], caps(&["CAP_PERFMON"])),
];

/// Each architecture docker knows, with the ones its kernel also runs (compat modes).
const ARCH_MAP: &[(Arch, &[Arch])] = &[
    (Arch::X86_64, &[Arch::X86, Arch::X32]),
    (Arch::Aarch64, &[Arch::Arm]),
    (Arch::Mips64, &[Arch::Mips, Arch::Mips64N32]),
    (Arch::Mips64N32, &[Arch::Mips, Arch::Mips64]),
    (Arch::Mipsel64, &[Arch::Mipsel, Arch::Mipsel64N32]),
    (Arch::Mipsel64N32, &[Arch::Mipsel, Arch::Mipsel64]),
    (Arch::S390X, &[Arch::S390]),
    (Arch::Riscv64, &[]),
    (Arch::Loongarch64, &[]),
];

fn filter(cond: &Cond) -> Filter {
    Filter {
        caps: cond.caps.iter().map(|s| s.to_string()).collect(),
        arches: cond.arches.iter().map(|s| s.to_string()).collect(),
        min_kernel: cond.min_kernel,
    }
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Docker's default profile.
fn profile() -> Profile {
    let allowlist = SyscallRule {
        names: names(ALLOWED),
        action: Action::Allow,
        errno_ret: None,
        args: Vec::new(),
        includes: Filter::default(),
        excludes: Filter::default(),
    };
    let rules = RULES.iter().map(|rule| SyscallRule {
        names: names(rule.names),
        action: rule.action,
        errno_ret: rule.errno_ret,
        args: rule.args.to_vec(),
        includes: filter(&rule.includes),
        excludes: filter(&rule.excludes),
    });
    Profile {
        default_action: Action::Errno,
        default_errno_ret: Some(DEFAULT_ERRNO),
        arch_map: ARCH_MAP
            .iter()
            .map(|&(architecture, subs)| ArchMap {
                architecture,
                sub_architectures: subs.to_vec(),
            })
            .collect(),
        architectures: Vec::new(),
        syscalls: std::iter::once(allowlist).chain(rules).collect(),
    }
}

impl Profile {
    /// Docker's default profile (moby's `profiles/seccomp/default.json`).
    pub(crate) fn docker_default() -> Profile {
        profile()
    }
}
