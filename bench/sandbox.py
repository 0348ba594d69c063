#!/usr/bin/env python3
"""Sandbox start-up: how long `python3 -c pass` takes in a sandbox of the Debian python test
image, from warm caches, with imgfs run, bubblewrap on the extracted tree and docker run.

  root  imgfs run --network none IMAGE (docker's confinement, the shared server an earlier run
        left) beside bwrap on the extracted tree (the flags of bench.py's warm-run row, its
        network unshared too) and docker run --rm; then what the confinement costs:
        --security-opt seccomp=unconfined, --privileged, and the first run after the compiled
        seccomp filter is removed from the cache; and what the default network costs (bridge,
        made by pasta) beside pasta's own start
  user  an unprivileged account (created if missing): imgfs run --network none on the image's
        tar beside bwrap --unshare-all on the extracted tree, imgfs run --linger 0, and the
        default network again

The warm rows of a group (bwrap and the imgfs runs) run alternately, one run of each in
turn, so that a machine whose speed drifts during the measurement (a shared VM) slows all of
them alike and their ratios hold; the rest run with hyperfine.

Writes bench/results/sandbox.json and the `sandbox` section of bench/RESULTS.md (--quick:
bench/results/sandbox-quick.json and bench/results/RESULTS-quick.md), hyperfine's raw JSON
under bench/results/raw-sandbox/. Started by `bench/run.sh --sandbox`, which builds imgfs and
the test image first.

Usage: sandbox.py [--quick] [--user NAME] [--render-only]
"""

import argparse
import datetime
import json
import os
import pwd
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

from common import (BWRAP_FLAGS, hold_machine, FIX, IDLE_THRESHOLD, IMGFS, RESULTS, ROOT, WORK, AsUser, BenchError,
                    Runner, checkout_at_end, checkout_at_start, checkout_of, checkout_text, fmt_time, imgfs_version,
                    log, machine, q, run, run_id, set_log_file, stop_shared, write_runs_section, write_section)

IMAGE_REF = "imgfs-test/debian-python:bookworm"
TREE = FIX / "rootfs-py"
TAR = FIX / "debian-python.tar"
CMD = ["python3", "-c", "pass"]
CACHE = WORK / "cache" / "sandbox-docker"  # under WORK, so that stop_shared finds its server
USER = os.environ.get("IMGFS_BENCH_USER", "imgfsbench")
USER_DIR = Path(os.environ.get("IMGFS_BENCH_USER_DIR", "/var/tmp/imgfs-bench-user"))
SECTION = "sandbox"

# Runs per row: the start-up times are tens of milliseconds, so many runs cost little;
# docker's are hundreds.
RUNS = {"full": 40, "quick": 10}
DOCKER_RUNS = {"full": 20, "quick": 5}
WARMUP = {"full": 3, "quick": 1}

# Targets: imgfs run within 1.5× of bwrap on an extracted tree (as root and without root),
# at least 10× faster than docker run, and the bridge network at most 10 ms over none.
MAX_OVER_BWRAP = 1.5
MIN_OVER_DOCKER = 10.0
MAX_NETWORK_COST = 0.010
NONE = ("--network", "none")
# pasta's own start, the floor of what the network costs: from starting pasta, the build imgfs
# runs (on a CPU with AVX2 the .avx2 file pasta would otherwise execute itself into) with the
# options imgfs gives it, on a network namespace made beforehand (and, without root, its user
# namespace) to pasta's word that it is ready (its pid on a pipe). Timed inside; prints the
# times of `rounds` starts after `warmup` as JSON.
PASTA_START = r'''
import json, os, shutil, subprocess, sys, time
rounds, warmup, root = int(sys.argv[1]), int(sys.argv[2]), os.geteuid() == 0
exe = os.path.realpath(shutil.which("pasta"))
with open("/proc/cpuinfo") as f:
    avx2 = any(l.startswith("flags") and " avx2" in l for l in f)
if avx2 and not exe.endswith(".avx2") and os.access(exe + ".avx2", os.X_OK):
    exe += ".avx2"
opts = ["--config-net", "--foreground", "--quiet", "--ipv4-only", "--ns-ifname", "eth0",
        "--address", "10.0.2.100", "--netmask", "24", "--gateway", "10.0.2.2", "--dns-forward", "10.0.2.3",
        "--no-map-gw", "--tcp-ports", "none", "--udp-ports", "none", "--tcp-ns", "none", "--udp-ns", "none"]
times = []
for i in range(warmup + rounds):
    ns = subprocess.Popen(["unshare", "-n" if root else "-Urn", "sleep", "60"])
    while os.readlink(f"/proc/{ns.pid}/ns/net") == os.readlink("/proc/self/ns/net") or \
            os.readlink(f"/proc/{ns.pid}/exe").endswith("unshare"):
        time.sleep(0.001)
    fds = [os.open(f"/proc/{ns.pid}/ns/{n}", os.O_RDONLY) for n in (["net"] if root else ["user", "net"])]
    r, w = os.pipe()
    where = (["--runas", "0"] if root else ["--userns", f"/proc/self/fd/{fds[0]}"]) + \
        ["--netns", f"/proc/self/fd/{fds[-1]}", "--pid", f"/proc/self/fd/{w}"]
    start = time.perf_counter()
    p = subprocess.Popen(["pasta", *opts, *where], executable=exe, pass_fds=(*fds, w),
                         stderr=subprocess.DEVNULL)
    os.close(w)
    ready = os.read(r, 64)
    took = time.perf_counter() - start
    p.kill(); p.wait(); ns.kill(); ns.wait()
    for fd in (*fds, r):
        os.close(fd)
    if not ready:
        sys.exit("pasta did not start")
    if i >= warmup:
        times.append(took)
print(json.dumps(times))
'''


