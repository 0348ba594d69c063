//! Shared helpers for the imgfs integration tests.
//!
//! The truth for every archive is GNU tar's own extraction of it
//! ([`extract_with_gnu_tar`]); [`compare_trees`] then checks an imgfs mount
//! against that tree. Tests never skip: missing prerequisites fail loudly
//! through [`require`].
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where cached fixtures live: `$IMGFS_FIXTURES` or `/var/tmp/imgfs-fixtures`.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("IMGFS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/imgfs-fixtures"))
}

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fail the test loudly when a prerequisite is not met. Tests never skip.
#[track_caller]
pub fn require(cond: bool, reason: &str) {
    if !cond {
        panic!("REQUIREMENT NOT MET: {reason}");
    }
}

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

/// Build (or reuse, see the script's header) the fixture archives and return
/// their directory: `fixtures_dir()/archives`.
#[track_caller]
pub fn fixture_archives() -> PathBuf {
    let dir = fixtures_dir().join("archives");
    let script = repo_root().join("tests/fixtures/make-archives.sh");
    let out = Command::new(&script)
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    require(
        out.status.success(),
        &format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    dir
}

/// Relative paths listed one per line in `file` (e.g. docker-like.synthesized).
pub fn read_path_list(file: &Path) -> Vec<PathBuf> {
    let data = fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| PathBuf::from(OsString::from_vec(l.to_vec())))
        .collect()
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
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

/// Bytes as text, for messages.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `cond` every 50 ms; fails the test after 20 s, naming `what`.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The file `name` of the one image entry in an imgfs cache directory.
#[track_caller]
pub fn cache_file(cache: &Path, name: &str) -> PathBuf {
    fs::read_dir(cache.join("images"))
        .unwrap_or_else(|e| panic!("{}: {e}", cache.display()))
        .flatten()
        .map(|e| e.path().join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no {name} in the cache {}", cache.display()))
}

/// An unprivileged account for the tests, made when missing.
#[track_caller]
pub fn test_user() -> &'static str {
    make_user("imgfs-test")
}

/// The unprivileged account `name`, made when missing.
#[track_caller]
pub fn make_user(name: &'static str) -> &'static str {
    let exists = Command::new("id")
        .arg(name)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        let made = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", name])
            .status();
        require(
            made.is_ok_and(|s| s.success()),
            &format!("useradd of the unprivileged test user {name}"),
        );
    }
    name
}

/// The Debian bookworm + python3 image that tests/fixtures/make-debian-image.sh imports.
pub const DEBIAN_IMAGE: &str = "imgfs-test/debian-python:bookworm";

pub fn require_docker() {
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    require(
        ok.is_ok_and(|s| s.success()),
        "a running dockerd (tests/run.sh starts one via contrib/setup.sh)",
    );
    let img = Command::new("docker")
        .args(["image", "inspect", DEBIAN_IMAGE])
        .output();
    require(
        img.is_ok_and(|o| o.status.success()),
        &format!("the image {DEBIAN_IMAGE} (tests/fixtures/make-debian-image.sh builds it)"),
    );
}

/// Containers created for exports that are still in dockerd.
pub fn export_containers() -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=io.imgfs.export-pid"])
        .output()
        .expect("run docker ps");
    text(&out.stdout).lines().map(str::to_string).collect()
}

/// `export` events dockerd emitted since `since` (a unix time).
pub fn export_events(since: &str) -> usize {
    let until = now();
    let out = Command::new("docker")
        .args([
            "events",
            "--since",
            since,
            "--until",
            &until,
            "--filter",
            "event=export",
            "--format",
            "{{.ID}}",
        ])
        .output()
        .expect("run docker events");
    text(&out.stdout).lines().filter(|l| !l.is_empty()).count()
}

/// The time now, as docker's `--since` takes it (seconds with nanoseconds).
pub fn now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// The imgfs binary under test.
pub fn imgfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgfs"))
}

/// Runs `cmd` to completion, capturing its output.
pub fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Whether `path` is a mountpoint now, from the kernel's mount table.
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// `setpriv` set to run what follows as `user` (uid, gid and groups), environment reset.
pub fn as_user(user: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        user,
        "--regid",
        user,
        "--init-groups",
        "--reset-env",
    ]);
    c
}

