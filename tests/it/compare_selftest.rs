//! Self-tests of the tree comparator: two trees that differ in exactly one
//! property must produce a report naming it, identical trees none.

use crate::common::{CompareOptions, TempDir, compare_trees, compare_trees_with, require};
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

const T0: i64 = 1_000_000_000;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn set_xattr(p: &Path, name: &str, val: &[u8]) {
    let n = CString::new(name).unwrap();
    let r =
        unsafe { libc::lsetxattr(c(p).as_ptr(), n.as_ptr(), val.as_ptr().cast(), val.len(), 0) };
    assert_eq!(
        r,
        0,
        "lsetxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn mknod(p: &Path, mode: libc::mode_t, major: u32, minor: u32) {
    let r = unsafe { libc::mknod(c(p).as_ptr(), mode, libc::makedev(major, minor)) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Every entry's mtime (symlinks' own included) to T0, children first.
fn stamp(p: &Path) {
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap() {
            stamp(&e.unwrap().path());
        }
    }
    set_mtime(p, T0, 0);
}

/// The base tree: files, a sub-directory, a symlink, a hard-link pair,
/// a device, a FIFO, xattrs and a 3 MiB file.
fn build(root: &Path) {
    fs::write(root.join("file"), b"hello\n").unwrap();
    chmod(&root.join("file"), 0o644);
    set_xattr(&root.join("file"), "user.test", b"hello");
    fs::create_dir(root.join("dir")).unwrap();
    chmod(&root.join("dir"), 0o755);
    fs::write(root.join("dir/inner"), b"inner\n").unwrap();
    symlink("../file", root.join("dir/link")).unwrap();
    fs::write(root.join("h1"), b"linked\n").unwrap();
    fs::hard_link(root.join("h1"), root.join("dir/h2")).unwrap();
    fs::create_dir(root.join("same")).unwrap();
    chmod(&root.join("same"), 0o755);
    for (f, l) in [("a", "b"), ("c", "d")] {
        fs::write(root.join("same").join(f), b"same\n").unwrap();
        chmod(&root.join("same").join(f), 0o644);
        fs::hard_link(root.join("same").join(f), root.join("same").join(l)).unwrap();
    }
    mknod(&root.join("null"), libc::S_IFCHR | 0o666, 1, 3);
    mknod(&root.join("fifo"), libc::S_IFIFO | 0o644, 0, 0);
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(root.join("big"), big).unwrap();
    chmod(root, 0o755);
}

struct Pair {
    _tmp: TempDir,
    exp: PathBuf,
    act: PathBuf,
}

/// Two equal trees; `mutate` runs on the actual one before timestamps are
/// set, so only the mutation itself (not its side effect on directory
/// mtimes) differs.
fn pair(mutate: impl FnOnce(&Path)) -> Pair {
    require(
        unsafe { libc::geteuid() } == 0,
        "comparator self-tests need root (mknod, chown)",
    );
    let tmp = TempDir::new("imgfs-cmp");
    let exp = tmp.path().join("expected");
    let act = tmp.path().join("actual");
    for d in [&exp, &act] {
        fs::create_dir(d).unwrap();
        build(d);
    }
    mutate(&act);
    stamp(&exp);
    stamp(&act);
    Pair {
        _tmp: tmp,
        exp,
        act,
    }
}

#[track_caller]
fn assert_found(p: &Pair, needles: &[&str]) {
    let d = compare_trees(&p.exp, &p.act);
    for n in needles {
        assert!(
            d.iter().any(|l| l.contains(n)),
            "no difference line containing {n:?} in {d:#?}"
        );
    }
}

#[test]
fn identical_trees_have_no_differences() {
    let p = pair(|_| {});
    assert_eq!(compare_trees(&p.exp, &p.act), Vec::<String>::new());
}

#[test]
fn finds_mode() {
    assert_found(
        &pair(|a| chmod(&a.join("file"), 0o600)),
        &["\"file\": mode: expected 0644, actual 0600"],
    );
}

#[test]
fn finds_setuid_and_sticky_bits() {
    let p = pair(|a| {
        chmod(&a.join("file"), 0o4644);
        chmod(&a.join("dir"), 0o1755);
    });
    assert_found(
        &p,
        &[
            "\"file\": mode: expected 0644, actual 4644",
            "\"dir\": mode: expected 0755, actual 1755",
        ],
    );
}

#[test]
fn finds_uid_and_gid() {
    let p = pair(|a| std::os::unix::fs::lchown(a.join("file"), Some(1234), Some(5678)).unwrap());
    assert_found(
        &p,
        &[
            "\"file\": uid: expected 0, actual 1234",
            "\"file\": gid: expected 0, actual 5678",
        ],
    );
}

#[test]
fn finds_mtime_nanoseconds() {
    let p = pair(|_| {});
    set_mtime(&p.act.join("file"), T0, 1);
    assert_found(
        &p,
        &["\"file\": mtime: expected 1000000000.000000000, actual 1000000000.000000001"],
    );
}

#[test]
fn finds_directory_and_symlink_mtime() {
    let p = pair(|_| {});
    set_mtime(&p.act.join("dir"), T0 + 1, 0);
    set_mtime(&p.act.join("dir/link"), T0 - 1, 0);
    assert_found(&p, &["\"dir\": mtime", "\"dir/link\": mtime"]);
}

#[test]
fn root_metadata_can_be_excluded() {
    let p = pair(|_| {});
    set_mtime(&p.act, T0, 5);
    chmod(&p.act, 0o700);
    assert_found(&p, &["\".\": mtime", "\".\": mode"]);
    let opts = CompareOptions {
        skip_root_meta: true,
        ..Default::default()
    };
    assert_eq!(
        compare_trees_with(&p.exp, &p.act, &opts),
        Vec::<String>::new()
    );
}

#[test]
fn paths_can_be_excluded_from_metadata_and_mtime() {
    let p = pair(|a| chmod(&a.join("dir"), 0o700));
    set_mtime(&p.act.join("dir"), T0 + 7, 0);
    set_mtime(&p.act.join("file"), T0 + 7, 0);
    let opts = CompareOptions {
        ignore_meta: [PathBuf::from("dir")].into(),
        ignore_mtime: [PathBuf::from("file")].into(),
        ..Default::default()
    };
    assert_eq!(
        compare_trees_with(&p.exp, &p.act, &opts),
        Vec::<String>::new()
    );
}

#[test]
fn finds_content_same_size() {
    assert_found(
        &pair(|a| fs::write(a.join("file"), b"hellO\n").unwrap()),
        &["\"file\": content differs at byte 4"],
    );
}

#[test]
fn finds_content_at_end_of_big_file() {
    let p = pair(|a| {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(a.join("big"))
            .unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"\xff", (3 << 20) - 1).unwrap();
    });
    assert_found(
        &p,
        &[&format!(
            "\"big\": content differs at byte {}",
            (3 << 20) - 1
        )],
    );
}