def pasta_start(rounds, warmup, user=None):
    """pasta's own start (PASTA_START), as Runner.measure gives stats."""
    argv = (user.argv() if user else []) + ["python3", "-c", PASTA_START, str(rounds), str(warmup)]
    p = run(argv, capture=True, check=False, timeout=600)
    if p.returncode != 0:
        return {"error": ((p.stderr or "").strip().splitlines() or ["failed"])[-1]}
    t = json.loads(p.stdout)
    st = {"median": statistics.median(t), "mean": statistics.fmean(t),
          "stddev": statistics.stdev(t) if len(t) > 1 else 0.0, "min": min(t), "max": max(t),
          "runs": len(t), "method": "timed inside", "times": t}
    log(f"pasta start: median {fmt_time(st['median'])} over {len(t)} runs")
    return st


class Row:
    def __init__(self, key, label, base=None, target=None, note=None):
        self.key, self.label, self.base = key, label, base
        # target: (text, (median, base's median) -> bool) (for docker, the base is imgfs run:
        # see ratio()).
        self.target = target
        self.note = note


def within_bwrap(a, b):
    return a / b <= MAX_OVER_BWRAP


def network_cost_ok(a, b):
    return a - b <= MAX_NETWORK_COST


ROWS = [
    Row("root-bwrap", "root · bwrap on the extracted tree"),
    Row("root-imgfs", "root · imgfs run --network none IMAGE (docker's capabilities, seccomp, masked /proc)",
        "root-bwrap", (f"≤ {MAX_OVER_BWRAP}× bwrap", within_bwrap)),
    Row("root-imgfs-tar", "root · imgfs run --network none TAR (the same image from its tar: no daemon "
        "to ask which image the tag names)", "root-bwrap"),
    Row("root-imgfs-unconfined", "root · imgfs run --network none --security-opt seccomp=unconfined",
        "root-bwrap", note="confinement"),
    Row("root-imgfs-privileged", "root · imgfs run --network none --privileged", "root-bwrap",
        note="confinement"),
    Row("root-imgfs-seccomp-cold", "root · imgfs run --network none, first after removing the cached "
        "seccomp filter", "root-imgfs", note="compile"),
    Row("root-imgfs-bridge", "root · imgfs run IMAGE (the default: the bridge network, by pasta)",
        "root-imgfs", (f"≤ {MAX_NETWORK_COST * 1e3:g} ms over --network none", network_cost_ok),
        note="network"),
    Row("root-pasta", "root · pasta's own start: started on a network namespace until it says it is "
        "ready, timed inside", note="floor"),
    Row("root-docker", "root · docker run --rm IMAGE (its default bridge network)", "root-imgfs-bridge",
        (f"imgfs ≥ {MIN_OVER_DOCKER:g}× faster", lambda a, b: a / b >= MIN_OVER_DOCKER)),
    Row("user-bwrap", "user · bwrap --unshare-all on the extracted tree"),
    Row("user-imgfs", "user · imgfs run --network none TAR", "user-bwrap",
        (f"≤ {MAX_OVER_BWRAP}× bwrap", within_bwrap)),
    Row("user-imgfs-linger0", "user · imgfs run --network none --linger 0 TAR", "user-bwrap"),
    Row("user-imgfs-bridge", "user · imgfs run TAR (the default: the bridge network, by pasta)",
        "user-imgfs", (f"≤ {MAX_NETWORK_COST * 1e3:g} ms over --network none", network_cost_ok),
        note="network"),
    Row("user-pasta", "user · pasta's own start, the same in the user's own namespaces", note="floor"),
]


