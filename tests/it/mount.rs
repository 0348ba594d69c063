//! `imgfs mount` end to end: real archives, a real dockerd, real FUSE mounts, compared with
//! GNU `tar -x` of the same archive.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    CompareOptions, DEBIAN_IMAGE, MOUNT_LIMIT, Mount, Mounted, TempDir, assert_trees_equal,
    cache_file, differences_from_export, docker_export, export_containers, export_events,
    extract_with_gnu_tar, fixture_archives, fixtures_dir, imgfs, is_mounted, keepers_of, now,
    read_path_list, require, require_docker, run, run_within_pid, servers_of, text, wait_until,
};

/// The mounted tree is exactly what GNU tar extracts from `archive` (the root's own metadata
/// aside: tar -x does not apply it to an existing directory the same way).
fn assert_mount_matches_tar_x(archive: &Path, mount: &Path) {
    let truth = TempDir::new("imgfs-truth");
    extract_with_gnu_tar(archive, truth.path());
    let opts = CompareOptions {
        skip_root_meta: true,
        ..Default::default()
    };
    assert_trees_equal(truth.path(), mount, &opts);
}

/// Every fixture archive (GNU gnu/oldgnu/pax/ustar, bsdtar pax/gnu, PAX global headers,
/// duplicates and missing parents) mounts as exactly what `tar -x` makes of it.
#[test]
fn fixture_archives_match_tar_x() {
    let archives = fixture_archives();
    let cache = TempDir::new("imgfs-cache");
    let names = [
        "gnu.tar",
        "oldgnu.tar",
        "pax.tar",
        "pax-sparse00.tar",
        "pax-sparse01.tar",
        "ustar.tar",
        "bsdtar-pax.tar",
        "bsdtar-gnu.tar",
        "pax-global.tar",
        "docker-like.tar",
    ];
    for name in names {
        let archive = archives.join(name);
        require(archive.exists(), &format!("fixture {}", archive.display()));
        let truth = TempDir::new("imgfs-truth");
        extract_with_gnu_tar(&archive, truth.path());
        let mount = Mounted::new(cache.path(), &archive);
        let mut opts = CompareOptions {
            skip_root_meta: true,
            ..Default::default()
        };
        if name == "docker-like.tar" {
            let list = archives.join("docker-like.synthesized");
            opts.ignore_meta = read_path_list(&list).into_iter().collect();
        }
        assert_trees_equal(truth.path(), mount.path(), &opts);
        mount.umount();
    }
}

