//! Publishing a file whole or not at all: written under a temporary name beside it, synced
//! when asked, renamed over the final name, and the temporary file removed on any error.
//!
//! Takes the final path and the bytes (or a function that writes them); hands on nothing but
//! the outcome. Guarantees that a reader of the final name sees the file as it was or as it
//! is now, whole, never a part of it; that a failure leaves the old file (or none) and no
//! temporary file behind; and that two writers, in one process or several, never share a
//! temporary file (each is created new, `O_EXCL`, which also refuses a link planted there).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What a published file survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// A crash of any process: readers see the old file or the new one, whole. After a crash
    /// of the machine the new one may be empty. For what is cheap to make again.
    Atomic,
    /// A crash of the machine too: the data reaches the disk (fsync) before the rename, so
    /// the name holds the old file or the whole new one. The rename itself may be lost with
    /// the machine (the directory is not synced), which leaves the old file.
    Synced,
}

/// How to publish: the [`Durability`] and the mode a new file is created with (the umask
/// applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Publish {
    pub durability: Durability,
    pub mode: u32,
}

/// Temporary names tried before giving up: each try skips a leftover of a killed process
/// that had this pid.
const TRIES: u32 = 100;

/// Numbers the temporary files of this process, so that its threads never share one.
static NEXT: AtomicU64 = AtomicU64::new(0);

impl Publish {
    /// Mode 0666 (less the umask), as `File::create` makes files.
    pub(crate) const fn new(durability: Durability) -> Publish {
        Publish {
            durability,
            mode: 0o666,
        }
    }

    pub(crate) const fn mode(self, mode: u32) -> Publish {
        Publish { mode, ..self }
    }

    /// Publishes `bytes` at `path`.
    pub(crate) fn bytes(self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.with(path, |file| file.write_all(bytes))
    }

    /// Publishes at `path` what `write` writes to the (new, empty) temporary file. Its
    /// error type is the caller's, so long as an `io::Error` converts into it.
    pub(crate) fn with<T, E: From<io::Error>>(
        self,
        path: &Path,
        write: impl FnOnce(&mut File) -> Result<T, E>,
    ) -> Result<T, E> {
        let (tmp, mut file) = self.create_temp(path)?;
        let result = write(&mut file).and_then(|value| {
            if self.durability == Durability::Synced {
                file.sync_all()?;
            }
            drop(file);
            std::fs::rename(&tmp, path)?;
            Ok(value)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// A new file `.NAME.PID-N.tmp` beside `path`.
    fn create_temp(self, path: &Path) -> io::Result<(PathBuf, File)> {
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a file to publish needs a name",
            )
        })?;
        let pid = std::process::id();
        for _ in 0..TRIES {
            let mut tmp = OsString::from(".");
            tmp.push(name);
            tmp.push(format!(
                ".{pid}-{}.tmp",
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let tmp = path.with_file_name(tmp);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(self.mode)
                .open(&tmp)
            {
                Ok(file) => return Ok((tmp, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary name to publish under",
        ))
    }
}

/// Publishes `bytes` at `path` with `durability` (see [`Publish`]).
pub(crate) fn publish(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    Publish::new(durability).bytes(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("imgfs-publish-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn publishes_and_replaces() {
        let dir = scratch("replace");
        let path = dir.join("f");
        publish(&path, b"one", Durability::Atomic).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        publish(&path, b"two", Durability::Synced).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(names(&dir), ["f"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failure_leaves_the_old_file_and_no_temporary() {
        let dir = scratch("fail");
        let path = dir.join("f");
        publish(&path, b"old", Durability::Atomic).unwrap();
        let e = Publish::new(Durability::Synced)
            .with(&path, |file| -> io::Result<()> {
                file.write_all(b"half")?;
                Err(io::Error::other("disk full"))
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(&dir), ["f"]);
        // The rename fails too: a directory is in the way.
        let blocked = dir.join("d");
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        assert!(publish(&blocked, b"x", Durability::Atomic).is_err());
        assert_eq!(names(&dir), ["d", "f"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_callers_error_type() {
        #[derive(Debug)]
        enum Fill {
            Io(io::Error),
            Scan,
        }
        impl From<io::Error> for Fill {
            fn from(e: io::Error) -> Fill {
                Fill::Io(e)
            }
        }
        let dir = scratch("error");
        let e = Publish::new(Durability::Atomic)
            .with(&dir.join("f"), |_| Err::<(), _>(Fill::Scan))
            .unwrap_err();
        assert!(matches!(e, Fill::Scan));
        let e = Publish::new(Durability::Atomic)
            .with(&dir.join("no/such/dir/f"), |_| Ok::<(), Fill>(()))
            .unwrap_err();
        assert!(matches!(e, Fill::Io(e) if e.kind() == io::ErrorKind::NotFound));
        assert!(names(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mode_and_value() {
        let dir = scratch("mode");
        let path = dir.join("f");
        let n = Publish::new(Durability::Atomic)
            .mode(0o600)
            .with(&path, |file| -> io::Result<usize> { file.write(b"abc") })
            .unwrap();
        assert_eq!(n, 3);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0);
        assert!(publish(Path::new("/"), b"", Durability::Atomic).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
