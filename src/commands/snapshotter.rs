//! `imgfs snapshotter`: containerd's Snapshots service in the foreground, or `--status`.

use anyhow::Result;
use imgfs::cache::Cache;
use imgfs::snapshotter::{self, Status};

use super::prefetch_of;
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
    let cache = Cache::locate(args.cache.cache_dir.clone())?;
    let mut lazy = imgfs::image::lazy::LazyOptions::default();
    if let Some(secs) = args.cache.fetch_timeout
        && secs.is_finite()
        && secs >= 0.0
    {
        lazy.fetch_timeout = std::time::Duration::from_secs_f64(secs.min(1e6));
    }
    lazy.prefetch = prefetch_of(args.cache.prefetch);
    let platform = args
        .cache
        .platform
        .as_deref()
        .map(imgfs::source::Platform::parse)
        .transpose()?;
    snapshotter::run(snapshotter::Options {
        address: args.address,
        root: args.root,
        cache,
        lazy,
        platform,
        insecure: args.cache.tls_verify == Some(false),
        auth_file: args.cache.authfile,
        hosts_dir: args.cache.hosts_dir,
        linger: std::time::Duration::from_secs(args.linger.unwrap_or(300)),
    })?;
    Ok(0)
}
