#!/usr/bin/env python3
"""containerd on imgfs: a container started through containerd with `imgfs snapshotter` beside
one started on containerd's own overlayfs snapshotter after a full pull.

A containerd of the benchmark's own (Debian's 1.6; root, state and sockets under
$IMGFS_BENCH_WORK/containerd, the `imgfs` proxy snapshotter configured, dockerd's containerd
untouched) and `imgfs snapshotter` (its root and imgfs store under the same directory). The
image is imgfs-test/layers:1 (the Debian python test image as 6 gzip layers) pushed to Debian's
docker-registry on loopback as `lazy` with imgfs's index pushed beside it, and as eStargz
(`estargz`, ctr-remote's conversion) and zstd:chunked (`chunked`, skopeo's) with none: imgfs
serves those from their layers' own TOCs. Every push happens before the link is shaped.

  cold     the registry's replies shaped to 100 Mbit/s (htb on lo, as sources.py does), then
           `python3 -c pass` in a container from nothing local: `ctr images pull` + `ctr run`
           on the overlayfs snapshotter (the image removed with containerd's garbage collection
           before each run, so every pull downloads every layer), and `ctr-remote images rpull
           --snapshotter imgfs` + `ctr run --snapshotter imgfs` of each lazy image, with the
           snapshotter started anew on an empty root and store before each run.
  bytes    what the registry sent per run: the bytes of the shaped htb class.
  warm     the image pulled (imgfs: fetched as far as a start reads it): `ctr run --rm` of
           `python3 -c pass` on each snapshotter, run in turn.
  eight    eight containers of the lazy image at once on imgfs: the views mounted and the
           servers serving them, counted while they run.
  memory   anonymous memory of the snapshotter and of the view's server and keeper, once idle
           after the warm runs, and with the whole image fetched (`--prefetch all`).

Writes bench/results/containerd.json and the `containerd` section of bench/RESULTS.md,
hyperfine's raw JSON under bench/results/raw-containerd/. Started by `bench/run.sh
--containerd`, which builds imgfs and installs the peers first.

Usage: containerd.py [--render-only]
"""

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import (IMGFS, RESULTS, ROOT, WORK, BenchError, Runner, checkout_at_end, checkout_at_start,
                    checkout_of, checkout_text, fmt_time, hold_machine, log, machine, out, q, run, run_id,
                    set_log_file, write_runs_section, write_section)
from sandbox import alternate
import sources
from sources import CMD, RATE_TEXT, REF, layouts, measure_shaped, read_env, registry, shaped, wait_for
from lazy import ESTARGZ, Names, fetched, index_push, mb, med, push, ratio, time_cell

SECTION = "containerd"
BASE = WORK / "containerd"
CONTAINERD = BASE / "containerd"     # its root, state, socket, config and log
SNAP = BASE / "snapshotter"          # the snapshotter's root, store, socket, log and pid
SOCK = CONTAINERD / "containerd.sock"
SNAP_SOCK = SNAP / "imgfs.sock"
SNAP_PID = SNAP / "pid"
NAMESPACE = "imgfs-bench"
CTR = ["ctr", "--address", str(SOCK), "--namespace", NAMESPACE]
CTR_REMOTE = ["ctr-remote", "--address", str(SOCK), "--namespace", NAMESPACE]
IMAGES = {"lazy": "imgfs index", "estargz": "eStargz TOCs", "chunked": "zstd:chunked TOCs"}
EIGHT = 8

# Targets (issue text): a cold lazy start ≥ 10× faster than pull + run on overlayfs, fetching
# at most a fifth of the image; a warm start within 1.2× of overlayfs'; eight containers of one
# image on one server.
MIN_OVERLAY_OVER_IMGFS = 10.0
MAX_FETCHED_SHARE = 0.20
MAX_WARM_OVER_OVERLAY = 1.2
RUNS_COLD = dict(min_runs=5, max_runs=10)
RUNS_OVERLAY = dict(min_runs=3, max_runs=5)
WARM_ROUNDS, WARMUP = 20, 2


# ---------------------------------------------------------------------------------------------
# containerd and the snapshotter