#[test]
fn finds_size() {
    assert_found(
        &pair(|a| fs::write(a.join("file"), b"hello\n!").unwrap()),
        &["\"file\": size: expected 6, actual 7"],
    );
}

#[test]
fn finds_xattr_value_missing_and_extra() {
    let p = pair(|a| {
        set_xattr(&a.join("file"), "user.test", b"hellO");
        set_xattr(&a.join("dir"), "trusted.x", b"1");
    });
    assert_found(
        &p,
        &[
            "\"file\": xattr user.test: expected \"hello\", actual \"hellO\"",
            "\"dir\": xattr trusted.x extra in actual",
        ],
    );
    let q = pair(|a| {
        let n = CString::new("user.test").unwrap();
        assert_eq!(
            unsafe { libc::lremovexattr(c(&a.join("file")).as_ptr(), n.as_ptr()) },
            0
        );
    });
    assert_found(&q, &["\"file\": xattr user.test missing in actual"]);
}

#[test]
fn finds_broken_hard_link_group() {
    // Same content, mode and mtime, but dir/h2 is a copy instead of a link.
    let p = pair(|a| {
        fs::remove_file(a.join("dir/h2")).unwrap();
        fs::write(a.join("dir/h2"), b"linked\n").unwrap();
        chmod(&a.join("dir/h2"), 0o644);
    });
    assert_found(
        &p,
        &[
            "\"h1\": hard link group: expected {\"dir/h2\"}, actual {}",
            "\"dir/h2\": nlink: expected 2, actual 1",
        ],
    );
}

#[test]
fn finds_hard_links_regrouped() {
    // Expected: same/a = same/b and same/c = same/d; actual: a = c and b = d.
    // Contents, modes and link counts are all equal; only the groups differ.
    let p = pair(|a| {
        let s = a.join("same");
        for n in ["b", "c", "d"] {
            fs::remove_file(s.join(n)).unwrap();
        }
        fs::hard_link(s.join("a"), s.join("c")).unwrap();
        fs::write(s.join("b"), b"same\n").unwrap();
        chmod(&s.join("b"), 0o644);
        fs::hard_link(s.join("b"), s.join("d")).unwrap();
    });
    let d = compare_trees(&p.exp, &p.act);
    assert!(d.iter().all(|l| l.contains("hard link group")), "{d:#?}");
    assert_found(
        &p,
        &["\"same/a\": hard link group: expected {\"same/b\"}, actual {\"same/c\"}"],
    );
}

