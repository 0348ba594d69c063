//! The helper that gives a bridge sandbox its network: pasta, from passt, a user-mode network
//! stack. It runs in the host's namespaces, attached to the sandbox's network namespace (and,
//! without root, to its user namespace, whose root may configure it): a tap interface with the
//! sandbox's address and default route, whose TCP, UDP and ping go out through ordinary
//! sockets of the host, and the published ports bound on the host.
//!
//! pasta takes about 10 ms to come up, which a run should not wait for after its own set-up:
//! so `imgfs run` starts it first ([`Helper::early`]). A holder, forked as `imgfs run` begins,
//! makes the sandbox's network namespace (and, without root, its user namespace) and tells
//! a keeper, forked next, which starts pasta on them at once; the supervisor joins them once
//! the image is resolved ([`Helper::made`]), and the holder ends. (When `imgfs run` cannot
//! start it so, the supervisor forks the keeper before it leaves the host's namespaces and
//! tells it once it is in its own: [`Helper::fork`], [`Helper::start`].) The keeper opens the
//! namespaces through /proc, hands them to pasta as `/proc/self/fd/N` (pasta, as root, would
//! change to nobody, who could not open them by path), and waits on a pipe whose other end
//! only the supervisor holds. When the supervisor ends, however it ends (`kill -9`
//! included), that pipe reads end of file and the keeper kills pasta: no helper outlives its
//! sandbox. pasta says it is ready by writing its pid to another pipe (`--pid`), once the
//! namespace is configured and the published ports are bound; the command starts only then
//! ([`Helper::wait_ready`]), while pasta's start overlaps the sandbox's own set-up.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::super::process;
use super::{ADDRESS, DNS_FORWARD, GATEWAY, Network, PREFIX};
use crate::sys::process::{Forked, Pid, SigSet};
use crate::sys::{self, SysError};

/// The longest wait for pasta to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most of pasta's messages read when it fails.
const MAX_MESSAGES: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PastaError {
    #[error(
        "the bridge network needs pasta (Debian's passt package), which is not in PATH: install it, or run with --network none"
    )]
    Missing,
    #[error("cannot start the network helper: {0}")]
    Fork(SysError),
    #[error("cannot start the network helper: {0}")]
    Pipe(io::Error),
    #[error("the sandbox's network did not come up: pasta {0}")]
    Failed(String),
}

/// The supervisor's side of the keeper and its pasta.
pub(crate) struct Helper {
    keeper: Pid,
    /// Started late: where the supervisor says, once in its namespaces, whose they are.
    go: Option<File>,
    /// Started early: the process that made the namespaces pasta starts on.
    holder: Option<Holder>,
    /// Closed when the supervisor is done, or gone: the keeper then stops pasta.
    life: Option<OwnedFd>,
    /// pasta's pid, written once it is ready.
    ready: File,
    /// pasta's messages.
    messages: File,
}

/// A process that made the sandbox's network namespace (and, without root, its user
/// namespace) and holds them until the supervisor has joined them.
struct Holder {
    pid: Pid,
    unprivileged: bool,
    /// One byte once they are made; end of file: they could not be.
    made: File,
    /// Closed once the supervisor has joined them, or is gone: the holder then ends.
    release: Option<OwnedFd>,
}

impl Helper {
    /// Forks the keeper, from this process, which must be single-threaded and still in the
    /// host's namespaces; pasta starts once [`Helper::start`] is called in the sandbox's.
    pub(crate) fn fork(net: &Network, unprivileged: bool) -> Result<Helper, PastaError> {
        let program = find_program().ok_or(PastaError::Missing)?;
        let (go_read, go_write) = io::pipe().map_err(PastaError::Pipe)?;
        let (mut helper, [go]) = Helper::fork_keeper(
            program,
            net,
            unprivileged,
            go_read.into(),
            None,
            [go_write.into()],
        )?;
        helper.go = Some(File::from(go));
        Ok(helper)
    }