/// The cache the `imgfs run` tests share, in a directory any user can use. It lives with the
/// fixtures and is reused by later runs (a cache is safe to share), so the suite neither
/// re-exports the images every time nor leaves copies of them behind.
pub fn shared_run_cache() -> PathBuf {
    let dir = fixtures_dir().join("run-cache");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let _ = Command::new("chmod").arg("1777").arg(&dir).status();
    dir
}

/// The layered-image fixtures of tests/fixtures/make-layered.sh (built once, then reused), as
/// its `fixtures.env` names them.
pub struct Layered {
    vars: BTreeMap<String, String>,
}

impl Layered {
    /// The value of `key` in fixtures.env.
    #[track_caller]
    pub fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in the layered fixtures' fixtures.env"))
    }

    /// The path `key` names, which must exist.
    #[track_caller]
    pub fn path(&self, key: &str) -> PathBuf {
        let p = PathBuf::from(self.var(key));
        require(
            p.exists(),
            &format!("fixture {key} = {} (make-layered.sh)", p.display()),
        );
        p
    }
}

/// Builds (or reuses) the layered-image fixtures; once per test process.
#[track_caller]
pub fn layered_fixtures() -> &'static Layered {
    static LAYERED: std::sync::OnceLock<Layered> = std::sync::OnceLock::new();
    LAYERED.get_or_init(|| make_fixtures("make-layered.sh", "layered/fixtures.env"))
}

/// Builds (or reuses) the eStargz fixture (tests/fixtures/make-estargz.sh: the layered image
/// converted by ctr-remote, and umoci's unpacking of it); once per test process.
#[track_caller]
pub fn estargz_fixtures() -> &'static Layered {
    static ESTARGZ: std::sync::OnceLock<Layered> = std::sync::OnceLock::new();
    ESTARGZ.get_or_init(|| {
        layered_fixtures();
        make_fixtures("make-estargz.sh", "estargz/fixtures.env")
    })
}

