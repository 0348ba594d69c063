//! `imgfs run` end to end: real images in a real dockerd, real namespaces, real programs,
//! compared with `docker run` of the same image.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::common::{
    TempDir, as_user, fixtures_dir, imgfs, lock, require, require_docker, text, wait_until,
};

/// Debian bookworm + python3, imported from a debootstrap tree.
const DEBIAN_IMAGE: &str = "imgfs-test/debian-python:bookworm";
/// The same with Env, WorkingDir, User and Cmd set, and CPython's test suite
/// (tests/fixtures/python-app.Dockerfile).
const APP_IMAGE: &str = "imgfs-test/python-app:bookworm";

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Checks that dockerd holds both images, and holds dockerd's lock for the test (see
/// [`require_docker`]).
#[track_caller]
fn require_images() -> lock::Held {
    let held = require_docker();
    let ok = Command::new("docker")
        .args(["image", "inspect", APP_IMAGE])
        .output();
    require(
        ok.is_ok_and(|o| o.status.success()),
        &format!(
            "the image {APP_IMAGE} in a running dockerd (tests/fixtures/make-debian-image.sh)"
        ),
    );
    held
}

/// The cache the tests of this binary share.
fn shared_cache() -> PathBuf {
    common::shared_run_cache()
}

/// `imgfs run --cache-dir SHARED IMAGE -- ARGS`, as root.
fn run_in(image: &str, opts: &[&str], args: &[&str]) -> Output {
    output(
        imgfs()
            .arg("run")
            .arg("--cache-dir")
            .arg(shared_cache())
            .args(opts)
            .arg(image)
            .arg("--")
            .args(args),
    )
}

fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Lines of the host's mount table that a sandbox left behind: anything mounted in a
/// sandbox's scratch directories (the image's FUSE mount, the overlay, /proc, ...), whose
/// parents are /run/imgfs for root and $XDG_RUNTIME_DIR/imgfs or /tmp/imgfs-UID otherwise.
/// Other imgfs mounts on the host (a user's own, the live-mount test's) are not the runner's.
fn imgfs_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            let point = l.split(' ').nth(4).unwrap_or("");
            is_scratch(point)
        })
        .map(str::to_string)
        .collect()
}

fn is_scratch(point: &str) -> bool {
    let digits_then_slash = |rest: &str| {
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        n > 0 && (rest.len() == n || rest.as_bytes()[n] == b'/')
    };
    if let Some(rest) = point.strip_prefix("/run/imgfs/") {
        // /run/imgfs/shared holds the shared servers' mounts, which outlive runs by design.
        return digits_then_slash(rest);
    }
    if point == "/run/imgfs" {
        return true;
    }
    if let Some(rest) = point.strip_prefix("/tmp/imgfs-") {
        // As root's, a user's shared servers (imgfs-UID/shared) outlive runs by design.
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        return digits_then_slash(rest) && !rest[n..].starts_with("/shared/");
    }
    if let Some(rest) = point.strip_prefix("/run/user/") {
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        let rest = &rest[n..];
        return n > 0
            && (rest == "/imgfs" || rest.starts_with("/imgfs/"))
            && !rest.starts_with("/imgfs/shared/");
    }
    false
}

#[test]
fn scratch_mountpoints_are_recognised() {
    assert!(is_scratch("/run/imgfs/123"));
    assert!(is_scratch("/run/imgfs/123/lower"));
    assert!(is_scratch("/tmp/imgfs-1000/55/lower"));
    assert!(is_scratch("/run/user/1000/imgfs/55"));
    assert!(!is_scratch("/tmp/imgfs-live-mount-1-2-3"));
    assert!(!is_scratch("/var/tmp/imgfs-bench-full/mnt/python-imgfs"));
    assert!(!is_scratch("/run/imgfsx"));
    assert!(!is_scratch("/run/imgfs/shared/sha256-9d5da1c6326e-77"));
    assert!(!is_scratch("/tmp/imgfs-1000/shared/sha256-9d5da1c6326e-77"));
    assert!(!is_scratch(
        "/run/user/1000/imgfs/shared/sha256-9d5da1c6326e-77"
    ));
}

