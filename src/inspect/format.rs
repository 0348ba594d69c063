//! How the inspection commands print: modes, owners, times and `stat -c` formats, as the
//! GNU tools print them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::image::{Attr, Kind};
use crate::sys;

use super::Image;

/// Owner names from the image's `/etc/passwd` and `/etc/group`; ids without a name print as
/// numbers.
#[derive(Clone, Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    pub(crate) fn parse(passwd: &str, group: &str) -> Names {
        // name:password:id:... — the first name given for an id wins, as with getpwuid.
        let table = |text: &str| {
            let mut map = HashMap::new();
            for line in text.lines() {
                let mut f = line.split(':');
                let (Some(name), Some(_), Some(id)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                if let Ok(id) = id.parse::<u32>() {
                    map.entry(id).or_insert_with(|| name.to_string());
                }
            }
            map
        };
        Names {
            users: table(passwd),
            groups: table(group),
        }
    }

    pub(crate) fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    pub(crate) fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }

    /// The name for stat's `%U`, which is `UNKNOWN` when there is none.
    fn user_or_unknown(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| "UNKNOWN".into())
    }

    fn group_or_unknown(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| "UNKNOWN".into())
    }
}

/// An error as the coreutils word it: `strerror` text, without Rust's "(os error N)".
pub(crate) fn describe(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// `ls -l`'s ten-character mode: type, then rwx for owner, group and others with the
/// setuid, setgid and sticky bits folded in (s/S, s/S, t/T).
pub(crate) fn mode_string(kind: Kind, perm: u16) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        Kind::Directory => 'd',
        Kind::Symlink => 'l',
        Kind::CharDevice => 'c',
        Kind::BlockDevice => 'b',
        Kind::NamedPipe => 'p',
        Kind::Socket => 's',
        Kind::RegularFile => '-',
    });
    let bit = |b: u16, c: char| if perm & b != 0 { c } else { '-' };
    let special = |x: bool, sp: bool, on: char, off: char| match (x, sp) {
        (true, true) => on,
        (false, true) => off,
        (true, false) => 'x',
        (false, false) => '-',
    };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(perm & 0o100 != 0, perm & 0o4000 != 0, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(perm & 0o010 != 0, perm & 0o2000 != 0, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(perm & 0o001 != 0, perm & 0o1000 != 0, 't', 'T'));
    s
}

/// Seconds and nanoseconds since the epoch (negative before it).
fn epoch(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

/// `2024-01-31 12:34`, as `ls -l --time-style=long-iso`.
pub(crate) fn long_iso(t: SystemTime) -> String {
    let tm = sys::term::local_time(epoch(t).0);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}

/// `2024-01-31 12:34:56.123456789 +0000`, as stat's `%y`.
fn full_time(t: SystemTime) -> String {
    let (secs, nsec) = epoch(t);
    let tm = sys::term::local_time(secs);
    let off = tm.tm_gmtoff;
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:09} {}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        nsec,
        if off < 0 { '-' } else { '+' },
        off.abs() / 3600,
        off.abs() % 3600 / 60
    )
}

/// stat's `%F`.
fn kind_name(a: &Attr) -> &'static str {
    match a.kind {
        Kind::RegularFile if a.size == 0 => "regular empty file",
        Kind::RegularFile => "regular file",
        Kind::Directory => "directory",
        Kind::Symlink => "symbolic link",
        Kind::CharDevice => "character special file",
        Kind::BlockDevice => "block special file",
        Kind::NamedPipe => "fifo",
        Kind::Socket => "socket",
    }
}

fn type_bits(kind: Kind) -> u32 {
    match kind {
        Kind::RegularFile => libc::S_IFREG,
        Kind::Directory => libc::S_IFDIR,
        Kind::Symlink => libc::S_IFLNK,
        Kind::CharDevice => libc::S_IFCHR,
        Kind::BlockDevice => libc::S_IFBLK,
        Kind::NamedPipe => libc::S_IFIFO,
        Kind::Socket => libc::S_IFSOCK,
    }
}

