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

    /// No progress line and no warnings about the archive
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Cache directory [default: $IMGFS_CACHE_DIR, $XDG_CACHE_HOME/imgfs, ~/.cache/imgfs]
    #[arg(long, value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Platform to pick from a multi-platform image, as OS/ARCH[/VARIANT] [default: this
    /// machine's, e.g. linux/amd64]
    #[arg(long, value_name = "PLATFORM", global = true)]
    pub platform: Option<String>,
    /// Registries: verify TLS certificates and use HTTPS only (loopback registries are
    /// reached over plain HTTP regardless, as docker does) [default: true]
    #[arg(long, value_name = "BOOL", global = true, num_args = 0..=1, default_missing_value = "true")]
    pub tls_verify: Option<bool>,
    /// Registries: read credentials from this file only, in docker's config.json format
    /// [default: $REGISTRY_AUTH_FILE, then ~/.docker/config.json and its credential helpers]
    #[arg(long, value_name = "FILE", global = true)]
    pub authfile: Option<PathBuf>,
    /// Registries: where their host configurations are, as containerd keeps them (a
    /// directory per registry holding a hosts.toml: mirrors, CA and client certificates,
    /// skip_verify, plain HTTP) [default: /etc/containerd/certs.d, then docker's
    /// /etc/docker/certs.d]
    #[arg(long, value_name = "DIR", global = true)]
    pub hosts_dir: Option<PathBuf>,
    /// Lazy registry images: how long a read of data not yet fetched keeps trying an
    /// unreachable registry before it fails with EIO [default: 30]
    #[arg(long, value_name = "SECONDS", global = true)]
    pub fetch_timeout: Option<f64>,
    /// Lazy registry images: what to fetch before reads ask for it: none; recorded (the
    /// spans a run recorded by `imgfs index push --record` read, all at once as the server
    /// starts); or all (the whole image in the background once the mount is ready)
    /// [default: recorded]
    #[arg(long, value_name = "WHAT", global = true)]
    pub prefetch: Option<PrefetchArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrefetchArg {
    None,
    Recorded,
    All,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount an image read-only at MOUNTPOINT.
    ///
    /// IMAGE is a local Docker image (name[:tag], name@sha256:..., an image id, or
    /// docker-daemon:REF), an OCI image layout (oci:DIR[:REF]) or a tar of one
    /// (oci-archive:FILE[:REF]), docker save output (docker-archive:FILE[:NAME:TAG]), an image
    /// in a registry (docker://HOST[:PORT]/NAME[:TAG|@DIGEST]), or a tar archive of a root
    /// filesystem: a path starting with /, ./ or ../, or tar:PATH.
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
    Run(Box<RunArgs>),

    /// List directory contents of an image, as ls does, without mounting it.
    ///
    /// Answered from the cached index (the first use of an image exports and indexes it).
    /// Owners are named from the image's /etc/passwd and /etc/group; times in local time.
    #[command(
        after_help = "Examples:\n  imgfs ls python:3.12 /usr/local/bin\n  imgfs ls -la python:3.12 /etc"
    )]
    Ls(LsArgs),

    /// Print files of an image, as cat does, without mounting it.
    #[command(after_help = "Example:\n  imgfs cat python:3.12 /etc/os-release")]
    Cat(CatArgs),

    /// Show the status of files in an image, as stat does, without mounting it.
    #[command(
        after_help = "Examples:\n  imgfs stat python:3.12 /usr/bin/python3\n  imgfs stat -c '%n %s %A %U' python:3.12 /etc/passwd /etc/group"
    )]
    Stat(StatArgs),

    /// Search for files in an image, as find does, without mounting it.
    ///
    /// Walks each PATH (default /) depth first, symlinks not followed, printing every entry
    /// that passes the tests. The tests may also be written as find writes them (-name,
    /// -type).
    #[command(after_help = "Example:\n  imgfs find python:3.12 /usr -name 'python3*' -type f")]
    Find(FindArgs),

    /// Show an image: id, references, config, entries by type, size, and its cache files.
    #[command(
        after_help = "Examples:\n  imgfs inspect python:3.12\n  imgfs inspect --json python:3.12 | jq .Config.Env"
    )]
    Inspect(InspectArgs),

    /// List the images in the cache: id, references, size on disk, entries, last use.
    #[command(after_help = "Example:\n  imgfs images")]
    Images(ImagesArgs),

    /// Remove images from the cache (never one that is mounted or in use).
    ///
    /// IMAGE is matched against the cache: a reference it was exported under (name:tag, a
    /// missing tag meaning latest), an image id or a prefix of one, or a tar file's path.
    #[command(after_help = "Example:\n  imgfs rm python:3.12")]
    Rm(RmArgs),

    /// Remove unused images from the cache: all of them, or the ones not used for a while,
    /// or the least recently used until the cache fits a size.
    ///
    /// Images that are mounted or in use (a sandbox, an inspection) are never removed.
    #[command(
        after_help = "Examples:\n  imgfs prune --older-than 30d\n  imgfs prune --max-size 20G"
    )]
    Prune(PruneArgs),

    /// List the imgfs mounts on this machine, with their images.
    #[command(after_help = "Example:\n  imgfs mounts")]
    Mounts(MountsArgs),

    /// Serve containerd's Snapshots API, so that containerd (and Kubernetes through CRI)
    /// starts containers on imgfs: layers of images imgfs reads lazily are never downloaded,
    /// the others are unpacked as by containerd's overlayfs snapshotter.
    ///
    /// Register it in containerd's config as a proxy plugin: [proxy_plugins.imgfs] type =
    /// "snapshot" address = "/run/imgfs/snapshotter.sock". Runs in the foreground (see
    /// contrib/imgfs-snapshotter.service); stopping or restarting it leaves running
    /// containers alone.
    #[command(
        after_help = "Examples:\n  imgfs snapshotter\n  imgfs snapshotter --status\n  ctr-remote images rpull --snapshotter imgfs registry.example/app:1"
    )]
    Snapshotter(SnapshotterArgs),

    /// Build imgfs's index of a registry image and publish it beside the image, so that
    /// every later mount or run of the image starts from a fraction of its bytes.
    #[command(
        subcommand,
        after_help = "Example:\n  imgfs index push docker://registry.example/app:1"
    )]
    Index(IndexCommand),

    /// Print a shell completion script.
    ///
    /// contrib/install.sh installs them; by hand, e.g. for bash:
    /// imgfs completions bash > /usr/share/bash-completion/completions/imgfs
    #[command(after_help = "Example:\n  source <(imgfs completions bash)")]
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },

    /// Print the manual page (roff), or write one page per command into a directory.
    #[command(
        after_help = "Examples:\n  imgfs manpage | man -l -\n  imgfs manpage --dir /usr/local/share/man/man1"
    )]
    Manpage {
        /// Write imgfs.1 and imgfs-COMMAND.1 for each command into DIR
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },

    /// Serve a prepared image (used by `imgfs mount` for its background server).
    #[command(name = "__serve", hide = true)]
    Serve(ServeArgs),

    /// The sandbox supervisor (what `imgfs run` re-executes when it has threads to shed).
    #[command(name = "__sandbox", hide = true)]
    Sandbox { plan: String },
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Image: a Docker reference, oci:DIR[:REF], oci-archive:FILE[:REF],
    /// docker-archive:FILE[:NAME:TAG], docker://REF, or a tar archive path
    pub image: String,
    /// Existing directory to mount on
    pub mountpoint: PathBuf,
    /// Stay attached to the terminal and serve until unmounted or interrupted
    #[arg(short, long)]
    pub foreground: bool,
    /// Pull the image from its registry when the daemon does not have it; for a docker://
    /// image, ask its registry again what the tag names, even if it is cached
    #[arg(long)]
    pub pull: bool,
    /// Request-handling threads [default: twice the CPUs, 2 to 8]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Net {
    /// A network of its own, reaching out through the host (pasta)
    Bridge,
    /// Only a loopback interface
    None,
    /// The host's network
    Host,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Image: a Docker reference, oci:DIR[:REF], oci-archive:FILE[:REF],
    /// docker-archive:FILE[:NAME:TAG], docker://REF, or a tar archive path
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
    /// Network: bridge (a network of its own, reaching out through the host, as docker's
    /// default), none (loopback only) or host (the host's)
    #[arg(long = "network", visible_alias = "net", value_enum, default_value_t = Net::Bridge)]
    pub network: Net,
    /// Publish a sandbox's port on the host (bridge network)
    #[arg(short, long, value_name = "[IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]")]
    pub publish: Vec<String>,
    /// A DNS server for /etc/resolv.conf (the gateway, 10.0.2.2, is the host's loopback)
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// A line of /etc/hosts (host-gateway: the host's loopback, through the gateway)
    #[arg(long, value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// Keep the writable layer in DIR (upper/ and work/) so a later run can go on from it
    #[arg(long, value_name = "DIR")]
    pub rw_dir: Option<PathBuf>,
    /// Add a capability to docker's default set (CHOWN or CAP_CHOWN; ALL for every one)
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability from docker's default set (ALL for every one)
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Lift the confinement: every capability, no seccomp filter, /proc and /sys unmasked
    #[arg(long)]
    pub privileged: bool,
    /// seccomp=unconfined, seccomp=PROFILE.json (docker's format), no-new-privileges or
    /// systempaths=unconfined
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Memory limit (docker's units: 64m, 1g, ...)
    #[arg(short, long, value_name = "BYTES")]
    pub memory: Option<String>,
    /// Memory plus swap limit (-1: unlimited swap) [default: twice --memory]
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Most processes and threads the sandbox may have (-1: unlimited)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pids_limit: Option<String>,
    /// CPU time, in CPUs (0.5: half of one)
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Pull the image from its registry when the daemon does not have it; for a docker://
    /// image, ask its registry again what the tag names, even if it is cached
    #[arg(long)]
    pub pull: bool,
    /// Keep serving the image this long after its last use (0: a server per run)
    ///
    /// A user's sandboxes of one image share one server, which stays mounted while they run
    /// and for this long after, so the next run finds the kernel's caches warm: root's under
    /// /run/imgfs/shared, another user's under $XDG_RUNTIME_DIR/imgfs/shared (or
    /// /tmp/imgfs-UID/shared), reachable by that user alone.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub linger: Duration,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Image: a Docker reference, oci:DIR[:REF], oci-archive:FILE[:REF],
    /// docker-archive:FILE[:NAME:TAG], docker://REF, or a tar archive path
    pub image: String,
    /// Paths in the image [default: /]
    pub paths: Vec<String>,
    /// Long listing: mode, links, owner, group, size, time (long-iso), name
    #[arg(short, long = "long")]
    pub long: bool,
    /// Show entries starting with . too, and . and ..
    #[arg(short, long)]
    pub all: bool,
    /// List subdirectories recursively
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// List directories themselves, not their contents
    #[arg(short, long)]
    pub directory: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    /// Image: a Docker reference, oci:DIR[:REF], oci-archive:FILE[:REF],
    /// docker-archive:FILE[:NAME:TAG], docker://REF, or a tar archive path
    pub image: String,
    /// Files in the image (symlinks are followed inside the image)
    #[arg(required = true)]
    pub paths: Vec<String>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct StatArgs {
    /// Image: a Docker reference, oci:DIR[:REF], oci-archive:FILE[:REF],
    /// docker-archive:FILE[:NAME:TAG], docker://REF, or a tar archive path
    pub image: String,
    /// Paths in the image
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Follow a final symlink
    #[arg(short = 'L', long)]
    pub dereference: bool,
    /// Print FORMAT for each path, in stat's language: %n %N %s %b %B %o %f %a %A %u %U %g %G
    /// %h %i %Y %y %F %t %T %%, with widths as %-10s or %04a
    #[arg(short = 'c', long, value_name = "FORMAT")]
    pub format: Option<String>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct FindArgs {
    /// Image: a Docker reference, oci:DIR[:REF], oci-archive:FILE[:REF],
    /// docker-archive:FILE[:NAME:TAG], docker://REF, or a tar archive path
    pub image: String,
    /// Starting points in the image [default: /]
    pub paths: Vec<String>,
    /// Only names (last component) matching this shell pattern
    #[arg(long, value_name = "GLOB")]
    pub name: Option<String>,
    /// Only this type: f (file), d (directory), l (symlink), b, c, p or s
    #[arg(long = "type", value_name = "C", value_parser = ["f", "d", "l", "b", "c", "p", "s"])]
    pub kind: Option<String>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image: a Docker reference, oci:DIR[:REF], oci-archive:FILE[:REF],
    /// docker-archive:FILE[:NAME:TAG], docker://REF, or a tar archive path
    pub image: String,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print one JSON array
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Images to remove from the cache
    #[arg(required = true)]
    pub images: Vec<String>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Only images not used for this long (e.g. 30d, 12h)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Only as many of the least recently used as it takes to bring the cache under SIZE
    /// (bytes, or with K, M, G or T)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Say what would be removed, and remove nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Index a registry image and push the index to its repository.
    ///
    /// The index is the image's merged file tree and, for each layer, where its compressed
    /// bytes can be entered (a checkpoint every SPAN of output, each span with its own
    /// digest). It is pushed as an OCI artifact whose subject is the image's manifest, found
    /// through the referrers API or its tag fallback (sha256-HEX). A mount or run of the
    /// image that finds it is ready once it is fetched, and fetches only the spans that
    /// reads need.
    #[command(
        after_help = "Example:\n  imgfs index push docker://registry.example/app:1\n  imgfs run docker://registry.example/app:1 -- app --version"
    )]
    Push(IndexPushArgs),
}