/// Host processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = text(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .unwrap_or_default()
            .contains(") Z ");
        if cmd.contains(needle) && !zombie {
            found.push(cmd);
        }
    }
    found
}

#[test]
fn python_runs_and_writes_land_in_the_upper_layer() {
    let _docker = require_images();
    let before = cache_fingerprint();
    let out = run_in(
        DEBIAN_IMAGE,
        &[],
        &[
            "sh",
            "-c",
            "python3 -c 'import json, sqlite3, ssl, ctypes, decimal; print(json.dumps([1]))' && \
             echo tmp > /tmp/t && cat /tmp/t && echo root > /written && cat /written && \
             echo x >> /etc/os-release && rm /bin/ls && test ! -e /bin/ls && echo changed",
        ],
    );
    assert_eq!(assert_ok(&out), "[1]\ntmp\nroot\nchanged\n");
    // The next run starts from the image again, and the cache did not change.
    let out = run_in(
        DEBIAN_IMAGE,
        &[],
        &[
            "sh",
            "-c",
            "test -e /written || test -x /bin/ls && echo pristine",
        ],
    );
    assert_eq!(assert_ok(&out), "pristine\n");
    assert_eq!(cache_fingerprint(), before);
    assert!(imgfs_mounts().is_empty(), "{:?}", imgfs_mounts());
}

