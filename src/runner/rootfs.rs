//! The sandbox's root and its mounts, built by the init inside its own mount namespace: the
//! overlay (or a read-only bind) on the image, /proc with docker's masked and read-only
//! paths, a read-only /sys, a minimal /dev, /tmp, generated /etc files, the volumes, and
//! finally pivot_root into it.
//!
//! Every mount target inside the image is resolved with `openat2(RESOLVE_IN_ROOT)`, so a
//! symlink in the image can never send a mount outside the root.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::confine;
use super::plan::Plan;
use crate::sys::{self, SysError, cstr, fd_path, path_str};

/// Host devices bound into the sandbox's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Flags of the pseudo filesystems a program has no business executing or opening devices on.
const NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RootfsError {
    #[error("cannot mount the root: {0}")]
    Root(SysError),
    #[error("{guest}: {cause}")]
    InRoot { guest: String, cause: SysError },
    #[error("cannot write /etc/{name}: {cause}")]
    EtcFile { name: &'static str, cause: SysError },
    #[error("cannot set the hostname: {0}")]
    Hostname(SysError),
    #[error("cannot enter the root: {0}")]
    Pivot(SysError),
}

fn in_root(guest: &str) -> impl Fn(SysError) -> RootfsError + '_ {
    move |source| RootfsError::InRoot {
        guest: guest.to_string(),
        cause: source,
    }
}

/// Builds the root at `scratch/root` over the image at `scratch/lower` and enters it: on
/// return, `/` is the sandbox's root and the host's is gone from this mount namespace.
pub(crate) fn build_and_enter(plan: &Plan, scratch: &Path) -> Result<(), RootfsError> {
    let root_dir = scratch.join("root");
    mount_root(plan, scratch, &root_dir).map_err(RootfsError::Root)?;
    let root = sys::fs::open_dir(&root_dir).map_err(RootfsError::Root)?;
    let privileged = plan.confine.privileged;

    mount_in_root(&root, "/proc", Some("proc"), Some("proc"), NOEXEC, None)?;
    // /sys cannot always be mounted in a new network namespace; it is optional.
    let sys_flags = if privileged {
        NOEXEC
    } else {
        NOEXEC | libc::MS_RDONLY
    };
    let _ = mount_in_root(&root, "/sys", Some("sysfs"), Some("sysfs"), sys_flags, None);
    if plan.confine.system_paths {
        for path in confine::MASKED_PATHS {
            mask(&root, path)?;
        }
        for path in confine::READ_ONLY_PATHS {
            make_read_only(&root, path)?;
        }
    }
    mount_dev(plan, scratch, &root)?;
    mount_in_root(
        &root,
        "/tmp",
        Some("tmpfs"),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    )?;
    write_etc_files(plan, scratch, &root)?;
    for v in &plan.volumes {
        bind_in_root(&root, &v.host, &v.guest, v.read_only)?;
    }
    sys::fs::sethostname(plan.hostname.as_bytes())
        .map_err(|e| RootfsError::Hostname(SysError::call("sethostname")(e)))?;
    pivot(&root)
}

/// The image at `scratch/lower`, writable through an overlay or bound read-only.
fn mount_root(plan: &Plan, scratch: &Path, root_dir: &Path) -> Result<(), SysError> {
    let lower = scratch.join("lower");
    if plan.read_only {
        sys::fs::mount(
            Some(path_str(&lower)?),
            root_dir,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        // A live mount bound from outside the user namespace has these flags locked: the
        // remount must keep them (they change nothing for a user who owns no other id).
        let locked = if plan.unprivileged.is_some() {
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME
        } else {
            0
        };
        return sys::fs::mount(
            None,
            root_dir,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked,
            None,
        );
    }
    let (upper, work) = match &plan.rw_dir {
        Some(dir) => (dir.join("upper"), dir.join("work")),
        None => (scratch.join("upper"), scratch.join("work")),
    };
    sys::mkdir(&upper)?;
    sys::mkdir(&work)?;
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        path_str(&lower)?,
        path_str(&upper)?,
        path_str(&work)?
    );
    if plan.unprivileged.is_some() {
        options.push_str(",userxattr");
    }
    sys::fs::mount(
        Some("overlay"),
        root_dir,
        Some("overlay"),
        libc::MS_NODEV,
        Some(&options),
    )
}

