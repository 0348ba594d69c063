//! `imgfs mounts`: the imgfs mounts of the machine with who serves each and its state, dead
//! ones cleared; with `--restart`, a live upgrade of the servers.

use anyhow::{Context, Result, bail};
use imgfs::serve;

use super::{table, with_output};
use crate::cli::MountsArgs;

pub(super) fn mounts(args: MountsArgs) -> Result<i32> {
    if args.restart {
        let only: Vec<_> = args
            .mountpoints
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect();
        let restarted = serve::restart_servers(&only, std::time::Duration::from_secs(10));
        if let Some(p) = only
            .iter()
            .find(|p| !restarted.iter().any(|r| &r.mountpoint == *p))
        {
            bail!(
                "{}: no server of yours with a keeper serves it",
                p.display()
            );
        }
        let mut failed = 0;
        for r in &restarted {
            match r.after {
                Some(pid) => eprintln!(
                    "imgfs: {}: server {} replaced by {pid}",
                    r.mountpoint.display(),
                    r.before
                ),
                None if r.ended => eprintln!(
                    "imgfs: {}: its mount ended meanwhile",
                    r.mountpoint.display()
                ),
                None => {
                    failed += 1;
                    eprintln!(
                        "imgfs: {}: no new server took over from {} within 10 s",
                        r.mountpoint.display(),
                        r.before
                    );
                }
            }
        }
        if failed > 0 {
            return Ok(1);
        }
    }
    let statuses = serve::mount_statuses().context("cannot read /proc/self/mountinfo")?;
    for s in &statuses {
        if s.cleared {
            eprintln!(
                "imgfs: {}: cleared a dead mount (its server was gone)",
                s.mount.mountpoint.display()
            );
        }
        if let Some(e) = &s.clear_error {
            eprintln!(
                "imgfs: {}: a dead mount, which could not be cleared: {e}",
                s.mount.mountpoint.display()
            );
        }
    }
    let image = |m: &serve::MountInfo| {
        m.source
            .strip_prefix(serve::SOURCE_PREFIX)
            .unwrap_or(&m.source)
            .to_string()
    };
    let kind = |m: &serve::MountInfo| {
        if serve::is_shared_mountpoint(&m.mountpoint) {
            "shared"
        } else {
            "mount"
        }
    };
    let state = |s: &serve::MountStatus| {
        if s.cleared {
            "dead (cleared)".to_string()
        } else {
            s.state.name().to_string()
        }
    };
    with_output(|out, _| {
        if args.json {
            let list: Vec<_> = statuses
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "Mountpoint": s.mount.mountpoint.display().to_string(),
                        "Image": image(&s.mount),
                        "Kind": kind(&s.mount),
                        "State": s.state.name(),
                        "Pid": s.pid,
                        "Keeper": s.keeper,
                        "Cleared": s.cleared,
                    })
                })
                .collect();
            serde_json::to_writer_pretty(&mut *out, &list)?;
            writeln!(out)?;
            return Ok(0);
        }
        let mut rows = vec![vec![
            "MOUNTPOINT".to_string(),
            "KIND".into(),
            "IMAGE".into(),
            "PID".into(),
            "STATE".into(),
        ]];
        for s in &statuses {
            rows.push(vec![
                s.mount.mountpoint.display().to_string(),
                kind(&s.mount).into(),
                image(&s.mount),
                s.pid.map_or("-".into(), |p| p.to_string()),
                state(s),
            ]);
        }
        table(out, &rows)?;
        Ok(0)
    })
}