# Runs the commands it is given in turn, each `rounds` times after `warmup` untimed rounds,
# and prints every run's wall time, per command, as JSON. It runs as the account measured,
# so switching to that account is in none of the times.
ALTERNATE = r'''
import json, os, sys, time
cmds, rounds, warmup = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
null = os.open(os.devnull, os.O_RDWR)
times = {k: [] for k in cmds}
for i in range(warmup + rounds):
    for key, argv in cmds.items():
        start = time.perf_counter()
        pid = os.posix_spawnp(argv[0], argv, os.environ,
                              file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1)])
        _, status = os.waitpid(pid, 0)
        took = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{key} exited with {os.waitstatus_to_exitcode(status)}")
        if i >= warmup:
            times[key].append(took)
print(json.dumps(times))
'''


def alternate(cmds, rounds, warmup, user=None):
    """Times `cmds` ({key: argv}) run in turn; {key: stats} as Runner.measure gives them."""
    argv = (user.argv() if user else []) + [
        "python3", "-c", ALTERNATE, json.dumps({k: [str(a) for a in v] for k, v in cmds.items()}),
        str(rounds), str(warmup)]
    log("alternating " + ", ".join(cmds) + f": {rounds} rounds after {warmup}")
    p = run(argv, capture=True, check=False, timeout=600)
    if p.returncode != 0:
        err = (p.stderr or "").strip().splitlines()[-1:] or [f"exit {p.returncode}"]
        return {k: {"error": err[0]} for k in cmds}
    res = {}
    for key, t in json.loads(p.stdout).items():
        res[key] = {"median": statistics.median(t), "mean": statistics.fmean(t),
                    "stddev": statistics.stdev(t) if len(t) > 1 else 0.0, "min": min(t), "max": max(t),
                    "runs": len(t), "method": "alternating", "times": t}
        log(f"sandbox-{key}: median {fmt_time(res[key]['median'])} over {len(t)} runs, alternating")
    return res


def imgfs_run(cache, image, *flags):
    return [IMGFS, "run", *flags, "--cache-dir", cache, image, "--", *CMD]


# ---------------------------------------------------------------------------------------------
# Set-up

def check_inputs():
    if os.geteuid() != 0:
        sys.exit("sandbox.py: must run as root")
    for tool in ("hyperfine", "bwrap", "docker", "setpriv", "useradd", "pasta", "unshare"):
        if not shutil.which(tool):
            sys.exit(f"sandbox.py: {tool} not found (bench/run.sh --sandbox installs it)")
    if not IMGFS.exists():
        sys.exit(f"sandbox.py: {IMGFS} missing (bench/run.sh --sandbox builds it)")
    if not (TREE / "usr" / "bin" / "python3").exists() or not TAR.exists():
        sys.exit(f"sandbox.py: {TREE} or {TAR} missing (tests/fixtures/make-debian-image.sh makes them)")
    if run(["docker", "image", "inspect", IMAGE_REF], capture=True, check=False, timeout=60).returncode:
        sys.exit(f"sandbox.py: docker has no {IMAGE_REF} (tests/fixtures/make-debian-image.sh imports it)")


