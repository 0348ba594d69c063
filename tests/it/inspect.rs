//! `imgfs ls`, `cat`, `stat`, `find` and `inspect`, which answer from the index without a
//! mount, compared with the GNU coreutils and findutils of the image itself, run (chroot) on
//! GNU tar's extraction of the same archive, and with dockerd.
//!
//! The Debian image comes as two archives, each compared with its own extraction: the fixture
//! tar that tests/fixtures/make-debian-image.sh imports, which imgfs reads as a file, and the
//! archive dockerd exports of the imported image, which imgfs reads through the daemon. They
//! differ: the import keeps whole seconds of the times only, and an export holds the entries
//! Docker's init layer adds. Two exports differ too, in the times of those entries, which are
//! each container's own; the truth takes them from the export imgfs holds. An export has no
//! entry for its root either, so the truth's root is given what imgfs gives such a directory.
//!
//! What the extracting filesystem decides rather than the archive is left out, each where it
//! shows: inode numbers and allocated blocks (`ls`'s totals, `stat`'s `%i` and `%b`), and the
//! size of directories, which imgfs gives as 4096 and a disk gives as it grows them. All else
//! is compared byte for byte: names and `ls`'s order, types, modes, owners, links, sizes,
//! times to the nanosecond, symlink targets, contents, `find`'s selection, messages and exit
//! status.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, Weak};

use crate::common::{
    DEBIAN_IMAGE, TempDir, docker_export, extract_with_gnu_tar, fixtures_dir, imgfs, require,
    require_docker, run, text,
};

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

/// The fixture archive the daemon's image was imported from.
fn fixture_tar() -> PathBuf {
    let tar = fixtures_dir().join("debian-python.tar");
    require(
        tar.is_file(),
        &format!(
            "{} (tests/fixtures/make-debian-image.sh makes it)",
            tar.display()
        ),
    );
    tar
}

/// The entries Docker's init layer adds to or replaces in every container, and the
/// directories holding them. An export carries the time its container was made on each.
const INIT_LAYER: [&str; 8] = [
    ".dockerenv",
    "dev",
    "dev/console",
    "etc",
    "etc/hostname",
    "etc/hosts",
    "etc/mtab",
    "etc/resolv.conf",
];

/// An image as imgfs is given it, and GNU tar's extraction of the same archive: the truth.
struct Truth {
    image: String,
    dir: TempDir,
}

impl Truth {
    /// The fixture archive, read by imgfs as a file.
    fn fixture() -> Truth {
        let tar = fixture_tar();
        let dir = TempDir::new("imgfs-inspect-truth");
        extract_with_gnu_tar(&tar, &dir.path().join("root"));
        Truth {
            image: tar.display().to_string(),
            dir,
        }
    }

    /// The imported image, read by imgfs through the daemon; the truth is an export of it
    /// made here, apart from imgfs.
    fn daemon() -> Truth {
        let _docker = require_docker();
        // imgfs's own export, made now unless the cache holds it already.
        let inspect = imgfs_cmd("inspect", &["--json", DEBIAN_IMAGE]);
        assert!(inspect.status.success(), "{}", text(&inspect.stderr));
        let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        let theirs = PathBuf::from(inspect["Cache"]["Blobs"][0].as_str().unwrap());

        let dir = TempDir::new("imgfs-inspect-truth");
        let archive = dir.path().join("export.tar");
        docker_export(DEBIAN_IMAGE, &archive);
        let root = dir.path().join("root");
        extract_with_gnu_tar(&archive, &root);
        std::fs::remove_file(&archive).unwrap();

        // The init layer's entries carry the time each export's container was made, so they
        // take their times from the export imgfs holds, as GNU tar reads them there.
        let stamps = dir.path().join("stamps");
        std::fs::create_dir(&stamps).unwrap();
        let out = run(Command::new("tar")
            .args(["--no-recursion", "--delay-directory-restore", "-xf"])
            .arg(&theirs)
            .arg("-C")
            .arg(&stamps)
            .args(INIT_LAYER));
        assert!(
            out.status.success(),
            "tar -x of {}: {}",
            theirs.display(),
            text(&out.stderr)
        );
        for entry in INIT_LAYER {
            touch(
                &root.join(entry),
                &["-r".as_ref(), stamps.join(entry).as_os_str()],
            );
        }
        // An export has no entry for its root; imgfs makes such a directory 0755 root:root
        // with mtime 0, as it does every missing parent (src/index/tree.rs).
        let out = run(Command::new("chmod").arg("0755").arg(&root));
        assert!(out.status.success(), "{}", text(&out.stderr));
        touch(&root, &["-d".as_ref(), "@0".as_ref()]);
        Truth {
            image: DEBIAN_IMAGE.to_string(),
            dir,
        }
    }

