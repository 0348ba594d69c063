//! The imgfs mounts of this machine as `imgfs mounts` shows them: who serves each, whether
//! it answers, and dead ones cleared.
//!
//! Takes the mount table, the caller's keepers' records ([`super::keeper::ServerRecord`])
//! and, for other mounts, the `imgfs __serve` processes /proc shows; hands on one
//! [`MountStatus`] per imgfs mount. A mount is *live* when a server answers it,
//! *recovering* while its keeper starts a new server, *dead* when nothing holds its
//! connection any more (every access fails with `ENOTCONN`): a dead mount is detached on the
//! way, so that the next look finds none.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::keeper::{ServerRecord, restart_all, server_records};
use super::{MountInfo, is_dead, mountinfo, unmount};

/// Whether a mount answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Live,
    /// Its server died; its keeper holds the connection and is starting another.
    Recovering,
    /// Nothing answers it any more.
    Dead,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Live => "live",
            State::Recovering => "recovering",
            State::Dead => "dead",
        }
    }
}

/// One imgfs mount.
#[derive(Clone, Debug)]
pub struct MountStatus {
    pub mount: MountInfo,
    pub state: State,
    /// The process serving it, when known: recorded by a keeper of the caller's, or an
    /// `imgfs __serve` for its mountpoint in /proc.
    pub pid: Option<i32>,
    /// The keeper holding its connection, when it has one.
    pub keeper: Option<i32>,
    /// A dead mount detached now.
    pub cleared: bool,
    /// Why a dead mount could not be detached.
    pub clear_error: Option<String>,
}

/// Every imgfs mount in this process's mount table, with its state; dead ones are detached.
pub fn mount_statuses() -> std::io::Result<Vec<MountStatus>> {
    let text = std::fs::read_to_string(mountinfo::SELF)?;
    let records = server_records();
    let processes = serve_processes();
    Ok(super::parse_mountinfo(&text)
        .into_iter()
        .filter(MountInfo::is_imgfs)
        .map(|m| status(m, &records, &processes))
        .collect())
}

/// An `imgfs __serve` process: its pid, its parent's and the mountpoint it serves (its last
/// argument).
struct ServeProcess {
    pid: i32,
    parent: i32,
    mountpoint: PathBuf,
}

/// Every `imgfs __serve` process this one can see, from /proc: keepers and servers alike, a
/// server's parent being its keeper.
fn serve_processes() -> Vec<ServeProcess> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = crate::sys::pid_name(&e.file_name()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline
            .strip_suffix(b"\0")
            .unwrap_or(&cmdline)
            .split(|&b| b == 0)
            .collect();
        if args.get(1) != Some(&&b"__serve"[..]) || !crate::sys::alive(pid) {
            continue;
        }
        let Some(last) = args.last() else {
            continue;
        };
        let parent = crate::sys::parent_pid(pid).unwrap_or(0);
        found.push(ServeProcess {
            pid: pid as i32,
            parent,
            mountpoint: PathBuf::from(std::ffi::OsStr::from_bytes(last)),
        });
    }
    found
}

fn status(mount: MountInfo, records: &[ServerRecord], processes: &[ServeProcess]) -> MountStatus {
    let record = records
        .iter()
        .find(|r| r.mountpoint == mount.mountpoint && r.device == mount.device);
    if let Some(r) = record {
        let serving = crate::sys::alive(r.server as u32);
        return MountStatus {
            mount,
            state: if serving {
                State::Live
            } else {
                State::Recovering
            },
            pid: serving.then_some(r.server),
            keeper: Some(r.keeper),
            cleared: false,
            clear_error: None,
        };
    }
    // No record of the caller's (another user's keeper, or a server in the foreground): the
    // processes serving the mountpoint, as /proc shows them, and the mount itself.
    let mine: Vec<&ServeProcess> = processes
        .iter()
        .filter(|p| p.mountpoint == mount.mountpoint)
        .collect();
    let server = mine
        .iter()
        .find(|p| mine.iter().any(|k| k.pid == p.parent))
        .or(match mine.as_slice() {
            [only] => Some(only),
            _ => None,
        });
    let keeper = server.and_then(|s| mine.iter().find(|k| k.pid == s.parent));
    let dead = server.is_none() && is_dead(&mount);
    let clear_error = if dead {
        log::info!("clearing a dead mount at {}", mount.mountpoint.display());
        unmount(&mount.mountpoint, true)
            .err()
            .map(|e| e.to_string())
    } else {
        None
    };
    MountStatus {
        mount,
        state: if dead { State::Dead } else { State::Live },
        pid: server.map(|s| s.pid),
        keeper: keeper.map(|k| k.pid),
        cleared: dead && clear_error.is_none(),
        clear_error,
    }
}

/// A server replaced by a restart.
#[derive(Clone, Debug)]
pub struct Restarted {
    pub mountpoint: PathBuf,
    pub before: i32,
    /// The new server, or `None` when none took over within the wait.
    pub after: Option<i32>,
    /// The keeper ended meanwhile: its mount was over (unmounted, or a shared server that
    /// retired), so there was nothing to serve.
    pub ended: bool,
}

/// Replaces the servers of the caller's keepers — those of the mounts at `only`, or all when
/// it is empty — with the binary now installed where each was started from
/// ([`super::keeper`]), and waits up to `wait` for each new one.
pub fn restart_servers(only: &[PathBuf], wait: Duration) -> Vec<Restarted> {
    let asked = restart_all(only);
    let deadline = Instant::now() + wait;
    loop {
        let now = server_records();
        let done: Vec<Restarted> = asked
            .iter()
            .map(|old| {
                let record = now.iter().find(|r| r.keeper == old.keeper);
                Restarted {
                    mountpoint: old.mountpoint.clone(),
                    before: old.server,
                    after: record
                        .filter(|r| r.server != old.server && crate::sys::alive(r.server as u32))
                        .map(|r| r.server),
                    ended: record.is_none() && !crate::sys::alive(old.keeper as u32),
                }
            })
            .collect();
        if done.iter().all(|r| r.after.is_some() || r.ended) || Instant::now() >= deadline {
            return done;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