/// The Debian python image through dockerd: zero differences from GNU tar's extraction of
/// `docker export` of the image (the container's own files aside), and the archive imgfs
/// keeps holds the same names as that export; no container is left; a warm mount exports
/// nothing.
#[test]
fn docker_image_matches_docker_export_and_warm_mount_does_not_export() {
    let _docker = require_docker();
    let cache = TempDir::new("imgfs-cache");
    let before = now();
    let mount = Mounted::new(cache.path(), DEBIAN_IMAGE);
    let mine = [mount.pid];
    assert!(
        export_containers(&mine).is_empty(),
        "export container left in dockerd"
    );
    wait_until("dockerd reports the export", || {
        export_events(&before, &mine) >= 1
    });
    assert_eq!(export_events(&before, &mine), 1);

    // Truth: an export of the image made here, apart from imgfs, extracted by GNU tar.
    let exported = TempDir::new("imgfs-export");
    let docker_tar = exported.path().join("export.tar");
    docker_export(DEBIAN_IMAGE, &docker_tar);
    let diffs = differences_from_export(&docker_tar, mount.path());
    assert!(
        diffs.is_empty(),
        "the mount differs from docker export of {DEBIAN_IMAGE}:\n  {}",
        diffs.join("\n  ")
    );
    assert!(mount.path().join("usr/bin/python3").exists());

    // The archive imgfs serves from holds what dockerd exports (names; the per-container
    // files have the same names in every export).
    let archive = cache_file(cache.path(), "archive.tar");
    let list = |p: &Path| -> BTreeSet<String> {
        text(&run(Command::new("tar").arg("-tf").arg(p)).stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(list(&archive), list(&docker_tar));
    mount.umount();

    // Warm: resolve only, no export.
    let warm_since = now();
    let again = Mounted::new(cache.path(), DEBIAN_IMAGE);
    assert!(again.path().join("etc/os-release").exists());
    let warm = [again.pid];
    again.umount();
    assert_eq!(
        export_events(&warm_since, &warm),
        0,
        "a warm mount exported the image again"
    );
}

/// Eight processes mounting the same uncached image at once export it once, and all succeed.
#[test]
fn concurrent_cold_mounts_export_once() {
    let _docker = require_docker();
    let cache = TempDir::new("imgfs-cache");
    let since = now();
    let dirs: Vec<_> = (0..8).map(|_| TempDir::new("imgfs-mnt")).collect();
    let children: Vec<_> = dirs
        .iter()
        .map(|d| {
            imgfs()
                .args(["mount", "--cache-dir"])
                .arg(cache.path())
                .arg(DEBIAN_IMAGE)
                .arg(d.path())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn imgfs")
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let mounts: Vec<Mounted> = children
        .into_iter()
        .zip(&dirs)
        .map(|(child, d)| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            Mounted::adopt(d.path())
        })
        .collect();
    for m in mounts {
        assert!(m.path().join("usr/bin/python3").exists());
        m.umount();
    }
    assert_eq!(export_events(&since, &pids), 1);
    assert!(export_containers(&pids).is_empty());
}

#[test]
fn missing_image_and_dead_daemon_fail_with_one_clear_line() {
    let _docker = require_docker();
    let cache = TempDir::new("imgfs-cache");
    let mnt = TempDir::new("imgfs-mnt");
    let (pid, out) = run_within_pid(
        imgfs()
            .args(["mount", "--cache-dir"])
            .arg(cache.path())
            .arg("imgfs-test/no-such-image:1")
            .arg(mnt.path()),
        MOUNT_LIMIT,
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("image 'imgfs-test/no-such-image:1' not found in local Docker storage"),
        "{err}"
    );
    assert!(export_containers(&[pid]).is_empty());

    for host in ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"] {
        let start = Instant::now();
        let out = run(imgfs()
            .env("DOCKER_HOST", host)
            .args(["mount", "--cache-dir"])
            .arg(cache.path())
            .arg(DEBIAN_IMAGE)
            .arg(mnt.path()));
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("cannot reach the Docker daemon at {host}")),
            "{err}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a dead daemon took {:?}",
            start.elapsed()
        );
    }
    assert!(!is_mounted(mnt.path()));
}

/// The server stops and unmounts on `imgfs umount`, `umount`, SIGTERM and SIGINT, and a
/// second mount on a busy mountpoint is refused.
#[test]
fn server_lifecycle_leaves_no_stale_mount() {
    let archive = fixture_archives().join("gnu.tar");
    let cache = TempDir::new("imgfs-cache");

    let m = Mounted::new(cache.path(), &archive);
    let again = run(imgfs()
        .args(["mount", "--cache-dir"])
        .arg(cache.path())
        .arg(&archive)
        .arg(m.path()));
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already mounted"),
        "{}",
        text(&again.stderr)
    );
    m.umount();

    for tool in [["umount", ""], ["fusermount3", "-u"]] {
        let m = Mounted::new(cache.path(), &archive);
        let mut cmd = Command::new(tool[0]);
        if !tool[1].is_empty() {
            cmd.arg(tool[1]);
        }
        assert!(run(cmd.arg(m.path())).status.success(), "{tool:?}");
        wait_until("the server exits after an outside unmount", || {
            servers_of(m.path()).is_empty()
        });
    }

    for signal in [libc::SIGTERM, libc::SIGINT] {
        let m = Mounted::new(cache.path(), &archive);
        let pids = servers_of(m.path());
        assert_eq!(pids.len(), 1, "one server per mount");
        // SAFETY: sending a signal to a process we started.
        assert_eq!(unsafe { libc::kill(pids[0], signal) }, 0);
        wait_until("the signalled server unmounts", || !is_mounted(m.path()));
        wait_until("the signalled server exits", || {
            servers_of(m.path()).is_empty()
        });
    }

    // Foreground: attached until interrupted; the process started keeps the mount, and a
    // server of its killed is replaced.
    let mnt = TempDir::new("imgfs-mnt");
    let mut child = imgfs()
        .args(["mount", "--foreground", "--cache-dir"])
        .arg(cache.path())
        .arg(&archive)
        .arg(mnt.path())
        .spawn()
        .unwrap();
    wait_until("the foreground mount is ready", || is_mounted(mnt.path()));
    assert_eq!(keepers_of(mnt.path()), vec![child.id() as i32]);
    let server = common::next_server(mnt.path(), &[]);
    // SAFETY: killing a server this test started.
    assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
    common::next_server(mnt.path(), &[server]);
    assert!(std::fs::read_dir(mnt.path()).unwrap().count() > 0);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "foreground server: {status}");
    assert!(!is_mounted(mnt.path()));

    let out = run(imgfs().arg("umount").arg(mnt.path()));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not mounted"));
}