    fn image(&self) -> &str {
        &self.image
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A GNU tool of the image, run chrooted into the extraction, in the C locale and UTC.
    fn gnu(&self, args: &[&str]) -> Output {
        run(Command::new("chroot")
            .arg(self.root())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LC_ALL", "C")
            .env("TZ", "UTC"))
    }
}

/// The two archives' truths.
struct Truths {
    fixture: Truth,
    daemon: Truth,
}

impl Truths {
    /// Extracted once for the tests that run at the same time, which only read them, and
    /// removed when the last of those ends.
    fn shared() -> Arc<Truths> {
        static SHARED: Mutex<Weak<Truths>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(truths) = shared.upgrade() {
            return truths;
        }
        let truths = Arc::new(Truths {
            fixture: Truth::fixture(),
            daemon: Truth::daemon(),
        });
        *shared = Arc::downgrade(&truths);
        truths
    }

    fn each(&self) -> [&Truth; 2] {
        [&self.fixture, &self.daemon]
    }
}

/// `touch -h ARGS PATH`: sets the times of `path` itself, a symlink included.
fn touch(path: &Path, args: &[&std::ffi::OsStr]) {
    let out = run(Command::new("touch").arg("-h").args(args).arg(path));
    assert!(
        out.status.success(),
        "touch {}: {}",
        path.display(),
        text(&out.stderr)
    );
}

/// Asserts that imgfs and the image's own tool agree on stdout, as `comparable` gives the two,
/// on stderr, where imgfs names itself before the tool's name, and on the exit status.
#[track_caller]
fn assert_same(
    ours: &Output,
    theirs: &Output,
    what: &str,
    comparable: impl Fn(&str, &str) -> (String, String),
) {
    let (o, t) = comparable(&text(&ours.stdout), &text(&theirs.stdout));
    assert_eq!(o, t, "{what}: stdout differs");
    let named: String = text(&theirs.stderr)
        .lines()
        .map(|l| format!("imgfs {l}\n"))
        .collect();
    assert_eq!(text(&ours.stderr), named, "{what}: stderr differs");
    assert_eq!(
        ours.status.code(),
        theirs.status.code(),
        "{what}: exit status differs"
    );
}

/// Stdout as it is.
fn exact(ours: &str, theirs: &str) -> (String, String) {
    (ours.to_string(), theirs.to_string())
}

/// The size imgfs gives every directory.
const DIR_SIZE: &str = "4096";

/// `ls ARGS` output without what the disk under the extraction decides. The `total` of each
/// listing sums the blocks the disk allocated, where imgfs counts its own. A directory's size
/// is the disk's too: ext4 gives a big one more than 4096, tmpfs and btrfs count its entries.
/// In a listing where the truth's directories take another size — a row's own, or for the
/// arguments that are not directories, the directories named beside them, as GNU ls pads
/// those rows to the widest size of all the arguments — directory sizes are left out of both
/// outputs, and with them the padding of the rows, as the size column's width follows them.
fn ls_comparable(truth: &Truth, args: &[&str]) -> impl Fn(&str, &str) -> (String, String) {
    let paths: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| !a.starts_with('-'))
        .collect();
    let named = text(
        &truth
            .gnu(&[&["stat", "--printf", "%F %s\n"][..], &paths].concat())
            .stdout,
    );
    let other_dir_size = |l: &str| l.strip_prefix("directory ").is_some_and(|n| n != DIR_SIZE);
    let args_differ =
        named.lines().any(|l| !l.starts_with("directory ")) && named.lines().any(other_dir_size);
    move |ours: &str, theirs: &str| {
        // Listings are split by empty lines; the first lists the arguments if any are shown.
        let mut differ = vec![args_differ];
        for line in theirs.lines() {
            match LongRow::parse(line) {
                _ if line.is_empty() => differ.push(false),
                Some(r) if r.is_dir() && r.size != DIR_SIZE => *differ.last_mut().unwrap() = true,
                _ => {}
            }
        }
        let norm = |out: &str| -> String {
            let mut s = String::new();
            let mut listing = 0;
            for line in out.lines() {
                let total = line.strip_prefix("total ");
                match LongRow::parse(line) {
                    _ if line.is_empty() => listing += 1,
                    _ if total.is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) => {
                        s.push_str("total (blocks)")
                    }
                    Some(r) if differ.get(listing) == Some(&true) => {
                        let size = if r.is_dir() { "(directory)" } else { &r.size };
                        s.push_str(&format!("{} {size} {}", r.head.join(" "), r.rest));
                    }
                    _ => s.push_str(line),
                }
                s.push('\n');
            }
            s
        };
        (norm(ours), norm(theirs))
    }
}

