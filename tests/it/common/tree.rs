//! The trees every test compares: GNU tar's extraction of an archive (the truth of most tests)
//! and an entry-by-entry comparison of two trees on every property a mount shows — type, mode,
//! owner, times to the nanosecond, xattrs, hard-link groups, sizes, contents, symlink targets
//! and device numbers. A comparison gives one line per difference, so a failure says all of
//! what differs, not the first thing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::require;

/// Extract `archive` into `dest` (created if needed) with the reference
/// command: `tar --xattrs --xattrs-include='*' --same-owner --numeric-owner
/// -p --delay-directory-restore -xf ARCHIVE -C DEST`. Panics with tar's
/// stderr on failure.
///
/// `--delay-directory-restore` makes GNU tar set directory metadata after all
/// entries are extracted. Without it, an archive that lists a directory's
/// entry, then unrelated entries, and its children only later (bsdtar writes
/// all directories of a level first) leaves that directory with the
/// extraction time as mtime instead of the archived one.
#[track_caller]
pub fn extract_with_gnu_tar(archive: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap_or_else(|e| panic!("create {}: {e}", dest.display()));
    let out = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--same-owner",
            "--numeric-owner",
            "-p",
            "--delay-directory-restore",
            "-xf",
        ])
        .arg(archive)
        .arg("-C")
        .arg(dest)
        .output()
        .unwrap_or_else(|e| panic!("cannot run GNU tar: {e}"));
    require(
        out.status.success(),
        &format!(
            "GNU tar failed to extract {} ({}): {}",
            archive.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    );
}

/// Printable form of raw name bytes: ASCII as-is, everything else `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

fn show(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        "\".\"".to_string()
    } else {
        format!("\"{}\"", escape(rel.as_os_str().as_bytes()))
    }
}

/// What [`compare_trees_with`] leaves out.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Ignore the root directory's own mode, uid, gid, mtime and xattrs.
    pub skip_root_meta: bool,
    /// Relative paths whose mode, uid, gid, mtime and xattrs are ignored:
    /// only "exists with the same file type" is checked (synthesized parents).
    pub ignore_meta: BTreeSet<PathBuf>,
    /// Relative paths whose mtime alone is ignored.
    pub ignore_mtime: BTreeSet<PathBuf>,
    /// Relative paths of `expected` that `actual` must not have (entries of a layer format,
    /// such as eStargz's TOC, that the reference unpacker writes out and a mount hides).
    pub hidden: BTreeSet<PathBuf>,
    /// `actual`'s mtimes are `expected`'s rounded to the second, half away from zero, with no
    /// nanoseconds (what an eStargz TOC keeps of them).
    pub mtime_rounded: bool,
    /// At most this many difference lines, then one "... and N more" line.
    pub max_lines: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            skip_root_meta: false,
            ignore_meta: BTreeSet::new(),
            ignore_mtime: BTreeSet::new(),
            hidden: BTreeSet::new(),
            mtime_rounded: false,
            max_lines: 50,
        }
    }
}

/// Compare two trees entry by entry (lstat, symlinks not followed); one line
/// per difference, empty when they match.
pub fn compare_trees(expected: &Path, actual: &Path) -> Vec<String> {
    compare_trees_with(expected, actual, &CompareOptions::default())
}

/// Panic with the report when the trees differ.
#[track_caller]
pub fn assert_trees_equal(expected: &Path, actual: &Path, opts: &CompareOptions) {
    let diffs = compare_trees_with(expected, actual, opts);
    if !diffs.is_empty() {
        panic!(
            "tree {} differs from truth {}:\n  {}",
            actual.display(),
            expected.display(),
            diffs.join("\n  ")
        );
    }
}

