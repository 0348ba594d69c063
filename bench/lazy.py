#!/usr/bin/env python3
"""Lazy registry images: what `imgfs index push` buys a cold start from a registry, and what
the lazy image costs once everything is fetched.

The image is imgfs-test/layers:1 (the Debian python test image as 6 gzip layers, from its OCI
layout $IMGFS_FIXTURES/layered/oci-gzip, ref `layers`), pushed with skopeo to Debian's
docker-registry on loopback under three names: `lazy` with imgfs's index pushed beside it
(`imgfs index push`, default span), `noindex` without one, and `span-256k|512k|1m` with an index of
that span each. The 2 GiB image is the same image plus two layers of 1 GiB of pseudo-random
files nothing reads (bench/make_big_image.py, cached under $IMGFS_BENCH_WORK/lazy), pushed with
an index as `big`. The same image as eStargz (ctr-remote's conversion,
tests/fixtures/make-estargz.sh) and as zstd:chunked (skopeo's) is pushed as `estargz` and
`chunked` with no index: imgfs mounts those from their layers' own TOCs. Every push and index
push happens before the link is shaped.

  cold     the registry's replies shaped to 100 Mbit/s (htb on lo, only the registry port's
           replies, as sources.py does; the qdisc goes at the end, on errors and interrupts
           too), then `python3 -c pass` from nothing local: `docker pull` + `docker run` (a
           dockerd of the benchmark's own that holds no other image, so that every pull
           downloads every layer), `imgfs run docker://…` of the lazy image and of the image
           without an index, each with an empty cache and no server left from an earlier run;
           the same for the 2 GiB image (docker: one run, minutes long); eight `imgfs run` of
           the lazy image at once, each with a cache of its own (eight cold nodes); the lazy
           image with `--prefetch all`; the lazy start of each span's image.
  bytes    what the registry sent: the bytes of the shaped htb class (`tc -s class show`)
           before and after, per run (HTTP headers, manifest, config and index included); and
           for imgfs, the layer bytes the lazy start kept: the allocated bytes of the sparse
           layer blobs (`du -B1 CACHE/layers/*/blob`) after the last run.
  warm     unshaped: the lazy image mounted with `--prefetch all` until every span of every
           layer is present and the server reads each layer from its whole copy in the store
           (made in the mount), beside a mount of the OCI layout (`oci:`, layers on local disk);
           a metadata walk of each (run alternately), every file read once with the page cache
           dropped before each run; then the lazy image mounted again, once (that mount makes
           the image whole from the copies), and every file read over it; and
           `imgfs run … python3 -c pass` of each cache (run alternately, on the shared server of
           the first run).

The image's entrypoint only prints how it was started: every sandbox clears it and runs
`python3 -c pass` itself.

Writes bench/results/lazy.json and the `lazy` section of bench/RESULTS.md, hyperfine's raw
JSON under bench/results/raw-lazy/. Started by `bench/run.sh --lazy`, which builds imgfs and
installs the peers first.

Usage: lazy.py [--render-only]
"""

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import (IDLE_THRESHOLD, IMGFS, RESULTS, ROOT, WORK, BenchError, Runner, checkout_at_end,
                    checkout_at_start, checkout_of, checkout_text, fmt_time, hold_machine, log, machine, q, run,
                    run_id, set_log_file, stop_shared, write_runs_section, write_section)
import floor
from sandbox import alternate
import sources
from sources import (CMD, DOCKER, RATE_TEXT, REF, WALK, imgfs_run, layouts, measure_shaped, prep,
                     prep_cmd, read_env, registry, shaped, own_dockerd, umount)

SECTION = "lazy"
BASE = WORK / "lazy"                # under WORK: stop_shared finds the servers of these caches
BIG = BASE / "big-oci"              # the 2 GiB image's layout (kept between runs)
BIG_REF = "big"
COLD = BASE / "cold"                # caches emptied before every cold run
WARM_LAZY = BASE / "warm-lazy"      # the lazy image, everything fetched
WARM_OCI = BASE / "warm-oci"        # the OCI layout, indexed once
MNT_LAZY = BASE / "mnt-lazy"
MNT_OCI = BASE / "mnt-oci"
NODES = 8
NODES_FAILED = RESULTS / "lazy-nodes-failed.log"  # the logs of the nodes of a failed round
SERVER_LOG = "server.log"           # beside a lazy image's index: what its server logged
SPANS = ["256K", "512K", "1M"]
# The programs a cold start runs: python's own start, a heavier one, a shell.
WORKLOADS = {
    "pass": ["python3", "-c", "pass"],
    "imports": ["python3", "-c", "import asyncio, json, sqlite3, ssl, email, http.server"],
    "shell": ["sh", "-c", "true"],
}
WORKLOAD_TEXT = {"pass": "`python3 -c pass`",
                 "imports": "`python3 -c \"import asyncio, json, sqlite3, ssl, email, http.server\"`",
                 "shell": "`sh -c true`"}
FLOORS = BASE / "floor-cache"       # each layer's entries and block bounds, by digest
RTT_PROBES = 20
CHART = ROOT / "bench" / "lazy-chart.png"  # the cold rows beside docker, and two cold starts' timelines
# Rows with one more run, traced: (image, workload).
TRACED = {"cold-lazy": ("lazy", "pass"), "cold-recorded": ("recorded", "pass"),
          "cold-lazy-shell": ("lazy", "shell")}
FETCH_KINDS = ("manifest", "blob", "ranges")  # a trace's exchanges with the registry
# The start's own steps in a trace: the image resolved and its index fetched, its passwd read,
# the server started and mounted, the server's guess at what the command reads.
STEP_KINDS = ("prepare", "plan", "server", "guess")
READ_ALL = "find {m} -type f -print0 | xargs -0 cat >/dev/null"
DROP_CACHES = "sync; echo 3 >/proc/sys/vm/drop_caches"
PREFETCH_WAIT_S = 600  # the whole lazy image unshaped on loopback takes seconds

# Targets: the lazy start against docker pull + run; without an index imgfs fetches every layer
# whole (sources.py's target); the lazy start fetches a fifth of the image at most; eight nodes
# fetch no more than eight single starts; warm, a lazy image is an image like any other.
MIN_DOCKER_OVER_LAZY = 20.0
MIN_DOCKER_OVER_RECORDED = 25.0
MIN_DOCKER_OVER_LAZY_BIG = 30.0
# The floor (bench/floor.py): a lazy start within these of it, in time and in bytes.
MAX_OVER_FLOOR = 1.4
MAX_BYTES_OVER_FLOOR = 1.3
MAX_RECORDED_OVER_FLOOR = 1.15
MAX_TOC_OVER_FLOOR = 1.5
MAX_NOINDEX_OVER_DOCKER = sources.MAX_OVER_DOCKER_PULL
MAX_FETCHED_SHARE = 0.20
MAX_NODES_OVER_ONE = float(NODES)
MAX_WARM_OVER_OCI = 1.10  # "equal", within noise

