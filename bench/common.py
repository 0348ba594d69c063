"""What the benchmark drivers share: running commands, waiting for an idle machine, timing
with hyperfine, stopping the shared servers `imgfs run` leaves, the machine's description and
the sections of RESULTS.md that each driver owns.

bench.py (the file-system suite), sandbox.py (sandbox start-up), sources.py and lazy.py import
it; it has no side effects on import. It also records the checkout a run measures (`common.py
checkout`, which bench/run.sh calls before it builds) and writes the table of the runs that
RESULTS.md comes from: a run from a dirty tree, or sections from different runs, commits or
machines, are said so there, never called clean.
"""

import json
import os
import platform
import pwd
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = Path(os.environ.get("IMGFS_BENCH_WORK", "/var/tmp/imgfs-bench"))
FIX = Path(os.environ.get("IMGFS_FIXTURES", "/var/tmp/imgfs-fixtures"))
# cargo puts the binary under $CARGO_TARGET_DIR when it is set (relative to the top of the tree).
IMGFS = (ROOT / os.environ.get("CARGO_TARGET_DIR", "target")) / "release" / "imgfs"
RESULTS = BENCH / "results"
IDLE_THRESHOLD = float(os.environ.get("IMGFS_BENCH_IDLE", "0.90"))  # 0 disables the wait
IDLE_WINDOW_S = 3.0
IDLE_MAX_WAIT_S = float(os.environ.get("IMGFS_BENCH_IDLE_MAX_WAIT", "900"))  # then measure anyway, flagged

BWRAP_FLAGS = ["--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev",
               "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net"]


class BenchError(Exception):
    pass


_log_file = None


def hold_machine(who):
    """Takes the lock under WORK that keeps two benchmark runs off the machine at once, or exits
    naming who holds it. Returns the open lock file: the lock lasts as long as it stays open."""
    import fcntl
    WORK.mkdir(parents=True, exist_ok=True)
    lock = open(WORK / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"{who}: another run holds {WORK / '.lock'}; runs cannot share the machine")
    return lock


def set_log_file(f):
    """Also write the log lines, and hyperfine's reports, to the open file f."""
    global _log_file
    _log_file = f


def log(msg):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, file=sys.stderr, flush=True)
    if _log_file:
        _log_file.write(line + "\n")
        _log_file.flush()


def q(args):
    return shlex.join(str(a) for a in args)


def run(cmd, *, timeout=None, capture=False, check=True, what=None, stdout=None, stderr=None):
    """Run cmd (a list, or a str for sh -c) in its own process group; kill the group on timeout."""
    shell = isinstance(cmd, str)
    desc = what or (cmd if shell else q(cmd))
    if capture:
        stdout, stderr = subprocess.PIPE, subprocess.PIPE
    p = subprocess.Popen(cmd if shell else [str(c) for c in cmd], shell=shell,
                         stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                         start_new_session=True, text=capture)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise BenchError(f"{desc}: did not finish within {timeout:.0f} s") from None
    except BaseException:
        kill_group(p)
        raise
    if check and p.returncode != 0:
        tail = (err or "").strip().splitlines()[-5:]
        raise BenchError(f"{desc}: exit {p.returncode}" + (": " + " | ".join(tail) if tail else ""))
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def out(cmd, **kw):
    return run(cmd, capture=True, **kw).stdout.strip()


def drop_caches():
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def cpu_idle_fraction(window):
    def sample():
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        v = [int(x) for x in f]
        return v[3] + v[4], sum(v[:8])  # idle + iowait, total (guest time is in user)
    i0, t0 = sample()
    time.sleep(window)
    i1, t1 = sample()
    return (i1 - i0) / max(1, t1 - t0)


