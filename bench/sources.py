#!/usr/bin/env python3
"""Images of layers, without a daemon: what a cold `imgfs mount oci:DIR:REF` costs beside the
decompression it cannot avoid and beside unpacking the image with umoci, and how the warm
mount, run and walk compare with the unpacked tree.

The image is imgfs-test/layers:1 (tests/fixtures/make-layered.sh: the Debian python test
image as 6 layers), read from its OCI layouts under $IMGFS_FIXTURES/layered, ref `layers`.

  index build  a cold `imgfs mount` (empty cache: every layer decompressed into the cache,
               scanned and merged) beside single-threaded decompression of the same blobs with
               zlib (Python's zlib module), GNU gzip and zstd (--no-asyncio: zstd 1.5's reader
               and writer threads hand over every frame, which costs seconds on zstd:chunked's
               thousands of frames on a machine of two cores), output discarded; gzip, zstd and
               zstd:chunked layouts, and the uncompressed layout for the part that is not
               decompression. The blobs are in the page cache before every run.
  unpack       `umoci raw unpack` (the root file system only) and `umoci unpack` (a runtime
               bundle: rootfs, config.json and an mtree manifest) of the gzip layout.
  warm         `imgfs mount` with the cache full; `imgfs run IMAGE -- python3 -c pass` beside
               bwrap on umoci's unpacked tree, and a metadata walk of the mount beside one of
               that tree, each pair run alternately (one run of each in turn).
  registry     the image pushed to Debian's docker-registry on loopback, its replies shaped to
               100 Mbit/s (htb on lo, only the registry's port), then `python3 -c pass` from
               nothing local: `docker pull` + `docker run` (a dockerd of the benchmark's own, so
               that no other image holds the layers and every pull downloads them), `skopeo
               copy` + `umoci raw unpack` + bwrap, and `imgfs run docker://...` with an empty
               cache; beside them the floor, the layer blobs fetched with curl. The qdisc is
               removed at the end, on errors and interrupts too.

The image's entrypoint only prints how it was started: every sandbox here clears it and runs
`python3 -c pass` itself.

Writes bench/results/sources.json and the `sources` section of bench/RESULTS.md (--quick:
bench/results/sources-quick.json and bench/results/RESULTS-quick.md), hyperfine's raw JSON
under bench/results/raw-sources/. Started by `bench/run.sh --sources`, which builds imgfs
and installs the peers first.

Usage: sources.py [--quick] [--render-only]
       sources.py _prep ACTION...   (internal: hyperfine --prepare steps, see prep())
"""

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import (FIX, IDLE_THRESHOLD, IMGFS, RESULTS, ROOT, WORK, BWRAP_FLAGS, BenchError, Runner,
                    checkout_at_end, checkout_at_start, checkout_of, checkout_text, fmt_time, hold_machine,
                    imgfs_version, log, machine, out, q, run, run_id, set_log_file, stop_shared,
                    write_runs_section, write_section)
from sandbox import alternate

SECTION = "sources"
LAYERED = FIX / "layered"
ENV_FILE = LAYERED / "fixtures.env"
REF = "layers"
CMD = ["python3", "-c", "pass"]
WALK = ["find", "{m}", "-printf", "%s %m %u\n"]  # bench.py's metadata walk

# Everything this driver writes lives under BASE (under WORK, so that stop_shared finds the
# shared servers `imgfs run` leaves for its caches).
BASE = WORK / "sources"
COLD_CACHE = BASE / "cold-cache"   # emptied before every cold mount
WARM_CACHE = BASE / "warm-cache"   # filled once, then only read
MNT = BASE / "mnt"
UNPACK = BASE / "unpack"           # umoci raw unpack's tree: also bwrap's root and the walk's
BUNDLE = BASE / "bundle"
INFLATE = BASE / "inflate.py"
REGISTRY = BASE / "registry"       # docker-registry's config and storage
DOCKERD = BASE / "dockerd"         # the benchmark's own dockerd: data root, exec root, socket
DOCKER = ["docker", "-H", f"unix://{DOCKERD / 'docker.sock'}"]
BENCH_BRIDGE = "imgfsbench0"        # the benchmark's dockerd's bridge
BENCH_BRIDGE_ADDR = "10.213.0.1/24"
REG_CACHE = BASE / "registry-cache"
REG_OCI = BASE / "registry-oci"    # skopeo's copy of the pushed image
REG_TREE = BASE / "registry-tree"  # umoci's unpacking of that copy
REG_NAME = "bench/layers:1"

# The link from the registry: htb on lo, a class at this rate for the registry port's replies
# and a default class fast enough to leave the rest of loopback as it was (measured: a 10 Gbit/s
# class with a 4 MB burst moves ~1 GB/s, as lo does without a qdisc).
RATE = "100mbit"
RATE_TEXT = "100 Mbit/s"
FAST = ["rate", "10gbit", "ceil", "10gbit", "burst", "4m", "cburst", "4m"]
SHAPED_CLASS = "1:20"