fn kind(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_char_device() {
        "char device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

/// All entries of a tree by relative path ("" is the root), plus walk errors.
fn walk(root: &Path, errors: &mut Vec<String>, side: &str) -> BTreeMap<PathBuf, Metadata> {
    let mut out = BTreeMap::new();
    match fs::symlink_metadata(root) {
        Ok(m) => {
            out.insert(PathBuf::new(), m);
        }
        Err(e) => {
            errors.push(format!("{side} root {}: cannot lstat: {e}", root.display()));
            return out;
        }
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                errors.push(format!("{side} {}: cannot read directory: {e}", show(&rel)));
                continue;
            }
        };
        for ent in rd {
            let ent = match ent {
                Ok(e) => e,
                Err(e) => {
                    errors.push(format!("{side} {}: readdir error: {e}", show(&rel)));
                    break;
                }
            };
            let child = rel.join(ent.file_name());
            match fs::symlink_metadata(root.join(&child)) {
                Ok(m) => {
                    if m.is_dir() {
                        stack.push(child.clone());
                    }
                    out.insert(child, m);
                }
                Err(e) => errors.push(format!("{side} {}: cannot lstat: {e}", show(&child))),
            }
        }
    }
    out
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path with NUL byte")
}

/// All xattrs of `p` (not following symlinks), name -> value.
pub fn xattrs(p: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let c = cpath(p);
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 1024];
    let len = loop {
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(out),
            _ => return Err(e),
        }
    };
    for name in buf[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("xattr name with NUL");
        let mut val = vec![0u8; 256];
        loop {
            let n = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    val.as_mut_ptr().cast(),
                    val.len(),
                )
            };
            if n >= 0 {
                val.truncate(n as usize);
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                val.resize(val.len() * 4, 0);
            } else {
                return Err(io::Error::new(
                    e.kind(),
                    format!("lgetxattr {}: {e}", escape(name)),
                ));
            }
        }
        out.insert(name.to_vec(), val);
    }
    Ok(out)
}