def wait_idle(what):
    """Wait until the machine is idle (other work, like a compile, disturbs timings)."""
    start = time.time()
    said = 0.0
    while True:
        f = cpu_idle_fraction(IDLE_WINDOW_S)
        if f >= IDLE_THRESHOLD:
            return f
        waited = time.time() - start
        if waited > IDLE_MAX_WAIT_S:
            log(f"WARNING: machine still busy (idle {f:.0%}) after {waited:.0f} s; measuring {what} anyway")
            return f
        if waited - said >= 30 or said == 0:
            log(f"waiting for an idle machine before {what} (idle {f:.0%} over {IDLE_WINDOW_S:.0f} s)")
            said = max(waited, 1e-9)
        time.sleep(2)


def _wait_gone(pids, still_running):
    """Waits up to 30 s for the processes to exit, then kills the rest, saying so."""
    deadline = time.time() + 30
    while pids and time.time() < deadline:
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        time.sleep(0.02)
    for pid in pids:
        log(f"WARNING: {still_running(pid)}; killing it")
        _kill(pid)


def _zombie(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_shared(roots=(WORK,)):
    """Stop the shared servers `imgfs run` leaves behind (--linger) for caches under roots."""
    prefixes = [str(r).rstrip("/").encode() + b"/" for r in roots]
    pids = []
    for e in Path("/proc").iterdir():
        if not e.name.isdigit():
            continue
        try:
            args = (e / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"__serve" in args and b"--idle-exit-ms" in args and any(a.startswith(p) for a in args for p in prefixes):
            pids.append(int(e.name))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)  # the server unmounts and exits
        except ProcessLookupError:
            pass
    _wait_gone(pids, lambda pid: f"shared server {pid} still running 30 s after SIGTERM")


class AsUser:
    """An unprivileged account to run commands as: setpriv drops root's ids, groups and
    capabilities and execs in place (no extra process), env leaves out root's settings."""

    def __init__(self, name, home):
        pw = pwd.getpwnam(name)
        self.name, self.uid, self.gid, self.home = name, pw.pw_uid, pw.pw_gid, Path(home)

    def argv(self):
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--",
                "env", "-u", "XDG_RUNTIME_DIR", f"HOME={self.home}"]


class Runner:
    def __init__(self, quick, raw_dir):
        self.quick = quick
        self.raw = raw_dir
        self.raw.mkdir(parents=True, exist_ok=True)
        self.max_runs = 5 if quick else 15
        self.min_runs = 3
        self.budget = 8 if quick else 40   # seconds per measurement, prepare steps included

    def measure(self, tag, cmd, *, shell=False, prepare=None, cap=300, min_runs=None, max_runs=None,
                warmup=0, user=None):
        """hyperfine on cmd after one untimed probe (which sizes the run count and catches hangs).
        With user (an AsUser), hyperfine itself runs as that account, so that switching to it
        is no part of the times."""
        min_runs = min_runs or self.min_runs
        max_runs = max_runs or self.max_runs
        idle = wait_idle(tag)
        wrap = user.argv() if user else []
        try:
            t0 = time.perf_counter()
            if prepare:
                run(wrap + ["sh", "-c", prepare] if user else prepare, timeout=cap, capture=True,
                    what=f"{tag}: prepare")
            t1 = time.perf_counter()
            argv = ["sh", "-c", cmd] if shell else shlex.split(cmd)
            run(wrap + argv if user else (cmd if shell else argv), timeout=cap, capture=True, what=f"{tag}")
            t2 = time.perf_counter()
        except BenchError as e:
            log(f"FAILED {e}")
            return {"error": str(e), "timeout": "did not finish" in str(e)}
        per_run = (t2 - t0) + 0.05
        runs = max(min_runs, min(max_runs, int(self.budget / per_run)))
        probe = None
        if t2 - t1 > 20 and not warmup:
            # A slow one: the probe (same prepare, same command) counts as the first run, and
            # one that takes over a minute is run once only.
            probe = t2 - t1
            runs = max(1, min_runs - 1) if probe <= 60 else 0
        js = self.raw / f"{tag}.json"
        if runs == 0:
            st = {"median": probe, "mean": probe, "stddev": 0.0, "min": probe, "max": probe, "runs": 1,
                  "times": [probe], "idle_before": round(idle, 3), "command": cmd, "prepare": prepare}
            js.write_text(json.dumps({"results": [dict(st, note="single untimed-by-hyperfine run")]}))
            log(f"{tag}: {fmt_time(probe)} (one run: too slow to repeat)")
            return st
        if user:  # hyperfine, as the user, writes its report into a file made for it
            js.write_text("")
            os.chown(js, user.uid, user.gid)
        args = wrap + ["hyperfine", "--style", "basic", "--export-json", js, "--runs", runs,
                "--command-name", tag]
        if warmup:
            args += ["--warmup", warmup]
        if not shell:
            args.append("-N")
        if prepare:
            args += ["--prepare", prepare]
        args.append(cmd)
        try:
            r = run(args, timeout=(runs + warmup) * (per_run * 3 + 5) + 120, capture=True, what=f"hyperfine {tag}")
        except BenchError as e:
            log(f"FAILED {e}")
            return {"error": str(e), "timeout": "did not finish" in str(e)}
        if _log_file:
            _log_file.write(r.stdout)
        res = json.loads(js.read_text())["results"][0]
        times = ([probe] if probe is not None else []) + res["times"]
        if probe is not None:
            res = dict(res, median=statistics.median(times), mean=statistics.mean(times),
                       stddev=statistics.stdev(times) if len(times) > 1 else 0.0,
                       min=min(times), max=max(times))
        st = {"median": res["median"], "mean": res["mean"], "stddev": res.get("stddev") or 0.0,
              "min": res["min"], "max": res["max"], "runs": len(times), "times": times,
              "idle_before": round(idle, 3), "command": cmd, "prepare": prepare}
        log(f"{tag}: median {fmt_time(st['median'])} over {st['runs']} runs (probe {fmt_time(t2 - t1)})")
        return st


