//! The mount table as the kernel shows it in `/proc/PID/mountinfo`, parsed: one [`Mount`]
//! per line, its fields unescaped.
//!
//! Takes the text (parsing is apart from reading it); hands on the mounts in the table's
//! order, the last mount on a path being the one on top. Never panics on odd text: a line
//! without the fields a mount has is skipped, and a backslash that does not start a valid
//! octal escape (`\000` to `\377`) is kept as it is.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// Where the calling process's mount table is.
pub(crate) const SELF: &str = "/proc/self/mountinfo";

/// One line of mountinfo (see proc(5)),
/// `36 35 98:0 /root /mnt rw,noatime master:1 - ext3 /dev/root rw,errors=continue`,
/// borrowing from the text what needs no unescaping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mount<'a> {
    /// The filesystem's device, `major:minor` (for a FUSE mount, its connection's number).
    pub device: &'a str,
    /// The directory of the filesystem that is mounted (`/` for its whole tree).
    pub root: Cow<'a, Path>,
    pub mountpoint: Cow<'a, Path>,
    /// Type, with the subtype when there is one (`fuse.imgfs`).
    pub fstype: Cow<'a, str>,
    pub source: Cow<'a, str>,
    options: &'a str,
    super_options: &'a str,
}

impl<'a> Mount<'a> {
    /// Per-mount options (`rw`, `nosuid`, ...).
    #[cfg(test)]
    pub(crate) fn options(&self) -> impl Iterator<Item = Cow<'a, str>> + use<'a> {
        list(self.options)
    }

    /// Options of the filesystem itself (`user_id=1000`, a cgroup's controllers, ...).
    pub(crate) fn super_options(&self) -> impl Iterator<Item = Cow<'a, str>> + use<'a> {
        list(self.super_options)
    }

    /// The value of the filesystem option `key=VALUE`, if it is set.
    pub(crate) fn super_option(&self, key: &str) -> Option<Cow<'a, str>> {
        self.super_options().find_map(|o| match o {
            Cow::Borrowed(o) => Some(Cow::Borrowed(o.strip_prefix(key)?.strip_prefix('=')?)),
            Cow::Owned(o) => Some(Cow::Owned(
                o.strip_prefix(key)?.strip_prefix('=')?.to_string(),
            )),
        })
    }
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\134` for a backslash); borrows
/// a field that has none.
pub(crate) fn unescape(field: &str) -> Cow<'_, [u8]> {
    let bytes = field.as_bytes();
    if !bytes.contains(&b'\\') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

fn text(field: &str) -> Cow<'_, str> {
    match unescape(field) {
        Cow::Borrowed(_) => Cow::Borrowed(field),
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

fn path(field: &str) -> Cow<'_, Path> {
    match unescape(field) {
        Cow::Borrowed(b) => Cow::Borrowed(Path::new(OsStr::from_bytes(b))),
        Cow::Owned(bytes) => Cow::Owned(OsString::from_vec(bytes).into()),
    }
}

fn list(field: &str) -> impl Iterator<Item = Cow<'_, str>> {
    field.split(',').filter(|o| !o.is_empty()).map(text)
}

/// One line, or `None` when it lacks a field.
pub(crate) fn parse_line(line: &str) -> Option<Mount<'_>> {
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    let mut fields = line.split(' ');
    let device = fields.nth(2)?;
    let root = fields.next()?;
    let mountpoint = fields.next()?;
    let options = fields.next()?;
    // The optional fields end at a lone `-`.
    fields.find(|f| *f == "-")?;
    Some(Mount {
        device,
        root: path(root),
        mountpoint: path(mountpoint),
        fstype: text(fields.next()?),
        source: text(fields.next()?),
        options,
        super_options: fields.next().unwrap_or(""),
    })
}

/// Every mount in mountinfo `text`, in its order.
pub(crate) fn parse(text: &str) -> Vec<Mount<'_>> {
    text.lines().filter_map(parse_line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.imgfs imgfs:py ro,user_id=1001,group_id=1001\n\
                    37 35 98:0 /sub /x rw - ext4 /dev/vda rw\n\
                    38 35 0:30 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct\n";
        let m = parse(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mountpoint, Path::new("/mnt/a b"));
        assert_eq!(m[0].root, Path::new("/"));
        assert_eq!(m[0].options().collect::<Vec<_>>(), ["rw", "noatime"]);
        assert_eq!(m[0].fstype, "fuse.imgfs");
        assert_eq!(m[0].source, "imgfs:py");
        assert_eq!(m[0].super_option("user_id").as_deref(), Some("1001"));
        assert_eq!(m[0].super_option("user"), None);
        assert_eq!(m[1].root, Path::new("/sub"));
        assert_eq!(m[1].fstype, "ext4");
        assert_eq!(m[1].super_option("user_id"), None);
        let controllers: Vec<_> = m[2].super_options().collect();
        assert_eq!(controllers, ["rw", "cpu", "cpuacct"]);
    }

    #[test]
    fn lines_lacking_fields_are_skipped() {
        for line in [
            "",
            "36 35 98:0 / /mnt rw",
            "36 35 98:0 / /mnt rw -",
            "36 35 98:0 / /mnt rw - fuse",
            "36 35 - / /mnt rw",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
        // A `-` among the fixed fields is a field's value, not the separator.
        let m = parse_line("36 35 - / /mnt rw - ext4 /dev/x rw").unwrap();
        assert_eq!(m.fstype, "ext4");
        let m = parse_line("36 35 98:0 / /mnt rw - tmpfs none").unwrap();
        assert_eq!(m.super_options().count(), 0);
    }

    #[test]
    fn octal_escapes() {
        let unescaped = |f| unescape(f).into_owned();
        assert_eq!(unescaped("/mnt/my\\040memory"), b"/mnt/my memory");
        assert_eq!(unescaped("a\\134b"), b"a\\b");
        assert_eq!(unescaped("\\377"), [0xff]);
        // Past a byte's range, too short, or not octal: kept as written.
        assert_eq!(unescaped("\\400\\777"), b"\\400\\777");
        assert_eq!(unescaped("/a\\9b\\"), b"/a\\9b\\");
        assert_eq!(unescaped("\\04"), b"\\04");
        assert!(matches!(unescape("/plain"), Cow::Borrowed(b"/plain")));
        let m = parse_line("1 2 0:1 / /a\\134\\040b rw - t\\040x s\\377 o\\054p,q").unwrap();
        assert_eq!(m.mountpoint.as_os_str().as_bytes(), b"/a\\ b");
        assert_eq!(m.fstype, "t x");
        assert_eq!(m.source, "s\u{fffd}");
        assert_eq!(m.super_options().collect::<Vec<_>>(), ["o,p", "q"]);
    }
}
