//! A guess at what a program's start reads, for a lazily read image with nothing recorded of
//! it: the program's file; for an ELF file, the interpreter it names (`PT_INTERP`) and the
//! shared libraries its dynamic section needs, and theirs, found where the dynamic loader
//! looks (`DT_RPATH`, `DT_RUNPATH` with `$ORIGIN`, the image's `/etc/ld.so.cache`, then the
//! system directories); for a script, the interpreter its `#!` line names.
//!
//! Takes the image's reader (over the served layers) and the program's path in the image;
//! hands on nothing but fetches: from the moment the server opens the image, each file found
//! is read where its headers are, on a thread of its own, and then fetched whole in the
//! background ([`Blob::will_read`](super::Blob::will_read)). A start that would have waited
//! for its files one after another (the loader opens a library once the one naming it is
//! mapped) finds them here or on their way. Guarantees: paths are resolved inside the image;
//! at most [`MAX_FILES`] files; bytes that are not what they claim end the guess for that
//! file (no panic, nothing read past what the headers bound). The parsers take bytes.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::ImageReader;
use crate::index::le::{get_u32, get_uint};

/// Most files one guess fetches: a program and its libraries are a few dozen at most; a
/// hostile image naming thousands gets no more than this.
const MAX_FILES: usize = 64;
/// Bytes read at a file's head: an ELF header and its program headers, or a `#!` line.
const HEAD: u32 = 4096;
/// Most bytes of a dynamic section or of the string table its names are in.
const MAX_TABLE: u64 = 1 << 20;
/// The image's cache of where its libraries are (ldconfig's).
const LD_CACHE: &str = "/etc/ld.so.cache";

/// Starts a guess at the files a start of `program` (a path in the image) reads, each taken
/// up on a thread of its own.
pub(crate) fn start(reader: ImageReader, program: Vec<u8>) {
    let guess = Arc::new(Guess {
        reader,
        seen: Mutex::new(HashSet::new()),
        found: Mutex::new(Vec::new()),
        cache: OnceLock::new(),
        began: crate::sys::trace::now(),
    });
    // The loader's cache is read once a library is looked for: its fetch goes now, beside
    // the program's.
    let cached = guess.clone();
    spawn(move || {
        cached.ld_cache();
    });
    guess.visit(program);
}

fn spawn(work: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .name("imgfs-guess".into())
        .spawn(work)
    {
        log::debug!("cannot start a guess: {e}");
    }
}

/// One library the loader's cache lists: its flags, name and path.
type Cached = (u32, Vec<u8>, Vec<u8>);

struct Guess {
    reader: ImageReader,
    /// Records already taken up.
    seen: Mutex<HashSet<u32>>,
    /// The files taken up: their records and paths.
    found: Mutex<Vec<(u32, String)>>,
    /// The loader's cache: library name and path, for the ELF machine's flags.
    cache: OnceLock<Vec<Cached>>,
    began: u64,
}

impl Drop for Guess {
    /// The last thread of the guess is done: the trace gets what it took up.
    fn drop(&mut self) {
        let found = std::mem::take(&mut *self.found.lock());
        if crate::sys::trace::on() {
            let paths: Vec<&String> = found.iter().map(|(_, p)| p).collect();
            let files = serde_json::to_string(&paths).unwrap_or_default();
            crate::sys::trace::event("guess", self.began, &format!("\"files\":{files}"));
        }
    }
}

impl Guess {
    /// Takes up the regular file at `path`, once, on a thread of its own.
    fn visit(self: &Arc<Self>, path: Vec<u8>) {
        let Ok(rec) = self.reader.resolve(&path, true) else {
            return;
        };
        if !self
            .reader
            .inode(rec)
            .is_some_and(|r| r.file_type() == libc::S_IFREG && r.size > 0)
        {
            return;
        }
        {
            let mut seen = self.seen.lock();
            if seen.len() >= MAX_FILES || !seen.insert(rec) {
                return;
            }
        }
        self.found
            .lock()
            .push((rec, String::from_utf8_lossy(&path).into_owned()));
        let guess = self.clone();
        spawn(move || guess.file(&path, rec));
    }

