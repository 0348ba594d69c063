//! Looking into an image without mounting it: `ls`, `cat`, `stat` and `find` answered straight
//! from the index and the archive (no FUSE, no namespaces), and a summary for `inspect`.
//!
//! Paths are resolved inside the image as the kernel would with the image as root (see
//! [`ImageReader::resolve`]), owners are named from the image's own `/etc/passwd` and
//! `/etc/group`, and the output follows GNU coreutils and findutils (`ls -l` with
//! `--time-style=long-iso`), including their exit statuses: what a script expects of them.

pub mod catalog;
pub(crate) mod format;

use std::io::{self, Write};

use crate::image::{Attr, Kind};

use crate::image::ImageReader;
use format::{Names, describe, mode_string};

/// What `imgfs ls` was asked for.
#[derive(Clone, Debug, Default)]
pub struct LsOptions {
    pub long: bool,
    pub all: bool,
    pub recursive: bool,
    pub directory: bool,
}

/// An image opened for inspection, with its owners' names.
pub struct Image<'a> {
    pub fs: &'a ImageReader,
    pub names: Names,
}

impl<'a> Image<'a> {
    /// Reads the image's passwd and group files for owner names.
    pub fn new(fs: &'a ImageReader) -> Image<'a> {
        let text = |p: &str| {
            fs.read_file(p.as_bytes())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Image {
            fs,
            names: Names::parse(&text("/etc/passwd"), &text("/etc/group")),
        }
    }
}

/// Prints an error line the way the coreutils do, under imgfs's name.
fn complain(err: &mut dyn Write, cmd: &str, what: &str) {
    let _ = writeln!(err, "imgfs {cmd}: {what}");
}

/// `a/b` from a directory path and a name, without doubling a slash.
fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The paths asked for, or the image's root when none was.
fn or_root(paths: &[String]) -> Vec<String> {
    if paths.is_empty() {
        vec!["/".into()]
    } else {
        paths.to_vec()
    }
}

/// The exit status of `ls`: 0, 1 (a minor problem, e.g. a subdirectory that cannot be
/// listed) or 2 (a command-line path that cannot be accessed).
pub fn ls(
    img: &Image,
    paths: &[String],
    opts: &LsOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<i32> {
    let paths = or_root(paths);
    let mut status = 0;
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for p in &paths {
        // As GNU ls: a command-line symlink is followed unless -l or -d (or it dangles); a
        // trailing slash always follows, as in the kernel.
        let follow = !(opts.long || opts.directory) || p.ends_with('/');
        let look = |follow| {
            img.fs
                .resolve(p.as_bytes(), follow)
                .and_then(|r| Ok((r, img.fs.metadata(r)?)))
        };
        let found = look(follow).or_else(|e| if follow { look(false) } else { Err(e) });
        let rec = match found {
            Ok(found) => found,
            Err(e) => {
                complain(err, "ls", &format!("cannot access '{p}': {}", describe(&e)));
                status = 2;
                continue;
            }
        };
        if rec.1.kind == Kind::Directory && !opts.directory {
            dirs.push((p.as_bytes().to_vec(), rec.0));
        } else {
            files.push((p.as_bytes().to_vec(), rec.0, rec.1));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    dirs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut first = true;
    if !files.is_empty() {
        let rows: Vec<_> = files
            .into_iter()
            .map(|(name, rec, attr)| Row { name, rec, attr })
            .collect();
        // As GNU ls: the columns of the paths given also fit the directories among them.
        let measured: Vec<Row> = dirs
            .iter()
            .filter_map(|(name, rec)| {
                let attr = img.fs.metadata(*rec).ok()?;
                Some(Row {
                    name: name.clone(),
                    rec: *rec,
                    attr,
                })
            })
            .collect();
        let widths = Widths::of(img, rows.iter().chain(&measured));
        print_rows(img, &rows, widths, opts.long, out)?;
        first = false;
    }
    // As GNU ls: directories get a `name:` line unless one path was asked for.
    let header = paths.len() > 1 || opts.recursive;
    for (path, rec) in dirs {
        list_dir(
            img,
            &path,
            rec,
            opts,
            header,
            &mut first,
            &mut status,
            out,
            err,
        )?;
    }
    Ok(status)
}

struct Row {
    name: Vec<u8>,
    rec: u32,
    attr: Attr,
}

#[allow(clippy::too_many_arguments)]
fn list_dir(
    img: &Image,
    path: &[u8],
    rec: u32,
    opts: &LsOptions,
    header: bool,
    first: &mut bool,
    status: &mut i32,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<()> {
    if !*first {
        out.write_all(b"\n")?;
    }
    *first = false;
    if header {
        out.write_all(path)?;
        out.write_all(b":\n")?;
    }
    let children = match img.fs.children(rec) {
        Ok(c) => c,
        Err(e) => {
            let shown = String::from_utf8_lossy(path);
            complain(
                err,
                "ls",
                &format!("cannot open directory '{shown}': {}", describe(&e)),
            );
            *status = (*status).max(1);
            return Ok(());
        }
    };
    let mut entries: Vec<(Vec<u8>, u32)> = Vec::with_capacity(children.len() + 2);
    if opts.all {
        let parent = img.fs.resolve(&join(path, b".."), false).unwrap_or(rec);
        entries.push((b".".to_vec(), rec));
        entries.push((b"..".to_vec(), parent));
    }
    entries.extend(
        children
            .into_iter()
            .filter(|(name, _)| opts.all || !name.starts_with(b"."))
            .map(|(name, r)| (name.to_vec(), r)),
    );
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rows = Vec::with_capacity(entries.len());
    for (name, r) in entries {
        match img.fs.metadata(r).map_err(std::io::Error::from) {
            Ok(attr) => rows.push(Row { name, rec: r, attr }),
            Err(e) => {
                let shown = String::from_utf8_lossy(&join(path, &name)).into_owned();
                complain(
                    err,
                    "ls",
                    &format!("cannot access '{shown}': {}", describe(&e)),
                );
                *status = (*status).max(1);
            }
        }
    }
    if opts.long {
        let blocks: u64 = rows.iter().map(|r| r.attr.blocks).sum();
        writeln!(out, "total {}", blocks.div_ceil(2))?;
    }
    print_rows(img, &rows, Widths::of(img, rows.iter()), opts.long, out)?;
    if opts.recursive {
        for row in &rows {
            if row.attr.kind == Kind::Directory && row.name != b"." && row.name != b".." {
                let sub = join(path, &row.name);
                list_dir(img, &sub, row.rec, opts, true, first, status, out, err)?;
            }
        }
    }
    Ok(())
}

fn is_device(a: &Attr) -> bool {
    matches!(a.kind, Kind::CharDevice | Kind::BlockDevice)
}

/// Column widths of an `ls -l` listing: links, owner, group, size, and a device's major and
/// minor numbers.
#[derive(Clone, Copy, Default)]
struct Widths {
    links: usize,
    user: usize,
    group: usize,
    size: usize,
    major: usize,
    minor: usize,
}

impl Widths {
    fn of<'r>(img: &Image, rows: impl Iterator<Item = &'r Row>) -> Widths {
        let mut w = Widths::default();
        for r in rows {
            let a = &r.attr;
            w.links = w.links.max(a.nlink.to_string().len());
            w.user = w.user.max(img.names.user(a.uid).len());
            w.group = w.group.max(img.names.group(a.gid).len());
            if is_device(a) {
                let dev = u64::from(a.rdev);
                w.major = w.major.max(libc::major(dev).to_string().len());
                w.minor = w.minor.max(libc::minor(dev).to_string().len());
            } else {
                w.size = w.size.max(a.size.to_string().len());
            }
        }
        if w.major > 0 {
            w.size = w.size.max(w.major + 2 + w.minor);
        }
        w
    }
}

/// One name per line, or `ls -l` lines with aligned columns.
fn print_rows(
    img: &Image,
    rows: &[Row],
    w: Widths,
    long: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    if !long {
        for r in rows {
            out.write_all(&r.name)?;
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    for r in rows {
        let a = &r.attr;
        let size = if is_device(a) {
            let dev = u64::from(a.rdev);
            format!(
                "{:>major$}, {:>minor$}",
                libc::major(dev),
                libc::minor(dev),
                major = w.major,
                minor = w.minor
            )
        } else {
            a.size.to_string()
        };
        write!(
            out,
            "{} {:>links$} {:<user$} {:<group$} {:>size_w$} {} ",
            mode_string(a.kind, a.perm),
            a.nlink,
            img.names.user(a.uid),
            img.names.group(a.gid),
            size,
            format::long_iso(a.mtime),
            links = w.links,
            user = w.user,
            group = w.group,
            size_w = w.size,
        )?;
        out.write_all(&r.name)?;
        if a.kind == Kind::Symlink
            && let Ok(target) = img.fs.readlink(r.rec)
        {
            out.write_all(b" -> ")?;
            out.write_all(target)?;
        }
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Bytes copied per read by `cat`.
const CAT_CHUNK: u32 = 1 << 20;

/// The exit status of `cat`: 1 if any path could not be read, each named on stderr.
/// A failure to write the output ends it at once and is returned.
pub fn cat(
    img: &Image,
    paths: &[String],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<i32> {
    let mut status = 0;
    for p in paths {
        let found = img.fs.resolve(p.as_bytes(), true).and_then(|rec| {
            let attr = img.fs.metadata(rec)?;
            if attr.kind == Kind::Directory {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            Ok((rec, attr.size))
        });
        let (rec, size) = match found {
            Ok(f) => f,
            Err(e) => {
                complain(err, "cat", &format!("{p}: {}", describe(&e)));
                status = 1;
                continue;
            }
        };
        let mut offset = 0;
        while offset < size {
            let chunk = match img
                .fs
                .read_at(rec, offset, CAT_CHUNK)
                .map_err(std::io::Error::from)
            {
                Ok(c) if c.is_empty() => break,
                Ok(c) => c,
                Err(e) => {
                    complain(err, "cat", &format!("{p}: {}", describe(&e)));
                    status = 1;
                    break;
                }
            };
            offset += chunk.len() as u64;
            out.write_all(&chunk)?;
        }
    }
    Ok(status)
}

/// `stat`'s default layout, in the format language of `-c`.
const STAT_DEFAULT: &str = "  File: %N\n  Size: %-10s\tBlocks: %-10b IO Block: %-6o %F\n Inode: %-11i Links: %h\nAccess: (%04a/%A)  Uid: (%5u/%8U)   Gid: (%5g/%8G)\nModify: %y\n";

/// The exit status of `stat`: 1 if any path could not be looked up. `format` is GNU stat's
/// `-c` language (`%n %N %s %b %B %o %f %a %A %u %U %g %G %h %i %Y %y %F %t %T %%`), a
/// newline added after each path.
pub fn stat(
    img: &Image,
    paths: &[String],
    follow: bool,
    format: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<i32> {
    let mut status = 0;
    for p in paths {
        let found = img
            .fs
            .resolve(p.as_bytes(), follow)
            .and_then(|rec| Ok((rec, img.fs.metadata(rec)?)));
        match found {
            Ok((rec, attr)) => {
                let text = match format {
                    Some(f) => {
                        let mut t = format::stat_format(img, p, rec, &attr, f);
                        t.push('\n');
                        t
                    }
                    None => format::stat_format(img, p, rec, &attr, STAT_DEFAULT),
                };
                out.write_all(text.as_bytes())?;
            }
            Err(e) => {
                complain(
                    err,
                    "stat",
                    &format!("cannot statx '{p}': {}", describe(&e)),
                );
                status = 1;
            }
        }
    }
    Ok(status)
}

/// What `imgfs find` keeps.
#[derive(Clone, Debug, Default)]
pub struct FindOptions {
    /// `-name GLOB`: the last component matches the shell pattern.
    pub name: Option<String>,
    /// `-type C`: f, d, l, b, c, p or s.
    pub kind: Option<char>,
}

fn type_letter(kind: Kind) -> char {
    match kind {
        Kind::RegularFile => 'f',
        Kind::Directory => 'd',
        Kind::Symlink => 'l',
        Kind::BlockDevice => 'b',
        Kind::CharDevice => 'c',
        Kind::NamedPipe => 'p',
        Kind::Socket => 's',
    }
}

/// Whether `name` matches the shell pattern `glob`, as find's -name does (fnmatch(3)).
fn matches(glob: &std::ffi::CStr, name: &[u8]) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    crate::sys::term::fnmatch(glob, &name)
}

/// The exit status of `find`: 1 if a starting point could not be looked up. Lists each
/// starting point and everything under it, depth first, symlinks not followed.
pub fn find(
    img: &Image,
    paths: &[String],
    opts: &FindOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<i32> {
    let paths = or_root(paths);
    let glob = match &opts.name {
        Some(g) => Some(
            std::ffi::CString::new(g.as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "-name: a NUL byte"))?,
        ),
        None => None,
    };
    let mut status = 0;
    for p in &paths {
        let rec = match img.fs.resolve(p.as_bytes(), false) {
            Ok(r) => r,
            Err(e) => {
                complain(err, "find", &format!("'{p}': {}", describe(&e)));
                status = 1;
                continue;
            }
        };
        // Depth first, children in name order.
        let mut stack = vec![(p.as_bytes().to_vec(), rec)];
        while let Some((path, rec)) = stack.pop() {
            let attr = img.fs.metadata(rec)?;
            let base = path
                .rsplit(|&b| b == b'/')
                .find(|c| !c.is_empty())
                .unwrap_or(b"/");
            let wanted = opts.kind.is_none_or(|k| k == type_letter(attr.kind))
                && glob.as_deref().is_none_or(|g| matches(g, base));
            if wanted {
                out.write_all(&path)?;
                out.write_all(b"\n")?;
            }
            if attr.kind == Kind::Directory {
                let children = img.fs.children(rec)?;
                for (name, r) in children.into_iter().rev() {
                    stack.push((join(&path, name), r));
                }
            }
        }
    }
    Ok(status)
}

/// Counts of an image's inodes by type, and the bytes of its regular files.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub other: u64,
    /// Extra names of files with hard links (paths = inodes + hard_links).
    pub hard_links: u64,
    pub file_bytes: u64,
}

/// Walks every inode of the index once.
pub fn counts(fs: &ImageReader) -> Counts {
    let mut c = Counts::default();
    for rec in 0..fs.inode_count() {
        let Ok(a) = fs.metadata(rec) else { continue };
        match a.kind {
            Kind::Directory => c.directories += 1,
            Kind::Symlink => c.symlinks += 1,
            Kind::RegularFile => {
                c.files += 1;
                c.file_bytes += a.size;
            }
            _ => c.other += 1,
        }
        if a.kind != Kind::Directory {
            c.hard_links += u64::from(a.nlink.saturating_sub(1));
        }
    }
    c
}

/// `imgfs inspect`'s human-readable form of its JSON summary.
pub fn describe_summary(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let list = |v: &serde_json::Value| -> String {
        match v.as_array() {
            Some(a) if !a.is_empty() => a
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(" "),
            _ => "-".into(),
        }
    };
    let text = |v: &serde_json::Value| match v.as_str() {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => "-".into(),
    };
    let c = &v["Config"];
    let mut line = |k: &str, val: String| {
        let _ = writeln!(s, "{k:<12}{val}");
    };
    line("Id:", text(&v["Id"]));
    line("References:", list(&v["RepoTags"]));
    line("Digests:", list(&v["RepoDigests"]));
    line("Created:", text(&v["Created"]));
    line("Entrypoint:", list(&c["Entrypoint"]));
    line("Cmd:", list(&c["Cmd"]));
    line("WorkingDir:", text(&c["WorkingDir"]));
    line("User:", text(&c["User"]));
    match c["Env"].as_array() {
        Some(env) if !env.is_empty() => {
            for (i, e) in env.iter().enumerate() {
                line(if i == 0 { "Env:" } else { "" }, text(e));
            }
        }
        _ => line("Env:", "-".into()),
    }
    match c["Labels"].as_object() {
        Some(labels) if !labels.is_empty() => {
            for (i, (k, val)) in labels.iter().enumerate() {
                line(
                    if i == 0 { "Labels:" } else { "" },
                    format!("{k}={}", text(val)),
                );
            }
        }
        _ => line("Labels:", "-".into()),
    }
    let e = &v["Entries"];
    let n = |k: &str| e[k].as_u64().unwrap_or(0);
    line(
        "Entries:",
        format!(
            "{} files, {} directories, {} symlinks, {} other; {} extra hard links",
            n("files"),
            n("directories"),
            n("symlinks"),
            n("other"),
            n("hard_links")
        ),
    );
    line(
        "Content:",
        format!("{} in regular files", bytes(n("file_bytes"))),
    );
    let cache = &v["Cache"];
    let b = |k: &str| cache[k].as_u64().unwrap_or(0);
    let blobs: Vec<String> = cache["Blobs"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    let total = bytes(b("BlobBytes"));
    if let [one] = blobs.as_slice() {
        line("Archive:", format!("{one} ({total})"));
    } else {
        line("Layers:", format!("{} ({total})", blobs.len()));
        for blob in &blobs {
            line("", blob.clone());
        }
    }
    line(
        "Index:",
        format!("{} ({})", text(&cache["Index"]), bytes(b("IndexBytes"))),
    );
    s
}

/// A byte count for people: `176.3 MB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}