def ensure_user():
    """The unprivileged account, a directory of its own (its imgfs cache) and the paths it must
    read: the image's tar and the imgfs binary, copied into its directory when it cannot."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        log(f"creating the account {USER}")
        run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], capture=True)
    user = AsUser(USER, USER_DIR)
    USER_DIR.mkdir(parents=True, exist_ok=True)
    (USER_DIR / "cache").mkdir(exist_ok=True)
    run(["chown", "-R", f"{user.uid}:{user.gid}", USER_DIR], capture=True)
    os.chmod(USER_DIR, 0o755)

    def readable(path, how="-r"):
        return run(user.argv() + ["test", how, path], check=False, capture=True).returncode == 0

    tar, imgfs = TAR, IMGFS
    if not readable(TAR):
        tar = USER_DIR / TAR.name
        if not tar.exists() or tar.stat().st_size != TAR.stat().st_size or tar.stat().st_mtime < TAR.stat().st_mtime:
            log(f"{USER} cannot read {TAR}: copying it to {tar}")
            shutil.copy2(TAR, tar)
            os.chmod(tar, 0o644)
    if not readable(IMGFS, "-x"):
        imgfs = USER_DIR / "imgfs"
        shutil.copy2(IMGFS, imgfs)
        os.chmod(imgfs, 0o755)
    if not readable(TREE / "usr" / "bin" / "python3", "-x"):
        raise BenchError(f"{USER} cannot read {TREE}: unprivileged bwrap needs it")
    return user, tar, imgfs


# ---------------------------------------------------------------------------------------------
# Measurements

def stop_all():
    stop_shared((WORK, USER_DIR))


def shared_servers(uid):
    """Pids of the shared servers (they exit when idle: --idle-exit-ms) run by uid for the
    account's cache."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if not d.name.isdigit() or d.stat().st_uid != uid:
                continue
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"__serve" in args and b"--idle-exit-ms" in args and any(
                a.startswith(str(USER_DIR).encode() + b"/") for a in args):
            pids.append(int(d.name))
    return pids


def measure_all(runner, quick):
    mode = "quick" if quick else "full"
    n, warmup = RUNS[mode], WARMUP[mode]
    res = {}

    def m(key, argv, runs=n, **kw):
        res[key] = runner.measure(f"sandbox-{key}", q(argv), min_runs=runs, max_runs=runs, warmup=warmup,
                                  cap=120, **kw)

    # Root. The first imgfs run (the probe) fills the cache from docker and leaves the shared
    # server that later runs use, as a user's second run finds it.
    # The warm-up rounds leave the shared servers later runs use, as a user's second run
    # finds them.
    stop_all()
    res.update(alternate({
        "root-bwrap": ["bwrap", "--ro-bind", TREE, "/", *BWRAP_FLAGS, *CMD],
        "root-imgfs": imgfs_run(CACHE, IMAGE_REF, *NONE),
        "root-imgfs-tar": imgfs_run(CACHE, TAR, *NONE),
        "root-imgfs-unconfined": imgfs_run(CACHE, IMAGE_REF, *NONE, "--security-opt", "seccomp=unconfined"),
        "root-imgfs-privileged": imgfs_run(CACHE, IMAGE_REF, *NONE, "--privileged"),
        "root-imgfs-bridge": imgfs_run(CACHE, IMAGE_REF),
    }, n, warmup))
    res["root-pasta"] = pasta_start(n, warmup)
    m("root-imgfs-seccomp-cold", imgfs_run(CACHE, IMAGE_REF, *NONE), prepare=q(["rm", "-rf", CACHE / "seccomp"]))
    stop_all()
    m("root-docker", ["docker", "run", "--rm", IMAGE_REF, *CMD], runs=DOCKER_RUNS[mode])

    # Without root. --linger 0 first, with no shared server of the user's alive for it to use.
    try:
        user, tar, imgfs = ensure_user()
    except BenchError as e:
        log(f"FAILED setting up {USER}: {e}")
        for k in ("user-bwrap", "user-imgfs", "user-imgfs-linger0", "user-imgfs-bridge", "user-pasta"):
            res[k] = {"error": f"set-up of {USER} failed: {e}"}
        return res
    ucache = USER_DIR / "cache"
    bridge = [imgfs, "run", "--cache-dir", ucache, tar, "--", *CMD]
    ucmd = bridge[:2] + list(NONE) + bridge[2:]
    stop_all()
    m("user-imgfs-linger0", ucmd[:2] + ["--linger", "0"] + ucmd[2:], user=user)
    res.update(alternate({
        "user-bwrap": ["bwrap", "--unshare-all", "--ro-bind", TREE, "/", "--proc", "/proc", "--dev", "/dev",
                       "--tmpfs", "/tmp", *CMD],
        "user-imgfs": ucmd,
        "user-imgfs-bridge": bridge,
    }, n, warmup, user=user))
    res["user-pasta"] = pasta_start(n, warmup, user=user)
    shared = bool(shared_servers(user.uid))
    stop_all()
    res["_user"] = {"name": user.name, "uid": user.uid, "tar": str(tar), "imgfs": str(imgfs),
                    "cache": str(ucache), "shared_server": shared}
    return res