    /// Reads what `rec`'s headers say it needs, then takes that up. These reads fetch only
    /// their own spans; the rest of the file comes once they are done (when this returns),
    /// so that its bulk does not hold back the headers that name the next files.
    fn file(self: &Arc<Self>, path: &[u8], rec: u32) {
        struct Whole<'a>(&'a ImageReader, u32);
        impl Drop for Whole<'_> {
            fn drop(&mut self) {
                self.0.will_read(self.1);
            }
        }
        let _whole = Whole(&self.reader, rec);
        let read = |offset: u64, size: u64| {
            let size = u32::try_from(size).ok()?;
            self.reader.read_hinted(rec, offset, size, false).ok()
        };
        let Some(head) = read(0, HEAD.into()) else {
            return;
        };
        if let Some(interpreter) = shebang(&head) {
            if let Some(p) = self.command(&interpreter) {
                self.visit(p);
            }
            return;
        }
        let Some(elf) = Elf::parse(&head) else { return };
        if let Some(interp) = elf
            .interp
            .as_ref()
            .and_then(|r| read(r.start, r.end - r.start))
        {
            let name = interp.split(|&b| b == 0).next().unwrap_or_default();
            self.visit(name.to_vec());
        }
        let Some(dynamic) = elf
            .dynamic
            .as_ref()
            .and_then(|r| read(r.start, r.end - r.start))
        else {
            return;
        };
        let dynamic = Dynamic::parse(&dynamic);
        let Some(strtab) = dynamic.strtab.and_then(|addr| elf.offset_of(addr)) else {
            return;
        };
        let Some(strings) = read(strtab, dynamic.strsz.min(MAX_TABLE)) else {
            return;
        };
        let string = |at: u64| -> Option<&[u8]> {
            let rest = strings.get(usize::try_from(at).ok()?..)?;
            rest.split(|&b| b == 0).next()
        };
        let origin = match path.iter().rposition(|&b| b == b'/') {
            Some(0) | None => b"/".as_slice(),
            Some(i) => &path[..i],
        };
        let dirs = |at: Option<u64>| -> Vec<Vec<u8>> {
            at.and_then(string)
                .map(|list| {
                    list.split(|&b| b == b':')
                        .filter(|d| !d.is_empty())
                        .map(|d| expand_origin(d, origin))
                        .collect()
                })
                .unwrap_or_default()
        };
        // A DT_RUNPATH makes the loader ignore DT_RPATH.
        let search = match dynamic.runpath {
            Some(_) => dirs(dynamic.runpath),
            None => dirs(dynamic.rpath),
        };
        for name in dynamic.needed.iter().filter_map(|&at| string(at)) {
            if let Some(p) = self.library(name, &search, elf.machine) {
                self.visit(p);
            }
        }
    }

    /// Where the loader finds the library `name`.
    fn library(&self, name: &[u8], search: &[Vec<u8>], machine: u16) -> Option<Vec<u8>> {
        if name.contains(&b'/') {
            return Some(name.to_vec());
        }
        let exists = |p: &[u8]| {
            self.reader
                .resolve(p, true)
                .ok()
                .and_then(|rec| self.reader.inode(rec))
                .is_some_and(|r| r.file_type() == libc::S_IFREG)
        };
        let in_dir = |dir: &[u8]| [dir, b"/", name].concat();
        if let Some(p) = search.iter().map(|d| in_dir(d)).find(|p| exists(p)) {
            return Some(p);
        }
        let flags = cache_flags(machine);
        if let Some((_, _, p)) = self.ld_cache().iter().find(|(f, n, p)| {
            n.as_slice() == name && flags.is_none_or(|want| f & 0xff00 == want) && exists(p)
        }) {
            return Some(p.clone());
        }
        system_dirs(machine)
            .iter()
            .map(|d| in_dir(d.as_bytes()))
            .find(|p| exists(p))
    }

    /// The loader's cache, read once.
    fn ld_cache(&self) -> &[Cached] {
        self.cache.get_or_init(|| {
            self.reader
                .read_file(LD_CACHE.as_bytes())
                .map(|bytes| parse_ld_cache(&bytes))
                .unwrap_or_default()
        })
    }

    /// Where a `#!` line's interpreter is: its path, or for `env NAME`, NAME in the default
    /// `PATH`.
    fn command(&self, interpreter: &[&[u8]]) -> Option<Vec<u8>> {
        let (&first, rest) = interpreter.split_first()?;
        if !first.ends_with(b"/env") {
            return Some(first.to_vec());
        }
        let name = rest.iter().find(|a| !a.starts_with(b"-"))?;
        if name.contains(&b'/') {
            return Some(name.to_vec());
        }
        // Where `#!/usr/bin/env NAME` finds NAME: docker's default `PATH`.
        super::DEFAULT_PATH
            .split(':')
            .map(|d| [d.as_bytes(), b"/", name].concat())
            .find(|p| self.reader.resolve(p, true).is_ok())
    }
}

/// `dir` with `$ORIGIN` (or `${ORIGIN}`) replaced by `origin`.
fn expand_origin(dir: &[u8], origin: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dir.len());
    let mut rest = dir;
    while let Some(i) = rest.iter().position(|&b| b == b'$') {
        out.extend_from_slice(&rest[..i]);
        let after = &rest[i..];
        if let Some(r) = after.strip_prefix(b"$ORIGIN") {
            out.extend_from_slice(origin);
            rest = r;
        } else if let Some(r) = after.strip_prefix(b"${ORIGIN}") {
            out.extend_from_slice(origin);
            rest = r;
        } else {
            out.push(b'$');
            rest = &after[1..];
        }
    }
    out.extend_from_slice(rest);
    out
}