def fmt_time(s):
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 0.1:
        return f"{s * 1e3:.0f} ms"
    if s >= 0.01:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e3:.2f} ms"


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    mem = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    fs = out(["findmnt", "-no", "FSTYPE,SOURCE", "-T", WORK])
    deb = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "ram": f"{mem / 2**20:.1f} GiB", "kernel": platform.release(),
            "disk": f"{fs} (work dir {WORK})", "os": f"Debian {deb}"}


# ---------------------------------------------------------------------------------------------
# The checkout measured: its commit, and whether the tree differed from it. A run from a
# dirty tree is never called clean: every report says "-dirty" where it names the commit.

# What the benchmark writes into the tree itself: left out when telling whether it is dirty
# (else every driver after the first of a run would find the tree dirty).
OUTPUTS = ("bench/RESULTS.md", "bench/chart.png", "bench/results")
CHANGED_KEPT = 20  # changed paths recorded; the count is always whole


def current_checkout():
    """{"commit", "short", "dirty", "changed", "changed_count"} of the tree now: dirty when a
    tracked file differs from the commit or an untracked file is there (OUTPUTS aside). When
    git cannot tell, the commit is unknown and the tree counts as dirty."""
    try:
        commit = out(["git", "-C", ROOT, "rev-parse", "HEAD"], timeout=60)
        status = run(["git", "-C", ROOT, "status", "--porcelain=v1", "--untracked-files=normal", "--", ".",
                      *[f":(exclude){p}" for p in OUTPUTS]], capture=True, timeout=60).stdout
    except BenchError as e:
        return {"commit": None, "short": "unknown", "dirty": True, "changed": [f"git failed: {e}"],
                "changed_count": 1}
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": commit, "short": commit[:7], "dirty": bool(changed), "changed": changed[:CHANGED_KEPT],
            "changed_count": len(changed)}


def checkout_at_start():
    """The checkout a run measures: what bench/run.sh recorded before it built imgfs
    ($IMGFS_BENCH_CHECKOUT), else the tree now."""
    recorded = os.environ.get("IMGFS_BENCH_CHECKOUT")
    if recorded:
        try:
            return json.loads(recorded)
        except ValueError:
            return {"commit": None, "short": "unknown", "dirty": True,
                    "changed": [f"unreadable IMGFS_BENCH_CHECKOUT: {recorded[:80]}"], "changed_count": 1}
    return current_checkout()