/// A minimal /dev: a tmpfs with the harmless host devices, a devpts, shm and the usual links.
fn mount_dev(plan: &Plan, scratch: &Path, root: &OwnedFd) -> Result<(), RootfsError> {
    mount_in_root(
        root,
        "/dev",
        Some("tmpfs"),
        Some("tmpfs"),
        libc::MS_NOSUID,
        Some("mode=0755"),
    )?;
    for dev in DEVICES {
        let host = Path::new("/dev").join(dev);
        if host.exists() {
            bind_in_root(root, &host, &format!("/dev/{dev}"), false)?;
        }
    }
    if plan.tty {
        // The supervisor's devpts instance, which holds the command's terminal.
        bind_in_root(root, &scratch.join("pts"), "/dev/pts", false)?;
    } else {
        mount_in_root(
            root,
            "/dev/pts",
            Some("devpts"),
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )?;
    }
    mount_in_root(
        root,
        "/dev/shm",
        Some("tmpfs"),
        Some("tmpfs"),
        NOEXEC,
        Some("mode=1777"),
    )?;
    // /dev is our own tmpfs now, so its links can be made through its real path.
    let dev = open_in_root(root, "/dev", false).map_err(in_root("/dev"))?;
    let dev_dir = fs::read_link(fd_path(&dev)).map_err(|source| RootfsError::InRoot {
        guest: "/dev".into(),
        cause: SysError::Path {
            op: "resolve",
            path: fd_path(&dev),
            cause: source,
        },
    })?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev_dir.join(name)).map_err(|source| {
            RootfsError::InRoot {
                guest: format!("/dev/{name}"),
                cause: SysError::Path {
                    op: "create",
                    path: dev_dir.join(name),
                    cause: source,
                },
            }
        })?;
    }
    Ok(())
}

/// /etc/hosts, /etc/hostname and /etc/resolv.conf that make sense inside.
fn write_etc_files(plan: &Plan, scratch: &Path, root: &OwnedFd) -> Result<(), RootfsError> {
    let files = scratch.join("files");
    let host_file = |name| fs::read_to_string(name).unwrap_or_default();
    let hosts = plan
        .network
        .etc_hosts(&plan.hostname, &host_file("/etc/hosts"));
    let resolv = plan.network.resolv_conf(&host_file("/etc/resolv.conf"));
    for (name, contents) in [
        ("hosts", hosts),
        ("hostname", format!("{}\n", plan.hostname)),
        ("resolv.conf", resolv),
    ] {
        let path = files.join(name);
        sys::write_file(&path, &contents).map_err(|source| RootfsError::EtcFile {
            name,
            cause: source,
        })?;
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o644));
        let guest = format!("/etc/{name}");
        if plan.read_only && resolve_in_root(root, &guest[1..]).is_err() {
            continue; // nowhere to bind it on a read-only root
        }
        bind_in_root(root, &path, &guest, false)?;
    }
    Ok(())
}

/// Hides `guest` as docker does: an empty read-only tmpfs over a directory, /dev/null over
/// anything else. A path this kernel lacks needs no hiding.
fn mask(root: &OwnedFd, guest: &str) -> Result<(), RootfsError> {
    let Some(target) = existing_in_root(root, guest)? else {
        return Ok(());
    };
    let is_dir = fs::metadata(fd_path(&target)).is_ok_and(|m| m.is_dir());
    let path = fd_path(&target);
    if is_dir {
        sys::fs::mount_as(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            NOEXEC | libc::MS_RDONLY,
            Some("size=0"),
            guest,
        )
    } else {
        sys::fs::mount_as(Some("/dev/null"), &path, None, libc::MS_BIND, None, guest)
    }
    .map_err(in_root(guest))
}

/// Makes `guest` (under /proc) read-only: bound onto itself, then remounted read-only with
/// the flags /proc already has (a user namespace may not clear them).
fn make_read_only(root: &OwnedFd, guest: &str) -> Result<(), RootfsError> {
    let Some(target) = existing_in_root(root, guest)? else {
        return Ok(());
    };
    let path = fd_path(&target);
    let source = path_str(&path).map_err(in_root(guest))?.to_string();
    sys::fs::mount_as(
        Some(&source),
        &path,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
        guest,
    )
    .map_err(in_root(guest))?;
    // The bind now sits on the magic link's target; remount it through a fresh link.
    let Some(fresh) = existing_in_root(root, guest)? else {
        return Ok(());
    };
    sys::fs::mount_as(
        None,
        &fd_path(&fresh),
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | NOEXEC,
        None,
        guest,
    )
    .map_err(in_root(guest))
}