/// Another user reads what the image's modes allow, and nothing more: the kernel checks.
#[test]
fn other_users_get_the_image_permissions() {
    let archive = fixtures_dir().join("debian-python.tar");
    require(
        archive.exists(),
        "tests/fixtures/make-debian-image.sh has made debian-python.tar",
    );
    let cache = TempDir::new("imgfs-cache");
    let m = Mounted::new(cache.path(), &archive);
    let as_nobody = |args: &[&str]| {
        run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args))
    };
    let os = m.path().join("etc/os-release");
    let out = as_nobody(&["cat", os.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("bookworm"));
    let shadow = m.path().join("etc/shadow"); // 0640 root:shadow in Debian
    let out = as_nobody(&["cat", shadow.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    m.umount();
}

#[test]
fn bad_archives_and_mountpoints_fail_clearly() {
    let cache = TempDir::new("imgfs-cache");
    let work = TempDir::new("imgfs-bad");
    let mnt = TempDir::new("imgfs-mnt");
    let gz = work.path().join("x.tar.gz");
    let plain = fixture_archives().join("ustar.tar");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", plain.display(), gz.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let junk = work.path().join("junk.tar");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let cases: [(&Path, &Path, &str); 4] = [
        (&gz, mnt.path(), "gzip-compressed"),
        (&junk, mnt.path(), "not a tar archive"),
        (
            &plain,
            Path::new("/nonexistent/mnt"),
            "mountpoint /nonexistent/mnt",
        ),
        (
            Path::new("/nonexistent.tar"),
            mnt.path(),
            "/nonexistent.tar",
        ),
    ];
    for (archive, mountpoint, expect) in cases {
        let out = run(imgfs()
            .args(["mount", "--cache-dir"])
            .arg(cache.path())
            .arg(archive)
            .arg(mountpoint));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{} mounted", archive.display());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{}: {err}", archive.display());
        assert!(!is_mounted(mountpoint));
    }
    // No half-built entry stays in the cache.
    let leftovers: Vec<_> = std::fs::read_dir(cache.path().join("images"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// One ustar header block with a valid checksum (name and link up to 100 bytes).
fn ustar_header(name: &[u8], typeflag: u8, size: usize, link: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn member(name: &[u8], typeflag: u8, data: &[u8], link: &[u8]) -> Vec<u8> {
    let mut m = ustar_header(name, typeflag, data.len(), link);
    m.extend_from_slice(data);
    m.resize(m.len().div_ceil(512) * 512, 0);
    m
}

/// Names that would leave the root never do: `..` members are dropped, absolute ones are
/// made relative, a symlink standing where a directory must be is replaced, a hard link out
/// of the tree is dropped; each with a warning.
#[test]
fn hostile_paths_stay_inside_the_mount() {
    let work = TempDir::new("imgfs-hostile");
    let archive = work.path().join("hostile.tar");
    let mut bytes = Vec::new();
    bytes.extend(member(b"../evil", b'0', b"escaped\n", b""));
    bytes.extend(member(b"a/../../evil2", b'0', b"escaped\n", b""));
    bytes.extend(member(b"/abs/file", b'0', b"absolute\n", b""));
    bytes.extend(member(b"x", b'2', b"", b"/"));
    bytes.extend(member(b"x/etc/passwd", b'0', b"inside\n", b""));
    bytes.extend(member(b"dup//slashes/./f", b'0', b"dup\n", b""));
    bytes.extend(member(b"h", b'1', b"", b"../../etc/passwd"));
    bytes.extend(vec![0u8; 1024]);
    std::fs::write(&archive, &bytes).unwrap();

    let cache = TempDir::new("imgfs-cache");
    let mnt = TempDir::new("imgfs-mnt");
    let out = run(imgfs()
        .args(["mount", "--cache-dir"])
        .arg(cache.path())
        .arg(&archive)
        .arg(mnt.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for expect in [
        "'../evil'",
        "'a/../../evil2'",
        "leading '/'",
        "'x'",
        "hard link 'h'",
    ] {
        assert!(err.contains(expect), "no warning about {expect}: {err}");
    }
    let m = Mounted::adopt(mnt.path());
    let mut names: Vec<String> = Vec::new();
    let walk = Command::new("find")
        .arg(".")
        .current_dir(m.path())
        .output()
        .unwrap();
    names.extend(text(&walk.stdout).lines().map(str::to_string));
    names.sort();
    assert_eq!(
        names,
        [
            ".",
            "./abs",
            "./abs/file",
            "./dup",
            "./dup/slashes",
            "./dup/slashes/f",
            "./x",
            "./x/etc",
            "./x/etc/passwd"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(m.path().join("x/etc/passwd")).unwrap(),
        "inside\n"
    );
    assert!(
        std::fs::symlink_metadata(m.path().join("x"))
            .unwrap()
            .is_dir()
    );
    m.umount();
}

/// A damaged index in the cache is detected and rebuilt, byte for byte the same; a tar file
/// that changes gets a new index.
#[test]
fn damaged_index_and_changed_tar_are_rebuilt() {
    let archives = fixture_archives();
    let work = TempDir::new("imgfs-rebuild");
    let archive = work.path().join("image.tar");
    std::fs::copy(archives.join("ustar.tar"), &archive).unwrap();
    let cache = TempDir::new("imgfs-cache");
    Mounted::new(cache.path(), &archive).umount();
    let index = cache_file(cache.path(), "index");
    let good = std::fs::read(&index).unwrap();
    for damage in ["flip", "truncate", "foreign"] {
        let mut bad = good.clone();
        match damage {
            "flip" => bad[good.len() / 2] ^= 0x40,
            "truncate" => bad.truncate(good.len() - 7),
            _ => bad = b"not an index at all".to_vec(),
        }
        std::fs::write(&index, &bad).unwrap();
        let m = Mounted::new(cache.path(), &archive);
        assert_mount_matches_tar_x(&archive, m.path());
        m.umount();
        assert!(
            std::fs::read(&index).unwrap() == good,
            "{damage}: the rebuilt index differs"
        );
    }

    // The same path, new contents: the mount shows the new archive.
    std::fs::copy(archives.join("pax-global.tar"), &archive).unwrap();
    let m = Mounted::new(cache.path(), &archive);
    assert_mount_matches_tar_x(&archive, m.path());
    m.umount();
}

/// IMGFS_CACHE_DIR picks the cache, the image description is kept for the runner, and a
/// cached image named by its full id mounts without the daemon.
#[test]
fn cache_dir_from_environment_keeps_the_image_config() {
    let _docker = require_docker();
    let cache = TempDir::new("imgfs-cache");
    let mnt = TempDir::new("imgfs-mnt");
    let out = run(imgfs()
        .env("IMGFS_CACHE_DIR", cache.path())
        .arg("mount")
        .arg(DEBIAN_IMAGE)
        .arg(mnt.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = Mounted::adopt(mnt.path());
    let id = text(
        &run(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", DEBIAN_IMAGE]))
            .stdout,
    );
    let entry = cache
        .path()
        .join("images")
        .join(id.trim().replace(':', "-"));
    for file in ["archive.tar", "index", "image.json", "complete"] {
        assert!(
            entry.join(file).exists(),
            "{} missing",
            entry.join(file).display()
        );
    }
    let config = std::fs::read_to_string(entry.join("image.json")).unwrap();
    assert!(
        config.contains("\"Config\"") && config.contains(id.trim()),
        "{config}"
    );
    m.umount();

    // A full image id names immutable content: once cached, no daemon is needed at all.
    let out = run(imgfs()
        .env("IMGFS_CACHE_DIR", cache.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .arg("mount")
        .arg(id.trim())
        .arg(mnt.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = Mounted::adopt(mnt.path());
    assert!(m.path().join("usr/bin/python3").exists());
    m.umount();
}

/// Ctrl-C during a cold export: exit 130, the container is removed, nothing half-written stays
/// in the cache, and the next mount works.
#[test]
fn interrupted_export_leaves_nothing_behind() {
    let _docker = require_docker();
    let mnt = TempDir::new("imgfs-mnt");
    for attempt in 0..5 {
        let cache = TempDir::new("imgfs-cache");
        let child = imgfs()
            .args(["mount", "--cache-dir"])
            .arg(cache.path())
            .arg(DEBIAN_IMAGE)
            .arg(mnt.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let images = cache.path().join("images");
        let started = || {
            std::fs::read_dir(&images)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| std::fs::metadata(e.path().join("archive.tar")).is_ok_and(|m| m.len() > 0))
        };
        let start = Instant::now();
        while !started() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = child.id();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            // The export finished before the signal landed; try again.
            Command::new(env!("CARGO_BIN_EXE_imgfs"))
                .arg("umount")
                .arg(mnt.path())
                .status()
                .unwrap();
            eprintln!("attempt {attempt}: export finished before SIGINT");
            continue;
        }
        assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
        wait_until("the export container is removed", || {
            export_containers(&[pid]).is_empty()
        });
        let left: Vec<_> = std::fs::read_dir(&images)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left in the cache: {left:?}");
        assert!(!is_mounted(mnt.path()));
        let m = Mounted::new(cache.path(), DEBIAN_IMAGE);
        assert!(m.path().join("usr/bin/python3").exists());
        m.umount();
        return;
    }
    panic!("the export always finished before SIGINT could interrupt it");
}

/// A cache entry that an interrupted fill left (no completion marker, nobody filling it) is
/// removed by the next fill.
#[test]
fn leftovers_of_interrupted_fills_are_removed() {
    let cache = TempDir::new("imgfs-cache");
    let leftover = cache.path().join("images/sha256-interrupted");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("archive.tar"), b"half written").unwrap();
    let m = Mounted::new(cache.path(), fixture_archives().join("ustar.tar"));
    m.umount();
    assert!(!leftover.exists(), "{} is still there", leftover.display());
}

/// Forwards one TCP listener on loopback to dockerd's unix socket, for a tcp:// DOCKER_HOST.
fn tcp_to_docker_socket() -> std::net::SocketAddr {
    use std::net::TcpListener;
    use std::os::unix::net::UnixStream;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(daemon) = UnixStream::connect("/var/run/docker.sock") else {
                continue;
            };
            let (mut c2, mut d2) = (client.try_clone().unwrap(), daemon.try_clone().unwrap());
            let (mut c1, mut d1) = (client, daemon);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut d1);
                let _ = d1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut d2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// DOCKER_HOST=tcp://... reaches the daemon over TCP.
#[test]
fn docker_host_over_tcp() {
    let _docker = require_docker();
    let addr = tcp_to_docker_socket();
    let cache = TempDir::new("imgfs-cache");
    let m = Mount::new(cache.path(), DEBIAN_IMAGE)
        .env("DOCKER_HOST", format!("tcp://{addr}"))
        .done();
    assert!(m.path().join("usr/bin/python3").exists());
    let pid = m.pid;
    m.umount();
    assert!(export_containers(&[pid]).is_empty());
}

/// A daemon older than the API version imgfs pins is still understood: a request it refuses
/// for its version is negotiated and asked again. (A stand-in daemon on loopback answers like
/// Docker 19.03, API 1.40, and refuses anything addressed to 1.41.)
#[test]
fn older_daemon_gets_a_negotiated_version() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut stream = stream;
            loop {
                let mut request = String::new();
                if reader.read_line(&mut request).unwrap_or(0) == 0 {
                    break;
                }
                let path = request.split(' ').nth(1).unwrap_or("").to_string();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                log.lock().unwrap().push(path.clone());
                let (status, body) = if path.starts_with("/v1.41/") {
                    (
                        "400 Bad Request",
                        r#"{"message":"client version 1.41 is too new. Maximum supported API version is 1.40"}"#,
                    )
                } else if path.ends_with("/version") {
                    ("200 OK", r#"{"ApiVersion":"1.40","Version":"19.03.0"}"#)
                } else {
                    (
                        "404 Not Found",
                        r#"{"message":"No such image: old-daemon:1"}"#,
                    )
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        }
    });
    let cache = TempDir::new("imgfs-cache");
    let mnt = TempDir::new("imgfs-mnt");
    let out = run(imgfs()
        .env("DOCKER_HOST", format!("tcp://{addr}"))
        .args(["mount", "--cache-dir"])
        .arg(cache.path())
        .arg("old-daemon:1")
        .arg(mnt.path()));
    let err = text(&out.stderr);
    assert!(
        err.contains("image 'old-daemon:1' not found in local Docker storage"),
        "{err}"
    );
    // The lookup reached the daemon in a version it speaks (bollard may also send
    // unversioned paths, which a daemon answers in its own version).
    let paths = seen.lock().unwrap().clone();
    let spoken = |p: &String| p.ends_with("/images/old-daemon:1/json") && !p.starts_with("/v1.41/");
    assert!(paths.iter().any(spoken), "{paths:?}");
}

/// A server killed outright together with its keeper, so that nothing holds the mount's
/// connection: readers get an error at once (no hang), `imgfs umount` clears the dead mount,
/// and so does the next `imgfs mount` on the same mountpoint.
#[test]
fn killed_server_and_keeper_give_errors_and_are_cleaned_up() {
    let archive = fixture_archives().join("ustar.tar");
    let cache = TempDir::new("imgfs-cache");
    for clear_with in ["umount", "mount"] {
        let m = Mounted::new(cache.path(), &archive);
        // The keeper first: killed after it, the server would be replaced.
        let pids = [keepers_of(m.path()), servers_of(m.path())].concat();
        assert_eq!(pids.len(), 2, "a keeper and a server: {pids:?}");
        for pid in pids {
            // SAFETY: killing processes we started.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        }
        wait_until("the keeper and the server are gone", || {
            keepers_of(m.path()).is_empty() && servers_of(m.path()).is_empty()
        });
        let err = std::fs::read_dir(m.path()).map(|_| ()).unwrap_err();
        // The kernel says ENOTCONN, or ECONNABORTED while it is still tearing down.
        assert!(
            [Some(libc::ENOTCONN), Some(libc::ECONNABORTED)].contains(&err.raw_os_error()),
            "{err}"
        );
        if clear_with == "umount" {
            let out = run(imgfs().arg("umount").arg(m.path()));
            assert!(out.status.success(), "{}", text(&out.stderr));
            assert!(!is_mounted(m.path()));
        } else {
            // Mount again on the very same (dead) mountpoint.
            let out = run(imgfs()
                .args(["mount", "--cache-dir"])
                .arg(cache.path())
                .arg(&archive)
                .arg(m.path()));
            assert!(out.status.success(), "{}", text(&out.stderr));
            assert!(std::fs::read_dir(m.path()).is_ok());
            m.umount();
        }
    }
}

/// A user other than root mounts a tar archive too (through fusermount3), sees what GNU
/// tar extracts of it (names, types, modes, owners, links, sizes, times and link targets, as
/// GNU find shows that user both trees), and unmounts it.
#[test]
fn unprivileged_user_mounts_a_tar() {
    let user = common::test_user();
    let work = TempDir::new("imgfs-user");
    let _ = Command::new("chmod").arg("0777").arg(work.path()).status();
    let archive = work.path().join("image.tar");
    std::fs::copy(fixture_archives().join("ustar.tar"), &archive).unwrap();
    let _ = Command::new("chmod").arg("0644").arg(&archive).status();
    let truth = work.path().join("truth");
    extract_with_gnu_tar(&archive, &truth);
    let mnt = work.path().join("mnt");
    // What the user sees of a tree: every entry below the root that the modes let it reach.
    let list = |root: &Path, out: &str| {
        format!(
            "cd {root} && find . -mindepth 1 -printf '%P|%y|%m|%U|%G|%n|%s|%T@|%l\\n' \
             2>/dev/null | LC_ALL=C sort > {out}",
            root = root.display(),
            out = work.path().join(out).display(),
        )
    };
    let script = format!(
        "set -e; mkdir {mnt}; {imgfs} mount --cache-dir {cache} {archive} {mnt}; \
         ({mine}) || true; {imgfs} umount {mnt}; ({theirs}) || true",
        imgfs = env!("CARGO_BIN_EXE_imgfs"),
        cache = work.path().join("cache").display(),
        archive = archive.display(),
        mnt = mnt.display(),
        mine = list(&mnt, "listing"),
        theirs = list(&truth, "truth-listing"),
    );
    let out = run(common::as_user(user).args(["sh", "-c", &script]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A directory's size is the disk's under the extraction (imgfs gives 4096), left out.
    let rows = |file: &str| -> BTreeSet<Vec<u8>> {
        let data = std::fs::read(work.path().join(file)).unwrap();
        data.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut fields: Vec<&[u8]> = l.split(|&b| b == b'|').collect();
                if fields.get(1) == Some(&&b"d"[..]) {
                    fields[6] = b"(directory)";
                }
                fields.join(&b'|')
            })
            .collect()
    };
    let (listing, expected) = (rows("listing"), rows("truth-listing"));
    assert!(expected.len() > 1000, "{} entries", expected.len());
    let differ: Vec<String> = listing
        .symmetric_difference(&expected)
        .take(20)
        .map(|l| text(l))
        .collect();
    assert!(
        differ.is_empty(),
        "the user's view differs from GNU tar's extraction in:\n{}",
        differ.join("\n")
    );
    assert!(!is_mounted(&mnt));
}