def checkout_at_end(start):
    """start, marked dirty with the reason when the tree moved or changed during the run."""
    now = current_checkout()
    if (now["commit"], now["dirty"], now["changed"]) == (start["commit"], start["dirty"], start["changed"]):
        return start
    moved = (f"HEAD moved to {now['short']}" if now["commit"] != start["commit"] else "files changed")
    n = now["changed_count"]
    return dict(start, dirty=True, during=f"{moved} during the run"
                + (f", after which {n} path{'s' if n != 1 else ''} differed from it" if n else ""))


def checkout_of(meta):
    """The checkout a saved report was measured from; for reports saved before it was recorded,
    what `git describe --dirty` said in their versions (tracked files only)."""
    if meta.get("checkout"):
        return meta["checkout"]
    text = (meta.get("versions") or {}).get("imgfs", "")
    m = re.search(r"commit (\w+)", text)
    return {"commit": m.group(1) if m else None, "short": m.group(1) if m else "unknown",
            "dirty": "-dirty" in text or not m, "changed": [], "changed_count": 0, "describe_only": True}


def checkout_label(c):
    """abc1234, or abc1234-dirty."""
    return c["short"] + ("-dirty" if c["dirty"] else "")


def checkout_text(c):
    """The checkout for a report's header: a dirty one in bold, with what made it dirty."""
    if not c["dirty"]:
        how = ("no tracked file changed, as `git describe --dirty` saw it" if c.get("describe_only")
               else "clean tree")
        return f"commit {c['short']} ({how})"
    why = []
    if c.get("changed_count"):
        more = c["changed_count"] - len(c["changed"])
        n = c["changed_count"]
        why.append(f"{n} path{'s' if n != 1 else ''} differ{'s' if n == 1 else ''} from the commit: "
                   + ", ".join(c["changed"])
                   + (f", … ({more} more)" if more > 0 else ""))
    if c.get("during"):
        why.append(c["during"])
    if c.get("describe_only"):
        why.append("as `git describe --dirty` saw it")
    return f"**commit {checkout_label(c)}: not a clean tree**" + (f" ({'; '.join(why)})" if why else "")


def imgfs_version(c, binary):
    """versions()["imgfs"]: the checkout's label and the binary's own version."""
    try:
        r = run([binary, "--version"], capture=True, check=False, timeout=60)
        ver = ((r.stdout or "") + (r.stderr or "")).strip().splitlines()[0]
    except (BenchError, IndexError, OSError):
        ver = "?"
    return f"{checkout_label(c)} (commit {c['short']}; {ver})"


def run_id():
    """The invocation of bench/run.sh this driver runs in ($IMGFS_BENCH_RUN), else None."""
    return os.environ.get("IMGFS_BENCH_RUN") or None


def machine_text(m):
    return f"{m['cpu']}, {m['cores']} cores, {m['ram']} RAM, kernel {m['kernel']}, {m['os']}"


# The drivers' summaries, as (section title, file stem): the runs table reads them all.
DRIVERS = (("file systems (`bench/run.sh`)", "results"), ("sandbox start-up (`--sandbox`)", "sandbox"),
           ("sources (`--sources`)", "sources"), ("lazy registry images (`--lazy`)", "lazy"),
           ("containerd (`--containerd`)", "containerd"))
RUNS_SECTION = "runs"