# Runs: the imgfs rows take seconds; docker's pull of the 2 GiB image takes minutes (one run).
RUNS_FAST = dict(min_runs=10, max_runs=10)
RUNS_SLOW = dict(min_runs=3, max_runs=5)
RUNS_FEW = dict(min_runs=3, max_runs=3)
WALK_ROUNDS, READ_RUNS, RUN_ROUNDS, WARMUP = 20, 5, 30, 3


class Names:
    """The registry's repositories, at HOST:PORT."""

    def __init__(self, addr):
        self.addr = addr

    def image(self, name):
        return f"{self.addr}/bench/{name}:1"

    def docker(self, name):
        return f"docker://{self.image(name)}"


def cache(name):
    return COLD / name


# ---------------------------------------------------------------------------------------------
# Set-up

def check_inputs():
    sources.check_inputs()
    if not shutil.which("du"):
        sys.exit("lazy.py: du not found")


def make_big(gz):
    log(f"making the 2 GiB image in {BIG} (reused when up to date)")
    run([sys.executable, ROOT / "bench" / "make_big_image.py", gz.dir, REF, BIG], capture=True, timeout=1800,
        what="bench/make_big_image.py")
    return sources.layer_blobs(BIG, BIG_REF)


def push(layout_dir, ref, image):
    """skopeo copy of the layout to the registry, blobs as they are: without --preserve-digests
    skopeo substitutes a blob of the same content in another compression the registry holds
    (the zstd:chunked image's base layer for the gzip one's, pushed earlier)."""
    run(["skopeo", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false", f"oci:{layout_dir}:{ref}", f"docker://{image}"],
        capture=True, timeout=1800, what=f"skopeo copy to {image}")


def index_push(image, span=None, record=None):
    """`imgfs index push` (`record`: with `--record -- record`); returns the artifact's size as
    it reports it (the last push's, when recording pushes twice)."""
    argv = [IMGFS, "index", "push", *(["--span", span] if span else []), f"docker://{image}",
            *(["--record", "--entrypoint", "", "--", *record] if record else [])]
    r = run(argv, capture=True, timeout=1800)
    m = ([None] + list(re.finditer(r" as (sha256:[0-9a-f]+): (\d+) bytes \(", r.stderr)))[-1]
    if not m:
        raise BenchError(f"imgfs index push {image}: no size in its report: {r.stderr.strip()[-200:]}")
    log(r.stderr.strip())
    # The windows blobs: in the registry beside the index, fetched by range only as reads need them.
    w = re.search(r"and (\d+) bytes of deflate windows", r.stderr)
    return {"digest": m.group(1), "bytes": int(m.group(2)), "window_bytes": int(w.group(1)) if w else None,
            "report": r.stderr.strip()}


# The image as eStargz (tests/fixtures/make-estargz.sh, ctr-remote's conversion) and as
# zstd:chunked (skopeo's, in the layered fixtures): lazy from their own TOCs, no imgfs index.
ESTARGZ = sources.LAYERED.parent / "estargz" / "oci-estargz"
TOC_IMAGES = {"estargz": lambda: ESTARGZ, "chunked": lambda: Path(read_env()["OCI_ZSTD_CHUNKED"])}


def publish(names, gz, big_dir):
    """Pushes every image and index the measurements use; returns the artifacts' sizes."""
    artifacts = {}
    for name, layout in TOC_IMAGES.items():
        log(f"pushing {layout()}:{REF} to {names.image(name)} (no imgfs index)")
        push(layout(), REF, names.image(name))
    for name in ("lazy", "recorded", "noindex", *(f"span-{s.lower()}" for s in SPANS)):
        log(f"pushing {gz.source} to {names.image(name)}")
        push(gz.dir, REF, names.image(name))
    artifacts["lazy"] = index_push(names.image("lazy"))
    artifacts["recorded"] = index_push(names.image("recorded"), record=WORKLOADS["pass"])
    for s in SPANS:
        artifacts[f"span-{s.lower()}"] = dict(index_push(names.image(f"span-{s.lower()}"), s), span=s)
    log(f"pushing {big_dir}:{BIG_REF} to {names.image('big')}")
    push(big_dir, BIG_REF, names.image("big"))
    artifacts["big"] = index_push(names.image("big"))
    return artifacts


# ---------------------------------------------------------------------------------------------
# What a lazy start fetched

def blob_bytes(cache_dir):
    """Allocated bytes of the layer blobs in a cache (the spans fetched, in 4 KiB blocks)."""
    blobs = list(Path(cache_dir).glob("layers/*/blob"))
    if not blobs:
        return None
    r = run(["du", "-B1", "-c", *blobs], capture=True, timeout=60)
    return int(r.stdout.strip().splitlines()[-1].split()[0])


def all_present(cache_dir):
    """Whether every span of every lazy layer in the cache is present (`present` holds a byte
    per span, 1 once fetched)."""
    maps = list(Path(cache_dir).glob("layers/lazy-*/present"))
    return bool(maps) and all(set(m.read_bytes()) <= {1} for m in maps)


def all_promoted(cache_dir):
    """Whether every layer of the lazy image in the cache has its whole copy in the store
    (`layers/DIFF_ID/complete`, DIFF_ID as the image entry's `layers.json` records it)."""
    infos = list(Path(cache_dir).glob("images/lazy-*/layers.json"))
    if not infos:
        return False
    diff_ids = [l["diff_id"] for i in infos for l in json.loads(i.read_text())["layers"]]
    return all((Path(cache_dir) / "layers" / d.replace(":", "-") / "complete").exists() for d in diff_ids)


def cold_imgfs(runner, key, name, names, runs, flags=(), cap=300, cmd=CMD):
    """`imgfs run` of a registry image from an empty cache, with what it fetched."""
    c = cache(key)
    argv = imgfs_run(c, names.docker(name))
    argv[argv.index("--") + 1:] = cmd
    argv[2:2] = flags
    cmd = q(argv)
    st = measure_shaped(runner, f"lazy-{key}", cmd, prepare=prep_cmd("stop-shared", f"rm:{c}", "sync"),
                        cap=cap, **runs)
    if not st.get("error"):
        st["blob_bytes"] = blob_bytes(c)
    stop_shared()
    if st.get("error"):
        # hyperfine stops at the failed run, before the next preparation empties its cache:
        # what that run's server logged is still there.
        logs = sorted(c.glob(f"images/*/{SERVER_LOG}"))
        kept = RESULTS / f"lazy-{key}-failed.log"
        kept.write_text("".join(f"== {p}\n{p.read_text(errors='replace')}" for p in logs)
                        or f"no {SERVER_LOG} in {c}\n")
        log(f"lazy-{key}: what the failed run's server logged is in {kept}")
    prep([f"rm:{c}"])
    return st


def traced_run(key, name, workload, names):
    """One more cold run of a row, with IMGFS_TRACE: when it began and ended, and every event
    imgfs recorded (its exchanges with the registry, the reads the filesystem answered, the
    start's own steps)."""
    c = cache(f"{key}-traced")
    trace = RESULTS / f"lazy-trace-{key}.jsonl"
    trace.unlink(missing_ok=True)
    prep(["stop-shared", f"rm:{c}", "sync"])
    argv = imgfs_run(c, names.docker(name))
    argv[argv.index("--") + 1:] = WORKLOADS[workload]
    env = dict(os.environ, IMGFS_TRACE=str(trace))
    t0 = time.time()
    p = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, timeout=300)
    t1 = time.time()
    stop_shared()
    prep([f"rm:{c}"])
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {p.stderr.strip()[-200:]}"}
    events = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    log(f"{key}: traced run {fmt_time(t1 - t0)}, {len(events)} events in {trace}")
    return {"t0": t0, "t1": t1, "events": events}