# The zlib baseline: Python's zlib module (the system's zlib), one thread, 1 MiB reads, every
# member of each gzip blob, output discarded.
INFLATE_SCRIPT = '''import sys, zlib
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        d = zlib.decompressobj(31)
        while chunk := f.read(1 << 20):
            d.decompress(chunk)
            while d.eof and d.unused_data:
                rest, d = d.unused_data, zlib.decompressobj(31)
                d.decompress(rest)
'''

# Runs per alternating pair: tens of milliseconds each, so many runs cost little.
RUNS = {"full": 40, "quick": 10}
WALK_RUNS = {"full": 20, "quick": 5}
WARMUP = {"full": 3, "quick": 1}
WARM_MOUNT_RUNS = {"full": 30, "quick": 10}

# Targets. A cold mount decompresses each layer into the cache while it scans it: with the
# scan and the merge riding on the decompression, it should take no longer than one thread
# decompressing the same blobs. The warm figures keep RESULTS.md's targets for docker and tar
# sources: a warm mount ready in 10 ms, a warm run within 1.5× of bwrap on an extracted tree,
# a metadata walk within 2× of the extracted tree.
MAX_OVER_DECOMPRESSION = 1.0
MAX_WARM_MOUNT_S = 0.010
MAX_OVER_BWRAP = 1.5
MAX_WALK_OVER_TREE = 2.0
# From a registry, imgfs fetches and indexes the layers and starts the command; docker also
# extracts every layer into its store before it can start a container.
MAX_OVER_DOCKER_PULL = 0.6


class Layout:
    """One OCI layout of the fixtures and the layer blobs its ref names."""

    def __init__(self, key, env_name, label, env):
        self.key, self.label = key, label
        self.dir = Path(env[env_name])
        self.source = f"oci:{self.dir}:{REF}"
        self.layers = layer_blobs(self.dir, REF)

    @property
    def blob_paths(self):
        return [p for p, _ in self.layers]

    @property
    def size(self):
        return sum(s for _, s in self.layers)


def read_env():
    env = {}
    for line in ENV_FILE.read_text().splitlines():
        k, sep, v = line.partition("=")
        if sep and not line.startswith("#"):
            env[k.strip()] = v.strip()
    return env


def layer_blobs(layout, ref):
    """[(blob path, size)] of the layers of the manifest that `ref` names in the layout."""
    def blob(digest):
        algo, _, hexd = digest.partition(":")
        return layout / "blobs" / algo / hexd
    index = json.loads((layout / "index.json").read_text())
    for m in index.get("manifests", []):
        if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == ref:
            manifest = json.loads(blob(m["digest"]).read_text())
            return [(blob(l["digest"]), l["size"]) for l in manifest["layers"]]
    raise BenchError(f"{layout}: no manifest with the ref {ref}")


def layouts():
    env = read_env()
    return {
        "gzip": Layout("gzip", "OCI_GZIP", "gzip", env),
        "zstd": Layout("zstd", "OCI_ZSTD", "zstd", env),
        "chunked": Layout("chunked", "OCI_ZSTD_CHUNKED", "zstd:chunked", env),
        "plain": Layout("plain", "OCI_PLAIN", "uncompressed", env),
    }


def imgfs_mount(cache, layout):
    return [IMGFS, "mount", "-q", "--cache-dir", cache, layout.source, MNT]


def imgfs_run(cache, source):
    # No network, as bwrap's (--unshare-net): these rows measure the image, not the network
    # (bench/sandbox.py measures what the default bridge network costs).
    return [IMGFS, "run", "-q", "--network", "none", "--cache-dir", cache, "--entrypoint", "", source, "--", *CMD]


# ---------------------------------------------------------------------------------------------
# Rows

class Row:
    def __init__(self, key, group, label, base=None, target=None, absolute=None):
        self.key, self.group, self.label, self.base = key, group, label, base
        # target: (text, ratio -> bool), the ratio being this row's median over its base's;
        # absolute: (text, median -> bool) for a target in seconds.
        self.target, self.absolute = target, absolute


def over_decompression(tool):
    return (f"≤ {MAX_OVER_DECOMPRESSION:g}× {tool}", lambda x: x <= MAX_OVER_DECOMPRESSION)


