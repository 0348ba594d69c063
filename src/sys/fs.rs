//! Filesystem system calls: mount, unmount and pivot_root; descriptors opened by path, at a
//! directory, or inside a root with `openat2`, or in memory; directories made at a
//! descriptor; the type of a filesystem; the hostname and the kernel's release; read-only
//! memory maps and whole-file locks; descriptors passed over a socket or across execve.
//!
//! Takes C strings (see [`super::cstr`]) and descriptors as [`BorrowedFd`]s, hands back
//! [`OwnedFd`]s for what it opens, and `io::Error`s with errno (or [`SysError`]s naming the
//! call) for what fails. Every `unsafe` block says why it holds; the functions themselves
//! are safe to call from any thread, and those a forked child uses ([`open`]) neither
//! allocate nor lock.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::{SysError, cstr, path_cstr};

/// mount(2). `source`/`fstype`/`data` may be absent; the error names the target as `shown`.
pub(crate) fn mount_as(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
    shown: &str,
) -> Result<(), SysError> {
    let src = source.map(cstr).transpose()?;
    let tgt = path_cstr(target)?;
    let ty = fstype.map(cstr).transpose()?;
    let dat = data.map(cstr).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string alive for the call.
    let rc = unsafe { libc::mount(ptr(&src), tgt.as_ptr(), ptr(&ty), flags, ptr(&dat).cast()) };
    if rc < 0 {
        return Err(SysError::Mount {
            what: fstype.or(source).unwrap_or("a remount").to_string(),
            target: shown.to_string(),
            cause: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// mount(2) on a host path, named as such in errors.
pub(crate) fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), SysError> {
    mount_as(
        source,
        target,
        fstype,
        flags,
        data,
        &target.display().to_string(),
    )
}

/// umount2(2) of `path` with `flags` (`MNT_DETACH`, ...).
pub(crate) fn umount(path: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: a NUL-terminated path alive for the call.
    if unsafe { libc::umount2(path.as_ptr(), flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the mount at `path`, ignoring failure (it is only ever cleanup).
pub(crate) fn detach(path: &Path) {
    if let Ok(c) = path_cstr(path) {
        let _ = umount(&c, libc::MNT_DETACH);
    }
}

/// pivot_root(2): `new_root` becomes the root of this mount namespace, the old root is moved
/// to `put_old`.
pub(crate) fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: two NUL-terminated paths alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Owns the descriptor a call returned, or says why there is none.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the call just returned this descriptor, new and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// open(2) of `path` with `flags`, and `mode` for a file it creates. Async-signal-safe.
pub(crate) fn open(path: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated path alive for the call; the result is checked by `owned`.
    owned(unsafe { libc::open(path.as_ptr(), flags, libc::c_uint::from(mode)) }.into())
}

/// openat(2) of `name` in the directory `dir`.
pub(crate) fn openat(
    dir: BorrowedFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `dir` is open for the call; `name` is NUL-terminated; the result is checked.
    owned(
        unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags,
                libc::c_uint::from(mode),
            )
        }
        .into(),
    )
}

/// openat2(2) of `path` under `dir`, with the `RESOLVE_*` flags in `resolve`.
pub(crate) fn openat2(
    dir: BorrowedFd,
    path: &CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; zero is a valid value for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    // SAFETY: openat2 with a valid dirfd, path and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(fd)
}

/// mkdirat(2): the directory `name` in `dir`.
pub(crate) fn mkdirat(dir: BorrowedFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `dir` is open for the call; `name` is NUL-terminated.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// memfd_create(2): a new file that lives in memory only, close-on-exec, shown as `name`
/// in /proc.
pub(crate) fn memfd(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name, only read; the result is checked by `owned`.
    owned(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) }.into())
}

/// An `O_PATH` descriptor of the directory `p`.
pub(crate) fn open_dir(p: &Path) -> Result<OwnedFd, SysError> {
    let c = path_cstr(p)?;
    open(&c, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC, 0).map_err(|source| {
        SysError::Path {
            op: "open",
            path: p.to_path_buf(),
            cause: source,
        }
    })
}

/// sethostname(2), in this process's UTS namespace.
pub(crate) fn sethostname(name: &[u8]) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The running kernel's release (`6.1.0-18-amd64`) from uname(2), bytes that are not
/// UTF-8 replaced.
pub(crate) fn kernel_release() -> io::Result<String> {
    // SAFETY: utsname is plain arrays of c_char, for which all zeroes is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname that outlives the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let release: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&release).into_owned())
}

/// The type of the filesystem `path` is on: statfs(2)'s `f_type`, a magic number such as
/// `CGROUP2_SUPER_MAGIC`.
pub(crate) fn fs_type(path: &Path) -> Result<i64, SysError> {
    let c = path_cstr(path)?;
    // SAFETY: statfs is plain data, filled in by the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } < 0 {
        return Err(SysError::last_on("statfs", path));
    }
    Ok(widen(st.f_type))
}

/// statfs's field types differ between targets; each fits in an i64.
fn widen<T: Into<i64>>(v: T) -> i64 {
    v.into()
}

/// Maps a whole file read-only.
///
/// Sound only for a file nobody modifies in place while it is mapped, which holds for every
/// file imgfs maps: the cache's files, which it writes once under a temporary name and
/// renames over (see [`super::publish`](mod@super::publish)), and never writes again.
pub(crate) fn map(file: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: the cache only maps files it wrote and never modifies in place (updates are
    // written under a new name and renamed over), so the mapped bytes do not change under us.
    unsafe { memmap2::Mmap::map(file) }
}

/// Blocks until this process holds the exclusive flock on `file`.
pub(crate) fn lock_exclusive(file: &File) -> io::Result<()> {
    file.lock()
}

/// Blocks until this process holds a shared flock on `file`.
pub(crate) fn lock_shared(file: &File) -> io::Result<()> {
    file.lock_shared()
}

/// Takes the exclusive flock on `file` if nobody holds it; false when somebody does.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Whether the FUSE connection `fd` is a descriptor of has ended (aborted: unmounted and
/// released, or its last server gone): poll(2) reports `POLLERR` on it from then on.
pub(crate) fn fuse_connection_ended(fd: BorrowedFd) -> bool {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, alive for the call; a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n > 0 && poll.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
}

/// Sends `fd` over the connected Unix stream socket `socket` (`SCM_RIGHTS`), with one byte of
/// data for it to ride on.
pub(crate) fn send_fd(socket: BorrowedFd, fd: BorrowedFd) -> io::Result<()> {
    let byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: byte.len(),
    };
    // u64s: the control buffer must be aligned for a cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is a valid empty one (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size; one descriptor's (24 bytes) fits in `control`.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    // SAFETY: `msg` points at `control`, large enough for one header and its data (above), so
    // CMSG_FIRSTHDR is a valid, aligned header inside it and CMSG_DATA its data; the
    // descriptor is written unaligned as the data need not be aligned for an int.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
    }
    // SAFETY: `msg` and everything it points at live for the call.
    if unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives a descriptor sent with [`send_fd`], close-on-exec; `None` when the peer closed
/// the socket without sending one.
pub(crate) fn recv_fd(socket: BorrowedFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: as in send_fd.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let got = loop {
        // SAFETY: `msg` points at `iov`, `byte` and `control`, all alive for the call, with
        // their true lengths.
        let got = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if got < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break got;
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut received = None;
    // SAFETY: recvmsg filled `control` and set msg_controllen to what it wrote; the CMSG
    // macros walk only those headers, and a SCM_RIGHTS header's data holds descriptors the
    // kernel just installed in this process, owned by nothing else here.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    // Keep the first; any other closes here.
                    received.get_or_insert(fd);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if received.is_none() && got > 0 && msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("a descriptor was sent but cut off"));
    }
    Ok(received)
}

/// Sets (`on`) or clears `FD_CLOEXEC` on `fd`: a cleared one is inherited across execve.
pub(crate) fn set_cloexec(fd: BorrowedFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we borrow, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of descriptor `fd`, inherited across execve from the process this one
/// replaced, which named it on the command line. Made close-on-exec again. Fails when no
/// such descriptor is open. Call it once per descriptor, before anything else could own it.
pub(crate) fn inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only asks whether `fd` is open.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `fd` is open (checked above) and, inherited and named only on the command line,
    // owned by nothing else in this process (the caller takes it once, at start).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_fd(), true)?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn locks_are_flocks() {
        let dir = std::env::temp_dir().join(format!("imgfs-sys-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lock");
        let a = File::create(&path).unwrap();
        let b = File::open(&path).unwrap();
        lock_exclusive(&a).unwrap();
        // flock locks belong to the open file description: another one is refused.
        assert!(!try_lock_exclusive(&b).unwrap());
        drop(a);
        assert!(try_lock_exclusive(&b).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_files_and_the_release() {
        use std::io::{Read, Seek, Write};
        let mut f = File::from(memfd(c"imgfs-test").unwrap());
        f.write_all(b"abc").unwrap();
        f.rewind().unwrap();
        let mut back = String::new();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, "abc");
        let release = kernel_release().unwrap();
        assert!(
            release.starts_with(|c: char| c.is_ascii_digit()),
            "{release}"
        );
    }

    #[test]
    fn filesystem_types() {
        let t = fs_type(Path::new("/proc")).unwrap();
        assert_eq!(t, widen(libc::PROC_SUPER_MAGIC));
        let e = fs_type(Path::new("/no/such/dir")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn opens_at_a_directory_and_inside_a_root() {
        let dir = std::env::temp_dir().join(format!("imgfs-sys-at-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = open_dir(&dir).unwrap();
        mkdirat(root.as_fd(), c"d", 0o755).unwrap();
        assert!(dir.join("d").is_dir());
        drop(
            openat(
                root.as_fd(),
                c"d/f",
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            )
            .unwrap(),
        );
        assert!(dir.join("d/f").is_file());
        std::os::unix::fs::symlink("/d", dir.join("up")).unwrap();
        // In the root, `/d` is the root's own `d`.
        let flags = libc::O_PATH | libc::O_CLOEXEC;
        let resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        match openat2(root.as_fd(), c"up/f", flags, resolve) {
            Ok(_) => {}
            // A kernel older than 5.6 has no openat2.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
            Err(e) => panic!("openat2: {e}"),
        }
        let e = mkdirat(root.as_fd(), c"d", 0o755).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
