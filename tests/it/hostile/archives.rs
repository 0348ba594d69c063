//! Hostile and broken tar archives, each with what imgfs must make of it.
//!
//! Every case is built byte by byte here (no tar writer would produce most of them) and
//! carries its expected outcome: either a safe tree — every entry inside the mount, later
//! entries winning, with the warnings that say what was dropped or rewritten — or one clear
//! error line naming the entry and its byte offset. `tests/it/hostile.rs` mounts each for real.
#![allow(dead_code)] // each test binary that includes it uses a different part

/// What imgfs must make of an archive.
pub enum Expect {
    /// It mounts, and the mount holds exactly `tree` (see `listing` in tests/it/hostile.rs);
    /// `checks` hold for the named entries and stderr contains every one of `warnings`.
    /// With `gnu_tar_agrees`, GNU tar extracts the archive without error to the same tree.
    Tree {
        tree: Vec<&'static str>,
        checks: Vec<(&'static str, Check)>,
        warnings: Vec<&'static str>,
        gnu_tar_agrees: bool,
    },
    /// It is refused: stderr is one line holding every one of these.
    Refused(Vec<&'static str>),
}

/// A property of one entry of the mounted tree.
pub enum Check {
    Content(&'static [u8]),
    Nlink(u64),
    Uid(u32),
    Mtime(i64),
    Mode(u32),
    /// Opening it for reading fails (a device on a nodev mount).
    CannotOpen,
}

pub struct Case {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

/// One 512-byte ustar header. Fields are written as given, so a case can put anything in them.
#[derive(Clone)]
pub struct Header {
    pub name: Vec<u8>,
    pub mode: Vec<u8>,
    pub uid: Vec<u8>,
    pub gid: Vec<u8>,
    pub size: Vec<u8>,
    pub mtime: Vec<u8>,
    pub typeflag: u8,
    pub link: Vec<u8>,
    pub devmajor: Vec<u8>,
    pub devminor: Vec<u8>,
    /// Write a wrong checksum.
    pub bad_checksum: bool,
}

fn octal(v: u64, width: usize) -> Vec<u8> {
    format!("{v:0w$o}\0", w = width - 1).into_bytes()
}

/// GNU's base-256 encoding of a (possibly negative) number in a field of `width` bytes.
pub fn base256(v: i64, width: usize) -> Vec<u8> {
    let mut out = vec![if v < 0 { 0xff } else { 0 }; width];
    let bytes = v.to_be_bytes();
    out[width - 8..].copy_from_slice(&bytes);
    out[0] = if v < 0 { 0xff } else { 0x80 };
    out
}

impl Header {
    pub fn new(name: &[u8], typeflag: u8, size: u64) -> Header {
        Header {
            name: name.to_vec(),
            mode: octal(0o644, 8),
            uid: octal(0, 8),
            gid: octal(0, 8),
            size: octal(size, 12),
            mtime: octal(1_700_000_000, 12),
            typeflag,
            link: Vec::new(),
            devmajor: octal(0, 8),
            devminor: octal(0, 8),
            bad_checksum: false,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        let mut put = |at: usize, width: usize, v: &[u8]| {
            let n = v.len().min(width);
            h[at..at + n].copy_from_slice(&v[..n]);
        };
        put(0, 100, &self.name);
        put(100, 8, &self.mode);
        put(108, 8, &self.uid);
        put(116, 8, &self.gid);
        put(124, 12, &self.size);
        put(136, 12, &self.mtime);
        put(157, 100, &self.link);
        put(257, 8, b"ustar\x0000");
        put(329, 8, &self.devmajor);
        put(337, 8, &self.devminor);
        h[156] = self.typeflag;
        h[148..156].copy_from_slice(b"        ");
        let mut sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        if self.bad_checksum {
            sum += 1;
        }
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }
}

/// An archive under construction.
#[derive(Default)]
pub struct Tar(pub Vec<u8>);

fn pad(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(512) * 512, 0);
}

impl Tar {
    pub fn header(mut self, h: &Header, data: &[u8]) -> Tar {
        self.0.extend(h.bytes());
        self.0.extend_from_slice(data);
        pad(&mut self.0);
        self
    }
    pub fn file(self, name: &str, data: &[u8]) -> Tar {
        self.header(&Header::new(name.as_bytes(), b'0', data.len() as u64), data)
    }
    pub fn dir(self, name: &str) -> Tar {
        let mut h = Header::new(name.as_bytes(), b'5', 0);
        h.mode = octal(0o755, 8);
        self.header(&h, b"")
    }
    pub fn link(self, typeflag: u8, name: &str, target: &[u8]) -> Tar {
        let mut h = Header::new(name.as_bytes(), typeflag, 0);
        h.link = target.to_vec();
        self.header(&h, b"")
    }
    pub fn symlink(self, name: &str, target: &str) -> Tar {
        self.link(b'2', name, target.as_bytes())
    }
    pub fn hardlink(self, name: &str, target: &str) -> Tar {
        self.link(b'1', name, target.as_bytes())
    }
    /// A PAX extended header for the next member, from raw record bytes.
    pub fn pax_raw(self, records: &[u8]) -> Tar {
        self.header(
            &Header::new(b"././@PaxHeader", b'x', records.len() as u64),
            records,
        )
    }
    /// A PAX extended header for the next member, from key/value pairs.
    pub fn pax(self, pairs: &[(&str, &[u8])]) -> Tar {
        let mut body = Vec::new();
        for (k, v) in pairs {
            body.extend(pax_record(k.as_bytes(), v));
        }
        self.pax_raw(&body)
    }
    /// The two zero blocks that end an archive.
    pub fn end(mut self) -> Vec<u8> {
        self.0.extend([0u8; 1024]);
        self.0
    }
}

/// One PAX record, `LEN KEY=VALUE\n`, where LEN counts itself.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let len = (1..20)
        .map(|d| rest + d)
        .find(|n| n.to_string().len() + rest == *n)
        .expect("a record length");
    [len.to_string().as_bytes(), b" ", key, b"=", value, b"\n"].concat()
}

fn tree(
    tree: &[&'static str],
    checks: Vec<(&'static str, Check)>,
    warnings: &[&'static str],
) -> Expect {
    Expect::Tree {
        tree: tree.to_vec(),
        checks,
        warnings: warnings.to_vec(),
        gnu_tar_agrees: false,
    }
}

fn agreed(tree: &[&'static str], checks: Vec<(&'static str, Check)>) -> Expect {
    Expect::Tree {
        tree: tree.to_vec(),
        checks,
        warnings: Vec::new(),
        gnu_tar_agrees: true,
    }
}

fn refused(what: &[&'static str]) -> Expect {
    Expect::Refused(what.to_vec())
}

/// Every hostile case.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name, bytes, expect| {
        cases.push(Case {
            name,
            bytes,
            expect,
        })
    };

    // Paths that try to leave the root.
    add(
        "dotdot-and-absolute",
        Tar::default()
            .file("../evil", b"x")
            .file("a/../../evil2", b"x")
            .file("/abs/file", b"abs")
            .file("./ok", b"ok")
            .end(),
        tree(
            &["d abs", "f abs/file", "f ok"],
            vec![("abs/file", Check::Content(b"abs"))],
            &["'../evil'", "'a/../../evil2'", "leading '/'"],
        ),
    );
    add(
        "symlink-to-root-then-through-it",
        Tar::default()
            .symlink("x", "/")
            .file("x/etc/passwd", b"inside\n")
            .end(),
        tree(
            &["d x", "d x/etc", "f x/etc/passwd"],
            vec![("x/etc/passwd", Check::Content(b"inside\n"))],
            &["'x'"],
        ),
    );
    add(
        "symlink-up-then-through-it",
        Tar::default()
            .dir("d")
            .symlink("d/up", "../../../..")
            .file("d/up/shadow", b"inside\n")
            .end(),
        tree(
            &["d d", "d d/up", "f d/up/shadow"],
            vec![("d/up/shadow", Check::Content(b"inside\n"))],
            &["'d/up'"],
        ),
    );
    // Symlinks are served as stored, as tar -x stores them: what they point at is resolved
    // by whoever follows them (inside a sandbox, inside the image).
    add(
        "symlinks-pointing-out",
        Tar::default()
            .symlink("abs", "/etc/passwd")
            .symlink("up", "../../../../etc")
            .end(),
        agreed(&["l abs -> /etc/passwd", "l up -> ../../../../etc"], vec![]),
    );

    // Hard links.
    add(
        "hardlink-up",
        Tar::default().hardlink("h", "../x").end(),
        tree(&[], vec![], &["hard link 'h'", "'..'"]),
    );
    add(
        "hardlink-absolute-out",
        Tar::default().hardlink("h", "/etc/passwd").end(),
        tree(&[], vec![], &["hard link 'h'"]),
    );
    add(
        "hardlink-missing",
        Tar::default().hardlink("h", "nope").end(),
        tree(&[], vec![], &["hard link 'h' -> 'nope'", "does not exist"]),
    );
    add(
        "hardlink-to-itself",
        Tar::default().hardlink("h", "h").end(),
        tree(&[], vec![], &["hard link 'h' -> 'h'"]),
    );
    add(
        "hardlink-forward-reference",
        Tar::default().hardlink("h", "f").file("f", b"late").end(),
        tree(&["f f"], vec![], &["hard link 'h' -> 'f'"]),
    );
    add(
        "hardlink-to-directory",
        Tar::default().dir("d").hardlink("h", "d").end(),
        tree(&["d d"], vec![], &["hard link 'h' -> 'd'", "directory"]),
    );
    add(
        "hardlink-through-symlink",
        Tar::default()
            .symlink("s", "/etc")
            .hardlink("h", "s/passwd")
            .end(),
        tree(&["l s -> /etc"], vec![], &["hard link 'h' -> 's/passwd'"]),
    );
    add(
        "hardlink-chain",
        Tar::default()
            .file("f", b"data\n")
            .hardlink("h1", "f")
            .hardlink("h2", "h1")
            .hardlink("h3", "h2")
            .end(),
        agreed(
            &["f f", "f h1", "f h2", "f h3"],
            vec![
                ("h3", Check::Content(b"data\n")),
                ("f", Check::Nlink(4)),
                ("h2", Check::Nlink(4)),
            ],
        ),
    );

    // Sizes and numbers.
    add(
        "truncated-data",
        {
            let mut t = Tar::default().file("a", &[b'x'; 100]);
            t.0.extend(Header::new(b"big", b'0', 1 << 20).bytes());
            t.0.extend([b'y'; 1000]);
            t.0
        },
        refused(&["truncated", "'big'", "byte 1024"]),
    );
    add(
        "truncated-header",
        {
            let mut t = Tar::default().file("a", b"x").0;
            t.extend([b'h'; 100]);
            t
        },
        refused(&["truncated", "byte 1024"]),
    );
    add(
        "base-256-numbers",
        {
            let mut h = Header::new(b"f", b'0', 0);
            h.size = base256(5, 12);
            h.uid = base256(70_000, 8);
            h.mtime = base256(1 << 33, 12);
            Tar::default().header(&h, b"hello").end()
        },
        agreed(
            &["f f"],
            vec![
                ("f", Check::Content(b"hello")),
                ("f", Check::Uid(70_000)),
                ("f", Check::Mtime(1 << 33)),
            ],
        ),
    );
    add(
        "negative-size",
        {
            let mut h = Header::new(b"f", b'0', 0);
            h.size = base256(-1, 12);
            Tar::default().header(&h, b"").end()
        },
        refused(&["'f'", "byte 0", "negative"]),
    );
    add(
        "negative-mtime",
        {
            let mut h = Header::new(b"f", b'0', 1);
            h.mtime = base256(-1, 12);
            Tar::default().header(&h, b"x").end()
        },
        agreed(&["f f"], vec![("f", Check::Mtime(-1))]),
    );
    add(
        "wrong-checksum-first",
        {
            let mut h = Header::new(b"f", b'0', 1);
            h.bad_checksum = true;
            Tar::default().header(&h, b"x").end()
        },
        refused(&["not a tar archive", "checksum"]),
    );
    add(
        "wrong-checksum-later",
        {
            let mut h = Header::new(b"g", b'0', 1);
            h.bad_checksum = true;
            Tar::default().file("f", b"x").header(&h, b"x").end()
        },
        refused(&["byte 1024", "checksum"]),
    );

    // PAX extended headers.
    add(
        "pax-absurd-record-length",
        Tar::default()
            .pax_raw(b"99999999999999999999 path=x\n")
            .file("f", b"x")
            .end(),
        refused(&["byte 0", "PAX record"]),
    );
    add(
        "pax-embedded-nul",
        Tar::default()
            .pax(&[("path", b"a\0b")])
            .file("ignored", b"x")
            .file("kept", b"k")
            .end(),
        tree(&["f kept"], vec![], &["NUL"]),
    );
    add(
        "pax-repeated-many-times",
        {
            let mut t = Tar::default();
            for _ in 0..5000 {
                t = t.pax(&[("comment", b"again")]);
            }
            t.dir("long")
                .pax(&[("path", b"long/name")])
                .file("short", b"v")
                .end()
        },
        agreed(
            &["d long", "f long/name"],
            vec![("long/name", Check::Content(b"v"))],
        ),
    );
    add(
        "pax-repeated-forever",
        {
            // 20 MiB of small distinct records before one member: past the per-member budget.
            let mut body = Vec::new();
            let mut i = 0u32;
            while body.len() < 20 << 20 {
                body.extend(pax_record(format!("k{i}").as_bytes(), b"v"));
                i += 1;
            }
            // Headers of about 1 MiB each, cut on record boundaries.
            let mut t = Tar::default();
            let mut start = 0;
            while start < body.len() {
                let mut end = (start + (1 << 20)).min(body.len());
                while end < body.len() && body[end - 1] != b'\n' {
                    end += 1;
                }
                t = t.pax_raw(&body[start..end]);
                start = end;
            }
            t.file("f", b"x").end()
        },
        refused(&["exceed", "limit"]),
    );
    add(
        "pax-header-of-a-terabyte",
        Tar::default()
            .header(&Header::new(b"././@PaxHeader", b'x', 1 << 40), b"")
            .end(),
        refused(&["byte 0", "exceed", "limit"]),
    );
    add(
        "gnu-long-name-of-8-gib",
        Tar::default()
            .header(&Header::new(b"././@LongLink", b'L', 1 << 33), b"")
            .end(),
        refused(&["byte 0", "exceed", "limit"]),
    );
    add(
        "gnu-long-name-leaving-the-root",
        Tar::default()
            .header(&Header::new(b"././@LongLink", b'L', 12), b"../../escape")
            .file("placeholder", b"x")
            .file("ok", b"ok")
            .end(),
        tree(&["f ok"], vec![], &["'../../escape'"]),
    );

    // Not tar archives at all.
    add("empty-file", Vec::new(), refused(&["empty"]));
    add("all-zeros", vec![0u8; 10240], agreed(&[], vec![]));
    add(
        "not-tar",
        b"hello, this is not an archive\n".repeat(40),
        refused(&["not a tar archive"]),
    );
    for (name, magic, what) in [
        ("gzip", &b"\x1f\x8b\x08\x00"[..], "gzip-compressed"),
        ("xz", b"\xfd7zXZ\0", "xz-compressed"),
        ("zstd", b"\x28\xb5\x2f\xfd", "zstd-compressed"),
        ("bzip2", b"BZh91AY&SY", "bzip2-compressed"),
    ] {
        let mut bytes = magic.to_vec();
        bytes.resize(2048, 0x5a);
        add(name, bytes, refused(&[what]));
    }

    // The same path more than once: the later entry wins.
    add(
        "later-entry-wins",
        Tar::default().file("f", b"one").file("f", b"two").end(),
        agreed(&["f f"], vec![("f", Check::Content(b"two"))]),
    );
    add(
        "directory-then-file",
        Tar::default()
            .dir("p")
            .file("p/child", b"c")
            .file("p", b"file\n")
            .end(),
        tree(&["f p"], vec![("p", Check::Content(b"file\n"))], &[]),
    );
    add(
        "file-then-directory",
        Tar::default()
            .file("p", b"file\n")
            .file("p/child", b"c")
            .end(),
        tree(&["d p", "f p/child"], vec![], &["'p' was not a directory"]),
    );

    // Devices, FIFOs and set-id bits are shown as stored; the mount is nodev and nosuid.
    add(
        "devices-and-setuid",
        {
            let mut null = Header::new(b"null", b'3', 0);
            null.devmajor = octal(1, 8);
            null.devminor = octal(3, 8);
            let mut disk = Header::new(b"disk", b'4', 0);
            disk.devmajor = octal(8, 8);
            let mut suid = Header::new(b"suid", b'0', 2);
            suid.mode = octal(0o4755, 8);
            Tar::default()
                .header(&null, b"")
                .header(&disk, b"")
                .header(&Header::new(b"fifo", b'6', 0), b"")
                .header(&suid, b"#!")
                .end()
        },
        tree(
            &["b disk", "c null", "f suid", "p fifo"],
            vec![
                ("null", Check::CannotOpen),
                ("disk", Check::CannotOpen),
                ("suid", Check::Mode(0o104755)),
            ],
            &[],
        ),
    );
    cases
}
