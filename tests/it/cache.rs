//! Managing the cache: `imgfs images`, `rm`, `prune` and `mounts`, on real caches with
//! real mounts; what they report is checked against the files themselves and dockerd.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{
    DEBIAN_IMAGE, Mounted, TempDir, docker_export, extract_with_gnu_tar, fixture_archives, imgfs,
    is_mounted, require_docker, run, text,
};

fn imgfs_in(cache: &Path, args: &[&str]) -> Output {
    run(imgfs().args(args).arg("--cache-dir").arg(cache))
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The entry directory of a cache that indexed the tar file `tar`.
fn entry_of(cache: &Path, tar: &Path) -> PathBuf {
    let tar = std::fs::canonicalize(tar).unwrap();
    std::fs::read_dir(cache.join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| {
            std::fs::read(d.join("source")).is_ok_and(|s| s == tar.as_os_str().as_encoded_bytes())
        })
        .unwrap_or_else(|| panic!("no entry for {}", tar.display()))
}

/// Bytes the files under `dir` take on disk, per find(1).
fn allocated(dir: &Path) -> u64 {
    let out = run(Command::new("find")
        .arg(dir)
        .args(["-type", "f", "-printf", "%b\n"]));
    text(&out.stdout)
        .lines()
        .map(|l| l.parse::<u64>().unwrap() * 512)
        .sum()
}

#[test]
fn images_lists_what_the_cache_holds() {
    let _docker = require_docker();
    let cache = TempDir::new("imgfs-images-cache");
    let c = cache.path();
    let tar = fixture_archives().join("pax.tar");
    ok(&imgfs_in(c, &["ls", DEBIAN_IMAGE, "/"]));
    ok(&imgfs_in(c, &["ls", tar.to_str().unwrap(), "/"]));

    let list: serde_json::Value =
        serde_json::from_str(&ok(&imgfs_in(c, &["images", "--json"]))).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:#?}");
    let docker = run(Command::new("docker").args(["image", "inspect", DEBIAN_IMAGE]));
    let docker: serde_json::Value = serde_json::from_slice(&docker.stdout).unwrap();
    let d = list
        .iter()
        .find(|i| i["Id"] == docker[0]["Id"])
        .expect("the docker image");
    assert!(
        d["RepoTags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == DEBIAN_IMAGE)
    );
    let dir = PathBuf::from(d["Directory"].as_str().unwrap());
    assert_eq!(d["DiskBytes"], allocated(&dir));
    // Inodes, counted by GNU find in GNU tar's extraction of an export of the image made
    // here (hard links once, the root included).
    let work = TempDir::new("imgfs-images-export");
    let export = work.path().join("export.tar");
    docker_export(DEBIAN_IMAGE, &export);
    let tree = work.path().join("tree");
    extract_with_gnu_tar(&export, &tree);
    let found = run(Command::new("find").arg(&tree).args(["-printf", "%i\n"]));
    let inodes = text(&found.stdout).lines().collect::<BTreeSet<_>>().len();
    assert_eq!(d["Inodes"], inodes as u64);
    let t = list
        .iter()
        .find(|i| !i["Source"].is_null())
        .expect("the tar file");
    assert_eq!(
        t["Source"],
        std::fs::canonicalize(&tar).unwrap().display().to_string()
    );

    let human = ok(&imgfs_in(c, &["images"]));
    let lines: Vec<&str> = human.lines().collect();
    assert!(lines[0].starts_with("IMAGE ID"), "{human}");
    assert_eq!(lines.len(), 3, "{human}");
    let short = &docker[0]["Id"].as_str().unwrap()[7..19];
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(short) && l.contains(DEBIAN_IMAGE)),
        "{human}"
    );
}