def runs_section(suffix=""):
    """The table of the runs RESULTS.md (or its --quick twin) was written from: for each
    driver's section its date, invocation, checkout and machine, then whether they are one
    run at one clean commit on one machine, and if not, why not."""
    rows = []
    for title, stem in DRIVERS:
        path = RESULTS / f"{stem}{suffix}.json"
        if not path.exists():
            continue
        saved = json.loads(path.read_text())
        meta = saved.get("meta") or {}
        checkouts = [checkout_of(meta)]
        for r in (saved.get("results") or {}).values():  # bench.py: images kept by --resume
            c = (r.get("info") or {}).get("checkout") if isinstance(r, dict) else None
            if c and checkout_label(c) != checkout_label(checkouts[0]):
                checkouts.append(c)
        rows.append((title, meta, checkouts))
    if not rows:
        return ""
    L = ["## Runs\n", "| section | generated | invocation | checkout | machine |", "|---|---|---|---|---|"]
    for title, meta, checkouts in rows:
        L.append(f"| {title} | {meta.get('date', '?')} | {meta.get('run') or '—'} | "
                 + "; ".join(checkout_text(c) for c in checkouts)
                 + f" | {machine_text(meta['machine']) if meta.get('machine') else '?'} |")
    # Sections saved without an invocation id count as invocations of their own.
    invocations = len({meta["run"] for _, meta, _ in rows if meta.get("run")}) + \
        sum(1 for _, meta, _ in rows if not meta.get("run"))
    commits = sorted({c["short"] for _, _, cs in rows for c in cs})
    dirty = [title for title, _, cs in rows if any(c["dirty"] for c in cs)]
    # Saved before the checkout was recorded: git describe saw tracked files only.
    unsure = [title for title, _, cs in rows if any(c.get("describe_only") and not c["dirty"] for c in cs)]
    machines = sorted({machine_text(meta["machine"]) for _, meta, _ in rows if meta.get("machine")})
    L.append("")
    if invocations == 1 and len(commits) == 1 and not dirty and not unsure and len(machines) == 1:
        inv = rows[0][1].get("run")
        L.append(f"Every section comes from one invocation{f' ({inv})' if inv else ''} at commit {commits[0]}, "
                 f"a clean tree, on one machine: {machines[0]}.")
    else:
        why = []
        if invocations > 1:
            why.append(f"{len(rows)} sections from {invocations} separate invocations")
        if len(commits) > 1:
            why.append(f"{len(commits)} commits ({', '.join(commits)})")
        if dirty:
            why.append("not a clean tree in " + ", ".join(dirty))
        if unsure:
            why.append("untracked files not checked in " + ", ".join(unsure))
        if len(machines) > 1:
            why.append(f"{len(machines)} machines ({'; '.join(machines)})")
        L.append("**Not one run at one clean commit**: " + "; ".join(why) + ". `bench/run.sh --all` at a clean "
                 "commit writes every section in one invocation.")
    return "\n".join(L)


def write_runs_section(path, suffix=""):
    """Rewrites the runs table in path from the drivers' summaries (after a driver wrote its own)."""
    body = runs_section(suffix)
    if body:
        write_section(path, RUNS_SECTION, body)


# ---------------------------------------------------------------------------------------------
# RESULTS.md: bench.py writes the whole file; another driver owns one section of it, between
# <!-- NAME:start --> and <!-- NAME:end -->, which a rewrite of the rest keeps.

def _markers(name):
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def _sections(text):
    """The sections of text as {name: the section, markers included}."""
    found = {}
    for m in re.finditer(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", text, re.S):
        found[m.group(1)] = m.group(0)
    return found


def write_section(path, name, body):
    """Put body between NAME's markers in path: in place of what they held, else at the end."""
    start, end = _markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    old = _sections(text).get(name)
    if old is not None:
        text = text.replace(old, block, 1)
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block
    path.write_text(text.rstrip("\n") + "\n")


def keep_sections(path, text):
    """text, with the sections of the file at path that text lacks appended to it."""
    if not path.exists():
        return text
    have = _sections(text)
    kept = [s for name, s in _sections(path.read_text()).items() if name not in have]
    return text.rstrip("\n") + "".join(f"\n\n{s}" for s in kept) + "\n" if kept else text


if __name__ == "__main__":
    # bench/run.sh records the checkout before it builds imgfs: `common.py checkout`.
    if sys.argv[1:] != ["checkout"]:
        sys.exit("usage: common.py checkout")
    print(json.dumps(current_checkout()))