ROWS = [
    Row("gzip-zlib", "build", "gzip layers · python zlib, one thread (decompress only)"),
    Row("gzip-gzip", "build", "gzip layers · `gzip -dc` (GNU gzip's own inflate, one thread)", "gzip-zlib"),
    Row("gzip-imgfs", "build", "gzip layers · imgfs mount, empty cache", "gzip-zlib", over_decompression("zlib")),
    Row("zstd-zstd", "build", "zstd layers · `zstd -dc --no-asyncio`, one thread (decompress only)"),
    Row("zstd-imgfs", "build", "zstd layers · imgfs mount, empty cache", "zstd-zstd", over_decompression("zstd -dc")),
    Row("chunked-zstd", "build", "zstd:chunked layers · `zstd -dc --no-asyncio`, one thread (decompress only)"),
    Row("chunked-imgfs", "build", "zstd:chunked layers · imgfs mount, empty cache", "chunked-zstd",
        over_decompression("zstd -dc")),
    Row("plain-imgfs", "build", "uncompressed layers · imgfs mount, empty cache (copy into the cache, "
        "scan, merge: everything but decompression)", "gzip-imgfs"),
    Row("umoci-raw", "unpack", "`umoci raw unpack --image oci-gzip:layers DIR`", "gzip-imgfs"),
    Row("umoci-bundle", "unpack", "`umoci unpack --image oci-gzip:layers BUNDLE`", "gzip-imgfs"),
    Row("warm-mount", "warm", "imgfs mount, cache full (returns with the mount ready)",
        absolute=(f"≤ {MAX_WARM_MOUNT_S * 1e3:g} ms", lambda s: s <= MAX_WARM_MOUNT_S)),
    Row("run-bwrap", "warm", "bwrap on umoci's unpacked tree · `python3 -c pass`"),
    Row("run-imgfs", "warm", "imgfs run oci:…:layers · `python3 -c pass` (shared server of the first run)",
        "run-bwrap", (f"≤ {MAX_OVER_BWRAP:g}× bwrap", lambda x: x <= MAX_OVER_BWRAP)),
    Row("walk-tree", "warm", "metadata walk of umoci's unpacked tree"),
    Row("walk-imgfs", "warm", "metadata walk of the imgfs mount (warm)", "walk-tree",
        (f"≤ {MAX_WALK_OVER_TREE:g}× the tree", lambda x: x <= MAX_WALK_OVER_TREE)),
    Row("reg-docker", "registry", "`docker pull` + `docker run --rm IMAGE python3 -c pass`"),
    Row("reg-umoci", "registry", "`skopeo copy` + `umoci raw unpack` + bwrap `python3 -c pass`", "reg-docker"),
    Row("reg-imgfs", "registry", "`imgfs run docker://… -- python3 -c pass`, empty cache", "reg-docker",
        (f"≤ {MAX_OVER_DOCKER_PULL:g}× docker", lambda x: x <= MAX_OVER_DOCKER_PULL)),
    Row("reg-fetch", "registry", "the layer blobs fetched over the same link (`curl`, output discarded): "
        "the transfer alone", "reg-docker"),
]
BASE_TITLES = {"gzip-zlib": "zlib", "zstd-zstd": "zstd -dc", "chunked-zstd": "zstd -dc",
               "gzip-imgfs": "imgfs gzip mount", "run-bwrap": "bwrap", "walk-tree": "the tree",
               "reg-docker": "docker"}
GROUPS = [
    ("build", "Index build from layers on disk (cold mount)"),
    ("unpack", "Unpacking the image instead (gzip layout)"),
    ("warm", "Warm: mount, run, walk (gzip layout, cache full)"),
    ("registry", f"Cold start from a registry at {RATE_TEXT}"),
]


# ---------------------------------------------------------------------------------------------
# Set-up and hyperfine's prepare steps

def check_inputs():
    if os.geteuid() != 0:
        sys.exit("sources.py: must run as root")
    for tool in ("hyperfine", "bwrap", "umoci", "skopeo", "gzip", "zstd", "findmnt", "tc", "dockerd", "docker",
                 "docker-registry"):
        if not shutil.which(tool):
            sys.exit(f"sources.py: {tool} not found (bench/run.sh --sources installs it)")
    if not IMGFS.exists():
        sys.exit(f"sources.py: {IMGFS} missing (bench/run.sh --sources builds it)")
    if not ENV_FILE.exists():
        sys.exit(f"sources.py: {ENV_FILE} missing (tests/fixtures/make-layered.sh makes the layered fixtures)")


def mounted(path):
    return run(["findmnt", "-n", "--mountpoint", path], capture=True, check=False, timeout=30).returncode == 0