def timeline_summary(tl, index_blobs=()):
    """What a traced cold start spent its time on: {run, first_read, last_read, fetched,
    in_flight, waits, waited, and when each of the start's steps ended}."""
    if not tl or tl.get("error"):
        return None
    t0, t1, ev = tl["t0"] * 1e6, tl["t1"] * 1e6, tl["events"]
    fetches = [e for e in ev if e["kind"] in FETCH_KINDS]
    steps = {k: (min(e["t0"] for e in ev if e["kind"] == k) - t0, max(e["t1"] for e in ev if e["kind"] == k) - t0)
             for k in STEP_KINDS if any(e["kind"] == k for e in ev)}
    reads = [e for e in ev if e["kind"] == "read"]
    spans, busy, end = sorted((e["t0"], e["t1"]) for e in fetches), 0.0, None
    for a, b in spans:
        if end is None or a > end:
            busy += b - a
            end = b
        elif b > end:
            busy += b - end
            end = b
    waited = [e for e in reads if e["t1"] - e["t0"] > 1000]  # a read that took over 1 ms waited for a fetch
    return {"run": (t1 - t0) / 1e6, "first_read": (min(e["t0"] for e in reads) - t0) / 1e6 if reads else None,
            "last_read": (max(e["t1"] for e in reads) - t0) / 1e6 if reads else None,
            "requests": len(fetches), "fetched": sum(e.get("bytes", 0) for e in fetches),
            "in_flight": busy / 1e6, "reads": len(reads), "waits": len(waited),
            "waited": sum(e["t1"] - e["t0"] for e in waited) / 1e6,
            "steps": {k: (a / 1e6, b / 1e6) for k, (a, b) in steps.items()}}


def cold_docker(runner, key, name, names, runs, cap=300):
    """`docker pull` + `docker run` from a dockerd of the benchmark's own, started for this row
    alone (the test suite's fault tests kill every dockerd on the machine: a row's own daemon
    is exposed to that only while it runs)."""
    image = names.image(name)
    try:
        with own_dockerd():
            return measure_shaped(runner, f"lazy-{key}",
                                  q(DOCKER + ["pull", "-q", image]) + " >/dev/null && "
                                  + q(DOCKER + ["run", "--rm", "--entrypoint", "", image, *CMD]),
                                  prepare=prep_cmd(f"docker-rmi:{image}", "sync"), shell=True, cap=cap, **runs)
    except BenchError as e:
        log(f"FAILED lazy-{key}: {e}")
        return {"error": str(e)}


def nodes_cmd(names):
    """NODES `imgfs run` of the lazy image at once, caches of their own; fails if one fails.

    Each node's output goes to a log beside its cache; a round with a failed node appends the
    failed nodes' logs to NODES_FAILED (hyperfine keeps no output), so a failure can be read."""
    logs = [BASE / f"node-{i}.log" for i in range(NODES)]
    runs = [f"{q(imgfs_run(cache(f'node-{i}'), names.docker('lazy')))} >{q([str(logs[i])])} 2>&1 & "
            f"pids=\"$pids $!:{i}\"" for i in range(NODES)]
    keep = (f"{{ echo \"== $(date -u +%FT%TZ) node $n exit $s\"; cat {q([str(BASE)])}/node-$n.log; }} "
            f">>{q([str(NODES_FAILED)])}")
    return ("pids=; " + "; ".join(runs) + "; rc=0; for p in $pids; do n=${p#*:}; wait ${p%:*}; s=$?; "
            f"if [ $s -ne 0 ]; then rc=1; {keep}; fi; done; exit $rc")


def cold_nodes(runner, names):
    caches = [f"rm:{cache(f'node-{i}')}" for i in range(NODES)]
    st = measure_shaped(runner, "lazy-nodes", nodes_cmd(names), prepare=prep_cmd("stop-shared", *caches, "sync"),
                        shell=True, cap=600, **RUNS_FEW)
    if not st.get("error"):
        st["blob_bytes"] = sum(blob_bytes(cache(f"node-{i}")) or 0 for i in range(NODES))
    elif NODES_FAILED.exists():
        log(f"lazy-nodes: the failed nodes' output is in {NODES_FAILED}")
    stop_shared()
    prep(caches)
    return st


def workload_key(key, workload):
    return key if workload == "pass" else f"{key}-{workload}"


def measure_cold(runner, names):
    res = {}
    for w, cmd in WORKLOADS.items():
        res[workload_key("cold-lazy", w)] = cold_imgfs(runner, workload_key("cold-lazy", w), "lazy", names,
                                                       RUNS_FAST if w == "pass" else RUNS_SLOW, cmd=cmd)
    res["cold-recorded"] = cold_imgfs(runner, "cold-recorded", "recorded", names, RUNS_FAST)
    res["cold-noindex"] = cold_imgfs(runner, "cold-noindex", "noindex", names, RUNS_SLOW)
    res["cold-docker"] = cold_docker(runner, "cold-docker", "lazy", names, RUNS_SLOW)
    for w, cmd in WORKLOADS.items():
        res[workload_key("cold-estargz", w)] = cold_imgfs(runner, workload_key("cold-estargz", w), "estargz",
                                                          names, RUNS_SLOW, cmd=cmd)
    res["cold-docker-estargz"] = cold_docker(runner, "cold-docker-estargz", "estargz", names, RUNS_FEW)
    for w, cmd in WORKLOADS.items():
        res[workload_key("cold-chunked", w)] = cold_imgfs(runner, workload_key("cold-chunked", w), "chunked",
                                                          names, RUNS_SLOW, cmd=cmd)
    res["cold-prefetch"] = cold_imgfs(runner, "cold-prefetch", "lazy", names, RUNS_FAST, flags=["--prefetch", "all"])
    res["nodes"] = cold_nodes(runner, names)
    for s in SPANS:
        key = f"span-{s.lower()}"
        res[key] = cold_imgfs(runner, key, key, names, RUNS_FEW)
    for w, cmd in WORKLOADS.items():
        res[workload_key("big-lazy", w)] = cold_imgfs(runner, workload_key("big-lazy", w), "big", names, RUNS_FEW,
                                                      cap=900, cmd=cmd)
    res["big-docker"] = cold_docker(runner, "big-docker", "big", names, dict(min_runs=1, max_runs=2), cap=1800)
    for key, (name, workload) in TRACED.items():
        res[f"timeline-{key}"] = traced_run(key, name, workload, names)
    return res