def check_inputs():
    sources.check_inputs()
    for tool in ("containerd", "ctr", "ctr-remote", "runc"):
        if not shutil.which(tool):
            sys.exit(f"containerd.py: {tool} not found (bench/run.sh --containerd installs it)")
    if not ESTARGZ.exists():
        sys.exit(f"containerd.py: {ESTARGZ} missing (tests/fixtures/make-estargz.sh makes it)")


def containerd_config():
    return "\n".join([
        "version = 2",
        f'root = "{CONTAINERD / "root"}"',
        f'state = "{CONTAINERD / "state"}"',
        'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", '
        '"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", '
        '"io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]',
        "[grpc]", f'  address = "{SOCK}"',
        "[ttrpc]", f'  address = "{SOCK}.ttrpc"',
        "[proxy_plugins.imgfs]", '  type = "snapshot"', f'  address = "{SNAP_SOCK}"', ""])


def kill_tasks():
    """Kills every container of the namespace (a run killed midway leaves one)."""
    tasks = run(CTR + ["tasks", "ls", "-q"], capture=True, check=False, timeout=60).stdout.split()
    for t in tasks:
        run(CTR + ["tasks", "kill", "-s", "SIGKILL", t], capture=True, check=False, timeout=60)
    for c in run(CTR + ["containers", "ls", "-q"], capture=True, check=False, timeout=60).stdout.split():
        run(CTR + ["containers", "rm", c], capture=True, check=False, timeout=60)


def mounts_under(path):
    prefix = f"{path}/"
    with open("/proc/self/mountinfo") as f:
        found = [l.split()[4] for l in f if l.split()[4].startswith(prefix)]
    return sorted(found, key=len, reverse=True)


def unmount_under(path):
    for m in mounts_under(path):
        run(["umount", "-l", m], capture=True, check=False, timeout=60)


@contextlib.contextmanager
def own_containerd():
    """containerd with everything of its own under CONTAINERD; stopped, its shims and mounts
    gone, on the way out."""
    stop_snapshotter()
    if BASE.exists():
        unmount_under(BASE)
        shutil.rmtree(BASE)
    CONTAINERD.mkdir(parents=True)
    SNAP.mkdir(parents=True)
    (CONTAINERD / "config.toml").write_text(containerd_config())
    log_file = CONTAINERD / "containerd.log"

    def answers():
        r = run(CTR + ["plugins", "ls"], capture=True, check=False, timeout=30)
        return r.returncode == 0 and "imgfs" in r.stdout
    with open(log_file, "w") as lf:
        proc = subprocess.Popen(["containerd", "--config", CONTAINERD / "config.toml"], stdin=subprocess.DEVNULL,
                                stdout=lf, stderr=lf, start_new_session=True)
    try:
        wait_for("the benchmark's containerd", answers, proc, log_file, timeout=60)
        yield
    finally:
        kill_tasks()
        sources.stop(proc, "the benchmark's containerd")
        shims = out(["pgrep", "-f", f"containerd-shim.*{SOCK}"], check=False, timeout=30).split()
        for pid in shims:
            run(["kill", "-9", pid], capture=True, check=False, timeout=30)
        stop_snapshotter()
        unmount_under(BASE)


def start_snapshotter(*flags):
    """`imgfs snapshotter` on an empty root and store, detached; waits until it answers."""
    stop_snapshotter()
    for d in ("root", "cache"):
        if (SNAP / d).exists():
            unmount_under(SNAP / d)
            shutil.rmtree(SNAP / d)
    log_file = SNAP / "snapshotter.log"
    with open(log_file, "a") as lf:
        proc = subprocess.Popen([IMGFS, "snapshotter", *flags, "--address", SNAP_SOCK, "--root", SNAP / "root",
                                 "--cache-dir", SNAP / "cache"], stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                start_new_session=True)
    SNAP_PID.write_text(str(proc.pid))

    def answers():
        import socket
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(SNAP_SOCK))
                return True
            except OSError:
                return False
    wait_for("imgfs snapshotter", answers, proc, log_file)