#[test]
fn rm_removes_only_what_is_unused() {
    let _docker = require_docker();
    let cache = TempDir::new("imgfs-rm-cache");
    let c = cache.path();
    let tar = fixture_archives().join("gnu.tar");
    let tar_s = tar.to_str().unwrap();
    ok(&imgfs_in(c, &["ls", tar_s, "/"]));
    let entry = entry_of(c, &tar);

    let m = Mounted::new(c, tar_s);
    let refused = imgfs_in(c, &["rm", tar_s]);
    assert_eq!(refused.status.code(), Some(1));
    let why = text(&refused.stderr);
    assert!(
        why.contains(&format!("in use by pid {}", m.server())),
        "{why}"
    );
    assert!(entry.exists());
    // Still served.
    assert!(std::fs::read_dir(m.path()).unwrap().count() > 0);
    m.umount();

    let removed = ok(&imgfs_in(c, &["rm", tar_s]));
    assert!(removed.starts_with("removed tar ("), "{removed}");
    assert!(!entry.exists());
    assert_eq!(ok(&imgfs_in(c, &["images"])).lines().count(), 1);

    let missing = imgfs_in(c, &["rm", "no-such-image:1"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("no such image in the cache"));

    // A docker image, by a prefix of its id; its name without the tag means :latest.
    ok(&imgfs_in(c, &["ls", DEBIAN_IMAGE, "/"]));
    let untagged = DEBIAN_IMAGE.split(':').next().unwrap();
    assert_eq!(imgfs_in(c, &["rm", untagged]).status.code(), Some(1));
    let docker =
        run(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", DEBIAN_IMAGE]));
    let id = text(&docker.stdout).trim().to_string();
    ok(&imgfs_in(c, &["rm", &id[7..15]]));
    assert_eq!(ok(&imgfs_in(c, &["images"])).lines().count(), 1);
}

#[test]
fn prune_by_age_and_by_size_keeps_what_is_in_use() {
    let cache = TempDir::new("imgfs-prune-cache");
    let c = cache.path();
    let archives = fixture_archives();
    let (a, b, d) = (
        archives.join("ustar.tar"),
        archives.join("oldgnu.tar"),
        archives.join("pax-global.tar"),
    );
    for t in [&a, &b, &d] {
        ok(&imgfs_in(c, &["ls", t.to_str().unwrap(), "/"]));
    }
    // `a` last used 40 days ago.
    let old = entry_of(c, &a);
    let touched = run(Command::new("touch")
        .args(["-m", "-d", "40 days ago"])
        .arg(old.join("complete")));
    assert!(touched.status.success());

    let dry = ok(&imgfs_in(c, &["prune", "--older-than", "30d", "--dry-run"]));
    assert!(dry.contains("would remove tar"), "{dry}");
    assert!(old.exists());
    let pruned = ok(&imgfs_in(c, &["prune", "--older-than", "30d"]));
    assert_eq!(
        pruned.lines().filter(|l| l.starts_with("removed")).count(),
        1,
        "{pruned}"
    );
    assert!(!old.exists());
    assert!(entry_of(c, &b).exists() && entry_of(c, &d).exists());

    // Down to nothing: `b` goes, `d` is mounted and stays.
    let m = Mounted::new(c, d.to_str().unwrap());
    let pruned = ok(&imgfs_in(c, &["prune", "--max-size", "0"]));
    assert!(pruned.contains("kept tar"), "{pruned}");
    assert!(
        pruned.contains(&format!("in use by pid {}", m.server())),
        "{pruned}"
    );
    assert!(entry_of(c, &d).exists());
    assert!(
        !std::fs::read_dir(c.join("images"))
            .unwrap()
            .flatten()
            .any(|e| std::fs::read(e.path().join("source"))
                .is_ok_and(|s| s.ends_with(b"oldgnu.tar")))
    );
    m.umount();
    let pruned = ok(&imgfs_in(c, &["prune"]));
    assert!(pruned.contains("removed tar"), "{pruned}");
    assert_eq!(ok(&imgfs_in(c, &["images"])).lines().count(), 1);
}

#[test]
fn mounts_lists_the_live_mounts() {
    let cache = TempDir::new("imgfs-mounts-cache");
    let c = cache.path();
    let tar = fixture_archives().join("bsdtar-pax.tar");
    let tar_s = tar.to_str().unwrap();
    let m = Mounted::new(c, tar_s);
    let list: serde_json::Value =
        serde_json::from_str(&ok(&run(imgfs().args(["mounts", "--json"])))).unwrap();
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Mountpoint"] == m.path().display().to_string())
        .unwrap_or_else(|| panic!("{list:#?}"));
    assert_eq!(mine["Image"], tar_s);
    assert_eq!(mine["Kind"], "mount");
    assert_eq!(mine["State"], "live");
    // The process serving it, as /proc shows it.
    assert_eq!(mine["Pid"], m.server());
    let human = ok(&run(imgfs().arg("mounts")));
    assert!(human.starts_with("MOUNTPOINT"), "{human}");
    // Columns are padded to the widest cell of any mount listed, tests' beside this one too.
    let row = [
        m.path().display().to_string(),
        "mount".into(),
        tar_s.to_string(),
        m.server().to_string(),
        "live".into(),
    ];
    assert!(
        human
            .lines()
            .any(|l| l.split_whitespace().eq(row.iter().map(String::as_str))),
        "{human}"
    );
    let mnt = m.path().to_path_buf();
    m.umount();
    assert!(!is_mounted(&mnt));
    let after = ok(&run(imgfs().arg("mounts")));
    assert!(!after.contains(&mnt.display().to_string()), "{after}");
}