#[derive(Debug, Args)]
pub struct IndexPushArgs {
    /// The image: docker://HOST[:PORT]/NAME[:TAG|@DIGEST]
    pub image: String,
    /// Uncompressed bytes between two checkpoints (K, M or G, 64K to 64M): smaller spans
    /// fetch less beyond what a read needs, larger ones make a smaller index and fewer
    /// windows. auto: for each layer its compressed size over 2048, as a power of two from
    /// 64K to 1M (short spans, and a seek table of at most about 2048 records per layer)
    #[arg(long, value_name = "SIZE|auto", default_value = "auto", value_parser = parse_span)]
    pub span: imgfs::prepare::lazy::Span,
    /// Then run COMMAND (the image's own command when none is given) in a sandbox over a
    /// lazy mount of the image, record which spans it reads, and push the index again with
    /// that list: cold starts fetch those spans first, all at once
    #[arg(long, conflicts_with = "recorded")]
    pub record: bool,
    /// Push the index with the spans earlier runs and mounts of the image read, as the cache
    /// recorded them (a lazy image's entry keeps that record), instead of running anything
    #[arg(long)]
    pub recorded: bool,
    /// With --record: replace the image's Entrypoint for the recorded run ("" clears it), as
    /// the runs that will use the recording do
    #[arg(long, value_name = "CMD", requires = "record")]
    pub entrypoint: Option<String>,
    /// The command to record (after --)
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotterArgs {
    /// The socket to listen on
    #[arg(long, value_name = "SOCKET", default_value = imgfs::snapshotter::DEFAULT_ADDRESS)]
    pub address: PathBuf,
    /// Where the snapshots' metadata, directories and views are kept
    #[arg(long, value_name = "DIR", default_value = imgfs::snapshotter::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Print what the snapshotter has served lazily and what it left to containerd to
    /// unpack (with why), and exit
    #[arg(long)]
    pub status: bool,
    /// How long an image's view stays mounted once no container stands on it, so that the
    /// next container of the image starts at once [default: 300]
    #[arg(long, value_name = "SECONDS")]
    pub linger: Option<u64>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct MountsArgs {
    /// Print one JSON array
    #[arg(long)]
    pub json: bool,
    /// Replace every server of yours (or those of the MOUNTPOINTs given) with the imgfs binary
    /// now installed where it was started from, keeping each mount (a live upgrade: reads
    /// wait, none fails)
    #[arg(long)]
    pub restart: bool,
    /// With --restart: only the servers of these mounts
    #[arg(requires = "restart", value_name = "MOUNTPOINT")]
    pub mountpoints: Vec<PathBuf>,
}

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024).
/// Why a `--span` value is refused.
#[derive(Debug, thiserror::Error)]
enum SpanArgError {
    #[error("{0}")]
    Size(String),
    #[error("{0}: must be auto, or between 64K and 64M")]
    Range(String),
}

fn parse_span(text: &str) -> Result<imgfs::prepare::lazy::Span, SpanArgError> {
    use imgfs::prepare::lazy::Span;
    if text == "auto" {
        return Ok(Span::Auto);
    }
    let n = parse_size(text).map_err(SpanArgError::Size)?;
    if !(64 << 10..=64 << 20).contains(&n) {
        return Err(SpanArgError::Range(text.to_string()));
    }
    Ok(Span::Fixed(n))
}

fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = split_number(text.trim_end_matches(['B', 'b']));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 500M, 20G)"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{text:?}: the unit must be K, M, G or T")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Lets `imgfs find` take find's own spelling of its tests (`-name`, `-type`): rewritten to
/// the long options, only in the arguments of a `find` command.
pub fn find_style_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = args.into_iter().collect();
    // The command is the first argument that is neither an option nor an option's value.
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--cache-dir" {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            break;
        }
    }
    if args.get(i).is_some_and(|a| a == "find") {
        for a in &mut args[i + 1..] {
            if a == "-name" || a == "-type" {
                let long = format!("-{}", a.to_string_lossy());
                *a = long.into();
            }
        }
    }
    args
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
    /// The index's blobs, in table order (repeated).
    #[arg(long = "blob", required = true)]
    pub blobs: Vec<PathBuf>,
    #[arg(long)]
    pub fsname: String,
    #[arg(long)]
    pub threads: usize,
    /// Unmount after this many milliseconds without use
    #[arg(long)]
    pub idle_exit_ms: Option<u64>,
    #[arg(long)]
    pub fetch_timeout_ms: Option<u64>,
    #[arg(long)]
    pub prefetch: Option<PrefetchArg>,
    /// The store whose layer entries the image's lazy layers are made whole in
    #[arg(long, requires = "entry")]
    pub cache_dir: Option<PathBuf>,
    /// The image's entry in that store, by name
    #[arg(long, requires = "cache_dir")]
    pub entry: Option<String>,
    /// The program a run starts, as a path in the image: fetched at once with what it needs
    #[arg(long)]
    pub program: Option<PathBuf>,
    /// Serving in the foreground: nothing said when ready, errors on stderr
    #[arg(long)]
    pub foreground: bool,
    /// The descriptor of the live mount a keeper that executed this binary holds (a restart)
    #[arg(long, requires = "server_pid")]
    pub held_fd: Option<i32>,
    /// The server that keeper had started
    #[arg(long, requires = "held_fd")]
    pub server_pid: Option<i32>,
    /// Show image root as this uid and gid and every other owner as unmapped (a user's
    /// shared server, as their sandboxes see the image)
    #[arg(long, value_name = "UID:GID", value_parser = parse_ids)]
    pub root_as: Option<(u32, u32)>,
    pub mountpoint: PathBuf,
}