/// `guest` inside the root, or `None` when it does not exist there (nothing created).
fn existing_in_root(root: &OwnedFd, guest: &str) -> Result<Option<OwnedFd>, RootfsError> {
    match resolve_in_root(root, guest.trim_start_matches('/')) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(source) => Err(in_root(guest)(SysError::Path {
            op: "open",
            path: guest.into(),
            cause: source,
        })),
    }
}

/// pivot_root into `root`, the host's root detached.
fn pivot(root: &OwnedFd) -> Result<(), RootfsError> {
    let root_path = fd_path(root);
    std::env::set_current_dir(&root_path).map_err(|source| {
        RootfsError::Pivot(SysError::Path {
            op: "enter",
            path: root_path,
            cause: source,
        })
    })?;
    // pivot_root(".", ".") stacks the old root under the new one.
    sys::fs::pivot_root(c".", c".")
        .map_err(|e| RootfsError::Pivot(SysError::call("pivot_root")(e)))?;
    // Detaching the old root, now mounted on "." above the new one.
    sys::fs::umount(c".", libc::MNT_DETACH)
        .map_err(|e| RootfsError::Pivot(SysError::call("detach the host root")(e)))?;
    std::env::set_current_dir("/").map_err(|source| {
        RootfsError::Pivot(SysError::Path {
            op: "enter",
            path: "/".into(),
            cause: source,
        })
    })
}

/// Opens (creating if missing) `guest` inside the root open at `root`, never leaving it:
/// symlinks and `..` resolve as if `root` were `/`.
fn open_in_root(root: &OwnedFd, guest: &str, file: bool) -> Result<OwnedFd, SysError> {
    let rel = guest.trim_start_matches('/');
    let comps: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let at = |source: io::Error| SysError::Path {
        op: "open",
        path: guest.into(),
        cause: source,
    };
    let mut sofar = String::new();
    for (i, comp) in comps.iter().enumerate() {
        if !sofar.is_empty() {
            sofar.push('/');
        }
        sofar.push_str(comp);
        let last = i + 1 == comps.len();
        match resolve_in_root(root, &sofar) {
            Ok(fd) if !last => drop(fd),
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let parent_path = sofar.rsplit_once('/').map_or("", |(p, _)| p);
                let parent = if parent_path.is_empty() {
                    None
                } else {
                    Some(resolve_in_root(root, parent_path).map_err(at)?)
                };
                let dir = parent.as_ref().unwrap_or(root).as_fd();
                let name = cstr(*comp)?;
                let created = if last && file {
                    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC;
                    sys::fs::openat(dir, &name, flags, 0o644).map(drop)
                } else {
                    sys::fs::mkdirat(dir, &name, 0o755)
                };
                if let Err(source) = created {
                    return Err(SysError::Path {
                        op: "create",
                        path: guest.into(),
                        cause: source,
                    });
                }
                if last {
                    return resolve_in_root(root, &sofar).map_err(at);
                }
            }
            Err(e) => return Err(at(e)),
        }
    }
    // The root itself.
    resolve_in_root(root, ".").map_err(at)
}

fn resolve_in_root(root: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    let path = CString::new(rel).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    sys::fs::openat2(
        root.as_fd(),
        &path,
        libc::O_PATH | libc::O_CLOEXEC,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// Mounts on the directory `guest` inside the root (created if missing).
fn mount_in_root(
    root: &OwnedFd,
    guest: &str,
    source: Option<&str>,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    let target = open_in_root(root, guest, false).map_err(in_root(guest))?;
    sys::fs::mount_as(source, &fd_path(&target), fstype, flags, data, guest).map_err(in_root(guest))
}

/// Binds the host path `source` on `guest` inside the root (created if missing).
fn bind_in_root(
    root: &OwnedFd,
    source: &Path,
    guest: &str,
    read_only: bool,
) -> Result<(), RootfsError> {
    let is_file = !source.is_dir();
    let src = path_str(source).map_err(in_root(guest))?;
    let target = open_in_root(root, guest, is_file).map_err(in_root(guest))?;
    sys::fs::mount_as(
        Some(src),
        &fd_path(&target),
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
        guest,
    )
    .map_err(in_root(guest))?;
    if read_only {
        // The bind now sits on the magic link's target; remount it through the same link.
        let fresh = open_in_root(root, guest, is_file).map_err(in_root(guest))?;
        sys::fs::mount_as(
            None,
            &fd_path(&fresh),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
            None,
            guest,
        )
        .map_err(in_root(guest))?;
    }
    Ok(())
}
