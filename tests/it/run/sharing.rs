//! Who serves a sandbox's image: a live `imgfs mount` of it when there is one, else a shared
//! server per image that outlives runs for `--linger`; fifty runs at once share one.

use super::*;

/// With the image already mounted by `imgfs mount`, a run uses that mount (and its warm
/// caches) instead of starting a FUSE server of its own, and leaves it mounted.
#[test]
fn run_uses_a_live_mount_of_the_image() {
    let tar = debian_tar();
    let cache = TempDir::new("imgfs-live-cache");
    let cache = cache.path();
    let no_sharing = ["--linger", "0"];
    assert!(
        run_serves_fuse(cache, &tar, &no_sharing),
        "without a live mount the run serves the image itself"
    );
    let mnt = TempDir::new("imgfs-live-mount");
    let out = output(
        imgfs()
            .arg("mount")
            .arg("--cache-dir")
            .arg(cache)
            .arg(&tar)
            .arg(mnt.path()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !run_serves_fuse(cache, &tar, &no_sharing),
        "the run started a FUSE server despite the live mount"
    );
    // The run's output is the file as GNU tar reads it in the archive, and the live mount is
    // still there afterwards.
    let out = output(run_cached(cache, &tar, &no_sharing).args(["cat", "/etc/debian_version"]));
    let truth = output(
        Command::new("tar")
            .arg("-xOf")
            .arg(&tar)
            .arg("./etc/debian_version"),
    );
    assert!(truth.status.success(), "{}", text(&truth.stderr));
    assert_eq!(assert_ok(&out), text(&truth.stdout));
    assert!(mnt.path().join("usr/bin/python3").exists());
    let out = output(imgfs().arg("umount").arg(mnt.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        run_serves_fuse(cache, &tar, &no_sharing),
        "a finished mount is still taken as live"
    );
}

/// Sandboxes of one image share one server, which stays mounted after them for --linger,
/// then unmounts; a sandbox still running then keeps being served until it ends, and
/// the server exits after it and removes its mountpoint. `--linger 0` starts none.
#[test]
fn sandboxes_share_a_server_that_retires_when_idle() {
    let tar = debian_tar();
    let cache = TempDir::new("imgfs-shared-cache");
    let cache = cache.path();
    let linger = ["--linger", "2s"];

    assert_ok(&output(
        run_cached(cache, &tar, &["--linger", "0"]).arg("true"),
    ));
    assert!(shared_servers(cache).is_empty(), "--linger 0 left a server");

    assert_ok(&output(run_cached(cache, &tar, &linger).arg("true")));
    let servers = shared_servers(cache);
    assert_eq!(servers.len(), 1, "{servers:?}");
    let (pid, mnt) = servers[0].clone();
    assert!(mnt.starts_with("/run/imgfs/shared"), "{}", mnt.display());
    assert!(common::is_mounted(&mnt), "{} is not mounted", mnt.display());

    // Eight at once: all served by that one server.
    let children: Vec<_> = (0..8)
        .map(|_| {
            run_cached(cache, &tar, &linger)
                .args(["cat", "/etc/debian_version"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        assert_ok(&child.wait_with_output().unwrap());
    }
    assert_eq!(shared_servers(cache), vec![(pid, mnt.clone())]);
    assert!(
        !run_serves_fuse(cache, &tar, &linger),
        "a run served FUSE itself despite the shared server"
    );

    // A sandbox that waits on a FIFO without touching the image: the server goes idle and
    // unmounts meanwhile, yet goes on serving the sandbox bound to it.
    let sig = TempDir::new("imgfs-shared-fifo");
    let fifo = sig.path().join("go");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let file = "usr/share/common-licenses/GPL-3";
    let waiting = run_cached(
        cache,
        &tar,
        &[
            "--linger",
            "2s",
            "-v",
            &format!("{}:/sig", sig.path().display()),
        ],
    )
    .args(["sh", "-c", &format!("read x < /sig/go; sha256sum /{file}")])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_until("the idle server unmounts", || !common::is_mounted(&mnt));
    assert!(alive(pid), "the server exited while a sandbox used it");
    std::fs::write(&fifo, "go\n").unwrap();
    let out = assert_ok(&waiting.wait_with_output().unwrap());
    let truth = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -xOf '{}' --wildcards '*{file}' | sha256sum",
            tar.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        out.split(' ').next(),
        text(&truth.stdout).split(' ').next(),
        "the sandbox read other bytes than GNU tar extracts"
    );
    wait_until("the server exits after its last sandbox", || !alive(pid));
    assert!(!mnt.exists(), "{} was left behind", mnt.display());
    assert!(shared_servers(cache).is_empty());

    // The next run starts a new one.
    assert_ok(&output(run_cached(cache, &tar, &linger).arg("true")));
    let next = shared_servers(cache);
    assert_eq!(next.len(), 1, "{next:?}");
    assert_ne!(next[0].0, pid);
    wait_until("the new server retires", || !alive(next[0].0));
    assert!(!next[0].1.exists());
}

/// Fifty sandboxes of one image started at once: all run, and none leaves a mount or a
/// process behind.
#[test]
fn fifty_parallel_runs_all_succeed_and_leave_nothing() {
    let _docker = require_images();
    // Fill the cache first, so the fifty are warm runs racing each other, not the export.
    assert_ok(&run_in(DEBIAN_IMAGE, &[], &["true"]));
    let marker = "imgfs-fifty-7121";
    let children: Vec<_> = (0..50)
        .map(|i| {
            imgfs()
                .arg("run")
                .arg("--cache-dir")
                .arg(shared_cache())
                .arg(DEBIAN_IMAGE)
                .args([
                    "--",
                    "sh",
                    "-c",
                    &format!(
                        "echo {marker} >/dev/null; cat /etc/debian_version >/dev/null && echo {i}"
                    ),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(assert_ok(&out), format!("{i}\n"));
    }
    assert!(processes_with(marker).is_empty());
    assert!(imgfs_mounts().is_empty(), "{:?}", imgfs_mounts());
    // They shared one server (a test running beside this one may use the same).
    let fsname = format!("imgfs:{DEBIAN_IMAGE}");
    let servers: Vec<_> = processes_with("__serve")
        .into_iter()
        .filter(|c| c.contains("--idle-exit-ms") && c.contains(&fsname))
        .filter(|c| c.contains(shared_cache().to_str().unwrap()))
        .collect();
    assert_eq!(servers.len(), 1, "{servers:#?}");
}