def gone(pid):
    """Whether process `pid` has ended (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def stop_snapshotter():
    """Stops the snapshotter, waiting until it has ended (the next one takes its socket over
    only from a dead one), and the views it mounted (a cold run starts from nothing)."""
    if SNAP_PID.exists():
        try:
            pid = int(SNAP_PID.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.time() + 30
            while not gone(pid):
                if time.time() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
        except (ProcessLookupError, ValueError):
            pass
        SNAP_PID.unlink()
    unmount_under(SNAP)


def reset(snapshotter_flags=None):
    """Before a cold run: no container, no image, no snapshot, no content (containerd's
    garbage collection, synchronously); and, for imgfs's rows, a new snapshotter on nothing."""
    kill_tasks()
    for img in run(CTR + ["images", "ls", "-q"], capture=True, check=False, timeout=60).stdout.split():
        run(CTR + ["images", "rm", "--sync", img], capture=True, check=False, timeout=300)
    # What a failed pull left (content no image holds) goes too.
    left = run(CTR + ["content", "ls", "-q"], capture=True, check=False, timeout=60).stdout.split()
    if left:
        run(CTR + ["content", "rm", *left], capture=True, check=False, timeout=120)
        left = run(CTR + ["content", "ls", "-q"], capture=True, check=False, timeout=60).stdout.split()
    if left:
        raise BenchError(f"containerd still holds content after the images were removed: {left[:3]}")
    if snapshotter_flags is not None:
        start_snapshotter(*snapshotter_flags)
        reconnected()
    os.sync()


def reconnected(timeout=60):
    """Waits until containerd reaches the snapshotter: after a restart its gRPC client
    reconnects on its own backoff, and fails requests as unavailable until then. A snapshot
    made and removed is the proof (with no snapshot of the snapshotter in its metadata,
    containerd lists them without asking it)."""
    deadline = time.time() + timeout
    snap = CTR + ["snapshots", "--snapshotter", "imgfs"]
    while run(snap + ["prepare", "bench-probe"], capture=True, check=False, timeout=30).returncode != 0:
        if time.time() > deadline:
            raise BenchError(f"containerd did not reach the restarted snapshotter within {timeout} s")
        time.sleep(0.1)
    run(snap + ["rm", "bench-probe"], capture=True, timeout=30, what="removing the probe snapshot")


def prep_cmd(*actions):
    return q([sys.executable, Path(__file__).resolve(), "_prep", *actions])


def prep(actions):
    for a in actions:
        if a == "reset":
            reset()
        elif a == "reset-imgfs":
            reset([])
        else:
            raise BenchError(f"_prep: unknown action {a}")


# ---------------------------------------------------------------------------------------------
# Measurements

def overlay_cmd(image):
    return (q(CTR + ["images", "pull", "--plain-http", image]) + " >/dev/null && "
            + q(CTR + ["run", "--rm", image, "bench-cold", *CMD]))


def imgfs_cmd(image):
    return (q(CTR_REMOTE + ["images", "rpull", "--plain-http", "--snapshotter", "imgfs", image]) + " >/dev/null && "
            + q(CTR + ["run", "--rm", "--snapshotter", "imgfs", image, "bench-cold", *CMD]))


def measure_cold(runner, names):
    res = {}
    res["cold-overlay"] = measure_shaped(runner, "containerd-cold-overlay", overlay_cmd(names.image("lazy")),
                                         prepare=prep_cmd("reset"), shell=True, cap=600, **RUNS_OVERLAY)
    for name in IMAGES:
        res[f"cold-{name}"] = measure_shaped(runner, f"containerd-cold-{name}", imgfs_cmd(names.image(name)),
                                             prepare=prep_cmd("reset-imgfs"), shell=True, cap=600, **RUNS_COLD)
    return res


def anon_kib(pid):
    """Anonymous memory of a process (RssAnon), KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def view_processes():
    """The keepers and servers (`imgfs __serve`) of the snapshotter's views: {pid: is_server}."""
    found = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if b"__serve" in cmd and any(str(SNAP).encode() in a for a in cmd):
            found[int(p.name)] = ppid
    return {pid: ppid in found for pid, ppid in found.items()}