/// A row of `ls -l`.
struct LongRow<'a> {
    /// Mode, links, owner and group.
    head: [&'a str; 4],
    /// The size, or a device's `major, minor`.
    size: String,
    /// From the date on.
    rest: &'a str,
}

impl<'a> LongRow<'a> {
    fn parse(line: &'a str) -> Option<LongRow<'a>> {
        let mut words = line
            .split_whitespace()
            .map(|w| (w.as_ptr() as usize - line.as_ptr() as usize, w));
        let mut head = [""; 4];
        for h in &mut head {
            *h = words.next()?.1;
        }
        let mode = head[0].as_bytes();
        let is_mode = mode.len() >= 10
            && b"-dlcbps".contains(&mode[0])
            && mode[1..10].iter().all(|c| b"rwxsStT-".contains(c));
        if !is_mode {
            return None;
        }
        let mut size = words.next()?.1.to_string();
        if size.ends_with(',') {
            size = format!("{size} {}", words.next()?.1);
        }
        let (at, _) = words.next()?;
        Some(LongRow {
            head,
            size,
            rest: &line[at..],
        })
    }

    fn is_dir(&self) -> bool {
        self.head[0].starts_with('d')
    }
}

/// `stat -c` of every case: all of `stat`'s fields but the inode (%i) and the allocated blocks
/// (%b), which are the disk's. The sizes (%s, %-6s) are left out of directories' rows in
/// [`stat_comparable`].
const STAT_FORMAT: &str = "%n|%N|%s|%B|%f|%a|%A|%u|%U|%g|%G|%h|%Y|%y|%F|%t|%T|%-6s|%06a|%5u|%%";

/// `stat` output with the size of directories left out: the disk's under the extraction
/// (ext4 grows big directories past 4096), imgfs's own 4096.
fn stat_comparable(ours: &str, theirs: &str) -> (String, String) {
    let norm = |out: &str| -> String {
        let mut s = String::new();
        for line in out.lines() {
            let mut fields: Vec<&str> = line.split('|').collect();
            if fields.get(14) == Some(&"directory") {
                fields[2] = "(directory)";
                fields[17] = "(directory)";
            }
            s.push_str(&fields.join("|"));
            s.push('\n');
        }
        s
    };
    (norm(ours), norm(theirs))
}

/// `find`'s selection: the order is the directories' own, a disk's hash order in the truth.
fn find_comparable(ours: &str, theirs: &str) -> (String, String) {
    let sorted = |out: &str| -> String {
        let mut lines: Vec<&str> = out.lines().collect();
        lines.sort_unstable();
        lines.iter().map(|l| format!("{l}\n")).collect()
    };
    (sorted(ours), sorted(theirs))
}

#[test]
fn ls_matches_gnu_ls() {
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
    for truth in Truths::shared().each() {
        for args in cases {
            let ours = imgfs_cmd("ls", &[&[truth.image()][..], args].concat());
            let theirs = truth.gnu(&[&["ls", "--time-style=long-iso"][..], args].concat());
            let what = format!("ls {} {}", truth.image(), args.join(" "));
            assert_same(&ours, &theirs, &what, ls_comparable(truth, args));
        }
    }
    let missing = imgfs_cmd("ls", &[DEBIAN_IMAGE, "/nonexistent"]);
    assert_eq!(
        text(&missing.stderr),
        "imgfs ls: cannot access '/nonexistent': No such file or directory\n"
    );
}

#[test]
fn cat_matches_the_files_and_follows_symlinks_inside_the_image() {
    let cases: &[&[&str]] = &[
        &["/etc/passwd"],
        // A relative symlink; one to python3.11.
        &["/etc/os-release"],
        &["/usr/bin/python3"],
        &["/usr/lib/python3.11/os.py"],
        // Absolute symlinks resolve inside the image, never on the host: awk and pager are
        // /etc/alternatives links to /usr/bin/mawk and /bin/more, /bin a link to usr/bin;
        // /etc/mtab points at /proc/mounts, which an image does not hold.
        &["/usr/bin/awk"],
        &["/etc/alternatives/pager"],
        &["/etc/mtab"],
        &["/etc/hostname", "/etc/debian_version"],
        // A directory and a missing file: named on stderr, the rest still printed, exit 1.
        &["/etc", "/nope", "/etc/debian_version"],
    ];
    for truth in Truths::shared().each() {
        for args in cases {
            let ours = imgfs_cmd("cat", &[&[truth.image()][..], args].concat());
            let theirs = truth.gnu(&[&["cat"][..], args].concat());
            let what = format!("cat {} {}", truth.image(), args.join(" "));
            // Bytes first (the binaries are not UTF-8), then stderr and status as text.
            assert!(
                ours.stdout == theirs.stdout,
                "{what}: {} bytes, GNU cat {} bytes",
                ours.stdout.len(),
                theirs.stdout.len()
            );
            assert_same(&ours, &theirs, &what, exact);
        }
    }
    let bad = imgfs_cmd(
        "cat",
        &[DEBIAN_IMAGE, "/etc", "/nope", "/etc/debian_version"],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        text(&bad.stderr),
        "imgfs cat: /etc: Is a directory\nimgfs cat: /nope: No such file or directory\n"
    );
}

#[test]
fn stat_matches_gnu_stat() {
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
    for truth in Truths::shared().each() {
        for deref in [false, true] {
            let mut args = vec!["-c", STAT_FORMAT];
            if deref {
                args.push("-L");
            }
            args.extend(paths);
            let ours = imgfs_cmd("stat", &[&[truth.image()][..], &args].concat());
            let theirs = truth.gnu(&[&["stat"][..], &args].concat());
            let what = format!("stat {} {}", truth.image(), args.join(" "));
            assert_same(&ours, &theirs, &what, stat_comparable);
        }
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
    let cases: &[&[&str]] = &[
        &["/etc"],
        &["/usr", "-name", "python3*"],
        &["/usr/lib", "-type", "l"],
        &["/", "-type", "d", "-name", "*dpkg*"],
        &["/usr/bin/", "-name", "[a-c]*", "-type", "f"],
        &["/bin", "/nonexistent", "/etc/apt"],
    ];
    for truth in Truths::shared().each() {
        for args in cases {
            let ours = imgfs_cmd("find", &[&[truth.image()][..], args].concat());
            let theirs = truth.gnu(&[&["find"][..], args].concat());
            let what = format!("find {} {}", truth.image(), args.join(" "));
            assert_same(&ours, &theirs, &what, find_comparable);
        }
    }
    // The long spelling works as well.
    let long = imgfs_cmd("find", &[DEBIAN_IMAGE, "/usr", "--name", "python3*"]);
    let short = imgfs_cmd("find", &[DEBIAN_IMAGE, "/usr", "-name", "python3*"]);
    assert_eq!(long.stdout, short.stdout);
    assert!(!long.stdout.is_empty());
}

#[test]
fn inspect_reports_the_daemons_config_and_the_trees_counts() {
    let truths = Truths::shared();
    let truth = &truths.daemon;
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
    // Inodes by type, counted in the extraction with GNU find (hard links once).
    let count = |kinds: &[&str]| -> u64 {
        let mut inodes = std::collections::BTreeSet::new();
        for kind in kinds {
            let o = run(Command::new("find")
                .arg(truth.root())
                .args(["-type", kind, "-printf", "%i\n"]));
            assert!(o.status.success(), "{}", text(&o.stderr));
            inodes.extend(text(&o.stdout).lines().map(str::to_string));
        }
        inodes.len() as u64
    };
    let e = &ours["Entries"];
    assert_eq!(e["files"], count(&["f"]));
    assert_eq!(e["directories"], count(&["d"]));
    assert_eq!(e["symlinks"], count(&["l"]));
    assert_eq!(e["other"], count(&["b", "c", "p", "s"]));
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
    let _docker = require_docker();
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
/// file), and the same answers GNU ls gives of GNU tar's extraction of the archive.
#[test]
fn inspection_needs_neither_root_nor_fuse() {
    let user = common::test_user();
    let truth = Truth::fixture();
    let cache = TempDir::new("imgfs-user-cache");
    let owned = run(Command::new("chown").arg(user).arg(cache.path()));
    assert!(owned.status.success());
    let cases: &[&[&str]] = &[
        &["-la", "/etc"],
        &["-lR", "/etc/apt"],
        &["-l", "/usr/bin/python3"],
    ];
    for args in cases {
        let theirs = truth.gnu(&[&["ls", "--time-style=long-iso"][..], args].concat());
        let ours = run(common::as_user(user)
            .args([
                "env",
                "TZ=UTC",
                env!("CARGO_BIN_EXE_imgfs"),
                "ls",
                "--cache-dir",
            ])
            .arg(cache.path())
            .arg(truth.image())
            .args(*args));
        let what = format!("ls {} as {user}", args.join(" "));
        assert_same(&ours, &theirs, &what, ls_comparable(&truth, args));
    }
}

/// With the daemon out of reach, an image the cache holds is still found by the reference it
/// was exported under; one it does not hold fails naming the daemon.
#[test]
fn inspection_without_the_daemon_uses_the_cache() {
    let _docker = require_docker();
    let filled = imgfs_cmd("ls", &[DEBIAN_IMAGE, "/"]);
    assert!(filled.status.success(), "{}", text(&filled.stderr));
    let away = |args: &[&str]| {
        run(imgfs()
            .args(args)
            .arg("--cache-dir")
            .arg(cache())
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock"))
    };
    let out = away(&["cat", DEBIAN_IMAGE, "/etc/debian_version"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The file as GNU tar reads it in the archive the image was imported from.
    let theirs = run(Command::new("tar")
        .arg("-xOf")
        .arg(fixture_tar())
        .arg("./etc/debian_version"));
    assert!(theirs.status.success(), "{}", text(&theirs.stderr));
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