    /// Makes the sandbox's namespaces now, in a holder forked from this process (which must
    /// be single-threaded), and forks the keeper, which starts pasta on them at once: pasta
    /// comes up while the image is resolved. The supervisor joins them ([`Helper::made`]).
    pub(crate) fn early(net: &Network, unprivileged: bool) -> Result<Helper, PastaError> {
        let program = find_program().ok_or(PastaError::Missing)?;
        let (made_read, made_write) = io::pipe().map_err(PastaError::Pipe)?;
        let (announce_read, announce_write) = io::pipe().map_err(PastaError::Pipe)?;
        let (release_read, release_write) = io::pipe().map_err(PastaError::Pipe)?;
        let ids = sys::effective_ids();
        let holder = match sys::process::fork().map_err(PastaError::Fork)? {
            Forked::Child => {
                drop((made_read, announce_read, release_write));
                let code = hold(unprivileged, ids, made_write, announce_write, release_read);
                // Leaving the forked copy without running the destructors of `imgfs run`.
                sys::process::exit_now(code)
            }
            Forked::Parent(pid) => pid,
        };
        drop((made_write, announce_write, release_read));
        let release: OwnedFd = release_write.into();
        // The holder waits for the keeper too, until it has opened the namespaces.
        let keepers_release = release.try_clone().map_err(PastaError::Pipe)?;
        let (mut helper, [made, release]) = Helper::fork_keeper(
            program,
            net,
            unprivileged,
            announce_read.into(),
            Some(keepers_release),
            [made_read.into(), release],
        )?;
        helper.holder = Some(Holder {
            pid: holder,
            unprivileged,
            made: File::from(made),
            release: Some(release),
        });
        Ok(helper)
    }

    /// Forks the keeper, which starts pasta on the namespaces of the process whose pid `go`
    /// says, and closes `release` once it has them open. `ours` are this process's ends of
    /// other pipes, which the keeper closes (their end of file must be this process's doing
    /// alone); they are handed back.
    fn fork_keeper<const N: usize>(
        program: PathBuf,
        net: &Network,
        unprivileged: bool,
        go: OwnedFd,
        release: Option<OwnedFd>,
        ours: [OwnedFd; N],
    ) -> Result<(Helper, [OwnedFd; N]), PastaError> {
        let args = arguments(net, unprivileged);
        let (life_read, life_write) = io::pipe().map_err(PastaError::Pipe)?;
        let (ready_read, ready_write) = io::pipe().map_err(PastaError::Pipe)?;
        let (messages_read, messages_write) = io::pipe().map_err(PastaError::Pipe)?;
        match sys::process::fork().map_err(PastaError::Fork)? {
            Forked::Child => {
                drop((life_write, ready_read, messages_read, ours));
                let keeper = Keeper {
                    program,
                    args,
                    unprivileged,
                    go,
                    release,
                    life: life_read.into(),
                    ready: ready_write.into(),
                    messages: File::from(OwnedFd::from(messages_write)),
                };
                // Leaving the forked copy without running the supervisor's destructors.
                sys::process::exit_now(keeper.run())
            }
            Forked::Parent(keeper) => {
                drop(release);
                Ok((
                    Helper {
                        keeper,
                        go: None,
                        holder: None,
                        life: Some(life_write.into()),
                        ready: File::from(OwnedFd::from(ready_read)),
                        messages: File::from(OwnedFd::from(messages_read)),
                    },
                    ours,
                ))
            }
        }
    }

    /// The namespaces made beforehand for the sandbox, to join: (without root) the user
    /// namespace and the network namespace. None when pasta starts late, or when the holder
    /// could not make them (the supervisor then makes its own, and says why it cannot).
    pub(crate) fn made(&mut self) -> Option<(Option<OwnedFd>, OwnedFd)> {
        let holder = self.holder.as_mut()?;
        let mut byte = [0u8];
        if !matches!(holder.made.read(&mut byte), Ok(1)) {
            return None;
        }
        let open = |ns: &str| {
            File::open(format!("/proc/{}/ns/{ns}", holder.pid))
                .map(OwnedFd::from)
                .map_err(|e| log::info!("cannot open the network's {ns} namespace: {e}"))
                .ok()
        };
        let user = match holder.unprivileged {
            true => Some(open("user")?),
            false => None,
        };
        Some((user, open("net")?))
    }

    /// Lets pasta start on this process's namespaces, or (started early) lets the holder of
    /// the namespaces this process has joined go. Call once in them.
    pub(crate) fn start(&mut self) -> Result<(), PastaError> {
        if let Some(holder) = self.holder.as_mut() {
            holder.release.take();
        }
        let pid = format!("{}\n", std::process::id());
        if let Some(mut go) = self.go.take()
            && let Err(e) = go.write_all(pid.as_bytes())
        {
            return Err(self.failure(&format!("could not be started ({e})")));
        }
        Ok(())
    }

