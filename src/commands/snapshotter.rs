//! `imgfs snapshotter`: containerd's Snapshots service in the foreground, or `--status`.

use anyhow::Result;
use imgfs::cache::Cache;
use imgfs::snapshotter::{self, Status};

use super::{lazy_settings, platform_of};
use crate::cli::SnapshotterArgs;

pub(super) fn snapshotter(args: SnapshotterArgs) -> Result<i32> {
    if args.status {
        let status = Status::read(&args.root)?;
        println!(
            "layers served lazily: {}\nlayers unpacked by containerd: {}",
            status.remote_layers, status.unpacked_layers
        );
        for (image, why) in &status.unpacked_images {
            println!("unpacked: {image}: {why}");
        }
        return Ok(0);
    }
    snapshotter::run(snapshotter::Options {
        cache: Cache::locate(args.cache.cache_dir.clone())?,
        lazy: lazy_settings(&args.cache),
        platform: platform_of(&args.cache)?,
        address: args.address,
        root: args.root,
        insecure: args.cache.tls_verify == Some(false),
        auth_file: args.cache.authfile,
        hosts_dir: args.cache.hosts_dir,
        linger: std::time::Duration::from_secs(args.linger.unwrap_or(300)),
    })?;
    Ok(0)
}