/// First differing byte offset of two files, streaming; None when equal.
fn first_content_diff(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let mut fa = File::open(a)?;
    let mut fb = File::open(b)?;
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            return Ok(Some(off + i as u64));
        }
        if na != nb {
            return Ok(Some(off + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        off += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn fmt_xattr(v: &[u8]) -> String {
    format!("\"{}\"", escape(v))
}

fn link_groups(tree: &BTreeMap<PathBuf, Metadata>) -> HashMap<(u64, u64), BTreeSet<PathBuf>> {
    let mut g: HashMap<(u64, u64), BTreeSet<PathBuf>> = HashMap::new();
    for (p, m) in tree {
        if !m.is_dir() {
            g.entry((m.dev(), m.ino())).or_default().insert(p.clone());
        }
    }
    g
}

fn fmt_set(s: &BTreeSet<PathBuf>) -> String {
    let v: Vec<String> = s.iter().map(|p| show(p)).collect();
    format!("{{{}}}", v.join(", "))
}

/// Compare with options; see [`CompareOptions`].
pub fn compare_trees_with(expected: &Path, actual: &Path, opts: &CompareOptions) -> Vec<String> {
    let mut d = Vec::new();
    let exp = walk(expected, &mut d, "expected");
    let act = walk(actual, &mut d, "actual");
    let ge = link_groups(&exp);
    let ga = link_groups(&act);

    // Names present on one side only; descendants of a missing/extra
    // directory are not listed again.
    let mut skip: Option<PathBuf> = None;
    for p in &opts.hidden {
        if act.contains_key(p) {
            d.push(format!("{}: present in actual, should be hidden", show(p)));
        }
    }
    for (p, side, what) in exp
        .keys()
        .filter(|p| !act.contains_key(*p) && !opts.hidden.contains(*p))
        .map(|p| (p, &exp, "missing in actual"))
        .chain(
            act.keys()
                .filter(|p| !exp.contains_key(*p))
                .map(|p| (p, &act, "extra in actual")),
        )
    {
        if let Some(s) = &skip
            && p.starts_with(s)
        {
            continue;
        }
        let m = &side[p];
        d.push(format!("{}: {what} ({})", show(p), kind(m)));
        if m.is_dir() {
            skip = Some(p.clone());
        }
    }

    for (p, e) in &exp {
        let Some(a) = act.get(p) else { continue };
        let ep = expected.join(p);
        let ap = actual.join(p);
        let name = show(p);
        if kind(e) != kind(a) {
            d.push(format!(
                "{name}: file type: expected {}, actual {}",
                kind(e),
                kind(a)
            ));
            continue;
        }
        let meta_ignored =
            opts.ignore_meta.contains(p) || (p.as_os_str().is_empty() && opts.skip_root_meta);
        if !meta_ignored {
            if e.mode() & 0o7777 != a.mode() & 0o7777 {
                d.push(format!(
                    "{name}: mode: expected {:04o}, actual {:04o}",
                    e.mode() & 0o7777,
                    a.mode() & 0o7777
                ));
            }
            if e.uid() != a.uid() {
                d.push(format!(
                    "{name}: uid: expected {}, actual {}",
                    e.uid(),
                    a.uid()
                ));
            }
            if e.gid() != a.gid() {
                d.push(format!(
                    "{name}: gid: expected {}, actual {}",
                    e.gid(),
                    a.gid()
                ));
            }
            let want = if opts.mtime_rounded {
                (e.mtime() + i64::from(e.mtime_nsec() >= 500_000_000), 0)
            } else {
                (e.mtime(), e.mtime_nsec())
            };
            if !opts.ignore_mtime.contains(p) && want != (a.mtime(), a.mtime_nsec()) {
                d.push(format!(
                    "{name}: mtime: expected {}.{:09}, actual {}.{:09}",
                    e.mtime(),
                    e.mtime_nsec(),
                    a.mtime(),
                    a.mtime_nsec()
                ));
            }
            match (xattrs(&ep), xattrs(&ap)) {
                (Ok(xe), Ok(xa)) => {
                    for (k, v) in &xe {
                        match xa.get(k) {
                            None => {
                                d.push(format!("{name}: xattr {} missing in actual", escape(k)))
                            }
                            Some(w) if w != v => d.push(format!(
                                "{name}: xattr {}: expected {}, actual {}",
                                escape(k),
                                fmt_xattr(v),
                                fmt_xattr(w)
                            )),
                            _ => {}
                        }
                    }
                    for k in xa.keys().filter(|k| !xe.contains_key(*k)) {
                        d.push(format!("{name}: xattr {} extra in actual", escape(k)));
                    }
                }
                (Err(err), _) => d.push(format!("{name}: expected: cannot list xattrs: {err}")),
                (_, Err(err)) => d.push(format!("{name}: actual: cannot list xattrs: {err}")),
            }
        }
        if e.is_dir() {
            continue;
        }
        if e.nlink() != a.nlink() {
            d.push(format!(
                "{name}: nlink: expected {}, actual {}",
                e.nlink(),
                a.nlink()
            ));
        }
        let mut oe = ge[&(e.dev(), e.ino())].clone();
        let mut oa = ga[&(a.dev(), a.ino())].clone();
        oe.remove(p);
        oa.remove(p);
        if oe != oa {
            d.push(format!(
                "{name}: hard link group: expected {}, actual {}",
                fmt_set(&oe),
                fmt_set(&oa)
            ));
        }
        let t = e.file_type();
        if (t.is_file() || t.is_symlink()) && e.size() != a.size() {
            d.push(format!(
                "{name}: size: expected {}, actual {}",
                e.size(),
                a.size()
            ));
        }
        if t.is_file() {
            match first_content_diff(&ep, &ap) {
                Ok(None) => {}
                Ok(Some(off)) => d.push(format!("{name}: content differs at byte {off}")),
                Err(err) => d.push(format!("{name}: cannot compare content: {err}")),
            }
        } else if t.is_symlink() {
            match (fs::read_link(&ep), fs::read_link(&ap)) {
                (Ok(te), Ok(ta)) if te != ta => d.push(format!(
                    "{name}: symlink target: expected \"{}\", actual \"{}\"",
                    escape(te.as_os_str().as_bytes()),
                    escape(ta.as_os_str().as_bytes())
                )),
                (Ok(_), Ok(_)) => {}
                (Err(err), _) | (_, Err(err)) => {
                    d.push(format!("{name}: cannot read symlink: {err}"))
                }
            }
        } else if (t.is_char_device() || t.is_block_device()) && e.rdev() != a.rdev() {
            let (em, en) = (libc::major(e.rdev()), libc::minor(e.rdev()));
            let (am, an) = (libc::major(a.rdev()), libc::minor(a.rdev()));
            d.push(format!(
                "{name}: rdev: expected {em},{en}, actual {am},{an}"
            ));
        }
    }

    if d.len() > opts.max_lines {
        let more = d.len() - opts.max_lines;
        d.truncate(opts.max_lines);
        d.push(format!("... and {more} more differences"));
    }
    d
}