    /// Waits until pasta is ready, or stops it and says why it is not.
    pub(crate) fn wait_ready(&mut self) -> Result<(), PastaError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.failure(&format!(
                    "was not ready within {} s",
                    READY_TIMEOUT.as_secs()
                )));
            }
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            match sys::process::poll_readable(self.ready.as_fd(), ms) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.failure(&format!("could not be waited for ({e})"))),
            }
            let mut buf = [0u8; 32];
            match self.ready.read(&mut buf) {
                Ok(0) => return Err(self.failure("exited")),
                Ok(n) => {
                    said.extend_from_slice(&buf[..n]);
                    if said.contains(&b'\n') {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failure(&format!("could not be waited for ({e})"))),
            }
        }
    }

    /// Stops pasta and its keeper: pasta is killed when this returns.
    pub(crate) fn stop(mut self) {
        self.life.take();
        let _ = sys::process::waitpid(self.keeper, 0);
    }

    /// Stops pasta, then says `what` with the last thing pasta said.
    fn failure(&mut self, what: &str) -> PastaError {
        self.life.take();
        let _ = sys::process::waitpid(self.keeper, 0);
        // Both writers (the keeper and pasta) are gone now: this reads to the end.
        let mut text = String::new();
        let _ = (&self.messages)
            .take(MAX_MESSAGES)
            .read_to_string(&mut text);
        let last = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.contains("syslog") && !l.starts_with("Don't run as"));
        PastaError::Failed(match last {
            Some(l) => format!("{what}: {l}"),
            None => what.to_string(),
        })
    }
}

/// The keeper's whole life, in the forked copy of the supervisor.
struct Keeper {
    program: PathBuf,
    args: Vec<String>,
    unprivileged: bool,
    go: OwnedFd,
    /// Closed once the namespaces are open (started early: their holder waits for it).
    release: Option<OwnedFd>,
    life: OwnedFd,
    ready: OwnedFd,
    messages: File,
}

impl Keeper {
    /// Waits for the go-ahead, starts pasta, and stops it once the supervisor is done.
    fn run(self) -> i32 {
        let Keeper {
            program,
            args,
            unprivileged,
            go,
            release,
            life,
            ready,
            mut messages,
        } = self;
        // As the supervisor's: a terminal's signals are not the keeper's to die of, which
        // would leave pasta behind.
        sys::process::block(&SigSet::of(&process::waited_signals()));
        // End of file: the namespaces were never made, or the supervisor gave up first.
        let Some(target) = read_pid(go) else {
            let _ = writeln!(messages, "had no namespaces to start on");
            return 0;
        };
        let spawned = spawn(
            &program,
            &args,
            unprivileged,
            target,
            release,
            &ready,
            &messages,
        );
        // pasta holds the pid pipe now: its end of file means pasta is gone.
        drop(ready);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = writeln!(messages, "{e}");
                return 1;
            }
        };
        // Until the supervisor is done: its end of `life` closes, however it ends.
        while let Err(e) = sys::process::poll_readable(life.as_fd(), -1) {
            if e.kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        // Not waited for: pasta takes tens of milliseconds to die (the kernel tears its tap
        // device down), which no one need wait for; it is killed, and reaped by init.
        let _ = child.kill();
        0
    }
}

/// The holder's whole life, in a forked copy of `imgfs run`: makes the namespaces, tells the
/// keeper its pid and the supervisor that they are made, and holds them until the supervisor
/// has joined them or is gone. (`ids`: the caller's, mapped to root without root.)
fn hold(
    unprivileged: bool,
    (uid, gid): (u32, u32),
    made: io::PipeWriter,
    announce: io::PipeWriter,
    release: io::PipeReader,
) -> i32 {
    sys::process::block(&SigSet::of(&process::waited_signals()));
    let flags = match unprivileged {
        true => libc::CLONE_NEWUSER | libc::CLONE_NEWNET,
        false => libc::CLONE_NEWNET,
    };
    // Ending here, the supervisor makes its own namespaces, and says why it cannot.
    if sys::process::unshare(flags).is_err()
        || (unprivileged && sys::map_caller_to_root(uid, gid).is_err())
    {
        return 1;
    }
    let _ = (&announce).write_all(format!("{}\n", std::process::id()).as_bytes());
    let _ = (&made).write_all(&[1]);
    drop((announce, made));
    let _ = (&release).read(&mut [0u8]);
    0
}

/// A pid on a line of its own, the whole of what `fd` says.
fn read_pid(fd: OwnedFd) -> Option<Pid> {
    let mut text = String::new();
    File::from(fd).take(32).read_to_string(&mut text).ok()?;
    text.strip_suffix('\n')?.parse().ok()
}

