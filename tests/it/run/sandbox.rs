//! What a sandbox gives its command, checked beside `docker run` of the same image: python
//! runs and writes land in an upper layer, read-only roots, the image's config, volumes,
//! exit codes and signals, its own /proc, /dev, network and /etc, terminals, a rw-dir kept
//! between runs, unprivileged callers, CPython's own tests, and the errors of bad input and
//! of an unusable /dev/fuse.

use super::*;

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
    assert_eq!(
        lines[4].trim(),
        "eth0 lo",
        "an interface of its own, and loopback"
    );
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