/// The words of a `#!` line: the interpreter and its arguments.
fn shebang(head: &[u8]) -> Option<Vec<&[u8]>> {
    let line = head.strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let words: Vec<&[u8]> = line
        .split(|&b| b == b' ' || b == b'\t' || b == b'\r')
        .filter(|w| !w.is_empty())
        .collect();
    words.first()?.starts_with(b"/").then_some(words)
}

const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// The loader's directories after its cache, for a 64-bit ELF machine (Debian's multiarch
/// first).
fn system_dirs(machine: u16) -> &'static [&'static str] {
    match machine {
        EM_X86_64 => &[
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
        ],
        EM_AARCH64 => &[
            "/lib/aarch64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
        ],
        _ => &["/lib64", "/usr/lib64", "/lib", "/usr/lib"],
    }
}

/// The flags (above the low byte) ldconfig gives a library of this machine in its cache.
fn cache_flags(machine: u16) -> Option<u32> {
    match machine {
        EM_X86_64 => Some(0x0300),
        EM_AARCH64 => Some(0x0a00),
        _ => None,
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    get_uint(b, at, 2).map(|v| v as u16)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    get_uint(b, at, 8)
}

/// What a 64-bit little-endian ELF file's program headers say about what it needs.
#[derive(Debug, PartialEq)]
struct Elf {
    machine: u16,
    /// Where the interpreter's path is in the file.
    interp: Option<std::ops::Range<u64>>,
    /// Where the dynamic section is in the file.
    dynamic: Option<std::ops::Range<u64>>,
    /// The loaded segments: (address, file offset, bytes in the file).
    loads: Vec<(u64, u64, u64)>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
/// Bytes of one 64-bit program header.
const PHDR: usize = 56;

impl Elf {
    /// From a file's head: None when it is not a 64-bit little-endian ELF file or its program
    /// headers are not all in `head`.
    fn parse(head: &[u8]) -> Option<Elf> {
        if head.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let machine = u16_at(head, 18)?;
        let phoff = usize::try_from(u64_at(head, 32)?).ok()?;
        if usize::from(u16_at(head, 54)?) != PHDR {
            return None;
        }
        let phnum = usize::from(u16_at(head, 56)?);
        let mut elf = Elf {
            machine,
            interp: None,
            dynamic: None,
            loads: Vec::new(),
        };
        for i in 0..phnum {
            let h = head.get(phoff.checked_add(i * PHDR)?..)?.get(..PHDR)?;
            let (offset, addr, size) = (u64_at(h, 8)?, u64_at(h, 16)?, u64_at(h, 32)?);
            let range = offset..offset.checked_add(size.min(MAX_TABLE))?;
            match get_u32(h, 0)? {
                PT_LOAD => elf.loads.push((addr, offset, size)),
                PT_DYNAMIC => elf.dynamic = Some(range),
                PT_INTERP => elf.interp = Some(range),
                _ => {}
            }
        }
        Some(elf)
    }

    /// Where the byte loaded at `addr` is in the file.
    fn offset_of(&self, addr: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|(a, _, size)| addr >= *a && addr - a < *size)
            .map(|(a, offset, _)| offset + (addr - a))
    }
}

/// What a dynamic section names: offsets into its string table, and the table's address.
#[derive(Debug, Default, PartialEq)]
struct Dynamic {
    needed: Vec<u64>,
    rpath: Option<u64>,
    runpath: Option<u64>,
    strtab: Option<u64>,
    strsz: u64,
}

impl Dynamic {
    fn parse(bytes: &[u8]) -> Dynamic {
        let mut d = Dynamic::default();
        for entry in bytes.chunks_exact(16) {
            let (Some(tag), Some(value)) = (u64_at(entry, 0), u64_at(entry, 8)) else {
                break;
            };
            match tag {
                0 => break,
                1 => d.needed.push(value),
                5 => d.strtab = Some(value),
                10 => d.strsz = value,
                15 => d.rpath = Some(value),
                29 => d.runpath = Some(value),
                _ => {}
            }
        }
        d
    }
}

/// glibc's `/etc/ld.so.cache` in its current format ("glibc-ld.so.cache1.1", alone or after
/// the old one): each library's flags, name and path, in the cache's order.
fn parse_ld_cache(bytes: &[u8]) -> Vec<Cached> {
    const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
    /// Bytes of the header and of one entry.
    const HEADER: usize = 48;
    const ENTRY: usize = 24;
    let Some(base) = bytes.windows(MAGIC.len()).position(|w| w == MAGIC) else {
        return Vec::new();
    };
    let new = &bytes[base..];
    let count = get_u32(new, 20).map_or(0, |n| n as usize);
    // Strings are at offsets from the new format's header.
    let string = |at: u32| -> Option<Vec<u8>> {
        let rest = new.get(at as usize..)?;
        Some(rest.split(|&b| b == 0).next()?.to_vec())
    };
    (0..count)
        .map_while(|i| {
            let e = new.get(HEADER + i * ENTRY..)?.get(..ENTRY)?;
            Some((
                get_u32(e, 0)?,
                string(get_u32(e, 4)?)?,
                string(get_u32(e, 8)?)?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `readelf` on `path` and returns its output.
    fn readelf(args: &[&str], path: &str) -> String {
        let out = std::process::Command::new("readelf")
            .args(args)
            .arg(path)
            .output()
            .expect("readelf (binutils) runs");
        assert!(out.status.success(), "readelf {args:?} {path}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The needed libraries, interpreter and run path of this machine's own programs, as the
    /// parsers read them, against binutils' readelf.
    #[test]
    fn elf_needs_as_readelf_reads_them() {
        for path in [
            "/bin/sh",
            "/usr/bin/ls",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ] {
            let bytes = std::fs::read(path).unwrap();
            let elf = Elf::parse(&bytes[..HEAD as usize]).unwrap();
            let slice = |r: &std::ops::Range<u64>| &bytes[r.start as usize..r.end as usize];
            let interp = elf.interp.as_ref().map(|r| {
                let s = slice(r).split(|&b| b == 0).next().unwrap();
                String::from_utf8(s.to_vec()).unwrap()
            });
            let dynamic = Dynamic::parse(slice(elf.dynamic.as_ref().unwrap()));
            let strtab = elf.offset_of(dynamic.strtab.unwrap()).unwrap() as usize;
            let strings = &bytes[strtab..strtab + dynamic.strsz as usize];
            let name = |at: u64| {
                let s = strings[at as usize..].split(|&b| b == 0).next().unwrap();
                String::from_utf8(s.to_vec()).unwrap()
            };
            let needed: Vec<String> = dynamic.needed.iter().map(|&at| name(at)).collect();
            let expected: Vec<String> = readelf(&["-d", "-W"], path)
                .lines()
                .filter(|l| l.contains("(NEEDED)"))
                .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
                .collect();
            assert!(!expected.is_empty(), "{path} needs libraries");
            assert_eq!(needed, expected, "{path}");
            let headers = readelf(&["-l", "-W"], path);
            let expected_interp = headers
                .lines()
                .find_map(|l| l.split_once("[Requesting program interpreter: "))
                .map(|(_, rest)| rest.trim_end_matches(']').to_string());
            assert_eq!(interp, expected_interp, "{path}");
        }
    }

    /// Every library the host's loader cache lists, as `ldconfig -p` lists it.
    #[test]
    fn the_loader_cache_as_ldconfig_lists_it() {
        let bytes = std::fs::read(LD_CACHE).unwrap();
        let parsed: Vec<(String, String)> = parse_ld_cache(&bytes)
            .into_iter()
            .map(|(_, n, p)| (String::from_utf8(n).unwrap(), String::from_utf8(p).unwrap()))
            .collect();
        let out = std::process::Command::new("/sbin/ldconfig")
            .args(["-p", "-C", LD_CACHE])
            .output()
            .expect("ldconfig runs");
        let listed: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (left, path) = l.split_once(" => ")?;
                let name = left.trim().split(' ').next()?;
                Some((name.to_string(), path.trim().to_string()))
            })
            .collect();
        assert!(listed.len() > 10, "ldconfig -p lists the host's libraries");
        assert_eq!(parsed, listed);
    }

    #[test]
    fn bad_bytes_give_nothing() {
        assert_eq!(Elf::parse(b"\x7fELF\x02\x01"), None);
        let mut head = vec![0u8; 64];
        head[..6].copy_from_slice(b"\x7fELF\x02\x01");
        head[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        head[54] = PHDR as u8;
        head[56] = 3;
        assert_eq!(Elf::parse(&head), None, "program headers out of bounds");
        assert_eq!(Dynamic::parse(&[1u8; 15]), Dynamic::default());
        assert!(parse_ld_cache(b"glibc-ld.so.cache1.1\xff\xff\xff\xff").is_empty());
        assert_eq!(shebang(b"#!python\n"), None, "a relative interpreter");
        assert_eq!(
            shebang(b"#! /usr/bin/env -S python3 -u\nrest"),
            Some(vec![
                b"/usr/bin/env".as_slice(),
                b"-S".as_slice(),
                b"python3".as_slice(),
                b"-u".as_slice()
            ])
        );
        assert_eq!(
            expand_origin(b"$ORIGIN/../lib:${ORIGIN}", b"/opt/a"),
            b"/opt/a/../lib:/opt/a"
        );
    }
}