/// Starts pasta on the namespaces of process `target`: the supervisor, or the holder.
fn spawn(
    program: &PathBuf,
    args: &[String],
    unprivileged: bool,
    target: Pid,
    release: Option<OwnedFd>,
    ready: &OwnedFd,
    messages: &File,
) -> io::Result<std::process::Child> {
    let open = |ns: &str| -> io::Result<OwnedFd> {
        File::open(format!("/proc/{target}/ns/{ns}"))
            .map(OwnedFd::from)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open the sandbox's {ns} namespace: {e}"),
                )
            })
    };
    let fd_path = |fd: &OwnedFd| -> io::Result<String> {
        Ok(format!("/proc/self/fd/{}", sys::process::inheritable(fd)?))
    };
    let mut cmd = Command::new(program);
    // pasta and passt are one program, which acts on the name it is run under.
    cmd.arg0("pasta").args(args);
    let user = if unprivileged {
        Some(open("user")?)
    } else {
        None
    };
    if let Some(user) = &user {
        cmd.arg("--userns").arg(fd_path(user)?);
    }
    let net = open("net")?;
    drop(release);
    cmd.arg("--netns").arg(fd_path(&net)?);
    cmd.arg("--pid").arg(fd_path(ready)?);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(messages.try_clone()?))
        // Apart from the terminal's signals, which are the command's.
        .process_group(0);
    cmd.spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", program.display())))
}

/// pasta in PATH, or rather the build of it that pasta would run: on a CPU with AVX2, pasta
/// starts by executing its own file's name with `.avx2` appended when there is one (passt
/// builds both), which costs a second exec and dynamic link on every start. That file is run
/// here directly, under the name `pasta`, which is what makes it pasta rather than passt.
fn find_program() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let path = std::env::var_os("PATH").unwrap_or_else(|| crate::runner::plan::DEFAULT_PATH.into());
    let pasta = std::env::split_paths(&path)
        .map(|d| d.join("pasta"))
        .find(|p| executable(p))?;
    if avx2()
        && let Ok(file) = std::fs::canonicalize(&pasta)
        && !file.as_os_str().as_encoded_bytes().ends_with(b".avx2")
    {
        let mut name = file.into_os_string();
        name.push(".avx2");
        let built = PathBuf::from(name);
        if executable(&built) {
            return Some(built);
        }
    }
    Some(pasta)
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2() -> bool {
    false
}

/// pasta's options for `net`, but for the namespaces and the pid pipe.
fn arguments(net: &Network, unprivileged: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "--config-net",
        "--foreground",
        "--quiet",
        "--ipv4-only",
        "--ns-ifname",
        "eth0",
    ]
    .map(String::from)
    .to_vec();
    if !unprivileged {
        // As root pasta would change to nobody, who may not enter the sandbox's namespace.
        a.extend(["--runas".into(), "0".into()]);
    }
    for (flag, value) in [
        ("--address", ADDRESS.to_string()),
        ("--netmask", PREFIX.to_string()),
        ("--gateway", GATEWAY.to_string()),
        ("--dns-forward", DNS_FORWARD.to_string()),
    ] {
        a.extend([flag.to_string(), value]);
    }
    if !net.map_gateway {
        a.push("--no-map-gw".into());
    }
    for (flag, udp) in [("--tcp-ports", false), ("--udp-ports", true)] {
        let specs: Vec<String> = net
            .publish
            .iter()
            .filter(|p| p.udp == udp)
            .map(|p| match p.host_ip {
                Some(ip) => format!("{ip}/{}:{}", p.host_port, p.container_port),
                None => format!("{}:{}", p.host_port, p.container_port),
            })
            .collect();
        if specs.is_empty() {
            a.extend([flag.to_string(), "none".into()]);
        }
        for s in specs {
            a.extend([flag.to_string(), s]);
        }
    }
    // Nothing of the host's loopback comes in through the sandbox's own.
    a.extend(["--tcp-ns", "none", "--udp-ns", "none"].map(String::from));
    a
}

#[cfg(test)]
mod tests {
    use super::super::{Mode, NetworkFlags};
    use super::*;

    #[test]
    fn published_ports_and_the_gateway_reach_pasta() {
        let flags = NetworkFlags {
            publish: vec!["127.0.0.1:8080:80".into(), "5353:53/udp".into()],
            dns: vec![],
            add_host: vec!["h:host-gateway".into()],
        };
        let net = Network::build(Mode::Bridge, &flags).unwrap();
        let a = arguments(&net, false).join(" ");
        assert!(
            a.contains("--tcp-ports 127.0.0.1/8080:80 --udp-ports 5353:53"),
            "{a}"
        );
        assert!(a.contains("--runas 0") && !a.contains("--no-map-gw"), "{a}");
        let plain = Network::build(Mode::Bridge, &NetworkFlags::default()).unwrap();
        let a = arguments(&plain, true).join(" ");
        assert!(
            a.contains("--tcp-ports none --udp-ports none --tcp-ns none"),
            "{a}"
        );
        assert!(a.contains("--no-map-gw") && !a.contains("--runas"), "{a}");
    }
}