def memory():
    snap = anon_kib(int(SNAP_PID.read_text())) if SNAP_PID.exists() else None
    procs = view_processes()
    servers = [anon_kib(p) for p, is_server in procs.items() if is_server]
    keepers = [anon_kib(p) for p, is_server in procs.items() if not is_server]
    return {"snapshotter_kib": snap, "servers_kib": servers, "keepers_kib": keepers}


def measure_warm(names):
    """Warm starts on each snapshotter, run in turn; then eight at once on imgfs; then the
    memory of what serves them."""
    image = names.image("lazy")
    reset([])
    run(CTR + ["images", "pull", "--plain-http", image], capture=True, timeout=600, what="ctr images pull")
    run(CTR_REMOTE + ["images", "rpull", "--plain-http", "--snapshotter", "imgfs", image], capture=True,
        timeout=600, what="ctr-remote images rpull")
    res = sources.prefixed(alternate({
        "warm-overlay": CTR + ["run", "--rm", image, "bench-warm-o", *CMD],
        "warm-imgfs": CTR + ["run", "--rm", "--snapshotter", "imgfs", image, "bench-warm-i", *CMD],
    }, WARM_ROUNDS, WARMUP))
    res["eight"] = eight(image)
    time.sleep(2)  # containerd's garbage collection retires the views of removed containers
    res["memory-idle"] = memory()
    return res


