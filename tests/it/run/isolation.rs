//! Nothing of an image reaches the host (links, a volume over an image's symlink, device
//! nodes, setuid programs), and an unprivileged user's shared servers are that user's alone.

use super::*;

/// The Debian image with hostile additions, as a tar file: symlinks aiming at a host file,
/// a symlink where a volume goes, a memory device node and a setuid-root program.
fn hostile_image(work: &std::path::Path, secret: &std::path::Path) -> PathBuf {
    let tar = fixtures_dir().join("debian-python.tar");
    require(
        tar.exists(),
        "debian-python.tar (tests/fixtures/make-debian-image.sh)",
    );
    let image = work.join("hostile.tar");
    std::fs::copy(&tar, &image).unwrap();
    let stage = work.join("stage");
    std::fs::create_dir_all(&stage).unwrap();
    let s = |cmd: &str| {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&stage)
            .status()
            .unwrap();
        assert!(ok.success(), "{cmd}");
    };
    let secret = secret.display();
    s(&format!("ln -s {secret} escape-abs"));
    s(&format!("ln -s ../../../../../../../..{secret} escape-up"));
    s("ln -s /etc vol");
    s("mknod mem c 1 1");
    s("cp /usr/bin/id suid-id && chown 0:0 suid-id && chmod 4755 suid-id");
    let ok = Command::new("tar")
        .arg("-rf")
        .arg(&image)
        .arg("-C")
        .arg(&stage)
        .args(["escape-abs", "escape-up", "vol", "mem", "suid-id"])
        .status()
        .unwrap();
    assert!(ok.success(), "tar -r");
    image
}

/// Nothing in an image reaches the host: links resolve inside the sandbox, a volume lands
/// where the image's own symlink says inside the root (never on the host's path), device
/// nodes cannot be opened, a setuid program of the image gives no privilege, and an
/// unprivileged caller stays unprivileged.
#[test]
fn nothing_in_an_image_reaches_the_host() {
    let _docker = require_images();
    let work = TempDir::new("imgfs-escape");
    let secret = work.path().join("host-secret");
    std::fs::write(&secret, "host secret\n").unwrap();
    let image = hostile_image(work.path(), &secret);
    let image = image.to_str().unwrap();

    // Links in the image resolve inside the sandbox.
    let out = run_in(
        image,
        &[],
        &["sh", "-c", "cat /escape-abs; cat /escape-up; true"],
    );
    assert!(!text(&out.stdout).contains("host secret"), "{out:?}");
    assert!(text(&out.stderr).contains("No such file"), "{out:?}");

    // A volume whose guest path is a symlink of the image (/vol -> /etc) lands on the
    // image's /etc inside the root; the host's /etc is never touched.
    let vol = TempDir::new("imgfs-escape-vol");
    let spec = format!("{}:/vol", vol.path().display());
    let out = run_in(
        image,
        &["-v", &spec],
        &[
            "sh",
            "-c",
            "echo v > /etc/imgfs-probe && cat /vol/imgfs-probe",
        ],
    );
    assert_eq!(assert_ok(&out), "v\n");
    assert!(vol.path().join("imgfs-probe").exists());
    assert!(!std::path::Path::new("/etc/imgfs-probe").exists());

    // A device node of the image cannot be opened, even by root in the sandbox.
    let out = run_in(image, &[], &["head", "-c", "1", "/mem"]);
    assert!(!out.status.success(), "/mem was readable");
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );

    // The setuid program, run by an unprivileged user from a mount of the image, keeps
    // that user's identity (the mount is nosuid).
    let user = common::test_user();
    let cache = TempDir::new("imgfs-escape-cache");
    let mnt = TempDir::new("imgfs-escape-mnt");
    for p in [work.path(), mnt.path()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let out = output(
        imgfs()
            .args(["mount", "--cache-dir"])
            .arg(cache.path())
            .arg(image)
            .arg(mnt.path()),
    );
    assert_ok(&out);
    let user_sh = |cmd: &str| output(as_user(user).args(["sh", "-c", cmd]));
    let uid = text(&user_sh("id -u").stdout);
    let euid = user_sh(&format!("{}/suid-id -u", mnt.path().display()));
    let _ = output(imgfs().arg("umount").arg(mnt.path()));
    assert_eq!(assert_ok(&euid), uid, "the setuid bit gave privilege");

    // An unprivileged caller's sandbox cannot write what the caller cannot write.
    let user_cache = shared_cache().join("unprivileged");
    std::fs::create_dir_all(&user_cache).unwrap();
    let _ = Command::new("chown").arg(user).arg(&user_cache).status();
    let out = output(
        as_user(user)
            .arg(env!("CARGO_BIN_EXE_imgfs"))
            .arg("run")
            .arg("--cache-dir")
            .arg(&user_cache)
            .args(["-v", "/etc:/hostetc"])
            .arg(fixtures_dir().join("debian-python.tar"))
            .args(["--", "sh", "-c", "touch /hostetc/imgfs-probe"]),
    );
    assert!(!out.status.success(), "an unprivileged sandbox wrote /etc");
    assert!(!std::path::Path::new("/etc/imgfs-probe").exists());
}

/// A second unprivileged account, for what one user must not reach of another's.
fn second_test_user() -> &'static str {
    common::make_user("imgfs-test2")
}

fn uid_of(user: &str) -> u32 {
    let out = output(Command::new("id").args(["-u", user]));
    assert_ok(&out).trim().parse().unwrap()
}

/// A cache directory of `user`'s own.
pub(super) fn user_cache(user: &str, prefix: &str) -> TempDir {
    let dir = TempDir::new(prefix);
    let chown = Command::new("chown").arg(user).arg(dir.path()).status();
    assert!(chown.is_ok_and(|s| s.success()));
    dir
}