# ---------------------------------------------------------------------------------------------
# Warm: the lazy image with everything fetched beside the OCI layout

def mount_lazy(names):
    prep([f"rm:{WARM_LAZY}"])
    run([IMGFS, "mount", "-q", "--cache-dir", WARM_LAZY, "--prefetch", "all", names.docker("lazy"), MNT_LAZY],
        capture=True, timeout=600, what="mounting the lazy image")
    deadline = time.time() + PREFETCH_WAIT_S
    while not all_present(WARM_LAZY):
        if time.time() > deadline:
            raise BenchError(f"--prefetch all: not every span present after {PREFETCH_WAIT_S} s")
        time.sleep(0.5)
    log(f"lazy image fully fetched: {blob_bytes(WARM_LAZY)} bytes of layer blobs")
    while not all_promoted(WARM_LAZY):
        if time.time() > deadline:
            raise BenchError(f"no whole copy of every layer after {PREFETCH_WAIT_S} s")
        time.sleep(0.5)
    log("every layer of the lazy mount is read from its whole copy")


def remount_lazy(names):
    """Mounts the fully fetched lazy image again: that mount makes the image whole from the
    layers' copies (once: later mounts find it whole). Its time, as a single run."""
    umount(MNT_LAZY)
    start = time.perf_counter()
    run([IMGFS, "mount", "-q", "--cache-dir", WARM_LAZY, names.docker("lazy"), MNT_LAZY],
        capture=True, timeout=600, what="mounting the lazy image again")
    took = time.perf_counter() - start
    whole = list(WARM_LAZY.glob("images/oci-*/complete"))
    if not whole:
        raise BenchError("the second mount of the fully fetched lazy image did not make it whole")
    log(f"lazy-remount: {fmt_time(took)} (one run; the image made whole)")
    return {"median": took, "mean": took, "stddev": 0.0, "min": took, "max": took, "runs": 1}


def mount_oci(gz):
    prep([f"rm:{WARM_OCI}"])
    run([IMGFS, "mount", "-q", "--cache-dir", WARM_OCI, gz.source, MNT_OCI], capture=True, timeout=600,
        what="mounting the OCI layout")


def read_all(runner, key, mnt):
    return runner.measure(f"lazy-{key}", READ_ALL.format(m=mnt), shell=True, prepare=DROP_CACHES,
                          min_runs=READ_RUNS, max_runs=READ_RUNS)


def measure_warm(runner, names, gz):
    res = {}
    for m in (MNT_LAZY, MNT_OCI):
        umount(m)
    mount_lazy(names)
    mount_oci(gz)
    walk = {"walk-oci": [a.format(m=MNT_OCI) for a in WALK], "walk-lazy": [a.format(m=MNT_LAZY) for a in WALK]}
    res.update(sources.prefixed(alternate(walk, WALK_ROUNDS, WARMUP)))
    res["read-oci"] = read_all(runner, "read-oci", MNT_OCI)
    res["read-lazy"] = read_all(runner, "read-lazy", MNT_LAZY)
    res["remount-lazy"] = remount_lazy(names)
    res["read-remount"] = read_all(runner, "read-remount", MNT_LAZY)
    for m in (MNT_LAZY, MNT_OCI):
        umount(m)
    res.update(sources.prefixed(alternate({
        "run-oci": imgfs_run(WARM_OCI, gz.source),
        "run-lazy": imgfs_run(WARM_LAZY, names.docker("lazy")),
    }, RUN_ROUNDS, WARMUP)))
    stop_shared()
    return res


def measure_floors(gz, artifacts):
    """The floor (bench/floor.py) of each image and workload a cold row runs, before the link is
    shaped: {"IMAGE/WORKLOAD": floor}, with the files each workload opens."""
    tree = Path(read_env()["TRUTH_LAYERS"])
    files = {}
    for w, cmd in WORKLOADS.items():
        try:
            files[w] = floor.opened_files(tree, cmd)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            raise BenchError(f"the files {' '.join(cmd)} opens: {e}")
        log(f"floor: {' '.join(cmd)} opens {len(files[w])} files in {tree}")
    images = {"lazy": (gz.dir, REF, artifacts["lazy"]["bytes"]),
              "recorded": (gz.dir, REF, artifacts["recorded"]["bytes"]),
              "noindex": (gz.dir, REF, 0),
              "estargz": (ESTARGZ, REF, 0),
              "chunked": (TOC_IMAGES["chunked"](), REF, 0),
              "big": (BIG, BIG_REF, artifacts["big"]["bytes"]),
              **{f"span-{s.lower()}": (gz.dir, REF, artifacts[f"span-{s.lower()}"]["bytes"]) for s in SPANS}}
    out = {"_files": {w: f for w, f in files.items()}}
    for name, (layout, ref, index) in images.items():
        for w in WORKLOADS:
            if w != "pass" and name not in ("lazy", "estargz", "chunked", "big"):
                continue
            try:
                f = floor.floor(layout, ref, files[w], index, cache=FLOORS)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                raise BenchError(f"the floor of {name}, {w}: {e}")
            if f["missing"]:
                raise BenchError(f"the floor of {name}, {w}: not in the image: {', '.join(f['missing'][:5])}")
            out[f"{name}/{w}"] = f
            log(f"floor {name}/{w}: {f['bytes']} bytes ({f['data']} of data for {f['files']} files of "
                f"{f['file_bytes']} bytes, {f['index']} of manifest, config and index)")
    return out


