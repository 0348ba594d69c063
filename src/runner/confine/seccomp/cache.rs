//! Compiled programs kept on disk: [`compiled`] looks a program up by everything that went
//! into it (the profile's bytes, the capability set, the architecture, the kernel's
//! `major.minor`, libseccomp's version) and compiles it only when no whole, matching file
//! from this user is there. Takes a [`ProfileSource`], the capabilities and the cache
//! directory; hands on the [`Program`]. A file is written whole or not at all, and one another
//! user could have written is never trusted.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use libseccomp::ScmpVersion;

use crate::index::le::{PutLe, get_u32};
use crate::sys::{Durability, Publish};

use super::SeccompError;
use super::compile::{Host, build, select};
use super::profile::Profile;
use super::program::{INSN_BYTES, MAX_INSNS, Program};

/// Starts every cache file, so a stray file is never taken for a program.
const CACHE_MAGIC: &[u8; 8] = b"imgfsbpf";
/// Bumped whenever the key or the program generation changes meaning.
const CACHE_FORMAT_VERSION: u32 = 2;
/// Extension of a cache file; its stem is the key's crc32.
const CACHE_EXT: &str = "bpf";
/// Mode of a cache file: written by its owner only, since its content decides what the
/// sandbox may do.
const CACHE_FILE_MODE: u32 = 0o644;

/// Where a profile comes from, for [`compiled`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum ProfileSource<'a> {
    /// [`Profile::docker_default`].
    DockerDefault,
    /// The bytes of a profile in docker's JSON format.
    Json(&'a [u8]),
}

/// Appends a length-prefixed field to a cache key.
fn put(key: &mut Vec<u8>, field: &[u8]) {
    key.put_u64(field.len() as u64);
    key.extend_from_slice(field);
}

/// The default profile as bytes, so that a change to its data changes the cache key.
fn default_profile_bytes() -> Vec<u8> {
    format!("{:?}", Profile::docker_default()).into_bytes()
}

/// Everything a compiled program depends on, as unambiguous bytes.
fn cache_key(
    source: ProfileSource<'_>,
    caps: &BTreeSet<String>,
    host: &Host,
    engine: ScmpVersion,
) -> Vec<u8> {
    let mut key = Vec::new();
    key.put_u32(CACHE_FORMAT_VERSION);
    match source {
        ProfileSource::DockerDefault => {
            key.push(0);
            put(&mut key, &default_profile_bytes());
        }
        ProfileSource::Json(bytes) => {
            key.push(1);
            put(&mut key, bytes);
        }
    }
    key.put_u64(caps.len() as u64);
    for cap in caps {
        put(&mut key, cap.as_bytes());
    }
    put(&mut key, host.arch.name().as_bytes());
    key.put_u32(host.kernel.kernel);
    key.put_u32(host.kernel.major);
    for part in [engine.major, engine.minor, engine.micro] {
        key.put_u32(part);
    }
    key
}

/// Reads a cache file, no further than the largest file made for a key of `key_len` bytes.
/// A file that another user owns or could have written is refused.
fn read_cache_file(path: &Path, key_len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if meta.uid() != crate::sys::euid() || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(
            "owned by another user or writable by others",
        ));
    }
    let limit = CACHE_MAGIC.len() + 4 + key_len + MAX_INSNS * INSN_BYTES + 1;
    let mut bytes = Vec::new();
    file.take(limit as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The program stored in a cache file, if the file is whole and was made for `key`.
fn parse_cache_file<'f>(file: &'f [u8], key: &[u8]) -> Option<&'f [u8]> {
    let rest = file.strip_prefix(CACHE_MAGIC.as_slice())?;
    let len = usize::try_from(get_u32(rest, 0)?).ok()?;
    let (stored_key, bpf) = rest.get(4..)?.split_at_checked(len)?;
    (stored_key == key).then_some(bpf)
}

fn cache_file_bytes(key: &[u8], program: &Program) -> Option<Vec<u8>> {
    let len = u32::try_from(key.len()).ok()?;
    let mut bytes =
        Vec::with_capacity(CACHE_MAGIC.len() + 4 + key.len() + program.len() * INSN_BYTES);
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.put_u32(len);
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&program.to_bytes());
    Some(bytes)
}

/// Writes a cache file whole or not at all (see [`Publish`]), so a concurrent reader sees the
/// old file or the new one.
fn write_cache_file(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    Publish::new(Durability::Atomic)
        .mode(CACHE_FILE_MODE)
        .bytes(path, bytes)
}