def servers_of(mountpoint):
    """Pids of the imgfs servers whose mount point is `mountpoint` (their last argument)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if b"__serve" in args and args[-1] == str(mountpoint).encode():
            pids.append(int(d.name))
    return pids


def umount(mnt=MNT):
    """Unmount mnt and wait for its server to exit, so that its cache can go."""
    pids = servers_of(mnt)
    if mounted(mnt):
        r = run([IMGFS, "umount", mnt], capture=True, check=False, timeout=60)
        if r.returncode != 0 and mounted(mnt):
            log(f"WARNING: imgfs umount {mnt}: exit {r.returncode}; unmounting lazily")
            run(["umount", "-l", mnt], capture=True, check=False, timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.01)
    for p in pids:
        if Path(f"/proc/{p}").exists():
            log(f"WARNING: server {p} of {mnt} still running 30 s after unmount; killing it")
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    mnt.mkdir(parents=True, exist_ok=True)


def prep(actions):
    """Steps run by hyperfine --prepare (through `sources.py _prep ...`):
    umount  rm:PATH  sync  warm:FILE  stop-shared  docker-rmi:REF"""
    for a in actions:
        verb, _, rest = a.partition(":")
        if verb == "umount":
            umount()
        elif verb == "stop-shared":
            stop_shared()
        elif verb == "docker-rmi":
            run(DOCKER + ["rmi", "-f", rest], capture=True, check=False, timeout=120)
            left = out(DOCKER + ["images", "-q"], timeout=60)
            if left:
                raise BenchError(f"the benchmark's dockerd still holds images after rmi: {left.split()}")
        elif verb == "rm":
            p = Path(rest)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        elif verb == "sync":
            os.sync()  # the last run's writes reach the disk before the next one starts
        elif verb == "warm":
            with open(rest, "rb") as f:
                while f.read(1 << 22):
                    pass
        else:
            raise BenchError(f"_prep: unknown action {a}")


def prep_cmd(*actions):
    return q([sys.executable, Path(__file__).resolve(), "_prep", *actions])


def warm_blobs(layout):
    return [f"warm:{p}" for p in layout.blob_paths]


# ---------------------------------------------------------------------------------------------
# The registry, its link and a dockerd of the benchmark's own

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, ready, proc, log_file, timeout=30):
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None or time.time() > deadline:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
            raise BenchError(f"{what} did not start: {' | '.join(tail)}")
        time.sleep(0.1)


def stop(proc, what):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log(f"WARNING: {what} still running 30 s after SIGTERM; killing it")
            proc.kill()
            proc.wait(timeout=30)


@contextlib.contextmanager
def registry():
    """Debian's docker-registry on a free loopback port, storage under REGISTRY; yields
    HOST:PORT."""
    if REGISTRY.exists():
        shutil.rmtree(REGISTRY)
    REGISTRY.mkdir(parents=True)
    addr = f"127.0.0.1:{free_port()}"
    config = REGISTRY / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {REGISTRY / 'data'}\nhttp:\n  addr: {addr}\n")
    log_file = REGISTRY / "registry.log"

    def answers():
        try:
            return urllib.request.urlopen(f"http://{addr}/v2/", timeout=2).status == 200
        except OSError:
            return False
    with open(log_file, "w") as lf:
        proc = subprocess.Popen(["docker-registry", "serve", config], stdin=subprocess.DEVNULL, stdout=lf,
                                stderr=lf, start_new_session=True)
    try:
        wait_for(f"docker-registry on {addr}", answers, proc, log_file)
        yield addr
    finally:
        stop(proc, "docker-registry")


@contextlib.contextmanager
def own_dockerd():
    """A dockerd with its own data root, exec root, socket and bridge (no iptables): only
    the benchmark's image is in it, so that `docker rmi` frees its layers and the next pull
    downloads them again (dockerd reuses a layer any other image holds). Its bridge is its
    own: a dockerd started with `--bridge=none` deletes docker0, which the machine's dockerd
    needs."""
    if DOCKERD.exists():
        # A dockerd killed with SIGKILL leaves its data root mounted on itself.
        if mounted(DOCKERD / "data"):
            run(["umount", "-R", DOCKERD / "data"], capture=True, what="unmounting a dead dockerd's data root")
        shutil.rmtree(DOCKERD)
    DOCKERD.mkdir(parents=True)
    run(["ip", "link", "del", BENCH_BRIDGE], check=False, capture=True)
    run(["ip", "link", "add", BENCH_BRIDGE, "type", "bridge"], what="ip link add")
    run(["ip", "addr", "add", BENCH_BRIDGE_ADDR, "dev", BENCH_BRIDGE], what="ip addr add")
    run(["ip", "link", "set", BENCH_BRIDGE, "up"], what="ip link set up")
    log_file = DOCKERD / "dockerd.log"

    def answers():
        return run(DOCKER + ["info"], capture=True, check=False, timeout=30).returncode == 0
    with open(log_file, "w") as lf:
        proc = subprocess.Popen(
            ["dockerd", "--iptables=false", "--ip-masq=false", f"--bridge={BENCH_BRIDGE}",
             "--data-root", DOCKERD / "data", "--exec-root", DOCKERD / "exec",
             "--pidfile", DOCKERD / "dockerd.pid", "-H", f"unix://{DOCKERD / 'docker.sock'}"],
            stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, start_new_session=True)
    try:
        wait_for("the benchmark's dockerd", answers, proc, log_file, timeout=60)
        yield
    finally:
        stop(proc, "the benchmark's dockerd")
        run(["ip", "link", "del", BENCH_BRIDGE], check=False, capture=True)
        # Its containerd exits with it; its data root (layers, overlay2) goes.
        shutil.rmtree(DOCKERD, ignore_errors=True)


@contextlib.contextmanager
def shaped(port):
    """htb on lo: the replies from `port` at RATE, the rest in a fast default class. Refuses
    when lo already has a qdisc of someone else's; removes its own on the way out."""
    have = out(["tc", "qdisc", "show", "dev", "lo"], timeout=30)
    if not re.fullmatch(r"qdisc noqueue 0: root refcnt \d+\s*", have):
        raise BenchError(f"lo already has a qdisc ({have.strip()}): not shaping over it")
    tc = ["tc"]
    try:
        run(tc + ["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10"], capture=True)
        run(tc + ["class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", *FAST], capture=True)
        run(tc + ["class", "add", "dev", "lo", "parent", "1:", "classid", SHAPED_CLASS, "htb",
                  "rate", RATE, "ceil", RATE], capture=True)
        run(tc + ["filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                  "match", "ip", "sport", port, "0xffff", "flowid", SHAPED_CLASS], capture=True)
        log(f"lo shaped: replies from port {port} at {RATE_TEXT}")
        yield
    finally:
        r = run(tc + ["qdisc", "del", "dev", "lo", "root"], capture=True, check=False, timeout=30)
        if r.returncode != 0:
            log(f"WARNING: removing the qdisc on lo failed: {r.stderr.strip()}")
        else:
            log("lo's qdisc removed")


def shaped_bytes():
    """Bytes sent so far through the shaped class (the registry's replies)."""
    text = out(["tc", "-s", "class", "show", "dev", "lo", "classid", SHAPED_CLASS], timeout=30)
    m = re.search(r"Sent (\d+) bytes", text)
    return int(m.group(1)) if m else None


def measure_shaped(runner, tag, cmd, **kw):
    """runner.measure, with what the shaped class carried per run (every run, the untimed
    probe included, fetches from the registry)."""
    before = shaped_bytes()
    st = runner.measure(tag, cmd, **kw)
    after = shaped_bytes()
    if not st.get("error") and before is not None and after is not None:
        raw = json.loads((runner.raw / f"{tag}.json").read_text())["results"][0]
        execs = 1 if raw.get("note") else len(raw["times"]) + 1
        st["shaped_bytes_per_run"] = (after - before) / execs
    return st


# ---------------------------------------------------------------------------------------------
# Measurements

def measure_all(runner, quick, L):
    mode = "quick" if quick else "full"
    res = {}
    # --quick stays within about 3 minutes: fewer runs, and the rows that repeat what another
    # row shows (zstd:chunked beside zstd, umoci's bundle beside its rootfs) left out.
    few = dict(max_runs=3) if quick else {}
    left_out = {"chunked-zstd", "chunked-imgfs", "umoci-bundle"} if quick else set()

    def m(key, argv, **kw):
        if key in left_out:
            res[key] = {"skipped": "--quick"}
            return
        res[key] = runner.measure(f"sources-{key}", q(argv), **few, **kw)

    def decompress(key, argv, layout):
        if key in left_out:
            res[key] = {"skipped": "--quick"}
            return
        # Through a shell to /dev/null: the probe run would capture the output.
        res[key] = runner.measure(f"sources-{key}", q(argv) + " >/dev/null", shell=True,
                                  prepare=prep_cmd(*warm_blobs(layout)), **few)

    BASE.mkdir(parents=True, exist_ok=True)
    INFLATE.write_text(INFLATE_SCRIPT)
    umount()

    # Index build: each imgfs cold mount right after its decompression baseline.
    gz = L["gzip"]
    m("gzip-zlib", ["python3", INFLATE, *gz.blob_paths], prepare=prep_cmd(*warm_blobs(gz)))
    decompress("gzip-gzip", ["gzip", "-dc", *gz.blob_paths], gz)
    for key, lay, tool in (("gzip", gz, None), ("zstd", L["zstd"], "zstd"), ("chunked", L["chunked"], "zstd"),
                           ("plain", L["plain"], None)):
        if tool:
            decompress(f"{key}-zstd", ["zstd", "-dcq", "--no-asyncio", *lay.blob_paths], lay)
        m(f"{key}-imgfs", imgfs_mount(COLD_CACHE, lay),
          prepare=prep_cmd("umount", f"rm:{COLD_CACHE}", "sync", *warm_blobs(lay)))
        umount()
    prep([f"rm:{COLD_CACHE}"])

    # Unpacking with umoci. The last run's tree stays: bwrap's root and the walk's.
    slow = {} if quick else dict(max_runs=8)  # seconds a run, and noisy: enough for a median
    m("umoci-raw", ["umoci", "raw", "unpack", "--image", f"{gz.dir}:{REF}", UNPACK],
      prepare=prep_cmd(f"rm:{UNPACK}", "sync", *warm_blobs(gz)), **slow)
    m("umoci-bundle", ["umoci", "unpack", "--image", f"{gz.dir}:{REF}", BUNDLE],
      prepare=prep_cmd(f"rm:{BUNDLE}", "sync", *warm_blobs(gz)), **slow)
    prep([f"rm:{BUNDLE}"])
    if not (UNPACK / "usr" / "bin" / "python3").exists():
        log(f"unpacking {gz.source} into {UNPACK} with umoci (untimed)")
        prep([f"rm:{UNPACK}"])
        run(["umoci", "raw", "unpack", "--image", f"{gz.dir}:{REF}", UNPACK], capture=True, timeout=600)

    # Warm. One untimed mount fills the cache; the last timed mount stays for the walk.
    stop_shared()
    prep(["umount", f"rm:{WARM_CACHE}"])
    run(imgfs_mount(WARM_CACHE, gz), capture=True, timeout=600, what="filling the warm cache")
    n = WARM_MOUNT_RUNS[mode]
    res["warm-mount"] = runner.measure("sources-warm-mount", q(imgfs_mount(WARM_CACHE, gz)),
                                       prepare=prep_cmd("umount"), min_runs=n, max_runs=n)
    if not mounted(MNT):
        run(imgfs_mount(WARM_CACHE, gz), capture=True, timeout=600)
    walk = {"walk-tree": [a.format(m=UNPACK) for a in WALK], "walk-imgfs": [a.format(m=MNT) for a in WALK]}
    res.update(prefixed(alternate(walk, WALK_RUNS[mode], WARMUP[mode])))
    umount()
    res.update(prefixed(alternate({
        "run-bwrap": ["bwrap", "--ro-bind", UNPACK, "/", *BWRAP_FLAGS, *CMD],
        "run-imgfs": imgfs_run(WARM_CACHE, gz.source),
    }, RUNS[mode], WARMUP[mode])))
    stop_shared()

    try:
        res.update(measure_registry(runner, quick, gz))
    except BenchError as e:
        log(f"FAILED registry rows: {e}")
        for key in ("reg-docker", "reg-umoci", "reg-imgfs"):
            res.setdefault(key, {"error": str(e)})
    return res


def measure_registry(runner, quick, gz):
    res = {}
    # Slow rows (seconds each): a probe and a few runs; --quick: a probe and one run.
    runs = dict(min_runs=1, max_runs=1) if quick else dict(min_runs=3, max_runs=5)

    def m(key, cmd, prepare, **kw):
        res[key] = measure_shaped(runner, f"sources-{key}", cmd, prepare=prepare, cap=300, **runs, **kw)
        return res[key]

    with contextlib.ExitStack() as stack:
        addr = stack.enter_context(registry())
        image = f"{addr}/{REG_NAME}"
        log(f"pushing {gz.source} to {image}")
        run(["skopeo", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false", f"oci:{gz.dir}:{REF}", f"docker://{image}"],
            capture=True, timeout=600)
        stack.enter_context(own_dockerd())
        stack.enter_context(shaped(addr.rsplit(":", 1)[1]))

        name = REG_NAME.split(":")[0]
        fetch = ["curl", "-sSf"]
        for path in gz.blob_paths:
            fetch += ["-o", "/dev/null", f"http://{addr}/v2/{name}/blobs/{path.parent.name}:{path.name}"]
        m("reg-fetch", q(fetch), None)

        m("reg-docker",
          q(DOCKER + ["pull", "-q", image]) + " >/dev/null && "
          + q(DOCKER + ["run", "--rm", "--entrypoint", "", image, *CMD]),
          prep_cmd(f"docker-rmi:{image}", "sync"), shell=True)
        prep([f"docker-rmi:{image}"])
        m("reg-umoci",
          q(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{image}", f"oci:{REG_OCI}:{REF}"])
          + " && " + q(["umoci", "raw", "unpack", "--image", f"{REG_OCI}:{REF}", REG_TREE]) + " 2>/dev/null && "
          + q(["bwrap", "--ro-bind", REG_TREE, "/", *BWRAP_FLAGS, *CMD]),
          prep_cmd(f"rm:{REG_OCI}", f"rm:{REG_TREE}", "sync"), shell=True)
        prep([f"rm:{REG_OCI}", f"rm:{REG_TREE}"])
        m("reg-imgfs", q(imgfs_run(REG_CACHE, f"docker://{image}")),
          prep_cmd("stop-shared", f"rm:{REG_CACHE}", "sync"))
        stop_shared()
        prep([f"rm:{REG_CACHE}"])
    return res


def prefixed(res):
    """alternate()'s results; their errors say which pair they come from."""
    return {k: v if not v.get("error") else {"error": f"{k}: {v['error']}"} for k, v in res.items()}


# ---------------------------------------------------------------------------------------------
# Report

def med(res, key):
    st = res.get(key) or {}
    return None if st.get("error") else st.get("median")


def evaluate(res):
    rows = []
    for row in ROWS:
        a = med(res, row.key)
        b = med(res, row.base) if row.base else None
        x = a / b if a and b else None
        met = None
        if row.target and x is not None:
            met = row.target[1](x)
        elif row.absolute and a is not None:
            met = row.absolute[1](a)
        target = row.target or row.absolute
        rows.append({"row": row.key, "label": row.label, "median": a, "base": row.base, "ratio": x,
                     "target": target[0] if target else None, "met": met})
    return rows


def versions(checkout):
    def first(cmd):
        r = run(cmd, capture=True, check=False, timeout=60)
        lines = ((r.stdout or "") + (r.stderr or "")).strip().splitlines()
        return lines[0] if lines else "?"
    return {
        "imgfs": imgfs_version(checkout, IMGFS),
        "umoci": first(["umoci", "--version"]),
        "bwrap": first(["bwrap", "--version"]),
        "gzip": first(["gzip", "--version"]),
        "zstd": "zstd " + (re.findall(r"v(\d[\d.]*)", first(["zstd", "--version"])) or ["?"])[0],
        "skopeo": first(["skopeo", "--version"]),
        "docker": f"dockerd {first(['dockerd', '--version'])}",
        "registry": first(["docker-registry", "--version"]),
        "python": first(["python3", "-c", "import sys, zlib; print('python', sys.version.split()[0], "
                                          "'zlib', zlib.ZLIB_RUNTIME_VERSION)"]),
        "hyperfine": first(["hyperfine", "--version"]),
    }


def mb(n):
    return f"{n / 1e6:.1f} MB"


def render(res, meta):
    mach, v, inp = meta["machine"], meta["versions"], meta["inputs"]
    L = []
    A = L.append
    A("## Sources: images of layers without a daemon\n")
    A(f"Generated by `bench/run.sh --sources{' --quick' if meta['quick'] else ''}` on {meta['date']} "
      f"(run took {meta.get('duration_min', 0):.1f} min). "
      f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram']}, kernel {mach['kernel']}, {mach['os']}; "
      f"imgfs {v['imgfs']}; {v['umoci']}; {v['skopeo']}; {v['bwrap']}; {v['gzip']}; {v['zstd']}; "
      f"{v['python']}; {v['docker']}; {v['registry']}; {v['hyperfine']}. "
      f"Built and measured from {checkout_text(checkout_of(meta))}.\n")
    plain = inp["plain"]["bytes"]
    A(f"The image is `{meta['image']}` (tests/fixtures/make-layered.sh: the Debian python test image as "
      f"{inp['gzip']['layers']} layers, {mb(plain)} of layer tars) from its OCI layouts, ref `{REF}`:\n")
    A("| layout | layer blobs | of them the largest |\n|---|---|---|")
    for key in ("gzip", "zstd", "chunked", "plain"):
        i = inp[key]
        A(f"| {i['label']} (`{Path(i['dir']).name}`) | {mb(i['bytes'])} in {i['layers']} | {mb(i['largest'])} |")
    A("")
    A("Medians, runs in parentheses. *ratio* is the row's median over the median of the row it names. "
      "A cold mount is `imgfs mount --cache-dir EMPTY oci:DIR:layers MNT`, returning with the mount ready: "
      "each layer is decompressed into the cache while it is scanned (several layers at once), the "
      "layers' indexes merged, the cache files written (not synced), the server started. Before each run the "
      "cache is removed, `sync` run and the layer blobs read into the page cache; the decompression rows "
      "read the same warm blobs and discard what they decompress. "
      "umoci writes its tree without syncing it. The warm pairs (bwrap and imgfs run; the two walks) "
      "run alternately, one run of each in turn after warm-up rounds; the rest run with hyperfine. "
      "`imgfs run` runs on the shared server the first run leaves (`--linger`), as a user's second run does; "
      "bwrap runs with the flags of the warm-run rows above (`--ro-bind TREE / "
      + " ".join(BWRAP_FLAGS) + "`); the walk is theirs too, `find DIR -printf '%s %m %u\\n'`. "
      "The image's entrypoint only prints how it was started: every sandbox clears it "
      "(`--entrypoint ''`) and runs `python3 -c pass`.\n")
    A(f"From a registry: the gzip layout pushed to Debian's docker-registry on 127.0.0.1, whose replies "
      f"go through an htb class of {RATE_TEXT} on lo (the rest of lo through a fast default class). "
      "Each run starts from nothing local: docker pulls into a dockerd of the benchmark's own that holds "
      "no other image (`docker rmi` before each run frees the layers, so every pull downloads them), "
      "skopeo copies into an empty OCI layout that umoci unpacks for bwrap, imgfs runs with an empty "
      "cache and no server left from an earlier run; curl fetching the layer blobs one after another "
      "is the floor of any cold start that needs all their bytes. *MB from the registry per run* is what the shaped "
      "class carried, divided by the runs (an untimed first run included).\n")
    rows = {e["row"]: e for e in meta["rows"]}
    for group, title in GROUPS:
        A(f"### {title}\n")
        A("| row | median | ratio | target | met? | note |\n|---|---|---|---|---|---|")
        for row in (r for r in ROWS if r.group == group):
            e, st = rows[row.key], res.get(row.key) or {}
            if st.get("error"):
                cell = "FAILED: " + st["error"].replace("|", "/")[:160]
            elif e["median"] is None:
                cell = "not measured" + (f" ({st['skipped']})" if st.get("skipped") else "")
            else:
                spread = f" ± {fmt_time(st.get('stddev') or 0)}" if st["runs"] > 1 else ""  # one run has none
                cell = f"{fmt_time(e['median'])}{spread} ({st['runs']})"
            x = e["ratio"]
            if x is None:
                is_base = any(r.base == row.key for r in ROWS)
                rc = "baseline" if is_base and not st.get("error") else "—"
            else:
                rc = f"{x:.2f}× {BASE_TITLES[row.base]}"
            met = {True: "**met**", False: "**missed**", None: "—"}[e["met"]] if e["target"] else "—"
            A(f"| {row.label} | {cell} | {rc} | {e['target'] or '—'} | {met} | {note(row, e, st, inp, res)} |")
        A("")
    A("Run it with `bench/run.sh --sources` (`--quick`: fewer runs, written to "
      "`bench/results/RESULTS-quick.md`); raw figures in `bench/results/sources.json`.")
    return "\n".join(L)


def note(row, e, st, inp, res=None):
    parts = []
    if row.group == "build" and e["median"]:
        # Everything a cold mount or a decompression produces: the layers' tars.
        parts.append(f"{inp['plain']['bytes'] / e['median'] / 1e6:.0f} MB/s of layer tar out")
    if row.group == "unpack" and e["ratio"]:
        parts.append(f"imgfs's cold mount takes {1 / e['ratio']:.2f}× this")
    floor = (res or {}).get("reg-fetch", {}).get("median")
    if row.group == "registry" and row.key != "reg-fetch" and e["median"] and floor:
        parts.append(f"{e['median'] - floor:+.2f} s over the transfer alone")
    if st.get("shaped_bytes_per_run") is not None:
        parts.append(f"{st['shaped_bytes_per_run'] / 1e6:.1f} MB from the registry per run")
    if st.get("method") == "alternating":
        parts.append("alternating")
    if st.get("idle_before", 1) < IDLE_THRESHOLD:
        parts.append(f"machine busy before (idle {st['idle_before']:.0%})")
    return "; ".join(parts)


def report(res, meta):
    suffix = "-quick" if meta["quick"] else ""
    meta["rows"] = evaluate(res)
    (RESULTS / f"sources{suffix}.json").write_text(json.dumps({"meta": meta, "results": res}, indent=1, default=str))
    md = RESULTS / "RESULTS-quick.md" if meta["quick"] else ROOT / "bench" / "RESULTS.md"
    write_section(md, SECTION, render(res, meta))
    write_runs_section(md, suffix)
    log(f"wrote {RESULTS / f'sources{suffix}.json'} and the {SECTION} section of {md}")
    for e in meta["rows"]:
        if e["target"]:
            word = {True: "MET   ", False: "MISSED", None: "n/a   "}[e["met"]]
            x = "—" if e["median"] is None else (
                f"{e['ratio']:.2f}×" if e["ratio"] is not None else fmt_time(e["median"]))
            log(f"target {word} {e['label']}: {e['target']}: {x}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_prep":
        try:
            prep(sys.argv[2:])
        except BenchError as e:
            sys.exit(f"sources.py _prep: {e}")
        return
    ap = argparse.ArgumentParser(description="imgfs benchmark of images of layers (run it through bench/run.sh --sources)")
    ap.add_argument("--quick", action="store_true", help="fewer runs; written to bench/results/RESULTS-quick.md")
    ap.add_argument("--render-only", action="store_true",
                    help="write the Markdown section again from bench/results/sources.json")
    args = ap.parse_args()
    suffix = "-quick" if args.quick else ""
    if args.render_only:
        saved = json.loads((RESULTS / f"sources{suffix}.json").read_text())
        report(saved["results"], saved["meta"])
        return
    check_inputs()
    lock = hold_machine("sources.py")  # noqa: F841 (held until exit)
    RESULTS.mkdir(parents=True, exist_ok=True)
    set_log_file(open(RESULTS / f"sources{suffix}.log", "w"))
    raw = RESULTS / f"raw-sources{suffix}"
    if raw.exists():
        shutil.rmtree(raw)
    raw.mkdir(parents=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    L = layouts()
    start = time.time()
    checkout = checkout_at_start()
    meta = {"quick": args.quick, "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M %Z").strip(),
            "run": run_id(), "checkout": checkout, "machine": machine(), "versions": versions(checkout),
            "image": read_env().get("LAYERS_IMAGE", "?"),
            "inputs": {k: {"label": l.label, "dir": str(l.dir), "layers": len(l.layers), "bytes": l.size,
                           "largest": max(s for _, s in l.layers)} for k, l in L.items()},
            "command": CMD}
    try:
        res = measure_all(Runner(args.quick, raw), args.quick, L)
    except KeyboardInterrupt:
        log("interrupted; unmounting and stopping the shared servers")
        sys.exit(130)
    finally:
        umount()
        stop_shared()
    meta["duration_min"] = (time.time() - start) / 60
    meta["checkout"] = checkout_at_end(meta["checkout"])
    report(res, meta)


if __name__ == "__main__":
    main()