/// Runs the fixture script `script` and reads the `KEY=VALUE` lines it wrote to `env`.
#[track_caller]
fn make_fixtures(script: &str, env: &str) -> Layered {
    let script = repo_root().join("tests/fixtures").join(script);
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    require(
        out.status.success(),
        &format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    let env = fixtures_dir().join(env);
    let data = fs::read_to_string(&env).unwrap_or_else(|e| panic!("{}: {e}", env.display()));
    let vars = data
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Layered { vars }
}

/// Runs `cmd` to completion like [`run`], but kills it and fails the test after `limit`.
#[track_caller]
pub fn run_within(cmd: &mut Command, limit: std::time::Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(limit) {
        Ok(status) => status.expect("wait for the child"),
        Err(_) => {
            // SAFETY: kill(2) with a pid this test spawned and has not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    };
    std::process::Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// A free TCP port on 127.0.0.1 now (another process may take it before it is used).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// An HTTP response: status, headers (lowercase names) and body.
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A plain HTTP/1.0 GET of `path` from `addr` (HOST:PORT); None when nothing answers.
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Option<HttpReply> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .ok()?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(HttpReply {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    })
}

/// Base64 (standard alphabet, padded), for the `auth` field of credential files.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A credentials file naming `user:password` for `registry` (HOST:PORT): the format of both
/// `~/.docker/config.json` and containers' `$REGISTRY_AUTH_FILE`.
pub fn write_auth_file(path: &Path, registry: &str, user: &str, password: &str) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    let auth = base64(format!("{user}:{password}").as_bytes());
    fs::write(
        path,
        format!("{{\"auths\":{{\"{registry}\":{{\"auth\":\"{auth}\"}}}}}}\n"),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `skopeo copy` with `args`; fails the test with skopeo's error.
#[track_caller]
pub fn skopeo_copy(args: &[&str]) {
    require(
        Path::new("/usr/bin/skopeo").exists(),
        "Debian's skopeo package (contrib/setup.sh installs it)",
    );
    let out = run(Command::new("skopeo").args(["copy", "-q"]).args(args));
    assert!(
        out.status.success(),
        "skopeo copy {args:?}: {}",
        text(&out.stderr)
    );
}

/// Debian's docker-registry (2.8) on a free loopback port with its own storage directory;
/// killed when dropped.
pub struct Registry {
    child: std::process::Child,
    /// HOST:PORT it listens on.
    pub addr: String,
    dir: TempDir,
    creds: Option<(String, String)>,
}

impl Registry {
    /// A registry anyone may read and write.
    #[track_caller]
    pub fn start() -> Registry {
        Registry::launch(None)
    }

    /// A registry that asks for `user:password` (HTTP basic, checked against an htpasswd
    /// file: registry 2.8 takes bcrypt entries only).
    #[track_caller]
    pub fn start_with_htpasswd(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user.to_string(), password.to_string())))
    }

    #[track_caller]
    fn launch(creds: Option<(String, String)>) -> Registry {
        require(
            Path::new("/usr/bin/docker-registry").exists(),
            "Debian's docker-registry package (contrib/setup.sh installs it)",
        );
        let dir = TempDir::new("imgfs-registry");
        let mut auth = String::new();
        if let Some((user, password)) = &creds {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output();
            let out = match out {
                Ok(o) if o.status.success() => o.stdout,
                _ => panic!(
                    "REQUIREMENT NOT MET: htpasswd -B (apache2-utils; contrib/setup.sh installs it)"
                ),
            };
            let file = dir.path().join("htpasswd");
            fs::write(&file, out).expect("write htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: imgfs-test\n    path: {}\n",
                file.display()
            );
        }
        // A port found free may be taken before the registry binds it: try a few.
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
                    dir.path().join("data").display()
                ),
            )
            .expect("write registry config");
            let log = File::create(dir.path().join("registry.log")).expect("registry log");
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let start = std::time::Instant::now();
            loop {
                if let Some(reply) = http_get(&addr, "/v2/", &[]) {
                    assert!(
                        reply.status == 200 || reply.status == 401,
                        "the registry on {addr} answers /v2/ with {}",
                        reply.status
                    );
                    return Registry {
                        child,
                        addr,
                        dir,
                        creds,
                    };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(20),
                    "the registry does not answer on {addr}: {}",
                    fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        panic!(
            "docker-registry did not start: {}",
            fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// `docker://HOST:PORT/NAME` for `name` (NAME[:TAG|@DIGEST]).
    pub fn reference(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.addr)
    }

    /// Pushes a skopeo source (`oci:DIR:REF`, `oci-archive:FILE`, ...) as `name` (NAME:TAG),
    /// every platform of an index included; returns [`Registry::reference`] of it.
    #[track_caller]
    pub fn push(&self, source: &str, name: &str) -> String {
        let dest = self.reference(name);
        // --preserve-digests: skopeo would otherwise reuse a blob of the same content in
        // another compression that this registry already holds (say zstd:chunked for gzip).
        let mut args = vec!["--all", "--preserve-digests", "--dest-tls-verify=false"];
        let creds = self.creds.as_ref().map(|(u, p)| format!("{u}:{p}"));
        if let Some(c) = &creds {
            args.extend(["--dest-creds", c.as_str()]);
        }
        args.extend([source, dest.as_str()]);
        skopeo_copy(&args);
        dest
    }

    /// The storage root (its `docker/registry/v2/...` tree).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file holding the blob `digest` (sha256:HEX) in the registry's storage.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Starts the registry again after [`kill`](Self::kill), on the same port with the same
    /// storage.
    #[track_caller]
    pub fn restart(&mut self) {
        let config = self.dir.path().join("config.yml");
        let log = File::options()
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .expect("registry log");
        let start = std::time::Instant::now();
        loop {
            self.child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log.try_clone().expect("dup log"))
                .spawn()
                .expect("start docker-registry");
            while start.elapsed() < std::time::Duration::from_secs(20) {
                if http_get(&self.addr, "/v2/", &[]).is_some() {
                    return;
                }
                if self.child.try_wait().ok().flatten().is_some() {
                    break; // the port is not free yet: try again
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "the registry did not come back on {}",
                self.addr
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Stops the registry now (as if it died).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What [`Front`] adds in front of a registry (see tests/fixtures/registry-front.py).
#[derive(Clone, Debug, Default)]
pub struct FrontOptions {
    /// Token authentication with these basic credentials at `/token`.
    pub credentials: Option<(String, String)>,
    /// Seconds a token stays valid.
    pub token_ttl: Option<f64>,
    /// Wait between checking a manifest request's token and answering it.
    pub manifest_delay_ms: u64,
    /// Most bytes per second of a response body (0: no limit).
    pub rate: u64,
    /// Exit abruptly once this many bytes of blob bodies were sent in all (0: never).
    pub die_after: u64,
    /// How ranged blob requests are answered: `ignore`, `single-only`, `shuffle`, `coalesce`
    /// or `outside` (see the script).
    pub ranges: Option<String>,
    /// Redirect blobs to a second port with signed links that expire.
    pub storage: bool,
    /// The first this many storage links have expired already.
    pub expired_links: u32,
}

/// tests/fixtures/registry-front.py in front of a registry: token authentication, slowness
/// or a death mid-blob; killed when dropped.
pub struct Front {
    child: std::process::Child,
    /// HOST:PORT it listens on.
    pub addr: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Front {
    #[track_caller]
    pub fn start(backend: &str, opts: &FrontOptions) -> Front {
        let python = ["/usr/bin/python3", "/bin/python3"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("python3");
        let dir = TempDir::new("imgfs-front");
        let port_file = dir.path().join("port");
        let log = dir.path().join("front.log");
        let mut cmd = Command::new(python);
        cmd.arg(repo_root().join("tests/fixtures/registry-front.py"))
            .args(["--backend", backend, "--port-file"])
            .arg(&port_file)
            .arg("--log")
            .arg(&log);
        if let Some((user, password)) = &opts.credentials {
            cmd.args(["--user", user, "--password", password]);
        }
        if let Some(ttl) = opts.token_ttl {
            cmd.args(["--token-ttl", &ttl.to_string()]);
        }
        cmd.args(["--manifest-delay-ms", &opts.manifest_delay_ms.to_string()])
            .args(["--rate", &opts.rate.to_string()])
            .args(["--die-after", &opts.die_after.to_string()]);
        if let Some(mode) = &opts.ranges {
            cmd.args(["--ranges", mode]);
        }
        if opts.storage {
            cmd.args([
                "--storage",
                "--expired-links",
                &opts.expired_links.to_string(),
            ]);
        }
        let stderr = File::create(dir.path().join("front.err")).expect("front stderr");
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("REQUIREMENT NOT MET: python3 for the registry front: {e}"));
        let start = std::time::Instant::now();
        let port = loop {
            if let Ok(p) = fs::read_to_string(&port_file) {
                break p.trim().to_string();
            }
            if child.try_wait().ok().flatten().is_some() || start.elapsed().as_secs() > 20 {
                panic!(
                    "the registry front did not start: {}",
                    fs::read_to_string(dir.path().join("front.err")).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        Front {
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    /// The lines it logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// How many logged lines start with `prefix` (`token `, `401 `, `blob-start `, `die `).
    pub fn count(&self, prefix: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a failed fill must not leave in a cache directory: any file, and any directory below
/// the top level (the top-level directories themselves, e.g. `images/`, may stay); the fill
/// locks (`locks/`) aside.
pub fn cache_leftovers(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(cache.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p == cache.join("locks") {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if depth >= 1 {
                    found.push(p.clone());
                }
                stack.push((p, depth + 1));
            } else {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

/// Bytes a tree takes on disk (allocated blocks; a file with several links counted once).
pub fn disk_usage(root: &Path) -> u64 {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert((m.dev(), m.ino())) {
            total += m.blocks() * 512;
        }
        if m.is_dir()
            && let Ok(rd) = fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    total
}

/// The sha256 of a file, as `sha256:HEX`.
#[track_caller]
pub fn sha256_file(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    assert!(out.status.success(), "sha256sum {}", path.display());
    format!(
        "sha256:{}",
        text(&out.stdout).split(' ').next().unwrap_or_default()
    )
}

/// Pids of imgfs servers serving `mountpoint`.
pub fn servers_of(mountpoint: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_server = args.iter().any(|a| *a == b"__serve");
        let status = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = status.split(' ').nth(2) == Some("Z");
        if is_server && !zombie && args.contains(&mountpoint.as_os_str().as_encoded_bytes()) {
            pids.push(pid);
        }
    }
    pids
}
