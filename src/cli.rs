//! The command line, defined once: clap derives parsing, help and errors from it.

use std::path::PathBuf;

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

    /// Serve a prepared image (used by `imgfs mount` for its background server).
    #[command(name = "__serve", hide = true)]
    Serve(ServeArgs),
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
    pub mountpoint: PathBuf,
}