/// The program for `source` and `caps` on this machine, from `cache_dir` when it was compiled
/// before. A missing, damaged or foreign cache file is compiled again and replaced; the whole
/// key is compared, so a crc32 collision only costs a recompile. Failing to write the cache
/// is not an error: the program is still returned. `cache_dir` must be writable only by the
/// caller, as a file there decides what the sandbox may do; a file owned by another user or
/// writable by others is ignored and replaced.
pub(crate) fn compiled(
    source: ProfileSource<'_>,
    caps: &BTreeSet<String>,
    cache_dir: &Path,
) -> Result<Program, SeccompError> {
    let host = Host::current()?;
    let engine = ScmpVersion::current().map_err(SeccompError::EngineVersion)?;
    let key = cache_key(source, caps, &host, engine);
    let path = cache_dir.join(format!("{:08x}.{CACHE_EXT}", crc32fast::hash(&key)));
    match read_cache_file(&path, key.len()) {
        Ok(file) => {
            if let Some(program) = parse_cache_file(&file, &key).and_then(Program::from_bytes) {
                return Ok(program);
            }
            log::debug!(
                "seccomp cache {}: stale or damaged, recompiling",
                path.display()
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::debug!(
            "seccomp cache {}: unreadable, recompiling: {e}",
            path.display()
        ),
    }
    let profile = match source {
        ProfileSource::DockerDefault => Profile::docker_default(),
        ProfileSource::Json(bytes) => Profile::from_json(bytes)?,
    };
    let program = build(&profile, &select(&profile, caps, &host))?;
    if let Some(bytes) = cache_file_bytes(&key, &program)
        && let Err(e) = write_cache_file(cache_dir, &path, &bytes)
    {
        log::debug!("seccomp cache {}: not written: {e}", path.display());
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::compile;
    use super::super::tests::caps;
    use super::*;

    fn cache_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("imgfs-seccomp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn cache_round_trip_and_repair() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = temp_dir("cache");
        let plain = caps(&[]);
        let admin_caps = caps(&["CAP_SYS_ADMIN"]);

        let start = std::time::Instant::now();
        let cold = compiled(ProfileSource::DockerDefault, &plain, &dir).unwrap();
        let cold_time = start.elapsed();
        let files = cache_files(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let inode = std::fs::metadata(&files[0]).unwrap().ino();

        let start = std::time::Instant::now();
        let warm = compiled(ProfileSource::DockerDefault, &plain, &dir).unwrap();
        let warm_time = start.elapsed();
        println!("compiled(default): cold {cold_time:?}, warm {warm_time:?}");
        assert_eq!(cold, warm);
        assert_eq!(cold, compile(&Profile::docker_default(), &plain).unwrap());
        // Not rewritten: a rewrite renames a new file over it.
        assert_eq!(std::fs::metadata(&files[0]).unwrap().ino(), inode);
        assert_eq!(cache_files(&dir), files);

        // Damage: a cut file, a file of another key, a program of a wrong length.
        let whole = std::fs::read(&files[0]).unwrap();
        let mut foreign = whole.clone();
        foreign[CACHE_MAGIC.len() + 4] ^= 1;
        let mut ragged = whole.clone();
        ragged.push(0);
        for damaged in [
            whole[..whole.len() - 3].to_vec(),
            foreign,
            ragged,
            Vec::new(),
        ] {
            std::fs::write(&files[0], &damaged).unwrap();
            let again = compiled(ProfileSource::DockerDefault, &plain, &dir).unwrap();
            assert_eq!(again, cold);
            assert_eq!(std::fs::read(&files[0]).unwrap(), whole);
        }

        // Another capability set and a JSON source are other keys, other files.
        let admin = compiled(ProfileSource::DockerDefault, &admin_caps, &dir).unwrap();
        assert_ne!(admin, cold);
        let json = br#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"}]}"#;
        compiled(ProfileSource::Json(json), &plain, &dir).unwrap();
        assert_eq!(cache_files(&dir).len(), 3);
        // A bad JSON profile is an error, and nothing is cached for it.
        assert!(compiled(ProfileSource::Json(b"{}"), &plain, &dir).is_err());
        assert_eq!(cache_files(&dir).len(), 3);
        // A file someone else could have written is not trusted.
        let hostile = cache_files(&dir)[0].clone();
        let before = std::fs::read(&hostile).unwrap();
        std::fs::set_permissions(&hostile, std::fs::Permissions::from_mode(0o666)).unwrap();
        let inode = std::fs::metadata(&hostile).unwrap().ino();
        for source in [ProfileSource::DockerDefault, ProfileSource::Json(json)] {
            for caps in [&plain, &admin_caps] {
                compiled(source, caps, &dir).unwrap();
            }
        }
        assert_ne!(std::fs::metadata(&hostile).unwrap().ino(), inode);
        assert_eq!(std::fs::read(&hostile).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