#[test]
fn finds_symlink_target() {
    let p = pair(|a| {
        fs::remove_file(a.join("dir/link")).unwrap();
        symlink("../fil3", a.join("dir/link")).unwrap();
    });
    assert_found(
        &p,
        &["\"dir/link\": symlink target: expected \"../file\", actual \"../fil3\""],
    );
}

#[test]
fn finds_rdev() {
    let p = pair(|a| {
        fs::remove_file(a.join("null")).unwrap();
        mknod(&a.join("null"), libc::S_IFCHR | 0o666, 1, 5);
    });
    assert_found(&p, &["\"null\": rdev: expected 1,3, actual 1,5"]);
}

#[test]
fn finds_file_type() {
    let p = pair(|a| {
        fs::remove_file(a.join("fifo")).unwrap();
        fs::write(a.join("fifo"), b"").unwrap();
        chmod(&a.join("fifo"), 0o644);
    });
    assert_found(
        &p,
        &["\"fifo\": file type: expected fifo, actual regular file"],
    );
}

#[test]
fn finds_extra_and_missing_names_with_raw_bytes() {
    let p = pair(|a| {
        fs::write(a.join(OsStr::from_bytes(b"x\xff\nz")), b"").unwrap();
        fs::remove_file(a.join("dir/inner")).unwrap();
    });
    assert_found(
        &p,
        &[
            "\"x\\xff\\nz\": extra in actual (regular file)",
            "\"dir/inner\": missing in actual (regular file)",
        ],
    );
}

#[test]
fn missing_directory_is_reported_once() {
    let p = pair(|a| fs::remove_dir_all(a.join("dir")).unwrap());
    let d = compare_trees(&p.exp, &p.act);
    assert!(
        d.iter()
            .any(|l| l == "\"dir\": missing in actual (directory)"),
        "{d:#?}"
    );
    assert!(
        !d.iter().any(|l| l.contains("dir/inner")),
        "descendants listed: {d:#?}"
    );
}

#[test]
fn report_is_capped() {
    let p = pair(|a| {
        for i in 0..200 {
            fs::write(a.join(format!("extra{i:03}")), b"").unwrap();
        }
    });
    let d = compare_trees(&p.exp, &p.act);
    assert_eq!(d.len(), 51, "{d:#?}");
    assert_eq!(d[50], "... and 150 more differences");
}

#[test]
fn hidden_paths_must_be_absent_and_only_they() {
    let p = pair(|a| fs::remove_file(a.join("file")).unwrap());
    let hidden = CompareOptions {
        hidden: [PathBuf::from("file")].into(),
        ..Default::default()
    };
    assert_eq!(
        compare_trees_with(&p.exp, &p.act, &hidden),
        Vec::<String>::new()
    );
    let shown = pair(|_| {});
    let d = compare_trees_with(&shown.exp, &shown.act, &hidden);
    assert!(
        d.iter().any(|l| l.contains("\"file\": present in actual")),
        "{d:#?}"
    );
    let other = CompareOptions {
        hidden: [PathBuf::from("dir")].into(),
        ..Default::default()
    };
    let d = compare_trees_with(&p.exp, &p.act, &other);
    assert!(d.iter().any(|l| l.contains("\"file\": missing")), "{d:#?}");
}

#[test]
fn rounded_mtimes_must_round_half_up_with_no_nanoseconds() {
    let rounded = CompareOptions {
        mtime_rounded: true,
        ..Default::default()
    };
    for (exp, act, same) in [
        ((T0, 600_000_000), (T0 + 1, 0), true),
        ((T0, 499_999_999), (T0, 0), true),
        ((T0, 500_000_000), (T0 + 1, 0), true),
        ((T0, 600_000_000), (T0, 0), false),
        ((T0, 0), (T0, 1), false),
    ] {
        let p = pair(|_| {});
        set_mtime(&p.exp.join("file"), exp.0, exp.1);
        set_mtime(&p.act.join("file"), act.0, act.1);
        let d = compare_trees_with(&p.exp, &p.act, &rounded);
        assert_eq!(d.is_empty(), same, "{exp:?} against {act:?}: {d:#?}");
    }
}
