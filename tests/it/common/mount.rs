//! The one guard of an `imgfs mount` for every test: [`Mount`] says what to mount and how,
//! [`Mounted`] is the mount made, unmounted when dropped (by `imgfs umount`, and lazily as a
//! last resort), so that a failing test leaves no mount behind. A mount that must fail gives
//! its output back instead, with its mountpoint, checked to be left unmounted.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::{TempDir, imgfs, is_mounted, run, run_within_pid, servers_of, text, wait_until};

/// How long a mount may take unless told otherwise (an export or a download included).
pub const MOUNT_LIMIT: Duration = Duration::from_secs(300);

/// `imgfs mount --cache-dir CACHE [OPTS] SOURCE DIR`, DIR a new temporary directory unless
/// [`at`](Mount::at) names one.
pub struct Mount {
    cache: PathBuf,
    source: OsString,
    opts: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    at: Option<PathBuf>,
    limit: Duration,
}

/// A mount that failed: what the command said, and its mountpoint.
pub struct Failed {
    pub output: Output,
    pub dir: PathBuf,
    _owned: Option<TempDir>,
}

impl Mount {
    pub fn new(cache: &Path, source: impl AsRef<OsStr>) -> Mount {
        Mount {
            cache: cache.to_path_buf(),
            source: source.as_ref().to_owned(),
            opts: Vec::new(),
            env: Vec::new(),
            at: None,
            limit: MOUNT_LIMIT,
        }
    }

    /// Options before SOURCE.
    pub fn opts<S: AsRef<OsStr>>(mut self, opts: &[S]) -> Mount {
        self.opts.extend(opts.iter().map(|o| o.as_ref().to_owned()));
        self
    }

    /// An environment variable of the command.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Mount {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// dockerd out of reach: a source that needs no daemon must not use it.
    pub fn nodaemon(self) -> Mount {
        self.env("DOCKER_HOST", "unix:///nonexistent")
    }

    /// Mounts on `dir` (which the caller owns) rather than a new directory.
    pub fn at(mut self, dir: &Path) -> Mount {
        self.at = Some(dir.to_path_buf());
        self
    }

    /// Fails the test if the command takes longer than `limit` (a hang is a failure).
    pub fn limit(mut self, limit: Duration) -> Mount {
        self.limit = limit;
        self
    }

    /// The mount; or the failed command's output, its mountpoint checked to be unmounted.
    #[track_caller]
    pub fn try_mount(self) -> Result<Mounted, Failed> {
        let owned = match self.at {
            Some(_) => None,
            None => Some(TempDir::new("imgfs-mnt")),
        };
        let dir = match (&self.at, &owned) {
            (Some(at), _) => at.clone(),
            (None, Some(t)) => t.path().to_path_buf(),
            (None, None) => unreachable!(),
        };
        let mut cmd = imgfs();
        cmd.arg("mount")
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(&self.opts)
            .arg(&self.source)
            .arg(&dir);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let (pid, output) = run_within_pid(&mut cmd, self.limit);
        if output.status.success() {
            assert!(
                is_mounted(&dir),
                "mount of {} returned before {} was mounted",
                self.source.to_string_lossy(),
                dir.display()
            );
            Ok(Mounted {
                path: dir,
                _owned: owned,
                stderr: text(&output.stderr),
                pid,
            })
        } else {
            assert!(!is_mounted(&dir), "a failed mount left a mount");
            Err(Failed {
                output,
                dir,
                _owned: owned,
            })
        }
    }

    /// The mount; fails the test with the command's error if there is none.
    #[track_caller]
    pub fn done(self) -> Mounted {
        let what = format!(
            "imgfs mount {:?} {}",
            self.opts,
            self.source.to_string_lossy()
        );
        match self.try_mount() {
            Ok(m) => m,
            Err(f) => panic!(
                "{what} failed ({}): {}",
                f.output.status,
                text(&f.output.stderr)
            ),
        }
    }
}

/// A live mount of an image; unmounted when dropped.
pub struct Mounted {
    path: PathBuf,
    _owned: Option<TempDir>,
    /// What `imgfs mount` printed on stderr.
    pub stderr: String,
    /// The pid `imgfs mount` ran as (an export it made carries it).
    pub pid: u32,
}

impl Mounted {
    /// `imgfs mount --cache-dir CACHE SOURCE DIR`, which must succeed.
    #[track_caller]
    pub fn new(cache: &Path, source: impl AsRef<OsStr>) -> Mounted {
        Mount::new(cache, source).done()
    }

    /// A mount made otherwise on `dir` (which the caller owns), to be unmounted as one made
    /// here.
    pub fn adopt(dir: &Path) -> Mounted {
        Mounted {
            path: dir.to_path_buf(),
            _owned: None,
            stderr: String::new(),
            pid: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid of the one server serving it.
    #[track_caller]
    pub fn server(&self) -> i32 {
        let pids = servers_of(&self.path);
        assert_eq!(
            pids.len(),
            1,
            "servers of {}: {pids:?}",
            self.path.display()
        );
        pids[0]
    }

    /// `imgfs umount`, which must succeed, leave nothing mounted and end the server.
    #[track_caller]
    pub fn umount(self) {
        let out = run(imgfs().arg("umount").arg(&self.path));
        assert!(
            out.status.success(),
            "umount {}: {}",
            self.path.display(),
            text(&out.stderr)
        );
        assert!(!is_mounted(&self.path), "still mounted after umount");
        wait_until("the server exits", || servers_of(&self.path).is_empty());
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.path) {
            let _ = imgfs().arg("umount").arg(&self.path).output();
        }
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
