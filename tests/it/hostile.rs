//! Hostile and broken archives through real mounts: each case of tests/it/hostile/archives.rs
//! either gives a safe tree (checked entry by entry, and against GNU tar where tar accepts
//! the archive) or one clear error line, with nothing mounted and nothing left in the cache.
//! Then the sizes: a million entries, and one directory of 200,000.

pub(crate) mod archives;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

use crate::common::{
    CompareOptions, TempDir, compare_trees_with, extract_with_gnu_tar, imgfs, is_mounted, run, text,
};
use archives::{Case, Check, Expect, Header, Tar};

fn mount(archive: &Path, cache: &Path, mnt: &Path) -> Output {
    run(imgfs()
        .args(["mount", "--cache-dir"])
        .arg(cache)
        .arg(archive)
        .arg(mnt))
}

fn umount(mnt: &Path) {
    let out = run(imgfs().arg("umount").arg(mnt));
    assert!(out.status.success(), "umount: {}", text(&out.stderr));
}

/// Every entry under `root` as `TYPE PATH` (find's %y letters), symlinks with ` -> TARGET`,
/// sorted; never following a link.
fn listing(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let ft = meta.file_type();
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_dir() {
                "d"
            } else if ft.is_symlink() {
                "l"
            } else if ft.is_char_device() {
                "c"
            } else if ft.is_block_device() {
                "b"
            } else if ft.is_fifo() {
                "p"
            } else if ft.is_socket() {
                "s"
            } else {
                "f"
            };
            if ft.is_symlink() {
                let target = std::fs::read_link(e.path()).unwrap();
                out.push(format!("l {rel} -> {}", target.display()));
            } else {
                out.push(format!("{kind} {rel}"));
            }
            if ft.is_dir() {
                walk(&e.path(), &rel, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    out.sort();
    out
}

fn check(mnt: &Path, case: &str, path: &str, c: &Check) {
    let p = mnt.join(path);
    let meta = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{case}: {path}: {e}"));
    match c {
        Check::Content(want) => {
            let got = std::fs::read(&p).unwrap_or_else(|e| panic!("{case}: read {path}: {e}"));
            assert_eq!(got, *want, "{case}: content of {path}");
        }
        Check::Nlink(n) => assert_eq!(meta.nlink(), *n, "{case}: nlink of {path}"),
        Check::Uid(u) => assert_eq!(meta.uid(), *u, "{case}: uid of {path}"),
        Check::Mtime(t) => assert_eq!(meta.mtime(), *t, "{case}: mtime of {path}"),
        Check::Mode(m) => assert_eq!(meta.mode(), *m, "{case}: mode of {path}"),
        Check::CannotOpen => assert!(
            std::fs::File::open(&p).is_err(),
            "{case}: {path} opened on a nodev mount"
        ),
    }
}

/// No entry of the cache is left half-built: every entry directory is complete.
fn assert_cache_clean(cache: &Path, case: &str) {
    let Ok(entries) = std::fs::read_dir(cache.join("images")) else {
        return;
    };
    for e in entries.flatten() {
        assert!(
            e.path().join("complete").exists(),
            "{case}: half-built cache entry {}",
            e.path().display()
        );
    }
}

fn try_case(case: &Case, work: &Path) {
    let archive = work.join(format!("{}.tar", case.name));
    std::fs::write(&archive, &case.bytes).unwrap();
    let cache = TempDir::new("imgfs-hostile-cache");
    let mnt = TempDir::new("imgfs-hostile-mnt");
    let out = mount(&archive, cache.path(), mnt.path());
    let err = text(&out.stderr);
    match &case.expect {
        Expect::Refused(what) => {
            assert!(!out.status.success(), "{}: mounted", case.name);
            assert_eq!(err.lines().count(), 1, "{}: {err}", case.name);
            for w in what {
                assert!(err.contains(w), "{}: no {w:?} in {err}", case.name);
            }
            assert!(!is_mounted(mnt.path()), "{}: left mounted", case.name);
        }
        Expect::Tree {
            tree,
            checks,
            warnings,
            gnu_tar_agrees,
        } => {
            assert!(out.status.success(), "{}: {err}", case.name);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                assert_eq!(listing(mnt.path()), *tree, "{}", case.name);
                for (path, c) in checks {
                    check(mnt.path(), case.name, path, c);
                }
                for w in warnings {
                    assert!(err.contains(w), "{}: no warning {w:?} in {err}", case.name);
                }
                if *gnu_tar_agrees {
                    let x = TempDir::new("imgfs-hostile-tar");
                    extract_with_gnu_tar(&archive, x.path());
                    let opts = CompareOptions {
                        skip_root_meta: true,
                        ..Default::default()
                    };
                    let diffs = compare_trees_with(x.path(), mnt.path(), &opts);
                    assert!(diffs.is_empty(), "{}: {diffs:#?}", case.name);
                }
            }));
            umount(mnt.path());
            if let Err(p) = result {
                std::panic::resume_unwind(p);
            }
        }
    }
    assert_cache_clean(cache.path(), case.name);
}

#[test]
fn every_hostile_archive_gives_a_safe_tree_or_one_clear_error() {
    let work = TempDir::new("imgfs-hostile");
    let cases = archives::cases();
    let names: BTreeSet<_> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    for case in &cases {
        try_case(case, work.path());
    }
}

/// Streams `n` headers through `write` without building the archive in memory.
fn write_members(
    out: &mut impl Write,
    n: usize,
    mut name: impl FnMut(usize) -> String,
) -> std::io::Result<()> {
    for i in 0..n {
        let h = Header::new(name(i).as_bytes(), b'0', 0);
        out.write_all(&Tar::default().header(&h, b"").0)?;
    }
    Ok(())
}

/// A million entries (1,000 directories of 1,000 files) and one directory of 200,000: the
/// mount answers for all of them, by name and by listing.
#[test]
fn a_million_entries_and_a_directory_of_200k() {
    let work = TempDir::new("imgfs-huge");
    let archive = work.path().join("huge.tar");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&archive).unwrap());
        write_members(&mut f, 1_000_000, |i| {
            format!("d{}/f{}", i / 1000, i % 1000)
        })
        .unwrap();
        write_members(&mut f, 200_000, |i| format!("wide/e{i}")).unwrap();
        f.write_all(&[0u8; 1024]).unwrap();
    }
    let cache = TempDir::new("imgfs-huge-cache");
    let mnt = TempDir::new("imgfs-huge-mnt");
    let out = mount(&archive, cache.path(), mnt.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let m = mnt.path();
        let top = std::fs::read_dir(m).unwrap().count();
        assert_eq!(top, 1001, "top-level entries");
        let wide = std::fs::read_dir(m.join("wide")).unwrap().count();
        assert_eq!(wide, 200_000, "entries of the wide directory");
        for i in (0..200_000).step_by(9_973) {
            assert!(m.join(format!("wide/e{i}")).is_file(), "wide/e{i}");
        }
        assert!(!m.join("wide/e200000").exists());
        let mut files = 0;
        for d in 0..1000 {
            files += std::fs::read_dir(m.join(format!("d{d}"))).unwrap().count();
        }
        assert_eq!(files, 1_000_000, "files under d*/");
        assert!(m.join("d999/f999").is_file());
        let mode = std::fs::metadata(m.join("d0/f0"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }));
    umount(mnt.path());
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
