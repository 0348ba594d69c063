//! Who serves a sandbox's image: a live `imgfs mount` of it when there is one, else a shared
//! server per image that outlives runs for `--linger`; fifty runs at once share one; a
//! shared server killed under running sandboxes is replaced without their noticing.

use super::*;
use crate::common::Mounted;

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
    // Over once its server is gone (imgfs umount may return before).
    Mounted::adopt(mnt.path()).umount();
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
    .args([
        "sh",
        "-c",
        &format!(": > /sig/ready; read x < /sig/go; sha256sum /{file}"),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut waiting = Running(Some(waiting));
    // Its command runs, bound to the server, before the server may retire (a shell builtin
    // says so, reading nothing of the image).
    wait_until("the sandbox's command starts", || {
        sig.path().join("ready").exists() || waiting.ended()
    });
    wait_until("the idle server unmounts", || !common::is_mounted(&mnt));
    assert!(alive(pid), "the server exited while a sandbox used it");
    waiting.signal_fifo(&fifo);
    let out = assert_ok(&waiting.0.take().unwrap().wait_with_output().unwrap());
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
    let servers: Vec<_> = shared_servers(&shared_cache())
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| text(&c).contains(&fsname))
        })
        .collect();
    assert_eq!(servers.len(), 1, "{servers:#?}");
}

/// A sandbox a test waits on; killed if the test fails meanwhile.
struct Running(Option<std::process::Child>);

impl Running {
    /// Whether it has ended (then a wait on it is over).
    fn ended(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Writes a line to the FIFO `fifo` its command reads, failing the test (rather than
    /// hanging on the open) if the sandbox ends without opening it.
    #[track_caller]
    fn signal_fifo(&mut self, fifo: &std::path::Path) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let start = std::time::Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(fifo)
            {
                Ok(mut f) => {
                    f.write_all(b"go\n").unwrap();
                    return;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
                Err(e) => panic!("open {}: {e}", fifo.display()),
            }
            if self.ended() {
                let out = self.0.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "the sandbox ended without reading {} ({}): {}{}",
                    fifo.display(),
                    out.status,
                    text(&out.stdout),
                    text(&out.stderr)
                );
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "the sandbox does not read {}",
                fifo.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `kill -9` of a shared server, twice, while four sandboxes read files of the image all the
/// time (the page cache dropped before each kill, so that their reads reach the server):
/// every sandbox exits 0 and reads GNU tar's bytes.
#[test]
fn sandboxes_outlive_a_killed_shared_server() {
    let tar = debian_tar();
    let cache = TempDir::new("imgfs-shared-cache");
    let cache = cache.path();
    let file = "usr/share/common-licenses/GPL-3";
    let script = format!(
        "end=$(($(date +%s) + 6)); \
         while [ $(date +%s) -lt $end ]; do \
           cat /{file} > /dev/null || exit 1; ls -R /usr/lib > /dev/null || exit 1; \
         done; sha256sum /{file}"
    );
    let children: Vec<_> = (0..4)
        .map(|_| {
            run_cached(cache, &tar, &["--linger", "10s"])
                .args(["sh", "-c", &script])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut children: Vec<_> = children.into_iter().map(|c| Running(Some(c))).collect();
    let mut mnt = PathBuf::new();
    wait_until(
        "a shared server serves the sandboxes",
        || match shared_servers(cache).as_slice() {
            [(_, m)] => {
                mnt = m.clone();
                true
            }
            _ => false,
        },
    );
    let mut killed = Vec::new();
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let server = common::next_server(&mnt, &killed);
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
        // SAFETY: killing a server this test's runs started.
        assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
        killed.push(server);
    }
    let truth = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -xOf '{}' --wildcards '*{file}' | sha256sum",
            tar.display()
        ))
        .output()
        .unwrap();
    let want = text(&truth.stdout)
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    for child in &mut children {
        let out = assert_ok(&child.0.take().unwrap().wait_with_output().unwrap());
        assert_eq!(out.split(' ').next(), Some(want.as_str()), "{out}");
    }
}
