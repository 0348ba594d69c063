//! The fixtures tests/fixtures/ builds, found (and built when missing) for the tests: the
//! archives of every tar dialect, the Debian image, the layered images and their umoci
//! truths, the eStargz image. The scripts cache what they make under `$IMGFS_FIXTURES`; each
//! test process runs a script at most once.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{fixtures_dir, repo_root, require};

/// Build (or reuse, see the script's header) the fixture archives and return their
/// directory: `fixtures_dir()/archives`; the script runs once per test process.
#[track_caller]
pub fn fixture_archives() -> PathBuf {
    static ARCHIVES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ARCHIVES
        .get_or_init(|| {
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
        })
        .clone()
}

/// Relative paths listed one per line in `file` (e.g. docker-like.synthesized).
pub fn read_path_list(file: &Path) -> Vec<PathBuf> {
    let data = fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| PathBuf::from(OsString::from_vec(l.to_vec())))
        .collect()
}

/// The Debian bookworm + python3 image that tests/fixtures/make-debian-image.sh imports.
pub const DEBIAN_IMAGE: &str = "imgfs-test/debian-python:bookworm";

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