/// `imgfs run --cache-dir CACHE OPTS DEBIAN_TAR --` as `user`.
pub(super) fn run_as(user: &str, cache: &std::path::Path, opts: &[&str]) -> Command {
    let mut cmd = as_user(user);
    cmd.arg(env!("CARGO_BIN_EXE_imgfs"))
        .arg("run")
        .arg("--cache-dir")
        .arg(cache)
        .args(opts)
        .arg(debian_tar())
        .arg("--");
    cmd
}

/// The `user_id=` of the FUSE mount at `point` in the host's mount table.
fn fuse_owner(point: &std::path::Path) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let point = point.to_str().unwrap();
    table
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(point))
        .find_map(|l| {
            l.rsplit(' ')
                .next()?
                .split(',')
                .find_map(|o| o.strip_prefix("user_id="))?
                .parse()
                .ok()
        })
}

/// An unprivileged user's warm runs use a shared server of their own, mounted in a private
/// directory of theirs, which shows the image exactly as a run serving it itself does
/// (owners, modes, what may be written) and retires after --linger like root's. Another
/// user can neither list that directory nor bind the mount, and never uses that server, even
/// through the first user's cache.
#[test]
fn unprivileged_users_get_shared_servers_of_their_own() {
    let (alice, bob) = (common::test_user(), second_test_user());
    let (alice_uid, bob_uid) = (uid_of(alice), uid_of(bob));
    let alice_cache = user_cache(alice, "imgfs-alice-cache");
    let bob_cache = user_cache(bob, "imgfs-bob-cache");
    let linger = ["--linger", "2s"];

    // What the sandbox shows and allows, served by the run itself (as before) and by the
    // shared server.
    let probe = "id -u; id -g; \
         stat -c '%u:%g %a %n' / /etc /etc/passwd /etc/shadow /var/mail /usr/bin/passwd /root; \
         ls -ln /etc/shadow; \
         echo extra >> /etc/passwd && tail -n 1 /etc/passwd && stat -c '%u:%g %a' /etc/passwd; \
         echo x > /etc/shadow || echo shadow refused; \
         touch /var/mail/x || echo mail refused; \
         mkdir /new && stat -c '%u:%g %a' /new; \
         python3 -c 'import os; print(os.stat(\"/usr/lib\").st_uid)'";
    let alone =
        output(run_as(alice, alice_cache.path(), &["--linger", "0"]).args(["sh", "-c", probe]));
    let alone = assert_ok(&alone) + &text(&alone.stderr);
    assert!(
        shared_servers(alice_cache.path()).is_empty(),
        "--linger 0 left a server"
    );
    let shared = output(run_as(alice, alice_cache.path(), &linger).args(["sh", "-c", probe]));
    let shared = assert_ok(&shared) + &text(&shared.stderr);
    assert_eq!(shared, alone, "the shared server shows the image otherwise");
    for line in [
        "0:0 644 /etc/passwd",
        "0:65534 640 /etc/shadow",
        "0:65534 2775 /var/mail",
        "0:0 4755 /usr/bin/passwd",
        "extra",
        "shadow refused",
        "mail refused",
    ] {
        assert!(
            shared.lines().any(|l| l == line),
            "no {line:?} in\n{shared}"
        );
    }

    let servers = shared_servers(alice_cache.path());
    assert_eq!(servers.len(), 1, "{servers:?}");
    let (pid, mnt) = servers[0].clone();
    let dir = mnt.parent().unwrap().to_path_buf();
    assert_eq!(dir, PathBuf::from(format!("/tmp/imgfs-{alice_uid}/shared")));
    assert_eq!(fuse_owner(&mnt), Some(alice_uid), "{}", mnt.display());
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (alice_uid, 0o700));
    }
    assert!(
        !sleeping_run_serves_fuse(run_as(alice, alice_cache.path(), &linger), 2),
        "a warm unprivileged run served FUSE itself despite the shared server"
    );
    assert_eq!(shared_servers(alice_cache.path()), vec![(pid, mnt.clone())]);

    // Bob can neither list the directory nor bind the mount.
    let out = output(as_user(bob).arg("ls").arg(&dir));
    assert!(!out.status.success(), "bob listed {}", dir.display());
    let bind = format!(
        "mount --rbind '{}' '{}' && ls '{}'",
        mnt.display(),
        bob_cache.path().display(),
        bob_cache.path().display()
    );
    let out = output(as_user(bob).args(["unshare", "-Urm", "sh", "-c", &bind]));
    assert!(!out.status.success(), "bob bound {}", mnt.display());
    // Through alice's cache, where her server is announced, bob's run serves the image
    // itself; in his own cache it gets a server of his own.
    assert!(
        sleeping_run_serves_fuse(run_as(bob, alice_cache.path(), &linger), 2),
        "bob's run used alice's server"
    );
    let out = output(run_as(bob, bob_cache.path(), &linger).args(["cat", "/etc/debian_version"]));
    assert_ok(&out);
    let bobs = shared_servers(bob_cache.path());
    assert_eq!(bobs.len(), 1, "{bobs:?}");
    assert!(
        bobs[0]
            .1
            .starts_with(format!("/tmp/imgfs-{bob_uid}/shared")),
        "{}",
        bobs[0].1.display()
    );
    assert_ne!(bobs[0].0, pid);

    // Both retire after --linger.
    for (pid, mnt) in [(pid, mnt), bobs[0].clone()] {
        wait_until("the idle server unmounts", || !common::is_mounted(&mnt));
        wait_until("the idle server exits", || !alive(pid));
        assert!(!mnt.exists(), "{} was left behind", mnt.display());
    }
    assert!(shared_servers(alice_cache.path()).is_empty());
    assert!(shared_servers(bob_cache.path()).is_empty());
}