def round_trip(addr, probes=RTT_PROBES):
    """The median time of a TCP connect to the registry (a SYN and its SYN-ACK: one round trip)."""
    import socket
    host, port = addr.rsplit(":", 1)
    times = []
    for _ in range(probes):
        start = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=5):
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure_all(runner, gz):
    big_layers = make_big(gz)
    toc_bytes = {f"{name}_bytes": sum(s for _, s in sources.layer_blobs(layout(), REF))
                 for name, layout in TOC_IMAGES.items()}
    res, inputs = {}, {"image_bytes": gz.size, "image_layers": len(gz.layers), **toc_bytes,
                       "big_bytes": sum(s for _, s in big_layers), "big_layers": len(big_layers)}
    with contextlib.ExitStack() as stack:
        names = Names(stack.enter_context(registry()))
        inputs["artifacts"] = publish(names, gz, BIG)
        inputs["floors"] = measure_floors(gz, inputs["artifacts"])
        with shaped(names.addr.rsplit(":", 1)[1]):
            inputs["rtt"] = round_trip(names.addr)
            log(f"round trip to the registry: {fmt_time(inputs['rtt'])}")
            res.update(measure_cold(runner, names))
        try:
            res.update(measure_warm(runner, names, gz))
        except BenchError as e:
            log(f"FAILED warm rows: {e}")
            for key in ("walk-oci", "walk-lazy", "read-oci", "read-lazy", "remount-lazy", "read-remount",
                        "run-oci", "run-lazy"):
                res.setdefault(key, {"error": str(e)})
    return res, inputs


# ---------------------------------------------------------------------------------------------
# Report

def med(res, key):
    st = res.get(key) or {}
    return None if st.get("error") else st.get("median")


def fetched(res, key):
    return (res.get(key) or {}).get("shaped_bytes_per_run")


def ratio(a, b):
    return a / b if a is not None and b else None


def check(value, ok):
    return None if value is None else bool(ok(value))


RATE_BITS = int(re.fullmatch(r"(\d+)mbit", sources.RATE).group(1)) * 10 ** 6  # tc's mbit: 10^6 bits


def floor_key(key):
    """The floor (IMAGE/WORKLOAD, see measure_floors) a cold row is held against, if any."""
    for prefix, image in (("cold-lazy", "lazy"), ("cold-recorded", "recorded"), ("cold-prefetch", "lazy"),
                          ("cold-noindex", "noindex"), ("cold-estargz", "estargz"), ("cold-chunked", "chunked"),
                          ("big-lazy", "big")):
        if key == prefix or key.startswith(prefix + "-"):
            return f"{image}/{key[len(prefix) + 1:] or 'pass'}"
    return f"{key}/pass" if key.startswith("span-") else None


def floor_of(inp, key):
    """{time, bytes} of a cold row's floor: its bytes at the link's rate plus one round trip."""
    k = floor_key(key)
    f = (inp.get("floors") or {}).get(k) if k else None
    if not f:
        return None
    return {"time": floor.link_time(f["bytes"], RATE_BITS, inp.get("rtt") or 0.0), "bytes": f["bytes"]}


def over_floor(res, inp, key):
    """(time, bytes from the registry) of a cold row over its floor's."""
    f = floor_of(inp, key)
    if not f:
        return None, None
    return ratio(med(res, key), f["time"]), ratio(fetched(res, key), f["bytes"])


def targets(res, inp):
    """[(what, figure text, target text, met)] for the report and the log."""
    size = inp["image_bytes"]
    one = fetched(res, "cold-lazy")
    blob = (res.get("cold-lazy") or {}).get("blob_bytes")
    x_small = ratio(med(res, "cold-docker"), med(res, "cold-lazy"))
    x_recorded = ratio(med(res, "cold-docker"), med(res, "cold-recorded"))
    x_big = ratio(med(res, "big-docker"), med(res, "big-lazy"))
    x_noindex = ratio(med(res, "cold-noindex"), med(res, "cold-docker"))
    share = ratio(one, size)
    share_blob = ratio(blob, size)
    x_nodes = ratio(fetched(res, "nodes"), one)
    rows = [
        ("docker pull + run over lazy imgfs run", x_small, f"≥ {MIN_DOCKER_OVER_LAZY:g}×",
         lambda x: x >= MIN_DOCKER_OVER_LAZY),
        ("docker pull + run over lazy imgfs run with a recording pushed", x_recorded,
         f"≥ {MIN_DOCKER_OVER_RECORDED:g}×", lambda x: x >= MIN_DOCKER_OVER_RECORDED),
        ("imgfs run without an index over docker pull + run", x_noindex, f"≤ {MAX_NOINDEX_OVER_DOCKER:g}×",
         lambda x: x <= MAX_NOINDEX_OVER_DOCKER),
        ("bytes from the registry for a lazy start (tc) / image's compressed size", share,
         f"≤ {MAX_FETCHED_SHARE:.0%}", lambda x: x <= MAX_FETCHED_SHARE),
        ("layer bytes kept by a lazy start (du of the blobs) / image's compressed size", share_blob,
         f"≤ {MAX_FETCHED_SHARE:.0%}", lambda x: x <= MAX_FETCHED_SHARE),
        ("2 GiB image: docker pull + run over lazy imgfs run", x_big, f"≥ {MIN_DOCKER_OVER_LAZY_BIG:g}×",
         lambda x: x >= MIN_DOCKER_OVER_LAZY_BIG),
        (f"{NODES} cold nodes: bytes from the registry (tc, HTTP and TCP framing included) over one lazy "
         "start", x_nodes, f"≤ {MAX_NODES_OVER_ONE:g}×", lambda x: x <= MAX_NODES_OVER_ONE),
    ]
    for w in WORKLOADS:
        t, b = over_floor(res, inp, workload_key("cold-lazy", w))
        rows.append((f"{WORKLOAD_TEXT[w]}: lazy start (index pushed, no recording) over its floor, time", t,
                     f"≤ {MAX_OVER_FLOOR:g}×", lambda x: x <= MAX_OVER_FLOOR))
        rows.append((f"{WORKLOAD_TEXT[w]}: the same, bytes from the registry over the floor's", b,
                     f"≤ {MAX_BYTES_OVER_FLOOR:g}×", lambda x: x <= MAX_BYTES_OVER_FLOOR))
    t, _ = over_floor(res, inp, "cold-recorded")
    rows.append((f"{WORKLOAD_TEXT['pass']}: lazy start with a recording pushed over its floor, time", t,
                 f"≤ {MAX_RECORDED_OVER_FLOOR:g}×", lambda x: x <= MAX_RECORDED_OVER_FLOOR))
    for image, text in (("estargz", "eStargz"), ("chunked", "zstd:chunked")):
        for w in WORKLOADS:
            t, _ = over_floor(res, inp, workload_key(f"cold-{image}", w))
            rows.append((f"{WORKLOAD_TEXT[w]}: {text} from its TOCs over its floor, time", t,
                         f"≤ {MAX_TOC_OVER_FLOOR:g}×", lambda x: x <= MAX_TOC_OVER_FLOOR))
    for w in WORKLOADS:
        t, _ = over_floor(res, inp, workload_key("big-lazy", w))
        rows.append((f"{WORKLOAD_TEXT[w]}: 2 GiB image, lazy start over its floor, time", t,
                     f"≤ {MAX_OVER_FLOOR:g}×", lambda x: x <= MAX_OVER_FLOOR))
    for what, a, b in (("metadata walk", "walk-lazy", "walk-oci"), ("read every file", "read-lazy", "read-oci"),
                       ("read every file after a remount", "read-remount", "read-oci"),
                       ("imgfs run python3 -c pass", "run-lazy", "run-oci")):
        rows.append((f"warm {what}: lazy image over oci: layout", ratio(med(res, a), med(res, b)),
                     f"≤ {MAX_WARM_OVER_OCI:g}× (at most {MAX_WARM_OVER_OCI - 1:.0%} slower)", lambda x: x <= MAX_WARM_OVER_OCI))
    out = []
    for what, x, target, ok in rows:
        # A ratio near its bound shows a third decimal: 8.00× would hide which side it is on.
        bound = target.split()[1]  # "20%" or "8×"
        share = bound.endswith("%")
        near = x is not None and not share and abs(x - float(bound.rstrip("×"))) < 0.01
        text = "—" if x is None else (f"{x:.1%}" if share else f"{x:.3f}×" if near else f"{x:.2f}×")
        out.append({"what": what, "figure": x, "text": text, "target": target, "met": check(x, ok)})
    return out


