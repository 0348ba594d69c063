//! The command line itself: help with an example for every command, shell completions that
//! a real bash uses, and manual pages that man renders.

use crate::common;

use std::process::Command;

use crate::common::{TempDir, imgfs, run, text};

/// The visible commands, from `imgfs --help`.
fn commands() -> Vec<String> {
    let out = run(imgfs().arg("--help"));
    assert!(out.status.success());
    let help = text(&out.stdout);
    let list = help
        .split("Commands:")
        .nth(1)
        .expect("a Commands: section")
        .split("\n\n")
        .next()
        .unwrap()
        .to_string();
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    for want in [
        "mount", "umount", "run", "ls", "cat", "stat", "find", "inspect",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from: {help}"
        );
    }
    assert!(!names.iter().any(|n| n.starts_with("__")), "{help}");
    names
}

#[test]
fn every_command_explains_itself_with_an_example() {
    for cmd in commands() {
        let out = run(imgfs().arg(&cmd).arg("--help"));
        assert!(out.status.success(), "{cmd} --help");
        let help = text(&out.stdout);
        assert!(
            help.contains("Example"),
            "imgfs {cmd} --help has no example:\n{help}"
        );
        assert!(help.contains("Usage: imgfs"), "{help}");
    }
}

#[test]
fn bash_completes_commands_and_options() {
    let script = run(imgfs().args(["completions", "bash"]));
    assert!(script.status.success(), "{}", text(&script.stderr));
    let dir = TempDir::new("imgfs-completion");
    let file = dir.path().join("imgfs.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    // What bash offers after `imgfs ` and after `imgfs run --`.
    let complete = |line: &str| -> Vec<String> {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; \
             _imgfs imgfs '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display(),
            words
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" "),
            words.len() - 1,
            line.len(),
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = run(Command::new("bash").arg("-c").arg(program));
        assert!(out.status.success(), "bash: {}", text(&out.stderr));
        text(&out.stdout).lines().map(str::to_string).collect()
    };
    let first = complete("imgfs ");
    for cmd in commands() {
        assert!(
            first.contains(&cmd),
            "`imgfs ` does not offer {cmd}: {first:?}"
        );
    }
    let run_opts = complete("imgfs run --");
    for opt in ["--linger", "--volume", "--read-only", "--cache-dir"] {
        assert!(
            run_opts.iter().any(|o| o == opt),
            "{opt} not offered: {run_opts:?}"
        );
    }
    for shell in ["zsh", "fish"] {
        let out = run(imgfs().args(["completions", shell]));
        assert!(out.status.success(), "{shell}");
        assert!(text(&out.stdout).contains("inspect"), "{shell}");
    }
    let bad = run(imgfs().args(["completions", "tcsh"]));
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn manual_pages_render() {
    let page = run(imgfs().arg("manpage"));
    assert!(page.status.success(), "{}", text(&page.stderr));
    let dir = TempDir::new("imgfs-man");
    let single = dir.path().join("imgfs.1");
    std::fs::write(&single, &page.stdout).unwrap();
    let rendered = run(Command::new("man")
        .arg("-l")
        .arg(&single)
        .env("MANPAGER", "cat"));
    assert!(rendered.status.success(), "man: {}", text(&rendered.stderr));
    let shown = text(&rendered.stdout);
    assert!(shown.contains("imgfs"), "{shown}");

    let pages = dir.path().join("man1");
    let out = run(imgfs().arg("manpage").arg("--dir").arg(&pages));
    assert!(out.status.success(), "{}", text(&out.stderr));
    for cmd in commands() {
        let p = pages.join(format!("imgfs-{cmd}.1"));
        assert!(p.exists(), "no page {}", p.display());
    }
    let run_page = run(Command::new("man")
        .arg("-l")
        .arg(pages.join("imgfs-run.1"))
        .env("MANPAGER", "cat"));
    assert!(text(&run_page.stdout).contains("linger"));
}

/// `/sbin/mount.imgfs` linked to this build for the test, restored afterwards.
struct Helper {
    previous: Option<std::path::PathBuf>,
}

const HELPER: &str = "/sbin/mount.imgfs";

impl Helper {
    fn install() -> Helper {
        let previous = std::fs::read_link(HELPER).ok();
        let _ = std::fs::remove_file(HELPER);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_imgfs"), HELPER).unwrap();
        Helper { previous }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HELPER);
        if let Some(p) = &self.previous {
            let _ = std::os::unix::fs::symlink(p, HELPER);
        }
    }
}

#[test]
fn mount_8_and_fstab_mount_images_through_the_helper() {
    let _helper = Helper::install();
    let tar = common::fixture_archives().join("pax.tar");
    let cache = TempDir::new("imgfs-helper-cache");
    let mnt = TempDir::new("imgfs-helper-mnt");
    let truth = TempDir::new("imgfs-helper-truth");
    common::extract_with_gnu_tar(&tar, truth.path());
    let opts = format!(
        "defaults,nofail,x-systemd.requires=docker.service,cache-dir={}",
        cache.path().display()
    );

    let out = run(Command::new("mount")
        .args(["-t", "imgfs", "-o", &opts])
        .arg(&tar)
        .arg(mnt.path()));
    assert!(
        out.status.success(),
        "mount -t imgfs: {}",
        text(&out.stderr)
    );
    assert!(common::is_mounted(mnt.path()));
    common::assert_trees_equal(
        truth.path(),
        mnt.path(),
        &common::CompareOptions {
            skip_root_meta: true,
            ..Default::default()
        },
    );
    let out = run(Command::new("umount").arg(mnt.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // From an fstab (mount -T reads another file than /etc/fstab).
    let fstab = cache.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "{} {} imgfs {opts} 0 0\n",
            tar.display(),
            mnt.path().display()
        ),
    )
    .unwrap();
    let out = run(Command::new("mount").arg("-T").arg(&fstab).arg(mnt.path()));
    assert!(
        out.status.success(),
        "mount from fstab: {}",
        text(&out.stderr)
    );
    assert!(common::is_mounted(mnt.path()));
    assert!(
        mnt.path()
            .join(
                std::fs::read_dir(truth.path())
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                    .file_name()
            )
            .exists()
    );
    let out = run(Command::new("umount").arg(mnt.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // An option imgfs does not know: one line naming it, nothing mounted.
    let out = run(Command::new("mount")
        .args(["-t", "imgfs", "-o", "bogus=1"])
        .arg(&tar)
        .arg(mnt.path()));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown mount option 'bogus=1'"),
        "{}",
        text(&out.stderr)
    );
    assert!(!common::is_mounted(mnt.path()));
}