# ---------------------------------------------------------------------------------------------
# Report

def med(res, key):
    st = res.get(key) or {}
    return None if st.get("error") else st.get("median")


def ratio(res, row):
    """The row's median over its base's. docker's base is imgfs run: its ratio says how many
    times faster imgfs is."""
    a, b = med(res, row.key), med(res, row.base) if row.base else None
    if not a or not b:
        return None
    return a / b


def signed_ms(s):
    return f"{s * 1e3:+.1f} ms"


def versions(checkout):
    def first(cmd):
        r = run(cmd, capture=True, check=False, timeout=60)
        lines = ((r.stdout or "") + (r.stderr or "")).strip().splitlines()
        return lines[0] if lines else "?"
    return {
        "imgfs": imgfs_version(checkout, IMGFS),
        "bwrap": first(["bwrap", "--version"]),
        "docker": f"daemon {first(['docker', 'version', '--format', '{{.Server.Version}}'])}",
        "hyperfine": first(["hyperfine", "--version"]),
    }


def evaluate(res):
    rows = []
    for row in ROWS:
        x = ratio(res, row)
        met = None
        if row.target and x is not None:
            met = row.target[1](med(res, row.key), med(res, row.base))
        rows.append({"row": row.key, "label": row.label, "median": med(res, row.key), "base": row.base,
                     "ratio": x, "target": row.target[0] if row.target else None, "met": met})
    return rows


def render(res, meta):
    mach, v = meta["machine"], meta["versions"]
    L = []
    A = L.append
    A("## Sandbox start-up\n")
    A(f"Generated by `bench/run.sh --sandbox{' --quick' if meta['quick'] else ''}` on {meta['date']}. "
      f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram']}, kernel {mach['kernel']}, {mach['os']}; "
      f"imgfs {v['imgfs']}; {v['bwrap']}; docker {v['docker']}; {v['hyperfine']}. "
      f"Built and measured from {checkout_text(checkout_of(meta))}.\n")
    A(f"`python3 -c pass` in a sandbox of `{IMAGE_REF}` ({TAR.name}, its extracted tree for bwrap), "
      "warm: the image already in imgfs' cache. Medians, runs in parentheses. The rows of "
      "bwrap and the warm imgfs runs run alternately, one run of each in turn after warm-up rounds "
      "(so drift of the machine falls on them alike); the others with hyperfine. The imgfs rows beside bwrap run "
      "with `--network none`, as bwrap unshares the network; otherwise they are what a user gets by default: "
      "docker's capabilities, its default seccomp profile and masked /proc paths, on the shared server the first "
      "run leaves (`--linger`). The bridge rows are the default network, made by pasta; *pasta's own start* "
      "is pasta started, as imgfs starts it, on a network namespace made beforehand, until it says it is ready: "
      "the floor of that cost. "
      + ("Without root too, the first run leaves a shared server of the user's for later runs. "
         if (res.get("_user") or {}).get("shared_server") else
         "Without root this imgfs leaves no shared server: each run serves the image itself. ")
      + f"The unprivileged rows run as the account `{meta.get('user', USER)}`, with the measuring process itself "
      "started as it.\n")
    A("| row | median | ratio | target | met? | note |\n|---|---|---|---|---|---|")
    titles = {"root-bwrap": "bwrap", "root-imgfs": "imgfs run --network none", "user-bwrap": "bwrap",
              "root-imgfs-bridge": "imgfs run", "user-imgfs": "imgfs run --network none"}
    for row, e in zip(ROWS, meta["rows"]):
        st = res.get(row.key) or {}
        if st.get("error"):
            cell = "FAILED: " + st["error"].replace("|", "/")[:120]
        elif e["median"] is None:
            cell = "not measured"
        else:
            spread = f" ± {fmt_time(st.get('stddev') or 0)}" if st["runs"] > 1 else ""  # one run has none
            cell = f"{fmt_time(e['median'])}{spread} ({st['runs']})"
        x = e["ratio"]
        if x is None:
            rc = "baseline" if not row.base and row.note != "floor" and not st.get("error") else "—"
        elif row.key == "root-docker":
            rc = f"{x:.1f}× {titles[row.base]}"
        else:
            rc = f"{x:.2f}× {titles[row.base]}"
        met = {True: "**met**", False: "**missed**", None: "—"}[e["met"]] if row.target else "—"
        note = ""
        base = med(res, "root-imgfs")
        if row.note == "confinement" and e["median"] and base:
            note = f"the default's median minus this: {signed_ms(base - e['median'])}"
        elif row.note == "compile" and e["median"] and base:
            note = f"this minus the default's median (compiling the filter): {signed_ms(e['median'] - base)}"
        elif row.note == "network" and e["median"] and med(res, row.base):
            floor = med(res, row.key.replace("imgfs-bridge", "pasta"))
            note = (f"the network's cost: {signed_ms(e['median'] - med(res, row.base))} over --network none"
                    + (f"; pasta's own start: {fmt_time(floor)}" if floor else ""))
        if st.get("idle_before", 1) < IDLE_THRESHOLD:
            note += ("; " if note else "") + f"machine busy before (idle {st['idle_before']:.0%})"
        A(f"| {row.label} | {cell} | {rc} | {e['target'] or '—'} | {met} | {note} |")
    A("")
    A("Run it with `bench/run.sh --sandbox` (`--quick`: fewer runs, written to "
      "`bench/results/RESULTS-quick.md`); raw figures in `bench/results/sandbox.json`.")
    return "\n".join(L)


