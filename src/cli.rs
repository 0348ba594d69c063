//! The command line, defined once: clap derives parsing, help and errors from it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Use a container image as a directory, in milliseconds, without unpacking it.
///
/// imgfs indexes an image's filesystem once, keeps it in a cache, and serves every read
/// straight from the cached archive through FUSE.
#[derive(Debug, Parser)]
#[command(name = "imgfs", version, propagate_version = true)]
pub struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG=level also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Cache directory [default: $IMGFS_CACHE_DIR, $XDG_CACHE_HOME/imgfs, ~/.cache/imgfs]
    #[arg(long, value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount an image read-only at MOUNTPOINT.
    ///
    /// IMAGE is a local Docker image (name[:tag], name@sha256:..., or an image id) or a tar
    /// archive of a root filesystem: a path starting with /, ./ or ../, or tar:PATH.
    /// The first mount of an image exports and indexes it into the cache; later mounts are
    /// immediate. Returns once the mount is ready; the server runs in the background until
    /// `imgfs umount`.
    ///
    /// Example: imgfs mount python:3.12 /mnt/py && ls /mnt/py/usr/bin
    #[command(
        after_help = "Example:\n  imgfs mount python:3.12 /mnt/py\n  cat /mnt/py/etc/os-release\n  imgfs umount /mnt/py"
    )]
    Mount(MountArgs),

    /// Unmount an imgfs mount; its server exits.
    ///
    /// Example: imgfs umount /mnt/py
    Umount(UmountArgs),

    /// Run a command in a throwaway sandbox rooted in the image.
    ///
    /// The image's Entrypoint, Cmd, Env, WorkingDir and User apply as with `docker run`;
    /// COMMAND replaces the image's Cmd. The root is the image with a writable layer on top
    /// (a tmpfs, or --rw-dir); the image in the cache is never modified. The sandbox has its
    /// own mount, PID, UTS, IPC and network namespaces and disappears with its command, whose
    /// exit status becomes imgfs's.
    #[command(
        after_help = "Examples:\n  imgfs run python:3.12 -- python3 -c 'import sys; print(sys.version)'\n  imgfs run -it python:3.12\n  imgfs run -v \"$PWD:/work\" -w /work -e DEBUG=1 python:3.12 -- python3 script.py"
    )]
    Run(RunArgs),

    /// Serve a prepared image (used by `imgfs mount` for its background server).
    #[command(name = "__serve", hide = true)]
    Serve(ServeArgs),

    /// The sandbox supervisor (what `imgfs run` re-executes when it has threads to shed).
    #[command(name = "__sandbox", hide = true)]
    Sandbox { plan: String },
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Docker image reference, or tar archive path
    pub image: String,
    /// Existing directory to mount on
    pub mountpoint: PathBuf,
    /// Stay attached to the terminal and serve until unmounted or interrupted
    #[arg(short, long)]
    pub foreground: bool,
    /// Do not print warnings about the archive
    #[arg(short, long)]
    pub quiet: bool,
    /// Request-handling threads [default: twice the CPUs, 2 to 8]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Net {
    /// Only a loopback interface
    None,
    /// The host's network
    Host,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Docker image reference, or tar archive path
    pub image: String,
    /// Command and arguments (default: the image's Entrypoint and Cmd)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from here)
    #[arg(short, long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read environment variables from a file, one KEY=VALUE per line
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the sandbox
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: name or uid, optionally :group or :gid (resolved in the image)
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Bind a host path into the sandbox, read-only with :ro
    #[arg(short, long = "volume", value_name = "HOST:GUEST[:ro]")]
    pub volume: Vec<String>,
    /// Replace the image's Entrypoint ("" clears it)
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Hostname inside the sandbox [default: the image id's first 12 digits]
    #[arg(long)]
    pub hostname: Option<String>,
    /// Keep stdin open (otherwise the command reads /dev/null)
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command this terminal (stdin must be one)
    #[arg(short, long)]
    pub tty: bool,
    /// No writable layer: the root is the image, read-only
    #[arg(long)]
    pub read_only: bool,
    /// Network: none (loopback only) or host
    #[arg(long, value_enum, default_value_t = Net::None)]
    pub net: Net,
    /// Keep the writable layer in DIR (upper/ and work/) so a later run can go on from it
    #[arg(long, value_name = "DIR")]
    pub rw_dir: Option<PathBuf>,
    /// As root, keep serving the image this long after its last use (0: a server per run)
    ///
    /// Sandboxes of one image share one server, which stays mounted under /run/imgfs/shared
    /// while they run and for this long after, so the next run finds the kernel's caches warm.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub linger: Duration,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Mountpoint of an imgfs mount
    pub mountpoint: PathBuf,
    /// Detach now even if files are open; the mount goes away when they are closed
    #[arg(short = 'l', long)]
    pub lazy: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long)]
    pub index: PathBuf,
    #[arg(long)]
    pub archive: PathBuf,
    #[arg(long)]
    pub fsname: String,
    #[arg(long)]
    pub threads: usize,
    /// Unmount after this many milliseconds without use
    #[arg(long)]
    pub idle_exit_ms: Option<u64>,
    pub mountpoint: PathBuf,
}

/// Parses a duration: a number of seconds, or a number with s, m, h or d.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 5m, 1h, 0)"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        for bad in ["", "m", "5x", "-1", "1.5m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