/// `UID:GID`.
fn parse_ids(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("expected UID:GID, got {text:?}");
    let (uid, gid) = text.split_once(':').ok_or_else(bad)?;
    Ok((
        uid.parse().map_err(|_| bad())?,
        gid.parse().map_err(|_| bad())?,
    ))
}

/// The leading digits of `text`, and what follows them (a unit).
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Parses a duration: a number of seconds, or a number with s, m, h or d.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (digits, unit) = match split_number(text) {
        (digits, "") => (digits, "s"),
        split => split,
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

/// When run as `mount.imgfs` (the helper mount(8) calls for `-t imgfs` and fstab entries of
/// type imgfs, with `SPEC DIR [-sfnv] [-o OPTIONS]`), the equivalent `imgfs mount` arguments;
/// `None` otherwise. Options: `cache-dir=DIR`, `threads=N`, `pull`; mount(8)'s generic ones
/// (`defaults`, `ro`, `noauto`, `nofail`, `_netdev`, `x-*`, ...) are accepted and ignored.
/// `Some(Err)` for anything else; `Some(Ok(None))` for `-f`, which only pretends to mount.
pub fn mount_helper_args(
    args: &[std::ffi::OsString],
) -> Option<Result<Option<Vec<std::ffi::OsString>>, String>> {
    let name = std::path::Path::new(args.first()?).file_name()?;
    if name != "mount.imgfs" {
        return None;
    }
    Some(helper_args(&args[1..]))
}

fn helper_args(args: &[std::ffi::OsString]) -> Result<Option<Vec<std::ffi::OsString>>, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "-o" {
            let o = args.get(i + 1).ok_or("-o needs options")?;
            options.extend(o.to_string_lossy().split(',').map(str::to_string));
            i += 2;
            continue;
        }
        if let Some(o) = a.strip_prefix("-o") {
            options.extend(o.split(',').map(str::to_string));
        } else if a == "-t" {
            i += 1; // the type: imgfs
        } else if a.starts_with('-') && a.len() > 1 {
            fake |= a.contains('f');
            // -s (sloppy), -n (no mtab), -v (verbose): nothing to do
        } else {
            positional.push(args[i].clone());
        }
        i += 1;
    }
    let [spec, dir] = positional.as_slice() else {
        return Err("usage: mount.imgfs IMAGE MOUNTPOINT [-o OPTIONS]".into());
    };
    let mut out: Vec<std::ffi::OsString> = vec!["imgfs".into(), "mount".into()];
    for o in options.iter().filter(|o| !o.is_empty()) {
        let (key, value) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o.as_str(), None),
        };
        match (key, value) {
            ("cache-dir", Some(v)) => out.extend(["--cache-dir".into(), v.into()]),
            ("threads", Some(v)) => out.extend(["--threads".into(), v.into()]),
            ("pull", None) => out.push("--pull".into()),
            // An imgfs mount is read-only whatever `rw` mount(8) passes on.
            (
                "defaults" | "ro" | "rw" | "auto" | "noauto" | "nofail" | "_netdev" | "user"
                | "users" | "nouser" | "owner" | "group" | "nosuid" | "nodev" | "noexec" | "exec"
                | "suid" | "dev" | "noatime" | "relatime" | "atime" | "sync" | "async",
                None,
            ) => {}
            (k, _) if k.starts_with("x-") || k.starts_with("comment=") => {}
            _ => {
                return Err(format!(
                    "unknown mount option '{o}' (imgfs takes cache-dir=DIR, threads=N, pull)"
                ));
            }
        }
    }
    if fake {
        return Ok(None);
    }
    out.push(spec.clone());
    out.push(dir.clone());
    Ok(Some(out))
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

    #[test]
    fn mount_helper() {
        let args = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(Into::into).collect() };
        let got = |v: &[&str]| mount_helper_args(&args(v));
        assert!(got(&["imgfs", "mount", "x", "/m"]).is_none());
        assert_eq!(
            got(&[
                "/sbin/mount.imgfs",
                "python:3.12",
                "/mnt/py",
                "-o",
                "defaults,cache-dir=/c,x-systemd.automount,pull"
            ]),
            Some(Ok(Some(args(&[
                "imgfs",
                "mount",
                "--cache-dir",
                "/c",
                "--pull",
                "python:3.12",
                "/mnt/py"
            ]))))
        );
        assert_eq!(
            got(&["mount.imgfs", "img", "/m", "-n", "-othreads=4"]),
            Some(Ok(Some(args(&[
                "imgfs",
                "mount",
                "--threads",
                "4",
                "img",
                "/m"
            ]))))
        );
        assert_eq!(got(&["mount.imgfs", "img", "/m", "-f"]), Some(Ok(None)));
        assert!(matches!(
            got(&["mount.imgfs", "img", "/m", "-o", "bogus=1"]),
            Some(Err(_))
        ));
        assert!(matches!(got(&["mount.imgfs", "img"]), Some(Err(_))));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("1TB"), Ok(1 << 40));
        assert_eq!(parse_size("2k"), Ok(2048));
        for bad in ["", "G", "1.5G", "3X", "-1", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn find_takes_finds_spelling() {
        let args = |v: &[&str]| -> Vec<String> {
            find_style_args(v.iter().map(std::ffi::OsString::from))
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect()
        };
        assert_eq!(
            args(&[
                "imgfs",
                "-v",
                "--cache-dir",
                "/c",
                "find",
                "img",
                "/",
                "-name",
                "*.py",
                "-type",
                "f"
            ]),
            [
                "imgfs",
                "-v",
                "--cache-dir",
                "/c",
                "find",
                "img",
                "/",
                "--name",
                "*.py",
                "--type",
                "f"
            ]
        );
        // Not in other commands' arguments.
        assert_eq!(
            args(&["imgfs", "run", "img", "--", "find", "/", "-name", "x"]),
            ["imgfs", "run", "img", "--", "find", "/", "-name", "x"]
        );
    }
}