def eight(image):
    """EIGHT containers of `image` at once on imgfs: the views and servers while they run."""
    procs = [subprocess.Popen(CTR + ["run", "--rm", "--snapshotter", "imgfs", image, f"bench-eight-{i}",
                                     "sh", "-c", "python3 -c pass && sleep 4"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(EIGHT)]
    deadline = time.time() + 60
    running = 0
    while time.time() < deadline:
        running = run(CTR + ["tasks", "ls"], capture=True, check=False, timeout=30).stdout.count("RUNNING")
        if running == EIGHT:
            break
        time.sleep(0.1)
    views = mounts_under(SNAP / "root" / "views")
    servers = [p for p, is_server in view_processes().items() if is_server]
    failed = [p.stderr.read().decode(errors="replace").strip() for p in procs if p.wait(timeout=120) != 0]
    log(f"{EIGHT} containers at once: {running} running together, {len(views)} views, {len(servers)} servers"
        + (f"; failed: {failed}" if failed else ""))
    return {"running": running, "views": len(views), "servers": len(servers), "failed": failed}


def measure_full_memory(names):
    """The lazy image fetched whole (`--prefetch all`): the view's server's memory then."""
    image = names.image("lazy")
    reset(["--prefetch", "all"])
    run(CTR_REMOTE + ["images", "rpull", "--plain-http", "--snapshotter", "imgfs", image], capture=True,
        timeout=600, what="ctr-remote images rpull")
    proc = subprocess.Popen(CTR + ["run", "--rm", "--snapshotter", "imgfs", image, "bench-mem", "sleep", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 50
        done = False
        while time.time() < deadline and not done:
            time.sleep(1)
            maps = list((SNAP / "cache").glob("layers/lazy-*/present"))
            done = bool(maps) and all(set(m.read_bytes()) <= {1} for m in maps)
        got = memory()
        got["all_fetched"] = done
        return got
    finally:
        kill_tasks()
        proc.wait(timeout=60)


def measure_all(runner):
    gz = layouts()["gzip"]
    inputs = {"image_bytes": gz.size, "image_layers": len(gz.layers),
              "estargz_bytes": sum(s for _, s in sources.layer_blobs(ESTARGZ, REF)),
              "chunked_bytes": sum(s for _, s in sources.layer_blobs(Path(read_env()["OCI_ZSTD_CHUNKED"]), REF))}
    res = {}
    with contextlib.ExitStack() as stack:
        names = Names(stack.enter_context(registry()))
        push(gz.dir, REF, names.image("lazy"))
        inputs["artifact"] = index_push(names.image("lazy"))
        push(ESTARGZ, REF, names.image("estargz"))
        push(Path(read_env()["OCI_ZSTD_CHUNKED"]), REF, names.image("chunked"))
        stack.enter_context(own_containerd())
        with shaped(names.addr.rsplit(":", 1)[1]):
            res.update(measure_cold(runner, names))
        try:
            res.update(measure_warm(names))
            res["memory-full"] = measure_full_memory(names)
        except BenchError as e:
            log(f"FAILED warm rows: {e}")
            for key in ("warm-overlay", "warm-imgfs", "eight", "memory-idle", "memory-full"):
                res.setdefault(key, {"error": str(e)})
    return res, inputs


# ---------------------------------------------------------------------------------------------
# Report

def size_of(inp, name):
    """The compressed size of the image `name` (`lazy` is the gzip image)."""
    return inp.get(f"{name}_bytes") or inp["image_bytes"]


def targets(res, inp):
    rows = []
    for name, how in IMAGES.items():
        x = ratio(med(res, "cold-overlay"), med(res, f"cold-{name}"))
        rows.append((f"cold start, {how}: ctr pull + run on overlayfs over rpull + run on imgfs", x,
                     f"≥ {MIN_OVERLAY_OVER_IMGFS:g}×", x is not None and x >= MIN_OVERLAY_OVER_IMGFS, "x"))
        share = ratio(fetched(res, f"cold-{name}"), size_of(inp, name))
        rows.append((f"bytes from the registry for that start / the image's compressed size ({how})", share,
                     f"≤ {MAX_FETCHED_SHARE:.0%}", share is not None and share <= MAX_FETCHED_SHARE, "%"))
    x = ratio(med(res, "warm-imgfs"), med(res, "warm-overlay"))
    rows.append(("warm container start: imgfs over overlayfs", x, f"≤ {MAX_WARM_OVER_OVERLAY:g}×",
                 x is not None and x <= MAX_WARM_OVER_OVERLAY, "x"))
    e = res.get("eight") or {}
    one = None if e.get("error") else (e.get("views"), e.get("servers"))
    rows.append((f"{EIGHT} containers of one image at once: views and servers", one, "1 and 1",
                 one == (1, 1) and e.get("running") == EIGHT, "pair"))
    out = []
    for what, x, target, ok, kind in rows:
        if x is None:
            text, met = "—", None
        elif kind == "%":
            text, met = f"{x:.1%}", ok
        elif kind == "pair":
            text, met = f"{x[0]} and {x[1]}", ok
        else:
            text, met = f"{x:.2f}×", ok
        out.append({"what": what, "text": text, "target": target, "met": met})
    return out


def mib(kib):
    return "—" if kib is None else f"{kib / 1024:.1f} MiB"


def render(res, meta):
    mach, inp = meta["machine"], meta["inputs"]
    L = ["## containerd: imgfs's snapshotter beside overlayfs\n",
         f"Generated by `bench/run.sh --containerd` on {meta['date']} (run took {meta.get('duration_min', 0):.1f} "
         f"min). Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram']}, kernel {mach['kernel']}, "
         f"{mach['os']}; {meta['versions'].get('containerd', '?')}. Built and measured from "
         f"{checkout_text(checkout_of(meta))}.\n",
         f"A containerd 1.6 of the benchmark's own with `imgfs snapshotter` as its proxy snapshotter. The image "
         f"is `{meta['image']}` ({inp['image_layers']} gzip layers, {mb(inp['image_bytes'])}) with imgfs's index "
         f"pushed, and the same as eStargz ({mb(inp['estargz_bytes'])}) and zstd:chunked "
         f"({mb(inp['chunked_bytes'])}) without one, in Debian's docker-registry on 127.0.0.1, its replies "
         f"through an htb class of {RATE_TEXT} on lo. Every cold run starts from nothing: the image removed "
         "from containerd (garbage collection, synchronously) and, for imgfs, a new snapshotter on an empty "
         "root and store. Medians, runs in parentheses.\n",
         "### Targets\n", "| figure | measured | target | met? |", "|---|---|---|---|"]
    for t in meta["targets"]:
        met = {True: "**met**", False: "**missed**", None: "—"}[t["met"]]
        L.append(f"| {t['what']} | {t['text']} | {t['target']} | {met} |")
    L += ["", f"### Cold start at {RATE_TEXT}: pull, then `python3 -c pass` in a container\n",
          "| row | median | MB from the registry per run (tc) |", "|---|---|---|"]
    rows = [("cold-overlay", "`ctr images pull` + `ctr run` (overlayfs, every layer downloaded and unpacked)")]
    rows += [(f"cold-{n}", f"`ctr-remote images rpull --snapshotter imgfs` + `ctr run --snapshotter imgfs` "
                           f"({how})") for n, how in IMAGES.items()]
    for key, label in rows:
        got = fetched(res, key)
        name = key.split("-", 1)[1]
        share = f" ({got / size_of(inp, 'lazy' if name == 'overlay' else name):.1%})" if got else ""
        L.append(f"| {label} | {time_cell(res.get(key))} | {mb(got)}{share} |")
    L += ["", "### Warm container start (the image pulled), run in turn\n", "| snapshotter | median |", "|---|---|",
          f"| overlayfs | {time_cell(res.get('warm-overlay'))} |", f"| imgfs | {time_cell(res.get('warm-imgfs'))} |"]
    e = res.get("eight") or {}
    if not e.get("error"):
        L += ["", f"{EIGHT} containers of the image at once on imgfs ({e.get('running')} running together): "
                  f"{e.get('views')} view mounted, {e.get('servers')} server serving it"
                  + (f"; failed: {e['failed']}" if e.get("failed") else "") + "."]
    for key, label in (("memory-idle", "idle after the warm runs"),
                       ("memory-full", "with the whole image fetched (`--prefetch all`), a container running")):
        m = res.get(key) or {}
        if m.get("error"):
            continue
        servers = ", ".join(mib(k) for k in m.get("servers_kib") or []) or "none running"
        keepers = ", ".join(mib(k) for k in m.get("keepers_kib") or []) or "none"
        L.append(f"\nAnonymous memory {label}: the snapshotter {mib(m.get('snapshotter_kib'))}; view servers "
                 f"{servers}; their keepers {keepers}"
                 + ("" if m.get("all_fetched", True) else " (not every span was fetched within the wait)") + ".")
    L += ["", "Run it with `bench/run.sh --containerd`; raw figures in `bench/results/containerd.json`."]
    return "\n".join(L)


def report(res, meta):
    meta["targets"] = targets(res, meta["inputs"])
    (RESULTS / "containerd.json").write_text(json.dumps({"meta": meta, "results": res}, indent=1, default=str))
    md = ROOT / "bench" / "RESULTS.md"
    write_section(md, SECTION, render(res, meta))
    write_runs_section(md)
    log(f"wrote {RESULTS / 'containerd.json'} and the {SECTION} section of {md}")
    for t in meta["targets"]:
        word = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
        log(f"target {word} {t['what']}: {t['target']}: {t['text']}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_prep":
        prep(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description="imgfs benchmark on containerd (run it through "
                                             "bench/run.sh --containerd)")
    ap.add_argument("--render-only", action="store_true",
                    help="write the Markdown section again from bench/results/containerd.json")
    args = ap.parse_args()
    if args.render_only:
        saved = json.loads((RESULTS / "containerd.json").read_text())
        report(saved["results"], saved["meta"])
        return
    check_inputs()
    lock = hold_machine("containerd.py")  # noqa: F841 (held until exit)
    RESULTS.mkdir(parents=True, exist_ok=True)
    set_log_file(open(RESULTS / "containerd.log", "w"))
    raw = RESULTS / "raw-containerd"
    if raw.exists():
        shutil.rmtree(raw)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    start = time.time()
    checkout = checkout_at_start()
    versions = {"containerd": out(["containerd", "--version"], check=False, timeout=30).strip()}
    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M %Z").strip(), "run": run_id(),
            "checkout": checkout, "machine": machine(), "versions": versions,
            "image": read_env().get("LAYERS_IMAGE", "?"), "command": CMD}
    try:
        res, meta["inputs"] = measure_all(Runner(False, raw))
    except KeyboardInterrupt:
        log("interrupted; stopping containerd and the snapshotter")
        sys.exit(130)
    meta["duration_min"] = (time.time() - start) / 60
    meta["checkout"] = checkout_at_end(meta["checkout"])
    report(res, meta)


if __name__ == "__main__":
    main()