def mb(n):
    return "—" if n is None else f"{n / 1e6:.1f} MB"


def time_cell(st):
    if not st:
        return "not measured"
    if st.get("error"):
        return "FAILED: " + st["error"].replace("|", "/")[:160]
    busy = " (machine busy before)" if st.get("idle_before", 1) < IDLE_THRESHOLD else ""
    spread = f" ± {fmt_time(st.get('stddev') or 0)}" if st["runs"] > 1 else ""  # one run has none
    return f"{fmt_time(st['median'])}{spread} ({st['runs']}){busy}"


COLD_ROWS = [
    ("cold-docker", "`docker pull` + `docker run --rm IMAGE python3 -c pass`"),
    ("cold-lazy", "`imgfs run docker://…/lazy -- python3 -c pass` (index pushed), empty cache"),
    ("cold-lazy-imports", "the same, the heavier start (`import asyncio, json, sqlite3, ssl, email, http.server`)"),
    ("cold-lazy-shell", "the same, `sh -c true`"),
    ("cold-recorded", "`imgfs run docker://…/recorded -- python3 -c pass` (index pushed with "
                      "`--record -- python3 -c pass`), empty cache"),
    ("cold-prefetch", "`…/lazy` with `--prefetch all` (the rest fetched in the background)"),
    ("cold-noindex", "`imgfs run docker://…/noindex -- python3 -c pass` (no index: every layer whole)"),
    ("cold-docker-estargz", "eStargz image (ctr-remote) · `docker pull` + `docker run`"),
    ("cold-estargz", "eStargz image · `imgfs run docker://…/estargz` (no index: from its TOCs), empty cache"),
    ("cold-estargz-imports", "eStargz image · the heavier start"),
    ("cold-estargz-shell", "eStargz image · `sh -c true`"),
    ("cold-chunked", "zstd:chunked image (skopeo) · `imgfs run docker://…/chunked` (no index: from its TOCs)"),
    ("cold-chunked-imports", "zstd:chunked image · the heavier start"),
    ("cold-chunked-shell", "zstd:chunked image · `sh -c true`"),
    ("nodes", f"{NODES} × `imgfs run docker://…/lazy` at once, a cache each (wall time of all)"),
    ("big-docker", "2 GiB image · `docker pull` + `docker run`"),
    ("big-lazy", "2 GiB image · `imgfs run docker://…/big` (index pushed), empty cache"),
    ("big-lazy-imports", "2 GiB image · the heavier start"),
    ("big-lazy-shell", "2 GiB image · `sh -c true`"),
]


def render_floors(inp):
    """What each workload opens, and the floor of each image for it."""
    fl = inp.get("floors") or {}
    files = fl.get("_files") or {}
    L = ["| workload | files it opens | their bytes | image | floor: data | manifest, config, index | "
         f"floor: bytes | floor: time at {RATE_TEXT} + a round trip |", "|---|---|---|---|---|---|---|---|"]
    for w in WORKLOADS:
        for image in ("lazy", "recorded", "estargz", "chunked", "big"):
            f = fl.get(f"{image}/{w}")
            if not f:
                continue
            t = floor.link_time(f["bytes"], RATE_BITS, inp.get("rtt") or 0.0)
            L.append(f"| {WORKLOAD_TEXT[w]} | {len(files.get(w, []))} | {mb(f['file_bytes'])} | {image} "
                     f"| {mb(f['data'])} | {mb(f['index'])} | {mb(f['bytes'])} | {fmt_time(t)} |")
    return L


def render_cold(res, inp):
    L = ["| row | median | MB from the registry per run (tc) | layer blobs kept (du) | floor: time, MB "
         "| over the floor: time, bytes |", "|---|---|---|---|---|---|"]
    for key, label in COLD_ROWS:
        st = res.get(key) or {}
        size = inp["big_bytes"] if key.startswith("big") else inp["image_bytes"]
        for name in TOC_IMAGES:
            if key.endswith(name):
                size = inp.get(f"{name}_bytes") or size
        got = fetched(res, key)
        share = f" ({got / size:.1%} of the image)" if got is not None and key != "nodes" else ""
        f = floor_of(inp, key) if key != "nodes" else None
        t, b = over_floor(res, inp, key) if f else (None, None)
        fcell = f"{fmt_time(f['time'])}, {mb(f['bytes'])}" if f else "—"
        ocell = f"{t:.2f}×, {b:.2f}×" if t is not None and b is not None else "—"
        L.append(f"| {label} | {time_cell(st)} | {mb(got)}{share} | {mb(st.get('blob_bytes'))} | {fcell} | {ocell} |")
    return L


def render_spans(res, inp):
    L = ["| span | index | of the image | windows blobs (by range) | of the image | lazy start: median "
         "| MB from the registry per run (tc) | layer blobs kept (du) |", "|---|---|---|---|---|---|---|---|"]
    size = inp["image_bytes"]
    for s in SPANS:
        key = f"span-{s.lower()}"
        art, st = inp["artifacts"].get(key) or {}, res.get(key) or {}
        L.append(f"| {s} | {mb(art.get('bytes'))} | {ratio(art.get('bytes'), size) or 0:.2%} "
                 f"| {mb(art.get('window_bytes'))} | {ratio(art.get('window_bytes'), size) or 0:.2%} | {time_cell(st)} "
                 f"| {mb(fetched(res, key))} | {mb(st.get('blob_bytes'))} |")
    big = inp["artifacts"].get("big") or {}
    L.append(f"\nThe 2 GiB image's artifact (default span): {mb(big.get('bytes'))}, "
             f"{ratio(big.get('bytes'), inp['big_bytes']) or 0:.2%} of its {mb(inp['big_bytes'])}.")
    return L