def report(res, meta):
    suffix = "-quick" if meta["quick"] else ""
    meta["rows"] = evaluate(res)
    (RESULTS / f"sandbox{suffix}.json").write_text(json.dumps({"meta": meta, "results": res}, indent=1, default=str))
    md = RESULTS / "RESULTS-quick.md" if meta["quick"] else ROOT / "bench" / "RESULTS.md"
    write_section(md, SECTION, render(res, meta))
    write_runs_section(md, suffix)
    log(f"wrote {RESULTS / f'sandbox{suffix}.json'} and the {SECTION} section of {md}")
    for e in meta["rows"]:
        if e["target"]:
            word = {True: "MET   ", False: "MISSED", None: "n/a   "}[e["met"]]
            x = "—" if e["ratio"] is None else f"{e['ratio']:.2f}×"
            log(f"target {word} {e['label']}: {e['target']}: {x}")


def main():
    ap = argparse.ArgumentParser(description="imgfs sandbox start-up benchmark (run it through bench/run.sh --sandbox)")
    ap.add_argument("--quick", action="store_true", help="fewer runs; written to bench/results/RESULTS-quick.md")
    ap.add_argument("--render-only", action="store_true",
                    help="write the Markdown section again from bench/results/sandbox.json")
    args = ap.parse_args()
    suffix = "-quick" if args.quick else ""
    if args.render_only:
        saved = json.loads((RESULTS / f"sandbox{suffix}.json").read_text())
        report(saved["results"], saved["meta"])
        return
    check_inputs()
    lock = hold_machine("sandbox.py")  # noqa: F841 (held until exit)
    RESULTS.mkdir(parents=True, exist_ok=True)
    set_log_file(open(RESULTS / f"sandbox{suffix}.log", "w"))
    raw = RESULTS / f"raw-sandbox{suffix}"
    if raw.exists():
        shutil.rmtree(raw)
    raw.mkdir(parents=True)
    os.chmod(raw, 0o755)  # hyperfine writes here as the unprivileged account too

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    start = time.time()
    checkout = checkout_at_start()
    meta = {"quick": args.quick, "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M %Z").strip(),
            "run": run_id(), "checkout": checkout, "machine": machine(), "versions": versions(checkout),
            "image": IMAGE_REF, "tree": str(TREE),
            "tar": str(TAR), "command": CMD, "user": USER}
    try:
        res = measure_all(Runner(args.quick, raw), args.quick)
    except KeyboardInterrupt:
        log("interrupted; stopping the shared servers")
        sys.exit(130)
    finally:
        stop_all()
    meta["duration_min"] = (time.time() - start) / 60
    meta["checkout"] = checkout_at_end(meta["checkout"])
    report(res, meta)


if __name__ == "__main__":
    main()
