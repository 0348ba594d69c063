//! dockerd as the tests meet it: checked to be there with the Debian image, and the export
//! containers and `export` events imgfs leaves in it, told apart by the pid imgfs labels its
//! containers with, so that a test counts its own among those of tests running beside it.

use std::process::{Command, Stdio};

use std::path::{Path, PathBuf};

use super::{
    CompareOptions, DEBIAN_IMAGE, TempDir, compare_trees_with, extract_with_gnu_tar, lock, require,
    run, text,
};

/// The label imgfs gives its export containers: the pid of the process exporting.
const EXPORT_LABEL: &str = "io.imgfs.export-pid";

/// Checks that dockerd runs and holds the Debian image, and holds [`lock::DOCKERD`] shared
/// for the test: keep the guard for as long as the test uses dockerd.
#[track_caller]
pub fn require_docker() -> lock::Held {
    let held = lock::shared(lock::DOCKERD);
    check_docker();
    held
}

/// [`require_docker`] for a test that stops dockerd: holds [`lock::DOCKERD`] alone.
#[track_caller]
pub fn require_docker_alone() -> lock::Held {
    let held = lock::exclusive(lock::DOCKERD);
    check_docker();
    held
}

#[track_caller]
fn check_docker() {
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

/// Export containers still in dockerd that the imgfs processes `pids` made.
pub fn export_containers(pids: &[u32]) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--filter"])
        .arg(format!("label={EXPORT_LABEL}"))
        .arg("--format")
        .arg(format!("{{{{.ID}}}} {{{{.Label \"{EXPORT_LABEL}\"}}}}"))
        .output()
        .expect("run docker ps");
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, pid)| ours(pids, pid))
        .map(|(id, _)| id.to_string())
        .collect()
}

/// `export` events dockerd emitted since `since` (a unix time) for containers the imgfs
/// processes `pids` made.
pub fn export_events(since: &str, pids: &[u32]) -> usize {
    let until = now();
    let out = Command::new("docker")
        .args(["events", "--since", since, "--until", &until])
        .args(["--filter", "event=export", "--filter"])
        .arg(format!("label={EXPORT_LABEL}"))
        .arg("--format")
        .arg(format!(
            "{{{{index .Actor.Attributes \"{EXPORT_LABEL}\"}}}}"
        ))
        .output()
        .expect("run docker events");
    text(&out.stdout).lines().filter(|l| ours(pids, l)).count()
}

fn ours(pids: &[u32], label: &str) -> bool {
    label.trim().parse::<u32>().is_ok_and(|p| pids.contains(&p))
}

/// The time now, as docker's `--since` takes it (seconds with nanoseconds).
pub fn now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// Paths dockerd writes into every container, which `docker export` then holds in place of the
/// image's (/dev/console becomes an empty regular file, /etc/mtab a symlink to /proc/mounts).
pub const DOCKER_INJECTED: [&str; 6] = [
    ".dockerenv",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
    "etc/mtab",
    "dev/console",
];

/// `docker export` of a container of `image`, never started and removed afterwards, to `to`.
#[track_caller]
pub fn docker_export(image: &str, to: &Path) {
    let made = run(Command::new("docker").args(["create", image, "/imgfs-test-placeholder"]));
    assert!(
        made.status.success(),
        "docker create {image}: {}",
        text(&made.stderr)
    );
    let container = text(&made.stdout).trim().to_string();
    let out = run(Command::new("docker")
        .args(["export", "-o"])
        .arg(to)
        .arg(&container));
    run(Command::new("docker").args(["rm", "-f", &container]));
    assert!(
        out.status.success(),
        "docker export {image}: {}",
        text(&out.stderr)
    );
}

/// Differences of `tree` from `docker export` of `image` (see [`differences_from_export`]).
#[track_caller]
pub fn differences_from_docker_export(image: &str, tree: &Path) -> Vec<String> {
    let work = TempDir::new("imgfs-export");
    let tar = work.path().join("export.tar");
    docker_export(image, &tar);
    differences_from_export(&tar, tree)
}

/// Differences of `tree` from the export `tar` of a container, extracted by GNU tar: no
/// root entry in an export (GNU tar leaves the root as it made it), the directories dockerd
/// wrote into (/dev, /etc) carry the container's times, and the paths in [`DOCKER_INJECTED`]
/// are the container's own, left out. The export writes whole-second times where the layers
/// hold nanoseconds (the imported base layer does): a time that agrees to the second is no
/// difference.
#[track_caller]
pub fn differences_from_export(tar: &Path, tree: &Path) -> Vec<String> {
    let exported = TempDir::new("imgfs-exported");
    extract_with_gnu_tar(tar, exported.path());
    let opts = CompareOptions {
        skip_root_meta: true,
        ignore_mtime: ["dev", "etc"].into_iter().map(PathBuf::from).collect(),
        max_lines: usize::MAX,
        ..Default::default()
    };
    compare_trees_with(exported.path(), tree, &opts)
        .into_iter()
        .filter(|d| {
            !same_second(d)
                && !DOCKER_INJECTED
                    .iter()
                    .any(|p| d.starts_with(&format!("\"{p}\":")))
        })
        .collect()
}

/// Whether a difference line is `...: mtime: expected S.000000000, actual S.N`.
fn same_second(line: &str) -> bool {
    let Some((_, times)) = line.rsplit_once(": mtime: expected ") else {
        return false;
    };
    let Some((expected, actual)) = times.split_once(", actual ") else {
        return false;
    };
    match (expected.split_once('.'), actual.split_once('.')) {
        (Some((es, en)), Some((as_, _))) => es == as_ && en.bytes().all(|b| b == b'0'),
        _ => false,
    }
}

/// `tree` equals `docker export` of `image` (see [`differences_from_docker_export`]).
#[track_caller]
pub fn assert_matches_docker_export(image: &str, tree: &Path) {
    let diffs = differences_from_docker_export(image, tree);
    assert!(
        diffs.is_empty(),
        "{} differs from docker export of {image}:\n  {}",
        tree.display(),
        diffs.join("\n  ")
    );
}