def render_warm(res):
    L = ["| figure | oci: layout | lazy image, everything fetched | lazy / oci |", "|---|---|---|---|"]
    for label, a, b in (("metadata walk (`find -printf '%s %m %u\\n'`, alternating)", "walk-oci", "walk-lazy"),
                        ("read every file (`find -type f \\| xargs cat`, page cache dropped before each run)",
                         "read-oci", "read-lazy"),
                        ("the same over a second mount of the lazy image (made whole by it)", "read-oci",
                         "read-remount"),
                        ("`imgfs run … python3 -c pass` (alternating, shared server)", "run-oci", "run-lazy")):
        x = ratio(med(res, b), med(res, a))
        L.append(f"| {label} | {time_cell(res.get(a))} | {time_cell(res.get(b))} | "
                 f"{'—' if x is None else f'{x:.2f}×'} |")
    L.append(f"\nThe second mount of the lazy image, which made it whole from the layers' copies the first "
             f"mount made: {time_cell(res.get('remount-lazy'))}.")
    return L


def render_timelines(res, inp):
    """The traced cold starts (TRACED), summed up; the chart draws them."""
    L = ["| traced run | took | index fetched | server ready | guess (from, to) | first read | last read done "
         "| requests | MB fetched | some fetch in flight | reads that waited for a fetch | their wait | floor |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in TRACED:
        t = timeline_summary(res.get(f"timeline-{key}"))
        if not t:
            L.append(f"| {key} | {(res.get(f'timeline-{key}') or {}).get('error', 'not measured')} "
                     "| | | | | | | | | | | |")
            continue
        f = floor_of(inp, key)
        st = t.get("steps") or {}
        end = lambda k: fmt_time(st[k][1]) if k in st else "—"
        guess = f"{fmt_time(st['guess'][0])}, {fmt_time(st['guess'][1])}" if "guess" in st else "—"
        L.append(f"| {key} | {fmt_time(t['run'])} | {end('prepare')} | {end('server')} | {guess} "
                 f"| {fmt_time(t['first_read'] or 0)} | {fmt_time(t['last_read'] or 0)} "
                 f"| {t['requests']} | {mb(t['fetched'])} | {fmt_time(t['in_flight'])} | {t['waits']} of {t['reads']} "
                 f"| {fmt_time(t['waited'])} | {fmt_time(f['time']) if f else '—'} |")
    return L


def draw(res, inp, path):
    """The cold rows beside docker pull + run (log scale, floors marked), and the timeline of
    each traced cold start: every request from when it was sent to when its last byte came
    (grey: manifests and whole blobs; blue: ranges), the reads the filesystem answered (red,
    below), the floor and the run's end."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    traced = [k for k in TRACED if timeline_summary(res.get(f"timeline-{k}"))]
    fig, axes = plt.subplots(1 + len(traced), 1, figsize=(11, 4 + 3.2 * len(traced)),
                             gridspec_kw={"height_ratios": [1.3] + [1] * len(traced)})
    axes = list(axes) if len(traced) else [axes]
    rows = [(k, l) for k, l in COLD_ROWS if med(res, k) and k != "nodes"]
    ax = axes[0]
    ys = range(len(rows))[::-1]
    ax.barh(list(ys), [med(res, k) for k, _ in rows],
            color=["#b0b0b0" if "docker" in k else "#3a78c2" for k, _ in rows])
    for y, (k, _) in zip(ys, rows):
        f = floor_of(inp, k)
        if f:
            ax.plot([f["time"]] * 2, [y - 0.4, y + 0.4], color="black", lw=2)
        ax.text(med(res, k) * 1.05, y, fmt_time(med(res, k)), va="center", fontsize=7)
    ax.set_yticks(list(ys), [k for k, _ in rows], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"seconds, cold start at {RATE_TEXT} (black: the floor)")
    ax.set_title("Cold start from a registry: imgfs (blue) and docker pull + run (grey)", fontsize=9)
    for ax, key in zip(axes[1:], traced):
        tl = res[f"timeline-{key}"]
        t0 = tl["t0"] * 1e6
        fetches = sorted((e for e in tl["events"] if e["kind"] in FETCH_KINDS), key=lambda e: e["t0"])
        reads = [e for e in tl["events"] if e["kind"] == "read"]
        for i, e in enumerate(fetches):
            a, b = (e["t0"] - t0) / 1e3, (e["t1"] - t0) / 1e3
            ax.barh(i + 2, max(b - a, 0.3), left=a, height=0.8,
                    color="#3a78c2" if e["kind"] == "ranges" else "#909090")
        # The start's own steps, on the line above the reads.
        for e in (e for e in tl["events"] if e["kind"] in STEP_KINDS):
            a, b = (e["t0"] - t0) / 1e3, (e["t1"] - t0) / 1e3
            ax.barh(1, max(b - a, 0.3), left=a, height=0.6, color="#5aa05a", alpha=0.6)
            ax.text(a, 1, e["kind"], fontsize=6, va="center")
        for e in reads:
            a, b = (e["t0"] - t0) / 1e3, (e["t1"] - t0) / 1e3
            ax.plot([a, max(b, a + 0.3)], [0, 0], color="#c23a3a", lw=4, solid_capstyle="butt")
        f = floor_of(inp, key)
        if f:
            ax.axvline(f["time"] * 1e3, color="black", lw=1.5)
            ax.text(f["time"] * 1e3, len(fetches) + 2.5, " floor", fontsize=7)
        run_end = (tl["t1"] - tl["t0"]) * 1e3
        ax.axvline(run_end, color="#c23a3a", lw=1, ls="--")
        ax.text(run_end, len(fetches) + 0.5, "exit ", fontsize=7, color="#c23a3a", ha="right")
        ax.set_ylim(-1, len(fetches) + 4)
        ax.set_yticks([0, 1], ["reads", "steps"], fontsize=7)
        ax.set_xlabel("ms since imgfs run began")
        t = timeline_summary(tl)
        ax.set_title(f"{key}: {len(fetches)} requests ({mb(t['fetched'])}; blue: ranges, grey: manifests and "
                     f"whole blobs), the start's steps (green), reads (red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_span(inp):
    """The span of the spans' artifacts that is the default's (the same artifact), if any."""
    arts = inp["artifacts"]
    lazy = re.search(r"as (sha256:[0-9a-f]+)", (arts.get("lazy") or {}).get("report", ""))
    for s in SPANS:
        if lazy and lazy.group(1) in (arts.get(f"span-{s.lower()}") or {}).get("report", ""):
            return s
    return None


def render_notes(res):
    """What the tables leave to arithmetic: eight nodes beside one start, prefetch beside none."""
    L = []
    if med(res, "nodes") and med(res, "cold-lazy"):
        L.append(f"{NODES} cold nodes at once took {med(res, 'nodes') / med(res, 'cold-lazy'):.2f}× the wall time of "
                 f"one lazy start and fetched {ratio(fetched(res, 'nodes'), fetched(res, 'cold-lazy')) or 0:.3f}× "
                 f"its bytes ({mb(fetched(res, 'nodes'))} against {mb(fetched(res, 'cold-lazy'))}). ")
    if med(res, "cold-prefetch") and med(res, "cold-lazy"):
        L.append(f"With `--prefetch all` the cold run took {med(res, 'cold-prefetch') / med(res, 'cold-lazy'):.2f}× "
                 "the time of `--prefetch none`; its bytes per run count the background fetch until the next "
                 "run's preparation stopped the server, not only what the run needed.")
    return ["".join(L)] if L else []


def render(res, meta):
    mach, v, inp = meta["machine"], meta["versions"], meta["inputs"]
    L = ["## Lazy registry images\n",
         f"Generated by `bench/run.sh --lazy` on {meta['date']} (run took {meta.get('duration_min', 0):.1f} min). "
         f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram']}, kernel {mach['kernel']}, {mach['os']}; "
         f"imgfs {v['imgfs']}; {v['skopeo']}; {v['docker']}; {v['registry']}; {v['hyperfine']}. "
         f"Built and measured from {checkout_text(checkout_of(meta))}.\n",
         f"The image is `{meta['image']}` ({inp['image_layers']} gzip layers, {mb(inp['image_bytes'])}), "
         f"pushed to Debian's docker-registry on 127.0.0.1 with imgfs's index (`imgfs index push`, "
         f"default span{f', {default_span(inp)}' if default_span(inp) else ''}) and, under another name, without one; the 2 GiB image is the same with two more "
         f"layers of pseudo-random files that nothing reads ({inp['big_layers']} layers, "
         f"{mb(inp['big_bytes'])}; bench/make_big_image.py). The registry's replies go through an htb class "
         f"of {RATE_TEXT} on lo. Every cold run starts from nothing local: docker pulls into a dockerd of "
         "the benchmark's own that holds no other image; imgfs runs with an empty cache and no server left "
         "from an earlier run. *MB from the registry* is what the shaped class carried per run (headers, "
         "manifest, config and index included); *layer blobs kept* is the allocated size of the sparse "
         "layer blobs in the cache after the last run (`du -B1`). Medians, runs in parentheses.\n",
         "### Targets\n", "| figure | measured | target | met? |", "|---|---|---|---|"]
    for t in meta["targets"]:
        met = {True: "**met**", False: "**missed**", None: "—"}[t["met"]]
        L.append(f"| {t['what']} | {t['text']} | {t['target']} | {met} |")
    L += ["", f"### Cold start from the registry at {RATE_TEXT}\n", *render_cold(res, inp), "",
          "### The floor of a cold start\n",
          "Computed by bench/floor.py, without imgfs: the files a workload opens (strace of it in bwrap "
          "over umoci's unpack of the image), where their data lies in the layers (Python's tarfile, "
          "whiteouts applied), and the compressed bytes that hold it — the deflate blocks of a gzip or "
          "eStargz layer (zlib's inflate stopping at each block) or the zstd frames of a zstd:chunked one "
          "— plus the manifest, the config and what a mount needs to know the tree (imgfs's index artifact, "
          "or the layers' own TOCs). Its time is those bytes at the link's rate plus one round trip "
          f"({fmt_time(inp.get('rtt') or 0.0)}, a TCP connect to the registry). No reader fetches less: a "
          "block in the middle of a layer also needs the 32 KiB before it, which the floor leaves out.\n",
          *render_floors(inp), "",
          "### Where a cold start's time goes\n",
          "One more run of each of these rows, with `IMGFS_TRACE` set: imgfs recorded every exchange with "
          "the registry, every read its filesystem answered (a read that took over 1 ms waited for a "
          "fetch) and the start's own steps: *index fetched* is when the image was resolved and its index "
          "stored, *server ready* when the server answered on its mountpoint, *guess* when the server's "
          "guess at the command's files began and when its last file's head was read (the files come "
          "whole in the background). *Some fetch in flight* is the time at least one request was open.\n",
          *render_timelines(res, inp), "",
          f"![cold starts and their timelines]({CHART.name})", "",
          *render_notes(res), "",
          "### Span size: the index against what a lazy start fetches\n", *render_spans(res, inp), "",
          "### Warm: the lazy image with everything fetched beside the OCI layout (unshaped)\n",
          *render_warm(res), "",
          "Run it with `bench/run.sh --lazy`; raw figures in `bench/results/lazy.json`."]
    return "\n".join(L)


def report(res, meta):
    meta["targets"] = targets(res, meta["inputs"])
    try:
        draw(res, meta["inputs"], CHART)
        log(f"drew {CHART}")
    except Exception as e:  # the figures stand without the picture
        log(f"FAILED drawing {CHART}: {e}")
    (RESULTS / "lazy.json").write_text(json.dumps({"meta": meta, "results": res}, indent=1, default=str))
    md = ROOT / "bench" / "RESULTS.md"
    write_section(md, SECTION, render(res, meta))
    write_runs_section(md)
    log(f"wrote {RESULTS / 'lazy.json'} and the {SECTION} section of {md}")
    for t in meta["targets"]:
        word = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
        log(f"target {word} {t['what']}: {t['target']}: {t['text']}")


def main():
    ap = argparse.ArgumentParser(description="imgfs benchmark of lazy registry images (run it through "
                                             "bench/run.sh --lazy)")
    ap.add_argument("--render-only", action="store_true",
                    help="write the Markdown section again from bench/results/lazy.json")
    args = ap.parse_args()
    if args.render_only:
        saved = json.loads((RESULTS / "lazy.json").read_text())
        report(saved["results"], saved["meta"])
        return
    check_inputs()
    lock = hold_machine("lazy.py")  # noqa: F841 (held until exit)
    RESULTS.mkdir(parents=True, exist_ok=True)
    set_log_file(open(RESULTS / "lazy.log", "w"))
    raw = RESULTS / "raw-lazy"
    if raw.exists():
        shutil.rmtree(raw)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    gz = layouts()["gzip"]
    start = time.time()
    checkout = checkout_at_start()
    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M %Z").strip(), "run": run_id(),
            "checkout": checkout, "machine": machine(), "versions": sources.versions(checkout),
            "image": read_env().get("LAYERS_IMAGE", "?"), "command": CMD}
    BASE.mkdir(parents=True, exist_ok=True)
    try:
        res, meta["inputs"] = measure_all(Runner(False, raw), gz)
    except KeyboardInterrupt:
        log("interrupted; unmounting and stopping the shared servers")
        sys.exit(130)
    finally:
        for m in (MNT_LAZY, MNT_OCI):
            umount(m)
        stop_shared()
    meta["duration_min"] = (time.time() - start) / 60
    meta["checkout"] = checkout_at_end(meta["checkout"])
    report(res, meta)


if __name__ == "__main__":
    main()