/// Expands GNU stat's `-c` directives for one path. A directive may carry a width and `-`
/// for left alignment (`%-10s`, `%5u`) or `0` for zero padding (`%04a`).
pub(crate) fn stat_format(img: &Image, path: &str, rec: u32, a: &Attr, format: &str) -> String {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut flags = String::new();
        while let Some(&f) = chars.peek() {
            if f == '-' || f.is_ascii_digit() {
                flags.push(f);
                chars.next();
            } else {
                break;
            }
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let dev = u64::from(a.rdev);
        let value = match d {
            '%' => "%".to_string(),
            'n' => path.to_string(),
            'N' => {
                let mut v = format!("'{path}'");
                if a.kind == Kind::Symlink
                    && let Ok(t) = img.fs.readlink(rec)
                {
                    let _ = write!(v, " -> '{}'", String::from_utf8_lossy(t));
                }
                v
            }
            's' => a.size.to_string(),
            'b' => a.blocks.to_string(),
            'B' => "512".to_string(),
            'o' => a.blksize.to_string(),
            'f' => format!("{:x}", type_bits(a.kind) | u32::from(a.perm)),
            'a' => format!("{:o}", a.perm),
            'A' => mode_string(a.kind, a.perm),
            'u' => a.uid.to_string(),
            'U' => img.names.user_or_unknown(a.uid),
            'g' => a.gid.to_string(),
            'G' => img.names.group_or_unknown(a.gid),
            'h' => a.nlink.to_string(),
            'i' => (u64::from(a.rec) + 1).to_string(),
            'Y' => epoch(a.mtime).0.to_string(),
            'y' => full_time(a.mtime),
            'F' => kind_name(a).to_string(),
            't' => format!("{:x}", libc::major(dev)),
            'T' => format!("{:x}", libc::minor(dev)),
            other => format!("?{other}"),
        };
        out.push_str(&pad(&value, &flags));
    }
    out
}

/// Applies a printf-style width: `-N` left-aligns, `0N` zero-pads, `N` right-aligns.
fn pad(value: &str, flags: &str) -> String {
    let (left, digits) = match flags.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, flags),
    };
    let zero = !left && digits.starts_with('0');
    let width: usize = digits.parse().unwrap_or(0);
    if left {
        format!("{value:<width$}")
    } else if zero {
        format!("{value:0>width$}")
    } else {
        format!("{value:>width$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_as_ls_prints_them() {
        assert_eq!(mode_string(Kind::RegularFile, 0o644), "-rw-r--r--");
        assert_eq!(mode_string(Kind::Directory, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(Kind::Directory, 0o1776), "drwxrwxrwT");
        assert_eq!(mode_string(Kind::RegularFile, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(Kind::RegularFile, 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string(Kind::Symlink, 0o777), "lrwxrwxrwx");
        assert_eq!(mode_string(Kind::CharDevice, 0o600), "crw-------");
    }

    #[test]
    fn names_fall_back_to_numbers() {
        let n = Names::parse(
            "root:x:0:0::/root:/bin/sh\nbad line\nx:x:7:7\n",
            "wheel:x:10:\n",
        );
        assert_eq!(n.user(0), "root");
        assert_eq!(n.user(7), "x");
        assert_eq!(n.user(1000), "1000");
        assert_eq!(n.group(10), "wheel");
        assert_eq!(n.group(0), "0");
    }

    #[test]
    fn widths() {
        assert_eq!(pad("7", "5"), "    7");
        assert_eq!(pad("7", "-5"), "7    ");
        assert_eq!(pad("644", "04"), "0644");
        assert_eq!(pad("12345", "3"), "12345");
    }

    #[test]
    fn times_before_the_epoch() {
        let t = UNIX_EPOCH - std::time::Duration::from_millis(1500);
        assert_eq!(epoch(t), (-2, 500_000_000));
        assert_eq!(epoch(UNIX_EPOCH), (0, 0));
    }

    #[test]
    fn errors_without_the_os_error_number() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(describe(&e), "No such file or directory");
    }
}