/// Size and a content hash of the files of the Debian image's entry in the shared cache
/// (other tests add entries of their own images to that cache meanwhile).
fn cache_fingerprint() -> BTreeMap<PathBuf, (u64, String)> {
    // Make sure the entry exists before taking the first fingerprint.
    assert_ok(&run_in(DEBIAN_IMAGE, &[], &["true"]));
    let id =
        output(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", DEBIAN_IMAGE]));
    let entry = shared_cache()
        .join("images")
        .join(text(&id.stdout).trim().replace(':', "-"));
    let mut out = BTreeMap::new();
    for name in ["archive.tar", "index"] {
        let path = entry.join(name);
        let sum = output(Command::new("sha256sum").arg(&path));
        assert!(sum.status.success(), "{}", path.display());
        let len = std::fs::metadata(&path).unwrap().len();
        out.insert(path, (len, text(&sum.stdout)));
    }
    out
}

#[test]
fn read_only_refuses_writes() {
    let _docker = require_images();
    let out = run_in(
        DEBIAN_IMAGE,
        &["--read-only"],
        &["sh", "-c", "echo x > /etc/x"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    // /tmp stays writable.
    assert_ok(&run_in(
        DEBIAN_IMAGE,
        &["--read-only"],
        &["sh", "-c", "echo x > /tmp/x"],
    ));
}

#[test]
fn image_config_applies_like_docker_run() {
    let _docker = require_images();
    let mine = output(
        imgfs()
            .arg("run")
            .arg("--cache-dir")
            .arg(shared_cache())
            .arg(APP_IMAGE),
    );
    let docker = output(Command::new("docker").args(["run", "--rm", APP_IMAGE]));
    assert_eq!(assert_ok(&mine), assert_ok(&docker));
    assert_eq!(assert_ok(&mine), "hello fixture app /srv/app\n");

    let script = "echo $GREETING $APP_MODE $EXTRA $HOME $(id -u):$(id -g) $(pwd) $(hostname)";
    let opts = [
        "-e",
        "EXTRA=cli",
        "-e",
        "APP_MODE=override",
        "-u",
        "root",
        "-w",
        "/tmp",
        "--hostname",
        "box",
    ];
    let mine = run_in(APP_IMAGE, &opts, &["sh", "-c", script]);
    let docker = output(
        Command::new("docker")
            .args(["run", "--rm"])
            .args(opts)
            .args([APP_IMAGE, "sh", "-c", script]),
    );
    assert_eq!(assert_ok(&mine), assert_ok(&docker));
    assert_eq!(assert_ok(&mine), "hello override cli /root 0:0 /tmp box\n");

    // --env-file and --entrypoint.
    let work = TempDir::new("imgfs-envfile");
    let env_file = work.path().join("env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=yes\n\nGREETING=file\n").unwrap();
    let out = run_in(
        APP_IMAGE,
        &[
            "--env-file",
            env_file.to_str().unwrap(),
            "--entrypoint",
            "printenv",
        ],
        &["FROM_FILE", "GREETING"],
    );
    assert_eq!(assert_ok(&out), "yes\nfile\n");
}

#[test]
fn volumes_read_and_write_through() {
    let _docker = require_images();
    let work = TempDir::new("imgfs-volume");
    std::fs::write(work.path().join("in.txt"), "from host\n").unwrap();
    let rw = format!("{}:/work", work.path().display());
    let out = run_in(
        DEBIAN_IMAGE,
        &["-v", &rw, "-w", "/work"],
        &["sh", "-c", "cat in.txt && echo from sandbox > out.txt"],
    );
    assert_eq!(assert_ok(&out), "from host\n");
    assert_eq!(
        std::fs::read_to_string(work.path().join("out.txt")).unwrap(),
        "from sandbox\n"
    );

    let ro = format!("{}:/work:ro", work.path().display());
    let out = run_in(
        DEBIAN_IMAGE,
        &["-v", &ro],
        &["sh", "-c", "cat /work/in.txt && echo no > /work/no.txt"],
    );
    assert!(!out.status.success());
    assert_eq!(text(&out.stdout), "from host\n");
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    assert!(!work.path().join("no.txt").exists());

    // A symlink in the image cannot send a volume outside the root: /bin -> usr/bin.
    let out = run_in(
        DEBIAN_IMAGE,
        &["-v", &ro.replace(":/work", ":/bin/volume")],
        &["cat", "/usr/bin/volume/in.txt"],
    );
    assert_eq!(assert_ok(&out), "from host\n");
}

#[test]
fn exit_codes_and_signals_propagate() {
    let _docker = require_images();
    let code = |args: &[&str]| run_in(DEBIAN_IMAGE, &[], args).status.code();
    assert_eq!(code(&["sh", "-c", "exit 42"]), Some(42));
    assert_eq!(code(&["sh", "-c", "kill -KILL $$"]), Some(137));
    assert_eq!(code(&["nonexistent-command"]), Some(127));

    // A signal sent to imgfs run reaches the command; nothing is left afterwards.
    for (signal, expect) in [
        (libc::SIGTERM, 143),
        (libc::SIGINT, 130),
        (libc::SIGHUP, 129),
    ] {
        // The sleep's command line, written so that imgfs's own arguments do not contain it.
        let marker = format!("sleep 7000{signal}");
        let mut child = imgfs()
            .arg("run")
            .arg("--cache-dir")
            .arg(shared_cache())
            .arg(DEBIAN_IMAGE)
            .args([
                "--",
                "sh",
                "-c",
                &format!("n=7000; exec sleep ${{n}}{signal}"),
            ])
            .spawn()
            .unwrap();
        wait_until("the command runs", || !processes_with(&marker).is_empty());
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(
            child.wait().unwrap().code(),
            Some(expect),
            "signal {signal}"
        );
        wait_until("the sandbox is gone", || processes_with(&marker).is_empty());
    }
    assert!(imgfs_mounts().is_empty(), "{:?}", imgfs_mounts());
}

/// kill -9 of imgfs run takes the whole sandbox with it.
#[test]
fn killed_runner_leaves_nothing_behind() {
    let _docker = require_images();
    let marker = "sleep 80009";
    let mut child = imgfs()
        .arg("run")
        .arg("--cache-dir")
        .arg(shared_cache())
        .arg(DEBIAN_IMAGE)
        .args(["--", "sh", "-c", "n=8000; exec sleep ${n}9"])
        .spawn()
        .unwrap();
    wait_until("the command runs", || !processes_with(marker).is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("the sandbox dies with imgfs run", || {
        processes_with(marker).is_empty()
    });
    assert!(imgfs_mounts().is_empty(), "{:?}", imgfs_mounts());
}

#[test]
fn sandbox_has_its_own_proc_dev_network_and_etc() {
    let _docker = require_images();
    let out = run_in(
        DEBIAN_IMAGE,
        &["--hostname", "inside"],
        &[
            "sh",
            "-c",
            "echo $$; ls /dev | tr '\\n' ' '; echo; cat /etc/hostname; grep -c inside /etc/hosts; \
             ls /sys/class/net | tr '\\n' ' '; echo; head -c 4 /dev/zero | od -An -tx1; \
             test -c /dev/pts/ptmx && echo pts",
        ],
    );
    let got = assert_ok(&out);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[0], "2", "the command is PID 2, under imgfs's init");
    for dev in [
        "full", "null", "ptmx", "pts", "random", "shm", "tty", "urandom", "zero",
    ] {
        assert!(
            lines[1].split(' ').any(|d| d == dev),
            "/dev lacks {dev}: {}",
            lines[1]
        );
    }
    assert_eq!(lines[2], "inside");
    assert_eq!(lines[3], "1");
    assert_eq!(lines[4].trim(), "lo", "only loopback without --net host");
    assert_eq!(lines[5].trim(), "00 00 00 00");
    assert_eq!(lines[6], "pts");

    let host_net = run_in(
        DEBIAN_IMAGE,
        &["--net", "host"],
        &["sh", "-c", "ls /sys/class/net | wc -l"],
    );
    let host_count = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert_eq!(assert_ok(&host_net).trim(), host_count.to_string());
}

#[test]
fn bad_input_fails_with_one_clear_line() {
    let _docker = require_images();
    let tar = fixtures_dir().join("debian-python.tar");
    let cases: [(&[&str], &[&str], &str); 5] = [
        (
            &["-u", "nobody-here"],
            &["true"],
            "unable to find user nobody-here",
        ),
        (
            &["-v", "/nonexistent-imgfs:/x"],
            &["true"],
            "bad volume '/nonexistent-imgfs:/x'",
        ),
        (&["-v", "relative:/x"], &["true"], "must be absolute"),
        (
            &[],
            &["no-such-program"],
            "executable file not found in $PATH",
        ),
        (&["-t"], &["true"], "the input device is not a TTY"),
    ];
    for (opts, args, expect) in cases {
        let out = output(
            imgfs()
                .arg("run")
                .arg("--cache-dir")
                .arg(shared_cache())
                .args(opts)
                .arg(DEBIAN_IMAGE)
                .arg("--")
                .args(args)
                .stdin(Stdio::null()),
        );
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{opts:?} {args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{opts:?}: {err}");
    }
    // A tar archive has no config: without a command there is nothing to run.
    let out = output(
        imgfs()
            .arg("run")
            .arg("--cache-dir")
            .arg(shared_cache())
            .arg(&tar),
    );
    assert!(
        text(&out.stderr).contains("no command specified"),
        "{}",
        text(&out.stderr)
    );
    assert!(imgfs_mounts().is_empty());
}

#[test]
fn a_terminal_works_with_it() {
    let _docker = require_images();
    // script(1) gives imgfs a pseudo-terminal, as a user's shell would.
    let cmd = format!(
        "stty cols 100 rows 40; {} run -it --cache-dir {} {} -- sh -c 'tty; stty size; test -t 0 && echo interactive'",
        env!("CARGO_BIN_EXE_imgfs"),
        shared_cache().display(),
        DEBIAN_IMAGE
    );
    let out = output(
        Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("COLUMNS", "100")
            .env("LINES", "40"),
    );
    let got = text(&out.stdout);
    assert!(out.status.success(), "{got}{}", text(&out.stderr));
    assert!(got.contains("/dev/pts/"), "{got}");
    assert!(got.contains("interactive"), "{got}");
}

/// The rw-dir keeps the writable layer for the next run.
#[test]
fn rw_dir_persists_between_runs() {
    let _docker = require_images();
    let dir = TempDir::new("imgfs-rwdir");
    let opt = dir.path().to_str().unwrap();
    assert_ok(&run_in(
        DEBIAN_IMAGE,
        &["--rw-dir", opt],
        &["sh", "-c", "echo kept > /root/state"],
    ));
    let out = run_in(DEBIAN_IMAGE, &["--rw-dir", opt], &["cat", "/root/state"]);
    assert_eq!(assert_ok(&out), "kept\n");
    assert!(dir.path().join("upper/root/state").exists());
}

/// The same checks as an unprivileged user: a user namespace maps the caller to root inside.
#[test]
fn unprivileged_user_gets_a_sandbox_too() {
    let _docker = require_images();
    let user = common::test_user();
    let tar = fixtures_dir().join("debian-python.tar");
    require(
        tar.exists(),
        "debian-python.tar (tests/fixtures/make-debian-image.sh)",
    );
    let cache = shared_cache().join("unprivileged");
    std::fs::create_dir_all(&cache).unwrap();
    let _ = Command::new("chown").arg(user).arg(&cache).status();
    let as_user = |opts: &[&str], args: &[&str]| {
        output(
            as_user(user)
                .arg(env!("CARGO_BIN_EXE_imgfs"))
                .arg("run")
                .arg("--cache-dir")
                .arg(&cache)
                .args(opts)
                .arg(&tar)
                .arg("--")
                .args(args),
        )
    };
    let out = as_user(
        &[],
        &[
            "sh",
            "-c",
            "id -u; python3 -c 'import json; print(json.dumps(2))'; echo w > /w && cat /w",
        ],
    );
    assert_eq!(assert_ok(&out), "0\n2\nw\n");
    let out = as_user(&["--read-only"], &["sh", "-c", "echo x > /x"]);
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(as_user(&[], &["sh", "-c", "exit 7"]).status.code(), Some(7));
    let out = as_user(&["-u", "nobody"], &["true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("needs imgfs run as root"),
        "{}",
        text(&out.stderr)
    );
    assert!(imgfs_mounts().is_empty());
}

/// The CPython regression tests give the same results under imgfs run as under docker run.
#[test]
fn cpython_tests_match_docker_run() {
    let _docker = require_images();
    let tests = [
        "test_os",
        "test_posix",
        "test_shutil",
        "test_tempfile",
        "test_subprocess",
        "test_pathlib",
        "test_glob",
        "test_socket",
        "test_select",
        "test_fcntl",
        "test_pty",
        "test_pwd",
        "test_grp",
        "test_json",
        "test_sqlite3",
        "test_tarfile",
        "test_threading",
        "test_resource",
        "test_mmap",
        "test_uuid",
        "test_locale",
    ];
    let outcomes = |out: &Output| -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for line in text(&out.stdout).lines() {
            for word in ["passed", "failed", "skipped", "crashed"] {
                if let Some(t) = tests
                    .iter()
                    .find(|t| line.contains(&format!(" {t} {word}")))
                {
                    m.insert(t.to_string(), word.to_string());
                }
            }
        }
        m
    };
    let mut args = vec!["python3", "-m", "test", "-j2"];
    args.extend(tests);
    let mine = run_in(APP_IMAGE, &[], &args);
    let docker = output(
        Command::new("docker")
            .args(["run", "--rm", APP_IMAGE])
            .args(&args),
    );
    let (m, d) = (outcomes(&mine), outcomes(&docker));
    assert_eq!(m.len(), tests.len(), "imgfs run: {}", text(&mine.stdout));
    assert_eq!(m, d, "imgfs run and docker run disagree");
    let passed = m.values().filter(|v| *v == "passed").count();
    assert!(passed >= tests.len() - 3, "only {passed} passed: {m:?}");
}

/// Ctrl-C typed on the terminal reaches the command through the sandbox's terminal.
#[test]
fn ctrl_c_reaches_the_command_on_a_terminal() {
    let _docker = require_images();
    let cmd = format!(
        "{} run -it --cache-dir {} {} -- sh -c 'trap \"echo got-int; exit 3\" INT; echo ready; while :; do sleep 0.1; done'",
        env!("CARGO_BIN_EXE_imgfs"),
        shared_cache().display(),
        DEBIAN_IMAGE
    );
    // Type Ctrl-C (byte 3) into script(1)'s terminal once the command says it is ready.
    let mut script = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = script.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !text(&seen).contains("ready") {
        use std::io::Read;
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "no 'ready' from the sandbox: {}", text(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    {
        use std::io::{Read, Write};
        script.stdin.as_mut().unwrap().write_all(b"\x03").unwrap();
        // Keep script's stdin open until the command ends: at EOF script stops relaying.
        stdout.read_to_end(&mut seen).unwrap();
    }
    drop(script.stdin.take());
    let status = script.wait().unwrap();
    assert!(text(&seen).contains("got-int"), "{}", text(&seen));
    assert_eq!(status.code(), Some(3));
}

/// Without root, a /dev/fuse the caller cannot open is said plainly, with what to do.
#[test]
fn unusable_fuse_is_explained() {
    let _docker = require_images();
    let tar = fixtures_dir().join("debian-python.tar");
    let cache = shared_cache().join("nobody");
    std::fs::create_dir_all(&cache).unwrap();
    let _ = Command::new("chmod").arg("0777").arg(&cache).status();
    // In a private mount namespace, a root-only file stands in for /dev/fuse.
    let script = format!(
        "set -e; f=$(mktemp); chmod 600 \"$f\"; mount --bind \"$f\" /dev/fuse; \
         setpriv --reuid=65534 --regid=65534 --clear-groups --reset-env {} run --cache-dir {} {} -- true",
        env!("CARGO_BIN_EXE_imgfs"),
        cache.display(),
        tar.display()
    );
    let out = output(Command::new("unshare").args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot open /dev/fuse") && err.contains("crw-rw-rw-"),
        "{err}"
    );
}

/// Whether process `pid` holds /dev/fuse open, i.e. serves a FUSE mount itself.
fn serves_fuse(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|t| t == std::path::Path::new("/dev/fuse"))
            })
        })
        .unwrap_or(false)
}

/// The Debian image as a tar file (indexed in place in whichever cache is given: quick to
/// give a test its own cache, and with it its own servers).
fn debian_tar() -> PathBuf {
    let tar = fixtures_dir().join("debian-python.tar");
    require(
        tar.exists(),
        "debian-python.tar (tests/fixtures/make-debian-image.sh)",
    );
    tar
}

/// `imgfs run --cache-dir CACHE OPTS IMAGE -- ARGS`.
fn run_cached(cache: &std::path::Path, image: &std::path::Path, opts: &[&str]) -> Command {
    let mut cmd = imgfs();
    cmd.arg("run")
        .arg("--cache-dir")
        .arg(cache)
        .args(opts)
        .arg(image)
        .arg("--");
    cmd
}

/// Starts a sleeping sandbox and says whether `imgfs run` serves FUSE itself.
fn run_serves_fuse(cache: &std::path::Path, image: &std::path::Path, opts: &[&str]) -> bool {
    sleeping_run_serves_fuse(run_cached(cache, image, opts), 1)
}

/// With the image already mounted by `imgfs mount`, a run uses that mount (and its warm
/// caches) instead of starting a FUSE server of its own, and leaves it mounted.
#[test]
fn run_uses_a_live_mount_of_the_image() {
    let tar = debian_tar();
    let cache = TempDir::new("imgfs-live-cache");
    let cache = cache.path();
    let no_sharing = ["--linger", "0"];
    assert!(
        run_serves_fuse(cache, &tar, &no_sharing),
        "without a live mount the run serves the image itself"
    );
    let mnt = TempDir::new("imgfs-live-mount");
    let out = output(
        imgfs()
            .arg("mount")
            .arg("--cache-dir")
            .arg(cache)
            .arg(&tar)
            .arg(mnt.path()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !run_serves_fuse(cache, &tar, &no_sharing),
        "the run started a FUSE server despite the live mount"
    );
    // The run's output is the file as GNU tar reads it in the archive, and the live mount is
    // still there afterwards.
    let out = output(run_cached(cache, &tar, &no_sharing).args(["cat", "/etc/debian_version"]));
    let truth = output(
        Command::new("tar")
            .arg("-xOf")
            .arg(&tar)
            .arg("./etc/debian_version"),
    );
    assert!(truth.status.success(), "{}", text(&truth.stderr));
    assert_eq!(assert_ok(&out), text(&truth.stdout));
    assert!(mnt.path().join("usr/bin/python3").exists());
    let out = output(imgfs().arg("umount").arg(mnt.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        run_serves_fuse(cache, &tar, &no_sharing),
        "a finished mount is still taken as live"
    );
}

/// The shared servers (`imgfs __serve --idle-exit-ms`) of the images in `cache`: pid and
/// mountpoint.
fn shared_servers(cache: &std::path::Path) -> Vec<(u32, PathBuf)> {
    let cache = std::fs::canonicalize(cache).unwrap();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(text)
            .collect();
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .unwrap_or_default()
            .contains(") Z ");
        let shared = args.iter().any(|a| a == "__serve")
            && args.iter().any(|a| a == "--idle-exit-ms")
            && args.iter().any(|a| a.starts_with(cache.to_str().unwrap()));
        if shared && !zombie {
            found.push((pid, PathBuf::from(args.last().unwrap())));
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Sandboxes of one image share one server, which stays mounted after them for --linger,
/// then unmounts; a sandbox still running then keeps being served until it ends, and
/// the server exits after it and removes its mountpoint. `--linger 0` starts none.
#[test]
fn sandboxes_share_a_server_that_retires_when_idle() {
    let tar = debian_tar();
    let cache = TempDir::new("imgfs-shared-cache");
    let cache = cache.path();
    let linger = ["--linger", "2s"];

    assert_ok(&output(
        run_cached(cache, &tar, &["--linger", "0"]).arg("true"),
    ));
    assert!(shared_servers(cache).is_empty(), "--linger 0 left a server");

    assert_ok(&output(run_cached(cache, &tar, &linger).arg("true")));
    let servers = shared_servers(cache);
    assert_eq!(servers.len(), 1, "{servers:?}");
    let (pid, mnt) = servers[0].clone();
    assert!(mnt.starts_with("/run/imgfs/shared"), "{}", mnt.display());
    assert!(common::is_mounted(&mnt), "{} is not mounted", mnt.display());

    // Eight at once: all served by that one server.
    let children: Vec<_> = (0..8)
        .map(|_| {
            run_cached(cache, &tar, &linger)
                .args(["cat", "/etc/debian_version"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        assert_ok(&child.wait_with_output().unwrap());
    }
    assert_eq!(shared_servers(cache), vec![(pid, mnt.clone())]);
    assert!(
        !run_serves_fuse(cache, &tar, &linger),
        "a run served FUSE itself despite the shared server"
    );

    // A sandbox that waits on a FIFO without touching the image: the server goes idle and
    // unmounts meanwhile, yet goes on serving the sandbox bound to it.
    let sig = TempDir::new("imgfs-shared-fifo");
    let fifo = sig.path().join("go");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let file = "usr/share/common-licenses/GPL-3";
    let waiting = run_cached(
        cache,
        &tar,
        &[
            "--linger",
            "2s",
            "-v",
            &format!("{}:/sig", sig.path().display()),
        ],
    )
    .args(["sh", "-c", &format!("read x < /sig/go; sha256sum /{file}")])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_until("the idle server unmounts", || !common::is_mounted(&mnt));
    assert!(alive(pid), "the server exited while a sandbox used it");
    std::fs::write(&fifo, "go\n").unwrap();
    let out = assert_ok(&waiting.wait_with_output().unwrap());
    let truth = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -xOf '{}' --wildcards '*{file}' | sha256sum",
            tar.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        out.split(' ').next(),
        text(&truth.stdout).split(' ').next(),
        "the sandbox read other bytes than GNU tar extracts"
    );
    wait_until("the server exits after its last sandbox", || !alive(pid));
    assert!(!mnt.exists(), "{} was left behind", mnt.display());
    assert!(shared_servers(cache).is_empty());

    // The next run starts a new one.
    assert_ok(&output(run_cached(cache, &tar, &linger).arg("true")));
    let next = shared_servers(cache);
    assert_eq!(next.len(), 1, "{next:?}");
    assert_ne!(next[0].0, pid);
    wait_until("the new server retires", || !alive(next[0].0));
    assert!(!next[0].1.exists());
}

/// Fifty sandboxes of one image started at once: all run, and none leaves a mount or a
/// process behind.
#[test]
fn fifty_parallel_runs_all_succeed_and_leave_nothing() {
    let _docker = require_images();
    // Fill the cache first, so the fifty are warm runs racing each other, not the export.
    assert_ok(&run_in(DEBIAN_IMAGE, &[], &["true"]));
    let marker = "imgfs-fifty-7121";
    let children: Vec<_> = (0..50)
        .map(|i| {
            imgfs()
                .arg("run")
                .arg("--cache-dir")
                .arg(shared_cache())
                .arg(DEBIAN_IMAGE)
                .args([
                    "--",
                    "sh",
                    "-c",
                    &format!(
                        "echo {marker} >/dev/null; cat /etc/debian_version >/dev/null && echo {i}"
                    ),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(assert_ok(&out), format!("{i}\n"));
    }
    assert!(processes_with(marker).is_empty());
    assert!(imgfs_mounts().is_empty(), "{:?}", imgfs_mounts());
    // They shared one server (a test running beside this one may use the same).
    let fsname = format!("imgfs:{DEBIAN_IMAGE}");
    let servers: Vec<_> = processes_with("__serve")
        .into_iter()
        .filter(|c| c.contains("--idle-exit-ms") && c.contains(&fsname))
        .filter(|c| c.contains(shared_cache().to_str().unwrap()))
        .collect();
    assert_eq!(servers.len(), 1, "{servers:#?}");
}

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
fn user_cache(user: &str, prefix: &str) -> TempDir {
    let dir = TempDir::new(prefix);
    let chown = Command::new("chown").arg(user).arg(dir.path()).status();
    assert!(chown.is_ok_and(|s| s.success()));
    dir
}

/// `imgfs run --cache-dir CACHE OPTS DEBIAN_TAR --` as `user`.
fn run_as(user: &str, cache: &std::path::Path, opts: &[&str]) -> Command {
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

/// Starts `run` (an `imgfs run ... --` without its command) with a sleeping command and says
/// whether the run serves FUSE itself.
/// `tag` tells its sleeper from those of tests running beside it.
fn sleeping_run_serves_fuse(mut run: Command, tag: u32) -> bool {
    // Written split in the command line, so only the sleep itself matches.
    let marker = format!("sleep 9000{tag}");
    let mut child = run
        .args(["sh", "-c", &format!("n=9000; exec sleep ${{n}}{tag}")])
        .spawn()
        .unwrap();
    wait_until("the command runs", || !processes_with(&marker).is_empty());
    let serving = serves_fuse(child.id());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    serving
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
