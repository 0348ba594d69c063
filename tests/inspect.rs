//! `imgfs ls`, `cat`, `stat`, `find` and `inspect`, which answer from the index without a
//! mount, compared with GNU coreutils and findutils of the image itself run (chroot) on a
//! mount of the same image — which the mount tests compare with `tar -x` — and with dockerd.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{DEBIAN_IMAGE, TempDir, fixtures_dir, imgfs, require_docker, run, text};

/// The cache the run tests fill too: the image is exported once for both.
fn cache() -> PathBuf {
    let dir = fixtures_dir().join("run-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `imgfs CMD --cache-dir CACHE ARGS...` with TZ=UTC (times print in local time).
fn imgfs_cmd(cmd: &str, args: &[&str]) -> Output {
    run(imgfs()
        .arg(cmd)
        .arg("--cache-dir")
        .arg(cache())
        .args(args)
        .env("TZ", "UTC"))
}

/// The image mounted read-only, unmounted when dropped.
struct Mounted(TempDir);

impl Mounted {
    fn new() -> Mounted {
        require_docker();
        let dir = TempDir::new("imgfs-inspect-mnt");
        let out = imgfs_cmd("mount", &[DEBIAN_IMAGE, dir.path().to_str().unwrap()]);
        assert!(out.status.success(), "mount: {}", text(&out.stderr));
        Mounted(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// A program of the image, run chrooted into the mount, in the C locale and UTC.
    fn chroot(&self, args: &[&str]) -> Output {
        run(Command::new("chroot")
            .arg(self.path())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LC_ALL", "C")
            .env("TZ", "UTC"))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = run(imgfs().arg("umount").arg("--lazy").arg(self.path()));
    }
}

/// Asserts that imgfs and the image's own tool agree on stdout and exit status.
#[track_caller]
fn assert_same(ours: &Output, theirs: &Output, what: &str) {
    assert_eq!(
        text(&ours.stdout),
        text(&theirs.stdout),
        "{what}: stdout differs (stderr: {} / {})",
        text(&ours.stderr),
        text(&theirs.stderr)
    );
    assert_eq!(
        ours.status.code(),
        theirs.status.code(),
        "{what}: exit status differs (stderr: {} / {})",
        text(&ours.stderr),
        text(&theirs.stderr)
    );
}

#[test]
fn ls_matches_gnu_ls() {
    let m = Mounted::new();
    let cases: &[&[&str]] = &[
        &["/"],
        &["-a", "/etc"],
        &["-l", "/usr/bin"],
        &["-la", "/etc"],
        &["-lR", "/etc/apt"],
        &["-R", "/usr/lib/python3.11/json"],
        &["-ld", "/bin", "/tmp", "/usr/bin/python3"],
        &["-l", "/bin"],
        &["/bin"],
        &[
            "-l",
            "/etc/passwd",
            "/usr/share/doc/python3",
            "/etc/os-release",
        ],
        &["-l", "/dev", "/var/log"],
        &["/usr/bin/python3", "/nonexistent", "/etc/apt"],
    ];
    for args in cases {
        let ours = imgfs_cmd("ls", &[&[DEBIAN_IMAGE][..], args].concat());
        let theirs = m.chroot(&[&["ls", "--time-style=long-iso"][..], args].concat());
        assert_same(&ours, &theirs, &format!("ls {}", args.join(" ")));
    }
    let missing = imgfs_cmd("ls", &[DEBIAN_IMAGE, "/nonexistent"]);
    assert_eq!(
        text(&missing.stderr),
        "imgfs ls: cannot access '/nonexistent': No such file or directory\n"
    );
}

#[test]
fn cat_matches_the_files_and_follows_symlinks_inside_the_image() {
    let m = Mounted::new();
    // /etc/os-release is a relative symlink; /usr/bin/python3 one to python3.11.
    for path in [
        "/etc/passwd",
        "/etc/os-release",
        "/usr/bin/python3",
        "/usr/lib/python3.11/os.py",
    ] {
        let ours = imgfs_cmd("cat", &[DEBIAN_IMAGE, path]);
        assert!(ours.status.success(), "cat {path}: {}", text(&ours.stderr));
        let truth = std::fs::read(m.path().join(&path[1..])).unwrap();
        assert!(
            ours.stdout == truth,
            "cat {path}: other bytes than the mount's"
        );
    }
    let two = imgfs_cmd(
        "cat",
        &[DEBIAN_IMAGE, "/etc/hostname", "/etc/debian_version"],
    );
    let mut truth = std::fs::read(m.path().join("etc/hostname")).unwrap_or_default();
    truth.extend(std::fs::read(m.path().join("etc/debian_version")).unwrap());
    assert_eq!(two.stdout, truth);
    // A directory and a missing file: named on stderr, the rest still printed, exit 1.
    let bad = imgfs_cmd(
        "cat",
        &[DEBIAN_IMAGE, "/etc", "/nope", "/etc/debian_version"],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        text(&bad.stderr),
        "imgfs cat: /etc: Is a directory\nimgfs cat: /nope: No such file or directory\n"
    );
    assert_eq!(
        bad.stdout,
        std::fs::read(m.path().join("etc/debian_version")).unwrap()
    );
    // An absolute symlink resolves inside the image, never on the host.
    let theirs = m.chroot(&["cat", "/etc/mtab"]);
    let ours = imgfs_cmd("cat", &[DEBIAN_IMAGE, "/etc/mtab"]);
    assert_eq!(ours.status.code(), theirs.status.code());
}

#[test]
fn stat_matches_gnu_stat() {
    let m = Mounted::new();
    let format = "%n|%N|%s|%b|%B|%f|%a|%A|%u|%U|%g|%G|%h|%i|%Y|%y|%F|%t|%T|%-6s|%06a|%5u|%%";
    let paths = [
        "/",
        "/etc/passwd",
        "/bin",
        "/usr/bin/python3",
        "/usr/bin/passwd",
        "/tmp",
        "/etc/os-release",
        "/var/lib/dpkg/status",
        "/nonexistent",
    ];
    for deref in [false, true] {
        let mut args = vec!["-c", format];
        if deref {
            args.push("-L");
        }
        args.extend(paths);
        let ours = imgfs_cmd("stat", &[&[DEBIAN_IMAGE][..], &args].concat());
        let theirs = m.chroot(&[&["stat"][..], &args].concat());
        assert_same(&ours, &theirs, &format!("stat {}", args.join(" ")));
    }
    let plain = imgfs_cmd("stat", &[DEBIAN_IMAGE, "/etc/passwd"]);
    assert!(plain.status.success());
    let shown = text(&plain.stdout);
    assert!(
        shown.contains("File: '/etc/passwd'") && shown.contains("Uid: (    0/    root)"),
        "{shown}"
    );
}

#[test]
fn find_matches_gnu_find() {
    let m = Mounted::new();
    let cases: &[&[&str]] = &[
        &["/etc"],
        &["/usr", "-name", "python3*"],
        &["/usr/lib", "-type", "l"],
        &["/", "-type", "d", "-name", "*dpkg*"],
        &["/usr/bin/", "-name", "[a-c]*", "-type", "f"],
        &["/bin", "/nonexistent", "/etc/apt"],
    ];
    let sorted =
        |o: &Output| -> BTreeSet<String> { text(&o.stdout).lines().map(str::to_string).collect() };
    for args in cases {
        let ours = imgfs_cmd("find", &[&[DEBIAN_IMAGE][..], args].concat());
        let theirs = m.chroot(&[&["find"][..], args].concat());
        assert_eq!(
            sorted(&ours),
            sorted(&theirs),
            "find {}: {}",
            args.join(" "),
            text(&ours.stderr)
        );
        assert_eq!(
            ours.status.code(),
            theirs.status.code(),
            "find {}",
            args.join(" ")
        );
    }
    // The long spelling works as well.
    let long = imgfs_cmd("find", &[DEBIAN_IMAGE, "/usr", "--name", "python3*"]);
    let short = imgfs_cmd("find", &[DEBIAN_IMAGE, "/usr", "-name", "python3*"]);
    assert_eq!(long.stdout, short.stdout);
    assert!(!long.stdout.is_empty());
}

#[test]
fn inspect_reports_the_daemons_config_and_the_trees_counts() {
    let m = Mounted::new();
    let out = imgfs_cmd("inspect", &["--json", DEBIAN_IMAGE]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let docker = run(Command::new("docker").args(["image", "inspect", DEBIAN_IMAGE]));
    let docker: serde_json::Value = serde_json::from_slice(&docker.stdout).unwrap();
    let docker = &docker[0];
    assert_eq!(ours["Id"], docker["Id"]);
    assert_eq!(ours["RepoTags"], docker["RepoTags"]);
    assert_eq!(ours["Config"]["Env"], docker["Config"]["Env"]);
    assert_eq!(ours["Config"]["Cmd"], docker["Config"]["Cmd"]);
    // Inodes by type, counted on the mount with find (hard links once).
    let count = |kind: &str| -> u64 {
        let o = run(Command::new("find")
            .arg(m.path())
            .args(["-type", kind, "-printf", "%i\n"]));
        text(&o.stdout).lines().collect::<BTreeSet<_>>().len() as u64
    };
    let e = &ours["Entries"];
    assert_eq!(e["files"], count("f"));
    assert_eq!(e["directories"], count("d"));
    assert_eq!(e["symlinks"], count("l"));
    let blobs = ours["Cache"]["Blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), 1, "an export is one blob: {blobs:?}");
    let archive = PathBuf::from(blobs[0].as_str().unwrap());
    assert_eq!(
        ours["Cache"]["BlobBytes"],
        std::fs::metadata(&archive).unwrap().len()
    );
    // The human form names the same things.
    let human = imgfs_cmd("inspect", &[DEBIAN_IMAGE]);
    let h = text(&human.stdout);
    assert!(h.contains(docker["Id"].as_str().unwrap()), "{h}");
    assert!(h.contains(&format!("References: {DEBIAN_IMAGE}")), "{h}");
    assert!(h.contains(&format!("{} files", e["files"])), "{h}");
}

#[test]
fn missing_images_and_closed_pipes() {
    require_docker();
    let out = imgfs_cmd("ls", &["imgfs-test/no-such-image:1", "/"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("imgfs-test/no-such-image:1"), "{err}");
    // `| head -1`: ends quietly when the reader goes away.
    let piped = run(Command::new("bash").arg("-c").arg(format!(
        "'{}' find --cache-dir '{}' {DEBIAN_IMAGE} / | head -1",
        env!("CARGO_BIN_EXE_imgfs"),
        cache().display()
    )));
    assert_eq!(text(&piped.stdout), "/\n");
    assert!(text(&piped.stderr).is_empty(), "{}", text(&piped.stderr));
}

/// An unprivileged user with a cache of their own: no root, no FUSE, no daemon (a tar
/// file), and the same answers as root gets.
#[test]
fn inspection_needs_neither_root_nor_fuse() {
    let user = common::test_user();
    let tar = common::fixture_archives().join("pax.tar");
    let cache = TempDir::new("imgfs-user-cache");
    let owned = run(Command::new("chown").arg(user).arg(cache.path()));
    assert!(owned.status.success());
    let args = |c: &Path| -> Vec<String> {
        vec![
            "ls".into(),
            "-lR".into(),
            "--cache-dir".into(),
            c.display().to_string(),
            tar.display().to_string(),
            "/".into(),
        ]
    };
    let theirs = run(common::as_user(user)
        .args(["env", "TZ=UTC", env!("CARGO_BIN_EXE_imgfs")])
        .args(args(cache.path())));
    assert!(theirs.status.success(), "{}", text(&theirs.stderr));
    let root_cache = TempDir::new("imgfs-root-cache");
    let ours = run(imgfs().args(args(root_cache.path())).env("TZ", "UTC"));
    assert_eq!(text(&theirs.stdout), text(&ours.stdout));
    assert!(
        text(&theirs.stdout).contains("files:"),
        "{}",
        text(&theirs.stdout)
    );
}

/// With the daemon out of reach, an image the cache holds is still found by the reference it
/// was exported under; one it does not hold fails naming the daemon.
#[test]
fn inspection_without_the_daemon_uses_the_cache() {
    let _m = Mounted::new(); // makes sure the cache holds the image
    let away = |args: &[&str]| {
        run(imgfs()
            .args(args)
            .arg("--cache-dir")
            .arg(cache())
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock"))
    };
    let out = away(&["cat", DEBIAN_IMAGE, "/etc/debian_version"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let theirs = imgfs_cmd("cat", &[DEBIAN_IMAGE, "/etc/debian_version"]);
    assert_eq!(out.stdout, theirs.stdout);
    let missing = away(&["ls", "imgfs-test/not-cached:1", "/"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr)
            .contains("cannot reach the Docker daemon at unix:///nonexistent/docker.sock"),
        "{}",
        text(&missing.stderr)
    );
}
